//! What several collectors on one database share beyond [`Store`]: the fleet-wide feed of stored
//! results, the leader's lock and the writes only the leader makes (events and the alert outbox),
//! and the notifications that wake the others when something new is committed.
//!
//! The embedded SQLite store (and the memory store) is one collector's alone: it does not
//! implement [`SharedStore`], but it keeps the same event log and outbox behind a
//! [`Leadership`] it grants at once ([`super::Store::own_lease`]), so events and their alert
//! deliveries are recorded and delivered one way whatever the store. The PostgreSQL store
//! ([`super::postgres`]) implements all of it. [`crate::cluster`] drives it: every collector
//! follows the feed to keep its matrix live, and the one holding the lease runs the detector and
//! the alert delivery.
//!
//! Why the leader writes through its lease and not through the pool: the lock lives on one
//! database session. While that session is alive no other collector can lead; once it is gone
//! (the process killed, the host lost, the connection cut), every write the old leader still
//! tries through it fails. So an event or a delivery mark can never come from a collector that
//! lost the lead.

use super::{Store, StoredEvent};
use crate::error::CollectorError;
use crate::events::Event;
use crate::identity::AgentMeta;
use egresswatch_wire::ProbeResult;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A position in the feed of stored results, in commit order. Opaque to callers: a store hands
/// one out ([`SharedStore::feed_head`], [`FeedBatch::next`]) and takes it back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedCursor {
    /// Store-defined: for PostgreSQL, the committing transaction's id and the row id after
    /// which the next read starts.
    pub xact: i64,
    pub row: i64,
}

/// One stored result as every collector sees it: whose, and how to time it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    /// Shared by the items of one commit (one agent's labels, not a copy per result).
    pub agent: Arc<AgentMeta>,
    pub result: ProbeResult,
    pub clock_trusted: bool,
    /// When the collector that stored it received it, Unix ms.
    pub received_unix_ms: i64,
}

impl FeedItem {
    /// One commit's results of one agent, as the feed carries them.
    pub fn of_batch(
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        received_unix_ms: i64,
    ) -> Vec<FeedItem> {
        let agent = Arc::new(agent.clone());
        results
            .iter()
            .map(|result| FeedItem {
                agent: agent.clone(),
                result: result.clone(),
                clock_trusted,
                received_unix_ms,
            })
            .collect()
    }
}

/// What [`SharedStore::feed_after`] read.
#[derive(Debug, Clone, Default)]
pub struct FeedBatch {
    /// In commit order; each agent's results in sequence order.
    pub items: Vec<FeedItem>,
    /// Where the next read starts (equal to the cursor read from when nothing was new).
    pub next: FeedCursor,
}

/// What a notification said was new. Several of a kind arriving together may be folded into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Some collector committed results: read the feed.
    Results,
    /// The leader recorded an event (its id).
    Event(i64),
    /// The leader asks the collector holding `agent`'s connection to pass on a probe request
    /// (the JSON of [`crate::fanout`]'s request).
    ProbeRequest { agent: String, request_json: String },
    /// A silence was added or removed: reread them.
    Silences,
}

/// One alert delivery the leader owes: an event's notice for one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub event_id: i64,
    /// The sink's display name (`[[alerts]] name`, else its kind).
    pub sink: String,
    /// The serialised [`crate::alerts::gate::Notice`] with the event's id set.
    pub notice_json: String,
    /// Attempts made so far (by any leader).
    pub attempts: u32,
    /// When it was recorded, Unix ms: the retry policy gives it up once it is too old.
    pub created_ms: i64,
}

/// A delivery to record with its event: the sink and the notice (its event's id is filled in by
/// the store once it is known).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub sink: String,
    pub notice_json: String,
}

/// A notice's JSON with its event's id set (the id is known only once the event is recorded).
pub fn notice_with_id(notice_json: &str, id: i64) -> Result<String, CollectorError> {
    let mut notice: serde_json::Value = serde_json::from_str(notice_json)
        .map_err(|e| CollectorError::store("recording a delivery", e))?;
    let event = notice
        .get_mut("event")
        .and_then(|e| e.as_object_mut())
        .ok_or_else(|| {
            CollectorError::store("recording a delivery", "the notice has no event object")
        })?;
    event.insert("id".into(), id.into());
    serde_json::to_string(&notice).map_err(|e| CollectorError::store("recording a delivery", e))
}

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The sink accepted it.
    Delivered,
    /// Given up (too old under the retry policy, its sink gone, or its notice unreadable):
    /// counted, never tried again.
    Failed,
}

