//! Signing and verifying snapshots, minisign-compatible (Ed25519, the prehashed `ED` form), so
//! anyone can check a published snapshot with `minisign -V -p feed.pub -m snapshot.json`. The
//! collector signs unattended, so its secret key is stored without a password (0600, like the
//! fleet CA's key).
//!
//! [`check`] is the whole acceptance rule for an imported snapshot as a plain function: size,
//! signature, trusted key, format version and replay, each refusal with its reason.

use super::snapshot::{decode, DecodeError, Snapshot};
use crate::error::CollectorError;
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The signature file's name next to a snapshot (minisign's convention).
pub const SIGNATURE_SUFFIX: &str = ".minisig";

fn feed_err(what: impl std::fmt::Display) -> CollectorError {
    CollectorError::Feed(what.to_string())
}

/// Creates a key pair: `<dir>/feed.key` (secret, 0600) and `<dir>/feed.pub` (minisign's
/// public key file). Refuses to overwrite either. Returns the public key's base64 line (what
/// an importer puts in `keys`).
pub fn create_key(dir: &Path) -> Result<(PathBuf, PathBuf, String), CollectorError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| CollectorError::io(format!("creating {}", dir.display()), e))?;
    let (sk_path, pk_path) = (dir.join("feed.key"), dir.join("feed.pub"));
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            return Err(feed_err(format!(
                "{} exists; not overwriting a feed key",
                p.display()
            )));
        }
    }
    let KeyPair { pk, sk } = KeyPair::generate_unencrypted_keypair().map_err(feed_err)?;
    let sk_box = sk
        .to_box(Some("egresswatch feed secret key"))
        .map_err(feed_err)?
        .to_string();
    let pk_box = pk.to_box().map_err(feed_err)?.to_string();
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
            .map_err(|e| CollectorError::io(format!("writing {}", path.display()), e))
    };
    write(&sk_path, &sk_box, 0o600)?;
    write(&pk_path, &pk_box, 0o644)?;
    Ok((sk_path, pk_path, pk.to_base64()))
}

/// A secret key file written by [`create_key`] (or `minisign -G -W`).
pub fn load_secret_key(path: &Path) -> Result<SecretKey, CollectorError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CollectorError::io(format!("reading the feed key {}", path.display()), e))?;
    SecretKeyBox::from_string(&text)
        .and_then(|b| b.into_unencrypted_secret_key())
        .map_err(|e| feed_err(format!("the feed key {}: {e}", path.display())))
}

/// A public key from its base64 line (`RW…`) or a whole minisign `.pub` file's text.
pub fn parse_public_key(text: &str) -> Result<PublicKey, CollectorError> {
    let trimmed = text.trim();
    let parsed = if trimmed.contains('\n') {
        PublicKeyBox::from_string(trimmed).and_then(|b| b.into_public_key())
    } else {
        PublicKey::from_base64(trimmed)
    };
    parsed.map_err(|e| feed_err(format!("not a minisign public key: {e}")))
}

/// The key id minisign prints (16 hex digits, as in `minisign -V`'s output).
pub fn key_id(pk: &PublicKey) -> String {
    // The base64 form is algorithm (2 bytes) ‖ key id (8, little endian) ‖ key (32).
    let raw = pk.to_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&raw[2..10]);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// Signs `bytes`; the trusted comment (signed too, shown by `minisign -V`) names the feed and
/// the snapshot's time.
pub fn sign(sk: &SecretKey, bytes: &[u8], snapshot: &Snapshot) -> Result<String, CollectorError> {
    let trusted = format!(
        "egresswatch feed {} snapshot {} format {}",
        snapshot.feed, snapshot.generated_at, snapshot.version
    );
    let sig = minisign::sign(
        None,
        sk,
        Cursor::new(bytes),
        Some(&trusted),
        Some("egresswatch feed snapshot signature"),
    )
    .map_err(feed_err)?;
    Ok(sig.to_string())
}

/// Why an imported snapshot was refused. The page never shows a refused snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the import's `max_bytes`.
    Oversized { bytes: usize, max: usize },
    /// The signature file is not a minisign signature, or the snapshot is not a snapshot.
    Garbage(String),
    /// Signed by a key the import does not trust (the key id it was signed with).
    UnknownKey(String),
    /// The signature does not match the bytes (tampered, or signed by another key with the
    /// same id).
    BadSignature(String),
    /// A format version this collector does not read.
    UnknownVersion(u64),
    /// Older than the snapshot already accepted from this feed.
    Replayed { generated_at: String, held: String },
}

impl Refusal {
    /// The short name counted in metrics and shown in the import's status.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Oversized { .. } => "oversized",
            Refusal::Garbage(_) => "garbage",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadSignature(_) => "bad_signature",
            Refusal::UnknownVersion(_) => "unknown_version",
            Refusal::Replayed { .. } => "replayed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Oversized { bytes, max } => {
                write!(f, "oversized: {bytes} bytes or more, the limit is {max}")
            }
            Refusal::Garbage(why) => write!(f, "garbage: {why}"),
            Refusal::UnknownKey(id) => {
                write!(f, "unknown key: signed with key {id}, which is not trusted")
            }
            Refusal::BadSignature(why) => write!(f, "bad signature: {why}"),
            Refusal::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            Refusal::Replayed { generated_at, held } => write!(
                f,
                "replayed: snapshot of {generated_at} is older than the one held, of {held}"
            ),
        }
    }
}

