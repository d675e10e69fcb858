//! Alert delivery against real receivers: a local axum server standing in for a generic webhook
//! and for Slack's incoming webhook (we check the body format, not Slack itself), Debian's real
//! Prometheus Alertmanager (fire, read back from its own API, resolve), and a dead sink that
//! must be a logged, counted failure that blocks nothing.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use egresswatch_collector::alerts::{AlertCounters, Alerts, SinkConfig, SinkKind};
use egresswatch_collector::events::{
    now_unix_ms, rfc3339, Event, EventKind, Scope, State as EventState,
};
use egresswatch_wire::Family;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{debian_tool, Proc};

type Inbox = Arc<Mutex<Vec<(String, Value)>>>;

/// A receiver that records every POST body by path; `/slow` takes 2 s to answer.
async fn receiver() -> (SocketAddr, Inbox) {
    let inbox: Inbox = Arc::default();
    async fn record(
        State(inbox): State<Inbox>,
        uri: axum::http::Uri,
        Json(body): Json<Value>,
    ) -> &'static str {
        if uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        inbox.lock().unwrap().push((uri.path().to_string(), body));
        "ok"
    }
    let app = Router::new()
        .route("/hook", post(record))
        .route("/slack", post(record))
        .route("/slow", post(record))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, inbox)
}

/// A state by its name in the event JSON.
fn state(name: &str) -> EventState {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

fn event(port: u16, scope: Scope, from: &str, to: &str) -> Event {
    let now = now_unix_ms();
    Event {
        kind: EventKind::PolicyChanged,
        scope,
        provider: Some("gcp".into()),
        account: (scope != Scope::Provider).then(|| "acct-<a>".to_string()),
        agent: (scope == Scope::Agent).then(|| "g1".to_string()),
        target: Some("mx.lab".into()),
        port: Some(port),
        from: state(from),
        to: state(to),
        at: rfc3339(now),
        family: Some(Family::Ipv4),
        id: None,
        outcome: (to == "blocked").then(|| "timeout".to_string()),
        at_unix_ms: now,
        since: None,
        witnesses: Vec::new(),
        silenced_by: None,
    }
}

fn sink(kind: SinkKind, url: String) -> SinkConfig {
    SinkConfig {
        name: format!("{}-test", kind.as_str()),
        kind,
        url,
        retries: 1,
        backoff_ms: 20,
        timeout_secs: 2,
        ..Default::default()
    }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counter(c: &AlertCounters, which: &str, sink: &str) -> u64 {
    let label = vec![("sink".to_string(), sink.to_string())];
    match which {
        "sent" => c.sent.get_or_create(&label).get(),
        "failed" => c.failed.get_or_create(&label).get(),
        _ => c.dropped.get_or_create(&label).get(),
    }
}

#[tokio::test]
async fn webhook_and_slack_get_their_formats_and_the_default_rule_applies() {
    let (addr, inbox) = receiver().await;
    let counters = AlertCounters::default();
    let alerts = Alerts::start(
        &[
            sink(SinkKind::Webhook, format!("http://{addr}/hook")),
            sink(SinkKind::Slack, format!("http://{addr}/slack")),
        ],
        counters.clone(),
    )
    .unwrap();
    // Default rule: port 25 for one account is not news; 587 is; any provider-wide change is.
    alerts.enqueue(&event(25, Scope::Account, "open", "blocked"));
    let e587 = event(587, Scope::Account, "open", "blocked");
    alerts.enqueue(&e587);
    alerts.enqueue(&e587); // deduplicated
    alerts.enqueue(&event(25, Scope::Provider, "blocked", "open"));
    wait_for("4 deliveries", || inbox.lock().unwrap().len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = inbox.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    let hooks: Vec<&Value> = got
        .iter()
        .filter(|(p, _)| p == "/hook")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0], &serde_json::to_value(&e587).unwrap());
    assert_eq!(hooks[0]["kind"], "policy_changed");
    assert_eq!(hooks[0]["port"], 587);
    let slack: Vec<&Value> = got
        .iter()
        .filter(|(p, _)| p == "/slack")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(slack.len(), 2);
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains("587") && text.contains("open → blocked"),
        "{text}"
    );
    assert!(
        text.contains("acct-&lt;a&gt;"),
        "labels escaped for Slack: {text}"
    );
    wait_for("webhook deliveries counted", || {
        counter(&counters, "sent", "webhook-test") == 2
    })
    .await;
    assert_eq!(counter(&counters, "failed", "webhook-test"), 0);
}

