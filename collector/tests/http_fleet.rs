//! The whole shell wired together: results go in through `ResultObserver` (as ingest will call
//! it), one account's 587 closes, and exactly one account-scope event comes out everywhere at
//! once — `/api/events`, the SSE stream, a webhook sink and `/metrics` — and nothing for the
//! sibling account.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use egresswatch_collector::alerts::{AlertCounters, Alerts, SinkConfig, SinkKind};
use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::store::shared::FeedItem;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::{Family, Outcome, ProbeResult};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::agent_meta;
use support::http::{json_of, loopback, read_until, text_of, Server};

#[tokio::test]
async fn one_account_closing_587_is_one_event_everywhere() {
    // Webhook receiver.
    let inbox: Arc<Mutex<Vec<Value>>> = Arc::default();
    async fn record(State(inbox): State<Arc<Mutex<Vec<Value>>>>, Json(v): Json<Value>) {
        inbox.lock().unwrap().push(v);
    }
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(record))
        .with_state(inbox.clone());
    tokio::spawn(async move { axum::serve(hook, app).await.unwrap() });

    let metrics = Arc::new(Metrics::new());
    let alerts = Alerts::start(
        &[SinkConfig {
            kind: SinkKind::Webhook,
            url: format!("http://{hook_addr}/hook"),
            ..Default::default()
        }],
        AlertCounters::register(&metrics),
    )
    .unwrap();
    let server = Server::start_with(loopback(), alerts, metrics).await;
    let (fleet, store) = (server.fleet.clone(), server.store.clone());

    let client = reqwest::Client::new();
    let mut sse = client.get(server.url("/api/stream")).send().await.unwrap();
    assert_eq!(sse.status(), 200);

    let agents = [
        agent_meta("a1", "aws", "acct-1"),
        agent_meta("a2", "aws", "acct-1"),
        agent_meta("b1", "aws", "acct-2"),
        agent_meta("h1", "hetzner", "h"),
    ];
    // Simulated time runs ahead of the wall clock so the server's own ticks never settle
    // anything: the test drives time.
    let t0 = now_unix_ms() + 1_000;
    let mut seq = 0;
    // Five open rounds settle every series (the detector's baseline test decides at its bound),
    // then acct-1's 587 closes.
    for round in 0..12i64 {
        let now = t0 + round * 60_000;
        for a in &agents {
            let closed = a.labels.account == "acct-1" && round >= 5;
            let results: Vec<ProbeResult> = [(587u16, closed), (443, false)]
                .into_iter()
                .map(|(port, fail)| {
                    seq += 1;
                    ProbeResult {
                        seq,
                        at_unix_ms: now,
                        target: "mx.lab".into(),
                        port,
                        family: Family::Ipv4,
                        outcome: if fail { Outcome::Timeout } else { Outcome::Ok },
                        ..Default::default()
                    }
                })
                .collect();
            let items = FeedItem::of_batch(a, &results, true, now);
            let report = store
                .insert_results(&a.agent_id, results, true.into(), now)
                .unwrap();
            assert_eq!(report.accepted as usize, items.len());
            fleet.observe_feed(items);
        }
        for s in 1..=60 {
            fleet.tick(now + s * 1000);
        }
    }

    assert!(fleet.events_recorded(Duration::from_secs(10)).await);
    let events: Vec<Value> = json_of(client.get(server.url("/api/events"))).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["kind"], "policy_changed");
    assert_eq!(e["scope"], "account");
    assert_eq!(e["provider"], "aws");
    assert_eq!(e["account"], "acct-1");
    assert_eq!(e["port"], 587);
    assert_eq!(e["to"], "blocked");

    // SSE: the event arrives as `event: event`.
    let mut buf = String::new();
    read_until(&mut sse, &mut buf, "event: event").await;
    read_until(&mut sse, &mut buf, "acct-1\",\"agent\"").await;

    // Webhook: the same event object, with its id.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while inbox.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "webhook got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = inbox.lock().unwrap()[0].clone();
    assert_eq!(got["scope"], "account");
    assert_eq!(got["account"], "acct-1");
    assert!(got["id"].is_number());
    // ...which `/api/events` serves too: one shape everywhere.
    assert_eq!(got["id"], e["id"]);

    // The matrix shows the account blocked, the sibling open.
    let m: Value = json_of(client.get(server.url("/api/matrix"))).await;
    let aws = m["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "aws")
        .unwrap();
    assert_eq!(aws["cells"]["587"]["status"], "partial");
    assert_eq!(aws["accounts"][0]["cells"]["587"]["status"], "blocked");
    assert_eq!(aws["accounts"][1]["cells"]["587"]["status"], "open");

    let text = text_of(client.get(server.url("/metrics"))).await;
    assert!(
        text.contains("egresswatch_events_total{kind=\"policy_changed\",scope=\"account\"} 1"),
        "{text}"
    );
    drop(sse);
    server.stop().await;
}