/// A snapshot accepted, with the key that signed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub snapshot: Snapshot,
    pub key_id: String,
}

/// Accepts `bytes` signed by `signature` when: it is at most `max_bytes`, the signature parses,
/// was made by one of `trusted` and matches, the snapshot is of a known version, and it is not
/// older than `held_ms` (the accepted snapshot's time; the same one again is accepted).
pub fn check(
    bytes: &[u8],
    signature: &str,
    trusted: &[PublicKey],
    max_bytes: usize,
    held: Option<(i64, &str)>,
) -> Result<Verified, Refusal> {
    if bytes.len() > max_bytes || signature.len() > 4096 {
        return Err(Refusal::Oversized {
            bytes: bytes.len().max(signature.len()),
            max: max_bytes,
        });
    }
    let sig = SignatureBox::from_string(signature)
        .map_err(|e| Refusal::Garbage(format!("the signature is not a minisign signature: {e}")))?;
    let signed_with = {
        let id = sig.keynum();
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&id[..8.min(id.len())]);
        format!("{:016X}", u64::from_le_bytes(raw))
    };
    let Some(pk) = trusted.iter().find(|pk| key_id(pk) == signed_with) else {
        return Err(Refusal::UnknownKey(signed_with));
    };
    minisign::verify(pk, &sig, Cursor::new(bytes), true, false, false)
        .map_err(|e| Refusal::BadSignature(e.to_string()))?;
    let snapshot = decode(bytes).map_err(|e| match e {
        DecodeError::Garbage(why) => Refusal::Garbage(why),
        DecodeError::UnknownVersion(v) => Refusal::UnknownVersion(v),
    })?;
    if let Some((held_ms, held_at)) = held {
        if snapshot.generated_at_ms < held_ms {
            return Err(Refusal::Replayed {
                generated_at: snapshot.generated_at.clone(),
                held: held_at.to_string(),
            });
        }
    }
    Ok(Verified {
        snapshot,
        key_id: signed_with,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::snapshot::{build, encode, BuildParams};

    fn keypair() -> (SecretKey, PublicKey) {
        let KeyPair { pk, sk } = KeyPair::generate_unencrypted_keypair().unwrap();
        (sk, pk)
    }

    fn signed(sk: &SecretKey, at_ms: i64) -> (Vec<u8>, String) {
        let snap = build(
            &[],
            &[],
            &BuildParams {
                feed: "t".into(),
                k: 3,
                from_ms: 0,
                to_ms: at_ms,
            },
        );
        let bytes = encode(&snap);
        let sig = sign(sk, &bytes, &snap).unwrap();
        (bytes, sig)
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (sk, pk) = keypair();
        let (_, other) = keypair();
        let (bytes, sig) = signed(&sk, 5_000);
        let ok = check(&bytes, &sig, std::slice::from_ref(&pk), 1 << 20, None).unwrap();
        assert_eq!(ok.key_id, key_id(&pk));

        let mut tampered = bytes.clone();
        let pos = tampered.iter().position(|b| *b == b't').unwrap();
        tampered[pos] = b'u';
        assert_eq!(
            check(&tampered, &sig, std::slice::from_ref(&pk), 1 << 20, None)
                .unwrap_err()
                .kind(),
            "bad_signature"
        );
        assert_eq!(
            check(&bytes, &sig, &[other], 1 << 20, None)
                .unwrap_err()
                .kind(),
            "unknown_key"
        );
        assert_eq!(
            check(&bytes, "garbage", std::slice::from_ref(&pk), 1 << 20, None)
                .unwrap_err()
                .kind(),
            "garbage"
        );
        assert_eq!(
            check(&bytes, &sig, std::slice::from_ref(&pk), 10, None)
                .unwrap_err()
                .kind(),
            "oversized"
        );
        let refused = check(
            &bytes,
            &sig,
            std::slice::from_ref(&pk),
            1 << 20,
            Some((6_000, "later")),
        )
        .unwrap_err();
        assert_eq!(refused.kind(), "replayed");
        assert!(refused.to_string().contains("older than the one held"));
        // The same snapshot again is not a replay.
        assert!(check(
            &bytes,
            &sig,
            std::slice::from_ref(&pk),
            1 << 20,
            Some((5_000, "same"))
        )
        .is_ok());

        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 9");
        let sig9 = minisign::sign(None, &sk, Cursor::new(newer.as_bytes()), None, None)
            .unwrap()
            .to_string();
        assert_eq!(
            check(
                newer.as_bytes(),
                &sig9,
                std::slice::from_ref(&pk),
                1 << 20,
                None
            )
            .unwrap_err(),
            Refusal::UnknownVersion(9)
        );
        let sig_garbage = minisign::sign(None, &sk, Cursor::new(&b"{}"[..]), None, None)
            .unwrap()
            .to_string();
        assert_eq!(
            check(b"{}", &sig_garbage, &[pk], 1 << 20, None)
                .unwrap_err()
                .kind(),
            "garbage"
        );
    }

    #[test]
    fn public_keys_parse_from_the_line_or_the_file() {
        let (_, pk) = keypair();
        let line = pk.to_base64();
        let file = pk.to_box().unwrap().to_string();
        assert_eq!(key_id(&parse_public_key(&line).unwrap()), key_id(&pk));
        assert_eq!(key_id(&parse_public_key(&file).unwrap()), key_id(&pk));
        assert!(parse_public_key("RWnot-a-key").is_err());
    }
}
