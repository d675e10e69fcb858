//! Hard limits both sides enforce before they decode anything. Each is the default; the
//! collector may lower them by configuration, never raise them beyond what an agent can send.

/// Largest frame body accepted, in bytes (length prefix excluded).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Most results one batch may carry.
pub const MAX_BATCH_RESULTS: usize = 4096;
/// Most distinct series one batch's table may carry.
pub const MAX_BATCH_SERIES: usize = 4096;
/// Longest identity label value, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Longest free-text detail kept per result, in bytes.
pub const MAX_DETAIL_BYTES: usize = 512;
/// Longest target name, in bytes (a DNS name is at most 253).
pub const MAX_TARGET_BYTES: usize = 253;
/// Most targets one hello may announce.
pub const MAX_HELLO_TARGETS: usize = 1024;
/// Length of the frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
