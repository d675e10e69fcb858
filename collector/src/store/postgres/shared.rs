//! The PostgreSQL store's share of [`SharedStore`]: the feed in commit order, the leader's lock
//! on a session of its own ([`PgLeadership`]), the notifications ([`PgListener`]), heartbeats.
//!
//! The feed: each results row carries the id of the transaction that wrote it (`xact`) and a
//! serial id. A reader takes rows in (`xact`, id) order, and only those of transactions older
//! than the oldest of this database's transactions still running ([`feed_frontier`]): a
//! transaction that began earlier but commits later can therefore never end up behind a cursor
//! already handed out. What a reader waits for is a write still in flight, a few milliseconds;
//! a long transaction in another database of the same server holds nothing back. Followers also
//! read the feed on a timer, not only when notified: a transaction that held the frontier back
//! may not be one that notifies.
//!
//! Notifications go on one channel, [`CHANNEL`], with the payloads `results`, `event:<id>`,
//! `probe:<agent>\n<request JSON>` and `silences`. `results` is sent inside the transaction
//! that stores results (NOTIFY is delivered at commit, and PostgreSQL folds duplicates within
//! one transaction), so [`SharedStore::notify_results`] has nothing left to do.

use super::super::shared::{
    notice_with_id, CollectorRow, Delivery, DeliveryOutcome, FeedBatch, FeedCursor, FeedItem,
    Leadership, Listener, NewDelivery, News, SharedStore,
};
use super::super::StoredEvent;
use super::{db_err, meta_of, record_of, PostgresStore};
use crate::error::CollectorError;
use crate::events::Event;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Row};
use std::time::Duration;
use tracing::debug;

/// The notification channel every collector of a database listens on.
pub const CHANNEL: &str = "egresswatch";
/// The leader's session-level advisory lock (per database).
const LEADER_LOCK: i64 = 0x6567_7773_0003;
/// PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// Most notifications one [`Listener::wait`] returns; the rest wait for the next call.
const MAX_DRAINED: usize = 10_000;

const FEED_COLUMNS: &str = "r.xact::text::bigint, r.id, a.id, a.provider, a.account, a.region,
     a.instance, a.version, r.record, r.clock_trusted, r.received_ms";

/// A feed row: (xact, id) and the item.
fn feed_item(row: &Row) -> Result<(i64, i64, FeedItem), CollectorError> {
    let get_err = |e| db_err("reading the feed", e);
    Ok((
        row.try_get(0).map_err(get_err)?,
        row.try_get(1).map_err(get_err)?,
        FeedItem {
            agent: std::sync::Arc::new(meta_of(row, 2)?),
            result: record_of(row, 8)?,
            clock_trusted: row.try_get(9).map_err(get_err)?,
            received_unix_ms: row.try_get(10).map_err(get_err)?,
        },
    ))
}

fn stored_event(row: &Row) -> Result<StoredEvent, CollectorError> {
    let get_err = |e| db_err("reading events", e);
    Ok(StoredEvent {
        id: row.try_get(0).map_err(get_err)?,
        json: row.try_get(1).map_err(get_err)?,
    })
}

impl SharedStore for PostgresStore {
    fn feed_head(&self) -> Result<FeedCursor, CollectorError> {
        // Every transaction older than the oldest of this database's running writers is behind
        // this; one committed just now but younger than a running one is read again from here
        // (at least once rather than never).
        let mut client = self.client()?;
        let frontier = feed_frontier(&mut client)?;
        Ok(FeedCursor {
            xact: frontier - 1,
            row: i64::MAX,
        })
    }

