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
    #[error("store: {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("certificate authority: {0}")]
    Ca(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("feed: {0}")]
    Feed(String),
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

    /// A store failure: what it was doing, and why (an error, or a message where none exists).
    pub fn store(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CollectorError::Store {
            context: context.into(),
            source: source.into(),
        }
    }
}
