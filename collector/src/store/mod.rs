//! Durable storage of what agents report: agents, results, events.
//!
//! [`Store`] is the seam every writer and reader goes through (ingest, the fleet hub, the HTTP
//! API), one small trait per concern: [`ResultStore`], [`EventStore`], [`HistoryStore`] and
//! [`silences::SilenceStore`]; [`shared::SharedStore`] adds the feed, the lease and what
//! collectors tell each other. SQLite ([`sqlite::SqliteStore`]) is the embedded default (a
//! cluster of one: its feed is the writer's own tail, [`tail`]), [`memory::MemoryStore`] a second
//! implementation for tests, and [`postgres::PostgresStore`] holds several collectors on one
//! database.
//! Old rows are pruned by [`retention`], each tier on its own clock. Every method blocks
//! (call it from `spawn_blocking` in async code). `insert_results` returns only once the results
//! are durable, and it is where exactly-once is decided: each agent has a high-water mark (the
//! highest sequence stored), and a result at or below it is a duplicate, counted and dropped.
//!
//! Three tiers: raw results for a short window (what drill-down and replay need), and two kept
//! long — per-series state intervals and hourly rollups per series and per cell — derived by
//! [`crate::history`] in the same transaction that stores the new results, so each result counts
//! once in every tier and an ack still means all of it is durable. The long tiers are plain
//! tables of integers, text and small blobs (see [`sqlite`]), the same rows in [`postgres`].

mod group_commit;
pub mod memory;
pub mod postgres;
pub mod retention;
pub mod shared;
pub mod silences;
mod silences_memory;
pub mod sqlite;
pub mod tail;

#[cfg(test)]
mod contract;

use crate::clock::BatchClock;
use crate::error::CollectorError;
use crate::events::Event;
use crate::history::{Rollup, Selector, SeriesInterval, Tier};
use crate::identity::AgentMeta;
use egresswatch_wire::ProbeResult;
use serde::Deserialize;
use std::path::PathBuf;

/// `[store]` in the collector's config.
/// Which engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One collector, one file (`path`).
    #[default]
    Sqlite,
    /// Any number of collectors on one PostgreSQL database (`url`).
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// SQLite database file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// PostgreSQL: `postgres://USER@HOST:PORT/DB` (key=value form too); `sslmode=require` or
    /// `verify-full` in it turns TLS on. No password in it: see `password_file`.
    pub url: Option<String>,
    /// PostgreSQL: a file holding the password (its first line), readable by the collector only.
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: PEM CA certificates the server's certificate must chain to (TLS); without
    /// it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: most connections this collector opens to the database, besides the leader's
    /// lock and the notification listener. Default 8.
    pub pool_size: u32,
    /// PostgreSQL: how long to wait for a connection (connecting, or a free one from the pool)
    /// before a write fails and the agent keeps the results spooled. Default 5.
    pub connect_timeout_secs: u64,
    /// Raw results older than this many hours are deleted (0 keeps them all). Default 48.
    pub raw_retention_hours: Option<u32>,
    /// State intervals and hourly rollups older than this many days are deleted (0 keeps them).
    pub history_retention_days: u32,
}

/// The raw window when nothing is configured.
pub const DEFAULT_RAW_RETENTION_HOURS: u32 = 48;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            path: PathBuf::from("egresswatch.db"),
            url: None,
            password_file: None,
            ca_file: None,
            pool_size: 8,
            connect_timeout_secs: 5,
            raw_retention_hours: None,
            history_retention_days: 400,
        }
    }
}

impl StoreConfig {
    /// How long raw results are kept, hours (0: for ever): `raw_retention_hours`, else 48.
    pub fn raw_hours(&self) -> u32 {
        self.raw_retention_hours
            .unwrap_or(DEFAULT_RAW_RETENTION_HOURS)
    }
}

/// What happened to one batch's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsertReport {
    /// Newly stored.
    pub accepted: u32,
    /// Already stored before (a replay): no-ops.
    pub duplicates: u32,
    /// The agent's high-water mark after this insert.
    pub high_water: u64,
}

