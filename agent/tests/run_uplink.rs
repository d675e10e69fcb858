//! The uplink against a real QUIC server started inside the test (quinn + rustls, certificates
//! made here with rcgen): a Refusal and a TLS rejection of the agent's certificate both end as
//! "rejected by the collector: …" in the state the agent reports, and neither makes it retry in
//! a tight loop.

use egresswatch_agent::run::config::CollectorConfig;
use egresswatch_agent::run::{uplink, Shared};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::{AgentMessage, CollectorMessage, Labels, Refusal};
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

/// A collector stand-in: trusts `client_ca` for agents, presents a certificate from `server_ca`.
/// Each connection: read the hello, answer with a Refusal. Returns its address and a counter of
/// connections it accepted.
fn refusing_server(
    server_ca: &Ca,
    client_ca: &Ca,
) -> (quinn::Endpoint, SocketAddr, Arc<AtomicUsize>) {
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
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
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
        address: addr.to_string(),
        server_name: "egresswatch-collector".into(),
        ca: write_pem(dir, "ca.pem", trust.cert.pem()),
        cert: write_pem(dir, "agent.crt", cert.pem()),
        key: write_pem(dir, "agent.key", key.serialize_pem()),
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
