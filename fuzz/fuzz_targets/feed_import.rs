//! The signed feed's import path on arbitrary bytes: what another operator's collector serves
//! (`[[feed.import]]`) is untrusted until its signature checks out. The first byte picks one of
//! three: a snapshot body alone (`snapshot::decode`, as behind a good signature); a signature
//! text and a body checked against a trusted key (`sign::check`: the minisign parser on hostile
//! text); a body signed for real with the trusted key, so that decoding runs behind a good
//! signature. Beyond "no panic": a snapshot that decodes encodes and decodes to itself, and a
//! body signed with the trusted key is never refused for its signature or its key.
#![no_main]

use egresswatch_collector::feed::sign::{check, Refusal};
use egresswatch_collector::feed::snapshot::{decode, encode};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::sync::OnceLock;

/// Large enough for any body the fuzzer makes; the size refusal is checked separately.
const MAX_BYTES: usize = 1 << 20;

fn key_pair() -> &'static minisign::KeyPair {
    static KEYS: OnceLock<minisign::KeyPair> = OnceLock::new();
    KEYS.get_or_init(|| {
        minisign::KeyPair::generate_unencrypted_keypair().expect("a fresh key pair")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let keys = key_pair();
    let trusted = [keys.pk.clone()];
    match selector % 3 {
        0 => {
            if let Ok(snapshot) = decode(rest) {
                let again = decode(&encode(&snapshot)).expect("an encoded snapshot decodes");
                assert_eq!(again, snapshot, "encode/decode is not the identity");
            }
        }
        1 => {
            // The signature first, up to a NUL; the body after it.
            let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let Ok(signature) = std::str::from_utf8(&rest[..split]) else {
                return;
            };
            let body = rest.get(split + 1..).unwrap_or_default();
            let _ = check(body, signature, &trusted, MAX_BYTES, None);
        }
        _ => {
            let signature = minisign::sign(
                None,
                &keys.sk,
                Cursor::new(rest),
                Some("egresswatch feed fuzz"),
                None,
            )
            .expect("signing")
            .to_string();
            match check(rest, &signature, &trusted, MAX_BYTES, None) {
                Ok(verified) => assert_eq!(Ok(&verified.snapshot), decode(rest).as_ref()),
                Err(Refusal::Garbage(_)) | Err(Refusal::UnknownVersion(_)) => {}
                Err(other) => panic!("a good signature refused: {other}"),
            }
        }
    }
});
