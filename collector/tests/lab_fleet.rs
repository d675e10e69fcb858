//! The whole system in the namespace lab: real agents in simulated clouds (real nftables edges),
//! a real Postfix destination, the real collector in the root namespace. Asserts the detector's
//! promises end to end: one account's 587 closing is one `account` event and nothing for its
//! sibling; the destination's 2525 going down is a `destination_outage`, not a policy change; 5 %
//! random packet loss on every link raises no event at all.
//!
//! Needs root (network namespaces); skipped with a reason otherwise. With CI=true, missing tools
//! fail instead of skipping.

use serde_json::Value;
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
[lab]
description = "two AWS accounts and a GCP account, all open: the detector's end-to-end test"
[[provider]]
name = "aws"
[[provider.account]]
name = "prod"
hosts = 2
[[provider.account]]
name = "dev"
hosts = 2
[[provider]]
name = "gcp"
[[provider.account]]
name = "main"
hosts = 2
"#;

mod support;
use support::{agent_bin, skip_lab_test, LabAgent, LabRun};

async fn get(http: &str, path: &str) -> Value {
    let body = reqwest::get(format!("http://{http}{path}"))
        .await
        .expect("collector answers")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("JSON")
}

fn cell<'a>(
    matrix: &'a Value,
    provider: &str,
    account: Option<&str>,
    port: u16,
) -> Option<&'a Value> {
    let p = matrix["providers"]
        .as_array()?
        .iter()
        .find(|p| p["provider"] == provider)?;
    let row = match account {
        Some(a) => p["accounts"]
            .as_array()?
            .iter()
            .find(|x| x["account"] == a)?,
        None => p,
    };
    row["cells"].get(port.to_string())
}

fn events_matching(events: &Value, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    events
        .as_array()
        .map(|a| a.iter().filter(|e| f(e)).cloned().collect())
        .unwrap_or_default()
}

