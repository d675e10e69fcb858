//! A second [`Store`]: everything in memory, for tests that need a store without a file. It keeps
//! the trait's promises as the SQLite store does — exactly-once by each agent's high-water mark,
//! the freshest result per series, events numbered as they are stored — but nothing survives the
//! process and nothing is bounded. Its long-kept tiers are the same derivation
//! ([`crate::history`]) held in maps.

use super::shared::{notice_with_id, Delivery, DeliveryOutcome, FeedItem, Leadership, NewDelivery};
use super::tail::{Commit, OwnTail, Tail};
use super::{
    BatchClock, EventStore, HistoryStore, InsertReport, Inspect, ResultStore, Store, StoredEvent,
};
use crate::error::CollectorError;
use crate::events::Event;
use crate::history::{
    fold_series, CellKey, Derived, Interval, Rollup, Selector, SeriesInterval, Tier, HOUR_MS,
};
use crate::identity::{AgentMeta, SeriesKey};
use egresswatch_wire::{Family, ProbeResult};
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Shared with the lease ([`MemoryLease`]), which records events and the outbox in it.
    inner: Arc<Mutex<Inner>>,
    /// (id, stored record) of each silence: see silences_memory.rs.
    silences: Mutex<Vec<(String, String)>>,
    /// The feed of what was stored, which a hub over this store follows.
    tail: Arc<Tail>,
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
    /// The keys of the events recorded through the lease.
    event_keys: HashSet<String>,
    /// The alert outbox, oldest first: (delivery, state).
    outbox: Vec<(Delivery, Option<DeliveryOutcome>)>,
    /// Each series' (provider, account) as first stored.
    series_labels: HashMap<SeriesKey, (String, String)>,
    /// Each series' intervals by first sequence; the last is the open one.
    intervals: BTreeMap<SeriesKey, BTreeMap<u64, Interval>>,
    series_hours: BTreeMap<(SeriesKey, i64), Rollup>,
    cell_hours: BTreeMap<(CellKey, i64), Rollup>,
}

impl Inner {
    fn apply(&mut self, derived: Derived) {
        for (series, labels) in derived.labels {
            self.series_labels.entry(series).or_insert(labels);
        }
        for (series, points) in derived.points {
            let held = self.intervals.entry(series).or_default();
            let open = held.values().next_back().cloned();
            for i in fold_series(open, &points).touched {
                held.insert(i.first_seq, i);
            }
        }
        for (key, add) in derived.series_hours {
            self.series_hours.entry(key).or_default().merge(&add);
        }
        for (key, add) in derived.cell_hours {
            self.cell_hours.entry(key).or_default().merge(&add);
        }
    }

    fn labels_of(&self, series: &SeriesKey) -> (&str, &str) {
        self.series_labels
            .get(series)
            .map(|(p, a)| (p.as_str(), a.as_str()))
            .unwrap_or(("unlabelled", "unlabelled"))
    }
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
        lock_inner(&self.inner)
    }
}

fn lock_inner(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn append_event(&mut self, event: &Event) -> Result<StoredEvent, CollectorError> {
        let id = self.events.last().map_or(1, |(id, _)| id + 1);
        let stored = StoredEvent::new(id, event)?;
        self.events.push((id, stored.json.clone()));
        Ok(stored)
    }
}

/// The memory store's lease: granted at once, like SQLite's.
pub struct MemoryLease {
    inner: Arc<Mutex<Inner>>,
}

impl Leadership for MemoryLease {
    fn check(&mut self) -> Result<(), CollectorError> {
        Ok(())
    }

    fn record_event(
        &mut self,
        event: &Event,
        key: &str,
        deliveries: &[NewDelivery],
    ) -> Result<Option<StoredEvent>, CollectorError> {
        let mut inner = lock_inner(&self.inner);
        if inner.event_keys.contains(key) {
            return Ok(None);
        }
        // Everything is checked before anything is kept: all of it or nothing, as in one
        // transaction.
        let event_id = inner.events.last().map_or(1, |(id, _)| id + 1);
        let notices = deliveries
            .iter()
            .map(|d| Ok((d.sink.clone(), notice_with_id(&d.notice_json, event_id)?)))
            .collect::<Result<Vec<_>, CollectorError>>()?;
        let stored = inner.append_event(event)?;
        inner.event_keys.insert(key.to_string());
        let now = crate::clock::now_unix_ms();
        for (sink, notice_json) in notices {
            let id = inner.outbox.len() as i64 + 1;
            inner.outbox.push((
                Delivery {
                    id,
                    event_id: stored.id,
                    sink,
                    notice_json,
                    attempts: 0,
                    created_ms: now,
                },
                None,
            ));
        }
        Ok(Some(stored))
    }