#[tokio::test]
async fn a_dead_or_slow_sink_is_counted_and_blocks_nothing() {
    let (addr, inbox) = receiver().await;
    // A port nobody listens on: bind, learn, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let counters = AlertCounters::default();
    let mut slow = sink(SinkKind::Webhook, format!("http://{addr}/slow"));
    slow.name = "slow".into();
    slow.queue = 1;
    let alerts = Alerts::start(
        &[
            sink(SinkKind::Webhook, format!("http://{dead}/hook")),
            slow,
            sink(SinkKind::Slack, format!("http://{addr}/slack")),
        ],
        counters.clone(),
    )
    .unwrap();
    let start = Instant::now();
    for port in [465u16, 587] {
        for to in ["blocked", "open", "blocked", "open", "blocked"] {
            let from = if to == "open" { "blocked" } else { "open" };
            alerts.enqueue(&event(port, Scope::Account, from, to));
        }
    }
    let enqueue_time = start.elapsed();
    assert!(
        enqueue_time < Duration::from_millis(100),
        "enqueue waited {enqueue_time:?}"
    );
    // The healthy sink gets everything despite its dead and slow neighbours.
    wait_for("slack deliveries", || {
        inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/slack")
            .count()
            == 10
    })
    .await;
    wait_for("dead sink failures counted", || {
        counter(&counters, "failed", "webhook-test") == 10
    })
    .await;
    assert_eq!(counter(&counters, "sent", "webhook-test"), 0);
    // The slow sink's queue of 1 overflowed: drops are counted, not waited for.
    assert!(counter(&counters, "dropped", "slow") >= 1);
}

#[tokio::test]
async fn bad_sink_urls_are_config_errors_naming_the_key() {
    let err = match Alerts::start(
        &[
            sink(SinkKind::Webhook, "http://127.0.0.1:1/x".into()),
            sink(SinkKind::Slack, "not a url".into()),
        ],
        AlertCounters::default(),
    ) {
        Ok(_) => panic!("accepted a bad URL"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("alerts[1].url"), "{err}");
    let parsed: Result<SinkConfig, _> = toml::from_str("url = \"http://x\"\nbogus = 1\n");
    let msg = parsed.unwrap_err().to_string();
    assert!(msg.contains("bogus"), "{msg}");
}

async fn am_alerts(client: &reqwest::Client, base: &str) -> Vec<Value> {
    client
        .get(format!("{base}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

#[tokio::test]
async fn alertmanager_receives_and_resolves() {
    if !debian_tool(
        "/usr/bin/prometheus-alertmanager",
        "prometheus-alertmanager",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("am.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _am = Proc(
        std::process::Command::new("/usr/bin/prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/-/ready")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "alertmanager not ready in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let counters = AlertCounters::default();
    let alerts = Alerts::start(
        &[sink(SinkKind::Alertmanager, base.clone())],
        counters.clone(),
    )
    .unwrap();
    alerts.enqueue(&event(587, Scope::Account, "open", "blocked"));
    let mut found = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while found.is_none() {
        assert!(Instant::now() < deadline, "alert never showed up");
        found = am_alerts(&client, &base)
            .await
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "EgresswatchPortBlocked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = found.unwrap();
    assert_eq!(a["labels"]["port"], "587");
    assert_eq!(a["labels"]["scope"], "account");
    assert_eq!(a["labels"]["account"], "acct-<a>");
    assert_eq!(a["status"]["state"], "active");
    assert!(a["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("open → blocked"));

    // The port opens again: the same alert is resolved (endsAt), so it leaves the active list.
    alerts.enqueue(&event(587, Scope::Account, "blocked", "open"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let still = am_alerts(&client, &base)
            .await
            .into_iter()
            .any(|a| a["labels"]["alertname"] == "EgresswatchPortBlocked");
        if !still {
            break;
        }
        assert!(Instant::now() < deadline, "alert never resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alertmanager may apply the resolve before our worker has read its answer.
    wait_for("two deliveries counted", || {
        counter(&counters, "sent", "alertmanager-test") == 2
    })
    .await;
    assert_eq!(counter(&counters, "failed", "alertmanager-test"), 0);
}
