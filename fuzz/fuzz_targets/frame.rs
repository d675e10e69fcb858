//! The frame reader as the collector and the agent run it: arbitrary bytes arrive in arbitrary
//! chunks into a [`FrameDecoder`], and every whole body is decoded both as an agent message and as
//! a collector message, and as either side's enrollment message (with a join token parsed from
//! the same bytes). A body that decodes must re-encode and decode to the same value, the
//! decoder never buffers more than one header plus one capped body beyond the newest chunk, and a
//! decoded hello's labels, once validated, are bounded and control-free.
#![no_main]

use egresswatch_wire::frame::decode_body;
use egresswatch_wire::limits::{FRAME_HEADER_BYTES, MAX_LABEL_BYTES};
use egresswatch_wire::{encode_frame, AgentMessage, CollectorMessage, FrameDecoder};
use libfuzzer_sys::fuzz_target;

/// A small cap so that the fuzzer reaches "too large" quickly; the logic is the same as at 1 MiB.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size (1..=256) with which the rest arrives.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut decoder = FrameDecoder::new(LIMIT);
    'stream: for piece in rest.chunks(chunk) {
        let before = decoder.buffered();
        decoder.push(piece);
        assert_eq!(decoder.buffered(), before + piece.len());
        loop {
            match decoder.next_body() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= LIMIT);
                    check_agent(&body);
                    check_collector(&body);
                    check_enrollment(&body);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
        // Whatever is still buffered is less than one whole frame.
        assert!(decoder.buffered() < FRAME_HEADER_BYTES + LIMIT);
    }
});

fn check_agent(body: &[u8]) {
    let Ok(message) = decode_body::<AgentMessage>(body) else {
        return;
    };
    match &message {
        AgentMessage::Hello(hello) => {
            let _ = hello.check_bounds();
            if let Ok(labels) = hello.labels.clone().validated() {
                for value in [
                    &labels.provider,
                    &labels.account,
                    &labels.region,
                    &labels.instance,
                ] {
                    assert!(value.len() <= MAX_LABEL_BYTES);
                    assert!(!value.chars().any(char::is_control));
                }
            }
        }
        AgentMessage::Batch(batch) => {
            if let Ok(results) = batch.unpack() {
                assert_eq!(results.len(), batch.results.len());
                for (i, r) in results.iter().enumerate() {
                    assert_eq!(r.seq, batch.first_seq + i as u64);
                }
            }
        }
        AgentMessage::Renew(_) => {}
        AgentMessage::Unknown(_) => return,
    }
    let frame = encode_frame(&message, usize::MAX).expect("a decoded message re-encodes");
    let again = decode_body::<AgentMessage>(&frame[FRAME_HEADER_BYTES..])
        .expect("a re-encoded message decodes");
    // Debug text rather than PartialEq: the same value, and robust to any float NaN.
    assert_eq!(format!("{message:?}"), format!("{again:?}"));
}

fn check_collector(body: &[u8]) {
    let Ok(message) = decode_body::<CollectorMessage>(body) else {
        return;
    };
    if matches!(message, CollectorMessage::Unknown(_)) {
        return;
    }
    let frame = encode_frame(&message, usize::MAX).expect("a decoded message re-encodes");
    let again = decode_body::<CollectorMessage>(&frame[FRAME_HEADER_BYTES..])
        .expect("a re-encoded message decodes");
    assert_eq!(format!("{message:?}"), format!("{again:?}"));
}

fn check_enrollment(body: &[u8]) {
    use egresswatch_wire::enroll::{EnrollAnswer, EnrollMessage, JoinToken};
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(token) = JoinToken::parse(text) {
            assert_eq!(JoinToken::parse(&token.to_text()).ok(), Some(token));
        }
    }
    if let Ok(message) = decode_body::<EnrollMessage>(body) {
        if !matches!(message, EnrollMessage::Unknown(_)) {
            let frame = encode_frame(&message, usize::MAX).expect("a decoded message re-encodes");
            let again = decode_body::<EnrollMessage>(&frame[FRAME_HEADER_BYTES..])
                .expect("a re-encoded message decodes");
            assert_eq!(message, again);
        }
    }
    if let Ok(answer) = decode_body::<EnrollAnswer>(body) {
        if !matches!(answer, EnrollAnswer::Unknown(_)) {
            let frame = encode_frame(&answer, usize::MAX).expect("a decoded answer re-encodes");
            let again = decode_body::<EnrollAnswer>(&frame[FRAME_HEADER_BYTES..])
                .expect("a re-encoded answer decodes");
            assert_eq!(answer, again);
        }
    }
}
