//! The feed of a store one collector has alone (SQLite, memory): the writer's own tail.
//!
//! Whatever the store, the hub learns of results by following the feed of what the store
//! committed ([`super::shared::SharedStore::feed_after`]), so the embedded default runs the very
//! pipeline a cluster runs: it is a cluster of one. PostgreSQL's feed is a table every
//! collector reads; a store one process has alone only needs to hand what it committed to that
//! process's follower, in order. The tail is that queue: the store appends each commit's new
//! results (with the agent's labels, remembered from its hello), the follower reads after its
//! cursor, and what it has read past is dropped — it has one reader, so nothing is kept that
//! nobody will ask for, and nothing is dropped that the reader has not passed. It also carries
//! the other notifications a cluster sends (silences changed) and remembers this collector's
//! heartbeat and sessions, so `/api/collectors` shows the cluster of one.

use super::shared::{
    CollectorRow, FeedBatch, FeedCursor, FeedItem, Leadership, Listener, News, SharedStore,
};
use super::{Store, StoredEvent};
use crate::clock::BatchClock;
use crate::error::CollectorError;
use crate::identity::AgentMeta;
use egresswatch_wire::{Labels, ProbeResult};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Most results the tail holds for a reader that fell behind. A follower reads every quarter
/// second, so only a stalled one gets here; beyond it the oldest leave the feed (they stay
/// stored, and the log counts them) rather than the collector's memory growing
/// without end.
const MAX_BEHIND: usize = 500_000;

/// What one commit stored for one agent, handed to [`Tail::committed`].
pub struct Commit<'a> {
    pub agent_id: &'a str,
    /// The new results, ascending.
    pub results: Vec<ProbeResult>,
    pub clock: BatchClock,
    /// When this collector received them, Unix ms.
    pub received_unix_ms: i64,
}

/// The tail of one store. Shared by the store (the writer) and its listener (the follower).
#[derive(Debug, Default)]
pub struct Tail {
    state: Mutex<State>,
    news_arrived: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The number the last appended result got; a cursor's `row` is the last one read.
    next: i64,
    /// Whether a reader has asked for the head: until then nothing is kept (a store written
    /// without a hub, as the benchmarks do, holds no copy of what it stored).
    reading: bool,
    /// Results that left the feed unread because the reader was too far behind.
    dropped: u64,
    /// (number, item), oldest first: what the follower has not read past yet.
    items: VecDeque<(i64, FeedItem)>,
    /// Each agent's labels, from its latest hello.
    agents: HashMap<String, Arc<AgentMeta>>,
    /// What a listener has not been told yet.
    news: Vec<News>,
    heartbeat: Option<CollectorRow>,
    /// (collector id, its sessions' JSON).
    sessions: Option<(String, String)>,
}

