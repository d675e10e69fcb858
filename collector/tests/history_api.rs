//! `/api/history` and `/api/intervals` over real HTTP, served by a real axum server from a real
//! SQLite store fed as ingest feeds it: the agreed shapes, JSON and CSV (by `format=csv` and by
//! `Accept: text/csv`), the bounds, and a clear 400 naming the parameter for each bad request.

use egresswatch_collector::alerts::Alerts;
use egresswatch_collector::fleet::{Fleet, FleetConfig};
use egresswatch_collector::http::{self, HttpConfig};
use egresswatch_collector::limits::LimitCounters;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::{Family, Outcome, PhaseTimings, ProbeResult};
use serde_json::Value;
use std::sync::Arc;

mod support;
use support::agent_meta;

/// 2026-11-30T00:00:00Z.
const T0: i64 = 1_795_996_800_000;
const MIN: i64 = 60_000;

/// g1 (gcp/acct-a) on port 587 over IPv4: an hour open, half an hour timing out, then open
/// again for an hour and a half; g2 (gcp/acct-b) blocked throughout.
fn feed(store: &SqliteStore) {
    for (id, account) in [("g1", "acct-a"), ("g2", "acct-b")] {
        store
            .upsert_agent(&agent_meta(id, "gcp", account), T0)
            .unwrap();
    }
    let probe = |seq: u64, outcome: Outcome| ProbeResult {
        seq,
        at_unix_ms: T0 + (seq as i64 - 1) * MIN,
        target: "mx.lab".into(),
        port: 587,
        family: Family::Ipv4,
        outcome,
        timings: PhaseTimings {
            connect_us: (outcome == Outcome::Ok).then_some(12_000),
            ..Default::default()
        },
        ..Default::default()
    };
    let g1: Vec<_> = (1..=180)
        .map(|s| {
            probe(
                s,
                if (61..=90).contains(&s) {
                    Outcome::Timeout
                } else {
                    Outcome::Ok
                },
            )
        })
        .collect();
    let g2: Vec<_> = (1..=180).map(|s| probe(s, Outcome::Refused)).collect();
    let later = T0 + 86_400_000;
    for chunk in g1.chunks(50) {
        store
            .insert_results("g1", chunk.to_vec(), true.into(), later)
            .unwrap();
    }
    store.insert_results("g2", g2, true.into(), later).unwrap();
}

