//! `check` across a real router, as root: three throwaway network namespaces (client → router →
//! destination) and nftables rules on the router and the destination that drop, reset or reject
//! with ICMP administratively-prohibited, over IPv4 and IPv6. Asserts the exact outcome of each
//! port and that the rejecting hop read from the socket error queue (IP_RECVERR / IPV6_RECVERR)
//! tells the router from the destination's own firewall.
//!
//! Needs root, iproute2, nftables and veth; skipped with a printed reason otherwise. Namespaces are
//! named `ewp<pid>…` and removed even when the test fails.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{nft, run, set_sysctls};

const ROUTER_V4: &str = "198.18.201.2";
const DEST_V4: &str = "198.18.201.6";
const ROUTER_V6: &str = "2001:db8:e1:1::2";
const DEST_V6: &str = "2001:db8:e1:2::2";

struct Lab {
    prefix: String,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["c", "r", "d"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// client (c) —veth— router (r) —veth— destination (d).
fn build(lab: &Lab) -> Result<(), String> {
    let (c, r, d) = (lab.ns("c"), lab.ns("r"), lab.ns("d"));
    let p = &lab.prefix;
    for ns in [&c, &r, &d] {
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        // No duplicate address detection, link-local included: while a fresh link-local address
        // is tentative, the first IPv6 packets through the router are lost and a probe started
        // right away would read a setup artefact as a silent drop.
        set_sysctls(
            ns,
            &[
                "net/ipv6/conf/default/accept_dad",
                "net/ipv6/conf/all/accept_dad",
            ],
            "0",
        )?;
    }
    let (c_if, rc_if, rd_if, d_if) = (
        format!("{p}c0"),
        format!("{p}r0"),
        format!("{p}r1"),
        format!("{p}d0"),
    );
    run(&[
        "ip", "link", "add", &c_if, "netns", &c, "type", "veth", "peer", "name", &rc_if, "netns",
        &r,
    ])?;
    run(&[
        "ip", "link", "add", &rd_if, "netns", &r, "type", "veth", "peer", "name", &d_if, "netns",
        &d,
    ])?;
    let addrs = [
        (&c, &c_if, "198.18.201.1/30", "2001:db8:e1:1::1/64"),
        (&r, &rc_if, "198.18.201.2/30", "2001:db8:e1:1::2/64"),
        (&r, &rd_if, "198.18.201.5/30", "2001:db8:e1:2::1/64"),
        (&d, &d_if, "198.18.201.6/30", "2001:db8:e1:2::2/64"),
    ];
    for (ns, ifname, v4, v6) in addrs {
        run(&["ip", "-n", ns, "addr", "add", v4, "dev", ifname])?;
        run(&["ip", "-n", ns, "addr", "add", v6, "dev", ifname, "nodad"])?;
        run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
    }
    run(&[
        "ip",
        "-n",
        &c,
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        ROUTER_V4,
    ])?;
    run(&[
        "ip",
        "-n",
        &c,
        "-6",
        "route",
        "add",
        "2001:db8::/32",
        "via",
        ROUTER_V6,
    ])?;
    run(&[
        "ip",
        "-n",
        &d,
        "route",
        "add",
        "default",
        "via",
        "198.18.201.5",
    ])?;
    run(&[
        "ip",
        "-n",
        &d,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:e1:2::1",
    ])?;
    set_sysctls(
        &r,
        &["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"],
        "1",
    )?;
    // The router plays a provider's edge: 25 dropped, 465 reset, 587 rejected with ICMP.
    nft(
        &r,
        "table inet edge {
            chain forward {
                type filter hook forward priority 0; policy accept;
                tcp dport 25 drop
                tcp dport 465 reject with tcp reset
                tcp dport 587 reject with icmpx type admin-prohibited
            }
        }",
    )?;
    // The destination's own firewall rejects 2525 with ICMP; nothing listens on 443 (RST).
    nft(
        &d,
        "table inet host {
            chain input {
                type filter hook input priority 0; policy accept;
                tcp dport 2525 reject with icmpx type admin-prohibited
            }
        }",
    )?;
    Ok(())
}

fn check(lab: &Lab, extra: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("c")])
        .arg(env!("CARGO_BIN_EXE_egresswatch-agent"))
        .args([
            "check",
            DEST_V4,
            DEST_V6,
            "--timeout",
            "2s",
            "--level",
            "connect",
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        started.elapsed(),
    )
}

fn row<'a>(rows: &'a [Value], port: u64, family: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["port"] == port && r["family"] == family && !r["address"].is_null())
        .unwrap_or_else(|| panic!("no row for {port}/{family}"))
}