impl Tail {
    pub fn new() -> Arc<Tail> {
        Arc::new(Tail::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers an agent's labels (its hello), for the results it commits later.
    pub fn agent(&self, agent: &AgentMeta) {
        self.state()
            .agents
            .insert(agent.agent_id.clone(), Arc::new(agent.clone()));
    }

    /// Appends what one group of commits stored, in commit order, each commit's results placed
    /// on the collector's clock ([`BatchClock::place`]: the store keeps the agent's own
    /// timestamps, the hub orders by ours), and then wakes the listener once: a group of a
    /// hundred agents' batches is one wake-up for the follower, not a hundred. The results are
    /// taken, not copied: the store has no more use for them. An agent that never said hello to
    /// this store is taken with its id alone (the memory store's tests do that).
    pub fn committed<'a>(&self, commits: impl IntoIterator<Item = Commit<'a>>) {
        let mut state = self.state();
        let mut appended = false;
        for Commit {
            agent_id,
            mut results,
            clock,
            received_unix_ms,
        } in commits
        {
            if results.is_empty() {
                continue;
            }
            if !state.reading {
                state.next += results.len() as i64;
                continue;
            }
            appended = true;
            let clock_trusted = clock.place(&mut results, received_unix_ms);
            let agent = state.agents.get(agent_id).cloned().unwrap_or_else(|| {
                Arc::new(AgentMeta {
                    agent_id: agent_id.to_string(),
                    labels: Labels::default(),
                    agent_version: String::new(),
                })
            });
            for result in results {
                state.next += 1;
                let n = state.next;
                state.items.push_back((
                    n,
                    FeedItem {
                        agent: agent.clone(),
                        result,
                        clock_trusted,
                        received_unix_ms,
                    },
                ));
            }
        }
        if !appended {
            return;
        }
        let over = state.items.len().saturating_sub(MAX_BEHIND);
        if over > 0 {
            state.items.drain(..over);
            state.dropped += over as u64;
            tracing::error!(
                dropped = state.dropped,
                "the hub is behind the store's feed by {MAX_BEHIND} results: the oldest leave the \
                 feed unread (they stay stored; the matrix catches up with newer ones)"
            );
        }
        if !state.news.contains(&News::Results) {
            state.news.push(News::Results);
        }
        drop(state);
        self.news_arrived.notify_all();
    }

    /// Tells the listener something other than results (silences changed).
    pub fn tell(&self, news: News) {
        let mut state = self.state();
        if !state.news.contains(&news) {
            state.news.push(news);
        }
        drop(state);
        self.news_arrived.notify_all();
    }

    /// The end of the tail now; from here on the tail keeps what is appended for the reader.
    pub fn head(&self) -> FeedCursor {
        let mut state = self.state();
        state.reading = true;
        FeedCursor {
            xact: 0,
            row: state.next,
        }
    }

    /// What was appended after `cursor`, at most `limit`, handed over: the tail has one reader,
    /// and what it read it does not read again (what lies at or before `cursor` is dropped too).
    pub fn after(&self, cursor: &FeedCursor, limit: usize) -> FeedBatch {
        let mut state = self.state();
        while state.items.front().is_some_and(|(n, _)| *n <= cursor.row) {
            state.items.pop_front();
        }
        let taken = state.items.len().min(limit);
        let last = match taken {
            0 => cursor.row.max(0),
            n => state.items[n - 1].0,
        };
        let items: Vec<FeedItem> = state.items.drain(..taken).map(|(_, item)| item).collect();
        FeedBatch {
            items,
            next: FeedCursor { xact: 0, row: last },
        }
    }

    /// A subscription to what is appended and told.
    pub fn listen(self: &Arc<Tail>) -> Box<dyn Listener> {
        Box::new(TailListener { tail: self.clone() })
    }

    pub fn heartbeat(&self, row: &CollectorRow) {
        self.state().heartbeat = Some(row.clone());
    }

    /// This collector, when it said it is alive within `fresh_ms` of `now_unix_ms`.
    pub fn collectors(&self, now_unix_ms: i64, fresh_ms: i64) -> Vec<CollectorRow> {
        self.state()
            .heartbeat
            .iter()
            .filter(|row| now_unix_ms - row.last_seen_unix_ms <= fresh_ms)
            .cloned()
            .collect()
    }

    pub fn publish_sessions(&self, collector_id: &str, sessions_json: &str) {
        self.state().sessions = Some((collector_id.to_string(), sessions_json.to_string()));
    }

    pub fn sessions(&self) -> Vec<(String, String)> {
        self.state().sessions.iter().cloned().collect()
    }
}

/// A store one collector has alone: its feed is its [`Tail`], its lease is granted at once
/// ([`super::EventStore::own_lease`]), and only what it reads back from its tables differs per
/// store. Every such store is a [`SharedStore`] — a cluster of one — through this.
pub trait OwnTail: Store {
    fn tail(&self) -> &Arc<Tail>;
    /// See [`SharedStore::results_since`].
    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError>;
    /// See [`SharedStore::events_after`].
    fn events_after(&self, after_id: i64, limit: usize)
        -> Result<Vec<StoredEvent>, CollectorError>;
    /// See [`SharedStore::last_event_id`].
    fn last_event_id(&self) -> Result<i64, CollectorError>;
}

impl<T: OwnTail> SharedStore for T {
    fn feed_head(&self) -> Result<FeedCursor, CollectorError> {
        Ok(self.tail().head())
    }

    fn feed_after(&self, cursor: &FeedCursor, limit: usize) -> Result<FeedBatch, CollectorError> {
        Ok(self.tail().after(cursor, limit))
    }

    fn results_since(
        &self,
        since_unix_ms: i64,
        limit: usize,
    ) -> Result<Vec<FeedItem>, CollectorError> {
        OwnTail::results_since(self, since_unix_ms, limit)
    }

    fn events_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, CollectorError> {
        OwnTail::events_after(self, after_id, limit)
    }

    fn last_event_id(&self) -> Result<i64, CollectorError> {
        OwnTail::last_event_id(self)
    }

    fn try_lead(&self, _collector_id: &str) -> Result<Option<Box<dyn Leadership>>, CollectorError> {
        self.own_lease()
    }

    fn listen(&self) -> Result<Box<dyn Listener>, CollectorError> {
        Ok(self.tail().listen())
    }

    fn notify_results(&self) -> Result<(), CollectorError> {
        // The writer appends to the tail as it commits.
        Ok(())
    }

    fn notify_silences(&self) -> Result<(), CollectorError> {
        self.tail().tell(News::Silences);
        Ok(())
    }

    fn heartbeat(&self, row: &CollectorRow) -> Result<(), CollectorError> {
        self.tail().heartbeat(row);
        Ok(())
    }

    fn collectors(
        &self,
        now_unix_ms: i64,
        fresh_ms: i64,
    ) -> Result<Vec<CollectorRow>, CollectorError> {
        Ok(self.tail().collectors(now_unix_ms, fresh_ms))
    }

    fn ping(&self) -> Result<(), CollectorError> {
        Ok(())
    }

    fn publish_sessions(
        &self,
        collector_id: &str,
        sessions_json: &str,
    ) -> Result<(), CollectorError> {
        self.tail().publish_sessions(collector_id, sessions_json);
        Ok(())
    }

