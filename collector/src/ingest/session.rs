//! One agent's session, after the QUIC handshake: identity from the certificate, hello, then
//! batches answered by acks — each ack sent only after its results are durable (see
//! docs/design.md and `egresswatch_wire::message` for the message flow).
//!
//! This is the quinn shell: it reads frames off the report stream (the wire's framed stream),
//! hands each to the sans-IO [`protocol::Session`], and carries out what that decides — calling
//! the store, counting, sending the welcome, refusal or ack, closing with the decided code. The
//! rules themselves (hello checks, high-water mark, drop notes, ack figures) live in [`protocol`].
//!
//! Every way a session can end is named: a clean goodbye, a refusal (with the reason sent to the
//! agent), a protocol error (bad frame, garbage: logged, connection closed with code 1), or the
//! transport going away, or the agent's certificate being revoked while it is connected. None
//! of them affects any other agent.

pub mod protocol;

use super::revocation::RevokedSerials;
use super::{AbortOnDrop, IngestContext};
use crate::ca::registry::normalise_serial;
use crate::clock::now_unix_ms;
use crate::limits::{Limit, LimitCounters};
use egresswatch_wire::close;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::{AgentMessage, CollectorMessage, Refusal, WireError};
use protocol::{Closing, End, Exceeded, Next, Opening, Session};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

// The wire's close codes as quinn spells them.
const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(close::PROTOCOL);
const CLOSE_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(close::REFUSED);

/// The report stream's halves, framed.
type Reader = FrameReader<quinn::RecvStream>;
type Writer = FrameWriter<quinn::SendStream>;

/// How long an agent has to open its stream and say hello.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

/// What a session closes with when the agent's certificate is revoked; the agent logs it as
/// "rejected by the collector: …".
pub const REVOKED_REASON: &str = "this agent's certificate has been revoked by the collector's CA";

