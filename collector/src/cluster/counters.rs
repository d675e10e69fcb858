//! What `/metrics` says of this collector's place among the others: whether it leads, whether
//! the shared database answers, how often the lead changed hands and how much of the feed it
//! read. (How the outbox's deliveries ended is the hub's: [`crate::fleet::FleetCounters`].)

use crate::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Default)]
pub struct ClusterCounters {
    /// 1 while this collector holds the leader's lock.
    pub leader: Gauge,
    /// 1 while the shared database answers.
    pub store_up: Gauge,
    /// Times this collector took the lead.
    pub leads_taken: Counter,
    /// Times it lost it (its lock's session ended).
    pub leads_lost: Counter,
    /// Results read from the feed (every collector's).
    pub feed_results: Counter,
    /// Collectors seen alive in the database.
    pub collectors: Gauge,
}

impl ClusterCounters {
    pub fn register(metrics: &Metrics) -> ClusterCounters {
        ClusterCounters {
            leader: metrics.registered(
                "egresswatch_collector_leader",
                "1 while this collector leads detection and alerting (holds the database lock)",
            ),
            store_up: metrics.registered(
                "egresswatch_store_up",
                "1 while the shared database answers",
            ),
            leads_taken: metrics.registered(
                "egresswatch_leader_acquired",
                "Times this collector took the lead",
            ),
            leads_lost: metrics.registered(
                "egresswatch_leader_lost",
                "Times this collector lost the lead",
            ),
            feed_results: metrics.registered(
                "egresswatch_feed_results",
                "Results read from the shared database's feed (every collector's)",
            ),
            collectors: metrics.registered(
                "egresswatch_cluster_collectors",
                "Collectors seen alive in the shared database",
            ),
        }
    }
}
