//! One agent's session, after the QUIC handshake: identity from the certificate, hello, then
//! batches answered by acks — each ack sent only after its results are durable (see
//! DESIGN.md and `egresswatch_wire::message` for the message flow).
//!
//! Every way a session can end is named: a clean goodbye, a refusal (with the reason sent to the
//! agent), a protocol error (bad frame, garbage: logged, connection closed with code 1), or the
//! transport going away, or the agent's certificate being revoked while it is connected. None
//! of them affects any other agent.

use super::revocation::RevokedSerials;
use super::{AbortOnDrop, IngestContext};
use crate::ca::registry::normalise_serial;
use crate::events::now_unix_ms;
use crate::identity::AgentMeta;
use crate::limits::{Limit, LimitCounters};
use egresswatch_wire::frame::{body_len, decode_body};
use egresswatch_wire::limits::FRAME_HEADER_BYTES;
use egresswatch_wire::version::{WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{
    encode_frame, Ack, AgentMessage, Batch, ClockQuality, CollectorMessage, Refusal, Welcome,
    WireError,
};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

pub const CLOSE_NORMAL: quinn::VarInt = quinn::VarInt::from_u32(0);
pub const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(1);
pub const CLOSE_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(2);
pub const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(3);

/// How long an agent has to open its stream and say hello.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

enum End {
    /// The agent finished its stream.
    Clean,
    /// We refused it and told it why; `kind` names the reason in `/metrics`.
    Refused { kind: &'static str, reason: String },
    /// Its certificate was revoked while it was connected.
    Revoked,
    /// It broke the protocol.
    Protocol(String),
    /// It went over a limit that ends the session (counted when it happened).
    OverLimit(String),
    /// The connection went away under us (idle timeout, agent gone, shutdown).
    Transport(String),
    /// We could not store: close without acking, the agent resends later.
    Unavailable(String),
}

/// What a session closes with when the agent's certificate is revoked; the agent logs it as
/// "rejected by the collector: …".
pub const REVOKED_REASON: &str = "this agent's certificate has been revoked by the collector's CA";

/// Runs one connection to its end. `revoked` follows the CA's revocation list: the session ends
/// as soon as it lists this agent's certificate.
pub async fn run(
    connection: quinn::Connection,
    context: Arc<IngestContext>,
    mut revoked: tokio::sync::watch::Receiver<RevokedSerials>,
) {
    let (agent_id, serial) = match identity(&connection) {
        Ok(id) => id,
        Err(reason) => {
            context.counters.refused("bad_certificate");
            warn!("closing: {reason}");
            connection.close(CLOSE_REFUSED, reason.as_bytes());
            return;
        }
    };
    tracing::Span::current().record("id", agent_id.as_str());
    // The handshake checked the list the TLS configuration was built with; one revoked since
    // (and not yet swapped in) is caught here.
    if revoked.borrow_and_update().contains(&serial) {
        context.counters.refused("revoked");
        warn!("refused: {REVOKED_REASON}");
        connection.close(CLOSE_REFUSED, REVOKED_REASON.as_bytes());
        return;
    }
    context.counters.sessions.inc();
    let end = tokio::select! {
        end = serve(&connection, &agent_id, &context) => end,
        () = until_revoked(&serial, &mut revoked) => End::Revoked,
    };
    match &end {
        End::Clean => {
            debug!("session ended");
            connection.close(CLOSE_NORMAL, b"bye");
        }
        End::Refused { kind, reason } => {
            context.counters.refused(kind);
            warn!("refused: {reason}");
            // The refusal frame is on its way; give the agent a moment to read it and close.
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            connection.close(CLOSE_REFUSED, truncate(reason).as_bytes());
        }
        End::Protocol(reason) => {
            context.counters.decode_errors.inc();
            warn!("closing on protocol error: {reason}");
            connection.close(CLOSE_PROTOCOL, truncate(reason).as_bytes());
        }
        End::Revoked => {
            // A batch being stored when this fires is stored (the blocking insert runs on);
            // only its ack is not sent.
            context.counters.refused("revoked");
            warn!("closing a live session: {REVOKED_REASON}");
            connection.close(CLOSE_REFUSED, REVOKED_REASON.as_bytes());
        }
        End::OverLimit(reason) => {
            // Already counted and (rate-limited) logged where the limit was hit.
            debug!("closing over a limit: {reason}");
            connection.close(CLOSE_PROTOCOL, truncate(reason).as_bytes());
        }
        End::Transport(reason) => info!("connection ended: {reason}"),
        End::Unavailable(reason) => {
            warn!("closing, results not stored: {reason}");
            connection.close(CLOSE_SHUTDOWN, b"store unavailable, resend later");
        }
    }
    context
        .observer
        .agent_disconnected(&agent_id, now_unix_ms());
}

fn truncate(reason: &str) -> String {
    egresswatch_wire::result::truncate_detail(reason, 200)
}

/// Resolves once `revoked` lists `serial`; never if the list's sender is gone.
async fn until_revoked(serial: &[u8], revoked: &mut tokio::sync::watch::Receiver<RevokedSerials>) {
    loop {
        if revoked.changed().await.is_err() {
            return std::future::pending().await;
        }
        if revoked.borrow_and_update().contains(serial) {
            return;
        }
    }
}

/// The agent id from the verified client certificate's subject CN, and its serial number.
fn identity(connection: &quinn::Connection) -> Result<(String, Vec<u8>), String> {
    let certs = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "no client certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "empty client certificate chain".to_string())?;
    let id = crate::ca::agent_id_from_cert(leaf).map_err(|e| e.to_string())?;
    let serial = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| normalise_serial(cert.raw_serial()))
        .map_err(|e| format!("client certificate: {e}"))?;
    Ok((id, serial))
}

async fn serve(connection: &quinn::Connection, agent_id: &str, context: &IngestContext) -> End {
    let (mut send, mut recv) =
        match tokio::time::timeout(HELLO_DEADLINE, connection.accept_bi()).await {
            Err(_) => return End::Protocol("no stream opened within 10 s".into()),
            Ok(Err(e)) => return End::Transport(e.to_string()),
            Ok(Ok(streams)) => streams,
        };
    // The protocol has one stream; others an agent opens are reset and counted, so they cannot
    // hold buffers (quinn caps how many may be open at once: max_streams_per_connection).
    let _extra_streams = AbortOnDrop(tokio::spawn(reset_extra_streams(
        connection.clone(),
        context.limits.clone(),
    )));
    let first = match tokio::time::timeout(
        HELLO_DEADLINE,
        read_message(&mut recv, context.max_frame_bytes),
    )
    .await
    {
        Err(_) => return End::Protocol("no hello within 10 s".into()),
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return End::Clean,
        Ok(Err(ReadFailure::Wire(WireError::VersionMismatch { theirs, ours }))) => {
            let reason = format!("wire major version {theirs} is not supported; this collector speaks {ours}: upgrade the agent or the collector");
            refuse(&mut send, &reason, 0).await;
            return End::Refused {
                kind: "bad_version",
                reason,
            };
        }
        Ok(Err(e)) => return e.into_end(context),
    };
    let hello = match first {
        AgentMessage::Hello(h) => h,
        other => return End::Protocol(format!("expected a hello, got {}", kind_name(&other))),
    };
    if hello.wire_major != WIRE_MAJOR {
        let reason = format!(
            "wire major version {} is not supported; this collector speaks {WIRE_MAJOR}: upgrade the agent or the collector",
            hello.wire_major
        );
        refuse(&mut send, &reason, 0).await;
        return End::Refused {
            kind: "bad_version",
            reason,
        };
    }
    if let Err(e) = hello.check_bounds() {
        let reason = e.to_string();
        context
            .limits
            .exceeded(Limit::Hello, 1, || format!("agent {agent_id}: {reason}"));
        refuse(&mut send, &reason, 0).await;
        return End::Refused {
            kind: "bad_hello",
            reason,
        };
    }
    let labels = match hello.labels.clone().validated() {
        Ok(l) => l,
        Err(e) => {
            let reason = format!("invalid labels: {e}");
            context
                .limits
                .exceeded(Limit::Labels, 1, || format!("agent {agent_id}: {reason}"));
            refuse(&mut send, &reason, 0).await;
            return End::Refused {
                kind: "bad_labels",
                reason,
            };
        }
    };
    let agent = AgentMeta {
        agent_id: agent_id.to_string(),
        labels,
        agent_version: hello.agent_version.clone(),
    };
    let store = context.store.clone();
    let upsert = {
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || store.upsert_agent(&agent, now_unix_ms())).await
    };
    let mut high_water = match upsert {
        Ok(Ok(mark)) => mark,
        Ok(Err(e)) => return End::Unavailable(e.to_string()),
        Err(e) => return End::Unavailable(e.to_string()),
    };
    if !hello.status.is_empty() {
        warn!(status = %hello.status, "agent reports trouble");
    }
    info!(version = %agent.agent_version, provider = %agent.labels.provider, account = %agent.labels.account, acked = high_water, "agent connected");
    let welcome = CollectorMessage::Welcome(Welcome {
        wire_major: WIRE_MAJOR,
        wire_minor: WIRE_MINOR,
        collector_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_id: agent_id.to_string(),
        acked_seq: high_water,
    });
    if let Err(end) = write_message(&mut send, &welcome).await {
        return end;
    }
    context.observer.agent_connected(&agent, now_unix_ms());
    loop {
        let message = match read_message(&mut recv, context.max_frame_bytes).await {
            Ok(Some(m)) => m,
            Ok(None) => return End::Clean,
            Err(e) => return e.into_end(context),
        };
        match message {
            AgentMessage::Batch(batch) => {
                let ack = match handle_batch(&agent, batch, &mut high_water, context).await {
                    Ok(ack) => ack,
                    Err(end) => return end,
                };
                if let Err(end) = write_message(&mut send, &CollectorMessage::Ack(ack)).await {
                    return end;
                }
            }
            AgentMessage::Hello(_) => {
                return End::Protocol("a second hello on the same session".into())
            }
            // A newer agent's message we do not know: skipped, the session goes on.
            AgentMessage::Unknown(kind) => debug!(kind, "ignoring a message of unknown kind"),
        }
    }
}

