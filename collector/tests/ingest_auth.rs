//! Authentication edge cases against the real collector binary over real QUIC on loopback:
//! expired, revoked (at the handshake and mid-session), wrong-usage and foreign certificates, a
//! replay of another agent's batch, and a downgrade to an older wire version. Each refusal must
//! reach the client with a clear reason, be logged once by the collector and be counted in
//! `/metrics` under its reason.

mod support;

use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::{Inspect, ResultStore};
use egresswatch_sim::{self as sim, Credentials};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::version::{WIRE_MAJOR, WIRE_MINOR};
use egresswatch_wire::{encode_frame, AgentMessage, Batch, ClockQuality, CollectorMessage};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::collector_bin;
use support::quic::{client_endpoint, connect, labels, now_ms, QuicCollector};
use time::OffsetDateTime;

/// TLS alerts as QUIC carries them: CRYPTO_ERROR 0x100 + the alert number (RFC 9001 §4.8).
const ALERT_UNSUPPORTED_CERTIFICATE: u64 = 0x100 + 43;
const ALERT_CERTIFICATE_UNKNOWN: u64 = 0x100 + 46;
const ALERT_CERTIFICATE_REVOKED: u64 = 0x100 + 44;
const ALERT_CERTIFICATE_EXPIRED: u64 = 0x100 + 45;
const ALERT_DECRYPT_ERROR: u64 = 0x100 + 51;
const ALERT_NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;

