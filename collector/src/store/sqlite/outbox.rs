//! The embedded store's event log and alert outbox: one collector alone on its file holds the
//! lease for good, so [`SqliteLease`] is granted at once ([`crate::store::Store::own_lease`]) and
//! records an event together with its deliveries in one transaction, exactly as the PostgreSQL
//! leader does. A collector killed between deciding and delivering finds the deliveries still
//! pending when it starts again, and sends them.
//!
//! The lease has a connection of its own (WAL lets the readers and the results' writer go on
//! beside it), and it is only ever called off the runtime's threads (the hub's recorder thread,
//! the outbox task's `spawn_blocking`).

use crate::error::CollectorError;
use crate::events::Event;
use crate::store::shared::{notice_with_id, Delivery, DeliveryOutcome, Leadership, NewDelivery};
use crate::store::StoredEvent;
use rusqlite::{params, Connection, OptionalExtension};

fn db_err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> CollectorError {
    CollectorError::store(context, e)
}

/// The outbox table; the events' `dedup_key` is added by [`migrate`] (older files lack it).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL,
    sink TEXT NOT NULL,
    notice_json TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempted_ms INTEGER,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    finished_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE state = 'pending';
";

/// Adds what the event log needs to a file made by an older collector.
pub(super) fn migrate(conn: &Connection) -> Result<(), CollectorError> {
    conn.execute_batch(SCHEMA)
        .map_err(|e| db_err("creating the outbox", e))?;
    let has_key: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'dedup_key'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(|e| db_err("reading the events table", e))?
        > 0;
    if !has_key {
        conn.execute_batch("ALTER TABLE events ADD COLUMN dedup_key TEXT")
            .map_err(|e| db_err("adding the events' dedup_key", e))?;
    }
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS events_dedup_key ON events (dedup_key)
         WHERE dedup_key IS NOT NULL",
    )
    .map_err(|e| db_err("indexing the events' dedup_key", e))
}

/// The lease a collector alone on its SQLite file holds for good.
pub struct SqliteLease {
    conn: Connection,
}

impl SqliteLease {
    pub(super) fn new(conn: Connection) -> SqliteLease {
        SqliteLease { conn }
    }
}

impl Leadership for SqliteLease {
    fn check(&mut self) -> Result<(), CollectorError> {
        Ok(())
    }

    fn record_event(
        &mut self,
        event: &Event,
        key: &str,
        deliveries: &[NewDelivery],
    ) -> Result<Option<StoredEvent>, CollectorError> {
        let context = "recording an event";
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_err(context, e))?;
        let known: Option<i64> = tx
            .query_row("SELECT id FROM events WHERE dedup_key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| db_err(context, e))?;
        if known.is_some() {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO events (at_ms, json, dedup_key) VALUES (?1, '', ?2)",
            params![event.at_unix_ms, key],
        )
        .map_err(|e| db_err(context, e))?;
        let stored = StoredEvent::new(tx.last_insert_rowid(), event)?;
        tx.execute(
            "UPDATE events SET json = ?2 WHERE id = ?1",
            params![stored.id, stored.json],
        )
        .map_err(|e| db_err(context, e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (event_id, sink, notice_json, created_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| db_err("recording deliveries", e))?;
            let now = crate::clock::now_unix_ms();
            for d in deliveries {
                let notice = notice_with_id(&d.notice_json, stored.id)?;
                insert
                    .execute(params![stored.id, d.sink, notice, now])
                    .map_err(|e| db_err("recording deliveries", e))?;
            }
        }
        tx.commit().map_err(|e| db_err(context, e))?;
        Ok(Some(stored))
    }

    fn next_deliveries(&mut self) -> Result<Vec<Delivery>, CollectorError> {
        let context = "reading pending deliveries";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, event_id, sink, notice_json, attempts, created_ms FROM outbox
                 WHERE id IN (SELECT min(id) FROM outbox WHERE state = 'pending' GROUP BY sink)
                 ORDER BY id",
            )
            .map_err(|e| db_err(context, e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Delivery {
                    id: row.get(0)?,
                    event_id: row.get(1)?,
                    sink: row.get(2)?,
                    notice_json: row.get(3)?,
                    attempts: row.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                    created_ms: row.get(5)?,
                })
            })
            .map_err(|e| db_err(context, e))?;
        rows.map(|r| r.map_err(|e| db_err(context, e))).collect()
    }

    fn give_up_deliveries(
        &mut self,
        created_before_ms: i64,
        now_unix_ms: i64,
    ) -> Result<u64, CollectorError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET state = 'failed', finished_ms = ?2
                 WHERE state = 'pending' AND created_ms < ?1",
            )
            .and_then(|mut update| update.execute(params![created_before_ms, now_unix_ms]))
            .map_err(|e| db_err("giving up old deliveries", e))?;
        Ok(n as u64)
    }

    fn forget_finished(&mut self, finished_before_ms: i64) -> Result<u64, CollectorError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM outbox WHERE state <> 'pending' AND finished_ms < ?1",
                [finished_before_ms],
            )
            .map_err(|e| db_err("forgetting finished deliveries", e))?;
        Ok(n as u64)
    }

    fn start_attempt(
        &mut self,
        delivery_id: i64,
        now_unix_ms: i64,
    ) -> Result<bool, CollectorError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, attempted_ms = ?2
                 WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut update| update.execute(params![delivery_id, now_unix_ms]))
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
        self.conn
            .prepare_cached(
                "UPDATE outbox SET state = ?2, finished_ms = ?3 WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut update| update.execute(params![delivery_id, state, now_unix_ms]))
            .map_err(|e| db_err("finishing a delivery", e))?;
        Ok(())
    }

    fn publish_probe_request(
        &mut self,
        _agent: &str,
        _request_json: &str,
    ) -> Result<(), CollectorError> {
        // Alone on its file, this collector holds every session itself: the fan-out reaches
        // them directly and never asks the store to pass a request on.
        Err(CollectorError::store(
            "publishing a probe request",
            "a collector alone on its database holds every session itself",
        ))
    }
}
