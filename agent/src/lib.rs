//! egresswatch-agent as a library, so the binary stays a thin shell and tests reach the parts.
//!
//! - [`probe`]: the probe engine — one (target, port, family) in, one classified result out.
//! - [`check`]: the one-shot `check` command (table, JSON, verdict).
//! - [`presets`]: mail-provider presets (SMTP host and ports, HTTPS API host, sources).
//! - [`enroll`]: `enroll`, joining the fleet with a token (the key is made here).
//! - [`run`]: the daemon: config, schedule, identity, spool, QUIC uplink.
//!
//! Nothing here knows about the collector's store, matrix or HTTP.

pub mod check;
pub mod enroll;
pub mod error;
pub mod presets;
pub mod probe;
pub mod run;

pub use error::AgentError;
