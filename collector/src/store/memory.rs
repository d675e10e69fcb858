//! A second [`Store`]: everything in memory, for tests that need a store without a file. It keeps
//! the trait's promises as the SQLite store does — exactly-once by each agent's high-water mark,
//! the freshest result per series, events numbered as they are stored — but nothing survives the
//! process and nothing is bounded.

use super::{InsertReport, Store, StoredEvent};
use crate::error::CollectorError;
use crate::events::Event;
use crate::identity::AgentMeta;
use egresswatch_wire::{Family, ProbeResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// (id, stored record) of each silence: see silences_memory.rs.
    silences: Mutex<Vec<(String, String)>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every agent that said hello, with when it was last seen.
    agents: BTreeMap<String, (AgentMeta, i64)>,
    /// Per agent: the highest sequence stored.
    high_water: HashMap<String, u64>,
    /// Per agent: its results by sequence.
    results: HashMap<String, BTreeMap<u64, ProbeResult>>,
    /// The freshest result per (agent, target, port, family).
    latest: BTreeMap<(String, String, u16, Family), ProbeResult>,
    /// (id, JSON), oldest first.
    events: Vec<(i64, String)>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub(super) fn silence_records(&self) -> MutexGuard<'_, Vec<(String, String)>> {
        self.silences
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError> {
        let mut inner = self.lock();
        inner
            .agents
            .insert(agent.agent_id.clone(), (agent.clone(), now_unix_ms));
        Ok(inner.high_water.get(&agent.agent_id).copied().unwrap_or(0))
    }

    fn insert_results(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        _clock_trusted: bool,
        now_unix_ms: i64,
    ) -> Result<(InsertReport, Vec<ProbeResult>), CollectorError> {
        let mut inner = self.lock();
        let mark = inner.high_water.get(agent_id).copied().unwrap_or(0);
        let mut report = InsertReport {
            high_water: mark,
            ..Default::default()
        };
        let mut fresh = Vec::new();
        for result in results {
            let stored = inner.results.entry(agent_id.to_string()).or_default();
            if result.seq <= report.high_water || stored.contains_key(&result.seq) {
                report.duplicates += 1;
                continue;
            }
            stored.insert(result.seq, result.clone());
            report.accepted += 1;
            report.high_water = report.high_water.max(result.seq);
            let key = (
                agent_id.to_string(),
                result.target.clone(),
                result.port,
                result.family,
            );
            let older =
                matches!(inner.latest.get(&key), Some(held) if held.at_unix_ms > result.at_unix_ms);
            if !older {
                inner.latest.insert(key, result.clone());
            }
            fresh.push(result);
        }
        if report.high_water > mark {
            inner
                .high_water
                .insert(agent_id.to_string(), report.high_water);
            if let Some((_, last_seen)) = inner.agents.get_mut(agent_id) {
                *last_seen = (*last_seen).max(now_unix_ms);
            }
        }
        Ok((report, fresh))
    }

    fn latest_per_series(
        &self,
        since_unix_ms: i64,
    ) -> Result<Vec<(AgentMeta, ProbeResult)>, CollectorError> {
        let inner = self.lock();
        let mut out: Vec<(AgentMeta, ProbeResult)> = inner
            .latest
            .iter()
            .filter(|(_, r)| r.at_unix_ms >= since_unix_ms)
            .filter_map(|((agent, ..), r)| {
                let (meta, _) = inner.agents.get(agent)?;
                Some((meta.clone(), r.clone()))
            })
            .collect();
        out.sort_by_key(|(_, r)| r.at_unix_ms);
        Ok(out)
    }

    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError> {
        Ok(self
            .lock()
            .results
            .get(agent_id)
            .map(|r| r.values().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    fn agents(&self) -> Result<Vec<(AgentMeta, i64)>, CollectorError> {
        Ok(self.lock().agents.values().cloned().collect())
    }

    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError> {
        Ok(self
            .lock()
            .results
            .get(agent_id)
            .map_or(0, |r| r.len() as u64))
    }

    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError> {
        let mut inner = self.lock();
        let id = inner.events.last().map_or(1, |(id, _)| id + 1);
        let stored = StoredEvent::new(id, event)?;
        inner.events.push((id, stored.json.clone()));
        Ok(stored)
    }

    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError> {
        Ok(self
            .lock()
            .events
            .iter()
            .rev()
            .take(limit)
            .map(|(_, json)| json.clone())
            .collect())
    }

    fn prune(&self, before_unix_ms: i64) -> Result<usize, CollectorError> {
        let mut inner = self.lock();
        let mut deleted = 0;
        for results in inner.results.values_mut() {
            let before = results.len();
            results.retain(|_, r| r.at_unix_ms >= before_unix_ms);
            deleted += before - results.len();
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_store_contract() {
        super::super::contract::check(&super::MemoryStore::new());
    }
}
