//! The uplink: one QUIC connection to the collector, mutual TLS with this agent's certificate,
//! the session of `egresswatch_wire::message` (hello, welcome, batches, acks). Results are read
//! from the spool and forgotten only when acked; after any failure the agent reconnects with
//! capped exponential backoff and jitter and resends everything unacked (the collector dedupes by
//! sequence number). A collector that refuses this agent — a refusal message, or a TLS alert
//! because its certificate is not accepted — is logged as "rejected by the collector: …" and
//! retried only at the slowest pace, never in a tight loop.
//!
//! A hello is said once per session, so when a config reload changes the labels or targets the
//! session is ended cleanly (in-flight batches briefly awaited) and a new one says the new hello
//! at once. A batch never spans more wall-clock time than its offsets can carry, so a clock step of
//! months between two spooled results splits the batch instead of failing it forever.

use super::config::CollectorConfig;
use super::Shared;
use crate::error::AgentError;
use egresswatch_wire::close;
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::version::{ALPN, WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{AgentMessage, Batch, CollectorMessage, Hello, ProbeResult, WireError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Most batches sent and not yet acked.
const WINDOW: usize = 8;
/// Most results in one batch.
const BATCH_RESULTS: usize = 500;
/// How long new results wait for company before they are sent.
const LINGER: Duration = Duration::from_millis(1000);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The report stream's halves, framed.
type Reader = FrameReader<quinn::RecvStream>;
type Writer = FrameWriter<quinn::SendStream>;

/// Why a session ended without an error.
#[derive(Debug, PartialEq)]
pub enum SessionEnd {
    /// The agent is stopping.
    Shutdown,
    /// Labels or targets changed: say hello again.
    Reannounce,
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionError {
    /// The collector will not take this agent (refusal, TLS alert): back off to the maximum.
    Rejected(String),
    /// Anything else: network, timeout, collector restart.
    Failed(String),
}

/// The client side's TLS and transport settings, from the config's files.
pub fn client_config(config: &CollectorConfig) -> Result<quinn::ClientConfig, AgentError> {
    let tls_err = |what: &str, e: &dyn std::fmt::Display| AgentError::Tls(format!("{what}: {e}"));
    let ca = CertificateDer::from_pem_file(&config.ca)
        .map_err(|e| tls_err(&format!("collector CA {}", config.ca.display()), &e))?;
    let cert = CertificateDer::from_pem_file(&config.cert)
        .map_err(|e| tls_err(&format!("agent certificate {}", config.cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| tls_err(&format!("agent key {}", config.key.display()), &e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| tls_err("collector CA", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| tls_err("agent certificate and key", &e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS", &e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // NAT bindings expire after ~30 s of silence on many networks: keep them warm.
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        30_000,
    ))));
    // Small reports: small windows keep the agent's memory small.
    transport.stream_receive_window(quinn::VarInt::from_u32(64 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(128 * 1024));
    transport.send_window(256 * 1024);
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Keeps a session up until shutdown.
pub async fn run(
    config: CollectorConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = match client_config(&config) {
            Ok(client) => session(&config, client, &shared, &mut shutdown).await,
            Err(e) => Err(SessionError::Failed(e.to_string())),
        };
        backoff = match outcome {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Reannounce) => {
                info!("labels or targets changed: reconnecting to say so");
                backoff = MIN_BACKOFF;
                continue;
            }
            Err(SessionError::Rejected(reason)) => {
                error!("rejected by the collector: {reason}");
                shared.set_uplink_state(format!("rejected by the collector: {reason}"));
                MAX_BACKOFF
            }
            Err(SessionError::Failed(reason)) => {
                warn!(
                    "collector connection failed: {reason}; retrying in about {} s",
                    backoff.as_secs()
                );
                shared.set_uplink_state(format!("disconnected: {reason}"));
                let current = backoff;
                (current * 2).min(MAX_BACKOFF)
            }
        };
        let wait = jitter(backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let factor = rand::thread_rng().gen_range(0.5..1.0);
    d.mul_f64(factor)
}

async fn resolve(address: &str) -> Result<Vec<SocketAddr>, SessionError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| SessionError::Failed(format!("resolving {address}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(SessionError::Failed(format!("{address} has no address")));
    }
    Ok(addrs)
}

/// Reads why a connection ended: a TLS alert or a refusal close means "rejected".
fn connection_error(e: &quinn::ConnectionError) -> SessionError {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if (0x100..=0x1ff).contains(&code) {
                SessionError::Rejected(format!("TLS alert {} ({close}): is this agent's certificate issued by the collector's CA, unexpired and not revoked?", code - 0x100))
            } else {
                SessionError::Failed(close.to_string())
            }
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(close::REFUSED) =>
        {
            SessionError::Rejected(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => SessionError::Failed(other.to_string()),
    }
}

/// Reads why the framed report stream failed; the connection's close (a refusal, a TLS alert)
/// is read as [`connection_error`] does, wherever the stream noticed it.
fn stream_error(e: WireError, bad_message: &str) -> SessionError {
    let WireError::Io(io) = e else {
        return SessionError::Failed(format!("{bad_message}: {e}"));
    };
    let inner = io.get_ref();
    let lost = match (
        inner.and_then(|i| i.downcast_ref::<quinn::ReadError>()),
        inner.and_then(|i| i.downcast_ref::<quinn::WriteError>()),
    ) {
        (Some(quinn::ReadError::ConnectionLost(c)), _)
        | (_, Some(quinn::WriteError::ConnectionLost(c))) => Some(c),
        _ => None,
    };
    match lost {
        Some(c) => connection_error(c),
        None => SessionError::Failed(io.to_string()),
    }
}

async fn read_message(recv: &mut Reader) -> Result<CollectorMessage, SessionError> {
    match recv.read::<CollectorMessage>().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(SessionError::Failed(
            "the collector closed the stream".into(),
        )),
        Err(e) => Err(stream_error(e, "bad message from the collector")),
    }
}

async fn write_message(send: &mut Writer, message: &AgentMessage) -> Result<(), SessionError> {
    send.send(message)
        .await
        .map_err(|e| stream_error(e, "encoding a message"))
}

async fn session(
    config: &CollectorConfig,
    client: quinn::ClientConfig,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    // Every address the name has, in the system's order: a collector reachable over one family
    // only must not look down because the other family came first.
    let mut last_error = SessionError::Failed(format!("{} has no address", config.address));
    let mut established = None;
    for addr in resolve(&config.address).await? {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| SessionError::Failed(format!("UDP socket: {e}")))?;
        let connecting = match endpoint.connect_with(client.clone(), addr, &config.server_name) {
            Ok(c) => c,
            Err(e) => {
                last_error = SessionError::Failed(format!("{addr}: {e}"));
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_secs(8), connecting).await {
            Ok(Ok(connection)) => {
                established = Some((endpoint, connection));
                break;
            }
            Ok(Err(e)) => {
                last_error = connection_error(&e);
                if matches!(last_error, SessionError::Rejected(_)) {
                    return Err(last_error);
                }
            }
            Err(_) => {
                last_error = SessionError::Failed(format!("no answer from {addr} within 8 s"))
            }
        }
    }
    let Some((endpoint, connection)) = established else {
        return Err(last_error);
    };
    let result = converse(&connection, shared, shutdown).await;
    match &result {
        Ok(SessionEnd::Shutdown) => {
            connection.close(quinn::VarInt::from_u32(close::NORMAL), b"agent stopping")
        }
        Ok(SessionEnd::Reannounce) | Err(_) => connection.close(
            quinn::VarInt::from_u32(close::NORMAL),
            b"agent reconnecting",
        ),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn converse(
    connection: &quinn::Connection,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let mut announcements = shared.announcements();
    announcements.borrow_and_update();
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| connection_error(&e))?;
    let (mut send, mut recv) = (
        FrameWriter::new(send, MAX_FRAME_BYTES),
        FrameReader::new(recv, MAX_FRAME_BYTES),
    );
    let hello = Hello {
        wire_major: WIRE_MAJOR,
        wire_minor: WIRE_MINOR,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: shared.labels(),
        targets: shared.targets(),
        clock: super::clock::quality(),
        status: shared.status(),
    };
    write_message(&mut send, &AgentMessage::Hello(hello)).await?;
    let welcome = match tokio::time::timeout(Duration::from_secs(15), read_message(&mut recv)).await
    {
        Err(_) => return Err(SessionError::Failed("no welcome within 15 s".into())),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(CollectorMessage::Welcome(w))) => w,
        Ok(Ok(CollectorMessage::Refusal(r))) => return Err(SessionError::Rejected(r.reason)),
        Ok(Ok(other)) => {
            return Err(SessionError::Failed(format!(
                "expected a welcome, got {other:?}"
            )))
        }
    };
    info!(agent_id = %welcome.agent_id, acked = welcome.acked_seq, collector = %welcome.collector_version, "connected to the collector");
    shared.set_uplink_state(String::new());
    shared.ack(welcome.acked_seq).await;
    let mut next_to_send = welcome.acked_seq + 1;

    // Acks are read in their own task, so sending never waits for them.
    let (acks_tx, mut acks) =
        tokio::sync::mpsc::channel::<Result<CollectorMessage, SessionError>>(WINDOW * 2);
    let reader = tokio::spawn(async move {
        loop {
            let message = read_message(&mut recv).await;
            let failed = message.is_err();
            if acks_tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let outcome = 'session: loop {
        while in_flight.len() < WINDOW {
            let (mut results, dropped) = shared.unacked(next_to_send, BATCH_RESULTS).await;
            results.truncate(within_offset_span(&results));
            let Some(last) = results.last().map(|r| r.seq) else {
                break;
            };
            let batch = match Batch::pack(&results, super::clock::quality(), dropped) {
                Ok(b) => b,
                Err(e) => {
                    break 'session Err(SessionError::Failed(format!("packing a batch: {e}")))
                }
            };
            if let Err(e) = write_message(&mut send, &AgentMessage::Batch(batch)).await {
                break 'session Err(e);
            }
            in_flight.push_back(last);
            next_to_send = last + 1;
        }
        tokio::select! {
            message = acks.recv() => match message {
                Some(Ok(CollectorMessage::Ack(ack))) => {
                    in_flight.pop_front();
                    if ack.discarded > 0 {
                        warn!(discarded = ack.discarded, reason = %ack.reason, "the collector discarded a batch");
                    }
                    shared.ack(ack.up_to_seq).await;
                }
                Some(Ok(CollectorMessage::Refusal(r))) => break Err(SessionError::Rejected(r.reason)),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Err(SessionError::Failed("the collector closed the stream".into())),
            },
            // Batch by time as well as size: let results gather briefly, so a steady trickle
            // travels as a few larger batches (the series table is paid once per batch).
            _ = shared.new_results.notified() => tokio::time::sleep(LINGER).await,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {
                settle(&mut in_flight, &mut acks, shared).await;
                let _ = send.get_mut().finish();
                break Ok(SessionEnd::Shutdown);
            }
            _ = announcements.changed() => {
                settle(&mut in_flight, &mut acks, shared).await;
                let _ = send.get_mut().finish();
                break Ok(SessionEnd::Reannounce);
            }
        }
    };
    reader.abort();
    outcome
}

/// Lets what is in flight be acked, briefly, before a session ends; the rest waits in the spool.
async fn settle(
    in_flight: &mut VecDeque<u64>,
    acks: &mut tokio::sync::mpsc::Receiver<Result<CollectorMessage, SessionError>>,
    shared: &Shared,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, acks.recv()).await {
            Ok(Some(Ok(CollectorMessage::Ack(ack)))) => {
                in_flight.pop_front();
                shared.ack(ack.up_to_seq).await;
            }
            _ => break,
        }
    }
}

/// How many of `results` (from the first) fit one batch, whose results are timed as `u32`
/// milliseconds after the earliest: at least one, so a wall-clock step between two results
/// (an NTP step, a VM clock set from 1970) splits batches instead of failing every one.
pub fn within_offset_span(results: &[ProbeResult]) -> usize {
    let Some(first) = results.first() else {
        return 0;
    };
    let (mut low, mut high) = (first.at_unix_ms, first.at_unix_ms);
    for (i, r) in results.iter().enumerate() {
        low = low.min(r.at_unix_ms);
        high = high.max(r.at_unix_ms);
        if high.saturating_sub(low) > i64::from(u32::MAX) {
            return i;
        }
    }
    results.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_unix_ms: i64) -> ProbeResult {
        ProbeResult {
            at_unix_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_clock_step_beyond_the_offsets_splits_the_batch() {
        let now = 1_790_000_000_000;
        let day = 86_400_000;
        let steady = [at(now), at(now - 3_600_000), at(now + day)];
        assert_eq!(
            within_offset_span(&steady),
            3,
            "an hour back, a day on: one batch"
        );
        let stepped = [at(1_000), at(2_000), at(now), at(now + 1)];
        assert_eq!(within_offset_span(&stepped), 2, "from 1970 to now: split");
        assert_eq!(within_offset_span(&stepped[2..]), 2);
        let back = [at(now), at(now - 60 * day)];
        assert_eq!(within_offset_span(&back), 1, "never less than one");
        assert_eq!(within_offset_span(&[]), 0);
        // What fits really packs.
        let mut seq = 1;
        let mut packable: Vec<ProbeResult> = [at(now), at(now - 49 * day), at(now + 1)]
            .into_iter()
            .map(|mut r| {
                r.seq = seq;
                seq += 1;
                r.target = "mx".into();
                r
            })
            .collect();
        packable.truncate(within_offset_span(&packable));
        assert!(Batch::pack(&packable, egresswatch_wire::ClockQuality::Unknown, 0).is_ok());
    }
}
