//! The seam between ingest and the fleet hub. Ingest calls these hooks only after the results
//! are durably stored, so an observer never sees a result that could be lost.

use crate::identity::AgentMeta;
use egresswatch_wire::ProbeResult;

/// Reacts to what ingest stored. Implementations must be quick and never block: anything slow
/// (alert delivery) goes to a queue of its own.
pub trait ResultObserver: Send + Sync + 'static {
    /// An agent completed its hello and was welcomed.
    fn agent_connected(&self, agent: &AgentMeta, now_unix_ms: i64);
    /// Newly stored results (duplicates already removed), in sequence order. `clock_trusted` is
    /// false when the agent said its clock was not synchronised.
    fn results_stored(
        &self,
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        now_unix_ms: i64,
    );
    /// The agent's connection ended.
    fn agent_disconnected(&self, agent_id: &str, now_unix_ms: i64);
}

/// An observer that does nothing (for tests and for ingest-only setups).
pub struct NoObserver;

impl ResultObserver for NoObserver {
    fn agent_connected(&self, _: &AgentMeta, _: i64) {}
    fn results_stored(&self, _: &AgentMeta, _: &[ProbeResult], _: bool, _: i64) {}
    fn agent_disconnected(&self, _: &str, _: i64) {}
}