struct Served {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    feed(&store);
    let metrics = Arc::new(Metrics::new());
    let limits = LimitCounters::register(&metrics);
    let fleet = Fleet::new(FleetConfig::default(), store, Alerts::none(), metrics);
    let config = HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let bound = http::bind(&config).await.unwrap();
    let base = format!("http://{}", bound.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        bound
            .serve(fleet, limits, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Served {
        base,
        stop,
        task,
        _dir: dir,
    }
}

impl Served {
    async fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, kind, resp.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

const RANGE: &str = "from=2026-11-30T00:00:00Z&to=2026-11-30T03:00:00Z";

#[tokio::test]
async fn history_of_a_cell_an_account_and_an_agent() {
    let s = serve().await;
    let h = s
        .json(&format!("/api/history?provider=gcp&port=587&{RANGE}"))
        .await;
    assert_eq!(h["step_secs"], 3600);
    assert_eq!(h["from"], "2026-11-30T00:00:00.000Z");
    assert_eq!(h["selector"]["provider"], "gcp");
    assert_eq!(h["selector"]["port"], 587);
    assert_eq!(h["selector"]["account"], Value::Null);
    let buckets = h["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    // Hour 0: g1 open, g2 refused: partial.
    let b0 = &buckets[0];
    assert_eq!(b0["start"], "2026-11-30T00:00:00.000Z");
    assert_eq!(b0["status"], "partial");
    assert_eq!(
        (
            b0["probes"].as_u64(),
            b0["ok"].as_u64(),
            b0["failed"].as_u64()
        ),
        (Some(120), Some(60), Some(60))
    );
    assert_eq!(b0["outcomes"]["ok"], 60);
    assert_eq!(b0["outcomes"]["refused"], 60);
    let p50 = b0["p50_connect_ms"].as_f64().unwrap();
    assert!((11.4..=12.6).contains(&p50), "{p50}");
    // One account, one agent.
    let a = s
        .json(&format!("/api/history?provider=gcp&account=acct-a&{RANGE}"))
        .await;
    let statuses: Vec<&str> = a["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["open", "partial", "open"]);
    let b = s
        .json(&format!(
            "/api/history?provider=gcp&account=acct-b&family=ipv4&{RANGE}"
        ))
        .await;
    assert_eq!(b["buckets"][1]["status"], "blocked");
    assert_eq!(b["buckets"][1]["p50_connect_ms"], Value::Null);
    let g1 = s
        .json(&format!(
            "/api/history?provider=gcp&agent=g1&target=mx.lab&{RANGE}"
        ))
        .await;
    assert_eq!(g1["buckets"][1]["outcomes"]["timeout"], 30);
    // Nothing stored: unknown, and the default range is the last day by the hour.
    let none = s.json("/api/history?provider=aws").await;
    let buckets = none["buckets"].as_array().unwrap();
    assert!((24..=25).contains(&buckets.len()), "{}", buckets.len());
    assert!(buckets
        .iter()
        .all(|b| b["status"] == "unknown" && b["probes"] == 0));
    // 90 days default to days; milliseconds work as times.
    let days = s
        .json(&format!(
            "/api/history?provider=gcp&from={}&to={}",
            T0 - 89 * 86_400_000,
            T0 + 86_400_000
        ))
        .await;
    assert_eq!(days["step_secs"], 86_400);
    let buckets = days["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 90);
    assert_eq!(buckets[89]["probes"], 360);
    s.stop().await;
}

#[tokio::test]
async fn intervals_newest_first_with_their_series() {
    let s = serve().await;
    let i = s.json(&format!("/api/intervals?agent=g1&{RANGE}")).await;
    let list = i["intervals"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let open = &list[0];
    assert_eq!(open["agent"], "g1");
    assert_eq!(open["provider"], "gcp");
    assert_eq!(open["account"], "acct-a");
    assert_eq!(open["target"], "mx.lab");
    assert_eq!(open["port"], 587);
    assert_eq!(open["family"], "ipv4");
    assert_eq!(open["outcome"], "ok");
    assert_eq!(open["status"], "open");
    assert_eq!(open["first_seen"], "2026-11-30T01:30:00.000Z");
    assert_eq!(open["last_seen"], "2026-11-30T02:59:00.000Z");
    assert_eq!(open["probes"], 90);
    assert_eq!(list[1]["outcome"], "timeout");
    assert_eq!(list[1]["status"], "blocked");
    assert_eq!(list[1]["p50_connect_ms"], Value::Null);
    let limited = s
        .json(&format!("/api/intervals?provider=gcp&limit=2&{RANGE}"))
        .await;
    assert_eq!(limited["intervals"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn csv_by_format_or_accept() {
    let s = serve().await;
    for (query, accept) in [("&format=csv", None), ("", Some("text/csv"))] {
        let (status, kind, body) = s
            .get(&format!("/api/history?provider=gcp&{RANGE}{query}"), accept)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(kind, "text/csv; charset=utf-8");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("start,status,probes,ok,failed,outcome_ok,outcome_timeout,"));
        assert!(lines[0].ends_with(",p50_connect_ms,p95_connect_ms"));
        assert!(
            lines[1].starts_with("2026-11-30T00:00:00.000Z,partial,120,60,60,60,0,60,"),
            "{}",
            lines[1]
        );
    }
    let (status, kind, body) = s
        .get(&format!("/api/intervals?agent=g1&format=csv&{RANGE}"), None)
        .await;
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[0],
        "agent,provider,account,target,port,family,outcome,status,first_seen,last_seen,probes,p50_connect_ms,p95_connect_ms"
    );
    assert!(
        lines[2].starts_with("g1,gcp,acct-a,mx.lab,587,ipv4,timeout,blocked,"),
        "{}",
        lines[2]
    );
    assert_eq!(lines.len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_400_naming_the_parameter() {
    let s = serve().await;
    for (path, names) in [
        ("/api/history?port=587", "provider"),
        ("/api/history?provider=gcp&from=yesterday", "from"),
        ("/api/history?provider=gcp&to=2026-13-01T00:00:00Z", "to"),
        (
            "/api/history?provider=gcp&from=2026-11-30T00:00:00Z&to=2026-11-29T00:00:00Z",
            "to",
        ),
        ("/api/history?provider=gcp&from=0&to=34646400001", "from"),
        (
            "/api/history?provider=gcp&from=0&to=3601000000&step=1h",
            "step",
        ),
        ("/api/history?provider=gcp&step=5m", "step"),
        ("/api/history?provider=gcp&family=ipv5", "family"),
        ("/api/history?provider=gcp&port=0", "port"),
        ("/api/history?provider=gcp&limit=3", "limit"),
        ("/api/history?provider=gcp&format=xml", "format"),
        ("/api/intervals?limit=1001", "limit"),
        ("/api/intervals?step=1h", "step"),
        ("/api/intervals?port=65536", "port"),
    ] {
        let (status, kind, body) = s.get(path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(kind.starts_with("application/json"), "{path}: {kind}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let message = v["error"].as_str().unwrap();
        assert!(message.contains(names), "{path}: {message}");
    }
    s.stop().await;
}