    fn next_deliveries(&mut self) -> Result<Vec<Delivery>, CollectorError> {
        let inner = lock_inner(&self.inner);
        let mut seen = HashSet::new();
        Ok(inner
            .outbox
            .iter()
            .filter(|(d, state)| state.is_none() && seen.insert(d.sink.clone()))
            .map(|(d, _)| d.clone())
            .collect())
    }

    fn give_up_deliveries(
        &mut self,
        created_before_ms: i64,
        _now_unix_ms: i64,
    ) -> Result<u64, CollectorError> {
        let mut inner = lock_inner(&self.inner);
        let mut n = 0;
        for (d, state) in inner.outbox.iter_mut() {
            if state.is_none() && d.created_ms < created_before_ms {
                *state = Some(DeliveryOutcome::Failed);
                n += 1;
            }
        }
        Ok(n)
    }

    fn forget_finished(&mut self, _finished_before_ms: i64) -> Result<u64, CollectorError> {
        // Ids are positions here: finished deliveries stay (a test store is short-lived).
        Ok(0)
    }

    fn start_attempt(
        &mut self,
        delivery_id: i64,
        _now_unix_ms: i64,
    ) -> Result<bool, CollectorError> {
        let mut inner = lock_inner(&self.inner);
        Ok(
            match inner.outbox.iter_mut().find(|(d, _)| d.id == delivery_id) {
                Some((d, None)) => {
                    d.attempts += 1;
                    true
                }
                _ => false,
            },
        )
    }

    fn finish_delivery(
        &mut self,
        delivery_id: i64,
        outcome: DeliveryOutcome,
        _now_unix_ms: i64,
    ) -> Result<(), CollectorError> {
        let mut inner = lock_inner(&self.inner);
        if let Some((_, state @ None)) = inner.outbox.iter_mut().find(|(d, _)| d.id == delivery_id)
        {
            *state = Some(outcome);
        }
        Ok(())
    }

    fn publish_probe_request(
        &mut self,
        _agent: &str,
        _request_json: &str,
    ) -> Result<(), CollectorError> {
        Err(CollectorError::store(
            "publishing a probe request",
            "a collector alone on its store holds every session itself",
        ))
    }
}

impl Store for MemoryStore {}

impl ResultStore for MemoryStore {
    fn upsert_agent(&self, agent: &AgentMeta, now_unix_ms: i64) -> Result<u64, CollectorError> {
        let mut inner = self.lock();
        inner
            .agents
            .insert(agent.agent_id.clone(), (agent.clone(), now_unix_ms));
        self.tail.agent(agent);
        Ok(inner.high_water.get(&agent.agent_id).copied().unwrap_or(0))
    }

