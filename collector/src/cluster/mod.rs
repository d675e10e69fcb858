//! Every collector is part of a cluster: of one, on a store it has alone (SQLite), or of several
//! on one PostgreSQL database, with no single point of failure. Each collector accepts agents and
//! stores their results; [`follow`] keeps its hub in step with the whole fleet by following the
//! store's feed of stored results, woken by its notifications; the one collector holding the
//! lease runs the detector and delivers alerts from the outbox ([`crate::fleet::outbox`]). A
//! store of its own grants the lease at once and for good; on PostgreSQL the lease is an
//! advisory lock on the leader's own session. When that leader dies its session ends, the lock is
//! free, and another collector takes it within about a second, rebuilds the detector from the
//! last minutes of stored results and goes on with the deliveries still pending.
//!
//! `[cluster]` in the collector's config names this collector and says how much it replays:
//!
//! ```toml
//! [store]
//! kind = "postgres"
//! url = "postgres://egresswatch@db.internal:5432/egresswatch?sslmode=verify-full"
//! password_file = "/etc/egresswatch/pg_password"
//!
//! [cluster]
//! id = "collector-a"        # default: the host name
//! replay_secs = 900          # what a new leader rebuilds the detector from
//! ```

mod counters;
mod follow;
mod sessions;

pub use counters::ClusterCounters;
pub use follow::Follower;
pub use sessions::ClusterSessions;

use crate::fleet::Fleet;
use crate::ingest::registry::SessionRegistry;
use crate::store::shared::SharedStore;
use serde::Deserialize;
use std::sync::Arc;

/// `[cluster]` in the collector's config (its `id` and `replay_secs` matter with several
/// collectors; alone, the collector is named by it in `/api/collectors`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This collector's name among the others (`/api/collectors`, logs); default the host name.
    pub id: Option<String>,
    /// How far back a new leader replays stored results to rebuild the detector, seconds.
    pub replay_secs: u64,
    /// How often this collector says it is alive, seconds.
    pub heartbeat_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: None,
            replay_secs: 900,
            heartbeat_secs: 2,
        }
    }
}

impl ClusterConfig {
    /// The configured id, else the host name, else `collector`.
    pub fn id(&self) -> String {
        if let Some(id) = self.id.as_ref().filter(|id| !id.trim().is_empty()) {
            return id.trim().to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "collector".to_string())
    }
}

/// Where this collector listens, as it tells the others.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub quic: String,
    pub http: String,
}

/// This collector's part in the cluster: the follower thread.
pub struct Cluster {
    follower: Follower,
}

impl Cluster {
    /// A graceful stop: the lead is given up and the follower ends. (The alert deliveries under
    /// way are finished first, by [`Fleet::finish_deliveries`].)
    pub async fn stop(self) {
        let follower = self.follower;
        let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
    }
}

/// Makes `fleet` follow `store`'s feed, connects its fan-out to every collector's sessions
/// (this one's are `local`), and starts the follower thread; [`Cluster::stop`] ends it. The hub's
/// outbox task delivers while the follower holds the lease for it.
pub fn start(
    fleet: Arc<Fleet>,
    store: Arc<dyn SharedStore>,
    local: Arc<SessionRegistry>,
    config: &ClusterConfig,
    endpoints: Endpoints,
    counters: ClusterCounters,
) -> Result<Cluster, crate::CollectorError> {
    let sessions = Arc::new(ClusterSessions::new(local, fleet.lead().clone()));
    fleet.fanout().connect(sessions.clone());
    let follower = follow::Follower::start(
        fleet.clone(),
        store,
        sessions,
        config.clone(),
        config.id(),
        endpoints,
        counters,
    )?;
    Ok(Cluster { follower })
}
