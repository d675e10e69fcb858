//! DNS failures named from what the resolver actually said, as root: a real authoritative server
//! (NSD, Debian's `nsd`) in a namespace of its own, and the agent's `check` run in a client
//! namespace whose /etc/resolv.conf (bind-mounted by `ip netns exec` from /etc/netns/<name>)
//! points at it. NSD answers NXDOMAIN for a name missing from its zone, SERVFAIL for a zone it is
//! configured for but could not load, REFUSED for a zone it does not serve, and NOERROR without
//! records for a name that has only MX records; an nft rule drops what is sent to a second
//! address (a silent nameserver), and nothing listens on a third (port unreachable).
//!
//! Needs root, iproute2, nftables and nsd; skipped with a printed reason otherwise (a failure
//! under CI). Namespaces are named `ewd<pid>…`; they, their /etc/netns entries and the server
//! are removed even when the test fails.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{nft, run_bounded, runnable, Namespaces};

/// The client's address and the nameservers' (answering, silent, closed).
const CLIENT_V4: &str = "198.18.53.1/24";
const CLIENT_V6: &str = "2001:db8:53::1/64";
const NS_V4: &str = "198.18.53.53";
const NS_V6: &str = "2001:db8:53::53";
const SILENT_NS: &str = "198.18.53.54";
const CLOSED_NS: &str = "198.18.53.55";
/// The lab's mail hosts: addresses of the server namespace where nothing listens on 25, so a
/// connect is answered at once (refused).
const MX_V4: &str = "198.18.53.25";
const MX2_V4: &str = "198.18.53.26";
const MX2_V6: &str = "2001:db8:53::26";
const NOMX_V4: &str = "198.18.53.27";
const NULLMX_V4: &str = "198.18.53.28";
/// glibc as configured in every resolv.conf here: one try of one second per server.
const RESOLV_OPTIONS: &str = "options timeout:1 attempts:1";
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

const ZONE: &str = "$ORIGIN lab.test.
$TTL 60
@       IN SOA  ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 60
@       IN NS   ns.lab.test.
ns      IN A    198.18.53.53
; MX records only: the name exists, with no address in either family.
mxonly  IN MX   20 mx2.lab.test.
mxonly  IN MX   10 mx1.lab.test.
mx1     IN A    198.18.53.25
mx2     IN A    198.18.53.26
mx2     IN AAAA 2001:db8:53::26
; No MX: mail goes to the domain's own address (RFC 5321 section 5.1).
nomx    IN A    198.18.53.27
; A null MX (RFC 7505): the domain accepts no mail.
nullmx  IN MX   0 .
nullmx  IN A    198.18.53.28
";

/// A client namespace and a server namespace running NSD; `Drop` removes everything.
struct DnsLab {
    namespaces: Namespaces,
    client: String,
    /// Kept for the server's files (zone, config, log) while the lab is up.
    _dir: tempfile::TempDir,
}

