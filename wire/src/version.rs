//! Protocol versions and the QUIC application protocol name.
//!
//! The major version changes only when old and new peers can no longer understand each other; the
//! minor version counts additions that older peers safely ignore.

pub const WIRE_MAJOR: u8 = 1;
/// 1.1: results carry the session step a failure happened in; the `refused` DNS failure kind.
/// 1.2: results say why they ran (scheduled, confirmation, requested); hellos say whether the
/// agent answers probe requests; the collector's `ProbeRequest`.
/// 1.3: hellos say where the agent's spool numbers next and whether its numbering is new, so an
/// agent that started over continues above the collector's high-water mark (see
/// [`crate::message::numbering_continues_above`]).
/// 1.4: the welcome says the validity of the agent's certificate; the agent's `Renew` and the
/// collector's `Renewed` renew it over the authenticated session.
pub const WIRE_MINOR: u16 = 4;

/// ALPN of an egresswatch session over QUIC; a peer offering anything else is refused by TLS.
pub const ALPN: &[u8] = b"egresswatch/1";

/// ALPN of an enrollment (see [`crate::enroll`]): the only protocol a client without a
/// certificate may speak, and all it can do is present a join token.
pub const ENROLL_ALPN: &[u8] = b"egresswatch-enroll/1";
