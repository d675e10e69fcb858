//! Durable storage of what agents report: agents, results, events.
//!
//! [`Store`] is the seam every writer and reader goes through (ingest, the fleet hub, the HTTP
//! API): SQLite ([`sqlite::SqliteStore`]) is the embedded default, [`memory::MemoryStore`] a second
//! implementation for tests, and a PostgreSQL one can follow for fleets that outgrow one machine.
//! Old results are pruned by [`retention`]. Every method blocks
//! (call it from `spawn_blocking` in async code). `insert_results` returns only once the results
//! are durable, and it is where exactly-once is decided: each agent has a high-water mark (the
//! highest sequence stored), and a result at or below it is a duplicate, counted and dropped.

pub mod memory;
pub mod retention;
pub mod silences;
mod silences_memory;
mod silences_sqlite;
pub mod sqlite;

#[cfg(test)]
mod contract;

use crate::error::CollectorError;
use crate::events::Event;
use crate::identity::AgentMeta;
use egresswatch_wire::ProbeResult;
use serde::Deserialize;
use std::path::PathBuf;

/// `[store]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// Results older than this many days are deleted (0 keeps everything).
    pub retention_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("egresswatch.db"),
            retention_days: 30,
        }
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

pub trait Store: silences::SilenceStore + Send + Sync + 'static {
    /// Records an agent's hello (labels, version, last seen) and returns its high-water mark.
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError>;
    /// Stores results (ascending seq) durably, dropping duplicates. Returns the new results
    /// through `accepted` so observers see each result once.
    fn insert_results(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock_trusted: bool,
        now_unix_ms: i64,
    ) -> Result<(InsertReport, Vec<ProbeResult>), CollectorError>;
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
    /// Count of stored results of one agent (tests and the soak check exactly-once with it).
    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError>;
    /// Stores one event under a new id and returns it as stored.
    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError>;
    /// Stored events' JSON (each with its `id`), newest first.
    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError>;
    /// Deletes results measured before `before_unix_ms`; returns how many.
    fn prune(&self, before_unix_ms: i64) -> Result<usize, CollectorError>;
}
