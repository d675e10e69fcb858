//! Ingest over real QUIC on loopback, against the real collector binary: exactly-once across a
//! SIGKILL, replays, identity from the certificate, and every bad input closing only its own
//! connection while a good agent keeps reporting.

mod support;

use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{AgentMessage, CollectorMessage, Labels};
use std::time::{Duration, Instant};
use support::quic::{client_endpoint, connect, labels, now_ms, QuicCollector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_stored_exactly_once_across_a_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = QuicCollector::start_with(tmp.path(), 0, "", "");
    let addr = collector.quic;
    let creds = collector.issue("agent-kill");
    let endpoint = client_endpoint();
    const TOTAL: u64 = 3000;
    const BATCH: u64 = 100;
    // Measured now: the collector prunes results older than its retention at start.
    let now = now_ms();
    let mut acked = 0u64;
    let mut killed = false;
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked < TOTAL {
        assert!(
            Instant::now() < deadline,
            "gave up with {acked} of {TOTAL} acked"
        );
        let mut agent = match connect(&endpoint, addr, &creds).await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let welcome = match agent.hello(labels("aws", "prod")).await {
            Ok(CollectorMessage::Welcome(w)) => w,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        assert_eq!(welcome.agent_id, "agent-kill");
        // The collector's high-water mark is the truth: an ack lost in the crash is not a loss.
        assert!(
            welcome.acked_seq >= acked,
            "collector forgot acked results: {} < {acked}",
            welcome.acked_seq
        );
        acked = welcome.acked_seq;
        // Resend the last acked batch too, as an agent unsure of its last ack would.
        let mut next = acked.saturating_sub(BATCH) + 1;
        while next <= TOTAL {
            let end = (next + BATCH - 1).min(TOTAL);
            let results: Vec<_> = (next..=end)
                .map(|s| sim::result(s, now + s as i64 * 100))
                .collect();
            match agent.report(&results).await {
                Ok(ack) => {
                    assert_eq!(ack.discarded, 0);
                    acked = acked.max(ack.up_to_seq);
                    next = end + 1;
                }
                Err(_) => break,
            }
            if !killed && acked >= TOTAL / 2 {
                killed = true;
                collector.child.kill().unwrap();
                collector.child.wait().unwrap();
                collector = QuicCollector::start_with(tmp.path(), addr.port(), "", "");
                reconnects += 1;
            }
        }
    }
    assert!(killed && reconnects == 1);
    assert_eq!(collector.stored("agent-kill"), TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_duplicates_and_identity_comes_from_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start_with(tmp.path(), 0, "", "");
    let creds = collector.issue("agent-a");
    let endpoint = client_endpoint();
    let mut agent = connect(&endpoint, collector.quic, &creds).await.unwrap();
    match agent.hello(labels("gcp", "p1")).await.unwrap() {
        CollectorMessage::Welcome(w) => {
            assert_eq!(w.agent_id, "agent-a");
            assert_eq!(w.acked_seq, 0);
        }
        other => panic!("{other:?}"),
    }
    let batch: Vec<_> = (1..=20)
        .map(|s| sim::result(s, now_ms() + s as i64))
        .collect();
    let ack = agent.report(&batch).await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted, ack.duplicates), (20, 20, 0));
    let ack = agent.report(&batch).await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted, ack.duplicates), (20, 0, 20));
    // A malformed batch (a result naming a series that is not there) is acked as discarded.
    let mut bad = egresswatch_wire::Batch::pack(
        &[sim::result(21, 1)],
        egresswatch_wire::ClockQuality::Synchronised,
        0,
    )
    .unwrap();
    bad.results[0].series = 9;
    agent.send(&AgentMessage::Batch(bad)).await.unwrap();
    let ack = agent.ack().await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted, ack.discarded), (20, 0, 1));
    assert!(ack.reason.contains("series"), "{}", ack.reason);
    agent.finish().await;
    assert_eq!(collector.stored("agent-a"), 20);
    assert_eq!(collector.stored("agent-b"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_rejected_while_a_good_agent_keeps_reporting() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start_with(tmp.path(), 0, "", "");
    let addr = collector.quic;
    let good = collector.issue("good");
    let bad = collector.issue("bad");
    let endpoint = client_endpoint();

    // The good agent reports all along, in its own task.
    let good_task = {
        let endpoint = endpoint.clone();
        let good = good.clone();
        tokio::spawn(async move {
            let mut agent = connect(&endpoint, addr, &good).await.unwrap();
            assert!(matches!(
                agent.hello(labels("azure", "s1")).await.unwrap(),
                CollectorMessage::Welcome(_)
            ));
            for b in 0..30u64 {
                let results: Vec<_> = (b * 10 + 1..=b * 10 + 10)
                    .map(|s| sim::result(s, now_ms() + s as i64))
                    .collect();
                let ack = agent.report(&results).await.unwrap();
                assert_eq!(ack.accepted, 10);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            agent.finish().await;
        })
    };

    // No client certificate: the handshake looks fine (TLS 1.3), the first read fails.
    let no_cert = sim::client_config(None, &good.ca, sim::DEFAULT_ALPN).unwrap();
    let outcome = async {
        let mut a = SimAgent::connect(&endpoint, addr, no_cert).await?;
        a.hello(labels("x", "y")).await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a client without a certificate was answered: {outcome:?}"
    );

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    egresswatch_collector::ca::init(&other.path().join("ca")).unwrap();
    let stranger =
        egresswatch_collector::ca::issue_to_files(&other.path().join("ca"), "stranger", None)
            .unwrap();
    let stranger = Credentials::from_files(
        &collector.ca_dir().join("ca.pem"),
        &stranger.cert,
        &stranger.key,
    )
    .unwrap();
    let outcome = async {
        let mut a = connect(&endpoint, addr, &stranger).await?;
        a.hello(labels("x", "y")).await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a certificate from another CA was answered"
    );

    // Wrong ALPN.
    let wrong_alpn = sim::client_config(Some(&bad), &bad.ca, b"smtp").unwrap();
    assert!(SimAgent::connect(&endpoint, addr, wrong_alpn)
        .await
        .is_err());

    // Garbage bytes instead of a frame, and an oversized frame header.
    for bytes in [
        b"\x00\x00\x00\x05garbage!!".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
    ] {
        let mut a = connect(&endpoint, addr, &bad).await.unwrap();
        a.send_raw(&bytes).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), a.connection.closed())
            .await
            .expect("closed by the collector");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u32(1)),
            "{closed:?}"
        );
    }

    // A newer major version is refused with a reason.
    let mut a = connect(&endpoint, addr, &bad).await.unwrap();
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 3).unwrap();
    rmp::encode::write_uint(&mut body, 9).unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp_serde::encode::write(&mut body, &sim::hello(Labels::default())).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    a.send_raw(&frame).await.unwrap();
    match a.receive().await.unwrap() {
        CollectorMessage::Refusal(r) => {
            assert!(r.reason.contains("major version 9"), "{}", r.reason)
        }
        other => panic!("{other:?}"),
    }

    // Labels with control characters are refused.
    let mut a = connect(&endpoint, addr, &bad).await.unwrap();
    match a.hello(labels("aws\u{1b}[31m", "p")).await.unwrap() {
        CollectorMessage::Refusal(r) => assert!(r.reason.contains("provider"), "{}", r.reason),
        other => panic!("{other:?}"),
    }

    good_task.await.unwrap();
    assert_eq!(collector.stored("good"), 300);
    assert_eq!(collector.stored("bad"), 0);
    assert_eq!(collector.stored("stranger"), 0);
}
