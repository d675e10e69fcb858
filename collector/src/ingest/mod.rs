//! QUIC ingest: the listener agents report to.
//!
//! Mutual TLS (quinn + rustls, ring): a client must present a certificate that chains to the
//! fleet CA, and its subject CN is its identity — an agent can only ever write as itself.
//! Every resource is bounded: concurrent connections, handshakes in progress, streams per
//! connection, frame size, flow-control windows (sized for small reports, not bulk transfer).
//! Each connection runs in [`session`] in its own task and tracing span; bad bytes close that
//! one connection, never the listener. The CA's revocation list is checked at the handshake and
//! followed while running ([`revocation`]): a revoked agent is refused and its live sessions end.
//! Ingest owns its counters ([`counters`]), registered before the listener is bound, and the
//! registry of live sessions the fan-out sends probe requests through ([`registry`]).

pub mod counters;
pub mod enroll;
pub mod registry;
pub mod revocation;
pub mod session;
pub mod tls;
pub mod udp;

use crate::ca::Authority;
use crate::error::CollectorError;
use crate::fleet::ResultObserver;
use crate::limits::{Limit, LimitCounters, PerSource, ResultRate};
use crate::store::Store;
pub use counters::IngestCounters;
use egresswatch_wire::limits::{MAX_BATCH_RESULTS, MAX_FRAME_BYTES};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

/// `[quic]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Extra DNS names and IP addresses for the collector's certificate (besides
    /// `egresswatch-collector` and `localhost`).
    pub server_names: Vec<String>,
    /// Most agent connections at once; more are refused at the door.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once (a reconnect storm after an outage).
    pub max_handshakes: usize,
    /// Seconds without a packet before a connection is dropped (agents send keep-alives).
    pub idle_timeout_secs: u64,
    /// Largest frame accepted, bytes (never above the wire's hard limit).
    pub max_frame_bytes: usize,
    /// Per-stream receive window, bytes: a few batches, not a bulk transfer.
    pub stream_window_bytes: u32,
    /// UDP socket buffer sizes (bytes); unset asks for [`udp::DEFAULT_BUFFER_BYTES`], 0 keeps the
    /// kernel's default (see [`udp`]).
    pub udp_recv_buffer_bytes: Option<usize>,
    pub udp_send_buffer_bytes: Option<usize>,
    /// Generic segmentation offload; some kernels and NICs misreport it.
    pub segmentation_offload: bool,
    /// Most connections from one source address (agents behind one NAT share an address).
    pub max_connections_per_source: usize,
    /// Most concurrent bidirectional streams an agent may open (it needs one); streams beyond
    /// the report stream are reset and counted.
    pub max_streams_per_connection: u32,
    /// Most results in one batch (never above the wire's hard limit of 4096).
    pub max_batch_results: usize,
    /// Results per second per agent, sustained; 0 is unlimited. Over it, the collector reads
    /// that agent's stream more slowly (its acks come later): nothing is dropped.
    pub max_results_per_sec: u32,
    /// Results an agent may send at once before the rate applies (a replay after an outage).
    pub results_burst: u32,
    /// Enrollment attempts (join tokens presented) per minute from one source address; over
    /// it, attempts are refused (`rate_limited`) until the bucket refills.
    pub enroll_attempts_per_minute: u32,
    /// Enrollment attempts one source address may make at once before the rate applies.
    pub enroll_attempts_burst: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            server_names: Vec::new(),
            max_connections: 20_000,
            max_handshakes: 512,
            idle_timeout_secs: 30,
            max_frame_bytes: MAX_FRAME_BYTES,
            stream_window_bytes: 256 * 1024,
            udp_recv_buffer_bytes: None,
            udp_send_buffer_bytes: None,
            segmentation_offload: true,
            max_connections_per_source: 1024,
            max_streams_per_connection: 4,
            max_batch_results: MAX_BATCH_RESULTS,
            max_results_per_sec: 1000,
            results_burst: 20_000,
            enroll_attempts_per_minute: 10,
            enroll_attempts_burst: 10,
        }
    }
}

/// What every session needs.
pub struct IngestContext {
    pub store: Arc<dyn Store>,
    pub observer: Arc<dyn ResultObserver>,
    pub counters: IngestCounters,
    pub limits: LimitCounters,
    pub max_frame_bytes: usize,
    pub max_batch_results: usize,
    pub rate: ResultRate,
    /// The live sessions, which the fan-out sends probe requests through.
    pub sessions: Arc<registry::SessionRegistry>,
}

impl IngestContext {
    /// The context for `config`, with the limits clamped to what the wire allows.
    pub fn new(
        config: &QuicConfig,
        store: Arc<dyn Store>,
        observer: Arc<dyn ResultObserver>,
        counters: IngestCounters,
        limits: LimitCounters,
    ) -> IngestContext {
        IngestContext {
            store,
            observer,
            counters,
            limits,
            max_frame_bytes: config.max_frame_bytes.clamp(1, MAX_FRAME_BYTES),
            max_batch_results: config.max_batch_results.clamp(1, MAX_BATCH_RESULTS),
            rate: ResultRate::new(
                config.max_results_per_sec,
                config.results_burst,
                config.max_connections.saturating_mul(2),
            ),
            sessions: Arc::new(registry::SessionRegistry::default()),
        }
    }
}

