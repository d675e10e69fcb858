//! The agent's one error type. Probe failures are *results* (outcomes), not errors; errors are
//! what stops the agent from doing its job: bad config, unusable spool, TLS setup.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    /// A mail-provider presets file (built in, or a user's) that does not parse or validate.
    #[error("presets {origin}: {reason}")]
    Presets { origin: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The spool's filesystem has no room left beyond the spool's reserve.
    #[error("disk full: {0}")]
    SpoolFull(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Wire(#[from] egresswatch_wire::WireError),
}

impl AgentError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}
