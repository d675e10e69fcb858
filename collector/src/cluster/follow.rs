//! The follower: one thread per collector that keeps its hub in step with the shared database.
//! Each round it waits (at most a quarter second) for a notification; when told, and at least
//! once a second, it reads the feed of results every collector stored since its cursor and hands
//! them to the hub, and forwards the leader's new events to this collector's stream. It reloads
//! silences when told, says it is alive, and either tries to take the lead (once a second) or,
//! leading, checks that its lock's session still holds and ticks the detector. Every database
//! call is blocking, which is why this is a thread and not a task. A failed call marks the store
//! unavailable (the page says so) and the round starts again; nothing it reads is lost, because
//! the cursor only moves past what it handed on.

use super::{ClusterConfig, ClusterCounters, ClusterSessions, Endpoints};
use crate::clock::{now_unix_ms, rfc3339};
use crate::error::CollectorError;
use crate::fleet::Fleet;
use crate::matrix::StoreOutage;
use crate::store::shared::{CollectorRow, FeedCursor, Listener, News, SharedStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Most results read from the feed at once.
const FEED_BATCH: usize = 2000;
/// Most results a new leader replays.
const MAX_REPLAY: usize = 1_000_000;
/// Most events forwarded to the stream per round.
const EVENTS_BATCH: usize = 200;
/// How long a round waits for notifications.
const WAIT: Duration = Duration::from_millis(250);
/// How often the feed and the events are read when no notification says there is news.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often a follower tries to take the lead, and a leader checks it still holds it.
const LEAD_EVERY: Duration = Duration::from_secs(1);

/// The running follower. Dropping it does not stop it: call [`Follower::stop`].
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Follower {
    pub(super) fn start(
        fleet: Arc<Fleet>,
        store: Arc<dyn SharedStore>,
        sessions: Arc<ClusterSessions>,
        config: ClusterConfig,
        id: String,
        endpoints: Endpoints,
        counters: ClusterCounters,
    ) -> Result<Follower, CollectorError> {
        let stop = Arc::new(AtomicBool::new(false));
        // A store of its own granted the lease with the hub: this collector leads from the start.
        counters.leader.set(i64::from(fleet.leads()));
        let mut round = Round {
            fleet,
            store,
            sessions,
            config,
            id,
            endpoints,
            counters,
            listener: None,
            cursor: None,
            last_event: None,
            next_lead: Instant::now(),
            next_heartbeat: Instant::now(),
            next_poll: Instant::now(),
            down_since: None,
        };
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("cluster-follower".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    round.once();
                }
                round.fleet.step_down();
                round.counters.leader.set(0);
            })
            .map_err(|e| CollectorError::io("starting the cluster follower", e))?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }

    /// Gives up the lead (the lock is released with its session) and ends the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Round {
    fleet: Arc<Fleet>,
    store: Arc<dyn SharedStore>,
    sessions: Arc<ClusterSessions>,
    config: ClusterConfig,
    id: String,
    endpoints: Endpoints,
    counters: ClusterCounters,
    listener: Option<Box<dyn Listener>>,
    cursor: Option<FeedCursor>,
    last_event: Option<i64>,
    next_lead: Instant,
    next_heartbeat: Instant,
    /// When the feed and the events are read even without a notification saying so.
    next_poll: Instant,
    /// When the database stopped answering, and the last error.
    down_since: Option<(i64, String)>,
}

impl Round {
    fn once(&mut self) {
        match self.step() {
            Ok(()) => {
                if self.down_since.take().is_some() {
                    self.counters.store_up.set(1);
                    self.fleet.set_store_outage(None);
                }
                self.counters.store_up.set(1);
            }
            Err(e) => {
                let since = self
                    .down_since
                    .as_ref()
                    .map(|(since, _)| *since)
                    .unwrap_or_else(now_unix_ms);
                self.down_since = Some((since, e.to_string()));
                self.counters.store_up.set(0);
                self.fleet.set_store_outage(Some(StoreOutage {
                    since: rfc3339(since),
                    reason: e.to_string(),
                }));
                // The subscription may be what broke: a new one next round.
                self.listener = None;
                if self.fleet.leads() {
                    self.check_lead();
                }
                thread::sleep(WAIT);
            }
        }
    }

