//! The framed stream (feature `stream`): frames over any async byte stream, such as the two
//! halves of a QUIC stream, as bore's `Delimited` frames a TCP stream. [`FrameReader`] runs a
//! [`FrameDecoder`] and reads no further than the frame in hand, so the cap is checked on the
//! header before a single body byte is buffered; [`FrameWriter`] encodes and writes whole frames.
//! The halves are separate types because a side reads acks in one task while it sends in another.
//!
//! Errors keep their meaning: a bad frame is a [`WireError`] like any other decode error, a
//! stream cut inside a frame is [`WireError::Malformed`], a clean end at a frame boundary is
//! `Ok(None)`, and the transport failing is [`WireError::Io`] carrying the transport's own error.

use crate::error::WireError;
use crate::frame::{decode_body, encode_frame, FrameDecoder, WireMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads frames, one whole frame at a time, off an async byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames whose body is over `limit` bytes are refused from their header.
    pub fn new(inner: R, limit: usize) -> Self {
        FrameReader {
            inner,
            decoder: FrameDecoder::new(limit),
        }
    }

    /// The next frame's body; `Ok(None)` when the stream ended cleanly between frames. An error
    /// is final for the stream.
    pub async fn read_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        loop {
            if let Some(body) = self.decoder.next_body()? {
                return Ok(Some(body));
            }
            let wanted = self.decoder.wanted()?;
            let buffer = self.decoder.buffer_mut();
            buffer.reserve(wanted);
            let read = (&mut self.inner)
                .take(wanted as u64)
                .read_buf(buffer)
                .await
                .map_err(WireError::Io)?;
            if read == 0 {
                return match self.decoder.unfinished() {
                    None => Ok(None),
                    Some(e) => Err(e),
                };
            }
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn read<M: WireMessage>(&mut self) -> Result<Option<M>, WireError> {
        match self.read_body().await? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }

    /// The stream underneath, for what framing does not cover (stopping it, say).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Writes whole frames to an async byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    limit: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Messages whose body would be over `limit` bytes are refused before anything is written.
    pub fn new(inner: W, limit: usize) -> Self {
        FrameWriter { inner, limit }
    }

    /// Encodes `message` as one frame and writes it.
    pub async fn send<M: WireMessage>(&mut self, message: &M) -> Result<(), WireError> {
        let frame = encode_frame(message, self.limit)?;
        self.send_raw(&frame).await
    }

    /// Writes bytes as they are, framed or not (tests send garbage with it).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.inner.write_all(bytes).await.map_err(WireError::Io)
    }

    /// The stream underneath, for what framing does not cover (finishing it, say).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_FRAME_BYTES;
    use crate::message::{Ack, CollectorMessage};

    fn ack(up_to_seq: u64) -> CollectorMessage {
        CollectorMessage::Ack(Ack {
            up_to_seq,
            accepted: 1,
            duplicates: 0,
            discarded: 0,
            reason: String::new(),
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    }

    #[test]
    fn frames_written_are_read_back_and_a_clean_end_is_none() {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(7);
            let mut writer = FrameWriter::new(client, MAX_FRAME_BYTES);
            let mut reader = FrameReader::new(server, MAX_FRAME_BYTES);
            let send = async {
                for seq in 1..=3 {
                    writer.send(&ack(seq)).await.expect("written");
                }
                drop(writer);
            };
            let receive = async {
                let mut got = Vec::new();
                while let Some(m) = reader.read::<CollectorMessage>().await.expect("read") {
                    got.push(m);
                }
                got
            };
            let ((), got) = tokio::join!(send, receive);
            assert_eq!(got, vec![ack(1), ack(2), ack(3)]);
        });
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_is_read() {
        runtime().block_on(async {
            let mut bytes = 17u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 17]);
            let mut reader = FrameReader::new(&bytes[..], 16);
            assert!(matches!(
                reader.read_body().await,
                Err(WireError::FrameTooLarge { len: 17, limit: 16 })
            ));
            assert_eq!(reader.decoder.buffered(), 4, "only the header was read");
            let mut empty = FrameReader::new(&[0u8, 0, 0, 0][..], 16);
            assert!(matches!(
                empty.read_body().await,
                Err(WireError::EmptyFrame)
            ));
        });
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_malformed() {
        runtime().block_on(async {
            let mut header_only = FrameReader::new(&[0u8, 0][..], 16);
            match header_only.read_body().await {
                Err(WireError::Malformed { what, reason }) => {
                    assert_eq!(what, "frame");
                    assert_eq!(reason, "stream ended inside a header (2 bytes)");
                }
                other => panic!("expected a malformed frame, got {other:?}"),
            }
            let mut short_body = FrameReader::new(&[0u8, 0, 0, 5, 1, 2][..], 16);
            match short_body.read_body().await {
                Err(WireError::Malformed { reason, .. }) => {
                    assert_eq!(reason, "stream ended after 2 of 5 body bytes");
                }
                other => panic!("expected a malformed frame, got {other:?}"),
            }
        });
    }

    #[test]
    fn a_body_that_does_not_decode_is_a_wire_error() {
        runtime().block_on(async {
            let mut reader = FrameReader::new(&[0u8, 0, 0, 1, 0xc1][..], 16);
            assert!(matches!(
                reader.read::<CollectorMessage>().await,
                Err(WireError::Malformed { .. })
            ));
        });
    }
}