    fn insert_results(
        &self,
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock: BatchClock,
        now_unix_ms: i64,
    ) -> Result<InsertReport, CollectorError> {
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
        if !fresh.is_empty() {
            let (provider, account) = inner
                .agents
                .get(agent_id)
                .map(|(m, _)| (m.labels.provider.clone(), m.labels.account.clone()))
                .unwrap_or_default();
            let mut derived = Derived::default();
            derived.add(
                agent_id,
                &provider,
                &account,
                &fresh,
                clock.trusted,
                now_unix_ms,
            );
            inner.apply(derived);
        }
        if report.high_water > mark {
            inner
                .high_water
                .insert(agent_id.to_string(), report.high_water);
            if let Some((_, last_seen)) = inner.agents.get_mut(agent_id) {
                *last_seen = (*last_seen).max(now_unix_ms);
            }
        }
        // Under the store's lock: the feed is in the order the results were stored.
        self.tail.committed([Commit {
            agent_id,
            results: fresh,
            clock,
            received_unix_ms: now_unix_ms,
        }]);
        Ok(report)
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

impl EventStore for MemoryStore {
    fn own_lease(&self) -> Result<Option<Box<dyn Leadership>>, CollectorError> {
        Ok(Some(Box::new(MemoryLease {
            inner: self.inner.clone(),
        })))
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
}

impl HistoryStore for MemoryStore {
    fn prune_tier(
        &self,
        tier: Tier,
        before_unix_ms: i64,
        max_rows: usize,
    ) -> Result<usize, CollectorError> {
        let mut inner = self.lock();
        let mut budget = max_rows;
        let mut take = |old: bool| {
            let go = old && budget > 0;
            if go {
                budget -= 1;
            }
            !go
        };
        match tier {
            Tier::Raw => {
                for results in inner.results.values_mut() {
                    results.retain(|_, r| take(r.at_unix_ms < before_unix_ms));
                }
            }
            Tier::Intervals => {
                for intervals in inner.intervals.values_mut() {
                    intervals.retain(|_, i| take(i.last_ms < before_unix_ms));
                }
                inner.intervals.retain(|_, i| !i.is_empty());
            }
            Tier::Hourly => {
                let before_hour = before_unix_ms.div_euclid(HOUR_MS);
                inner
                    .series_hours
                    .retain(|(_, hour), _| take(*hour < before_hour));
                inner
                    .cell_hours
                    .retain(|(_, hour), _| take(*hour < before_hour));
            }
        }
        Ok(max_rows - budget)
    }

    fn history_hours(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, Rollup)>, CollectorError> {
        let inner = self.lock();
        let first = from_ms.div_euclid(HOUR_MS);
        let end = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
        let mut hours: BTreeMap<i64, Rollup> = BTreeMap::new();
        if selector.needs_series() {
            for ((series, hour), r) in &inner.series_hours {
                let (provider, account) = inner.labels_of(series);
                if (first..end).contains(hour) && selector.admits_series(series, provider, account)
                {
                    hours.entry(*hour).or_default().merge(r);
                }
            }
        } else {
            for ((cell, hour), r) in &inner.cell_hours {
                if (first..end).contains(hour) && selector.admits_cell(cell) {
                    hours.entry(*hour).or_default().merge(r);
                }
            }
        }
        Ok(hours.into_iter().collect())
    }

    fn intervals(
        &self,
        selector: &Selector,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesInterval>, CollectorError> {
        let inner = self.lock();
        let mut out = Vec::new();
        for (series, intervals) in &inner.intervals {
            let (provider, account) = inner.labels_of(series);
            if !selector.admits_series(series, provider, account) {
                continue;
            }
            for i in intervals.values() {
                if i.last_ms >= from_ms && i.first_ms < to_ms {
                    out.push(SeriesInterval {
                        series: series.clone(),
                        provider: provider.to_string(),
                        account: account.to_string(),
                        interval: i.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (b.interval.last_ms, b.interval.first_seq)
                .cmp(&(a.interval.last_ms, a.interval.first_seq))
        });
        out.truncate(limit);
        Ok(out)
    }
}

impl Inspect for MemoryStore {
    fn count_results(&self, agent_id: &str) -> Result<u64, CollectorError> {
        Ok(self
            .lock()
            .results
            .get(agent_id)
            .map_or(0, |r| r.len() as u64))
    }

    fn append_event(&self, event: &Event) -> Result<StoredEvent, CollectorError> {
        self.lock().append_event(event)
    }
}

/// A cluster of one, as the SQLite store is ([`super::sqlite`]): the feed is the tail, the lease
/// is granted at once. The memory store keeps no receive time, so a replay times each result by
/// its measurement.
impl OwnTail for MemoryStore {
    fn tail(&self) -> &Arc<Tail> {
        &self.tail
    }

    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError> {
        let inner = self.lock();
        let mut out: Vec<FeedItem> = Vec::new();
        for (agent_id, results) in &inner.results {
            let Some((agent, _)) = inner.agents.get(agent_id) else {
                continue;
            };
            let agent = Arc::new(agent.clone());
            for r in results.values().filter(|r| r.at_unix_ms >= since_unix_ms) {
                out.push(FeedItem {
                    agent: agent.clone(),
                    result: r.clone(),
                    clock_trusted: true,
                    received_unix_ms: r.at_unix_ms,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.result.at_unix_ms, &a.agent.agent_id, a.result.seq).cmp(&(
                b.result.at_unix_ms,
                &b.agent.agent_id,
                b.result.seq,
            ))
        });
        out.truncate(limit);
        Ok(out)
    }

    fn events_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, CollectorError> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|(id, _)| *id > after_id)
            .take(limit)
            .map(|(id, json)| StoredEvent {
                id: *id,
                json: json.clone(),
            })
            .collect())
    }

    fn last_event_id(&self) -> Result<i64, CollectorError> {
        Ok(self.lock().events.last().map(|(id, _)| *id).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_store_contract() {
        super::super::contract::check(&super::MemoryStore::new());
    }

    #[test]
    fn keeps_the_outbox_contract() {
        let store = super::MemoryStore::new();
        let mut lease = super::EventStore::own_lease(&store).unwrap().unwrap();
        super::super::contract::check_outbox(&store, lease.as_mut());
    }

    #[test]
    fn keeps_the_history_contract() {
        super::super::contract::check_history(&super::MemoryStore::new());
    }

    #[test]
    fn history_goes_on_from_the_open_interval() {
        let store = super::MemoryStore::new();
        super::super::contract::replay_first_half(&store);
        super::super::contract::replay_second_half_and_check(&store);
    }
}
