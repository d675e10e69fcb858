//! The fleet hub: what happens to results once they are stored. It observes what ingest stored
//! ([`ResultObserver`]), feeds the matrix and the detector, records the events they raise through
//! the store, counts them, broadcasts them and the matrix to SSE clients and hands the events to
//! the alert sinks. [`Fleet::run`] is its background loop: the one-second tick for what depends
//! on time alone (silence, settling, freshness) and the coalescer that publishes matrix changes.
//! `http/` only serves what the hub holds.

mod counters;
pub mod gauges;
mod observer;

pub use counters::FleetCounters;
pub use observer::{NoObserver, ResultObserver};

use crate::alerts::Alerts;
use crate::detector::{Detector, DetectorConfig};
use crate::error::CollectorError;
use crate::events::Event;
use crate::fanout::{Fanout, FanoutConfig};
use crate::identity::{measured_at, AgentMeta};
use crate::matrix::{FamilyFilter, Matrix, MatrixConfig, MatrixView};
use crate::metrics::Metrics;
use crate::store::Store;
use egresswatch_wire::ProbeResult;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// What the SSE stream carries, already serialised once for every client.
#[derive(Debug, Clone)]
pub enum StreamMessage {
    /// The full `/api/matrix` JSON (both families).
    Matrix(Arc<String>),
    /// One event object.
    Event(Arc<String>),
}

/// Capacity of the broadcast channel; a client further behind skips ahead (and gets a fresh
/// matrix).
const STREAM_CAPACITY: usize = 256;

/// What the hub's two state machines are configured with.
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    pub detector: DetectorConfig,
    pub matrix: MatrixConfig,
    pub fanout: FanoutConfig,
}

pub struct Fleet {
    matrix: Mutex<Matrix>,
    detector: Mutex<Detector>,
    /// Asks other agents for evidence when the detector suspects a change.
    fanout: Fanout,
    store: Arc<dyn Store>,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    counters: FleetCounters,
    cells: gauges::CellGauges,
    stream: broadcast::Sender<StreamMessage>,
    matrix_dirty: AtomicBool,
    /// The cell gauges as last set: unchanged cells are not set again.
    last_cells: Mutex<Vec<gauges::CellSample>>,
    /// Wakes the publisher when the matrix may have changed.
    matrix_changed: tokio::sync::Notify,
    /// When the matrix was last rebuilt: with nothing new, it is re-judged (freshness, silent
    /// agents) only every [`REJUDGE_MS`].
    matrix_built_ms: AtomicI64,
    /// How old a result may be and still count in the matrix.
    fresh_ms: i64,
    last_matrix: Mutex<String>,
}