async fn handle_batch(
    agent: &AgentMeta,
    batch: Batch,
    high_water: &mut u64,
    context: &IngestContext,
) -> Result<Ack, End> {
    context.counters.batches.inc();
    let count = batch.results.len() as u32;
    if batch.results.len() > context.max_batch_results {
        let reason = format!(
            "a batch of {count} results is over max_batch_results ({})",
            context.max_batch_results
        );
        context.limits.exceeded(Limit::BatchResults, 1, || {
            format!("agent {}: {reason}", agent.agent_id)
        });
        return Err(End::OverLimit(reason));
    }
    // Over its rate, an agent is slowed, not cut: this batch waits (and with it the reading of
    // the next one, so flow control holds the agent back); its results are stored all the same.
    let wait = context
        .rate
        .take(&agent.agent_id, count, std::time::Instant::now());
    if !wait.is_zero() {
        context.limits.exceeded(Limit::ResultsPerSecond, 1, || {
            format!(
                "agent {} is over max_results_per_sec: its batch of {count} waits {} ms",
                agent.agent_id,
                wait.as_millis()
            )
        });
        tokio::time::sleep(wait).await;
    }
    let results = match batch.unpack() {
        Ok(r) => r,
        Err(e) => {
            // Accepted off the wire but unusable: said so in the ack, never a silent success.
            context.counters.decode_errors.inc();
            warn!("discarding a batch of {count}: {e}");
            return Ok(Ack {
                up_to_seq: *high_water,
                accepted: 0,
                duplicates: 0,
                discarded: count,
                reason: e.to_string(),
            });
        }
    };
    let clock_trusted = batch.clock != ClockQuality::Unsynchronised;
    let store = context.store.clone();
    let agent_id = agent.agent_id.clone();
    let now = now_unix_ms();
    let inserted = tokio::task::spawn_blocking(move || {
        store.insert_results(&agent_id, results, clock_trusted, now)
    })
    .await;
    let (report, fresh) = match inserted {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(End::Unavailable(e.to_string())),
        Err(e) => return Err(End::Unavailable(e.to_string())),
    };
    context.counters.results.inc_by(u64::from(report.accepted));
    context
        .counters
        .duplicates
        .inc_by(u64::from(report.duplicates));
    // A batch resent after a lost ack carries the same drop note: count a note once, with the
    // batch that first stored results past it.
    let drops_are_news = batch.first_seq > *high_water;
    *high_water = report.high_water;
    if !fresh.is_empty() {
        context
            .observer
            .results_stored(agent, &fresh, clock_trusted, now);
    }
    let reason = if batch.dropped_before > 0 && drops_are_news {
        context
            .limits
            .exceeded(Limit::AgentSpool, batch.dropped_before, || {
                format!(
                    "agent {}'s spool dropped {} results (spool.max_bytes)",
                    agent.agent_id, batch.dropped_before
                )
            });
        warn!(
            dropped = batch.dropped_before,
            "the agent's spool dropped results before seq {}", batch.first_seq
        );
        format!(
            "noted: {} results dropped by the agent's spool before seq {}",
            batch.dropped_before, batch.first_seq
        )
    } else if batch.dropped_before > 0 {
        format!(
            "already noted: {} results dropped by the agent's spool before seq {}",
            batch.dropped_before, batch.first_seq
        )
    } else {
        String::new()
    };
    Ok(Ack {
        up_to_seq: report.high_water,
        accepted: report.accepted,
        duplicates: report.duplicates,
        discarded: 0,
        reason,
    })
}