impl DeliveryOutcome {
    /// The outbox's `state` for it.
    pub fn as_state(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

/// A collector in the shared database, as `/api/collectors` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectorRow {
    pub id: String,
    /// Where agents reach it (QUIC) and where its page is (HTTP), as it reported them.
    pub quic: String,
    pub http: String,
    pub last_seen_unix_ms: i64,
    pub leader: bool,
}

/// The leader's lock and the connection holding it. Dropping it releases the lock (the session
/// ends).
pub trait Leadership: Send {
    /// Ok while the lock is still held: a round trip on the lock's own session.
    fn check(&mut self) -> Result<(), CollectorError>;
    /// Records `event` under `key` (a deterministic name of the change, see
    /// [`crate::cluster::event_key`]) together with its deliveries, in one transaction. `None`
    /// when an event with that key is already stored: a leader that rebuilt its state after a
    /// failover raises nothing twice.
    fn record_event(
        &mut self,
        event: &Event,
        key: &str,
        deliveries: &[NewDelivery],
    ) -> Result<Option<StoredEvent>, CollectorError>;
    /// Each sink's oldest delivery neither delivered nor given up: a sink is sent its notices
    /// one at a time, in the order they were recorded.
    fn next_deliveries(&mut self) -> Result<Vec<Delivery>, CollectorError>;
    /// Gives up every pending delivery recorded before `created_before_ms` (the retry policy's
    /// bound); returns how many.
    fn give_up_deliveries(
        &mut self,
        created_before_ms: i64,
        now_unix_ms: i64,
    ) -> Result<u64, CollectorError>;
    /// Deletes the deliveries that ended (delivered or given up) before `finished_before_ms`;
    /// returns how many. Pending ones are never deleted.
    fn forget_finished(&mut self, finished_before_ms: i64) -> Result<u64, CollectorError>;
    /// Counts one more attempt of a delivery before it is made (so a leader that dies while
    /// sending leaves a trace), returning false when it is no longer pending.
    fn start_attempt(&mut self, delivery_id: i64, now_unix_ms: i64)
        -> Result<bool, CollectorError>;
    /// Marks how a delivery ended.
    fn finish_delivery(
        &mut self,
        delivery_id: i64,
        outcome: DeliveryOutcome,
        now_unix_ms: i64,
    ) -> Result<(), CollectorError>;
    /// Tells every collector (NOTIFY) that the collector holding `agent` should pass on a probe
    /// request.
    fn publish_probe_request(
        &mut self,
        agent: &str,
        request_json: &str,
    ) -> Result<(), CollectorError>;
}

/// A subscription to what other collectors commit (LISTEN). Owned by one thread.
pub trait Listener: Send {
    /// Waits at most `timeout` for notifications; returns what arrived (empty on timeout). An
    /// error means the subscription's session is gone: make a new listener.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<News>, CollectorError>;
}

pub trait SharedStore: Store {
    /// The end of the feed now: reading from here yields only what is committed later.
    fn feed_head(&self) -> Result<FeedCursor, CollectorError>;
    /// Results any collector stored after `cursor`, in commit order, at most `limit`. Only
    /// transactions that can no longer commit behind the returned cursor are read, so a reader
    /// never skips a result that commits late.
    fn feed_after(&self, cursor: &FeedCursor, limit: usize) -> Result<FeedBatch, CollectorError>;
    /// Results measured at or after `since_unix_ms`, every agent's, in measurement order, at most
    /// `limit`: what a new leader replays to rebuild the detector.
    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError>;
    /// Stored events after `after_id`, ascending, at most `limit`: followers forward them to their
    /// SSE clients.
    fn events_after(&self, after_id: i64, limit: usize)
        -> Result<Vec<StoredEvent>, CollectorError>;
    /// The highest event id stored (0 when none).
    fn last_event_id(&self) -> Result<i64, CollectorError>;
    /// Tries once, without waiting, to take the leader's lock. `Some` when this collector now
    /// leads.
    fn try_lead(&self, collector_id: &str) -> Result<Option<Box<dyn Leadership>>, CollectorError>;
    /// A new subscription to notifications.
    fn listen(&self) -> Result<Box<dyn Listener>, CollectorError>;
    /// Tells the other collectors that results were committed (after a commit; cheap to call
    /// often: a store may coalesce).
    fn notify_results(&self) -> Result<(), CollectorError>;
    /// Tells the other collectors that the silences changed.
    fn notify_silences(&self) -> Result<(), CollectorError>;
    /// Records this collector as alive (heartbeat, every few seconds), with where it listens.
    fn heartbeat(&self, row: &CollectorRow) -> Result<(), CollectorError>;
    /// The collectors seen within `fresh_ms` of `now_unix_ms`.
    fn collectors(
        &self,
        now_unix_ms: i64,
        fresh_ms: i64,
    ) -> Result<Vec<CollectorRow>, CollectorError>;
    /// A cheap round trip: is the database reachable now?
    fn ping(&self) -> Result<(), CollectorError>;
    /// Replaces what this collector says of its live agent sessions (a JSON list the cluster
    /// layer writes and reads back; the store keeps it as text beside the heartbeat).
    fn publish_sessions(
        &self,
        collector_id: &str,
        sessions_json: &str,
    ) -> Result<(), CollectorError>;
    /// Every collector's published sessions, of collectors seen within `fresh_ms`:
    /// (collector id, its JSON).
    fn sessions(
        &self,
        now_unix_ms: i64,
        fresh_ms: i64,
    ) -> Result<Vec<(String, String)>, CollectorError>;
}
