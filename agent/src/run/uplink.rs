//! The uplink: one QUIC connection at a time to one of the configured collectors, mutual TLS
//! with this agent's certificate, the session of `egresswatch_wire::message` (hello, welcome,
//! batches, acks). Results are read from the spool and forgotten only when acked; after any
//! failure the agent moves on to the next collector and resends everything unacked (collectors
//! dedupe by sequence number, the shared store across collectors); which collector it tries, and
//! how long it waits once every one has failed, is the sans-IO [`failover`]. A collector that
//! refuses this agent — a refusal message, or a TLS alert because its certificate is not
//! accepted — is logged as "rejected by the collector: …" and retried only at the slowest pace,
//! never in a tight loop.
//!
//! A hello is said once per session, so when a config reload changes the labels or targets the
//! session is ended cleanly (in-flight batches briefly awaited) and a new one says the new hello
//! at once, to the same collector. A batch never spans more wall-clock time than its offsets can
//! carry, so a clock step of months between two spooled results splits the batch instead of
//! failing it forever.
//!
//! This file is the quinn shell: resolving, connecting, the hello, reading acks in a task of their
//! own, writing batches through the wire's framed stream. What to send next, what an ack retires,
//! when a silent collector is given up on and how a connection's end is read are decided by the
//! sans-IO [`window`].

pub mod failover;
pub mod renewal;
pub mod window;

use super::config::CollectorConfig;
use super::Shared;
use crate::error::AgentError;
use egresswatch_wire::close;
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::version::{ALPN, WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{AgentMessage, Batch, CollectorMessage, Hello, WireError};
use failover::{jitter, Candidate, Ended, Rotation, Step};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};
use window::{connection_error, Heard, Window, BATCH_RESULTS, WINDOW};
pub use window::{within_offset_span, SessionError};

/// Longest a QUIC handshake with one candidate may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

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
    /// The certificate was renewed: connect again with it.
    Renewed,
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

/// Keeps a session up with one of the configured collectors until shutdown, moving to the next
/// candidate when the one in use fails (see [`failover`]).
pub async fn run(
    config: CollectorConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rotation = Rotation::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let client = match client_config(&config) {
            Ok(client) => Some(client),
            Err(e) => {
                warn!("collector connection impossible: {e}");
                shared.set_uplink_state(format!("disconnected: {e}"));
                None
            }
        };
        if rotation.round_over() {
            let (candidates, unresolved) = resolve_all(&config.address).await;
            for problem in &unresolved {
                warn!("collector address: {problem}");
            }
            if client.is_some() && rotation.start_round(candidates) == 0 {
                shared.set_uplink_state(format!(
                    "disconnected: no collector address resolves ({})",
                    unresolved.join("; ")
                ));
            }
        }
        let step = match (client, rotation.next_candidate()) {
            (Some(client), Some(candidate)) => {
                let ended = session(
                    &config,
                    &candidate,
                    client,
                    &shared,
                    &mut rotation,
                    &mut shutdown,
                )
                .await;
                shared.set_collector(None);
                report(&shared, &candidate, &ended);
                rotation.after(&candidate, &ended)
            }
            _ => rotation.round_failed(),
        };
        let wait = match step {
            Step::Stop => return,
            Step::Next => continue,
            Step::Wait(backoff) => jitter(backoff),
        };
        info!(
            "no collector took the results this round; trying again in about {} s",
            wait.as_secs().max(1)
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Logs how a session ended and sets the state the agent reports.
fn report(shared: &Shared, collector: &Candidate, ended: &Ended) {
    match ended {
        Ended::Shutdown => {}
        Ended::Reannounce => {
            info!(collector = %collector, "reconnecting: labels, targets or the certificate changed")
        }
        Ended::Rejected(reason) => {
            error!(collector = %collector, "rejected by the collector: {reason}");
            shared.set_uplink_state(format!("rejected by the collector: {reason}"));
        }
        Ended::Failed { reason, .. } => {
            warn!(collector = %collector, "collector connection failed: {reason}");
            shared.set_uplink_state(format!("disconnected: {reason}"));
        }
    }
}

/// Longest a name may take to resolve before the round goes on without it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every address of every entry (see [`failover::candidates`]), and what could not be resolved.
pub async fn resolve_all(entries: &[String]) -> (Vec<Candidate>, Vec<String>) {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(entry.as_str())).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    problems.push(format!("{entry} has no address"));
                }
                resolved.push((entry.clone(), addrs));
            }
            Ok(Err(e)) => problems.push(format!("resolving {entry}: {e}")),
            Err(_) => problems.push(format!(
                "resolving {entry}: no answer within {} s",
                RESOLVE_TIMEOUT.as_secs()
            )),
        }
    }
    (failover::candidates(resolved), problems)
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