    fn feed_after(&self, cursor: &FeedCursor, limit: usize) -> Result<FeedBatch, CollectorError> {
        let mut client = self.client()?;
        let frontier = feed_frontier(&mut client)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {FEED_COLUMNS} FROM results r JOIN agents a ON a.id = r.agent
                     WHERE (r.xact, r.id) > ($1::bigint::text::xid8, $2::bigint)
                       AND r.xact < $4::bigint::text::xid8
                     ORDER BY r.xact, r.id LIMIT $3"
                ),
                &[&cursor.xact.max(0), &cursor.row, &(limit as i64), &frontier],
            )
            .map_err(|e| db_err("reading the feed", e))?;
        let mut batch = FeedBatch {
            items: Vec::with_capacity(rows.len()),
            next: cursor.clone(),
        };
        for row in &rows {
            let (xact, id, item) = feed_item(row)?;
            batch.next = FeedCursor { xact, row: id };
            batch.items.push(item);
        }
        Ok(batch)
    }

    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError> {
        let rows = self
            .client()?
            .query(
                &format!(
                    "SELECT {FEED_COLUMNS} FROM results r JOIN agents a ON a.id = r.agent
                     WHERE r.at_ms >= $1 ORDER BY r.at_ms, r.id LIMIT $2"
                ),
                &[&since_unix_ms, &(limit as i64)],
            )
            .map_err(|e| db_err("reading recent results", e))?;
        rows.iter().map(|row| Ok(feed_item(row)?.2)).collect()
    }

    fn events_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT id, json FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after_id, &(limit as i64)],
            )
            .map_err(|e| db_err("reading events", e))?;
        rows.iter().map(stored_event).collect()
    }

    fn last_event_id(&self) -> Result<i64, CollectorError> {
        self.client()?
            .query_one("SELECT COALESCE(MAX(id), 0) FROM events", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("reading the last event id", e))
    }

    fn try_lead(&self, collector_id: &str) -> Result<Option<Box<dyn Leadership>>, CollectorError> {
        let mut client = self.connector.connect("egresswatch-collector leader")?;
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("trying the leader's lock", e))?;
        if !held {
            return Ok(None);
        }
        // Which backend leads for this collector, so the collectors list names the leader from
        // the lock itself, not from a heartbeat that may be stale.
        client
            .execute(
                "INSERT INTO collectors (id, quic, http, last_seen_ms, leader, leader_pid)
                 VALUES ($1, '', '', 0, true, pg_backend_pid())
                 ON CONFLICT (id) DO UPDATE SET leader_pid = pg_backend_pid()",
                &[&collector_id],
            )
            .map_err(|e| db_err("recording the leader", e))?;
        Ok(Some(Box::new(PgLeadership { client })))
    }

    fn listen(&self) -> Result<Box<dyn Listener>, CollectorError> {
        let mut client = self.connector.connect("egresswatch-collector listener")?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| db_err("subscribing to notifications", e))?;
        Ok(Box::new(PgListener { client }))
    }

    /// Nothing to do: `results` is sent by the transaction that stored them.
    fn notify_results(&self) -> Result<(), CollectorError> {
        Ok(())
    }

    fn notify_silences(&self) -> Result<(), CollectorError> {
        self.client()?
            .execute("SELECT pg_notify($1, 'silences')", &[&CHANNEL])
            .map_err(|e| db_err("notifying the other collectors", e))?;
        Ok(())
    }

    fn heartbeat(&self, row: &CollectorRow) -> Result<(), CollectorError> {
        self.client()?
            .execute(
                "INSERT INTO collectors (id, quic, http, last_seen_ms, leader) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET quic = excluded.quic, http = excluded.http,
                     last_seen_ms = excluded.last_seen_ms, leader = excluded.leader",
                &[&row.id, &row.quic, &row.http, &row.last_seen_unix_ms, &row.leader],
            )
            .map_err(|e| db_err("recording the heartbeat", e))?;
        Ok(())
    }

    fn collectors(
        &self,
        now_unix_ms: i64,
        fresh_ms: i64,
    ) -> Result<Vec<CollectorRow>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT c.id, c.quic, c.http, c.last_seen_ms,
                     COALESCE(c.leader_pid = (
                         SELECT l.pid FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid::bigint = $2 AND l.objid::bigint = $3
                         LIMIT 1), false)
                 FROM collectors c WHERE c.last_seen_ms >= $1 ORDER BY c.id",
                &[
                    &(now_unix_ms - fresh_ms),
                    &(LEADER_LOCK >> 32),
                    &(LEADER_LOCK & 0xffff_ffff),
                ],
            )
            .map_err(|e| db_err("reading the collectors", e))?;
        rows.iter()
            .map(|row| {
                let get_err = |e| db_err("reading the collectors", e);
                Ok(CollectorRow {
                    id: row.try_get(0).map_err(get_err)?,
                    quic: row.try_get(1).map_err(get_err)?,
                    http: row.try_get(2).map_err(get_err)?,
                    last_seen_unix_ms: row.try_get(3).map_err(get_err)?,
                    leader: row.try_get(4).map_err(get_err)?,
                })
            })
            .collect()
    }

    fn ping(&self) -> Result<(), CollectorError> {
        self.client()?
            .simple_query("SELECT 1")
            .map_err(|e| db_err("pinging PostgreSQL", e))?;
        Ok(())
    }

    fn publish_sessions(
        &self,
        collector_id: &str,
        sessions_json: &str,
    ) -> Result<(), CollectorError> {
        self.client()?
            .execute(
                "UPDATE collectors SET sessions = $2 WHERE id = $1",
                &[&collector_id, &sessions_json],
            )
            .map_err(|e| db_err("publishing the live sessions", e))?;
        Ok(())
    }

    fn sessions(
        &self,
        now_unix_ms: i64,
        fresh_ms: i64,
    ) -> Result<Vec<(String, String)>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT id, sessions FROM collectors WHERE last_seen_ms >= $1 ORDER BY id",
                &[&(now_unix_ms - fresh_ms)],
            )
            .map_err(|e| db_err("reading the published sessions", e))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)
                        .map_err(|e| db_err("reading the published sessions", e))?,
                    row.try_get(1)
                        .map_err(|e| db_err("reading the published sessions", e))?,
                ))
            })
            .collect()
    }
}