    fn step(&mut self) -> Result<(), CollectorError> {
        // Subscribe before reading the head, so nothing committed in between goes unnoticed.
        if self.listener.is_none() {
            self.listener = Some(self.store.listen()?);
        }
        if self.cursor.is_none() {
            self.cursor = Some(self.store.feed_head()?);
        }
        if self.last_event.is_none() {
            self.last_event = Some(self.store.last_event_id()?);
        }
        let news = match self.listener.as_mut() {
            Some(listener) => listener.wait(WAIT)?,
            None => Vec::new(),
        };
        if news.contains(&News::Silences) {
            self.reload_silences()?;
        }
        for item in &news {
            if let News::ProbeRequest {
                agent,
                request_json,
            } = item
            {
                self.sessions.relay(agent, request_json);
            }
        }
        // Read when told, and once a second regardless: a commit the frontier held back when its
        // notification came sends no second one.
        let polled = Instant::now() >= self.next_poll;
        if polled {
            self.next_poll = Instant::now() + POLL_EVERY;
        }
        if polled || news.contains(&News::Results) {
            self.read_feed()?;
        }
        if polled || news.iter().any(|n| matches!(n, News::Event(_))) {
            self.forward_events()?;
        }
        self.lead()?;
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat()?;
        }
        Ok(())
    }

    fn read_feed(&mut self) -> Result<(), CollectorError> {
        // Bounded: a collector far behind catches up over a few rounds, not in one.
        for _ in 0..50 {
            let Some(cursor) = self.cursor.as_ref() else {
                return Ok(());
            };
            let batch = self.store.feed_after(cursor, FEED_BATCH)?;
            let read = batch.items.len();
            self.counters.feed_results.inc_by(read as u64);
            self.cursor = Some(batch.next);
            self.fleet.observe_feed(batch.items);
            if read < FEED_BATCH {
                break;
            }
        }
        Ok(())
    }

    /// The events the leader recorded since the last round, for this collector's stream. The
    /// leader streams its own as it records them.
    fn forward_events(&mut self) -> Result<(), CollectorError> {
        let after = self.last_event.unwrap_or(0);
        let events = self.store.events_after(after, EVENTS_BATCH)?;
        let leads = self.fleet.leads();
        for stored in events {
            self.last_event = Some(stored.id.max(self.last_event.unwrap_or(0)));
            if !leads {
                self.fleet.forward_event(stored.json);
            }
        }
        Ok(())
    }

    fn reload_silences(&mut self) -> Result<(), CollectorError> {
        let silences = crate::store::silences::SilenceStore::silences(self.store.as_ref())?;
        let book = self.fleet.alerts().silences();
        for silence in silences {
            book.put(silence);
        }
        Ok(())
    }

    fn lead(&mut self) -> Result<(), CollectorError> {
        if Instant::now() < self.next_lead {
            return Ok(());
        }
        self.next_lead = Instant::now() + LEAD_EVERY;
        if self.fleet.leads() {
            if self.check_lead() {
                self.fleet.tick(now_unix_ms());
            }
            return Ok(());
        }
        let Some(lease) = self.store.try_lead(&self.id)? else {
            return Ok(());
        };
        let started = Instant::now();
        let now = now_unix_ms();
        let since = now - (self.config.replay_secs as i64).saturating_mul(1000);
        // Everything stored up to now is in the replay; the feed goes on after it, and the hub
        // skips what the replay already fed the detector.
        let replay = self.store.results_since(since, MAX_REPLAY)?;
        self.fleet.take_lead(lease, &replay, now);
        self.counters.leader.set(1);
        self.counters.leads_taken.inc();
        tracing::info!(
            collector = %self.id,
            replayed = replay.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "took the lead"
        );
        self.heartbeat()?;
        Ok(())
    }

    /// True while the lease holds; steps down when its session is gone.
    fn check_lead(&mut self) -> bool {
        let checked = match self.fleet.lead().lease().as_mut() {
            Some(lease) => lease.check(),
            None => return false,
        };
        match checked {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(collector = %self.id, "the leader's lock session is gone: {e}");
                self.fleet.step_down();
                self.counters.leader.set(0);
                self.counters.leads_lost.inc();
                false
            }
        }
    }

    fn heartbeat(&mut self) -> Result<(), CollectorError> {
        self.next_heartbeat =
            Instant::now() + Duration::from_secs(self.config.heartbeat_secs.max(1));
        let store = self.store.as_ref();
        let now = now_unix_ms();
        store.heartbeat(&CollectorRow {
            id: self.id.clone(),
            quic: self.endpoints.quic.clone(),
            http: self.endpoints.http.clone(),
            last_seen_unix_ms: now,
            leader: self.fleet.leads(),
        })?;
        let fresh_ms = (self.config.heartbeat_secs.max(1) as i64) * 5_000;
        let alive = store.collectors(now, fresh_ms)?;
        self.counters.collectors.set(alive.len() as i64);
        store.publish_sessions(&self.id, &self.sessions.local_json())?;
        if self.fleet.leads() {
            self.sessions
                .set_remote(&self.id, &store.sessions(now, fresh_ms)?);
        }
        Ok(())
    }
}
