//! The PostgreSQL store: any number of collectors on one database (`[store] kind = "postgres"`).
//!
//! The same [`Store`] as the SQLite one — exactly-once by each agent's high-water mark, the
//! freshest result per series, the long-kept tiers derived in the transaction that stores the
//! results — plus what several collectors share ([`super::shared::SharedStore`]): the feed of
//! stored results in commit order, the leader's lock, the alert outbox, notifications.
//!
//! Writes of results go through one writer thread per store that does group commit
//! ([`super::group_commit`]): every insert request waiting when a transaction starts joins it. The transaction locks the rows of
//! the group's agents (`SELECT ... FOR UPDATE`, in id order) before it reads their marks, so when
//! two collectors receive the same agent's replay (it reconnected to the other one before its
//! ack arrived), the second waits for the first and then finds the results already stored. Every
//! other query borrows a session from a bounded pool; a session that cannot be had within
//! `connect_timeout_secs` (the database is down) fails the call, so ingest does not ack and the
//! agents keep their results spooled, and the pool reconnects by itself once it is back.
//!
//! Methods block: call them from `spawn_blocking` or a thread of their own, never from inside an
//! async task (each session runs a small runtime of its own).

mod connect;
mod history;
pub mod partitions;
pub mod schema;
mod shared;
mod silences;

#[cfg(test)]
mod tests;

pub use shared::{PgLeadership, PgListener, CHANNEL};

use self::connect::{Connector, Pool, PooledClient};
use self::history::HistoryCache;
use super::group_commit::{GroupWriter, InsertRequest};
use super::{
    BatchClock, EventStore, HistoryStore, InsertReport, Inspect, ResultStore, Store, StoreConfig,
    StoredEvent,
};
use crate::clock::now_unix_ms;
use crate::error::CollectorError;
use crate::events::Event;
use crate::history::{Derived, Rollup, Selector, SeriesInterval, Tier};
use crate::identity::AgentMeta;
use egresswatch_wire::{Labels, ProbeResult};
use postgres::error::SqlState;
use postgres::Row;
use std::collections::HashMap;
use tracing::warn;

/// A group that lost a deadlock or a serialisation conflict is tried again this often.
const GROUP_TRIES: usize = 3;

fn db_err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> CollectorError {
    CollectorError::store(context, e)
}

/// See the module documentation.
pub struct PostgresStore {
    pool: Pool,
    connector: Connector,
    writer: GroupWriter,
}

impl PostgresStore {
    /// Connects to `[store] url`, brings the schema up to date (or refuses a newer one), makes
    /// the results partitions ahead and starts the writer. Fails when the database cannot be
    /// reached within `connect_timeout_secs`.
    pub fn open(config: &StoreConfig) -> Result<PostgresStore, CollectorError> {
        let connector = Connector::of(config)?;
        let mut setup = connector.connect("egresswatch-collector setup")?;
        schema::migrate(&mut setup)?;
        let today = partitions::day_of(now_unix_ms());
        partitions::ensure(&mut setup, today, today + partitions::AHEAD_DAYS)?;
        drop(setup);
        let pool = connector.pool()?;
        let writer_pool = pool.clone();
        let mut state = WriterState {
            written: HashMap::new(),
            history: HistoryCache::default(),
            partitions_day: today,
        };
        let writer = GroupWriter::start(move |group| store_group(&writer_pool, &mut state, group))?;
        Ok(PostgresStore {
            pool,
            connector,
            writer,
        })
    }

    /// A pooled session, waiting at most `connect_timeout_secs` for one.
    fn client(&self) -> Result<PooledClient, CollectorError> {
        self.pool
            .get()
            .map_err(|e| CollectorError::store("reaching PostgreSQL", e))
    }