/// Runs one connection to its end. `revoked` follows the CA's revocation list: the session ends
/// as soon as it lists this agent's certificate.
pub async fn run(
    connection: quinn::Connection,
    context: Arc<IngestContext>,
    mut revoked: tokio::sync::watch::Receiver<RevokedSerials>,
    renewals: Arc<super::enroll::Enrollment>,
) {
    let (agent_id, serial, validity) = match identity(&connection) {
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
    let certificate = Certificate {
        serial: serial.clone(),
        validity,
        renewals,
    };
    let end = tokio::select! {
        end = serve(&connection, &agent_id, &certificate, &context) => end,
        () = until_revoked(&serial, &mut revoked) => End::Revoked,
    };
    let reason: Vec<u8> = match &end {
        End::Clean => {
            debug!("session ended");
            b"bye".to_vec()
        }
        End::Refused { kind, reason } => {
            context.counters.refused(kind);
            warn!("refused: {reason}");
            // The refusal frame is on its way; give the agent a moment to read it and close.
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            truncate(reason).into_bytes()
        }
        End::Protocol(reason) => {
            context.counters.decode_errors.inc();
            warn!("closing on protocol error: {reason}");
            truncate(reason).into_bytes()
        }
        End::Revoked => {
            // A batch being stored when this fires is stored (the blocking insert runs on);
            // only its ack is not sent.
            context.counters.refused("revoked");
            warn!("closing a live session: {REVOKED_REASON}");
            REVOKED_REASON.as_bytes().to_vec()
        }
        End::OverLimit(reason) => {
            // Already counted and (rate-limited) logged where the limit was hit.
            debug!("closing over a limit: {reason}");
            truncate(reason).into_bytes()
        }
        End::Transport(reason) => {
            info!("connection ended: {reason}");
            Vec::new()
        }
        End::Unavailable(reason) => {
            warn!("closing, results not stored: {reason}");
            b"store unavailable, resend later".to_vec()
        }
    };
    if let Some(code) = end.close_code() {
        connection.close(quinn::VarInt::from_u32(code), &reason);
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

/// The session's certificate, for the welcome and for renewing it.
struct Certificate {
    serial: Vec<u8>,
    /// Not before, not after (Unix seconds).
    validity: (i64, i64),
    renewals: Arc<super::enroll::Enrollment>,
}

/// The agent id from the verified client certificate's subject CN, its serial number and its
/// validity (Unix seconds).
type Identity = (String, Vec<u8>, (i64, i64));

fn identity(connection: &quinn::Connection) -> Result<Identity, String> {
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
    let (serial, validity) = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| {
            (
                normalise_serial(cert.raw_serial()),
                (
                    cert.validity().not_before.timestamp(),
                    cert.validity().not_after.timestamp(),
                ),
            )
        })
        .map_err(|e| format!("client certificate: {e}"))?;
    Ok((id, serial, validity))
}

/// The shell around [`Session`]: reads frames, hands them to the session, and carries out
/// what it decides (store, answer, count, close).
async fn serve(
    connection: &quinn::Connection,
    agent_id: &str,
    certificate: &Certificate,
    context: &IngestContext,
) -> End {
    let (send, recv) = match tokio::time::timeout(HELLO_DEADLINE, connection.accept_bi()).await {
        Err(_) => return End::Protocol("no stream opened within 10 s".into()),
        Ok(Err(e)) => return End::Transport(e.to_string()),
        Ok(Ok(streams)) => streams,
    };
    let mut send = Writer::new(send, egresswatch_wire::limits::MAX_FRAME_BYTES);
    let mut recv = Reader::new(recv, context.max_frame_bytes);
    // The protocol has one stream; others an agent opens are reset and counted, so they cannot
    // hold buffers (quinn caps how many may be open at once: max_streams_per_connection).
    let _extra_streams = AbortOnDrop(tokio::spawn(reset_extra_streams(
        connection.clone(),
        context.limits.clone(),
    )));
    let mut session = Session::new(agent_id, context.max_batch_results);
    let first = match tokio::time::timeout(HELLO_DEADLINE, read_message(&mut recv)).await {
        Err(_) => return End::Protocol("no hello within 10 s".into()),
        Ok(Ok(None)) => return End::Clean,
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Err(ReadFailure::Transport(e))) => return End::Transport(e),
        Ok(Err(ReadFailure::Wire(e))) => Err(e),
    };
    let (agent, status, reachable) = match session.on_first_frame(first) {
        Opening::Register {
            agent,
            status,
            reachable,
        } => (agent, status, reachable),
        Opening::Refuse(refusing) => {
            count_exceeded(context, refusing.exceeded.as_ref());
            refuse(&mut send, &refusing.reason, 0).await;
            return refusing.end();
        }
        Opening::Close(closing) => return close(context, closing),
    };
    let store = context.store.clone();
    let upsert = {
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || store.upsert_agent(&agent, now_unix_ms())).await
    };
    let high_water = match upsert {
        Ok(Ok(mark)) => mark,
        Ok(Err(e)) => return End::Unavailable(e.to_string()),
        Err(e) => return End::Unavailable(e.to_string()),
    };
    if !status.is_empty() {
        warn!(status = %status, "agent reports trouble");
    }
    info!(version = %agent.agent_version, provider = %agent.labels.provider, account = %agent.labels.account, acked = high_water, "agent connected");
    let mut welcome = session.on_registered(high_water);
    (welcome.cert_not_before, welcome.cert_not_after) = certificate.validity;
    if let Some(over) = session.started_over() {
        context.counters.spool_restarts.inc();
        warn!(
            high_water = over.high_water,
            spool_next_seq = over.spool_next_seq,
            spool_new = over.spool_new,
            "the agent's spool started over below the results stored for it: its numbering continues above seq {}",
            over.high_water
        );
    }
    if let Err(end) = write_message(&mut send, &CollectorMessage::Welcome(welcome)).await {
        return end;
    }
    // From here the fan-out may queue probe requests for this agent; the entry goes with the
    // session, however it ends.
    let (_registration, mut requests) = context.sessions.register(reachable);
    context.observer.agent_connected(&agent, now_unix_ms());
    loop {
        // A request queued while we wait for the agent's next frame is written at once; one
        // queued while a batch is being stored waits for the ack. Reading a frame is cancel-safe
        // (the frame reader keeps what it has read), so the request never costs a byte.
        let read = tokio::select! {
            biased;
            Some(request) = requests.recv() => {
                debug!(request_id = request.request_id, target = %request.target, port = request.port, "asking for a probe");
                if let Err(end) = write_message(&mut send, &CollectorMessage::ProbeRequest(request)).await {
                    return end;
                }
                continue;
            }
            read = read_message(&mut recv) => read,
        };
        let frame = match read {
            Ok(Some(m)) => Ok(m),
            Ok(None) => return End::Clean,
            Err(ReadFailure::Transport(e)) => return End::Transport(e),
            Err(ReadFailure::Wire(e)) => Err(e),
        };
        if matches!(frame, Ok(AgentMessage::Batch(_))) {
            context.counters.batches.inc();
        }
        let next = session.on_frame(frame);
        let ack = match next {
            Next::Store {
                count,
                results,
                batch,
            } => {
                throttle(&agent.agent_id, count, context).await;
                let store = context.store.clone();
                let agent_id = agent.agent_id.clone();
                let now = now_unix_ms();
                let clock = batch.clock();
                let inserted = tokio::task::spawn_blocking(move || {
                    store.insert_results(&agent_id, results, clock, now)
                })
                .await;
                let report = match inserted {
                    Ok(Ok(done)) => done,
                    Ok(Err(e)) => return End::Unavailable(e.to_string()),
                    Err(e) => return End::Unavailable(e.to_string()),
                };
                context.counters.results.inc_by(u64::from(report.accepted));
                context
                    .counters
                    .duplicates
                    .inc_by(u64::from(report.duplicates));
                let stored = session.on_stored(batch, &report);
                // The hub learns of them from the store's feed.
                if let Some(drops) = &stored.spool_drops {
                    count_exceeded(context, Some(drops));
                    warn!(
                        dropped = batch.dropped_before,
                        "the agent's spool dropped results before seq {}", batch.first_seq
                    );
                }
                stored.ack
            }
            Next::Discard { count, ack, error } => {
                throttle(&agent.agent_id, count, context).await;
                context.counters.decode_errors.inc();
                warn!("discarding a batch of {count}: {error}");
                ack
            }
            // A newer agent's message we do not know: skipped, the session goes on.
            Next::Ignore { kind } => {
                debug!(kind, "ignoring a message of unknown kind");
                continue;
            }
            Next::Renew { csr_der } => {
                let renewed = certificate
                    .renewals
                    .renew(agent_id, &certificate.serial, certificate.validity, csr_der)
                    .await;
                if let Err(end) =
                    write_message(&mut send, &CollectorMessage::Renewed(renewed)).await
                {
                    return end;
                }
                continue;
            }
            Next::RenewRefused { reason } => {
                certificate.renewals.count_renewal("repeated");
                warn!("renewal refused: {reason}");
                let refused = CollectorMessage::Renewed(egresswatch_wire::Renewed {
                    cert_pem: String::new(),
                    refused: reason.to_string(),
                });
                if let Err(end) = write_message(&mut send, &refused).await {
                    return end;
                }
                continue;
            }
            Next::Close(closing) => return close(context, closing),
        };
        if let Err(end) = write_message(&mut send, &CollectorMessage::Ack(ack)).await {
            return end;
        }
    }
}

