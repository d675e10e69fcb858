//! The embedded store: SQLite in WAL mode.
//!
//! Writes go through one writer thread that does group commit ([`super::group_commit`]): every
//! insert request waiting when a transaction starts joins it, so a hundred agents share one
//! fsync instead of paying one each.
//! `synchronous=FULL` makes a commit durable before it returns — an ack must never promise a
//! result a power cut could take back. Reads use their own connection (WAL lets them run beside
//! the writer).
//!
//! Results are stored as their lossless MessagePack record plus the few columns queries need;
//! a `latest` table keeps the freshest result per series so the live matrix rebuilds at start
//! without scanning history. The long-kept tiers (intervals, hourly rollups) are in
//! [`history`], written in the same transaction as the results they come from.

mod feed;
mod history;
mod outbox;
mod silences;

use self::history::{self as sqlite_history, HistoryCache};
use self::outbox as sqlite_outbox;
use crate::clock::BatchClock;
use crate::error::CollectorError;
use crate::events::Event;
use crate::history::{Derived, Rollup, Selector, SeriesInterval, Tier};
use crate::identity::AgentMeta;
use crate::store::group_commit::{GroupWriter, InsertRequest};
use crate::store::tail::{Commit, Tail};
use crate::store::{
    EventStore, HistoryStore, InsertReport, Inspect, ResultStore, Store, StoredEvent,
};
use egresswatch_wire::{Labels, ProbeResult};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn db_err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> CollectorError {
    CollectorError::store(context, e)
}

pub struct SqliteStore {
    /// The database file: the lease opens its own connection to it.
    path: std::path::PathBuf,
    writer: GroupWriter,
    /// Small writes (agents, events, pruning) and all reads share this connection.
    conn: Mutex<Connection>,
    /// The feed of what the writer committed, which this collector's hub follows.
    tail: Arc<Tail>,
}

