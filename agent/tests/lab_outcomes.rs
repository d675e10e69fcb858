//! End-to-end: the real `egresswatch-agent check`, run inside the network-namespace lab
//! (`lab/egresslab`, scenario `lab/scenarios/outcomes.toml`), must name the exact outcome of every
//! probe that an edge rule or a destination server can produce, over IPv4 and IPv6: real nftables
//! rules on the lab's router (drop, TCP reset, ICMP admin-prohibited), a real Postfix and an HTTPS
//! listener as the destination, names from the lab's hosts file and DNS server.
//!
//! Needs root (namespaces, nftables). As a normal user these tests print why and pass without
//! running. Missing `nft`/`postfix`/`openssl`/`ip`/`python3` skip them too, except under CI
//! (`CI=true`), where a missing tool fails: CI must install what the tests need.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{on_path, run_bounded, runnable};

/// The agent under test: this package's binary, or another build named by `EGRESSWATCH_AGENT`
/// (to try a branch's binary against the lab without rebuilding the tests).
fn agent() -> String {
    std::env::var("EGRESSWATCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_egresswatch-agent").to_string())
}

const SCENARIO: &str = "outcomes.toml";
/// Upper bound on any one command the tests run (lab up, agent check); nothing may hang a test.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

fn egresslab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/egresslab")
}

/// The tools the lab needs (tool, Debian package).
const LAB_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("postfix", "postfix"),
    ("openssl", "openssl"),
    ("python3", "python3"),
];

/// Whether the lab can run here; prints the reason when it cannot.
fn lab_runnable(test: &str) -> bool {
    runnable(test, LAB_TOOLS)
}

/// A lab that is up; `Drop` tears it down, also when an assertion fails.
struct Lab {
    name: String,
    info: Value,
}

