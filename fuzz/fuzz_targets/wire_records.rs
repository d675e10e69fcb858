//! Every wire record decoded straight from MessagePack (no envelope), as a peer or the agent's
//! spool (`rmp_serde::from_slice::<ProbeResult>`) decodes it, plus the label validators on
//! arbitrary text. The first byte picks what the rest is. A record that decodes must re-encode and
//! decode to the same value; validated labels are within the byte limit and control-free.
#![no_main]

use egresswatch_wire::labels::{validate_agent_id, validate_label};
use egresswatch_wire::limits::MAX_LABEL_BYTES;
use egresswatch_wire::{Ack, Batch, Hello, Labels, ProbeResult, Refusal, Welcome};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => {
            if let Some(hello) = round_trip::<Hello>(rest) {
                let _ = hello.check_bounds();
                check_labels(hello.labels);
            }
        }
        1 => {
            if let Some(batch) = round_trip::<Batch>(rest) {
                if let Ok(results) = batch.unpack() {
                    assert_eq!(results.len(), batch.results.len());
                    // What unpacks must pack back into the same results.
                    if let Ok(repacked) = Batch::pack(&results, batch.clock, batch.dropped_before) {
                        assert_eq!(
                            format!("{:?}", repacked.unpack().expect("a packed batch unpacks")),
                            format!("{results:?}")
                        );
                    }
                }
            }
        }
        2 => {
            round_trip::<Ack>(rest);
        }
        3 => {
            round_trip::<Welcome>(rest);
        }
        4 => {
            round_trip::<Refusal>(rest);
        }
        5 => {
            round_trip::<ProbeResult>(rest);
        }
        6 => {
            if let Some(labels) = round_trip::<Labels>(rest) {
                check_labels(labels);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(value) = validate_label("fuzz", &text) {
                assert!(value.len() <= MAX_LABEL_BYTES);
                assert!(!value.chars().any(char::is_control));
                assert_eq!(value, value.trim());
            }
            if validate_agent_id(&text).is_ok() {
                assert!(!text.is_empty() && text.len() <= 64);
                assert!(text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')));
                assert!(!text.starts_with(['.', '-']));
            }
        }
    }
});

fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Debug,
{
    let value: T = rmp_serde::from_slice(bytes).ok()?;
    let encoded = rmp_serde::to_vec(&value).expect("a decoded record re-encodes");
    let again: T = rmp_serde::from_slice(&encoded).expect("a re-encoded record decodes");
    assert_eq!(format!("{value:?}"), format!("{again:?}"));
    Some(value)
}

fn check_labels(labels: Labels) {
    if let Ok(valid) = labels.validated() {
        for value in [
            &valid.provider,
            &valid.account,
            &valid.region,
            &valid.instance,
        ] {
            assert!(value.len() <= MAX_LABEL_BYTES);
            assert!(!value.chars().any(char::is_control));
        }
    }
}
