//! The uplink against a real QUIC server started inside the test (quinn + rustls, certificates
//! made here with rcgen): a Refusal and a TLS rejection of the agent's certificate both end as
//! "rejected by the collector: …" in the state the agent reports, and neither makes it retry in
//! a tight loop. And evidence on demand through the whole agent (schedule, spool, uplink) against
//! a welcoming stand-in that asks for probes: a series that closes is confirmed by re-probes sent
//! at once, a request for a configured series is answered with a `requested` result and one for
//! anything else is not.

use egresswatch_agent::probe::ProbeOptions;
use egresswatch_agent::run::config::{CollectorConfig, TargetConfig};
use egresswatch_agent::run::evidence::EvidenceSettings;
use egresswatch_agent::run::schedule::{self, Plan};
use egresswatch_agent::run::spool::Spool;
use egresswatch_agent::run::{uplink, Shared};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::{
    Ack, AgentMessage, CollectorMessage, Family, Labels, Level, Outcome, ProbeCause, ProbeRequest,
    ProbeResult, Refusal, Welcome,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn issue(ca: &Ca, name: &str, client: bool) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert, key)
}

/// A collector stand-in's endpoint: trusts `client_ca` for agents, presents a certificate from
/// `server_ca`.
fn server_endpoint(server_ca: &Ca, client_ca: &Ca) -> quinn::Endpoint {
    let (cert, key) = issue(server_ca, "egresswatch-collector", false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    tls.alpn_protocols = vec![egresswatch_wire::version::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Each connection: read the hello, answer with a Refusal. Returns its address and a counter of
/// connections it accepted.
fn refusing_server(
    server_ca: &Ca,
    client_ca: &Ca,
) -> (quinn::Endpoint, SocketAddr, Arc<AtomicUsize>) {
    let endpoint = server_endpoint(server_ca, client_ca);
    let addr = endpoint.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok((send, recv)) = connection.accept_bi().await else {
                    return;
                };
                let mut recv = FrameReader::new(recv, MAX_FRAME_BYTES);
                let mut send = FrameWriter::new(send, MAX_FRAME_BYTES);
                let Ok(Some(hello)) = recv.read::<AgentMessage>().await else {
                    return;
                };
                assert!(matches!(hello, AgentMessage::Hello(_)));
                let refusal = CollectorMessage::Refusal(Refusal {
                    reason: "agent revoked".into(),
                    retry_after_s: 0,
                });
                send.send(&refusal).await.unwrap();
                let _ = send.get_mut().finish();
                tokio::time::sleep(Duration::from_millis(200)).await;
                connection.close(egresswatch_wire::close::REFUSED.into(), b"refused");
            });
        }
    });
    (endpoint, addr, accepted)
}

fn write_pem(dir: &Path, name: &str, pem: String) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn collector_config(dir: &Path, addr: SocketAddr, trust: &Ca, agent_ca: &Ca) -> CollectorConfig {
    let (cert, key) = issue(agent_ca, "agent-7", true);
    CollectorConfig {
        address: vec![addr.to_string()],
        server_name: "egresswatch-collector".into(),
        ca: write_pem(dir, "ca.pem", trust.cert.pem()),
        cert: write_pem(dir, "agent.crt", cert.pem()),
        key: write_pem(dir, "agent.key", key.serialize_pem()),
        linger_setting: None,
        linger: Duration::from_secs(30),
    }
}