/// Over its rate, an agent is slowed, not cut: its batch waits (and with it the reading of the
/// next one, so flow control holds the agent back); its results are stored all the same.
async fn throttle(agent_id: &str, count: u32, context: &IngestContext) {
    let wait = context
        .rate
        .take(agent_id, count, std::time::Instant::now());
    if !wait.is_zero() {
        context.limits.exceeded(Limit::ResultsPerSecond, 1, || {
            format!(
                "agent {agent_id} is over max_results_per_sec: its batch of {count} waits {} ms",
                wait.as_millis()
            )
        });
        tokio::time::sleep(wait).await;
    }
}

/// Counts (and, at the limits' pace, logs) a limit the session decided was exceeded.
fn count_exceeded(context: &IngestContext, exceeded: Option<&Exceeded>) {
    if let Some(e) = exceeded {
        context
            .limits
            .exceeded(e.limit, e.count, || e.message.clone());
    }
}

/// Carries out a close the session decided: what it counts first, then the end.
fn close(context: &IngestContext, closing: Closing) -> End {
    if closing.decode_error {
        context.counters.decode_errors.inc();
    }
    count_exceeded(context, closing.exceeded.as_ref());
    closing.end
}

async fn refuse(send: &mut Writer, reason: &str, retry_after_s: u32) {
    let refusal = CollectorMessage::Refusal(Refusal {
        reason: reason.to_string(),
        retry_after_s,
    });
    let _ = write_message(send, &refusal).await;
    let _ = send.get_mut().finish();
}

/// Why a read off the report stream failed.
enum ReadFailure {
    Wire(WireError),
    Transport(String),
}

impl From<WireError> for ReadFailure {
    fn from(e: WireError) -> ReadFailure {
        match e {
            WireError::Io(io) => ReadFailure::Transport(transport_error(&io)),
            other => ReadFailure::Wire(other),
        }
    }
}

/// Reads one frame and decodes it. `Ok(None)` when the agent finished its stream cleanly.
async fn read_message(recv: &mut Reader) -> Result<Option<AgentMessage>, ReadFailure> {
    Ok(recv.read::<AgentMessage>().await?)
}

/// A transport error with its cause: quinn's "connection lost" alone does not say why.
fn transport_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
    {
        Some(quinn::ReadError::ConnectionLost(cause)) => format!("connection lost: {cause}"),
        _ => e.to_string(),
    }
}

async fn write_message(send: &mut Writer, message: &CollectorMessage) -> Result<(), End> {
    send.send(message).await.map_err(|e| match e {
        WireError::Io(io) => End::Transport(io.to_string()),
        other => End::Protocol(other.to_string()),
    })
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
