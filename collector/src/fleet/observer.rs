//! The seam between ingest and the fleet hub for what is not in the store's feed: agents coming
//! and going. Results reach the hub by the feed alone ([`super::Fleet::observe_feed`]).

use crate::identity::AgentMeta;

/// Reacts to agents' sessions. Implementations must be quick and never block: anything slow
/// (alert delivery) goes to a queue of its own.
pub trait ResultObserver: Send + Sync + 'static {
    /// An agent completed its hello and was welcomed.
    fn agent_connected(&self, agent: &AgentMeta, now_unix_ms: i64);
    /// The agent's connection ended.
    fn agent_disconnected(&self, agent_id: &str, now_unix_ms: i64);
}

/// An observer that does nothing (for tests and for ingest-only setups).
pub struct NoObserver;

impl ResultObserver for NoObserver {
    fn agent_connected(&self, _: &AgentMeta, _: i64) {}
    fn agent_disconnected(&self, _: &str, _: i64) {}
}