impl Lab {
    /// `tag` keeps the labs of tests running in parallel in this process apart.
    fn up(tag: char) -> Lab {
        let name = format!("eo{}{tag}", std::process::id());
        // Leftovers of a crashed run with the same name go first.
        let _ = run_bounded(
            Command::new(egresslab()).args(["down", "--name", &name]),
            COMMAND_LIMIT,
        );
        let scenario = egresslab().with_file_name("scenarios").join(SCENARIO);
        let mut lab = Lab {
            name: name.clone(),
            info: Value::Null,
        };
        let out = run_bounded(
            Command::new(egresslab())
                .arg("up")
                .arg(&scenario)
                .args(["--name", &name]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "egresslab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.info = serde_json::from_slice(&out.stdout).expect("egresslab up prints JSON");
        lab
    }

    fn host(&self, name: &str) -> &Value {
        self.info["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("scenario has no host {name}"))
    }

    fn ca_file(&self) -> String {
        self.info["destination"]["ca_file"]
            .as_str()
            .expect("ca_file")
            .to_string()
    }

    fn lab(&self, args: &[&str]) {
        let out = run_bounded(
            Command::new(egresslab())
                .args(args)
                .args(["--name", &self.name]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "egresslab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `egresswatch-agent check TARGET --port P... --timeout 2s --json` inside `host`'s namespace.
    fn check(&self, host: &str, target: &str, ports: &[u16]) -> Vec<Value> {
        let mut cmd = Command::new(egresslab());
        cmd.args(["exec", "--name", &self.name, host, "--"]);
        cmd.args([agent().as_str(), "check", target]);
        for port in ports {
            cmd.args(["--port", &port.to_string()]);
        }
        cmd.args(["--timeout", "2s", "--json", "--ca-file", &self.ca_file()]);
        let out = run_bounded(&mut cmd, COMMAND_LIMIT);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "check {target} from {host} exited {code:?} (0 or 1 expected); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check {target} from {host}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        rows.as_array().expect("a JSON array").clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(egresslab())
            .args(["down", "--name", &self.name])
            .output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!("egresslab down: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// Collects every mismatch, so one run shows the whole picture rather than the first failure.
#[derive(Default)]
struct Verdicts {
    failures: Vec<String>,
}

impl Verdicts {
    fn row<'a>(&mut self, rows: &'a [Value], port: u16, family: &str) -> Option<&'a Value> {
        let row = rows
            .iter()
            .find(|r| r["port"] == port && r["family"] == family);
        if row.is_none() {
            self.failures
                .push(format!("no result for port {port} {family} in {rows:?}"));
        }
        row
    }

    fn expect(&mut self, from: &str, rows: &[Value], port: u16, family: &str, outcome: &str) {
        if let Some(row) = self.row(rows, port, family) {
            if row["outcome"] != outcome {
                self.failures.push(format!(
                    "from {from}: {} port {port} {family}: expected {outcome}, got {} ({})",
                    row["host"], row["outcome"], row["detail"]
                ));
            }
        }
    }

    fn expect_both(&mut self, from: &str, rows: &[Value], port: u16, outcome: &str) {
        for family in ["ipv4", "ipv6"] {
            self.expect(from, rows, port, family, outcome);
        }
    }

    /// The rejecting hop of an ICMP reject is the lab's router, on this host's link.
    fn expect_icmp_from(&mut self, rows: &[Value], port: u16, family: &str, router: &Value) {
        let (icmp_type, icmp_code) = match family {
            "ipv4" => (3, 13), // destination unreachable, communication administratively prohibited
            _ => (1, 1),       // ICMPv6 destination unreachable, administratively prohibited
        };
        if let Some(row) = self.row(rows, port, family) {
            let icmp = &row["icmp"];
            let same_hop = |a: &Value, b: &Value| {
                let parse = |v: &Value| v.as_str().and_then(|s| s.parse::<IpAddr>().ok());
                parse(a).is_some() && parse(a) == parse(b)
            };
            if !same_hop(&icmp["from"], router)
                || icmp["icmp_type"] != icmp_type
                || icmp["icmp_code"] != icmp_code
            {
                self.failures.push(format!(
                    "port {port} {family}: expected icmp from {router} type {icmp_type} code \
                     {icmp_code}, got icmp {icmp} (detail {})",
                    row["detail"]
                ));
            }
        }
    }

    /// The session step named in the result, and words its detail must carry.
    fn expect_step(&mut self, rows: &[Value], port: u16, step: &str, words: &str) {
        for family in ["ipv4", "ipv6"] {
            if let Some(row) = self.row(rows, port, family) {
                let detail = row["detail"].as_str().unwrap_or("");
                if row["step"] != step || !detail.contains(words) {
                    self.failures.push(format!(
                        "port {port} {family}: expected step {step} and {words:?}, got step {} ({detail})",
                        row["step"]
                    ));
                }
            }
        }
    }

    fn assert_none(self) {
        assert!(
            self.failures.is_empty(),
            "{} mismatches:\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// Every outcome an edge rule or the destination can produce, over IPv4 and IPv6.
#[test]
fn every_outcome_over_ipv4_and_ipv6() {
    if !lab_runnable("every_outcome_over_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::up('a');
    let mut v = Verdicts::default();

    // An unfiltered host sees the destination as it is.
    let rows = lab.check(
        "open-1",
        "mx.lab.test",
        &[25, 465, 587, 2525, 443, 2526, 2502, 2554, 2500, 2465, 2528],
    );
    // 2528 is Postfix's postscreen: a multi-line greeting whose last line comes a second later.
    for port in [25, 465, 587, 2525, 443, 2528] {
        v.expect_both("open-1", &rows, port, "ok");
    }
    v.expect_both("open-1", &rows, 2526, "starttls_missing");
    // A server that knows no EHLO speaks no ESMTP: STARTTLS missing, not a bad banner.
    v.expect_both("open-1", &rows, 2502, "starttls_missing");
    v.expect_step(&rows, 2502, "ehlo", "EHLO not recognised (500 5.5.2");
    v.expect_both("open-1", &rows, 2554, "bad_banner");
    v.expect_both("open-1", &rows, 2500, "no_banner");
    v.expect_both("open-1", &rows, 2465, "tls_failed");
    v.expect_step(&rows, 2500, "greeting", "no complete greeting");
    v.expect_step(&rows, 2526, "ehlo", "does not offer STARTTLS");
    v.expect_step(
        &rows,
        2465,
        "tls_handshake",
        "the certificate is for wrong.lab.test, not for mx.lab.test",
    );

    // Same server and certificate, but the certificate does not name this host.
    let rows = lab.check("open-1", "badcert.lab.test", &[25, 465, 443]);
    for port in [25, 465, 443] {
        v.expect_both("open-1", &rows, port, "tls_failed");
    }

    // A name with no address in one family: `no_address` there, never a failure.
    let rows = lab.check("open-1", "v4only.lab.test", &[25]);
    v.expect("open-1", &rows, 25, "ipv4", "ok");
    v.expect("open-1", &rows, 25, "ipv6", "no_address");
    let rows = lab.check("open-1", "v6only.lab.test", &[25]);
    v.expect("open-1", &rows, 25, "ipv4", "no_address");
    v.expect("open-1", &rows, 25, "ipv6", "ok");

    // The lab's DNS answers NXDOMAIN for names it does not know.
    let rows = lab.check("open-1", "nosuch.lab.test", &[25]);
    if rows.is_empty() {
        v.failures.push("nosuch.lab.test: no result at all".into());
    }
    for row in &rows {
        if row["outcome"] != "dns_failed" {
            v.failures
                .push(format!("nosuch.lab.test: expected dns_failed, got {row}"));
        }
    }

    // The edge: one kind of filtering per port; 2525 dropped on IPv6 only.
    let edge = lab.host("edge-1");
    let rows = lab.check("edge-1", "mx.lab.test", &[25, 465, 587, 2525, 443]);
    v.expect_both("edge-1", &rows, 25, "timeout");
    v.expect_both("edge-1", &rows, 465, "refused");
    v.expect_both("edge-1", &rows, 587, "unreachable");
    v.expect("edge-1", &rows, 2525, "ipv4", "ok");
    v.expect("edge-1", &rows, 2525, "ipv6", "timeout");
    v.expect_both("edge-1", &rows, 443, "ok");
    v.expect_icmp_from(&rows, 587, "ipv4", &edge["router_ipv4"]);
    v.expect_icmp_from(&rows, 587, "ipv6", &edge["router_ipv6"]);

    // An account's own rule (accept 25) wins over its provider's drop; the rest is inherited.
    let rows = lab.check("vip-1", "mx.lab.test", &[25, 465]);
    v.expect_both("vip-1", &rows, 25, "ok");
    v.expect_both("vip-1", &rows, 465, "refused");

    v.assert_none();
}

/// Rules changed live, and a destination port stopped and started, show at once.
#[test]
fn live_rule_changes_and_destination_outage() {
    if !lab_runnable("live_rule_changes_and_destination_outage") {
        return;
    }
    let lab = Lab::up('b');
    let mut v = Verdicts::default();
    let open = lab.host("open-1");

    lab.lab(&[
        "rule",
        "--provider",
        "open",
        "--port",
        "2525",
        "--family",
        "ipv4",
        "--action",
        "reject-icmp",
    ]);
    lab.lab(&[
        "rule",
        "--provider",
        "open",
        "--port",
        "587",
        "--family",
        "ipv6",
        "--action",
        "reject-tcp",
    ]);
    let rows = lab.check("open-1", "mx.lab.test", &[2525, 587]);
    v.expect("open-1", &rows, 2525, "ipv4", "unreachable");
    v.expect_icmp_from(&rows, 2525, "ipv4", &open["router_ipv4"]);
    v.expect("open-1", &rows, 2525, "ipv6", "ok");
    v.expect("open-1", &rows, 587, "ipv4", "ok");
    v.expect("open-1", &rows, 587, "ipv6", "refused");

    // Clearing the rules restores the path.
    for (port, family) in [("2525", "ipv4"), ("587", "ipv6")] {
        lab.lab(&[
            "rule",
            "--provider",
            "open",
            "--port",
            port,
            "--family",
            family,
            "--action",
            "clear",
        ]);
    }
    let rows = lab.check("open-1", "mx.lab.test", &[2525, 587]);
    v.expect_both("open-1", &rows, 2525, "ok");
    v.expect_both("open-1", &rows, 587, "ok");

    // A destination outage: nothing listens, the destination itself answers with a reset.
    lab.lab(&["dest", "stop", "2525"]);
    lab.lab(&["dest", "stop", "443"]);
    let rows = lab.check("open-1", "mx.lab.test", &[2525, 443, 25]);
    v.expect_both("open-1", &rows, 2525, "refused");
    v.expect_both("open-1", &rows, 443, "refused");
    v.expect_both("open-1", &rows, 25, "ok");
    lab.lab(&["dest", "start", "2525"]);
    lab.lab(&["dest", "start", "443"]);
    let rows = lab.check("open-1", "mx.lab.test", &[2525, 443]);
    v.expect_both("open-1", &rows, 2525, "ok");
    v.expect_both("open-1", &rows, 443, "ok");

    v.assert_none();
}

/// `down` removes every namespace, veth, /etc/netns entry and process of the lab, also when the
/// state directory is gone (a crashed run), and a second `down` is harmless.
#[test]
fn down_leaves_nothing_behind_even_after_a_crash() {
    if !lab_runnable("down_leaves_nothing_behind_even_after_a_crash") {
        return;
    }
    let name = format!("eo{}c", std::process::id());
    let lab = egresslab();
    let _ = run_bounded(
        Command::new(&lab).args(["down", "--name", &name]),
        COMMAND_LIMIT,
    );
    let scenario = lab.with_file_name("scenarios").join(SCENARIO);
    let state = std::env::temp_dir().join(format!("{name}-state"));
    let out = run_bounded(
        Command::new(&lab)
            .arg("up")
            .arg(&scenario)
            .args(["--name", &name, "--root-link", "--state"])
            .arg(&state),
        COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = |n: &str| n.starts_with(&format!("{name}-"));
    let netns = || -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| ours(n))
            .map(String::from)
            .collect()
    };
    let namespaces = netns();
    assert!(namespaces.len() >= 3, "namespaces after up: {namespaces:?}");
    let mut pids = Vec::new();
    for ns in &namespaces {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .expect("ip netns pids");
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from),
        );
    }
    assert!(
        !pids.is_empty(),
        "Postfix, DNS and listeners should be running"
    );

    // A crash: the state directory is lost; down must work from the name alone.
    std::fs::remove_dir_all(&state).expect("remove state dir");
    for _ in 0..2 {
        let out = run_bounded(
            Command::new(&lab).args(["down", "--name", &name]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(netns(), Vec::<String>::new(), "namespaces left");
    let etc: Vec<_> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !etc.iter().any(|n| ours(n)),
        "/etc/netns entries left: {etc:?}"
    );
    assert!(
        !Path::new(&format!("/sys/class/net/{name}-rl")).exists(),
        "root-link veth left"
    );
    let alive: Vec<_> = pids
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        alive.is_empty(),
        "processes of the lab still running: {alive:?}"
    );
}

/// The lab's pure parts (scenario parsing and errors, address plan, nft text, DNS answers) are
/// right; this one needs no root, only python3.
#[test]
fn lab_selftest() {
    if !on_path("python3") {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!in_ci, "lab_selftest: python3 missing; CI must install it");
        eprintln!("lab_selftest: SKIPPED: python3 missing");
        return;
    }
    let out = run_bounded(Command::new(egresslab()).arg("selftest"), COMMAND_LIMIT);
    assert!(
        out.status.success(),
        "egresslab selftest:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
