//! What the HTTP side needs from durable history — an agent's recent results and the stored
//! events — as a small trait, so this module does not depend on the store's internals. The real
//! store implements it at merge; [`MemoryHistory`] is a bounded in-memory one for tests and for
//! running without a store.

use crate::error::CollectorError;
use egresswatch_wire::ProbeResult;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub trait History: Send + Sync + 'static {
    /// The agent's latest results, newest first, at most `limit`.
    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError>;
    /// Stores one event (its JSON) and returns its id.
    fn append_event(&self, at_unix_ms: i64, json: &str) -> Result<i64, CollectorError>;
    /// Stored events' JSON, newest first, at most `limit`.
    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError>;
}

/// Bounded in-memory history.
#[derive(Debug)]
pub struct MemoryHistory {
    max_per_agent: usize,
    max_events: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    results: HashMap<String, VecDeque<ProbeResult>>,
    events: VecDeque<(i64, String)>,
    next_id: i64,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        MemoryHistory::new(1000, 10_000)
    }
}

impl MemoryHistory {
    pub fn new(max_per_agent: usize, max_events: usize) -> Self {
        MemoryHistory {
            max_per_agent: max_per_agent.max(1),
            max_events: max_events.max(1),
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records results (what the store would have done).
    pub fn push_results(&self, agent_id: &str, results: &[ProbeResult]) {
        let mut inner = self.lock();
        let q = inner.results.entry(agent_id.to_string()).or_default();
        for r in results {
            q.push_back(r.clone());
            while q.len() > self.max_per_agent {
                q.pop_front();
            }
        }
    }
}

impl History for MemoryHistory {
    fn recent_results(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> Result<Vec<ProbeResult>, CollectorError> {
        let inner = self.lock();
        Ok(inner
            .results
            .get(agent_id)
            .map(|q| q.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    fn append_event(&self, _at_unix_ms: i64, json: &str) -> Result<i64, CollectorError> {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.events.push_back((id, json.to_string()));
        while inner.events.len() > self.max_events {
            inner.events.pop_front();
        }
        Ok(id)
    }

    fn events(&self, limit: usize) -> Result<Vec<String>, CollectorError> {
        let inner = self.lock();
        Ok(inner
            .events
            .iter()
            .rev()
            .take(limit)
            .map(|(_, j)| j.clone())
            .collect())
    }
}
