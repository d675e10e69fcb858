//! The live fleet: the shell that wires the pure core to the world. It observes what ingest
//! stored (feeding the matrix and the detector), stores the events through [`History`], counts
//! them, pushes them to SSE clients and hands them to the alert sinks. [`Fleet::tick`] is called
//! every second for what depends on time alone (silence, settling, freshness).

use super::history::History;
use super::metrics::Metrics;
use crate::alerts::Alerts;
use crate::detector::{Detector, DetectorConfig};
use crate::events::Event;
use crate::matrix::{FamilyFilter, Matrix, MatrixConfig, MatrixView};
use crate::pipeline::{AgentMeta, ResultObserver};
use egresswatch_wire::ProbeResult;
use std::sync::atomic::{AtomicBool, Ordering};
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

pub struct Fleet {
    matrix: Mutex<Matrix>,
    detector: Mutex<Detector>,
    history: Arc<dyn History>,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    stream: broadcast::Sender<StreamMessage>,
    matrix_dirty: AtomicBool,
    last_matrix: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Fleet {
    pub fn new(
        config: DetectorConfig,
        history: Arc<dyn History>,
        alerts: Alerts,
        metrics: Arc<Metrics>,
    ) -> Arc<Fleet> {
        let matrix = Matrix::new(MatrixConfig {
            fresh_ms: (config.fresh_secs as i64).saturating_mul(1000),
            silent_after_ms: (config.silent_after_secs as i64).saturating_mul(1000),
        });
        let (stream, _) = broadcast::channel(STREAM_CAPACITY);
        Arc::new(Fleet {
            matrix: Mutex::new(matrix),
            detector: Mutex::new(Detector::new(config)),
            history,
            alerts,
            metrics,
            stream,
            matrix_dirty: AtomicBool::new(true),
            last_matrix: Mutex::new(String::new()),
        })
    }

    /// Everything from the config: a metrics registry, the alert sinks (started on the current
    /// tokio runtime) and the fleet. Ingest takes `fleet.metrics().ingest.clone()` to count.
    pub fn from_config(
        detector: DetectorConfig,
        sinks: &[crate::alerts::SinkConfig],
        history: Arc<dyn History>,
    ) -> Result<Arc<Fleet>, crate::error::CollectorError> {
        let metrics = Arc::new(Metrics::new());
        let alerts = Alerts::start(sinks, metrics.alerts.clone())?;
        Ok(Fleet::new(detector, history, alerts, metrics))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn history(&self) -> &Arc<dyn History> {
        &self.history
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
        self.matrix_dirty.store(true, Ordering::Relaxed);
    }

    /// Once a second: silence and settled changes; and the matrix is re-judged (freshness).
    pub fn tick(&self, now_unix_ms: i64) {
        let events = lock(&self.detector).tick(now_unix_ms);
        self.emit(events);
        self.matrix_dirty.store(true, Ordering::Relaxed);
    }

    /// Called by the SSE coalescer (at most a few times a second): if the matrix may have
    /// changed, rebuild it, refresh the gauges and broadcast it when it really differs.
    pub fn publish_matrix(&self, now_unix_ms: i64) {
        if !self.matrix_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let view = self.matrix_view(FamilyFilter::All, now_unix_ms);
        self.metrics.set_cells(&view);
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

    fn emit(&self, events: Vec<Event>) {
        for mut e in events {
            tracing::info!(event = %e.summary(), "event");
            match serde_json::to_string(&e) {
                Ok(json) => match self.history.append_event(e.at_unix_ms, &json) {
                    Ok(id) => e.id = Some(id),
                    Err(err) => tracing::error!("storing event: {err}"),
                },
                Err(err) => tracing::error!("serialising event: {err}"),
            }
            self.metrics.count_event(&e);
            if let Ok(json) = serde_json::to_string(&e) {
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
        self.matrix_dirty.store(true, Ordering::Relaxed);
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
                let at = if clock_trusted {
                    r.at_unix_ms.min(now_unix_ms)
                } else {
                    now_unix_ms
                };
                m.record(&agent.agent_id, r, at);
            }
        }
        let events = lock(&self.detector).observe(agent, results, clock_trusted, now_unix_ms);
        self.emit(events);
        self.matrix_dirty.store(true, Ordering::Relaxed);
    }

    fn agent_disconnected(&self, _agent_id: &str, _now_unix_ms: i64) {
        // Silence is judged by time, not by connections: agents reconnect between batches.
    }
}