impl DnsLab {
    fn up(tag: &str) -> Result<DnsLab, String> {
        let prefix = format!("ewd{}{tag}", std::process::id());
        let (client, server) = (format!("{prefix}c"), format!("{prefix}s"));
        let mut namespaces = Namespaces::new();
        namespaces.add(&client)?;
        namespaces.add(&server)?;
        let server_addrs = [
            format!("{NS_V4}/24"),
            format!("{SILENT_NS}/24"),
            format!("{CLOSED_NS}/24"),
            format!("{NS_V6}/64"),
            format!("{MX_V4}/24"),
            format!("{MX2_V4}/24"),
            format!("{MX2_V6}/64"),
            format!("{NOMX_V4}/24"),
            format!("{NULLMX_V4}/24"),
        ];
        let server_addrs: Vec<&str> = server_addrs.iter().map(String::as_str).collect();
        namespaces.link(
            (&client, &format!("{prefix}c0"), &[CLIENT_V4, CLIENT_V6]),
            (&server, &format!("{prefix}s0"), &server_addrs),
        )?;
        // The silent nameserver: its queries are dropped, over UDP and TCP.
        nft(
            &server,
            &format!(
                "table inet silent {{
                    chain input {{
                        type filter hook input priority 0; policy accept;
                        ip daddr {SILENT_NS} udp dport 53 drop
                        ip daddr {SILENT_NS} tcp dport 53 drop
                    }}
                }}"
            ),
        )?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let conf = nsd_conf(dir.path());
        std::fs::write(dir.path().join("lab.test.zone"), ZONE).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("nsd.conf"), conf).map_err(|e| e.to_string())?;
        let conf_path = dir.path().join("nsd.conf");
        namespaces.spawn(
            &server,
            "nsd",
            &["-d", "-c", conf_path.to_str().ok_or("non-UTF-8 temp path")?],
        )?;
        let lab = DnsLab {
            namespaces,
            client,
            _dir: dir,
        };
        lab.use_nameserver(NS_V4)?;
        lab.wait_for_server()?;
        Ok(lab)
    }

    /// Points the client's resolv.conf at one nameserver.
    fn use_nameserver(&self, address: &str) -> Result<(), String> {
        self.namespaces.resolv_conf(
            &self.client,
            &format!("nameserver {address}\n{RESOLV_OPTIONS}\n"),
        )
    }

    /// NSD is ready when the client resolves its zone's nameserver name (bounded).
    fn wait_for_server(&self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let out = run_bounded(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &self.client,
                    "getent",
                    "ahostsv4",
                    "ns.lab.test",
                ]),
                COMMAND_LIMIT,
            );
            if out.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("nsd did not answer within 15 s".into())
    }

    /// `check NAME… ARGS…` in the client namespace: exit code and stdout.
    fn check(&self, names: &[&str], extra: &[&str]) -> (Option<i32>, String) {
        let out = run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.client])
                .arg(env!("CARGO_BIN_EXE_egresswatch-agent"))
                .arg("check")
                .args(names)
                .args(["--port", "25", "--level", "connect", "--timeout", "2s"])
                .args(extra),
            COMMAND_LIMIT,
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn check_json(&self, names: &[&str], extra: &[&str]) -> Vec<Value> {
        let (code, stdout) = self.check(names, &[&["--json"], extra].concat());
        assert!(code.is_some(), "check was killed: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

fn nsd_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "server:
  ip-address: {NS_V4}
  ip-address: {NS_V6}
  port: 53
  username: \"\"
  chroot: \"\"
  zonesdir: \"{d}\"
  database: \"\"
  pidfile: \"{d}/nsd.pid\"
  xfrdfile: \"{d}/xfrd.state\"
  zonelistfile: \"{d}/zone.list\"
  logfile: \"{d}/nsd.log\"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: lab.test
  zonefile: lab.test.zone
# Configured but its file is missing: NSD answers SERVFAIL for it.
zone:
  name: broken.test
  zonefile: broken.test.zone
"
    )
}

fn rows_for<'a>(rows: &'a [Value], host: &str) -> Vec<&'a Value> {
    let found: Vec<&Value> = rows.iter().filter(|r| r["host"] == host).collect();
    assert!(!found.is_empty(), "no rows for {host}: {rows:?}");
    found
}

/// Every row of `host` (one per family) failed DNS with `kind`.
fn assert_dns_failed(rows: &[Value], host: &str, kind: &str) {
    for row in rows_for(rows, host) {
        assert_eq!(row["outcome"], "dns_failed", "{row}");
        assert_eq!(row["dns_failure"], kind, "{row}");
        assert!(row["dns_ms"].is_number(), "the DNS phase is timed: {row}");
        assert!(row["address"].is_null(), "{row}");
    }
}

fn lab_or_skip(test: &str, tag: &str) -> Option<DnsLab> {
    if !runnable(
        test,
        &[("ip", "iproute2"), ("nft", "nftables"), ("nsd", "nsd")],
    ) {
        return None;
    }
    match DnsLab::up(tag) {
        Ok(lab) => Some(lab),
        Err(e) if e.contains("Unknown device type") => {
            eprintln!("{test}: SKIPPED: this kernel has no veth: {e}");
            None
        }
        Err(e) => panic!("building the DNS lab: {e}"),
    }
}

