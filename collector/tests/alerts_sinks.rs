//! Alert delivery against real receivers: a local axum server standing in for a generic webhook
//! and for Slack's incoming webhook (we check the body format, not Slack itself), Debian's real
//! Prometheus Alertmanager (fire, read back from its own API, resolve), and a dead sink that
//! must be a logged, counted failure that blocks nothing.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use egresswatch_collector::alerts::{
    AlertCounters, Alerts, Links, SilentAgents, SinkConfig, SinkKind,
};
use egresswatch_collector::clock::{now_unix_ms, rfc3339};
use egresswatch_collector::events::{Event, EventKind, Scope, State as EventState, Witness};
use egresswatch_collector::fleet::{Fleet, FleetConfig};
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::silences::{NewSilence, Origin, SilenceBook};
use egresswatch_collector::store::memory::MemoryStore;
use egresswatch_collector::store::{EventStore, ResultStore};
use egresswatch_wire::{Family, ProbeCause};
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
    .unwrap()
    .with_links(Links {
        public_url: Some("https://watch.example".into()),
    });
    // Default rule: port 25 for one account is not news; 587 is; any provider-wide change is.
    alerts.enqueue(&event(25, Scope::Account, "open", "blocked"));
    let mut e587 = event(587, Scope::Account, "open", "blocked");
    e587.since = Some(rfc3339(e587.at_unix_ms - 90_000));
    e587.witnesses = vec![Witness {
        agent: "g1".into(),
        family: Family::Ipv4,
        outcome: "timeout".into(),
        icmp_from: Some("198.18.0.1".into()),
        cause: ProbeCause::Confirmation,
        at: rfc3339(e587.at_unix_ms - 30_000),
    }];
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
    // The event as /api/events serves it, plus what a person needs to act on it.
    let as_served = serde_json::to_value(&e587).unwrap();
    for (k, v) in as_served.as_object().unwrap() {
        assert_eq!(&hooks[0][k], v, "{k}");
    }
    assert_eq!(hooks[0]["kind"], "policy_changed");
    assert_eq!(hooks[0]["since"], e587.since.clone().unwrap());
    assert_eq!(hooks[0]["witnesses"][0]["icmp_from"], "198.18.0.1");
    assert!(hooks[0]["documented"]["source"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    assert_eq!(hooks[0]["page"], "https://watch.example/");
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
    assert!(
        text.contains(&format!("Since {}", e587.since.clone().unwrap())),
        "{text}"
    );
    assert!(
        text.contains("Seen by g1 (IPv4, timeout, ICMP from 198.18.0.1, confirmation probe)"),
        "{text}"
    );
    assert!(text.contains("Documented for 587:"), "{text}");
    assert!(text.contains("|source>)"), "{text}");
    assert!(
        text.contains("<https://watch.example/|Open the matrix>"),
        "{text}"
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
    let mut am = sink(SinkKind::Alertmanager, base.clone());
    am.resend_secs = 1;
    let alerts = Alerts::start(&[am], counters.clone()).unwrap();
    // Blocked over IPv4 only: the alert is labelled family=ipv4.
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
    assert_eq!(a["labels"]["family"], "ipv4");
    assert_eq!(a["status"]["state"], "active");
    assert!(a["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("open → blocked"));

    // The port opens again over both families at once (the event has no family): the IPv4
    // alert is resolved all the same (endsAt), so it leaves the active list.
    let mut reopened = event(587, Scope::Account, "blocked", "open");
    reopened.family = None;
    alerts.enqueue(&reopened);
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
    wait_for("the resolve delivered", || {
        counter(&counters, "sent", "alertmanager-test") >= 2
    })
    .await;
    // Nothing is left to re-send: past a re-send period the alert has not come back.
    let sent = counter(&counters, "sent", "alertmanager-test");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        counter(&counters, "sent", "alertmanager-test"),
        sent,
        "re-sent after the resolve"
    );
    let back = am_alerts(&client, &base)
        .await
        .into_iter()
        .any(|a| a["labels"]["alertname"] == "EgresswatchPortBlocked");
    assert!(!back, "the resolved alert came back");
    assert_eq!(counter(&counters, "failed", "alertmanager-test"), 0);
}

fn hook_bodies(inbox: &Inbox, path: &str) -> Vec<Value> {
    inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test]
async fn a_resolve_says_how_long_and_a_flapping_series_sends_one_notice() {
    let (addr, inbox) = receiver().await;
    let alerts = Alerts::start(
        &[
            sink(SinkKind::Webhook, format!("http://{addr}/hook")),
            sink(SinkKind::Slack, format!("http://{addr}/slack")),
        ],
        AlertCounters::default(),
    )
    .unwrap();
    let mut blocked = event(587, Scope::Account, "open", "blocked");
    blocked.at_unix_ms -= 3_900_000;
    blocked.at = rfc3339(blocked.at_unix_ms);
    alerts.enqueue(&blocked);
    alerts.enqueue(&event(587, Scope::Account, "blocked", "open"));
    // One agent's series on 465 swings in and out of flapping ten times.
    let mut swings = Vec::new();
    for _ in 0..10 {
        swings.push(event(465, Scope::Agent, "open", "flapping"));
        swings.push(event(465, Scope::Agent, "flapping", "open"));
    }
    for e in &swings {
        alerts.enqueue(e);
    }
    wait_for("6 deliveries", || inbox.lock().unwrap().len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hooks = hook_bodies(&inbox, "/hook");
    assert_eq!(hooks.len(), 4, "{hooks:?}");
    assert_eq!(hooks[1]["lasted_secs"], 3900);
    assert_eq!(hooks[1]["lasted"], "1h 5m");
    let flaps: Vec<&Value> = hooks.iter().filter(|h| h["port"] == 465).collect();
    assert_eq!(flaps.len(), 2, "one notice and its end: {flaps:?}");
    assert_eq!(flaps[0]["notice"], "flapping");
    assert_eq!(flaps[1]["from"], "flapping");
    let slack = hook_bodies(&inbox, "/slack");
    assert_eq!(slack.len(), 4);
    let resolve = slack[1]["text"].as_str().unwrap();
    assert!(resolve.contains("Lasted 1h 5m"), "{resolve}");
    assert!(slack[2]["text"].as_str().unwrap().contains("is flapping"));
}

#[tokio::test]
async fn a_silenced_event_is_recorded_and_shown_but_reaches_no_sink() {
    let (addr, inbox) = receiver().await;
    let store = Arc::new(MemoryStore::new());
    let now = now_unix_ms();
    let silence: NewSilence = serde_json::from_value(serde_json::json!({
        "matcher": {"account": "acct-q"},
        "ends_at": rfc3339(now + 3_600_000),
        "reason": "being rebuilt",
        "created_by": "ops",
    }))
    .unwrap();
    let silence = silence
        .validate("s-test".into(), Origin::Api, now - 10_000)
        .unwrap();
    let book = Arc::new(SilenceBook::new(vec![silence]));
    let counters = AlertCounters::default();
    let mut each = sink(SinkKind::Webhook, format!("http://{addr}/hook"));
    each.silent_agents = SilentAgents::Each;
    let alerts = Alerts::start(&[each], counters.clone())
        .unwrap()
        .with_silences(book);
    let fleet = Fleet::new(
        FleetConfig::default(),
        store.clone(),
        alerts,
        Arc::new(Metrics::new()),
    );
    let mut stream = fleet.subscribe();
    let meta = |id: &str, account: &str| egresswatch_collector::identity::AgentMeta {
        agent_id: id.into(),
        labels: egresswatch_wire::Labels {
            provider: "gcp".into(),
            account: account.into(),
            region: "r1".into(),
            instance: id.into(),
        },
        agent_version: "test".into(),
    };
    for (id, account) in [("quiet-1", "acct-q"), ("loud-1", "acct-l")] {
        store.upsert_agent(&meta(id, account), now).unwrap();
        egresswatch_collector::fleet::ResultObserver::agent_connected(
            fleet.as_ref(),
            &meta(id, account),
            now,
        );
    }
    // Both agents fall silent, each the last of its account.
    let grace = egresswatch_collector::detector::DetectorConfig::default().silent_after_secs as i64;
    fleet.tick(now + grace * 1000 + 5_000);
    wait_for("the loud agent and its account delivered", || {
        inbox.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hooks = hook_bodies(&inbox, "/hook");
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    assert!(hooks.iter().all(|h| h["account"] == "acct-l"), "{hooks:?}");
    assert!(hooks
        .iter()
        .any(|h| h["scope"] == "account" && h["to"] == "silent"));
    // Recorded, and served by /api/events and the stream, with the silence named.
    let stored: Vec<Value> = store
        .events(10)
        .unwrap()
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    let quiet = stored.iter().find(|e| e["agent"] == "quiet-1").unwrap();
    assert_eq!(quiet["silenced_by"], "s-test");
    assert!(stored
        .iter()
        .find(|e| e["agent"] == "loud-1")
        .unwrap()
        .get("silenced_by")
        .is_none());
    let mut streamed = Vec::new();
    while let Ok(m) = stream.try_recv() {
        if let egresswatch_collector::fleet::StreamMessage::Event(json) = m {
            streamed.push(json.to_string());
        }
    }
    assert!(
        streamed
            .iter()
            .any(|j| j.contains("\"silenced_by\":\"s-test\"")),
        "{streamed:?}"
    );
    let silenced = counters
        .silenced
        .get_or_create(&vec![("sink".to_string(), "webhook-test".to_string())])
        .get();
    assert!(silenced >= 1);
}