/// Runs the uplink for `for_how_long`, then stops it; returns the state it reports.
async fn run_uplink(config: CollectorConfig, for_how_long: Duration) -> String {
    let labels = Labels {
        provider: "lab".into(),
        account: "a".into(),
        region: "r".into(),
        instance: "i".into(),
    };
    let shared = Arc::new(Shared::new(labels, Vec::new(), None, String::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(uplink::run(config, shared.clone(), stop_rx));
    let started = Instant::now();
    while started.elapsed() < for_how_long {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the uplink stops on shutdown")
        .unwrap();
    shared.uplink_state()
}

#[tokio::test]
async fn a_refusal_is_reported_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("fleet");
    let (_endpoint, addr, accepted) = refusing_server(&ca, &ca);
    let config = collector_config(dir.path(), addr, &ca, &ca);
    let state = run_uplink(config, Duration::from_secs(4)).await;
    assert_eq!(state, "rejected by the collector: agent revoked");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one attempt in 4 s: a refusal backs off to the maximum"
    );
}

#[tokio::test]
async fn a_certificate_the_collector_does_not_trust_is_reported_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = new_ca("fleet");
    let other = new_ca("someone else");
    // The server trusts only `fleet` for clients; the agent's certificate comes from `other`.
    let (_endpoint, addr, accepted) = refusing_server(&fleet, &fleet);
    let config = collector_config(dir.path(), addr, &fleet, &other);
    let state = run_uplink(config, Duration::from_secs(4)).await;
    assert!(
        state.starts_with("rejected by the collector: "),
        "state: {state:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one attempt in 4 s, not a tight loop"
    );
}

#[tokio::test]
async fn an_unreachable_collector_is_retried_not_called_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("fleet");
    // A UDP port with nobody behind it.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let config = collector_config(dir.path(), addr, &ca, &ca);
    let state = run_uplink(config, Duration::from_secs(3)).await;
    assert!(
        !state.contains("rejected"),
        "an absent collector is not a rejection: {state:?}"
    );
}

/// Welcomes each connection, sends `requests` right after the welcome, acks every batch and
/// hands its results (and whether the hello accepts requests) to the test.
fn requesting_server(
    ca: &Ca,
    requests: Vec<ProbeRequest>,
) -> (
    quinn::Endpoint,
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<ProbeResult, bool>>,
) {
    let endpoint = server_endpoint(ca, ca);
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let (tx, requests) = (tx.clone(), requests.clone());
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok((send, recv)) = connection.accept_bi().await else {
                    return;
                };
                let mut recv = FrameReader::new(recv, MAX_FRAME_BYTES);
                let mut send = FrameWriter::new(send, MAX_FRAME_BYTES);
                let Ok(Some(AgentMessage::Hello(hello))) = recv.read::<AgentMessage>().await else {
                    return;
                };
                let _ = tx.send(Err(hello.accepts_probe_requests));
                let welcome = CollectorMessage::Welcome(Welcome {
                    wire_major: egresswatch_wire::version::WIRE_MAJOR,
                    wire_minor: egresswatch_wire::version::WIRE_MINOR,
                    collector_version: "stand-in".into(),
                    agent_id: "agent-7".into(),
                    acked_seq: 0,
                    ..Default::default()
                });
                send.send(&welcome).await.unwrap();
                for request in requests {
                    send.send(&CollectorMessage::ProbeRequest(request))
                        .await
                        .unwrap();
                }
                while let Ok(Some(AgentMessage::Batch(batch))) = recv.read::<AgentMessage>().await {
                    let results = batch.unpack().unwrap();
                    let up_to_seq = results.last().map(|r| r.seq).unwrap_or(0);
                    for r in results {
                        let _ = tx.send(Ok(r));
                    }
                    let ack = CollectorMessage::Ack(Ack {
                        up_to_seq,
                        accepted: 1,
                        duplicates: 0,
                        discarded: 0,
                        reason: String::new(),
                    });
                    if send.send(&ack).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, addr, rx)
}