#[test]
fn each_dns_failure_is_named_from_the_response_code() {
    let Some(lab) = lab_or_skip("each_dns_failure_is_named_from_the_response_code", "r") else {
        return;
    };
    let names = [
        "nosuch.lab.test",
        "host.broken.test",
        "host.elsewhere.test",
        "mxonly.lab.test",
    ];
    let rows = lab.check_json(&names, &[]);
    if std::env::var_os("EWD_DEBUG").is_some() {
        for r in &rows {
            eprintln!("{r}");
        }
    }
    assert_dns_failed(&rows, "nosuch.lab.test", "nxdomain");
    // glibc says EAI_AGAIN ("temporary failure") for SERVFAIL, in well under its one-second
    // timeout: the kind comes from the response code, never `timeout`.
    assert_dns_failed(&rows, "host.broken.test", "servfail");
    assert_dns_failed(&rows, "host.elsewhere.test", "refused");
    for row in rows_for(&rows, "host.broken.test") {
        assert!(
            row["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("{NS_V4} answered SERVFAIL")),
            "{row}"
        );
    }
    for row in rows_for(&rows, "host.elsewhere.test") {
        assert!(
            row["detail"].as_str().unwrap().contains("answered REFUSED"),
            "{row}"
        );
    }
    // A name with only MX records exists: no address in either family, not nxdomain.
    for row in rows_for(&rows, "mxonly.lab.test") {
        assert_eq!(row["outcome"], "no_address", "{row}");
        assert!(row["dns_failure"].is_null(), "{row}");
    }

    let (code, table) = lab.check(&names, &[]);
    println!("{table}");
    assert_eq!(code, Some(1), "{table}");
    for (name, kind) in [
        ("nosuch.lab.test", "nxdomain"),
        ("host.broken.test", "servfail"),
        ("host.elsewhere.test", "refused"),
    ] {
        assert!(
            table.contains(&format!(
                "{name} does not resolve ({kind}): a DNS problem, not a port block."
            )),
            "{table}"
        );
    }
}

#[test]
fn a_silent_nameserver_is_a_timeout_and_a_closed_one_is_not() {
    let Some(lab) = lab_or_skip(
        "a_silent_nameserver_is_a_timeout_and_a_closed_one_is_not",
        "t",
    ) else {
        return;
    };
    lab.use_nameserver(SILENT_NS).expect("resolv.conf");
    let rows = lab.check_json(&["mx1.lab.test"], &["--family", "ipv4"]);
    assert_dns_failed(&rows, "mx1.lab.test", "timeout");
    assert!(
        rows[0]["detail"].as_str().unwrap().contains(SILENT_NS),
        "{}",
        rows[0]
    );

    // A closed port answers glibc at once with ICMP port unreachable: a failure, never
    // `timeout`, and the agent's own question hears the same ICMP error and says so.
    lab.use_nameserver(CLOSED_NS).expect("resolv.conf");
    let rows = lab.check_json(&["mx1.lab.test"], &["--family", "ipv4"]);
    assert_dns_failed(&rows, "mx1.lab.test", "other");
    let detail = rows[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{CLOSED_NS}: port 53 closed")),
        "{detail}"
    );

    // And the lab answers through the same client when the nameserver does.
    lab.use_nameserver(NS_V4).expect("resolv.conf");
    let rows = lab.check_json(&["mx1.lab.test"], &["--family", "ipv4"]);
    assert_eq!(rows[0]["address"], MX_V4, "{}", rows[0]);
}

fn exchanger_rows<'a>(rows: &'a [Value], host: &str) -> Vec<&'a Value> {
    let found = rows_for(rows, host);
    assert_eq!(found.len(), 2, "one row per family for {host}: {found:?}");
    found
}