/// A bound listener; `serve` runs it until shutdown.
pub struct Ingest {
    endpoint: quinn::Endpoint,
    /// What the kernel granted the socket (see [`udp`]).
    recv_buffer_bytes: usize,
    drops: udp::SocketDrops,
    config: QuicConfig,
    tls: Arc<tls::TlsMaterial>,
    crl: revocation::CrlWatch,
    enrollment: Arc<enroll::Enrollment>,
}

impl Ingest {
    /// Binds the UDP socket and sets up mutual TLS with the fleet CA and its revocation list.
    /// `reset_key` (see [`reset_key`]) signs stateless resets; refused certificates are counted
    /// in `counters` from the first handshake.
    pub fn bind(
        config: &QuicConfig,
        authority: &Authority,
        reset_key: ring::hmac::Key,
        counters: IngestCounters,
    ) -> Result<Ingest, CollectorError> {
        let enrollment = Arc::new(enroll::Enrollment::new(
            Authority::load(authority.dir())?,
            config.enroll_attempts_per_minute,
            config.enroll_attempts_burst,
            counters.enrollments.clone(),
            counters.renewals.clone(),
        ));
        let tls = Arc::new(tls::TlsMaterial::new(config, authority, counters)?);
        let crl = revocation::CrlWatch::open(authority.dir())?;
        let server_config = tls.server_config(crl.current().map(|l| &l.der))?;
        let bound = udp::bind(config)?;
        let cid_key = connection_id_key(&reset_key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // quinn's generator tags its CIDs with a keyed hash and answers only packets whose CID
        // carries the tag. With the key kept across restarts (derived from the reset key), a
        // restarted collector recognises its previous life's CIDs and sends them the reset.
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        // One reset per 20 ms (quinn's default) would take minutes for a large fleet; a reset is
        // smaller than the packet that caused it, so a faster pace amplifies nothing.
        endpoint_config.min_reset_interval(Duration::from_micros(200));
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            bound.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| CollectorError::io(format!("QUIC endpoint on {}", config.listen), e))?;
        Ok(Ingest {
            endpoint,
            recv_buffer_bytes: bound.recv_buffer_bytes,
            drops: bound.drops,
            config: config.clone(),
            tls,
            crl,
            enrollment,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, CollectorError> {
        self.endpoint
            .local_addr()
            .map_err(|e| CollectorError::io("QUIC local address", e))
    }

    /// Accepts agents until `shutdown` resolves; then stops accepting, lets sessions finish their
    /// current batch (bounded wait), and closes.
    pub async fn serve(
        self,
        context: Arc<IngestContext>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        context
            .counters
            .udp_receive_buffer_bytes
            .set(i64::try_from(self.recv_buffer_bytes).unwrap_or(i64::MAX));
        let _drop_watch = AbortOnDrop(tokio::spawn(watch_socket_drops(
            self.drops,
            self.recv_buffer_bytes,
            context.limits.clone(),
        )));
        let (revoked_tx, revoked_rx) = tokio::sync::watch::channel(self.crl.revoked());
        let (watch_stop, watch_stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(self.crl.run(
            self.endpoint.clone(),
            self.tls.clone(),
            revoked_tx,
            async move {
                let _ = watch_stopped.await;
            },
        ));
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
        let handshakes = Arc::new(Semaphore::new(self.config.max_handshakes));
        let per_source = Arc::new(PerSource::default());
        let per_source_max = self.config.max_connections_per_source.max(1);
        let mut sessions = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => break,
                },
                // Reap finished sessions so the set does not grow without bound.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let remote = incoming.remote_address();
            let Ok(connection_permit) = connections.clone().try_acquire_owned() else {
                context.limits.exceeded(Limit::Connections, 1, || {
                    format!(
                        "refusing {remote}: max_connections ({}) reached",
                        self.config.max_connections
                    )
                });
                context.counters.refused("max_connections");
                incoming.refuse();
                continue;
            };
            let Some(source_slot) = PerSource::try_take(&per_source, remote.ip(), per_source_max)
            else {
                context.limits.exceeded(Limit::ConnectionsPerSource, 1, || {
                    format!(
                        "refusing {remote}: {} already holds max_connections_per_source ({per_source_max})",
                        remote.ip()
                    )
                });
                context.counters.refused("connections_per_source");
                incoming.refuse();
                continue;
            };
            let Ok(handshake_permit) = handshakes.clone().try_acquire_owned() else {
                context.limits.exceeded(Limit::Handshakes, 1, || {
                    format!(
                        "refusing {remote}: max_handshakes ({}) in progress",
                        self.config.max_handshakes
                    )
                });
                context.counters.refused("max_handshakes");
                incoming.refuse();
                continue;
            };
            let context = context.clone();
            let revoked = revoked_rx.clone();
            let enrollment = self.enrollment.clone();
            let span = tracing::info_span!("agent", %remote, id = tracing::field::Empty);
            sessions.spawn(
                async move {
                    let connection = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            // A client without a valid certificate ends here (bad cert, other CA,
                            // wrong ALPN): logged with the reason, nobody else affected.
                            warn!("handshake failed: {e}");
                            if let Some(reason) = tls::handshake_refusal(&e) {
                                context.counters.refused(reason);
                            }
                            return;
                        }
                    };
                    drop(handshake_permit);
                    match admit(&connection) {
                        Admit::Report => {
                            session::run(connection, context, revoked, enrollment).await
                        }
                        Admit::Enroll => enrollment.run(connection, remote, &context.limits).await,
                        Admit::NoCertificate => {
                            // What the TLS handshake refused before enrollment existed, refused
                            // now before a byte of the session is read, and counted the same.
                            warn!("handshake failed: the client presented no certificate");
                            context.counters.refused("no_certificate");
                            connection.close(
                                quinn::VarInt::from_u32(egresswatch_wire::close::REFUSED),
                                b"a client certificate is required",
                            );
                        }
                    }
                    drop(source_slot);
                    drop(connection_permit);
                }
                .instrument(span),
            );
        }
        // Stop accepting (the watcher first, so it cannot install a configuration again); give
        // sessions a moment to finish what they are writing.
        let _ = watch_stop.send(());
        let _ = watcher.await;
        self.endpoint.set_server_config(None);
        info!(sessions = sessions.len(), "ingest stopping");
        let drain = async { while sessions.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        self.endpoint.close(
            quinn::VarInt::from_u32(egresswatch_wire::close::SHUTDOWN),
            b"collector shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// What a connection that finished its handshake may do.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// A verified agent certificate: the report session.
    Report,
    /// The enrollment protocol: present a join token (with or without a certificate).
    Enroll,
    /// The report protocol without a certificate: refused.
    NoCertificate,
}

fn admit(connection: &quinn::Connection) -> Admit {
    let alpn = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(egresswatch_wire::version::ENROLL_ALPN) {
        return Admit::Enroll;
    }
    // rustls only hands a peer identity out once it verified the chain.
    let verified = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .is_some_and(|chain| !chain.is_empty());
    if verified {
        Admit::Report
    } else {
        Admit::NoCertificate
    }
}

/// The key that signs QUIC stateless resets, kept in `path` (created on first start, 0600).
///
/// A collector that kept its key across a restart can answer a packet of a connection from its
/// previous life with a stateless reset the agent accepts, so agents reconnect within a round trip
/// instead of waiting out the idle timeout (30 s) — what the soak showed after every SIGKILL.
pub fn reset_key(path: &std::path::Path) -> Result<ring::hmac::Key, CollectorError> {
    use std::io::Write;
    let io = |what: &str, e| CollectorError::io(format!("{what} {}", path.display()), e);
    let secret = match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 64 => bytes,
        Ok(bytes) => {
            return Err(CollectorError::Config {
                path: path.display().to_string(),
                reason: format!(
                    "the QUIC reset key must be 64 bytes, found {}; delete it to make a new one",
                    bytes.len()
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 64];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_0600()
                .open(&tmp)
                .map_err(|e| io("creating", e))?;
            file.write_all(&secret).map_err(|e| io("writing", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
            secret
        }
        Err(e) => return Err(io("reading", e)),
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
}

/// The key of quinn's connection-ID tags, derived from the persistent reset key so that it too
/// outlives a restart.
fn connection_id_key(reset_key: &ring::hmac::Key) -> u64 {
    let tag = ring::hmac::sign(reset_key, b"egresswatch quic connection id key");
    let mut key = [0u8; 8];
    key.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_be_bytes(key)
}

/// `mode(0o600)` on Unix, nothing elsewhere.
trait Private {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Private for std::fs::OpenOptions {
    #[cfg(unix)]
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
    #[cfg(not(unix))]
    fn mode_0600(&mut self) -> &mut Self {
        self
    }
}

/// Counts the packets the kernel dropped for the QUIC socket (its receive buffer was full) as
/// hits of [`Limit::UdpReceiveBuffer`], checking once a second.
async fn watch_socket_drops(drops: udp::SocketDrops, buffer_bytes: usize, limits: LimitCounters) {
    let Some(mut seen) = drops.read() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = drops.read() else {
            continue;
        };
        if now > seen {
            limits.exceeded(Limit::UdpReceiveBuffer, now - seen, || {
                format!(
                    "the kernel dropped {} QUIC packets: the socket's receive buffer ({buffer_bytes} \
                     bytes) was full; raise quic.udp_recv_buffer_bytes and net.core.rmem_max",
                    now - seen
                )
            });
        }
        seen = now;
    }
}

/// Aborts a helper task when what it belongs to (the endpoint, a session) ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
