//! The egresswatch wire: everything that travels between an agent and the collector, and nothing
//! that moves it. A reader learns the protocol here; the agent and the collector only add I/O.
//!
//! - [`outcome`]: the outcome taxonomy every probe ends in, with the probe level and address family.
//! - [`result`]: one probe's result with its phase timings, as the agent produced it.
//! - [`message`]: the messages of a session (hello, welcome, batch, ack, refusal, probe request).
//! - [`enroll`]: the join token and the enrollment exchange (its own ALPN).
//! - [`frame`]: length-prefixed framing with a hard cap, encode and a sans-IO decoder.
//! - [`close`]: the codes a side closes a connection with, and what each tells the other side.
//! - [`labels`]: validation of the identity labels an agent claims (untrusted input).
//! - [`limits`] and [`version`]: the numbers both sides must agree on.
//!
//! One exception to "nothing that moves it", behind the optional `stream` feature: `stream`, the
//! framed stream over any tokio `AsyncRead`/`AsyncWrite` (a QUIC stream's halves), so that the
//! agent, the collector and the test client read and write frames with one piece of code instead
//! of one each. It adds no protocol: it runs [`FrameDecoder`] and [`encode_frame`] over the bytes.
//!
//! Evolution rule: records are MessagePack arrays; fields are only ever added at the end, with a
//! default; a decoder fills missing trailing fields with their default and skips trailing fields it
//! does not know (see [`record`]). A change that cannot follow that rule bumps [`version::WIRE_MAJOR`].

#[macro_use]
pub mod record;
pub mod close;
pub mod enroll;
pub mod error;
pub mod frame;
pub mod labels;
pub mod limits;
pub mod message;
pub mod outcome;
pub mod result;
#[cfg(feature = "stream")]
pub mod stream;
pub mod version;

pub use error::WireError;
pub use frame::{encode_frame, FrameDecoder};
pub use labels::Labels;
pub use message::{
    Ack, AgentMessage, Batch, ClockQuality, CollectorMessage, CompactResult, Hello, ProbeRequest,
    Refusal, Renew, Renewed, SeriesKey, TargetSpec, Welcome,
};
pub use outcome::{DnsFailure, Family, Level, Outcome, PortState, ProbeCause, SessionStep};
pub use result::{IcmpReport, PhaseTimings, ProbeResult};