/// The transaction id below which every transaction that can write this database has ended: the
/// feed reads only rows of transactions older than it, so a row that commits late is never
/// skipped. Only this database's running transactions count (`pg_stat_activity`): a long
/// transaction elsewhere on the server (another application, a dump of another database) holds
/// nothing back, where the server-wide `pg_snapshot_xmin` would stall the feed behind it. The
/// order matters: the next id is read first, then the running ones; a writer that starts in
/// between gets an id at or above the first, so it is behind the frontier either way.
fn feed_frontier(client: &mut postgres::Client) -> Result<i64, CollectorError> {
    let next: i64 = client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .and_then(|row| row.try_get(0))
        .map_err(|e| db_err("reading the feed's frontier", e))?;
    let running = client
        .query(
            "SELECT backend_xid::text::bigint FROM pg_stat_activity
             WHERE datname = current_database() AND backend_xid IS NOT NULL",
            &[],
        )
        .map_err(|e| db_err("reading the running transactions", e))?;
    let mut frontier = next;
    for row in &running {
        let xid: i64 = row
            .try_get(0)
            .map_err(|e| db_err("reading the running transactions", e))?;
        frontier = frontier.min(widen_xid(xid, next));
    }
    Ok(frontier)
}

/// A 32-bit transaction id as the 64-bit one it is, given a 64-bit id known to be later: same
/// epoch when its low half is not past the later one's, else the epoch before.
fn widen_xid(xid: i64, later: i64) -> i64 {
    let (epoch, low) = (later >> 32, later & 0xffff_ffff);
    if xid <= low {
        (epoch << 32) | xid
    } else {
        ((epoch - 1) << 32) | xid
    }
}

/// The leader's lock: a session of its own that took `pg_try_advisory_lock`. Every write the
/// leader alone makes goes through this session, so none can come from a collector whose
/// session (and with it the lock) is gone. Dropping it closes the session and frees the lock.
pub struct PgLeadership {
    client: Client,
}

impl Leadership for PgLeadership {
    fn check(&mut self) -> Result<(), CollectorError> {
        self.client
            .simple_query("SELECT 1")
            .map_err(|e| db_err("the leader's session", e))?;
        Ok(())
    }

