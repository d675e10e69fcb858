//! Close codes: the application error code a side puts on a QUIC connection it closes, so the
//! other side can tell a goodbye from a refusal without reading the reason text. Both sides match
//! these names, never the numbers.

/// A clean end: the session is over and nothing is wrong (an agent stopping or reconnecting to
/// say a new hello, a collector answering an agent that finished its stream). Reconnect at will.
pub const NORMAL: u32 = 0;
/// The peer broke the protocol or went over a hard limit (a bad or oversized frame, garbage, a
/// second hello, a batch over the results cap). Nothing of the offending message was stored.
pub const PROTOCOL: u32 = 1;
/// The collector will not take this agent (bad certificate, revoked, wrong version, invalid
/// hello); the reason travels in the close and, when it could be sent, in a refusal message. An
/// agent backs off to its slowest pace instead of retrying at once.
pub const REFUSED: u32 = 2;
/// The collector is shutting down or cannot store right now: nothing is wrong with the agent,
/// which keeps its unacked results and resends them after reconnecting.
pub const SHUTDOWN: u32 = 3;
