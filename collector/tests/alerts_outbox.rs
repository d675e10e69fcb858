//! Alerts delivered from the store's outbox, the one path whatever the store: real HTTP sinks on
//! loopback that are down, answer 500, hang or come back, against the hub over the memory
//! store (in process), and the collector binary over SQLite killed between deciding and
//! delivering, or started with a sink URL that is not one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use egresswatch_collector::alerts::{AlertCounters, Alerts, SinkConfig, SinkKind};
use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::fleet::{Fleet, FleetConfig, ResultObserver};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::store::memory::MemoryStore;
use egresswatch_collector::store::{EventStore, ResultStore};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

/// How a test sink answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// 200 to everything.
    Ok,
    /// 500 to the first request, 200 after.
    FirstFails,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct Sink {
    answer: Answer,
    requests: Arc<AtomicUsize>,
    /// The bodies answered 200, in the order they were answered.
    accepted: Arc<Mutex<Vec<Value>>>,
}

async fn answer(State(sink): State<Sink>, Json(body): Json<Value>) -> StatusCode {
    let n = sink.requests.fetch_add(1, Ordering::SeqCst);
    match sink.answer {
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
        Answer::FirstFails if n == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => {
            sink.accepted.lock().unwrap().push(body);
            StatusCode::OK
        }
    }
}

/// A webhook on `addr` (port 0: any), answering as `how`.
async fn serve_sink(addr: SocketAddr, how: Answer) -> (SocketAddr, Sink) {
    let sink = Sink {
        answer: how,
        requests: Arc::default(),
        accepted: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(answer))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, sink)
}

/// A loopback port nobody listens on now (bound, learnt, closed).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn webhook(name: &str, addr: SocketAddr) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind: SinkKind::Webhook,
        url: format!("http://{addr}/hook"),
        retries: 1,
        backoff_ms: 20,
        timeout_secs: 1,
        ..Default::default()
    }
}

fn meta(id: &str, account: &str) -> AgentMeta {
    support::agent_meta(id, "gcp", account)
}

/// A hub over a memory store with `sinks`; `accounts` agents (one per account) are seen now and
/// then fall silent, so each account's silence is one notice per sink, recorded in one order.
async fn accounts_fall_silent(
    sinks: &[SinkConfig],
    accounts: usize,
) -> (Arc<Fleet>, Arc<MemoryStore>, AlertCounters, Arc<Metrics>) {
    let store = Arc::new(MemoryStore::new());
    let counters = AlertCounters::default();
    let metrics = Arc::new(Metrics::new());
    let alerts = Alerts::start(sinks, counters.clone()).unwrap();
    let fleet = Fleet::new(
        FleetConfig::default(),
        store.clone(),
        alerts,
        metrics.clone(),
    );
    let now = now_unix_ms();
    for i in 0..accounts {
        let agent = meta(&format!("a{i}"), &format!("acct-{i}"));
        store.upsert_agent(&agent, now).unwrap();
        fleet.agent_connected(&agent, now);
    }
    let grace = egresswatch_collector::detector::DetectorConfig::default().silent_after_secs as i64;
    fleet.tick(now + grace * 1000 + 5_000);
    (fleet, store, counters, metrics)
}

