//! A simulated agent: the smallest real QUIC client of the session protocol, used by the
//! collector's tests, the ingest benchmark and the soak through dev-dependencies. A workspace
//! crate of its own (`publish = false`) so that it is never part of the shipped collector; it
//! frames its messages with the wire's framed stream, as the agent and the collector do. Like the
//! real agent it reads the collector's probe requests on the report stream between acks, keeps
//! them for the test to take ([`SimAgent::next_request`]) and can answer one with a `requested`
//! result ([`SimAgent::answer`]).

/// A throwaway PostgreSQL cluster for tests ([`postgres::PgCluster`]).
pub mod postgres;

use anyhow::{anyhow, bail, Context, Result};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::version::{ALPN, WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{
    AgentMessage, Batch, ClockQuality, CollectorMessage, Family, Hello, Labels, Level, Outcome,
    PhaseTimings, ProbeCause, ProbeRequest, ProbeResult, TargetSpec, WireError,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Credentials of one simulated agent.
#[derive(Clone)]
pub struct Credentials {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Credentials {
    /// Reads `ca.pem` and an issued agent's `.crt`/`.key`.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials> {
        Ok(Credentials {
            ca: CertificateDer::from_pem_file(ca)
                .with_context(|| format!("reading {}", ca.display()))?,
            chain: vec![CertificateDer::from_pem_file(cert)
                .with_context(|| format!("reading {}", cert.display()))?],
            key: Arc::new(
                PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("reading {}", key.display()))?,
            ),
        })
    }
}

/// Client options: what to present, and which ALPN to speak (tests try wrong ones).
pub fn client_config(
    creds: Option<&Credentials>,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match creds {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(30))?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The report stream's halves, framed as the agent frames them.
pub type Sender = FrameWriter<quinn::SendStream>;
pub type Receiver = FrameReader<quinn::RecvStream>;

/// One connected session.
pub struct SimAgent {
    pub connection: quinn::Connection,
    send: Sender,
    recv: Receiver,
    /// Probe requests read while waiting for an ack, oldest first.
    requests: VecDeque<ProbeRequest>,
}

impl SimAgent {
    /// Connects through `endpoint` (one client endpoint can carry many agents).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<SimAgent> {
        let connection = endpoint
            .connect_with(config, addr, "egresswatch-collector")?
            .await?;
        let (send, recv) = connection.open_bi().await?;
        Ok(SimAgent {
            connection,
            send: FrameWriter::new(send, MAX_FRAME_BYTES),
            recv: FrameReader::new(recv, MAX_FRAME_BYTES),
            requests: VecDeque::new(),
        })
    }

    pub async fn send(&mut self, message: &AgentMessage) -> Result<()> {
        self.send
            .send(message)
            .await
            .map_err(|e| anyhow!("sending: {}", stream_error(&e)))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.send
            .send_raw(bytes)
            .await
            .map_err(|e| anyhow!("sending: {}", stream_error(&e)))
    }

    /// Reads the collector's next message.
    pub async fn receive(&mut self) -> Result<CollectorMessage> {
        read_message(&mut self.recv).await
    }

    /// The connection and its report stream's halves, for a caller that reads acks in a task
    /// of its own while it sends (as the real agent does).
    pub fn split(self) -> (quinn::Connection, Sender, Receiver) {
        (self.connection, self.send, self.recv)
    }

    /// Hello, and the collector's answer (welcome or refusal).
    pub async fn hello(&mut self, labels: Labels) -> Result<CollectorMessage> {
        self.hello_with(hello(labels)).await
    }

    /// This hello, and the collector's answer (welcome or refusal).
    pub async fn hello_with(&mut self, hello: Hello) -> Result<CollectorMessage> {
        self.send(&AgentMessage::Hello(hello)).await?;
        self.receive().await
    }

    /// Sends results as one batch and waits for its ack.
    pub async fn report(&mut self, results: &[ProbeResult]) -> Result<egresswatch_wire::Ack> {
        let batch = Batch::pack(results, ClockQuality::Synchronised, 0)?;
        self.send(&AgentMessage::Batch(batch)).await?;
        self.ack().await
    }

    /// Reads the collector's next ack; probe requests that come before it are kept for
    /// [`SimAgent::next_request`].
    pub async fn ack(&mut self) -> Result<egresswatch_wire::Ack> {
        loop {
            match self.receive().await? {
                CollectorMessage::Ack(ack) => return Ok(ack),
                CollectorMessage::ProbeRequest(request) => self.requests.push_back(request),
                other => bail!("expected an ack, got {other:?}"),
            }
        }
    }

    /// The next probe request, read while waiting for an ack or within `within`; `None` if
    /// none came. Anything else the collector says meanwhile is an error.
    pub async fn next_request(&mut self, within: Duration) -> Result<Option<ProbeRequest>> {
        if let Some(request) = self.requests.pop_front() {
            return Ok(Some(request));
        }
        match tokio::time::timeout(within, self.receive()).await {
            Err(_) => Ok(None),
            Ok(Ok(CollectorMessage::ProbeRequest(request))) => Ok(Some(request)),
            Ok(Ok(other)) => bail!("expected a probe request, got {other:?}"),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Answers `request` as the agent would: one result of it marked `requested`, with
    /// sequence number `seq` and `outcome`, in a batch of its own; returns the batch's ack.
    pub async fn answer(
        &mut self,
        seq: u64,
        request: &ProbeRequest,
        outcome: Outcome,
        at_unix_ms: i64,
    ) -> Result<egresswatch_wire::Ack> {
        self.report(&[requested_result(seq, request, outcome, at_unix_ms)])
            .await
    }

    pub async fn finish(mut self) {
        let _ = self.send.get_mut().finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.closed()).await;
    }
}

/// Reads one collector message from a report stream.
pub async fn read_message(recv: &mut Receiver) -> Result<CollectorMessage> {
    match recv.read::<CollectorMessage>().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => bail!("reading a frame: the collector finished the stream"),
        Err(e) => bail!("reading a frame: {}", stream_error(&e)),
    }
}

/// A framed stream's error, with quinn's "connection lost" given its cause.
pub fn stream_error(e: &WireError) -> String {
    let WireError::Io(io) = e else {
        return e.to_string();
    };
    let inner = io.get_ref();
    let cause = match (
        inner.and_then(|i| i.downcast_ref::<quinn::ReadError>()),
        inner.and_then(|i| i.downcast_ref::<quinn::WriteError>()),
    ) {
        (Some(quinn::ReadError::ConnectionLost(c)), _)
        | (_, Some(quinn::WriteError::ConnectionLost(c))) => c,
        _ => return io.to_string(),
    };
    format!("connection lost: {cause}")
}

pub fn hello(labels: Labels) -> Hello {
    Hello {
        wire_major: WIRE_MAJOR,
        wire_minor: WIRE_MINOR,
        agent_version: "sim".into(),
        labels,
        targets: Vec::new(),
        clock: ClockQuality::Synchronised,
        status: String::new(),
        accepts_probe_requests: false,
        spool_next_seq: 0,
        spool_new: false,
    }
}

/// A hello that announces probing `targets` (host and ports, at connect level) and says whether
/// the agent takes probe requests, as an agent of wire minor `wire_minor` would.
pub fn hello_probing(
    labels: Labels,
    targets: &[(&str, &[u16])],
    wire_minor: u16,
    accepts_probe_requests: bool,
) -> Hello {
    Hello {
        wire_minor,
        targets: targets
            .iter()
            .map(|(host, ports)| TargetSpec {
                host: host.to_string(),
                ports: ports.to_vec(),
                level: Level::Connect,
                interval_s: 60,
            })
            .collect(),
        accepts_probe_requests,
        ..hello(labels)
    }
}

/// A result of `target`:`port` over IPv4 with `outcome`, as the schedule probes it.
pub fn result_of(
    seq: u64,
    target: &str,
    port: u16,
    outcome: Outcome,
    at_unix_ms: i64,
) -> ProbeResult {
    ProbeResult {
        seq,
        at_unix_ms,
        target: target.into(),
        port,
        family: Family::Ipv4,
        level: Level::Connect,
        outcome,
        address: Some("198.19.0.25".parse().expect("literal")),
        ..Default::default()
    }
}

/// The answer to `request`: its destination probed, marked `requested` with its id.
pub fn requested_result(
    seq: u64,
    request: &ProbeRequest,
    outcome: Outcome,
    at_unix_ms: i64,
) -> ProbeResult {
    ProbeResult {
        family: request.family,
        cause: ProbeCause::Requested,
        request_id: Some(request.request_id),
        ..result_of(seq, &request.target, request.port, outcome, at_unix_ms)
    }
}

/// A plausible result: `seq` at `at_unix_ms`, cycling through the SMTP ports.
pub fn result(seq: u64, at_unix_ms: i64) -> ProbeResult {
    const PORTS: [u16; 5] = [25, 465, 587, 2525, 443];
    ProbeResult {
        seq,
        at_unix_ms,
        target: "mx.lab.test".into(),
        port: PORTS[(seq % 5) as usize],
        family: Family::Ipv4,
        level: Level::Connect,
        outcome: if seq.is_multiple_of(5) {
            Outcome::Timeout
        } else {
            Outcome::Ok
        },
        address: Some("198.19.0.25".parse().expect("literal")),
        timings: PhaseTimings {
            connect_us: Some(800 + (seq % 97) as u32 * 13),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The default ALPN.
pub const DEFAULT_ALPN: &[u8] = ALPN;

/// A client endpoint on 127.0.0.1 whose UDP socket asks for `buffer_bytes` of receive and send
/// buffer. Thousands of simulated agents share a few sockets; with the kernel's ~208 KiB default
/// the kernel drops their packets and a benchmark would measure its own loss.
pub fn client_endpoint(buffer_bytes: usize) -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(buffer_bytes)?;
    socket.set_send_buffer_size(buffer_bytes)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// The machine's count of UDP datagrams dropped for a full receive buffer (`Udp: RcvbufErrors`
/// in /proc/net/snmp), over every socket; 0 where the kernel does not tell.
pub fn udp_receive_buffer_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}
