//! Enrollment by join token: the token an operator hands to a new machine, and the two messages
//! of the enrollment exchange, on their own QUIC application protocol
//! ([`crate::version::ENROLL_ALPN`]) so that the report protocol never sees a client without a
//! certificate:
//!
//! ```text
//! agent (no certificate yet)                       collector
//!   EnrollRequest (token id, secret, CSR, name) ──▶
//!                                              ◀── Enrolled (agent id, certificate, CA, labels)
//!                                              ◀── or Refusal (expired, used up, revoked, ...)
//! ```
//!
//! A token is `ewt1.<id>.<secret>.<ca>`: the id (8 bytes) names the token in the collector's
//! records and logs; the secret (32 bytes) is what proves it, and the collector keeps only its
//! SHA-256; `ca` is the SHA-256 of the fleet CA certificate (DER), so the agent trusts exactly
//! that CA and nothing on first use. Each part is lowercase hex.

use crate::error::WireError;
use crate::frame::{decode_record, encode_record, WireMessage};
use crate::labels::Labels;

/// What every join token starts with (its format version).
pub const TOKEN_PREFIX: &str = "ewt1";
pub const TOKEN_ID_BYTES: usize = 8;
pub const TOKEN_SECRET_BYTES: usize = 32;
pub const FINGERPRINT_BYTES: usize = 32;
/// Largest certificate request accepted (a P-256 request is about 300 bytes).
pub const MAX_CSR_BYTES: usize = 4096;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: [u8; TOKEN_ID_BYTES],
    pub secret: [u8; TOKEN_SECRET_BYTES],
    /// SHA-256 of the fleet CA certificate's DER.
    pub ca_sha256: [u8; FINGERPRINT_BYTES],
}

/// Never prints the secret (a token in a log line is a token given away).
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id_hex())
            .field("ca_sha256", &hex(&self.ca_sha256))
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Parses `ewt1.<id>.<secret>.<ca>`; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<JoinToken, WireError> {
        let bad = |reason: &str| WireError::Malformed {
            what: "join token",
            reason: reason.to_string(),
        };
        let mut parts = text.trim().split('.');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(bad("it does not start with \"ewt1.\""));
        }
        let (Some(id), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it is not four parts separated by dots"));
        };
        Ok(JoinToken {
            id: unhex(id).ok_or_else(|| bad("its id is not 16 hex digits"))?,
            secret: unhex(secret).ok_or_else(|| bad("its secret is not 64 hex digits"))?,
            ca_sha256: unhex(ca).ok_or_else(|| bad("its CA fingerprint is not 64 hex digits"))?,
        })
    }

    /// The token as the operator copies it.
    pub fn to_text(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            hex(&self.id),
            hex(&self.secret),
            hex(&self.ca_sha256)
        )
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes from `2N` hex digits (either case).
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

wire_record! {
    /// The agent's request: the token's id and secret, and a PKCS#10 request for the key it made.
    pub struct EnrollRequest {
        pub token_id: String,
        pub secret: String,
        /// DER of the certificate request; its subject CN is the agent id asked for.
        pub csr_der: Vec<u8>,
    }
    required = 3;
}

wire_record! {
    /// The collector's answer when the token is good: the certificate it issued.
    pub struct Enrolled {
        /// The identity in the certificate (what `ca list` and `ca revoke` name).
        pub agent_id: String,
        pub cert_pem: String,
        /// The fleet CA, whose fingerprint the token pins.
        pub ca_pem: String,
        /// Labels the token carries, for the agent's `[labels]`.
        pub labels: Labels,
    }
    required = 3;
}

/// What the agent sends on an enrollment stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollMessage {
    Request(EnrollRequest),
    Unknown(u8),
}

/// What the collector answers on an enrollment stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollAnswer {
    Enrolled(Enrolled),
    /// The token (or the request) is refused; `reason` says why, for the operator.
    Refused(crate::message::Refusal),
    Unknown(u8),
}

mod kind {
    pub const REQUEST: u8 = 1;
    pub const ENROLLED: u8 = 1;
    pub const REFUSED: u8 = 2;
}

