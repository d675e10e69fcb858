//! The README's demo, shortened (lab/scenarios/demo-short.toml): real agents in simulated clouds,
//! the collector, the local webhook receiver, the scripted timeline. Asserts that the receiver got
//! exactly the timeline's four alerts, each at its layer (the AWS account whose 587 closes and
//! reopens, the destination whose 2525 goes down and comes back), that the page's mail-provider
//! section shows DigitalOcean's SMTP to the simulated ZeptoMail blocked with its HTTPS API the
//! way out (and its SMTP working from GCP and the other AWS account) without an alert, and that
//! the demo cleaned up after itself. Root only (skipped with a reason otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

#[test]
fn shortened_demo_alerts_and_cleans_up() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        eprintln!("SKIPPED shortened_demo_alerts_and_cleans_up: needs root for network namespaces");
        return;
    }
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_egresswatch-collector"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert!(
        bin_dir.join("egresswatch-agent").exists(),
        "build the agent first: cargo build --workspace --bins"
    );
    let name = format!("dm{}", std::process::id() % 100_000);
    let alerts = tempfile::NamedTempFile::new().unwrap();
    // Below the kernel's ephemeral range (32768–60999 by default), where a port some connection
    // happens to hold would make the collector's bind fail.
    let port = 23_000 + (std::process::id() % 3_000) as u16;
    let out = Command::new(repo().join("lab/demo"))
        .args([
            "--scenario",
            "lab/scenarios/demo-short.toml",
            "--exit-after-timeline",
            "--name",
            &name,
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("EGRESSWATCH_DEMO_ALERTS_OUT", alerts.path())
        .env("EGRESSWATCH_DEMO_TAIL", "40")
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("TIMELINE"), "{stdout}");
    // The "Mail provider × account" rows as the demo prints them from /api/mail-providers.
    for row in [
        "digitalocean / team (2 agents): SMTP blocked (465 blocked · 587 blocked); API answers: the way out",
        "gcp / shop-prod (2 agents): SMTP works over 465 and 587 (465 open · 587 open); API answers",
        "aws / acct-b (2 agents): SMTP works over 465 and 587 (465 open · 587 open); API answers",
    ] {
        assert!(stdout.contains(row), "no mail row {row:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("aws / acct-a"),
        "acct-a does not watch the mail provider:\n{stdout}"
    );
    let received = std::fs::read_to_string(alerts.path()).unwrap();
    let events: Vec<serde_json::Value> = received
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Exactly the timeline's four changes, each once and at its layer, in order.
    let named: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}:{} {}",
                e["kind"].as_str().unwrap_or("?"),
                e["scope"].as_str().unwrap_or("?"),
                e["provider"].as_str().unwrap_or("-"),
                e["account"].as_str().unwrap_or("-"),
                e["port"],
                e["to"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            "policy_changed account aws acct-a:587 blocked",
            "policy_changed account aws acct-a:587 open",
            "destination_outage destination - -:2525 blocked",
            "destination_outage destination - -:2525 open",
        ],
        "received:\n{received}\nstderr:\n{stderr}"
    );
    // Nothing left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&format!("{name}-")),
        "namespaces left behind"
    );
    assert!(!Path::new(&format!("/var/tmp/egresswatch-demo-{name}")).exists());
}

extern "C" {
    fn geteuid() -> u32;
}