/// One session with `collector`: connect, hello, batches and acks until it ends.
async fn session(
    config: &CollectorConfig,
    collector: &Candidate,
    client: quinn::ClientConfig,
    shared: &Arc<Shared>,
    rotation: &mut Rotation,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut welcomed_at = None;
    let result = connect_and_converse(
        config,
        collector,
        client,
        shared,
        rotation,
        shutdown,
        &mut welcomed_at,
    )
    .await;
    match result {
        Ok(SessionEnd::Shutdown) => Ended::Shutdown,
        // Either way: at once, to the same collector.
        Ok(SessionEnd::Reannounce) | Ok(SessionEnd::Renewed) => Ended::Reannounce,
        Err(SessionError::Rejected(reason)) => Ended::Rejected(reason),
        Err(SessionError::Failed(reason)) => Ended::Failed {
            reason,
            welcomed_for: welcomed_at.map(|at: Instant| at.elapsed()),
        },
    }
}

async fn connect_and_converse(
    config: &CollectorConfig,
    collector: &Candidate,
    client: quinn::ClientConfig,
    shared: &Arc<Shared>,
    rotation: &mut Rotation,
    shutdown: &mut watch::Receiver<bool>,
    welcomed_at: &mut Option<Instant>,
) -> Result<SessionEnd, SessionError> {
    let addr = collector.addr;
    let bind = SocketAddr::new(
        if addr.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        },
        0,
    );
    let endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| SessionError::Failed(format!("UDP socket: {e}")))?;
    let connecting = endpoint
        .connect_with(client, addr, &config.server_name)
        .map_err(|e| SessionError::Failed(format!("{addr}: {e}")))?;
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return Err(connection_error(&e)),
        Err(_) => {
            return Err(SessionError::Failed(format!(
                "no answer from {addr} within {} s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    let welcomed = |acked: u64, version: &str| {
        *welcomed_at = Some(Instant::now());
        match rotation.on_welcomed(collector) {
            Some(left) => info!(
                from = %left.collector,
                to = %collector,
                why = %left.why,
                acked,
                collector_version = %version,
                "switched collector"
            ),
            None => {
                info!(collector = %collector, acked, collector_version = %version, "connected to the collector")
            }
        }
        shared.set_collector(Some(collector.to_string()));
    };
    let result = converse(&connection, config, shared, shutdown, welcomed).await;
    match &result {
        Ok(SessionEnd::Shutdown) => {
            connection.close(quinn::VarInt::from_u32(close::NORMAL), b"agent stopping")
        }
        Ok(SessionEnd::Reannounce) | Ok(SessionEnd::Renewed) | Err(_) => connection.close(
            quinn::VarInt::from_u32(close::NORMAL),
            b"agent reconnecting",
        ),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn converse(
    connection: &quinn::Connection,
    config: &CollectorConfig,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    welcomed: impl FnOnce(u64, &str),
) -> Result<SessionEnd, SessionError> {
    let linger = config.linger;
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
    let said = shared.spool_numbering();
    let hello = Hello {
        wire_major: WIRE_MAJOR,
        wire_minor: WIRE_MINOR,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: shared.labels(),
        targets: shared.targets(),
        clock: super::clock::quality(),
        status: shared.status(),
        accepts_probe_requests: shared.accepts_probe_requests(),
        spool_next_seq: said.map_or(0, |said| said.next_seq),
        spool_new: said.is_some_and(|said| said.new),
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
    tracing::debug!(agent_id = %welcome.agent_id, "welcomed");
    // Before the welcome's mark is taken as an ack: a spool that started over below it moves
    // its results above it first, or the ack would delete them unsent.
    shared
        .continue_above(said, welcome.acked_seq)
        .await
        .map_err(SessionError::Failed)?;
    welcomed(welcome.acked_seq, &welcome.collector_version);
    shared.set_uplink_state(String::new());
    shared.ack(welcome.acked_seq).await;
    // What this collector's store does not hold is sent from the spool, whichever collector
    // had it before: the spool forgets only what some collector acked.
    let mut window = Window::welcomed(welcome.acked_seq, shared.spooled().newest_seq, linger);
    // When to ask for a new certificate (wire 1.4: the welcome says this one's validity).
    let mut renew_at = (welcome.wire_minor >= 4)
        .then(|| renewal::due_at(welcome.cert_not_before, welcome.cert_not_after))
        .flatten();

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
    let outcome = loop {
        if let Err(e) = send_due(&mut window, &mut send, shared, welcome.wire_minor).await {
            break Err(e);
        }
        tokio::select! {
            message = acks.recv() => match message {
                Some(Ok(message)) => match window.on_message(message, Instant::now()) {
                    Heard::Retire { up_to_seq, discarded } => {
                        if let Some((discarded, reason)) = discarded {
                            warn!(discarded, reason = %reason, "the collector discarded a batch");
                        }
                        shared.ack(up_to_seq).await;
                    }
                    Heard::Rejected(reason) => break Err(SessionError::Rejected(reason)),
                    Heard::ProbeRequest(request) => shared.request_probe(request),
                    Heard::Renewed(renewed) => {
                        if renewal::install(config, renewed) {
                            window.flush();
                            if let Err(e) = send_due(&mut window, &mut send, shared, welcome.wire_minor).await {
                                break Err(e);
                            }
                            settle(&mut window, &mut acks, shared).await;
                            let _ = send.get_mut().finish();
                            break Ok(SessionEnd::Renewed);
                        }
                    }
                    Heard::Nothing => {}
                },
                Some(Err(e)) => break Err(e),
                None => break Err(SessionError::Failed("the collector closed the stream".into())),
            },
            // The window says when lingering results are due; news wakes the loop at once.
            _ = shared.new_results.notified() => {}
            _ = sleep_until_due(window.due_at()) => {}
            _ = sleep_until_due(renew_at) => {
                // Asked once per session; a refusal waits for the next one.
                renew_at = None;
                match renewal::request(config, &welcome.agent_id) {
                    Ok(renew) => {
                        info!("less than a third of this agent's certificate's life is left: asking the collector for a new one");
                        if let Err(e) = write_message(&mut send, &AgentMessage::Renew(renew)).await {
                            break Err(e);
                        }
                    }
                    Err(e) => warn!("cannot ask for a new certificate: {e}"),
                }
            }
            _ = sleep_until_due(window.ack_overdue_at()) => {
                break Err(SessionError::Failed(format!(
                    "no ack from the collector within {} s",
                    window::ACK_TIMEOUT.as_secs()
                )));
            }
            _ = shutdown.changed() => {
                window.flush();
                if let Err(e) = send_due(&mut window, &mut send, shared, welcome.wire_minor).await {
                    break Err(e);
                }
                settle(&mut window, &mut acks, shared).await;
                let _ = send.get_mut().finish();
                break Ok(SessionEnd::Shutdown);
            }
            _ = announcements.changed() => {
                window.flush();
                if let Err(e) = send_due(&mut window, &mut send, shared, welcome.wire_minor).await {
                    break Err(e);
                }
                settle(&mut window, &mut acks, shared).await;
                let _ = send.get_mut().finish();
                break Ok(SessionEnd::Reannounce);
            }
        }
    };
    reader.abort();
    outcome
}

/// Sleeps until `due`, or forever when nothing lingers.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Sends every batch the window says is due and has room for (a flushing window: everything,
/// so a stop or a reconnect never holds results back by a linger).
async fn send_due(
    window: &mut Window,
    send: &mut Writer,
    shared: &Shared,
    peer_minor: u16,
) -> Result<(), SessionError> {
    let spooled = shared.spooled();
    window.on_spooled(spooled.newest_seq, spooled.urgent_up_to, Instant::now());
    while let Some(from) = window.next_batch_from(Instant::now()) {
        let (mut results, dropped) = shared.unacked(from, BATCH_RESULTS).await;
        results.truncate(window.batch_len(&results));
        let Some(last) = results.last().map(|r| r.seq) else {
            window.on_nothing_to_send();
            break;
        };
        let batch = Batch::pack(&results, super::clock::quality(), dropped)
            .map(|b| {
                b.for_peer_minor(peer_minor)
                    .sent_at(crate::probe::now_unix_ms())
            })
            .map_err(|e| SessionError::Failed(format!("packing a batch: {e}")))?;
        write_message(send, &AgentMessage::Batch(batch)).await?;
        window.on_sent(last, Instant::now());
    }
    Ok(())
}

/// Lets what is in flight be acked, briefly, before a session ends; the rest waits in the spool.
async fn settle(
    window: &mut Window,
    acks: &mut tokio::sync::mpsc::Receiver<Result<CollectorMessage, SessionError>>,
    shared: &Shared,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !window.settled() {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, acks.recv()).await else {
            break;
        };
        match window.on_settling(message) {
            Some(up_to_seq) => shared.ack(up_to_seq).await,
            None => break,
        }
    }
}
