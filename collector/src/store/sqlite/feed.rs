//! The SQLite store's share of [`crate::store::shared::SharedStore`] ([`OwnTail`]): one collector has the file alone, so it is a
//! cluster of one. Its feed is the writer's own tail ([`crate::store::tail`]), its lease is
//! granted at once and for good ([`super::outbox::SqliteLease`]), and what the cluster shares
//! between collectors (heartbeats, sessions, notifications) stays in the tail. The replay a new
//! leader reads and the events the follower forwards come from the tables.

use super::{db_err, decode, meta_from_row, SqliteStore};
use crate::error::CollectorError;
use crate::store::shared::FeedItem;
use crate::store::tail::{OwnTail, Tail};
use crate::store::StoredEvent;
use std::sync::Arc;

impl OwnTail for SqliteStore {
    fn tail(&self) -> &Arc<Tail> {
        &self.tail
    }

    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT a.id, a.provider, a.account, a.region, a.instance, a.version,
                        r.record, r.clock_trusted, r.received_ms
                 FROM results r JOIN agents a ON a.id = r.agent
                 WHERE r.at_ms >= ?1 ORDER BY r.at_ms, r.agent, r.seq LIMIT ?2",
            )
            .map_err(|e| db_err("prepare recent results", e))?;
        let rows = stmt
            .query_map(rusqlite::params![since_unix_ms, limit as i64], |row| {
                Ok((
                    meta_from_row(row, 0)?,
                    row.get::<_, Vec<u8>>(6)?,
                    row.get::<_, bool>(7)?,
                    row.get::<_, i64>(8)?,
                ))
            })
            .map_err(|e| db_err("query recent results", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (agent, record, clock_trusted, received_unix_ms) =
                row.map_err(|e| db_err("reading recent results", e))?;
            out.push(FeedItem {
                agent: Arc::new(agent),
                result: decode(&record)?,
                clock_trusted,
                received_unix_ms,
            });
        }
        Ok(out)
    }

    fn events_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, json FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| db_err("prepare events", e))?;
        let rows = stmt
            .query_map(rusqlite::params![after_id, limit as i64], |row| {
                Ok(StoredEvent {
                    id: row.get(0)?,
                    json: row.get(1)?,
                })
            })
            .map_err(|e| db_err("query events", e))?;
        rows.map(|r| r.map_err(|e| db_err("reading events", e)))
            .collect()
    }

    fn last_event_id(&self) -> Result<i64, CollectorError> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })
            .map_err(|e| db_err("reading the last event id", e))
    }
}