    fn record_event(
        &mut self,
        event: &Event,
        key: &str,
        deliveries: &[NewDelivery],
    ) -> Result<Option<StoredEvent>, CollectorError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| db_err("recording an event", e))?;
        let inserted = tx
            .query_opt(
                "INSERT INTO events (at_ms, json, dedup_key) VALUES ($1, '', $2)
                 ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
                &[&event.at_unix_ms, &key],
            )
            .map_err(|e| db_err("recording an event", e))?;
        let Some(row) = inserted else {
            tx.rollback().map_err(|e| db_err("recording an event", e))?;
            return Ok(None);
        };
        let id: i64 = row
            .try_get(0)
            .map_err(|e| db_err("recording an event", e))?;
        let stored = StoredEvent::new(id, event)?;
        tx.execute(
            "UPDATE events SET json = $2 WHERE id = $1",
            &[&stored.id, &stored.json],
        )
        .map_err(|e| db_err("recording an event", e))?;
        if !deliveries.is_empty() {
            let sinks: Vec<&str> = deliveries.iter().map(|d| d.sink.as_str()).collect();
            let notices = deliveries
                .iter()
                .map(|d| notice_with_id(&d.notice_json, id))
                .collect::<Result<Vec<_>, _>>()?;
            tx.execute(
                "INSERT INTO outbox (event_id, sink, notice_json, created_ms)
                 SELECT $1, d.sink, d.notice, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS d(sink, notice, n)
                 ORDER BY d.n",
                &[&id, &sinks, &notices],
            )
            .map_err(|e| db_err("recording deliveries", e))?;
        }
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("event:{id}")],
        )
        .map_err(|e| db_err("notifying the other collectors", e))?;
        tx.commit().map_err(|e| db_err("recording an event", e))?;
        Ok(Some(stored))
    }

    fn next_deliveries(&mut self) -> Result<Vec<Delivery>, CollectorError> {
        let rows = self
            .client
            .query(
                "SELECT id, event_id, sink, notice_json, attempts, created_ms FROM (
                   SELECT DISTINCT ON (sink) id, event_id, sink, notice_json, attempts, created_ms
                   FROM outbox WHERE state = 'pending' ORDER BY sink, id
                 ) AS heads ORDER BY id",
                &[],
            )
            .map_err(|e| db_err("reading pending deliveries", e))?;
        rows.iter()
            .map(|row| {
                let get_err = |e| db_err("reading pending deliveries", e);
                Ok(Delivery {
                    id: row.try_get(0).map_err(get_err)?,
                    event_id: row.try_get(1).map_err(get_err)?,
                    sink: row.try_get(2).map_err(get_err)?,
                    notice_json: row.try_get(3).map_err(get_err)?,
                    attempts: row.try_get::<_, i32>(4).map_err(get_err)?.max(0) as u32,
                    created_ms: row.try_get(5).map_err(get_err)?,
                })
            })
            .collect()
    }

    fn give_up_deliveries(
        &mut self,
        created_before_ms: i64,
        now_unix_ms: i64,
    ) -> Result<u64, CollectorError> {
        self.client
            .execute(
                "UPDATE outbox SET state = 'failed', finished_ms = $2
                 WHERE state = 'pending' AND created_ms < $1",
                &[&created_before_ms, &now_unix_ms],
            )
            .map_err(|e| db_err("giving up old deliveries", e))
    }

    fn forget_finished(&mut self, finished_before_ms: i64) -> Result<u64, CollectorError> {
        self.client
            .execute(
                "DELETE FROM outbox WHERE state <> 'pending' AND finished_ms < $1",
                &[&finished_before_ms],
            )
            .map_err(|e| db_err("forgetting finished deliveries", e))
    }

    fn start_attempt(
        &mut self,
        delivery_id: i64,
        now_unix_ms: i64,
    ) -> Result<bool, CollectorError> {
        let n = self
            .client
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, attempted_ms = $2
                 WHERE id = $1 AND state = 'pending'",
                &[&delivery_id, &now_unix_ms],
            )
            .map_err(|e| db_err("counting a delivery attempt", e))?;
        Ok(n == 1)
    }

    fn finish_delivery(
        &mut self,
        delivery_id: i64,
        outcome: DeliveryOutcome,
        now_unix_ms: i64,
    ) -> Result<(), CollectorError> {
        let state = outcome.as_state();
        self.client
            .execute(
                "UPDATE outbox SET state = $2, finished_ms = $3 WHERE id = $1 AND state = 'pending'",
                &[&delivery_id, &state, &now_unix_ms],
            )
            .map_err(|e| db_err("finishing a delivery", e))?;
        Ok(())
    }

    fn publish_probe_request(
        &mut self,
        agent: &str,
        request_json: &str,
    ) -> Result<(), CollectorError> {
        if agent.contains('\n') {
            return Err(CollectorError::store(
                "publishing a probe request",
                "an agent id with a line break cannot be named in a notification",
            ));
        }
        let payload = format!("probe:{agent}\n{request_json}");
        if payload.len() > MAX_PAYLOAD {
            return Err(CollectorError::store(
                "publishing a probe request",
                format!(
                    "the request is {} bytes, more than a notification carries ({MAX_PAYLOAD})",
                    payload.len()
                ),
            ));
        }
        self.client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .map_err(|e| db_err("publishing a probe request", e))?;
        Ok(())
    }
}