#[test]
fn drop_reset_and_icmp_rejects_are_told_apart_and_the_rejecting_hop_is_named() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (network namespaces, nftables)");
        return;
    }
    let lab = Lab {
        prefix: format!("ewp{}", std::process::id()),
    };
    if let Err(e) = build(&lab) {
        if e.contains("Unknown device type") {
            eprintln!("SKIP: this kernel has no veth: {e}");
            return;
        }
        panic!("building the namespaces: {e}");
    }

    let (code, stdout, elapsed) = check(&lab, &["--json"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(elapsed < Duration::from_secs(4), "concurrent: {elapsed:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    if std::env::var_os("EWP_DEBUG").is_some() {
        for r in &rows {
            eprintln!("{r}");
        }
    }
    for (family, router, dest) in [("ipv4", ROUTER_V4, DEST_V4), ("ipv6", ROUTER_V6, DEST_V6)] {
        let dropped = row(&rows, 25, family);
        assert_eq!(dropped["outcome"], "timeout", "{dropped}");
        assert!(dropped["connect_ms"].is_null());
        assert!(
            dropped["syn_retransmits"].as_u64().unwrap_or(0) >= 1,
            "{dropped}"
        );

        let reset = row(&rows, 465, family);
        assert_eq!(reset["outcome"], "refused", "{reset}");
        assert_eq!(reset["errno"], libc::ECONNREFUSED);

        let edge = row(&rows, 587, family);
        assert_eq!(edge["outcome"], "unreachable", "{edge}");
        // The raw errno is kept as the kernel gave it: Linux makes ICMPv6 admin-prohibited EACCES.
        let errno = if family == "ipv4" {
            libc::EHOSTUNREACH
        } else {
            libc::EACCES
        };
        assert_eq!(edge["errno"], errno, "{edge}");
        assert_eq!(edge["icmp"]["from"], router, "the router rejected: {edge}");
        let (icmp_type, icmp_code) = if family == "ipv4" { (3, 13) } else { (1, 1) };
        assert_eq!(edge["icmp"]["icmp_type"], icmp_type, "{edge}");
        assert_eq!(edge["icmp"]["icmp_code"], icmp_code, "{edge}");
        assert!(edge["detail"]
            .as_str()
            .unwrap()
            .contains("administratively prohibited"));

        let own = row(&rows, 2525, family);
        assert_eq!(own["outcome"], "unreachable", "{own}");
        assert_eq!(own["icmp"]["from"], dest, "the destination rejected: {own}");

        let closed = row(&rows, 443, family);
        assert_eq!(closed["outcome"], "refused", "{closed}");
    }

    let (code, table, _) = check(&lab, &[]);
    println!("{table}");
    assert_eq!(code, Some(1));
    assert!(
        table.contains(&format!(
            "587 is rejected by a router on the path ({ROUTER_V4}, {ROUTER_V6}, ICMP)"
        )),
        "{table}"
    );
    assert!(
        table.contains("2525 is rejected by the destination itself"),
        "{table}"
    );
    assert!(
        table.contains("25 times out while 443 gets an answer (refused)"),
        "{table}"
    );
}

#[test]
fn a_reject_rule_in_this_hosts_own_output_chain_is_local_denied_not_a_router() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (network namespaces, nftables)");
        return;
    }
    let lab = Lab {
        prefix: format!("ewq{}", std::process::id()),
    };
    if let Err(e) = build(&lab) {
        if e.contains("Unknown device type") {
            eprintln!("SKIP: this kernel has no veth: {e}");
            return;
        }
        panic!("building the namespaces: {e}");
    }
    // The probing host's own firewall, as a VM's nftables would have it.
    nft(
        &lab.ns("c"),
        "table inet own {
            chain output {
                type filter hook output priority 0; policy accept;
                tcp dport 2526 reject with icmpx type admin-prohibited
                tcp dport 2527 reject with icmpx type port-unreachable
            }
        }",
    )
    .expect("the client's output rules");
    let ports = ["--port", "2526", "--port", "2527", "--port", "587"];
    let mut args = vec!["--json"];
    args.extend(ports);
    let (code, stdout, _) = check(&lab, &args);
    assert_eq!(code, Some(1), "{stdout}");
    let rows: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    let own_v4 = "198.18.201.1";
    let own_v6 = "2001:db8:e1:1::1";
    for (family, own) in [("ipv4", own_v4), ("ipv6", own_v6)] {
        for port in [2526, 2527] {
            let local = row(&rows, port, family);
            assert_eq!(local["outcome"], "local_denied", "{local}");
            assert_eq!(local["icmp"]["from"], own, "this host's address: {local}");
            let detail = local["detail"].as_str().unwrap();
            assert!(detail.contains("(an address of this host)"), "{detail}");
        }
        // The router's reject keeps its reading.
        let edge = row(&rows, 587, family);
        assert_eq!(edge["outcome"], "unreachable", "{edge}");
    }
    let (code, table, _) = check(&lab, &ports);
    println!("{table}");
    assert_eq!(code, Some(1));
    assert!(
        table.contains(&format!(
            "2526 is rejected by this host's own firewall (administratively prohibited: ICMP from {own_v4}, {own_v6}, addresses of this host): a reject rule in this host's output chain"
        )),
        "{table}"
    );
    assert!(
        table.contains("2527 is rejected by this host's own firewall (port unreachable"),
        "{table}"
    );
    assert!(
        table.contains("587 is rejected by a router on the path"),
        "{table}"
    );
    assert!(!table.contains("2526 is rejected by a router"), "{table}");
}