impl WireMessage for EnrollMessage {
    fn kind(&self) -> Option<u8> {
        match self {
            EnrollMessage::Request(_) => Some(kind::REQUEST),
            EnrollMessage::Unknown(_) => None,
        }
    }
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            EnrollMessage::Request(m) => encode_record("enroll request", m, out),
            EnrollMessage::Unknown(k) => Err(WireError::Encode {
                what: "message",
                reason: format!("unknown kind {k}"),
            }),
        }
    }
    fn decode_payload(
        k: u8,
        de: &mut rmp_serde::Deserializer<rmp_serde::decode::ReadReader<&[u8]>>,
    ) -> Result<Option<Self>, WireError> {
        Ok(match k {
            kind::REQUEST => Some(EnrollMessage::Request(decode_record("enroll request", de)?)),
            _ => None,
        })
    }
    fn unknown(kind: u8) -> Self {
        EnrollMessage::Unknown(kind)
    }
}

impl WireMessage for EnrollAnswer {
    fn kind(&self) -> Option<u8> {
        match self {
            EnrollAnswer::Enrolled(_) => Some(kind::ENROLLED),
            EnrollAnswer::Refused(_) => Some(kind::REFUSED),
            EnrollAnswer::Unknown(_) => None,
        }
    }
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            EnrollAnswer::Enrolled(m) => encode_record("enrolled", m, out),
            EnrollAnswer::Refused(m) => encode_record("refusal", m, out),
            EnrollAnswer::Unknown(k) => Err(WireError::Encode {
                what: "message",
                reason: format!("unknown kind {k}"),
            }),
        }
    }
    fn decode_payload(
        k: u8,
        de: &mut rmp_serde::Deserializer<rmp_serde::decode::ReadReader<&[u8]>>,
    ) -> Result<Option<Self>, WireError> {
        Ok(match k {
            kind::ENROLLED => Some(EnrollAnswer::Enrolled(decode_record("enrolled", de)?)),
            kind::REFUSED => Some(EnrollAnswer::Refused(decode_record("refusal", de)?)),
            _ => None,
        })
    }
    fn unknown(kind: u8) -> Self {
        EnrollAnswer::Unknown(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_body, encode_frame};
    use crate::limits::{FRAME_HEADER_BYTES, MAX_FRAME_BYTES};

    #[test]
    fn a_token_round_trips_and_its_debug_form_hides_the_secret() {
        let token = JoinToken {
            id: [0xab; 8],
            secret: [0x5e; 32],
            ca_sha256: [0x01; 32],
        };
        let text = token.to_text();
        assert!(text.starts_with("ewt1.abababababababab."));
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
        assert!(!format!("{token:?}").contains("5e5e"));
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        let good = JoinToken {
            id: [1; 8],
            secret: [2; 32],
            ca_sha256: [3; 32],
        }
        .to_text();
        for (text, says) in [
            ("", "ewt1"),
            ("hello", "ewt1"),
            ("ewt1.00", "four parts"),
            (&format!("{good}.more"), "four parts"),
            (&good.replacen("0101", "zz01", 1), "id"),
            (&good.replacen("0202", "020", 1), "secret"),
            (&good.replacen("0303", "03g3", 1), "CA fingerprint"),
        ] {
            let error = JoinToken::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_messages_travel_in_frames() {
        let request = EnrollMessage::Request(EnrollRequest {
            token_id: "0102".into(),
            secret: "s".into(),
            csr_der: vec![0x30, 0x82, 1, 2],
        });
        let frame = encode_frame(&request, MAX_FRAME_BYTES).unwrap();
        let back: EnrollMessage = decode_body(&frame[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(back, request);
        let answer = EnrollAnswer::Enrolled(Enrolled {
            agent_id: "vm-1".into(),
            cert_pem: "c".into(),
            ca_pem: "a".into(),
            labels: Labels {
                provider: "aws".into(),
                ..Default::default()
            },
        });
        let frame = encode_frame(&answer, MAX_FRAME_BYTES).unwrap();
        let back: EnrollAnswer = decode_body(&frame[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(back, answer);
    }
}