/// A session that ran `LISTEN` on [`CHANNEL`].
pub struct PgListener {
    client: Client,
}

/// What one payload says; None for one this build does not know.
fn parse(payload: &str) -> Option<News> {
    if payload == "results" {
        return Some(News::Results);
    }
    if payload == "silences" {
        return Some(News::Silences);
    }
    if let Some(id) = payload.strip_prefix("event:") {
        return id.parse().ok().map(News::Event);
    }
    let (agent, request_json) = payload.strip_prefix("probe:")?.split_once('\n')?;
    Some(News::ProbeRequest {
        agent: agent.to_string(),
        request_json: request_json.to_string(),
    })
}

impl PgListener {
    fn take(&self, payload: &str, news: &mut Vec<News>) {
        match parse(payload) {
            // Several `results` or `silences` say no more than one.
            Some(n) if matches!(n, News::Results | News::Silences) && news.contains(&n) => {}
            Some(n) => news.push(n),
            None => debug!("store: ignoring an unknown notification {payload:?}"),
        }
    }
}

impl Listener for PgListener {
    fn wait(&mut self, timeout: Duration) -> Result<Vec<News>, CollectorError> {
        let gone = |e| db_err("the notification listener's session", e);
        let mut payloads = Vec::new();
        {
            let mut notifications = self.client.notifications();
            let first = notifications.timeout_iter(timeout).next().map_err(gone)?;
            if let Some(first) = first {
                payloads.push(first.payload().to_string());
                let mut rest = notifications.iter();
                while payloads.len() < MAX_DRAINED {
                    match rest.next().map_err(gone)? {
                        Some(n) => payloads.push(n.payload().to_string()),
                        None => break,
                    }
                }
            }
        }
        if payloads.is_empty() && self.client.is_closed() {
            return Err(CollectorError::store(
                "waiting for notifications",
                "the listener's session to PostgreSQL is closed",
            ));
        }
        let mut news = Vec::new();
        for payload in &payloads {
            self.take(payload, &mut news);
        }
        Ok(news)
    }
}

#[cfg(test)]
mod widen_tests {
    use super::widen_xid;

    #[test]
    fn a_32_bit_xid_widens_into_the_epoch_of_a_later_id_or_the_one_before() {
        let later = (3i64 << 32) | 1_000;
        assert_eq!(widen_xid(900, later), (3 << 32) | 900);
        assert_eq!(widen_xid(1_000, later), (3 << 32) | 1_000);
        assert_eq!(widen_xid(4_000_000_000, later), (2 << 32) | 4_000_000_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_unknown_ones_are_none() {
        assert_eq!(parse("results"), Some(News::Results));
        assert_eq!(parse("silences"), Some(News::Silences));
        assert_eq!(parse("event:42"), Some(News::Event(42)));
        assert_eq!(
            parse("probe:a1\n{\"x\":1}"),
            Some(News::ProbeRequest {
                agent: "a1".into(),
                request_json: "{\"x\":1}".into()
            })
        );
        assert_eq!(parse("event:x"), None);
        assert_eq!(parse("probe:no-newline"), None);
        assert_eq!(parse("something new"), None);
    }

    #[test]
    fn a_notice_gets_its_event_id() {
        let json = notice_with_id(
            "{\"event\":{\"kind\":\"agent_silent\"},\"lasted_ms\":null}",
            9,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event"]["id"], 9);
        assert!(notice_with_id("[1]", 9).is_err());
    }
}