/// An event as the store recorded it: the id it was given and its JSON, `id` included, which is
/// what `/api/events`, the stream and the webhooks serve.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub json: String,
}

impl StoredEvent {
    /// `event` numbered `id`, serialised once.
    pub fn new(id: i64, event: &Event) -> Result<StoredEvent, CollectorError> {
        let mut numbered = event.clone();
        numbered.id = Some(id);
        let json = serde_json::to_string(&numbered)
            .map_err(|e| CollectorError::store("serialising an event", e))?;
        Ok(StoredEvent { id, json })
    }
}

/// Agents and their results: what ingest writes and the page and the hub read.
pub trait ResultStore: Send + Sync + 'static {
    /// Records an agent's hello (labels, version, last seen) and returns its high-water mark.
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError>;
    /// Stores results (ascending seq) durably, dropping duplicates, and publishes the new ones
    /// in the feed, where they go by move: the caller hears only how many were new
    /// ([`InsertReport`]), and whoever needs the results themselves reads the feed.
    fn insert_results(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock: BatchClock,
        now_unix_ms: i64,
    ) -> Result<InsertReport, CollectorError>;
    /// The freshest result per (agent, target, port, family) measured since `since_unix_ms`.
    fn latest_per_series(
        &self,
        since_unix_ms: i64,
    ) -> Result<Vec<(AgentMeta, ProbeResult)>, CollectorError>;
    /// An agent's latest results, newest first.
    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError>;
    /// Every agent ever seen, with when it was last seen.
    fn agents(&self) -> Result<Vec<(AgentMeta, i64)>, CollectorError>;
    /// Deletes results measured before `before_unix_ms`; returns how many.
    fn prune(&self, before_unix_ms: i64) -> Result<usize, CollectorError>;
}

/// The event log: written through the lease (with the alert deliveries each event owes), read
/// by `/api/events`.
pub trait EventStore: Send + Sync + 'static {
    /// The lease of a store that one collector has alone (SQLite, memory): granted at once and
    /// for good, it records events with their alert deliveries and serves the outbox. `None`
    /// for a store several collectors share: there the lease is won through
    /// [`shared::SharedStore::try_lead`].
    fn own_lease(&self) -> Result<Option<Box<dyn shared::Leadership>>, CollectorError>;
    /// Stored events' JSON (each with its `id`), newest first.
    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError>;
}

/// The long-kept tiers: per-series state intervals and hourly rollups.
pub trait HistoryStore: Send + Sync + 'static {
    /// Deletes at most `max_rows` rows of `tier` older than `before_unix_ms` (raw results by
    /// measurement time, intervals by when they last held, rollups by their hour's end); returns
    /// how many. Retention calls it until it returns less than `max_rows`.
    fn prune_tier(
        &self,
        tier: Tier,
        before_unix_ms: i64,
        max_rows: usize,
    ) -> Result<usize, CollectorError>;
    /// The hourly rollups of the series or cells `selector` names, from the hour `from_ms`
    /// falls in to before `to_ms`, merged per hour: (Unix hour, rollup), ascending. Served from
    /// the cell rollups unless the selector names an agent or a target.
    fn history_hours(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Rollup)>, CollectorError>;
    /// State intervals of the series `selector` names that held at some time in
    /// `from_ms..to_ms`, newest (latest `last_seen`) first, at most `limit`.
    fn intervals(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesInterval>, CollectorError>;
}

/// What tests and the soak look at directly, which the collector itself never calls.
pub trait Inspect {
    /// Count of stored results of one agent (exactly-once checks).
    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError>;
    /// Stores one event under a new id, without deliveries (the hub records through the lease).
    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError>;
}

/// A whole store: each concern's trait, and its end.
pub trait Store: ResultStore + EventStore + HistoryStore + silences::SilenceStore {
    /// Finishes pending writes (a graceful stop). Nothing to do for a store without a writer.
    fn close(&self) {}
}