async fn refuse(send: &mut quinn::SendStream, reason: &str, retry_after_s: u32) {
    let refusal = CollectorMessage::Refusal(Refusal {
        reason: reason.to_string(),
        retry_after_s,
    });
    let _ = write_message(send, &refusal).await;
    let _ = send.finish();
}

enum ReadFailure {
    Wire(WireError),
    Transport(String),
}

impl ReadFailure {
    fn into_end(self, context: &IngestContext) -> End {
        match self {
            ReadFailure::Wire(e @ WireError::FrameTooLarge { .. }) => {
                let reason = e.to_string();
                // Still a frame that failed to decode, as /metrics always counted it.
                context.counters.decode_errors.inc();
                context
                    .limits
                    .exceeded(Limit::FrameBytes, 1, || reason.clone());
                End::OverLimit(reason)
            }
            ReadFailure::Wire(e) => End::Protocol(e.to_string()),
            ReadFailure::Transport(e) => End::Transport(e),
        }
    }
}

/// Reads one frame and decodes it. `Ok(None)` when the agent finished its stream cleanly.
async fn read_message(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<AgentMessage>, ReadFailure> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadFailure::Wire(WireError::Malformed {
                what: "frame",
                reason: format!("stream ended inside a header ({n} bytes)"),
            }))
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(ReadFailure::Transport(read_error(e)))
        }
    }
    // The cap is checked before a single body byte is buffered.
    let len = body_len(header, limit).map_err(ReadFailure::Wire)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadFailure::Wire(WireError::Malformed {
                what: "frame",
                reason: format!("stream ended after {n} of {len} body bytes"),
            }))
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(ReadFailure::Transport(read_error(e)))
        }
    }
    decode_body::<AgentMessage>(&body)
        .map(Some)
        .map_err(ReadFailure::Wire)
}

/// A read error with its cause: quinn's "connection lost" alone does not say why.
fn read_error(e: quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(cause) => format!("connection lost: {cause}"),
        other => other.to_string(),
    }
}

async fn write_message(
    send: &mut quinn::SendStream,
    message: &CollectorMessage,
) -> Result<(), End> {
    let frame = encode_frame(message, egresswatch_wire::limits::MAX_FRAME_BYTES)
        .map_err(|e| End::Protocol(e.to_string()))?;
    send.write_all(&frame)
        .await
        .map_err(|e| End::Transport(e.to_string()))
}

/// Resets every stream an agent opens beyond its report stream, counting each.
async fn reset_extra_streams(connection: quinn::Connection, limits: LimitCounters) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        limits.exceeded(Limit::Streams, 1, || {
            "an agent opened a second stream (only one is part of the protocol): reset".into()
        });
        let _ = recv.stop(CLOSE_PROTOCOL);
        let _ = send.reset(CLOSE_PROTOCOL);
    }
}

fn kind_name(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Batch(_) => "batch",
        AgentMessage::Unknown(_) => "an unknown message",
    }
}