    /// Finishes pending writes and stops the writer (graceful shutdown).
    pub fn close(&self) {
        self.writer.close();
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the writer keeps between groups.
struct WriterState {
    /// The high-water mark this writer last committed per agent: when the one read under the
    /// agent's lock differs, another collector wrote for it, and the cached history is stale.
    written: HashMap<String, u64>,
    history: HistoryCache,
    /// The day partitions were last made ahead for.
    partitions_day: i64,
}

/// A deadlock or serialisation failure: the transaction was rolled back and may simply be tried
/// again.
fn is_conflict(e: &CollectorError) -> bool {
    let CollectorError::Store { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

fn store_group(
    pool: &Pool,
    state: &mut WriterState,
    group: &[InsertRequest],
) -> Result<Vec<InsertReport>, CollectorError> {
    let mut client = pool
        .get()
        .map_err(|e| CollectorError::store("reaching PostgreSQL", e))?;
    let today = partitions::day_of(now_unix_ms());
    if today != state.partitions_day {
        // Tried once a day: partitions are made days ahead, so the next day's try makes what
        // this one could not (at worst results land in the default partition, never lost).
        state.partitions_day = today;
        if let Err(e) = partitions::ensure(&mut client, today, today + partitions::AHEAD_DAYS) {
            warn!("store: making results partitions ahead: {e}");
        }
    }
    let mut tries = 0;
    loop {
        tries += 1;
        match commit_group(&mut client, state, group) {
            Ok(reports) => return Ok(reports),
            Err(e) => {
                // What is cached may be what the rolled-back transaction wrote.
                state.written.clear();
                state.history.clear();
                if tries >= GROUP_TRIES || !is_conflict(&e) || client.is_closed() {
                    return Err(e);
                }
            }
        }
    }
}

/// One agent's row as the writing transaction locked it.
struct LockedAgent {
    high_water: u64,
    provider: String,
    account: String,
}

fn lock_agents(
    tx: &mut postgres::Transaction<'_>,
    agents: &[&str],
) -> Result<HashMap<String, LockedAgent>, CollectorError> {
    let rows = tx
        .query(
            "SELECT id, high_water, provider, account FROM agents WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
            &[&agents],
        )
        .map_err(|e| db_err("locking the agents' rows", e))?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let get_err = |e| db_err("reading the high-water mark", e);
        out.insert(
            row.try_get(0).map_err(get_err)?,
            LockedAgent {
                high_water: row.try_get::<_, i64>(1).map_err(get_err)? as u64,
                provider: row.try_get(2).map_err(get_err)?,
                account: row.try_get(3).map_err(get_err)?,
            },
        );
    }
    Ok(out)
}

/// The columns of the results one group stores, one vector each (one INSERT for all).
#[derive(Default)]
struct ResultColumns {
    agent: Vec<String>,
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    received_ms: Vec<i64>,
    clock_trusted: Vec<bool>,
    target: Vec<String>,
    port: Vec<i32>,
    family: Vec<i32>,
    outcome: Vec<i32>,
    record: Vec<Vec<u8>>,
}

impl ResultColumns {
    fn push(&mut self, agent: &str, r: &ProbeResult, request: &InsertRequest, record: Vec<u8>) {
        self.agent.push(agent.to_string());
        self.seq.push(r.seq as i64);
        self.at_ms.push(r.at_unix_ms);
        self.received_ms.push(request.now_unix_ms);
        self.clock_trusted.push(request.clock.trusted);
        self.target.push(r.target.clone());
        self.port.push(i32::from(r.port));
        self.family.push(i32::from(r.family.code()));
        self.outcome.push(i32::from(r.outcome.code()));
        self.record.push(record);
    }
}

fn commit_group(
    client: &mut postgres::Client,
    state: &mut WriterState,
    group: &[InsertRequest],
) -> Result<Vec<InsertReport>, CollectorError> {
    let mut tx = client.transaction().map_err(|e| db_err("begin", e))?;
    let mut agents: Vec<&str> = group.iter().map(|r| r.agent_id.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    let mut locked = lock_agents(&mut tx, &agents)?;
    if locked.len() < agents.len() {
        // Results of an agent never recorded (no hello stored): give it a row to lock and to
        // carry its mark, labels left empty until its hello.
        let missing: Vec<&str> = agents
            .iter()
            .copied()
            .filter(|a| !locked.contains_key(*a))
            .collect();
        let now = group.first().map(|r| r.now_unix_ms).unwrap_or(0);
        tx.execute(
            "INSERT INTO agents (id, provider, account, region, instance, version, first_seen_ms, last_seen_ms)
             SELECT id, '', '', '', '', '', $2, $2 FROM unnest($1::text[]) AS id
             ON CONFLICT (id) DO NOTHING",
            &[&missing, &now],
        )
        .map_err(|e| db_err("recording an unknown agent", e))?;
        locked = lock_agents(&mut tx, &agents)?;
    }
    for (agent, row) in &locked {
        if state.written.get(agent) != Some(&row.high_water) {
            state.history.forget_agent(agent);
        }
    }

    let mut outcomes = Vec::with_capacity(group.len());
    let mut marks: HashMap<&str, u64> = HashMap::new();
    let mut columns = ResultColumns::default();
    let mut derived = Derived::default();
    // The freshest stored result per series in the group: (at_ms, index into `columns`).
    let mut newest: HashMap<(&str, &str, u16, u8), (i64, usize)> = HashMap::new();
    // Agents whose mark moved: (mark, latest `now` of their requests).
    let mut moved: HashMap<&str, (u64, i64)> = HashMap::new();
    for request in group {
        let agent = request.agent_id.as_str();
        let row = locked.get(agent);
        let mark = marks
            .get(agent)
            .copied()
            .or_else(|| row.map(|r| r.high_water))
            .unwrap_or(0);
        let mut report = InsertReport {
            high_water: mark,
            ..Default::default()
        };
        // Borrowed: a conflict tries the group again, and the feed is the table.
        let mut fresh: Vec<&ProbeResult> = Vec::with_capacity(request.results.len());
        for result in &request.results {
            if result.seq <= report.high_water {
                report.duplicates += 1;
                continue;
            }
            let record = rmp_serde::to_vec(result).map_err(|e| db_err("encoding a result", e))?;
            report.accepted += 1;
            report.high_water = result.seq;
            let index = columns.seq.len();
            columns.push(agent, result, request, record);
            let key = (
                agent,
                result.target.as_str(),
                result.port,
                result.family.code(),
            );
            match newest.get(&key) {
                Some((at, _)) if *at > result.at_unix_ms => {}
                _ => {
                    newest.insert(key, (result.at_unix_ms, index));
                }
            }
            fresh.push(result);
        }
        if report.high_water > mark {
            let entry = moved.entry(agent).or_insert((0, i64::MIN));
            entry.0 = report.high_water;
            entry.1 = entry.1.max(request.now_unix_ms);
        }
        marks.insert(agent, report.high_water);
        if !fresh.is_empty() {
            let (provider, account) = row
                .map(|r| (r.provider.as_str(), r.account.as_str()))
                .unwrap_or(("", ""));
            derived.add(
                agent,
                provider,
                account,
                fresh,
                request.clock.trusted,
                request.now_unix_ms,
            );
        }
        outcomes.push(report);
    }

    if !columns.seq.is_empty() {
        let c = &columns;
        tx.execute(
            "INSERT INTO results (agent, seq, at_ms, received_ms, clock_trusted, target, port, family, outcome, record)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bool[],
                                  $6::text[], $7::int4[], $8::int4[], $9::int4[], $10::bytea[])",
            &[
                &c.agent, &c.seq, &c.at_ms, &c.received_ms, &c.clock_trusted, &c.target, &c.port,
                &c.family, &c.outcome, &c.record,
            ],
        )
        .map_err(|e| db_err("inserting results", e))?;
        let mut l_agent = Vec::with_capacity(newest.len());
        let mut l_target = Vec::with_capacity(newest.len());
        let mut l_port = Vec::with_capacity(newest.len());
        let mut l_family = Vec::with_capacity(newest.len());
        let mut l_seq = Vec::with_capacity(newest.len());
        let mut l_at = Vec::with_capacity(newest.len());
        let mut l_record = Vec::with_capacity(newest.len());
        for &(_, i) in newest.values() {
            l_agent.push(c.agent[i].as_str());
            l_target.push(c.target[i].as_str());
            l_port.push(c.port[i]);
            l_family.push(c.family[i]);
            l_seq.push(c.seq[i]);
            l_at.push(c.at_ms[i]);
            l_record.push(c.record[i].as_slice());
        }
        tx.execute(
            "INSERT INTO latest (agent, target, port, family, seq, at_ms, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int8[], $6::int8[], $7::bytea[])
             ON CONFLICT (agent, target, port, family) DO UPDATE
                 SET seq = excluded.seq, at_ms = excluded.at_ms, record = excluded.record
                 WHERE excluded.at_ms >= latest.at_ms",
            &[&l_agent, &l_target, &l_port, &l_family, &l_seq, &l_at, &l_record],
        )
        .map_err(|e| db_err("updating latest", e))?;
    }
    if !moved.is_empty() {
        let ids: Vec<&str> = moved.keys().copied().collect();
        let marks_moved: Vec<i64> = ids.iter().map(|a| moved[a].0 as i64).collect();
        let seen: Vec<i64> = ids.iter().map(|a| moved[a].1).collect();
        tx.execute(
            "UPDATE agents a SET high_water = u.mark, last_seen_ms = GREATEST(a.last_seen_ms, u.seen)
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(id, mark, seen) WHERE a.id = u.id",
            &[&ids, &marks_moved, &seen],
        )
        .map_err(|e| db_err("updating the high-water marks", e))?;
    }
    history::apply(&mut tx, &mut state.history, &derived)?;
    if !columns.seq.is_empty() {
        // Sent at commit, once however many groups fold into it: every collector's listener
        // wakes to read the feed.
        tx.execute("SELECT pg_notify($1, 'results')", &[&CHANNEL])
            .map_err(|e| db_err("notifying the other collectors", e))?;
    }
    tx.commit().map_err(|e| db_err("commit", e))?;
    for (agent, mark) in marks {
        state.written.insert(agent.to_string(), mark);
    }
    Ok(outcomes)
}

/// An agent's identity from columns `id, provider, account, region, instance, version` at
/// `offset`.
fn meta_of(row: &Row, offset: usize) -> Result<AgentMeta, CollectorError> {
    let get_err = |e| db_err("reading an agent", e);
    Ok(AgentMeta {
        agent_id: row.try_get(offset).map_err(get_err)?,
        labels: Labels {
            provider: row.try_get(offset + 1).map_err(get_err)?,
            account: row.try_get(offset + 2).map_err(get_err)?,
            region: row.try_get(offset + 3).map_err(get_err)?,
            instance: row.try_get(offset + 4).map_err(get_err)?,
        },
        agent_version: row.try_get(offset + 5).map_err(get_err)?,
    })
}

fn decode(record: &[u8]) -> Result<ProbeResult, CollectorError> {
    rmp_serde::from_slice(record).map_err(|e| db_err("decoding a stored result", e))
}

fn record_of(row: &Row, at: usize) -> Result<ProbeResult, CollectorError> {
    let bytes: &[u8] = row.try_get(at).map_err(|e| db_err("reading a result", e))?;
    decode(bytes)
}

impl ResultStore for PostgresStore {
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError> {
        let l = &agent.labels;
        let mark: i64 = self
            .client()?
            .query_one(
                "INSERT INTO agents (id, provider, account, region, instance, version, first_seen_ms, last_seen_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, account = excluded.account,
                   region = excluded.region, instance = excluded.instance, version = excluded.version,
                   last_seen_ms = excluded.last_seen_ms
                 RETURNING high_water",
                &[
                    &agent.agent_id,
                    &l.provider,
                    &l.account,
                    &l.region,
                    &l.instance,
                    &agent.agent_version,
                    &now_unix_ms,
                ],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("recording the agent", e))?;
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
        let rows = self
            .client()?
            .query(
                "SELECT a.id, a.provider, a.account, a.region, a.instance, a.version, l.record
                 FROM latest l JOIN agents a ON a.id = l.agent WHERE l.at_ms >= $1
                 ORDER BY l.at_ms, l.agent, l.target, l.port, l.family",
                &[&since_unix_ms],
            )
            .map_err(|e| db_err("reading latest", e))?;
        rows.iter()
            .map(|row| Ok((meta_of(row, 0)?, record_of(row, 6)?)))
            .collect()
    }

    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM results WHERE agent = $1 ORDER BY seq DESC LIMIT $2",
                &[&agent_id, &(limit as i64)],
            )
            .map_err(|e| db_err("reading recent results", e))?;
        rows.iter().map(|row| record_of(row, 0)).collect()
    }

    fn agents(&self) -> Result<Vec<(AgentMeta, i64)>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT id, provider, account, region, instance, version, last_seen_ms
                 FROM agents ORDER BY id",
                &[],
            )
            .map_err(|e| db_err("reading agents", e))?;
        rows.iter()
            .map(|row| {
                let seen: i64 = row.try_get(6).map_err(|e| db_err("reading agents", e))?;
                Ok((meta_of(row, 0)?, seen))
            })
            .collect()
    }

    fn prune(&self, before_unix_ms: i64) -> Result<usize, CollectorError> {
        let mut client = self.client()?;
        let dropped = partitions::prune_raw(&mut client, before_unix_ms, 0)?;
        let deleted = client
            .execute("DELETE FROM results WHERE at_ms < $1", &[&before_unix_ms])
            .map_err(|e| db_err("pruning results", e))?;
        Ok(dropped + deleted as usize)
    }
}