/// A loopback port that accepts until the returned task is aborted; then it refuses.
async fn closable_port() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_series_is_confirmed_at_once_and_only_configured_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("fleet");
    let (steady_port, _steady) = closable_port().await;
    let (closing_port, closing) = closable_port().await;
    let request = |request_id, target: &str, port| ProbeRequest {
        request_id,
        target: target.into(),
        port,
        family: Family::Ipv4,
        deadline_ms: 10_000,
    };
    let requests = vec![
        request(1, "127.0.0.1", steady_port),
        request(2, "mx.unconfigured.test", 25),
        request(3, "127.0.0.1", 9),
    ];
    let (_endpoint, addr, mut heard) = requesting_server(&ca, requests);
    let mut config = collector_config(dir.path(), addr, &ca, &ca);
    // Far longer than the test: what arrives came because it was news or requested.
    config.linger = Duration::from_secs(120);

    let spool = Spool::open(&dir.path().join("spool"), 1 << 20).unwrap();
    let shared = Arc::new(Shared::new(
        Labels::default(),
        Vec::new(),
        Some(spool),
        String::new(),
    ));
    let plan = Plan {
        targets: vec![TargetConfig {
            host: "127.0.0.1".into(),
            ports: vec![steady_port, closing_port],
            level: Level::Connect,
            interval: Duration::from_secs(1),
        }],
        options: ProbeOptions::new(
            Duration::from_secs(2),
            Arc::new(rustls::RootCertStore::empty()),
        ),
        floor: Duration::ZERO,
        concurrency: 4,
        evidence: EvidenceSettings {
            confirm_probes: 2,
            confirm_spacing: Duration::from_millis(200),
            ..Default::default()
        },
    };
    let (_plans_tx, plans) = tokio::sync::watch::channel(plan);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let schedule = tokio::spawn(schedule::run(plans, shared.clone(), stop.clone()));
    let uplink = tokio::spawn(uplink::run(config, shared.clone(), stop));

    let mut results: Vec<ProbeResult> = Vec::new();
    let mut accepts = None;
    let mut closed = false;
    let started = Instant::now();
    let done = |results: &[ProbeResult]| {
        let confirmed = results
            .iter()
            .filter(|r| {
                r.port == closing_port
                    && r.cause == ProbeCause::Confirmation
                    && r.outcome == Outcome::Refused
            })
            .count();
        let answered = results.iter().any(|r| r.request_id == Some(1));
        confirmed >= 2 && answered
    };
    while !done(&results) && started.elapsed() < Duration::from_secs(30) {
        // Close the port once its series has settled open (news is sent at once, so the
        // answer to request 1 or the first results show up without waiting for the linger).
        if !closed && started.elapsed() > Duration::from_millis(2500) {
            closing.abort();
            closed = true;
        }
        match tokio::time::timeout(Duration::from_millis(200), heard.recv()).await {
            Ok(Some(Ok(result))) => results.push(result),
            Ok(Some(Err(hello_accepts))) => accepts = Some(hello_accepts),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), schedule).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), uplink).await;

    assert_eq!(accepts, Some(true), "the hello says requests are answered");
    let answer = results
        .iter()
        .find(|r| r.request_id == Some(1))
        .unwrap_or_else(|| panic!("request 1 answered: {results:#?}"));
    assert_eq!(answer.cause, ProbeCause::Requested);
    assert_eq!(
        (answer.port, answer.family, answer.level, answer.outcome),
        (steady_port, Family::Ipv4, Level::Connect, Outcome::Ok)
    );
    assert!(
        results
            .iter()
            .all(|r| r.request_id.is_none() || r.request_id == Some(1)),
        "requests for an unconfigured target or port are not answered: {results:#?}"
    );
    let confirmations: Vec<&ProbeResult> = results
        .iter()
        .filter(|r| r.cause == ProbeCause::Confirmation)
        .collect();
    assert!(
        confirmations.len() >= 2
            && confirmations
                .iter()
                .all(|r| r.port == closing_port && r.outcome == Outcome::Refused),
        "confirmations of the closed port only: {confirmations:#?}"
    );
    // The departure itself was a scheduled result that came before its confirmations.
    let first_confirmation = confirmations[0].seq;
    assert!(results.iter().any(|r| r.port == closing_port
        && r.cause == ProbeCause::Scheduled
        && r.outcome == Outcome::Refused
        && r.seq < first_confirmation));
}