/// A certificate signed by this collector's CA key with parameters `ca issue` never uses.
fn forge(
    collector: &QuicCollector,
    id: &str,
    tweak: impl FnOnce(&mut CertificateParams),
) -> Credentials {
    let ca_dir = collector.ca_dir();
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![id.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    tweak(&mut params);
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Credentials {
        ca: CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap(),
        chain: vec![cert.der().clone()],
        key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
    }
}

/// `egresswatch_ingest_refusals_by_reason_total{reason=...}`, 0 when absent.
async fn refusals(collector: &QuicCollector, reason: &str) -> u64 {
    collector
        .metric(&format!(
            "egresswatch_ingest_refusals_by_reason_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap_or(0)
}

/// Connects with `creds` and returns the QUIC error code the collector closed the handshake
/// with. In TLS 1.3 the client's handshake completes before the server has checked its
/// certificate, so the refusal arrives as the connection closing right after.
async fn refused_with(endpoint: &quinn::Endpoint, addr: SocketAddr, creds: &Credentials) -> u64 {
    let config = sim::client_config(Some(creds), &creds.ca, sim::DEFAULT_ALPN).unwrap();
    closed_with(endpoint, addr, config).await
}

/// [`refused_with`] for any client configuration.
async fn closed_with(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> u64 {
    let error = match endpoint
        .connect_with(config, addr, "egresswatch-collector")
        .unwrap()
        .await
    {
        Err(e) => e,
        Ok(connection) => tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("the collector closed a connection with a refused certificate"),
    };
    match error {
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        other => panic!("expected a TLS alert, got {other:?}"),
    }
}

fn good_ca(collector: &QuicCollector) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(collector.ca_dir().join("ca.pem")).unwrap()
}

fn results(first: u64, count: u64) -> Vec<egresswatch_wire::ProbeResult> {
    (first..first + count)
        .map(|s| sim::result(s, now_ms() + s as i64))
        .collect()
}

/// Waits (bounded) until the collector's log holds `needle` `count` times.
fn wait_for_log(collector: &QuicCollector, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = collector.log_text();
        if log.matches(needle).count() >= count || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let expired = forge(&collector, "expired-vm", |p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    });
    let code = refused_with(&endpoint, collector.quic, &expired).await;
    assert_eq!(code, ALERT_CERTIFICATE_EXPIRED, "alert {code:#x}");
    assert_eq!(refusals(&collector, "expired").await, 1);
    let log = wait_for_log(&collector, "ingest: handshake failed", 1);
    assert_eq!(log.matches("ingest: handshake failed").count(), 1, "{log}");
    // A not-yet-valid certificate is refused too, under its own reason.
    let early = forge(&collector, "early-vm", |p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
    });
    refused_with(&endpoint, collector.quic, &early).await;
    assert_eq!(refusals(&collector, "not_yet_valid").await, 1);
    assert_eq!(
        collector.stored("expired-vm") + collector.stored("early-vm"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_usage_and_a_foreign_ca_are_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let addr = collector.quic;

    // Signed by the fleet CA, but for servers only.
    let server_only = forge(&collector, "server-only", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let code = refused_with(&endpoint, addr, &server_only).await;
    assert_eq!(code, ALERT_UNSUPPORTED_CERTIFICATE, "alert {code:#x}");
    // Another purpose altogether.
    let code_signing = forge(&collector, "code-signing", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    });
    refused_with(&endpoint, addr, &code_signing).await;
    // No extended key usage at all: WebPKI would take it for any purpose; the collector does not.
    let no_eku = forge(&collector, "no-eku", |p| p.extended_key_usages = Vec::new());
    let code = refused_with(&endpoint, addr, &no_eku).await;
    assert_eq!(code, ALERT_UNSUPPORTED_CERTIFICATE, "alert {code:#x}");
    assert_eq!(refusals(&collector, "wrong_usage").await, 3);

    // A CA certificate (CA:true, even with clientAuth) used as a client's.
    let ca_as_client = forge(&collector, "sub-ca", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    });
    let code = refused_with(&endpoint, addr, &ca_as_client).await;
    assert_eq!(code, ALERT_CERTIFICATE_UNKNOWN, "alert {code:#x}");
    assert_eq!(refusals(&collector, "wrong_usage").await, 4);

    // A certificate from another CA with the same layout and the same agent id as a real one.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca");
    egresswatch_collector::ca::init(&other_ca).unwrap();
    let stranger =
        egresswatch_collector::ca::issue_to_files(&other_ca, "good-agent", None).unwrap();
    let stranger = Credentials::from_files(
        &collector.ca_dir().join("ca.pem"),
        &stranger.cert,
        &stranger.key,
    )
    .unwrap();
    // Every fleet CA has the same name, so WebPKI finds "its" issuer and the signature fails.
    let code = refused_with(&endpoint, addr, &stranger).await;
    assert_eq!(code, ALERT_DECRYPT_ERROR, "alert {code:#x}");
    assert_eq!(refusals(&collector, "unknown_ca").await, 1);

    // No client certificate at all, and a client speaking another application protocol. A
    // certificate is optional at the TLS level (a new agent enrolls without one, on its own
    // ALPN), so the report protocol refuses a client without one as soon as the handshake is
    // done, before it reads anything: closed with the refusal code, counted as before.
    let no_cert = sim::client_config(None, &good_ca(&collector), sim::DEFAULT_ALPN).unwrap();
    let connection = endpoint
        .connect_with(no_cert, addr, "egresswatch-collector")
        .unwrap()
        .await
        .expect("the handshake itself completes");
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .expect("the collector closed a connection without a certificate");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                u64::from(close.error_code),
                u64::from(egresswatch_wire::close::REFUSED)
            );
            assert_eq!(&close.reason[..], b"a client certificate is required");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    let wrong_alpn = sim::client_config(Some(&server_only), &server_only.ca, b"smtp").unwrap();
    let code = closed_with(&endpoint, addr, wrong_alpn).await;
    assert_eq!(code, ALERT_NO_APPLICATION_PROTOCOL, "alert {code:#x}");
    assert_eq!(refusals(&collector, "no_certificate").await, 1);
    assert_eq!(refusals(&collector, "bad_alpn").await, 1);

    // The genuine agent of that id is unaffected, and nothing was stored for the others.
    let good = collector.issue("good-agent");
    let mut agent = connect(&endpoint, addr, &good).await.unwrap();
    assert!(matches!(
        agent.hello(labels("aws", "acct")).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));
    assert_eq!(agent.report(&results(1, 5)).await.unwrap().accepted, 5);
    agent.finish().await;
    let log = wait_for_log(&collector, "ingest: handshake failed", 7);
    assert_eq!(log.matches("ingest: handshake failed").count(), 7, "{log}");
    for id in ["server-only", "code-signing", "no-eku", "sub-ca"] {
        assert_eq!(collector.stored(id), 0, "{id}");
    }
    assert_eq!(collector.stored("good-agent"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_live_session_and_is_refused_after() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let addr = collector.quic;
    let doomed = collector.issue("doomed");
    let bystander = collector.issue("bystander");

    let mut live = connect(&endpoint, addr, &doomed).await.unwrap();
    assert!(matches!(
        live.hello(labels("gcp", "acct")).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));
    assert_eq!(live.report(&results(1, 10)).await.unwrap().accepted, 10);
    let mut other = connect(&endpoint, addr, &bystander).await.unwrap();
    assert!(matches!(
        other.hello(labels("gcp", "acct")).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));

    let revoked_at = Instant::now();
    collector.revoke("doomed");
    let closed = tokio::time::timeout(Duration::from_secs(10), live.connection.closed())
        .await
        .expect("the revoked agent's live session was closed within 10 s");
    let picked_up = revoked_at.elapsed();
    eprintln!("live session of a revoked agent closed {picked_up:?} after `ca revoke`");
    match &closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(2));
            let reason = String::from_utf8_lossy(&c.reason);
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // A new connection with the revoked certificate is refused at the handshake.
    let code = refused_with(&endpoint, addr, &doomed).await;
    assert_eq!(code, ALERT_CERTIFICATE_REVOKED, "alert {code:#x}");
    assert_eq!(refusals(&collector, "revoked").await, 2);

    // The other agent's session never noticed.
    assert_eq!(other.report(&results(1, 10)).await.unwrap().accepted, 10);
    other.finish().await;

    // Re-issuing the id gives a new certificate (a new serial) that works.
    let reissued = collector.issue("doomed");
    let mut back = connect(&endpoint, addr, &reissued).await.unwrap();
    match back.hello(labels("gcp", "acct")).await.unwrap() {
        CollectorMessage::Welcome(w) => assert_eq!(w.acked_seq, 10),
        other => panic!("{other:?}"),
    }
    back.finish().await;

    let log = wait_for_log(&collector, "ingest: handshake failed", 1);
    assert_eq!(
        log.matches("closing a live session").count(),
        1,
        "the live close is logged once:\n{log}"
    );
    assert_eq!(log.matches("ingest: handshake failed").count(), 1, "{log}");
    assert_eq!(collector.stored("doomed"), 10);
    assert_eq!(collector.stored("bystander"), 10);

    // `ca list` shows both certificates of the id, one revoked.
    let list = Command::new(collector_bin())
        .args(["ca", "list", "--dir"])
        .arg(collector.ca_dir())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let doomed_lines: Vec<_> = list.lines().filter(|l| l.starts_with("doomed ")).collect();
    assert_eq!(doomed_lines.len(), 2, "{list}");
    assert!(doomed_lines[0].contains("revoked"), "{list}");
    assert!(doomed_lines[1].ends_with("valid"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_is_stored_as_the_sender_and_once() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let addr = collector.quic;
    let alice = collector.issue("alice");
    let mallory = collector.issue("mallory");

    // Alice's hello and batch, as bytes on the wire.
    let hello = encode_frame(
        &AgentMessage::Hello(sim::hello(labels("hetzner", "acct"))),
        MAX_FRAME_BYTES,
    )
    .unwrap();
    let batch = Batch::pack(&results(1, 25), ClockQuality::Synchronised, 0).unwrap();
    let batch = encode_frame(&AgentMessage::Batch(batch), MAX_FRAME_BYTES).unwrap();

    let mut a = connect(&endpoint, addr, &alice).await.unwrap();
    a.send_raw(&hello).await.unwrap();
    assert!(
        matches!(a.receive().await.unwrap(), CollectorMessage::Welcome(w) if w.agent_id == "alice")
    );
    a.send_raw(&batch).await.unwrap();
    let ack = a.ack().await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted), (25, 25));
    a.finish().await;

    // Mallory replays both, byte for byte: the identity is her certificate, not the bytes.
    let mut m = connect(&endpoint, addr, &mallory).await.unwrap();
    m.send_raw(&hello).await.unwrap();
    match m.receive().await.unwrap() {
        CollectorMessage::Welcome(w) => {
            assert_eq!((w.agent_id.as_str(), w.acked_seq), ("mallory", 0))
        }
        other => panic!("{other:?}"),
    }
    m.send_raw(&batch).await.unwrap();
    let ack = m.ack().await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted), (25, 25));
    m.finish().await;

    // Alice's own batch replayed on a new session: her high-water mark makes it duplicates.
    let mut a = connect(&endpoint, addr, &alice).await.unwrap();
    a.send_raw(&hello).await.unwrap();
    match a.receive().await.unwrap() {
        CollectorMessage::Welcome(w) => assert_eq!(w.acked_seq, 25, "Mallory moved Alice's mark"),
        other => panic!("{other:?}"),
    }
    for _ in 0..2 {
        a.send_raw(&batch).await.unwrap();
        let ack = a.ack().await.unwrap();
        assert_eq!((ack.up_to_seq, ack.accepted, ack.duplicates), (25, 0, 25));
    }
    a.finish().await;
    drop(collector);

    let store = SqliteStore::open(&tmp.path().join("data/egresswatch.db")).unwrap();
    assert_eq!(store.count_results("alice").unwrap(), 25);
    assert_eq!(store.count_results("mallory").unwrap(), 25);
    let agents = store.agents().unwrap();
    assert_eq!(agents.len(), 2);
    let mut seqs: Vec<u64> = store
        .recent_results("alice", 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
}

/// The envelope of a hello with `major` in the frame header (what the frame reader checks
/// before it reads a payload).
fn hello_with_envelope_major(major: u8) -> Vec<u8> {
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 3).unwrap();
    rmp::encode::write_uint(&mut body, u64::from(major)).unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp_serde::encode::write(&mut body, &sim::hello(labels("aws", "acct"))).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_wire_major_is_refused_naming_both_versions_and_a_newer_minor_is_welcome() {
    const { assert!(WIRE_MAJOR >= 1, "an older major exists") };
    let older = WIRE_MAJOR - 1;
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let creds = collector.issue("old-agent");

    // An old agent whose frames carry the old major.
    let mut a = connect(&endpoint, collector.quic, &creds).await.unwrap();
    a.send_raw(&hello_with_envelope_major(older)).await.unwrap();
    match a.receive().await.unwrap() {
        CollectorMessage::Refusal(r) => {
            assert!(
                r.reason.contains(&format!("major version {older} "))
                    && r.reason.contains(&format!("speaks {WIRE_MAJOR}")),
                "{}",
                r.reason
            );
            assert_eq!(r.retry_after_s, 0);
        }
        other => panic!("{other:?}"),
    }
    // A current envelope whose hello claims the old major (a downgrade attempt in the payload).
    let mut b = connect(&endpoint, collector.quic, &creds).await.unwrap();
    let mut hello = sim::hello(labels("aws", "acct"));
    hello.wire_major = older;
    b.send(&AgentMessage::Hello(hello)).await.unwrap();
    match b.receive().await.unwrap() {
        CollectorMessage::Refusal(r) => assert!(
            r.reason.contains(&format!("major version {older} "))
                && r.reason.contains(&format!("speaks {WIRE_MAJOR}")),
            "{}",
            r.reason
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(refusals(&collector, "bad_version").await, 2);
    let log = wait_for_log(&collector, "refused: wire major version", 2);
    assert_eq!(
        log.matches("refused: wire major version").count(),
        2,
        "{log}"
    );

    // Minors are additions the other side ignores: the same major with any minor is welcome
    // (WIRE_MINOR is the oldest minor there is while it is 0).
    for minor in [0, WIRE_MINOR, WIRE_MINOR + 3] {
        let mut c = connect(&endpoint, collector.quic, &creds).await.unwrap();
        let mut hello = sim::hello(labels("aws", "acct"));
        hello.wire_minor = minor;
        c.send(&AgentMessage::Hello(hello)).await.unwrap();
        match c.receive().await.unwrap() {
            CollectorMessage::Welcome(w) => assert_eq!(w.wire_major, WIRE_MAJOR),
            other => panic!("minor {minor}: {other:?}"),
        }
        assert_eq!(c.report(&results(1, 3)).await.unwrap().up_to_seq, 3);
        c.finish().await;
    }
    assert_eq!(refusals(&collector, "bad_version").await, 2);
    assert_eq!(collector.stored("old-agent"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_revocation_list_keeps_the_last_good_one_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let doomed = collector.issue("doomed");
    collector.revoke("doomed");
    let log = wait_for_log(&collector, "revocation list reloaded", 1);
    assert!(log.contains("revocation list reloaded revoked=1"), "{log}");
    let crl = collector.ca_dir().join("crl.pem");
    // Replaced (by rename, as an editor or a careless copy would) with something else.
    let damaged = collector.ca_dir().join("crl.pem.new");
    std::fs::write(
        &damaged,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    std::fs::rename(&damaged, &crl).unwrap();
    let log = wait_for_log(&collector, "revocation list not reloaded", 1);
    assert_eq!(
        log.matches("revocation list not reloaded").count(),
        1,
        "{log}"
    );
    let code = refused_with(&endpoint, collector.quic, &doomed).await;
    assert_eq!(code, ALERT_CERTIFICATE_REVOKED, "alert {code:#x}");

    // At start, the same file is an error: the collector does not run without its list.
    let _ = collector.child.kill();
    let _ = collector.child.wait();
    let out = Command::new(collector_bin())
        .args(["run", "--config"])
        .arg(tmp.path().join("collector.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("crl.pem"), "{stderr}");
}