#[test]
fn mx_probes_each_exchanger_lowest_preference_first_or_the_domain_itself() {
    let Some(lab) = lab_or_skip(
        "mx_probes_each_exchanger_lowest_preference_first_or_the_domain_itself",
        "m",
    ) else {
        return;
    };
    // MX records only (no address on the domain itself): the exchangers are probed, in order.
    let rows = lab.check_json(&["mxonly.lab.test"], &["--mx"]);
    let hosts: Vec<&str> = rows.iter().map(|r| r["host"].as_str().unwrap()).collect();
    assert_eq!(
        hosts,
        [
            "mx1.lab.test",
            "mx1.lab.test",
            "mx2.lab.test",
            "mx2.lab.test"
        ],
        "{rows:?}"
    );
    for (host, preference) in [("mx1.lab.test", 10), ("mx2.lab.test", 20)] {
        for row in exchanger_rows(&rows, host) {
            assert_eq!(row["mx"]["domain"], "mxonly.lab.test", "{row}");
            assert_eq!(row["mx"]["preference"], preference, "{row}");
            assert_eq!(row["mx"]["implicit"], false, "{row}");
        }
    }
    let mx1_v4 = rows
        .iter()
        .find(|r| r["host"] == "mx1.lab.test" && r["family"] == "ipv4");
    let mx1_v4 = mx1_v4.expect("mx1 over IPv4");
    assert_eq!(mx1_v4["address"], MX_V4, "{mx1_v4}");
    assert_eq!(mx1_v4["outcome"], "refused", "{mx1_v4}");
    let mx1_v6 = rows
        .iter()
        .find(|r| r["host"] == "mx1.lab.test" && r["family"] == "ipv6");
    assert_eq!(mx1_v6.expect("mx1 over IPv6")["outcome"], "no_address");
    let mx2_v6 = rows
        .iter()
        .find(|r| r["host"] == "mx2.lab.test" && r["family"] == "ipv6");
    assert_eq!(mx2_v6.expect("mx2 over IPv6")["address"], MX2_V6);

    let (_, table) = lab.check(&["mxonly.lab.test"], &["--mx"]);
    println!("{table}");
    assert!(
        table.contains(
            "mxonly.lab.test: mail goes to mx1.lab.test (MX 10), then mx2.lab.test (MX 20)."
        ),
        "{table}"
    );
    assert!(
        table.contains("mx1.lab.test (MX 10 of mxonly.lab.test)"),
        "{table}"
    );
    assert!(
        table.contains("mx2.lab.test (MX 20 of mxonly.lab.test)"),
        "{table}"
    );

    // No MX records: the domain's own address, as an implicit MX of preference 0.
    let rows = lab.check_json(&["nomx.lab.test"], &["--mx"]);
    for row in exchanger_rows(&rows, "nomx.lab.test") {
        assert_eq!(row["mx"]["domain"], "nomx.lab.test", "{row}");
        assert_eq!(row["mx"]["preference"], 0, "{row}");
        assert_eq!(row["mx"]["implicit"], true, "{row}");
    }
    assert!(rows.iter().any(|r| r["address"] == NOMX_V4), "{rows:?}");
    let (_, table) = lab.check(&["nomx.lab.test"], &["--mx"]);
    assert!(
        table.contains("nomx.lab.test has no MX records: mail goes to the domain's own address"),
        "{table}"
    );
    assert!(table.contains("nomx.lab.test (no MX)"), "{table}");

    // A null MX: no mail accepted, nothing probed (not even the domain's own address).
    let rows = lab.check_json(&["nullmx.lab.test"], &["--mx"]);
    for row in exchanger_rows(&rows, "nullmx.lab.test") {
        assert_eq!(row["outcome"], "no_address", "{row}");
        assert!(row["address"].is_null(), "{row}");
        assert_eq!(row["mx"]["null_mx"], true, "{row}");
        assert!(
            row["detail"].as_str().unwrap().contains("accepts no mail"),
            "{row}"
        );
    }
    let (_, table) = lab.check(&["nullmx.lab.test"], &["--mx"]);
    assert!(
        table.contains("nullmx.lab.test accepts no mail: it publishes a null MX"),
        "{table}"
    );

    // A domain that does not exist: its MX lookup fails with the nameserver's code.
    let rows = lab.check_json(&["nosuch.lab.test"], &["--mx"]);
    assert_dns_failed(&rows, "nosuch.lab.test", "nxdomain");
    assert!(rows[0]["mx"]["preference"].is_null(), "{}", rows[0]);
    let (_, table) = lab.check(&["nosuch.lab.test"], &["--mx"]);
    assert!(
        table.contains(
            "nosuch.lab.test does not resolve (nxdomain): a DNS problem, not a port block."
        ),
        "{table}"
    );
}
