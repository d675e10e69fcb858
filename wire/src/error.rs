//! The one error type of the wire crate: everything that can be wrong with bytes or labels, and
//! the transport failing under a framed stream.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("empty frame")]
    EmptyFrame,
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} left {left} bytes unread")]
    TrailingBytes { what: &'static str, left: usize },
    #[error("could not encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("wire major version {theirs} is not supported (this side speaks {ours})")]
    VersionMismatch { theirs: u8, ours: u8 },
    #[error("label {name}: {reason}")]
    BadLabel { name: &'static str, reason: String },
    /// The transport under a framed stream failed (only [`crate::stream`] returns it); the
    /// source is the transport's own error, for a caller that knows its type.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}
