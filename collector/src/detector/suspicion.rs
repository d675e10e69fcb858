//! The detector's call for evidence now. When a live result departs from its series' settled
//! state, waiting for the schedule to confirm it costs intervals; instead the detector names the
//! series as suspect — once per departure, when its sequential test starts (a scheduled or
//! requested result; never a confirmation, nor while the agent's control port fails) — the hub
//! asks other agents that probe the same destination to probe it at once (`crate::fanout`), and
//! their answers come back as ordinary results marked `requested`.
//! The agent that saw the departure re-probes by itself (`confirmation` results), so it is not
//! asked.

use super::PortState;
use crate::identity::SeriesKey;

/// One series whose latest live result disagrees with its settled state.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspicion {
    pub key: SeriesKey,
    /// The suspect agent's labels, so that the fan-out can find its siblings.
    pub provider: String,
    pub account: String,
    /// What the series had settled on, and what the departing result says.
    pub settled: PortState,
    pub seen: PortState,
    /// When the departing result was measured.
    pub at_unix_ms: i64,
}
