//! The fleet hub: what happens to results once they are stored. It takes the store's feed
//! ([`Fleet::observe_feed`], from [`crate::cluster`]'s follower, whatever the store) and agents
//! coming and going ([`ResultObserver`]), feeds the matrix and the detector, and hands the events they raise to
//! its recorder thread, which records each with the alert deliveries it owes through the lease
//! ([`lead`]; one store call per event, never on the runtime's threads), counts it and
//! broadcasts it to SSE clients; the [`outbox`] task delivers. The follower ticks it once a
//! second for what depends on time alone (silence, settling); [`Fleet::run`] is the coalescer
//! that publishes matrix changes.
//! `http/` only serves what the hub holds.

mod counters;
pub mod gauges;
pub mod lead;
mod observer;
pub mod outbox;

pub use counters::FleetCounters;
pub use lead::{event_key, Lead};
pub use observer::{NoObserver, ResultObserver};

use crate::alerts::Alerts;
use crate::clock::measured_at;
use crate::detector::{Detector, DetectorConfig};
use crate::error::CollectorError;
use crate::events::Event;
use crate::fanout::{Fanout, FanoutConfig};
use crate::identity::AgentMeta;
use crate::matrix::StoreOutage;
use crate::matrix::{FamilyFilter, Matrix, MatrixConfig, MatrixView};
use crate::metrics::Metrics;
use crate::store::shared::{FeedItem, Leadership, NewDelivery, SharedStore};
use egresswatch_wire::ProbeResult;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::{broadcast, watch};

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
    store: Arc<dyn SharedStore>,
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
    /// Since when and why the store has not answered, while it does not (the follower says).
    outage: Mutex<Option<StoreOutage>>,
    /// Set when this collector cannot write its data dir (a full disk at start): it serves what
    /// it has, read-only, and says why on the page.
    read_only: Mutex<Option<StoreOutage>>,
    /// The lease and what goes with it: events are recorded through it, the outbox delivers
    /// while it is held.
    lead: Arc<Lead>,
    /// The recorder thread's queue: events are planned and recorded there, off the runtime's
    /// threads and in the order they were decided.
    recorder: std::sync::mpsc::Sender<Record>,
    /// Asks the outbox task to end once its deliveries under way are marked; it says so on
    /// `deliveries_finished`.
    finish_deliveries: watch::Sender<bool>,
    deliveries_finished: watch::Receiver<bool>,
}

/// What the recorder thread is asked to do.
enum Record {
    Events(Vec<Event>),
    /// Try again what the store did not take.
    Retry,
    /// Answered once everything queued before it has been handled.
    Barrier(tokio::sync::oneshot::Sender<()>),
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
    /// The hub over `store`. A store one collector has alone grants the lease at once (see
    /// [`Store::own_lease`]); a shared one leaves it to [`Fleet::take_lead`]. Started inside a
    /// tokio runtime, the outbox task delivers the recorded alerts while the lease is held.
    pub fn new(
        config: FleetConfig,
        store: Arc<dyn SharedStore>,
        alerts: Alerts,
        metrics: Arc<Metrics>,
    ) -> Arc<Fleet> {
        let (stream, _) = broadcast::channel(STREAM_CAPACITY);
        let lead = Arc::new(Lead::default());
        match store.own_lease() {
            Ok(lease) => lead.set_lease(lease),
            Err(e) => tracing::error!("the store grants no lease ({e}): no event is recorded"),
        }
        let (recorder, queue) = std::sync::mpsc::channel();
        let (finish_deliveries, finish) = watch::channel(false);
        let (finished, deliveries_finished) = watch::channel(false);
        let counters = FleetCounters::register(&metrics);
        Arc::new_cyclic(|fleet: &Weak<Fleet>| {
            let weak = fleet.clone();
            let spawned = std::thread::Builder::new()
                .name("event-recorder".into())
                .spawn(move || record_loop(weak, queue));
            if let Err(e) = spawned {
                tracing::error!("starting the event recorder: {e}");
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(outbox::deliver(
                    fleet.clone(),
                    lead.clone(),
                    counters.clone(),
                    (finish, finished),
                ));
            }
            Fleet {
                fresh_ms: config.matrix.fresh_ms,
                matrix: Mutex::new(Matrix::new(config.matrix)),
                detector: Mutex::new(Detector::new(config.detector)),
                fanout: Fanout::new(config.fanout, &metrics, crate::clock::now_unix_ms()),
                store,
                alerts,
                counters,
                cells: gauges::CellGauges::register(&metrics),
                metrics,
                stream,
                matrix_dirty: AtomicBool::new(true),
                matrix_changed: tokio::sync::Notify::new(),
                last_cells: Mutex::new(Vec::new()),
                matrix_built_ms: AtomicI64::new(i64::MIN),
                last_matrix: Mutex::new(String::new()),
                outage: Mutex::new(None),
                read_only: Mutex::new(None),
                lead,
                recorder,
                finish_deliveries,
                deliveries_finished,
            }
        })
    }