impl EventStore for PostgresStore {
    fn own_lease(
        &self,
    ) -> Result<Option<Box<dyn crate::store::shared::Leadership>>, CollectorError> {
        // Shared: the lease is won (SharedStore::try_lead), never granted.
        Ok(None)
    }

    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT json FROM events ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .map_err(|e| db_err("reading events", e))?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(|e| db_err("reading events", e)))
            .collect()
    }
}

impl HistoryStore for PostgresStore {
    fn prune_tier(
        &self,
        tier: Tier,
        before_unix_ms: i64,
        max_rows: usize,
    ) -> Result<usize, CollectorError> {
        let mut client = self.client()?;
        match tier {
            Tier::Raw => partitions::prune_raw(&mut client, before_unix_ms, max_rows),
            _ => history::prune_tier(&mut *client, tier, before_unix_ms, max_rows),
        }
    }

    fn history_hours(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Rollup)>, CollectorError> {
        history::history_hours(&mut *self.client()?, selector, from_ms, to_ms)
    }

    fn intervals(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesInterval>, CollectorError> {
        history::intervals(&mut *self.client()?, selector, from_ms, to_ms, limit)
    }
}

impl Inspect for PostgresStore {
    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError> {
        let n: i64 = self
            .client()?
            .query_one(
                "SELECT COUNT(*) FROM results WHERE agent = $1",
                &[&agent_id],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("counting results", e))?;
        Ok(n as u64)
    }

    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError> {
        let mut client = self.client()?;
        // The id is taken first so the row is written once, its JSON carrying it.
        let id: i64 = client
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('events', 'id'))",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("numbering an event", e))?;
        let stored = StoredEvent::new(id, event)?;
        client
            .execute(
                "INSERT INTO events (id, at_ms, json) VALUES ($1, $2, $3)",
                &[&stored.id, &event.at_unix_ms, &stored.json],
            )
            .map_err(|e| db_err("storing an event", e))?;
        Ok(stored)
    }
}

impl Store for PostgresStore {
    fn close(&self) {
        // The inherent method: the writer finishes and stops.
        PostgresStore::close(self)
    }
}
