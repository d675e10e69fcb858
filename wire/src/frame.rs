//! Framing: `u32` big-endian body length, then the body, a MessagePack array
//! `[wire_major, kind, payload, …]`. The length is checked against the cap before a single body
//! byte is buffered, and a body that decodes with bytes left over is an error, so a frame is
//! either exactly one message or rejected.
//!
//! [`FrameDecoder`] is sans-IO: feed it whatever bytes arrived, take out whole frames. With the
//! `stream` feature, [`crate::stream`] runs it over an async byte stream.

use crate::error::WireError;
use crate::limits::FRAME_HEADER_BYTES;
use crate::message::{
    kind, Ack, AgentMessage, Batch, CollectorMessage, Hello, ProbeRequest, Refusal, Renew, Renewed,
    Welcome,
};
use crate::version::WIRE_MAJOR;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// A message that can travel in a frame.
pub trait WireMessage: Sized {
    /// Message kind code; `None` for an unknown kind (never encoded).
    fn kind(&self) -> Option<u8>;
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError>;
    /// Decodes the payload of a known kind, or returns `Ok(None)` when the kind is unknown.
    fn decode_payload(
        kind: u8,
        de: &mut rmp_serde::Deserializer<rmp_serde::decode::ReadReader<&[u8]>>,
    ) -> Result<Option<Self>, WireError>;
    fn unknown(kind: u8) -> Self;
}