    fn sessions(
        &self,
        _now_unix_ms: i64,
        _fresh_ms: i64,
    ) -> Result<Vec<(String, String)>, CollectorError> {
        Ok(self.tail().sessions())
    }
}

struct TailListener {
    tail: Arc<Tail>,
}

impl Listener for TailListener {
    fn wait(&mut self, timeout: Duration) -> Result<Vec<News>, CollectorError> {
        let state = self.tail.state();
        let (mut state, _) = self
            .tail
            .news_arrived
            .wait_timeout_while(state, timeout, |s| s.news.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        Ok(std::mem::take(&mut state.news))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        agent_id: &str,
        results: Vec<ProbeResult>,
        clock: BatchClock,
        at: i64,
    ) -> [Commit<'_>; 1] {
        [Commit {
            agent_id,
            results,
            clock,
            received_unix_ms: at,
        }]
    }

    fn result(seq: u64) -> ProbeResult {
        ProbeResult {
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn the_reader_gets_each_commit_once_in_order_and_what_it_passed_is_dropped() {
        let tail = Tail::new();
        let start = tail.head();
        tail.agent(&AgentMeta {
            agent_id: "a1".into(),
            labels: Labels::default(),
            agent_version: "t".into(),
        });
        tail.committed(one("a1", vec![result(1), result(2)], true.into(), 10));
        tail.committed(one("a1", vec![result(3)], false.into(), 20));
        let first = tail.after(&start, 2);
        assert_eq!(
            first.items.iter().map(|i| i.result.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        let second = tail.after(&first.next, 10);
        assert_eq!(second.items.len(), 1);
        assert!(!second.items[0].clock_trusted);
        assert_eq!(second.items[0].received_unix_ms, 20);
        let none = tail.after(&second.next, 10);
        assert!(none.items.is_empty());
        assert_eq!(none.next, second.next);
        assert!(tail.state().items.is_empty(), "read past: dropped");
    }

    #[test]
    fn nothing_is_kept_before_a_reader_asks_for_the_head() {
        let tail = Tail::new();
        tail.committed(one("a", vec![result(1), result(2)], true.into(), 1));
        assert!(tail.state().items.is_empty());
        let head = tail.head();
        assert_eq!(head.row, 2);
        tail.committed(one("a", vec![result(3)], true.into(), 2));
        let read = tail.after(&head, 10);
        assert_eq!(read.items.len(), 1);
        assert_eq!(read.items[0].result.seq, 3);
    }

    #[test]
    fn an_unsynchronised_batch_reaches_the_reader_on_the_collectors_clock() {
        let tail = Tail::new();
        let head = tail.head();
        // Measured 5 s before the batch left by a clock an hour behind; received at 10,000,000.
        let sent = 1_000_000;
        let mut r = result(1);
        r.at_unix_ms = sent - 5_000;
        let clock = BatchClock {
            trusted: false,
            sent_unix_ms: sent,
        };
        tail.committed(one("a", vec![r], clock, 10_000_000));
        let read = tail.after(&head, 10);
        assert!(read.items[0].clock_trusted);
        assert_eq!(read.items[0].result.at_unix_ms, 10_000_000 - 5_000);
    }

    #[test]
    fn a_group_of_commits_is_read_in_commit_order_after_one_wake_up() {
        let tail = Tail::new();
        let head = tail.head();
        let mut listener = tail.listen();
        let commit = |agent_id, seqs: &[u64], at| Commit {
            agent_id,
            results: seqs.iter().map(|s| result(*s)).collect(),
            clock: true.into(),
            received_unix_ms: at,
        };
        // The middle request's batch was all duplicates: nothing of it reaches the feed.
        tail.committed([
            commit("a", &[1, 2], 5),
            commit("b", &[], 5),
            commit("c", &[7], 6),
        ]);
        assert_eq!(
            listener.wait(Duration::from_millis(10)).unwrap(),
            vec![News::Results]
        );
        assert!(listener.wait(Duration::from_millis(10)).unwrap().is_empty());
        let read = tail.after(&head, 10);
        let got: Vec<(&str, u64, i64)> = read
            .items
            .iter()
            .map(|i| (i.agent.agent_id.as_str(), i.result.seq, i.received_unix_ms))
            .collect();
        assert_eq!(got, [("a", 1, 5), ("a", 2, 5), ("c", 7, 6)]);
        assert_eq!(read.next.row, 3);
    }

    #[test]
    fn a_listener_wakes_on_a_commit_and_is_told_once() {
        let tail = Tail::new();
        tail.head();
        let mut listener = tail.listen();
        let writer = tail.clone();
        let t =
            std::thread::spawn(move || writer.committed(one("a", vec![result(1)], true.into(), 1)));
        let news = listener.wait(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(news, vec![News::Results]);
        assert!(listener.wait(Duration::from_millis(10)).unwrap().is_empty());
        tail.tell(News::Silences);
        assert_eq!(
            listener.wait(Duration::from_millis(10)).unwrap(),
            vec![News::Silences]
        );
    }
}