    /// A graceful stop of the alert delivery: the deliveries under way end and are marked (for
    /// at most `within`) and no new one starts, so none is in flight to be sent again by the
    /// next start or the next leader.
    pub async fn finish_deliveries(&self, within: std::time::Duration) {
        let _ = self.finish_deliveries.send(true);
        let mut finished = self.deliveries_finished.clone();
        if tokio::time::timeout(within, finished.wait_for(|done| *done))
            .await
            .is_err()
        {
            tracing::warn!(
                "alert deliveries still under way after {within:?}: they are sent again at the next start"
            );
        }
    }

    /// Waits (for at most `within`) until every event decided before the call has been through
    /// the recorder: recorded with its deliveries, or kept for another try. At shutdown this
    /// comes before the deliveries finish, so an event decided in the last second is not lost
    /// with the process; a reader of `/api/events` right after a decision uses it too, since
    /// recording happens off the caller's thread. Returns whether it got there in time.
    pub async fn events_recorded(&self, within: std::time::Duration) -> bool {
        let (done, handled) = tokio::sync::oneshot::channel();
        if self.recorder.send(Record::Barrier(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, handled).await, Ok(Ok(())))
    }

    /// The lease as the hub holds it.
    pub fn lead(&self) -> &Arc<Lead> {
        &self.lead
    }

    /// Whether this collector decides and alerts: while it holds the lease (for good on a store
    /// it has alone, [`Store::own_lease`](crate::store::Store::own_lease)).
    pub fn leads(&self) -> bool {
        self.lead.leads()
    }

    /// Results any collector stored, in the feed's order (the one way results reach the hub,
    /// whatever the store: see [`crate::cluster`]'s follower). Every collector's matrix
    /// takes them; the leader's detector and fan-out too.
    pub fn observe_feed(&self, items: Vec<FeedItem>) {
        if items.is_empty() {
            return;
        }
        let mut items = items.into_iter().peekable();
        // One commit of one agent at a time: consecutive items alike in who and when.
        while let Some(first) = items.next() {
            let (agent, clock_trusted, received) =
                (first.agent, first.clock_trusted, first.received_unix_ms);
            let mut results = vec![first.result];
            // One commit's items share their agent's `Arc`: comparing pointers settles most.
            while let Some(next) = items.next_if(|i| {
                (Arc::ptr_eq(&i.agent, &agent) || i.agent.agent_id == agent.agent_id)
                    && i.clock_trusted == clock_trusted
                    && i.received_unix_ms == received
            }) {
                results.push(next.result);
            }
            self.record_in_matrix(&agent, &results, clock_trusted, received);
            if self.leads() {
                let fresh = self.not_yet_fed(&agent.agent_id, results);
                if !fresh.is_empty() {
                    self.detect(&agent, &fresh, clock_trusted, received);
                }
            }
        }
        self.matrix_may_have_changed();
    }

    /// Drops the results the detector was already fed (by a rebuild's replay).
    fn not_yet_fed(&self, agent_id: &str, results: Vec<ProbeResult>) -> Vec<ProbeResult> {
        let mut fed = lock(&self.lead.fed);
        let mark = fed.get(agent_id).copied().unwrap_or(0);
        let fresh: Vec<ProbeResult> = results.into_iter().filter(|r| r.seq > mark).collect();
        if let Some(last) = fresh.iter().map(|r| r.seq).max() {
            // Looked up first: the agent's id is copied once, not at every commit.
            match fed.get_mut(agent_id) {
                Some(mark) => *mark = last,
                None => {
                    fed.insert(agent_id.to_string(), last);
                }
            }
        }
        fresh
    }