async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_are_attributed_and_loss_is_quiet() {
    if skip_lab_test("policy_changes_are_attributed_and_loss_is_quiet") {
        return;
    }
    let mut run = LabRun::up("fl", SCENARIO);

    // The collector, in the root namespace, on the root link.
    let collector = run.start_collector(
        "[detector]\nsettle_secs = 4\nsilent_after_secs = 90\nreplay_after_secs = 60\n[matrix]\nfresh_secs = 120\n",
    );
    let (quic_port, http) = (collector.quic.port(), collector.http.to_string());

    // One certificate and one config per host; every agent started in its own namespace.
    let hosts = run.state["hosts"].as_array().unwrap().clone();
    let configs = run.agents_dir();
    std::fs::create_dir_all(&configs).unwrap();
    for host in &hosts {
        let id = host["name"].as_str().unwrap();
        let toml = run.agent_config(
            quic_port,
            &LabAgent {
                id,
                provider: host["provider"].as_str().unwrap(),
                account: host["account"].as_str().unwrap(),
                ports: &[587, 2525, 443],
                interval: "2s",
                timeout: "3s",
                spool: &run.work.path().join("spool").join(id),
            },
        );
        std::fs::write(configs.join(format!("{id}.toml")), toml).unwrap();
    }
    let lab = &run.lab;
    let agent = agent_bin();
    let template = format!("{}/{{host}}.toml", configs.display());
    lab.run(&[
        "spawn",
        "all",
        "--",
        agent.to_str().unwrap(),
        "run",
        "--config",
        &template,
    ]);

    // Every agent reporting, every cell open.
    wait_for(
        "all six agents with 587 open",
        Duration::from_secs(90),
        async || {
            let m = get(&http, "/api/matrix").await;
            let aws = cell(&m, "aws", None, 587)?;
            let gcp = cell(&m, "gcp", None, 587)?;
            (aws["status"] == "open" && aws["ok"] == 4 && gcp["status"] == "open" && gcp["ok"] == 2)
                .then_some(())
        },
    )
    .await;

    // (1) One account's 587 closes: one account event, nothing for its sibling.
    lab.rule("aws", "prod", 587, "drop");
    let is_prod_587 = |e: &Value| {
        e["kind"] == "policy_changed"
            && e["port"] == 587
            && e["account"] == "prod"
            && e["to"] == "blocked"
    };
    let (_, delay) = wait_for(
        "an account event for aws/prod 587",
        Duration::from_secs(60),
        async || {
            let ev = get(&http, "/api/events").await;
            (!events_matching(&ev, is_prod_587).is_empty()).then_some(())
        },
    )
    .await;
    eprintln!("policy flip to account event: {:.1} s", delay.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let events = get(&http, "/api/events").await;
    let prod = events_matching(&events, is_prod_587);
    assert_eq!(
        prod.len(),
        1,
        "exactly one event for aws/prod 587: {events:#}"
    );
    assert_eq!(prod[0]["scope"], "account", "{:#}", prod[0]);
    // The event names its evidence: when it began, and the prod agents that saw it.
    let prod_agents: std::collections::BTreeSet<&str> = hosts
        .iter()
        .filter(|h| h["provider"] == "aws" && h["account"] == "prod")
        .filter_map(|h| h["name"].as_str())
        .collect();
    let witnesses: std::collections::BTreeSet<&str> = prod[0]["witnesses"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["agent"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(witnesses, prod_agents, "{:#}", prod[0]);
    assert!(prod[0]["since"].is_string(), "{:#}", prod[0]);
    assert!(
        events_matching(&events, |e| e["account"] == "dev"
            || e["scope"] == "provider")
        .is_empty(),
        "sibling or provider events: {events:#}"
    );
    let m = get(&http, "/api/matrix").await;
    assert_eq!(
        cell(&m, "aws", Some("prod"), 587).unwrap()["status"],
        "blocked"
    );
    assert_eq!(cell(&m, "aws", Some("dev"), 587).unwrap()["status"], "open");
    assert_eq!(cell(&m, "aws", None, 587).unwrap()["status"], "partial");

    // (2) The destination's 2525 goes down: a destination outage, not a policy change.
    lab.run(&["dest", "stop", "2525"]);
    wait_for(
        "a destination outage on 2525",
        Duration::from_secs(60),
        async || {
            let ev = get(&http, "/api/events").await;
            (!events_matching(&ev, |e| {
                e["kind"] == "destination_outage" && e["port"] == 2525
            })
            .is_empty())
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = get(&http, "/api/events").await;
    assert!(
        events_matching(&events, |e| e["kind"] == "policy_changed"
            && e["port"] == 2525)
        .is_empty(),
        "a destination outage was reported as a policy change: {events:#}"
    );
    assert!(
        events_matching(&events, |e| e["kind"] == "destination_outage"
            && e["port"] == 2525)
        .iter()
        .all(|e| e["scope"] == "destination"),
        "{events:#}"
    );

    // Back to normal, and quiet.
    lab.run(&["dest", "start", "2525"]);
    lab.rule("aws", "prod", 587, "clear");
    let mut last = (0usize, Instant::now());
    wait_for(
        "all open again and no new event for 15 s",
        Duration::from_secs(120),
        async || {
            let m = get(&http, "/api/matrix").await;
            let open = [587u16, 2525]
                .iter()
                .all(|p| cell(&m, "aws", None, *p).is_some_and(|c| c["status"] == "open"));
            let n = get(&http, "/api/events")
                .await
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            if n != last.0 {
                last = (n, Instant::now());
            }
            (open && last.1.elapsed() > Duration::from_secs(15)).then_some(())
        },
    )
    .await;

    // (3) 5 % random loss on every link for two minutes: no event at all.
    let before = get(&http, "/api/events")
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    lab.run(&["loss", "5"]);
    tokio::time::sleep(Duration::from_secs(120)).await;
    lab.run(&["loss", "0"]);
    let events = get(&http, "/api/events").await;
    let after = events.as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(after, before, "events under 5 % loss: {events:#}");
}