fn open(path: &Path) -> Result<Connection, CollectorError> {
    let conn =
        Connection::open(path).map_err(|e| db_err(&format!("opening {}", path.display()), e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| db_err("journal_mode=WAL", e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| db_err("synchronous=FULL", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| db_err("busy_timeout", e))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL, account TEXT NOT NULL, region TEXT NOT NULL, instance TEXT NOT NULL,
    version TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    high_water INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    agent TEXT NOT NULL, seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, clock_trusted INTEGER NOT NULL,
    target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL, outcome INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (agent, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_at ON results (at_ms);
CREATE TABLE IF NOT EXISTS latest (
    agent TEXT NOT NULL, target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    seq INTEGER NOT NULL, at_ms INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (agent, target, port, family)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, json TEXT NOT NULL
);
-- Events stored before their JSON carried the id get it, so every event is served one way.
UPDATE events SET json = json_set(json, '$.id', id)
    WHERE json <> '' AND json_valid(json) AND json_extract(json, '$.id') IS NULL;
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, CollectorError> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| db_err("creating the schema", e))?;
        conn.execute_batch(silences::SCHEMA)
            .map_err(|e| db_err("creating the silences table", e))?;
        conn.execute_batch(sqlite_history::SCHEMA)
            .map_err(|e| db_err("creating the history schema", e))?;
        sqlite_outbox::migrate(&conn)?;
        let mut writer_conn = open(path)?;
        let mut high_water: HashMap<String, u64> = HashMap::new();
        let mut history = HistoryCache::default();
        let tail = Tail::new();
        let committed = tail.clone();
        let writer = GroupWriter::start(move |group| {
            let outcomes = commit_group(&mut writer_conn, &mut high_water, &mut history, group)
                .inspect_err(|_| {
                    // The transaction rolled back: cached marks are reloaded from the database.
                    high_water.clear();
                    history.clear();
                })?;
            // In commit order, before any sender hears its results are stored; the new results
            // move on to the feed, only the reports go back to the senders.
            let (reports, fresh): (Vec<InsertReport>, Vec<Vec<ProbeResult>>) =
                outcomes.into_iter().unzip();
            committed.committed(group.iter().zip(fresh).map(|(request, results)| Commit {
                agent_id: &request.agent_id,
                results,
                clock: request.clock,
                received_unix_ms: request.now_unix_ms,
            }));
            Ok(reports)
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            conn: Mutex::new(conn),
            tail,
        })
    }

    /// Opens an existing database without writing a byte (SQLite's `immutable`): for a data dir
    /// that cannot be written (a full disk). Every write fails with `why`, so nothing is acked
    /// and agents keep their results spooled.
    pub fn open_read_only(path: &Path, why: &str) -> Result<SqliteStore, CollectorError> {
        use rusqlite::OpenFlags;
        let uri = format!("file:{}?immutable=1", path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&uri, flags)
            .map_err(|e| db_err(&format!("opening {} read-only", path.display()), e))?;
        conn.query_row("SELECT count(*) FROM agents", [], |_| Ok(()))
            .map_err(|e| db_err(&format!("reading {}", path.display()), e))?;
        let why = why.to_string();
        let writer = GroupWriter::start(move |_group| {
            Err(CollectorError::io(
                "storing results",
                std::io::Error::other(format!("the collector is read-only: {why}")),
            ))
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            conn: Mutex::new(conn),
            tail: Tail::new(),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finishes pending writes and stops the writer (graceful shutdown).
    pub fn close(&self) {
        self.writer.close();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Stores one group in one transaction; returns, per request, its report and its new results
/// (taken from the request, not copied).
fn commit_group(
    conn: &mut Connection,
    high_water: &mut HashMap<String, u64>,
    history: &mut HistoryCache,
    group: &mut [InsertRequest],
) -> Result<Vec<(InsertReport, Vec<ProbeResult>)>, CollectorError> {
    // IMMEDIATE: take the write lock up front; a deferred transaction that upgrades later can
    // fail at once against the other connection instead of waiting.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| db_err("begin", e))?;
    let mut outcomes = Vec::with_capacity(group.len());
    let mut marks: HashMap<String, u64> = HashMap::new();
    // What the group's new results add to the long-kept tiers, written before the commit.
    let mut derived = Derived::default();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO results (agent, seq, at_ms, received_ms, clock_trusted, target, port, family, outcome, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(|e| db_err("prepare insert", e))?;
        let mut latest = tx
            .prepare_cached(
                "INSERT INTO latest (agent, target, port, family, seq, at_ms, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (agent, target, port, family) DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms, record = excluded.record
                 WHERE excluded.at_ms >= latest.at_ms",
            )
            .map_err(|e| db_err("prepare latest", e))?;
        for request in group.iter_mut() {
            let agent = request.agent_id.as_str();
            let mark = match marks.get(agent).or_else(|| high_water.get(agent)) {
                Some(m) => *m,
                None => tx
                    .prepare_cached("SELECT high_water FROM agents WHERE id = ?1")
                    .and_then(|mut read| {
                        read.query_row([agent], |row| row.get::<_, i64>(0))
                            .optional()
                    })
                    .map_err(|e| db_err("reading the high-water mark", e))?
                    .map(|v| v as u64)
                    .unwrap_or(0),
            };
            let mut report = InsertReport {
                high_water: mark,
                ..Default::default()
            };
            let results = std::mem::take(&mut request.results);
            let mut fresh = Vec::with_capacity(results.len());
            // Each fresh result's record, encoded once for both `results` and `latest`.
            let mut records: Vec<Vec<u8>> = Vec::with_capacity(results.len());
            for result in results {
                if result.seq <= report.high_water {
                    report.duplicates += 1;
                    continue;
                }
                let record =
                    rmp_serde::to_vec(&result).map_err(|e| db_err("encoding a result", e))?;
                let changed = insert
                    .execute(params![
                        agent,
                        result.seq as i64,
                        result.at_unix_ms,
                        request.now_unix_ms,
                        request.clock.trusted,
                        result.target,
                        result.port,
                        result.family.code(),
                        result.outcome.code(),
                        record,
                    ])
                    .map_err(|e| db_err("inserting a result", e))?;
                if changed == 0 {
                    report.duplicates += 1;
                    continue;
                }
                report.accepted += 1;
                report.high_water = report.high_water.max(result.seq);
                fresh.push(result);
                records.push(record);
            }
            // The last result of each series in this request, for `latest`.
            let mut newest: HashMap<(&str, u16, u8), usize> = HashMap::new();
            for (index, result) in fresh.iter().enumerate() {
                newest.insert(
                    (result.target.as_str(), result.port, result.family.code()),
                    index,
                );
            }
            for ((target, port, family), index) in newest {
                let result = &fresh[index];
                let record = &records[index];
                latest
                    .execute(params![
                        agent,
                        target,
                        port,
                        family,
                        result.seq as i64,
                        result.at_unix_ms,
                        record
                    ])
                    .map_err(|e| db_err("updating latest", e))?;
            }
            if report.high_water > mark {
                // Cached: parsing this statement again at every commit cost about a tenth of
                // the collector's instructions per result at small batches (callgrind).
                tx.prepare_cached(
                    "UPDATE agents SET high_water = ?2, last_seen_ms = MAX(last_seen_ms, ?3) WHERE id = ?1",
                )
                .and_then(|mut update| {
                    update.execute(params![agent, report.high_water as i64, request.now_unix_ms])
                })
                .map_err(|e| db_err("updating the high-water mark", e))?;
            }
            marks.insert(agent.to_string(), report.high_water);
            if !fresh.is_empty() {
                let (provider, account) = tx
                    .prepare_cached("SELECT provider, account FROM agents WHERE id = ?1")
                    .and_then(|mut read| {
                        read.query_row([agent], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| db_err("reading the agent's labels", e))?
                    .unwrap_or_default();
                derived.add(
                    agent,
                    &provider,
                    &account,
                    &fresh,
                    request.clock.trusted,
                    request.now_unix_ms,
                );
            }
            outcomes.push((report, fresh));
        }
    }
    sqlite_history::apply(&tx, history, &derived)?;
    tx.commit().map_err(|e| db_err("commit", e))?;
    high_water.extend(marks);
    Ok(outcomes)
}

fn meta_from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<AgentMeta> {
    Ok(AgentMeta {
        agent_id: row.get(offset)?,
        labels: Labels {
            provider: row.get(offset + 1)?,
            account: row.get(offset + 2)?,
            region: row.get(offset + 3)?,
            instance: row.get(offset + 4)?,
        },
        agent_version: row.get(offset + 5)?,
    })
}

fn decode(record: &[u8]) -> Result<ProbeResult, CollectorError> {
    rmp_serde::from_slice(record).map_err(|e| db_err("decoding a stored result", e))
}

impl ResultStore for SqliteStore {
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError> {
        let conn = self.conn();
        let l = &agent.labels;
        conn.execute(
            "INSERT INTO agents (id, provider, account, region, instance, version, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, account = excluded.account,
               region = excluded.region, instance = excluded.instance, version = excluded.version,
               last_seen_ms = excluded.last_seen_ms",
            params![agent.agent_id, l.provider, l.account, l.region, l.instance, agent.agent_version, now_unix_ms],
        )
        .map_err(|e| db_err("recording the agent", e))?;
        self.tail.agent(agent);
        let mark: i64 = conn
            .query_row(
                "SELECT high_water FROM agents WHERE id = ?1",
                [&agent.agent_id],
                |row| row.get(0),
            )
            .map_err(|e| db_err("reading the high-water mark", e))?;
        Ok(mark as u64)
    }

    fn insert_results(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock: BatchClock,
        now_unix_ms: i64,
    ) -> Result<InsertReport, CollectorError> {
        self.writer.insert(agent_id, results, clock, now_unix_ms)
    }

    fn latest_per_series(
        &self,
        since_unix_ms: i64,
    ) -> Result<Vec<(AgentMeta, ProbeResult)>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT a.id, a.provider, a.account, a.region, a.instance, a.version, l.record
                 FROM latest l JOIN agents a ON a.id = l.agent WHERE l.at_ms >= ?1 ORDER BY l.at_ms",
            )
            .map_err(|e| db_err("prepare latest", e))?;
        let rows = stmt
            .query_map([since_unix_ms], |row| {
                Ok((meta_from_row(row, 0)?, row.get::<_, Vec<u8>>(6)?))
            })
            .map_err(|e| db_err("query latest", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (meta, record) = row.map_err(|e| db_err("reading latest", e))?;
            out.push((meta, decode(&record)?));
        }
        Ok(out)
    }

    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT record FROM results WHERE agent = ?1 ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(|e| db_err("prepare recent", e))?;
        let rows = stmt
            .query_map(params![agent_id, limit as i64], |row| {
                row.get::<_, Vec<u8>>(0)
            })
            .map_err(|e| db_err("query recent", e))?;
        rows.map(|r| {
            r.map_err(|e| db_err("reading recent", e))
                .and_then(|b| decode(&b))
        })
        .collect()
    }

    fn agents(&self) -> Result<Vec<(AgentMeta, i64)>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, provider, account, region, instance, version, last_seen_ms FROM agents ORDER BY id")
            .map_err(|e| db_err("prepare agents", e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((meta_from_row(row, 0)?, row.get::<_, i64>(6)?))
            })
            .map_err(|e| db_err("query agents", e))?;
        rows.map(|r| r.map_err(|e| db_err("reading agents", e)))
            .collect()
    }

    fn prune(&self, before_unix_ms: i64) -> Result<usize, CollectorError> {
        let conn = self.conn();
        conn.execute("DELETE FROM results WHERE at_ms < ?1", [before_unix_ms])
            .map_err(|e| db_err("pruning results", e))
    }
}

impl EventStore for SqliteStore {
    fn own_lease(
        &self,
    ) -> Result<Option<Box<dyn crate::store::shared::Leadership>>, CollectorError> {
        Ok(Some(Box::new(sqlite_outbox::SqliteLease::new(open(
            &self.path,
        )?))))
    }

    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT json FROM events ORDER BY id DESC LIMIT ?1")
            .map_err(|e| db_err("prepare events", e))?;
        let rows = stmt
            .query_map([limit as i64], |row| row.get::<_, String>(0))
            .map_err(|e| db_err("query events", e))?;
        rows.map(|r| r.map_err(|e| db_err("reading events", e)))
            .collect()
    }
}

impl HistoryStore for SqliteStore {
    fn prune_tier(
        &self,
        tier: Tier,
        before_unix_ms: i64,
        max_rows: usize,
    ) -> Result<usize, CollectorError> {
        sqlite_history::prune_tier(&self.conn(), tier, before_unix_ms, max_rows)
    }

    fn history_hours(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Rollup)>, CollectorError> {
        sqlite_history::history_hours(&self.conn(), selector, from_ms, to_ms)
    }

    fn intervals(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesInterval>, CollectorError> {
        sqlite_history::intervals(&self.conn(), selector, from_ms, to_ms, limit)
    }
}

impl Inspect for SqliteStore {
    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError> {
        let conn = self.conn();
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM results WHERE agent = ?1",
                [agent_id],
                |row| row.get(0),
            )
            .map_err(|e| db_err("counting results", e))?;
        Ok(n as u64)
    }

    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError> {
        let mut conn = self.conn();
        // The id is the row's, and the stored JSON carries it: one transaction numbers the row
        // and then writes the event with its number.
        let tx = conn
            .transaction()
            .map_err(|e| db_err("storing an event", e))?;
        tx.execute(
            "INSERT INTO events (at_ms, json) VALUES (?1, '')",
            params![event.at_unix_ms],
        )
        .map_err(|e| db_err("storing an event", e))?;
        let stored = StoredEvent::new(tx.last_insert_rowid(), event)?;
        tx.execute(
            "UPDATE events SET json = ?2 WHERE id = ?1",
            params![stored.id, stored.json],
        )
        .map_err(|e| db_err("storing an event", e))?;
        tx.commit().map_err(|e| db_err("storing an event", e))?;
        Ok(stored)
    }
}

impl Store for SqliteStore {
    fn close(&self) {
        // The inherent method: the writer finishes and stops.
        SqliteStore::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{self, event, meta, result};

    #[test]
    fn keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract::check(&SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    }

    #[test]
    fn keeps_the_outbox_contract_and_its_pending_deliveries_outlive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let store = SqliteStore::open(&path).unwrap();
            let mut lease = store.own_lease().unwrap().expect("granted at once");
            contract::check_outbox(&store, lease.as_mut());
            let kept = crate::store::shared::NewDelivery {
                sink: "hook".into(),
                notice_json: r#"{"event":{}}"#.into(),
            };
            lease
                .record_event(&event("a9", 9), "agent_silent|a9|9", &[kept])
                .unwrap()
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let mut lease = store.own_lease().unwrap().unwrap();
        let pending = lease.next_deliveries().unwrap();
        assert_eq!(pending.len(), 1);
        assert!(lease
            .record_event(&event("a9", 9), "agent_silent|a9|9", &[])
            .unwrap()
            .is_none());
    }

    #[test]
    fn keeps_the_history_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract::check_history(&SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    }

    #[test]
    fn history_survives_reopen_and_goes_on_from_the_stored_open_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let store = SqliteStore::open(&path).unwrap();
            contract::replay_first_half(&store);
        }
        let store = SqliteStore::open(&path).unwrap();
        contract::replay_second_half_and_check(&store);
    }

    #[test]
    fn events_stored_before_they_carried_their_id_are_given_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO events (at_ms, json) VALUES (1, '{\"kind\":\"agent_silent\"}')",
            [],
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.events(10).unwrap(),
            vec!["{\"kind\":\"agent_silent\",\"id\":1}".to_string()]
        );
    }

    #[test]
    fn stores_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let store = SqliteStore::open(&path).unwrap();
            contract::store_overlapping_batches(&store);
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.upsert_agent(&meta("a1"), 7).unwrap(), 12);
        assert_eq!(store.count_results("a1").unwrap(), 12);
        let latest = store.latest_per_series(0).unwrap();
        assert_eq!(latest.len(), 2);
        assert!(latest
            .iter()
            .any(|(m, r)| m.agent_id == "a1" && r.port == 587 && r.seq == 12));
        assert_eq!(contract::recent_seqs(&store, "a1", 3), vec![12, 11, 10]);
        let first = store.append_event(&event("x", 1)).unwrap();
        let second = store.append_event(&event("y", 2)).unwrap();
        assert!(first.id > 0);
        assert_eq!(store.events(10).unwrap()[0], second.json);
        assert_eq!(store.prune(5).unwrap(), 4);
        assert_eq!(store.agents().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_inserts_share_commits_and_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        let mut threads = Vec::new();
        for a in 0..8 {
            let store = store.clone();
            threads.push(std::thread::spawn(move || {
                let id = format!("agent-{a}");
                store.upsert_agent(&meta(&id), 0).unwrap();
                for batch in 0..20u64 {
                    let rs: Vec<_> = (batch * 10 + 1..=batch * 10 + 10)
                        .map(|s| result(s, 25, s as i64))
                        .collect();
                    store
                        .insert_results(&id, rs.clone(), true.into(), 0)
                        .unwrap();
                    // Every batch is sent twice, as after a lost ack.
                    let r = store.insert_results(&id, rs, true.into(), 0).unwrap();
                    assert_eq!(r.accepted, 0);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        for a in 0..8 {
            assert_eq!(store.count_results(&format!("agent-{a}")).unwrap(), 200);
        }
    }
}