    /// This collector now holds `lease` (its follower won it). The detector is rebuilt from `replay` (the
    /// stored results of the last minutes, in measurement order), ticking as time went then;
    /// what it decides is recorded through the lease, where the changes the previous leader
    /// already recorded are recognised by their keys and raise nothing.
    pub fn take_lead(&self, lease: Box<dyn Leadership>, replay: &[FeedItem], now_unix_ms: i64) {
        let mut events = Vec::new();
        {
            let mut detector = lock(&self.detector);
            *detector = Detector::new(detector.config().clone());
            let mut fed = lock(&self.lead.fed);
            fed.clear();
            let mut next_tick = replay.first().map(|i| i.received_unix_ms + 1000);
            for item in replay {
                while let Some(t) = next_tick.filter(|t| *t <= item.received_unix_ms) {
                    events.extend(detector.tick(t));
                    next_tick = Some(t + 1000);
                }
                events.extend(detector.observe(
                    &item.agent,
                    std::slice::from_ref(&item.result),
                    item.clock_trusted,
                    item.received_unix_ms,
                ));
                let mark = fed.entry(item.agent.agent_id.clone()).or_insert(0);
                *mark = (*mark).max(item.result.seq);
            }
            events.extend(detector.tick(now_unix_ms));
            // Old suspicions are not worth asking the fleet about.
            let _ = detector.take_suspicions();
        }
        self.lead.set_lease(Some(lease));
        tracing::info!(
            replayed = replay.len(),
            decided = events.len(),
            "this collector leads detection and alerting"
        );
        self.emit(events);
    }

    /// The lease is gone (its session was lost, or the collector stops). The detector stops; a later lead
    /// rebuilds it.
    pub fn step_down(&self) {
        if self.lead.leads() {
            tracing::warn!("this collector no longer leads: detection and alerting stop here");
        }
        self.lead.set_lease(None);
        lock(&self.lead.fed).clear();
        let mut detector = lock(&self.detector);
        *detector = Detector::new(detector.config().clone());
    }

    /// An event another collector (the leader) recorded, for this one's stream.
    pub fn forward_event(&self, json: String) {
        if let Ok(event) = serde_json::from_str::<Event>(&json) {
            self.counters.count_event(&event);
        }
        let _ = self.stream.send(StreamMessage::Event(Arc::new(json)));
    }

    /// Whether the store answers (the follower says). While it does not, the page is told that
    /// what it shows is not live.
    pub fn set_store_outage(&self, outage: Option<StoreOutage>) {
        let mut held = lock(&self.outage);
        let changed = held.is_some() != outage.is_some();
        if changed {
            match &outage {
                Some(o) => {
                    tracing::error!(since = %o.since, "the database is unreachable: {}", o.reason)
                }
                None => tracing::info!("the database answers again"),
            }
            *held = outage;
            drop(held);
            self.matrix_may_have_changed();
        }
    }

    /// Marks the collector read-only (its data dir cannot be written): the page and `/healthz`
    /// say why.
    pub fn set_read_only(&self, why: StoreOutage) {
        tracing::error!(since = %why.since, "serving read-only: {}", why.reason);
        *lock(&self.read_only) = Some(why);
        self.matrix_may_have_changed();
    }

    /// Why the collector serves read-only, when it does.
    pub fn read_only(&self) -> Option<StoreOutage> {
        lock(&self.read_only).clone()
    }

    /// Since when and why the store has not answered, while it does not.
    pub fn store_outage(&self) -> Option<StoreOutage> {
        lock(&self.outage).clone()
    }

