//! The collector's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CollectorError {
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(String),
    #[error("certificate authority: {0}")]
    Ca(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Wire(#[from] egresswatch_wire::WireError),
}

impl CollectorError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CollectorError::Io {
            context: context.into(),
            source,
        }
    }
}
