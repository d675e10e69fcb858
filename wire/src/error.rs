//! The one error type of the wire crate: everything that can be wrong with bytes or labels.

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
}