    fn record_in_matrix(
        &self,
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        now_unix_ms: i64,
    ) {
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

    fn detect(
        &self,
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        now_unix_ms: i64,
    ) {
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
    pub fn store(&self) -> &Arc<dyn SharedStore> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StreamMessage> {
        self.stream.subscribe()
    }

    /// The `/api/matrix` view.
    pub fn matrix_view(&self, family: FamilyFilter, now_unix_ms: i64) -> MatrixView {
        let mut view = lock(&self.matrix).view(family, now_unix_ms);
        view.store = self.store_outage().or_else(|| self.read_only());
        view
    }

    /// The `/api/mail-providers` view: the mail providers' hosts probed, per account.
    pub fn mail_view(&self, now_unix_ms: i64) -> crate::matrix::mail::MailView {
        lock(&self.matrix).mail_view(crate::matrix::mail::mail_hosts(), now_unix_ms)
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

    /// Publishes matrix changes when there are some, at most four times a second, and re-judges
    /// an unchanged one every [`REJUDGE_MS`], until `shutdown` completes. (The detector's
    /// one-second tick comes from the follower, on the collector holding the lease.)
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        use tokio::time::{interval, sleep, Duration, MissedTickBehavior};
        let mut tick = interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.publish_matrix(crate::clock::now_unix_ms());
                }
                _ = self.matrix_changed.notified() => {
                    // Coalesce: what else arrives within a quarter second goes in the same one.
                    sleep(Duration::from_millis(250)).await;
                    self.publish_matrix(crate::clock::now_unix_ms());
                }
                _ = &mut shutdown => return,
            }
        }
    }

    /// Once a second: silence and settled changes. (The matrix is re-judged for freshness by
    /// [`Fleet::publish_matrix`].)
    pub fn tick(&self, now_unix_ms: i64) {
        if self.leads() {
            self.record(Record::Retry);
            let events = lock(&self.detector).tick(now_unix_ms);
            self.emit(events);
        }
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
        // The store's outage is part of what the page is told.
        let providers = format!(
            "{}{:?}",
            serde_json::to_string(&view.providers).unwrap_or_default(),
            view.store
        );
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

    /// Hands the events to the recorder thread, which plans each one's alert deliveries and
    /// records them together through the lease (the store numbers the event), then counts the
    /// event and broadcasts the stored JSON; the outbox delivers. Never waits on the store.
    fn emit(&self, events: Vec<Event>) {
        if !events.is_empty() {
            self.record(Record::Events(events));
        }
    }

    fn record(&self, what: Record) {
        if self.recorder.send(what).is_err() {
            tracing::error!("the event recorder has stopped: events are not recorded");
        }
    }

    /// On the recorder thread: plans and records each event.
    fn record_events(&self, events: Vec<Event>) {
        for mut e in events {
            e.silenced_by = self.alerts.silenced_by(&e);
            let planned = self.alerts.plan(e);
            let deliveries = planned
                .notices
                .iter()
                .filter_map(|r| {
                    r.notice.to_json().ok().map(|notice_json| NewDelivery {
                        sink: r.sink.clone(),
                        notice_json,
                    })
                })
                .collect();
            let key = event_key(&planned.event);
            self.record_one(lead::Unrecorded {
                event: planned.event,
                key,
                deliveries,
            });
        }
    }

    /// Records one event through the lease; kept for another try when the store does not take
    /// it, dropped when this collector no longer leads (the new leader decides anew).
    fn record_one(&self, item: lead::Unrecorded) {
        let outcome = {
            let mut lease = self.lead.lease();
            match lease.as_mut() {
                Some(l) => l.record_event(&item.event, &item.key, &item.deliveries),
                None => return,
            }
        };
        match outcome {
            Ok(Some(stored)) => {
                tracing::info!(event = %item.event.summary(), id = stored.id, "event");
                let mut e = item.event;
                e.id = Some(stored.id);
                self.counters.count_event(&e);
                let _ = self
                    .stream
                    .send(StreamMessage::Event(Arc::new(stored.json)));
                if !item.deliveries.is_empty() {
                    self.lead.deliveries.notify_one();
                }
            }
            Ok(None) => {
                tracing::info!(event = %item.event.summary(), "already recorded by an earlier leader");
            }
            Err(err) => {
                tracing::error!(event = %item.event.summary(), "recording an event: {err}; kept for another try");
                self.lead.keep_unrecorded(item);
            }
        }
    }

    fn retry_unrecorded(&self) {
        let held = std::mem::take(&mut *lock(&self.lead.unrecorded));
        for item in held {
            self.record_one(item);
        }
    }
}

/// The recorder thread: takes what the hub decided, in order, until the hub is gone.
fn record_loop(fleet: Weak<Fleet>, queue: std::sync::mpsc::Receiver<Record>) {
    while let Ok(what) = queue.recv() {
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        match what {
            Record::Events(events) => fleet.record_events(events),
            Record::Retry => fleet.retry_unrecorded(),
            Record::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl ResultObserver for Fleet {
    fn agent_connected(&self, agent: &AgentMeta, now_unix_ms: i64) {
        lock(&self.matrix).agent_seen(agent, now_unix_ms);
        // The leader also learns of agents connected elsewhere, from the feed; one connected
        // here is known at once, so one that never reports still falls silent.
        if self.leads() {
            let events = lock(&self.detector).agent_seen(agent, now_unix_ms);
            self.emit(events);
        }
        self.matrix_may_have_changed();
    }

    fn agent_disconnected(&self, _agent_id: &str, _now_unix_ms: i64) {
        // Silence is judged by time, not by connections: agents reconnect between batches.
    }
}
