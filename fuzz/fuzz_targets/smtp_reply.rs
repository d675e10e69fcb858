//! The agent's SMTP reply parser fed a server's bytes in arbitrary chunks. Properties: the replies
//! (and the first error) do not depend on how the bytes were chunked; while waiting for more, the
//! parser holds at most one line's worth (`MAX_LINE_BYTES`); a reply has at most `MAX_REPLY_LINES`
//! lines, each at most `MAX_LINE_BYTES` characters, one code in 200..=599.
#![no_main]

use egresswatch_agent::probe::smtp::{
    Reply, ReplyError, ReplyParser, MAX_LINE_BYTES, MAX_REPLY_LINES,
};
use libfuzzer_sys::fuzz_target;

/// What a parser made of a byte stream: every reply, then the error that ended it, if any.
type Events = (Vec<Reply>, Option<ReplyError>);

fuzz_target!(|data: &[u8]| {
    // First two bytes: a seed for the chunk sizes (1..=64, varying chunk to chunk).
    if data.len() < 2 {
        return;
    }
    let (seed, stream) = data.split_at(2);
    let mut sizes = u16::from_le_bytes([seed[0], seed[1]]);
    let mut pieces = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        sizes = sizes.rotate_left(5) ^ 0x9e37;
        let n = (usize::from(sizes) % 64 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
    }
    let chunked = feed(&pieces);
    let whole = feed(&[stream]);
    assert_eq!(chunked, whole, "chunking changed what was parsed");
});

fn feed(pieces: &[&[u8]]) -> Events {
    let mut parser = ReplyParser::default();
    let mut replies = Vec::new();
    for piece in pieces {
        let mut input: &[u8] = piece;
        loop {
            match parser.push(input) {
                Ok(Some(reply)) => {
                    check_reply(&reply);
                    replies.push(reply);
                    // Later replies already buffered come out with empty pushes.
                    input = &[];
                }
                Ok(None) => {
                    assert!(
                        parser.leftover() <= MAX_LINE_BYTES,
                        "waiting with {} bytes buffered",
                        parser.leftover()
                    );
                    break;
                }
                Err(e) => return (replies, Some(e)),
            }
        }
    }
    (replies, None)
}

fn check_reply(reply: &Reply) {
    assert!((200..=599).contains(&reply.code), "code {}", reply.code);
    assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_REPLY_LINES);
    for line in &reply.lines {
        // Each raw byte becomes at most one character (invalid UTF-8 turns into U+FFFD).
        assert!(line.chars().count() < MAX_LINE_BYTES);
    }
    let _ = reply.summary();
    let _ = reply.offers("STARTTLS");
    let _ = reply.masked_capability();
}