/// How often a matrix with no new results is rebuilt for what time alone changes (a result
/// growing stale, an agent falling silent): minutes-long thresholds, judged within seconds.
const REJUDGE_MS: i64 = 5_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Fleet {
    pub fn new(
        config: FleetConfig,
        store: Arc<dyn Store>,
        alerts: Alerts,
        metrics: Arc<Metrics>,
    ) -> Arc<Fleet> {
        let (stream, _) = broadcast::channel(STREAM_CAPACITY);
        Arc::new(Fleet {
            fresh_ms: config.matrix.fresh_ms,
            matrix: Mutex::new(Matrix::new(config.matrix)),
            detector: Mutex::new(Detector::new(config.detector)),
            fanout: Fanout::new(config.fanout, &metrics, crate::events::now_unix_ms()),
            store,
            alerts,
            counters: FleetCounters::register(&metrics),
            cells: gauges::CellGauges::register(&metrics),
            metrics,
            stream,
            matrix_dirty: AtomicBool::new(true),
            matrix_changed: tokio::sync::Notify::new(),
            last_cells: Mutex::new(Vec::new()),
            matrix_built_ms: AtomicI64::new(i64::MIN),
            last_matrix: Mutex::new(String::new()),
        })
    }

    /// The registry the hub's counters are in, which `/metrics` renders.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The alert sinks, and the silences they honour (which the HTTP API changes).
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The fan-out, which ingest's live sessions are connected to ([`Fanout::connect`]).
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// The store the hub records events in, which the HTTP API reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StreamMessage> {
        self.stream.subscribe()
    }

    /// The `/api/matrix` view.
    pub fn matrix_view(&self, family: FamilyFilter, now_unix_ms: i64) -> MatrixView {
        lock(&self.matrix).view(family, now_unix_ms)
    }

    /// The current matrix JSON (both families) for a new SSE client.
    pub fn matrix_json(&self, now_unix_ms: i64) -> String {
        serde_json::to_string(&self.matrix_view(FamilyFilter::All, now_unix_ms))
            .unwrap_or_else(|_| "{}".into())
    }

    /// At startup: the store's latest result per series still fresh for the matrix becomes what
    /// the matrix shows and the detector's baseline (see [`Fleet::restore`]).
    pub async fn restore_from_store(&self, now_unix_ms: i64) -> Result<(), CollectorError> {
        let since = now_unix_ms - self.fresh_ms;
        let store = self.store.clone();
        let latest = tokio::task::spawn_blocking(move || store.latest_per_series(since))
            .await
            .map_err(|e| CollectorError::store("reading the latest results", e))??;
        self.restore(&latest, now_unix_ms);
        Ok(())
    }

    /// At startup, from the store's latest result per series (`Store::latest_per_series`): the
    /// matrix shows what was known and the detector takes it as its baseline, raising nothing.
    pub fn restore(&self, latest: &[(AgentMeta, ProbeResult)], now_unix_ms: i64) {
        let mut m = lock(&self.matrix);
        let mut d = lock(&self.detector);
        for (agent, result) in latest {
            m.agent_seen(agent, now_unix_ms);
            m.record(&agent.agent_id, result, result.at_unix_ms);
            d.restore(agent, result, now_unix_ms);
        }
        self.matrix_may_have_changed();
    }

    fn matrix_may_have_changed(&self) {
        self.matrix_dirty.store(true, Ordering::Relaxed);
        self.matrix_changed.notify_one();
    }

    /// Ticks the fleet every second and publishes matrix changes when there are some, at most
    /// four times a second (and re-judges an unchanged one every [`REJUDGE_MS`]), until
    /// `shutdown` completes. Nothing wakes it in between.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        use tokio::time::{interval, sleep, Duration, MissedTickBehavior};
        let mut tick = interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = crate::events::now_unix_ms();
                    self.tick(now);
                    self.publish_matrix(now);
                }
                _ = self.matrix_changed.notified() => {
                    // Coalesce: what else arrives within a quarter second goes in the same one.
                    sleep(Duration::from_millis(250)).await;
                    self.publish_matrix(crate::events::now_unix_ms());
                }
                _ = &mut shutdown => return,
            }
        }
    }

    /// Once a second: silence and settled changes. (The matrix is re-judged for freshness by
    /// [`Fleet::publish_matrix`].)
    pub fn tick(&self, now_unix_ms: i64) {
        let events = lock(&self.detector).tick(now_unix_ms);
        self.emit(events);
    }

    /// Called by the SSE coalescer (at most a few times a second): if the matrix may have
    /// changed — new results or agents, or [`REJUDGE_MS`] gone by — rebuild it, refresh the
    /// gauges and broadcast it when it really differs and someone listens.
    pub fn publish_matrix(&self, now_unix_ms: i64) {
        let built = self.matrix_built_ms.load(Ordering::Relaxed);
        let due = now_unix_ms.saturating_sub(built) >= REJUDGE_MS;
        if !self.matrix_dirty.swap(false, Ordering::Relaxed) && !due {
            return;
        }
        self.matrix_built_ms.store(now_unix_ms, Ordering::Relaxed);
        let ipv4 = self.matrix_view(FamilyFilter::Ipv4, now_unix_ms);
        let ipv6 = self.matrix_view(FamilyFilter::Ipv6, now_unix_ms);
        let cells = gauges::cell_samples(&[("ipv4", &ipv4), ("ipv6", &ipv6)], gauges::MAX_ACCOUNTS);
        {
            let mut last = lock(&self.last_cells);
            if *last != cells {
                self.cells.set(&cells);
                *last = cells;
            }
        }
        if self.stream.receiver_count() == 0 {
            // Nobody to tell: a client that subscribes gets the matrix then (`matrix_json`),
            // and the next publish compares afresh.
            lock(&self.last_matrix).clear();
            return;
        }
        let view = self.matrix_view(FamilyFilter::All, now_unix_ms);
        let providers = serde_json::to_string(&view.providers).unwrap_or_default();
        {
            let mut last = lock(&self.last_matrix);
            if *last == providers {
                return;
            }
            *last = providers;
        }
        if let Ok(json) = serde_json::to_string(&view) {
            // No receivers is fine.
            let _ = self.stream.send(StreamMessage::Matrix(Arc::new(json)));
        }
    }

    /// Records each event (the store numbers it), counts it, broadcasts the stored JSON and
    /// hands the numbered event to the alert sinks.
    fn emit(&self, events: Vec<Event>) {
        for mut e in events {
            e.silenced_by = self.alerts.silenced_by(&e);
            tracing::info!(event = %e.summary(), "event");
            let json = match self.store.append_event(&e) {
                Ok(stored) => {
                    e.id = Some(stored.id);
                    Some(stored.json)
                }
                Err(err) => {
                    tracing::error!("storing event: {err}");
                    serde_json::to_string(&e).ok()
                }
            };
            self.counters.count_event(&e);
            if let Some(json) = json {
                let _ = self.stream.send(StreamMessage::Event(Arc::new(json)));
            }
            self.alerts.enqueue(&e);
        }
    }
}

impl ResultObserver for Fleet {
    fn agent_connected(&self, agent: &AgentMeta, now_unix_ms: i64) {
        lock(&self.matrix).agent_seen(agent, now_unix_ms);
        let events = lock(&self.detector).agent_seen(agent, now_unix_ms);
        self.emit(events);
        self.matrix_may_have_changed();
    }

    fn results_stored(
        &self,
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        now_unix_ms: i64,
    ) {
        {
            let mut m = lock(&self.matrix);
            m.agent_seen(agent, now_unix_ms);
            for r in results {
                m.record(
                    &agent.agent_id,
                    r,
                    measured_at(r, clock_trusted, now_unix_ms),
                );
            }
        }
        let (events, suspicions) = {
            let mut detector = lock(&self.detector);
            let events = detector.observe(agent, results, clock_trusted, now_unix_ms);
            (events, detector.take_suspicions())
        };
        self.emit(events);
        // Evidence on demand: other agents are asked to probe the suspect destination now, and
        // their answers among these results are counted.
        self.fanout
            .on_results(&agent.agent_id, results, now_unix_ms);
        self.fanout.on_suspicions(&suspicions, now_unix_ms);
        self.matrix_may_have_changed();
    }

    fn agent_disconnected(&self, _agent_id: &str, _now_unix_ms: i64) {
        // Silence is judged by time, not by connections: agents reconnect between batches.
    }
}
