//! QUIC ingest: the listener agents report to.
//!
//! Mutual TLS (quinn + rustls, ring): a client must present a certificate that chains to the
//! fleet CA, and its subject CN is its identity — an agent can only ever write as itself.
//! Every resource is bounded: concurrent connections, handshakes in progress, streams per
//! connection, frame size, flow-control windows (sized for small reports, not bulk transfer).
//! Each connection runs in [`session`] in its own task and tracing span; bad bytes close that
//! one connection, never the listener. The CA's revocation list is checked at the handshake and
//! followed while running ([`revocation`]): a revoked agent is refused and its live sessions end.

pub mod revocation;
pub mod session;
pub mod tls;

use crate::ca::Authority;
use crate::error::CollectorError;
use crate::http::IngestCounters;
use crate::pipeline::ResultObserver;
use crate::store::Store;
use egresswatch_wire::limits::MAX_FRAME_BYTES;
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
    /// UDP socket buffer sizes (bytes); unset keeps the kernel default.
    pub udp_recv_buffer_bytes: Option<usize>,
    pub udp_send_buffer_bytes: Option<usize>,
    /// Generic segmentation offload; some kernels and NICs misreport it.
    pub segmentation_offload: bool,
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
        }
    }
}

/// What every session needs.
pub struct IngestContext {
    pub store: Arc<dyn Store>,
    pub observer: Arc<dyn ResultObserver>,
    pub counters: IngestCounters,
    pub max_frame_bytes: usize,
}

/// A bound listener; `serve` runs it until shutdown.
pub struct Ingest {
    endpoint: quinn::Endpoint,
    config: QuicConfig,
    tls: Arc<tls::TlsMaterial>,
    crl: revocation::CrlWatch,
}

impl Ingest {
    /// Binds the UDP socket and sets up mutual TLS with the fleet CA and its revocation list.
    pub fn bind(config: &QuicConfig, authority: &Authority) -> Result<Ingest, CollectorError> {
        let tls = Arc::new(tls::TlsMaterial::new(config, authority)?);
        let crl = revocation::CrlWatch::open(authority.dir())?;
        let server_config = tls.server_config(crl.current().map(|l| &l.der))?;
        let socket = udp_socket(config)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| CollectorError::io(format!("QUIC endpoint on {}", config.listen), e))?;
        Ok(Ingest {
            endpoint,
            config: config.clone(),
            tls,
            crl,
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
        self.tls.count_refusals_in(context.counters.clone());
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
                warn!(%remote, "refusing a connection: max_connections reached");
                context.counters.refused("max_connections");
                incoming.refuse();
                continue;
            };
            let Ok(handshake_permit) = handshakes.clone().try_acquire_owned() else {
                warn!(%remote, "refusing a connection: max_handshakes in progress");
                context.counters.refused("max_handshakes");
                incoming.refuse();
                continue;
            };
            let context = context.clone();
            let revoked = revoked_rx.clone();
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
                    session::run(connection, context, revoked).await;
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
        self.endpoint
            .close(session::CLOSE_SHUTDOWN, b"collector shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

fn udp_socket(config: &QuicConfig) -> Result<std::net::UdpSocket, CollectorError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = config.listen;
    let io = |what: &str, e| CollectorError::io(format!("{what} for QUIC on {addr}"), e);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io("UDP socket", e))?;
    if addr.is_ipv6() {
        // [::]:port takes IPv4 too.
        let _ = socket.set_only_v6(false);
    }
    if let Some(bytes) = config.udp_recv_buffer_bytes {
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| io("SO_RCVBUF", e))?;
    }
    if let Some(bytes) = config.udp_send_buffer_bytes {
        socket
            .set_send_buffer_size(bytes)
            .map_err(|e| io("SO_SNDBUF", e))?;
    }
    socket.bind(&addr.into()).map_err(|e| io("binding", e))?;
    Ok(socket.into())
}