pub(crate) fn encode_record<T: Serialize>(
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    rmp_serde::encode::write(out, value).map_err(|e| WireError::Encode {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn decode_record<'a, T: Deserialize<'a>>(
    what: &'static str,
    de: &mut rmp_serde::Deserializer<rmp_serde::decode::ReadReader<&'a [u8]>>,
) -> Result<T, WireError> {
    T::deserialize(de).map_err(|e| WireError::Malformed {
        what,
        reason: e.to_string(),
    })
}

impl WireMessage for AgentMessage {
    fn kind(&self) -> Option<u8> {
        match self {
            AgentMessage::Hello(_) => Some(kind::HELLO),
            AgentMessage::Batch(_) => Some(kind::BATCH),
            AgentMessage::Renew(_) => Some(kind::RENEW),
            AgentMessage::Unknown(_) => None,
        }
    }
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            AgentMessage::Hello(m) => encode_record("hello", m, out),
            AgentMessage::Batch(m) => encode_record("batch", m, out),
            AgentMessage::Renew(m) => encode_record("renew", m, out),
            AgentMessage::Unknown(k) => Err(WireError::Encode {
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
            kind::HELLO => Some(AgentMessage::Hello(decode_record::<Hello>("hello", de)?)),
            kind::BATCH => Some(AgentMessage::Batch(decode_record::<Batch>("batch", de)?)),
            kind::RENEW => Some(AgentMessage::Renew(decode_record::<Renew>("renew", de)?)),
            _ => None,
        })
    }
    fn unknown(kind: u8) -> Self {
        AgentMessage::Unknown(kind)
    }
}

impl WireMessage for CollectorMessage {
    fn kind(&self) -> Option<u8> {
        match self {
            CollectorMessage::Welcome(_) => Some(kind::WELCOME),
            CollectorMessage::Ack(_) => Some(kind::ACK),
            CollectorMessage::Refusal(_) => Some(kind::REFUSAL),
            CollectorMessage::ProbeRequest(_) => Some(kind::PROBE_REQUEST),
            CollectorMessage::Renewed(_) => Some(kind::RENEWED),
            CollectorMessage::Unknown(_) => None,
        }
    }
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            CollectorMessage::Welcome(m) => encode_record("welcome", m, out),
            CollectorMessage::Ack(m) => encode_record("ack", m, out),
            CollectorMessage::Refusal(m) => encode_record("refusal", m, out),
            CollectorMessage::ProbeRequest(m) => encode_record("probe request", m, out),
            CollectorMessage::Renewed(m) => encode_record("renewed", m, out),
            CollectorMessage::Unknown(k) => Err(WireError::Encode {
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
            kind::WELCOME => Some(CollectorMessage::Welcome(decode_record::<Welcome>(
                "welcome", de,
            )?)),
            kind::ACK => Some(CollectorMessage::Ack(decode_record::<Ack>("ack", de)?)),
            kind::REFUSAL => Some(CollectorMessage::Refusal(decode_record::<Refusal>(
                "refusal", de,
            )?)),
            kind::PROBE_REQUEST => {
                Some(CollectorMessage::ProbeRequest(
                    decode_record::<ProbeRequest>("probe request", de)?,
                ))
            }
            kind::RENEWED => Some(CollectorMessage::Renewed(decode_record::<Renewed>(
                "renewed", de,
            )?)),
            _ => None,
        })
    }
    fn unknown(kind: u8) -> Self {
        CollectorMessage::Unknown(kind)
    }
}

/// Encodes one message as a complete frame (header included), refusing bodies over `limit`.
pub fn encode_frame<M: WireMessage>(message: &M, limit: usize) -> Result<Vec<u8>, WireError> {
    let kind = message.kind().ok_or_else(|| WireError::Encode {
        what: "message",
        reason: "unknown kind".into(),
    })?;
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    let encode_err = |e: rmp::encode::ValueWriteError| WireError::Encode {
        what: "envelope",
        reason: e.to_string(),
    };
    rmp::encode::write_array_len(&mut out, 3).map_err(encode_err)?;
    rmp::encode::write_uint(&mut out, u64::from(WIRE_MAJOR)).map_err(encode_err)?;
    rmp::encode::write_uint(&mut out, u64::from(kind)).map_err(encode_err)?;
    message.encode_payload(&mut out)?;
    let body = out.len() - FRAME_HEADER_BYTES;
    if body > limit {
        return Err(WireError::FrameTooLarge { len: body, limit });
    }
    let len = u32::try_from(body).map_err(|_| WireError::FrameTooLarge { len: body, limit })?;
    out[..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads the body length from a frame header, enforcing the cap.
pub fn body_len(header: [u8; FRAME_HEADER_BYTES], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > limit {
        return Err(WireError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one frame body (header already stripped) into a message.
pub fn decode_body<M: WireMessage>(body: &[u8]) -> Result<M, WireError> {
    let malformed = |reason: String| WireError::Malformed {
        what: "envelope",
        reason,
    };
    let mut cursor = body;
    let len = rmp::decode::read_array_len(&mut cursor).map_err(|e| malformed(e.to_string()))?;
    if len < 3 {
        return Err(malformed(format!("{len} elements, expected at least 3")));
    }
    let major: u8 =
        rmp::decode::read_int(&mut cursor).map_err(|e| malformed(format!("major version: {e}")))?;
    if major != WIRE_MAJOR {
        return Err(WireError::VersionMismatch {
            theirs: major,
            ours: WIRE_MAJOR,
        });
    }
    let kind: u8 =
        rmp::decode::read_int(&mut cursor).map_err(|e| malformed(format!("kind: {e}")))?;
    let mut de = rmp_serde::Deserializer::new(cursor);
    let message = match M::decode_payload(kind, &mut de)? {
        Some(m) => m,
        None => {
            IgnoredAny::deserialize(&mut de)
                .map_err(|e| malformed(format!("payload of kind {kind}: {e}")))?;
            M::unknown(kind)
        }
    };
    for _ in 3..len {
        IgnoredAny::deserialize(&mut de)
            .map_err(|e| malformed(format!("trailing element: {e}")))?;
    }
    let left = de.get_ref().len();
    if left != 0 {
        return Err(WireError::TrailingBytes {
            what: "frame body",
            left,
        });
    }
    Ok(message)
}

/// Sans-IO frame splitter with a hard cap on the body size.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    limit: usize,
}

impl FrameDecoder {
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            limit,
        }
    }

    /// Appends bytes as they arrived from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the next whole frame body out, if one has arrived. An error is final for the stream:
    /// the header already said the peer is sending something we will not read.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buffer.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&self.buffer[..FRAME_HEADER_BYTES]);
        let len = body_len(header, self.limit)?;
        if self.buffer.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let frame_end = FRAME_HEADER_BYTES + len;
        let body = if self.buffer.len() == frame_end {
            // The usual case for a reader that reads no further than one frame: hand the buffer
            // over instead of copying it, so an idle stream holds no buffer at all.
            let mut frame = std::mem::take(&mut self.buffer);
            frame.drain(..FRAME_HEADER_BYTES);
            frame
        } else {
            let body = self.buffer[FRAME_HEADER_BYTES..frame_end].to_vec();
            self.buffer.drain(..frame_end);
            body
        };
        Ok(Some(body))
    }

    /// How many more bytes the next frame needs before [`FrameDecoder::next_body`] can return
    /// it: the rest of its header, then, once the header is in and within the cap, the rest of
    /// its body; 0 when a whole frame is already buffered. A reader that never reads more than
    /// this buffers no body byte of a frame whose header is over the cap.
    pub fn wanted(&self) -> Result<usize, WireError> {
        if self.buffer.len() < FRAME_HEADER_BYTES {
            return Ok(FRAME_HEADER_BYTES - self.buffer.len());
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&self.buffer[..FRAME_HEADER_BYTES]);
        let len = body_len(header, self.limit)?;
        Ok((FRAME_HEADER_BYTES + len).saturating_sub(self.buffer.len()))
    }

    /// Why a stream that ended now ended badly: `None` at a frame boundary (a clean end), else
    /// what was cut short.
    pub fn unfinished(&self) -> Option<WireError> {
        let buffered = self.buffer.len();
        if buffered == 0 {
            return None;
        }
        let reason = match self.wanted() {
            Ok(_) if buffered < FRAME_HEADER_BYTES => {
                format!("stream ended inside a header ({buffered} bytes)")
            }
            Ok(wanted) => {
                let body = buffered - FRAME_HEADER_BYTES;
                format!("stream ended after {body} of {} body bytes", body + wanted)
            }
            Err(e) => return Some(e),
        };
        Some(WireError::Malformed {
            what: "frame",
            reason,
        })
    }

    /// The buffer itself, for the framed stream that reads into it in place.
    #[cfg(feature = "stream")]
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }
}