/// The ids of the account-scope silences the store recorded, oldest first.
fn account_silences(store: &MemoryStore) -> Vec<i64> {
    let mut ids: Vec<i64> = store
        .events(100)
        .unwrap()
        .iter()
        .map(|j| serde_json::from_str::<Value>(j).unwrap())
        .filter(|e| e["scope"] == "account" && e["to"] == "silent")
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn failures(counters: &AlertCounters, sink: &str) -> u64 {
    counters
        .failed
        .get_or_create(&vec![("sink".to_string(), sink.to_string())])
        .get()
}

fn outbox_metric(metrics: &Metrics, outcome: &str) -> f64 {
    let text = metrics.render();
    let line = format!("egresswatch_outbox_deliveries_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
}

#[tokio::test]
async fn a_sink_down_then_answering_500_then_back_gets_every_notice_once_in_order() {
    let addr = free_port();
    let (fleet, store, counters, metrics) = accounts_fall_silent(&[webhook("hook", addr)], 3).await;
    wait_for(
        "three account silences recorded",
        Duration::from_secs(5),
        || account_silences(&store).len() == 3,
    )
    .await;
    // Down: the first tries are refused, counted, and the notices wait in the outbox.
    wait_for("tries refused", Duration::from_secs(10), || {
        failures(&counters, "hook") >= 2
    })
    .await;
    assert_eq!(outbox_metric(&metrics, "delivered"), 0.0);
    // Back, answering 500 once (the try's own retry gets through).
    let (_, sink) = serve_sink(addr, Answer::FirstFails).await;
    wait_for("every notice delivered", Duration::from_secs(15), || {
        sink.accepted.lock().unwrap().len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered: Vec<i64> = sink
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered, account_silences(&store), "once each, in order");
    assert_eq!(outbox_metric(&metrics, "delivered"), 3.0);
    assert_eq!(outbox_metric(&metrics, "failed"), 0.0);
    assert!(
        sink.requests.load(Ordering::SeqCst) >= 4,
        "the 500 was answered"
    );
    drop(fleet);
}

#[tokio::test]
async fn a_hanging_sink_times_out_and_holds_back_only_its_own_notices() {
    let (hang_addr, hang) = serve_sink("127.0.0.1:0".parse().unwrap(), Answer::Hang).await;
    let (ok_addr, ok) = serve_sink("127.0.0.1:0".parse().unwrap(), Answer::Ok).await;
    let mut hanging = webhook("hang", hang_addr);
    hanging.retries = 0;
    let (fleet, store, counters, _metrics) =
        accounts_fall_silent(&[hanging, webhook("ok", ok_addr)], 3).await;
    wait_for("the healthy sink's notices", Duration::from_secs(5), || {
        ok.accepted.lock().unwrap().len() == 3
    })
    .await;
    let delivered: Vec<i64> = ok
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered, account_silences(&store));
    wait_for("the hanging sink timed out", Duration::from_secs(5), || {
        failures(&counters, "hang") >= 1
    })
    .await;
    assert!(hang.accepted.lock().unwrap().is_empty());
    // A stop waits for the hanging sink only as long as it is told to.
    let started = Instant::now();
    fleet.finish_deliveries(Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// The collector binary over SQLite with one webhook, data in `dir`.
fn collector_config(dir: &std::path::Path, hook: SocketAddr) -> std::path::PathBuf {
    support::write_collector_config(
        dir,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        &format!(
            "[detector]\nsilent_after_secs = 2\n\n[[alerts]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"http://{hook}/hook\"\nretries = 0\ntimeout_secs = 1\n"
        ),
    )
}

async fn events_of(http: SocketAddr) -> Vec<Value> {
    let Ok(resp) = reqwest::get(format!("http://{http}/api/events?limit=100")).await else {
        return Vec::new();
    };
    resp.json::<Value>()
        .await
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// One agent of account `account` says hello and reports, then goes away.
async fn agent_reports_once(dir: &std::path::Path, quic: SocketAddr, id: &str, account: &str) {
    let (cert, key) = support::issue(&dir.join("data/ca"), &dir.join("agents"), id);
    let creds =
        egresswatch_sim::Credentials::from_files(&dir.join("data/ca/ca.pem"), &cert, &key).unwrap();
    let config =
        egresswatch_sim::client_config(Some(&creds), &creds.ca, egresswatch_sim::DEFAULT_ALPN)
            .unwrap();
    let endpoint = egresswatch_sim::client_endpoint(1 << 20).unwrap();
    let mut agent = egresswatch_sim::SimAgent::connect(&endpoint, quic, config)
        .await
        .unwrap();
    agent.hello(meta(id, account).labels).await.unwrap();
    let now = now_unix_ms();
    agent
        .report(&[egresswatch_sim::result(1, now)])
        .await
        .unwrap();
    agent.finish().await;
}

/// Polls `check` every 200 ms until it gives something or `within` passes.
async fn poll<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_account_silence(e: &Value, account: &str) -> bool {
    e["scope"] == "account" && e["to"] == "silent" && e["account"] == account
}

/// The account's silence as the collector serving `http` recorded it, once it has.
async fn recorded_silence(http: SocketAddr, account: &str, within: Duration) -> Value {
    poll("the account's silence recorded", within, || async {
        events_of(http)
            .await
            .into_iter()
            .find(|e| is_account_silence(e, account))
    })
    .await
}

#[tokio::test]
async fn an_alert_decided_before_a_sigkill_is_delivered_once_after_the_restart() {
    let tmp = support::work_dir("outbox-crash");
    let hook = free_port();
    let config = collector_config(tmp.path(), hook);
    let log = tmp.path().join("collector.log");
    let (child, listening) = support::spawn_collector(&config, &log, None);
    let mut collector = support::Proc(child);
    agent_reports_once(tmp.path(), listening.quic, "c1", "acct-crash").await;
    // The account falls silent: decided and recorded; the sink is down, so the delivery waits.
    let decided = recorded_silence(listening.http, "acct-crash", Duration::from_secs(30)).await;
    let id = decided["id"].as_i64().unwrap();
    assert!(
        support::wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("alert delivery failed")),
        "no delivery was tried"
    );
    // Killed between deciding and delivering.
    collector.0.kill().unwrap();
    collector.0.wait().unwrap();
    let (_, sink) = serve_sink(hook, Answer::Ok).await;
    let (child, _) = support::spawn_collector(&config, &log, None);
    let mut collector = support::Proc(child);
    wait_for(
        "the delivery after the restart",
        Duration::from_secs(15),
        || !sink.accepted.lock().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What the restarted collector decides anew (its restored agent, unheard since, falls
    // silent again: a new event with its own id) may follow; the one decided before the kill is
    // delivered exactly once, and no notice twice.
    let account_notices = |sink: &Sink| -> Vec<i64> {
        sink.accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|b| is_account_silence(b, "acct-crash"))
            .map(|b| b["id"].as_i64().unwrap())
            .collect()
    };
    let once_each = |ids: &[i64]| {
        let mut seen = ids.to_vec();
        seen.sort();
        seen.dedup();
        seen.len() == ids.len()
    };
    let delivered = account_notices(&sink);
    assert_eq!(
        delivered.first(),
        Some(&id),
        "the pending one first: {delivered:?}"
    );
    assert!(once_each(&delivered), "{delivered:?}");
    // Killed again after the sink answered: nothing it answered is sent again.
    collector.0.kill().unwrap();
    collector.0.wait().unwrap();
    let before = account_notices(&sink);
    let (child, listening) = support::spawn_collector(&config, &log, None);
    let _collector = support::Proc(child);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = account_notices(&sink);
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(once_each(&after), "sent twice: {after:?}");
    let recorded: Vec<i64> = events_of(listening.http)
        .await
        .into_iter()
        .filter(|e| is_account_silence(e, "acct-crash"))
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(recorded.iter().filter(|r| **r == id).count(), 1);
}

#[test]
fn a_sink_url_that_is_not_one_stops_the_start_naming_the_key() {
    let tmp = support::work_dir("outbox-badurl");
    let config = support::write_collector_config(
        tmp.path(),
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"",
        "[[alerts]]\nkind = \"webhook\"\nurl = \"http//no-colon.example/hook\"\n",
    );
    let out = std::process::Command::new(support::collector_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("alerts[0].url"), "{said}");
}

/// Runs `nsenter` into the mount namespace of `pid` with `script`.
fn in_namespace_of(pid: u32, script: &str) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_while_recording_keeps_the_alert_until_there_is_room_again() {
    if !support::is_root() {
        support::skip(
            "a_full_disk_while_recording",
            "needs root (a tmpfs in a private mount namespace)",
        );
        return;
    }
    let tmp = support::work_dir("outbox-full");
    let (addr, sink) = serve_sink("127.0.0.1:0".parse().unwrap(), Answer::Ok).await;
    // The database on a 4 MiB tmpfs of the collector's own mount namespace; the rest of the
    // data dir (CA, ready file) where the test sees it.
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let config = collector_config(tmp.path(), addr);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "[quic]",
        &format!("[store]\npath = {:?}\n[quic]", small.join("egresswatch.db")),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let log = tmp.path().join("collector.log");
    let script = format!(
        "mount -t tmpfs -o size=4m tmpfs {small:?} && exec {:?} run --config {config:?}",
        support::collector_bin()
    );
    let child = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut collector = support::Proc(child);
    let data = tmp.path().join("data");
    let mut ready = None;
    assert!(
        support::wait_until(Duration::from_secs(20), || {
            ready = egresswatch_collector::ready::Ready::read(&data).filter(|r| r.pid == pid);
            ready.is_some()
        }),
        "not ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ready = ready.unwrap();
    agent_reports_once(tmp.path(), ready.quic, "f1", "acct-full").await;
    // Fill the disk while the agent's silence is being decided.
    let filled = in_namespace_of(pid, &format!("cat /dev/zero > {:?}", small.join("fill")));
    assert!(
        String::from_utf8_lossy(&filled.stderr).contains("No space left"),
        "{filled:?}"
    );
    assert!(
        support::wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("kept for another try")),
        "the refused event was not kept: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(collector.alive(), "the collector died of a full disk");
    assert!(sink.accepted.lock().unwrap().is_empty());
    // Room again: the kept event is recorded and delivered.
    let freed = in_namespace_of(pid, &format!("rm {:?}", small.join("fill")));
    assert!(freed.status.success(), "{freed:?}");
    wait_for("the kept alert delivered", Duration::from_secs(20), || {
        sink.accepted
            .lock()
            .unwrap()
            .iter()
            .any(|b| is_account_silence(b, "acct-full"))
    })
    .await;
    let recorded = recorded_silence(ready.http, "acct-full", Duration::from_secs(10)).await;
    assert!(recorded["id"].as_i64().is_some());
}
