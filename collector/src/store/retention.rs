//! Retention: once an hour each tier loses what is older than its window — raw results after
//! `store.raw_retention_hours`, state intervals and hourly rollups after
//! `store.history_retention_days` (events and the latest result per series stay). Deletes go in
//! bounded batches ([`BATCH_ROWS`] rows a statement) with a pause between, so the store's writer
//! takes its turn between them and ingest is never held behind one long delete.

use super::{Store, StoreConfig};
use crate::clock::now_unix_ms;
use crate::history::Tier;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Most rows one delete statement removes.
pub const BATCH_ROWS: usize = 10_000;
/// The pause between two batches: the writer's group commit gets the lock in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How long each tier is kept; 0 keeps it for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub raw_hours: u32,
    pub history_days: u32,
}

impl RetentionPolicy {
    pub fn of(config: &StoreConfig) -> RetentionPolicy {
        RetentionPolicy {
            raw_hours: config.raw_hours(),
            history_days: config.history_retention_days,
        }
    }

    /// Each tier to prune at `now` with the time before which its rows go.
    pub fn cutoffs(&self, now_unix_ms: i64) -> Vec<(Tier, i64)> {
        let mut out = Vec::new();
        if self.raw_hours > 0 {
            out.push((
                Tier::Raw,
                now_unix_ms - i64::from(self.raw_hours) * 3_600_000,
            ));
        }
        if self.history_days > 0 {
            let before = now_unix_ms - i64::from(self.history_days) * 86_400_000;
            out.push((Tier::Intervals, before));
            out.push((Tier::Hourly, before));
        }
        out
    }
}

/// Prunes every tier once, batch by batch; returns the rows deleted per tier.
pub async fn prune_once(
    store: &Arc<dyn Store>,
    policy: RetentionPolicy,
    now_unix_ms: i64,
) -> Vec<(Tier, usize)> {
    let mut deleted = Vec::new();
    for (tier, before) in policy.cutoffs(now_unix_ms) {
        let mut total = 0;
        loop {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune_tier(tier, before, BATCH_ROWS)).await
            {
                Ok(Ok(n)) => {
                    total += n;
                    if n < BATCH_ROWS {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    error!("retention of {}: {e}", tier.as_str());
                    break;
                }
                Err(e) => {
                    error!("retention of {}: {e}", tier.as_str());
                    break;
                }
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        deleted.push((tier, total));
    }
    deleted
}

/// Prunes now and then every hour until `shutdown` completes; returns at once when every tier
/// is kept for ever.
pub async fn prune_loop(
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    shutdown: impl Future<Output = ()>,
) {
    if policy.cutoffs(0).is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    loop {
        for (tier, n) in prune_once(&store, policy, now_unix_ms()).await {
            if n > 0 {
                info!(deleted = n, "retention: pruned old {}", tier.as_str());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn each_tier_has_its_own_window_and_zero_keeps_it() {
        let p = RetentionPolicy {
            raw_hours: 48,
            history_days: 400,
        };
        let now = 1_000 * 86_400_000;
        assert_eq!(
            p.cutoffs(now),
            vec![
                (Tier::Raw, now - 48 * 3_600_000),
                (Tier::Intervals, now - 400 * 86_400_000),
                (Tier::Hourly, now - 400 * 86_400_000)
            ]
        );
        let keep_history = RetentionPolicy {
            history_days: 0,
            ..p
        };
        assert_eq!(keep_history.cutoffs(now).len(), 1);
        let config = StoreConfig {
            raw_retention_hours: Some(72),
            ..Default::default()
        };
        assert_eq!(RetentionPolicy::of(&config).raw_hours, 72);
        assert_eq!(StoreConfig::default().raw_hours(), 48);
    }

    #[tokio::test]
    async fn prunes_more_than_a_batch_of_every_tier() {
        use crate::store::contract::{meta, result};
        use crate::store::Inspect;
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn Store> = memory.clone();
        store.upsert_agent(&meta("a1"), 0).unwrap();
        let n = BATCH_ROWS as u64 + 5;
        // One result an hour, alternating outcomes: one interval and one rollup row each.
        let results: Vec<_> = (1..=n)
            .map(|s| {
                let mut r = result(s, 25, s as i64 * 3_600_000);
                if s % 2 == 0 {
                    r.outcome = egresswatch_wire::Outcome::Timeout;
                }
                r
            })
            .collect();
        store
            .insert_results("a1", results, true.into(), i64::MAX)
            .unwrap();
        let policy = RetentionPolicy {
            raw_hours: 1,
            history_days: 1,
        };
        let now = (n as i64 + 1) * 3_600_000;
        let deleted = prune_once(&store, policy, now).await;
        // Raw keeps the last hour (the result at `now` − 1 h); the long tiers the last day.
        assert_eq!(deleted[0], (Tier::Raw, n as usize - 1));
        assert_eq!(deleted[1].0, Tier::Intervals);
        assert_eq!(deleted[1].1, n as usize - 24);
        // Series and cell rollups: two rows an hour.
        assert_eq!(deleted[2], (Tier::Hourly, 2 * (n as usize - 24)));
        assert_eq!(memory.count_results("a1").unwrap(), 1);
    }
}
