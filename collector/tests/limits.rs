//! Every bound of the collector, exceeded on purpose against the real binary (real QUIC on
//! loopback through `sim`, real HTTP): the offender gets what the README's "Limits" table says
//! (closed, refused, slowed, 413, 503), the count shows in `/metrics` as
//! `egresswatch_limit_exceeded_total{limit="..."}`, the collector stays up, and an honest agent on
//! the same collector keeps reporting with nothing lost.

mod support;

use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{AgentMessage, Batch, ClockQuality, CollectorMessage, Labels};
use std::path::Path;
use std::time::{Duration, Instant};
use support::quic::{now_ms, QuicCollector};

/// Small limits, so each is easy to reach.
const LIMITS: &str = "max_frame_bytes = 4096
max_batch_results = 10
max_results_per_sec = 100
results_burst = 100
max_connections_per_source = 3
max_streams_per_connection = 2
";
const HTTP_LIMITS: &str = "max_sse_clients = 1\nmax_body_bytes = 1024\n";

fn start(dir: &Path) -> QuicCollector {
    QuicCollector::start_with(dir, 0, LIMITS, HTTP_LIMITS)
}

fn labels() -> Labels {
    support::quic::labels("aws", "a1")
}

fn results(first: u64, count: u64) -> Vec<egresswatch_wire::ProbeResult> {
    (first..first + count)
        .map(|s| sim::result(s, now_ms() + s as i64))
        .collect()
}

async fn connect(endpoint: &quinn::Endpoint, c: &QuicCollector, creds: &Credentials) -> SimAgent {
    support::quic::connect(endpoint, c.quic, creds)
        .await
        .unwrap()
}

async fn welcomed(endpoint: &quinn::Endpoint, c: &QuicCollector, creds: &Credentials) -> SimAgent {
    let mut agent = connect(endpoint, c, creds).await;
    let answer = agent.hello(labels()).await.unwrap();
    assert!(matches!(answer, CollectorMessage::Welcome(_)), "{answer:?}");
    agent
}

/// `egresswatch_limit_exceeded_total{limit="NAME"}` from the real `/metrics`.
async fn exceeded(c: &QuicCollector, limit: &str) -> u64 {
    let series = format!("egresswatch_limit_exceeded_total{{limit=\"{limit}\"}}");
    c.metric(&series)
        .await
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

async fn closed_by_collector(agent: &SimAgent) -> u64 {
    match tokio::time::timeout(Duration::from_secs(10), agent.connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => close.error_code.into_inner(),
        Ok(other) => panic!("closed otherwise: {other}"),
        Err(_) => panic!("the collector did not close the connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_big_batches_and_bad_labels_close_only_the_offender() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path());
    let endpoint = support::quic::client_endpoint();
    let honest = c.issue("honest");
    let offender = c.issue("offender");
    let mut good = welcomed(&endpoint, &c, &honest).await;

    // A frame header announcing more than max_frame_bytes: closed before the body is read.
    let mut bad = welcomed(&endpoint, &c, &offender).await;
    bad.send_raw(&8192u32.to_be_bytes()).await.unwrap();
    assert_eq!(closed_by_collector(&bad).await, 1);
    assert_eq!(exceeded(&c, "frame_bytes").await, 1);

    // A batch of 11 results when max_batch_results is 10: closed, nothing stored.
    let mut bad = welcomed(&endpoint, &c, &offender).await;
    let batch = Batch::pack(&results(1, 11), ClockQuality::Synchronised, 0).unwrap();
    bad.send(&AgentMessage::Batch(batch)).await.unwrap();
    assert_eq!(closed_by_collector(&bad).await, 1);
    assert_eq!(exceeded(&c, "batch_results").await, 1);
    assert_eq!(c.stored("offender"), 0);

    // A label over the wire's 128 bytes: refused with the reason.
    let mut bad = connect(&endpoint, &c, &offender).await;
    let long = Labels {
        account: "x".repeat(129),
        ..labels()
    };
    match bad.hello(long).await.unwrap() {
        CollectorMessage::Refusal(r) => assert!(r.reason.contains("account"), "{}", r.reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(exceeded(&c, "labels").await, 1);

    // Results an agent's spool had to drop are counted from its batch.
    let batch = Batch::pack(&results(1, 10), ClockQuality::Synchronised, 7).unwrap();
    good.send(&AgentMessage::Batch(batch)).await.unwrap();
    assert_eq!(good.ack().await.unwrap().up_to_seq, 10);
    assert_eq!(exceeded(&c, "agent_spool").await, 7);

    // The honest agent's session went on all along.
    let ack = good.report(&results(11, 10)).await.unwrap();
    assert_eq!((ack.up_to_seq, ack.accepted), (20, 10));
    good.finish().await;
    assert_eq!(c.stored("honest"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_rate_is_slowed_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path());
    let endpoint = support::quic::client_endpoint();
    let creds = c.issue("fast");
    let mut agent = welcomed(&endpoint, &c, &creds).await;
    // 30 batches of 10 at once: 100 fit the burst, the other 200 at 100 per second.
    let started = Instant::now();
    for b in 0..30 {
        let batch = Batch::pack(&results(b * 10 + 1, 10), ClockQuality::Synchronised, 0).unwrap();
        agent.send(&AgentMessage::Batch(batch)).await.unwrap();
    }
    let mut up_to = 0;
    for _ in 0..30 {
        up_to = agent.ack().await.unwrap().up_to_seq;
    }
    let took = started.elapsed();
    assert_eq!(up_to, 300);
    assert!(took >= Duration::from_millis(1800), "not slowed: {took:?}");
    assert!(took < Duration::from_secs(10), "slowed too much: {took:?}");
    assert!(exceeded(&c, "results_per_second").await >= 1);
    agent.finish().await;
    assert_eq!(c.stored("fast"), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_and_streams_per_connection_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path());
    let endpoint = support::quic::client_endpoint();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(welcomed(&endpoint, &c, &c.issue(&format!("a{i}"))).await);
    }
    // A fourth connection from 127.0.0.1 is refused at the door.
    let extra = c.issue("a3");
    let config = sim::client_config(Some(&extra), &extra.ca, sim::DEFAULT_ALPN).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        SimAgent::connect(&endpoint, c.quic, config.clone()),
    )
    .await
    .expect("the refusal came quickly");
    assert!(refused.is_err(), "a fourth connection was accepted");
    assert_eq!(exceeded(&c, "connections_per_source").await, 1);
    // A slot frees when a connection ends.
    held.pop().unwrap().finish().await;
    let mut again = None;
    for _ in 0..50 {
        match SimAgent::connect(&endpoint, c.quic, config.clone()).await {
            Ok(a) => {
                again = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut again = again.expect("a slot came free");
    assert!(matches!(
        again.hello(labels()).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));

    // max_streams_per_connection = 2: with the report stream and one more open, a third cannot
    // even be opened.
    let agent = &mut held[0];
    let (mut send, mut recv) = agent.connection.open_bi().await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(1), agent.connection.open_bi()).await;
    assert!(third.is_err(), "a third stream opened past the cap");
    // The extra stream, once it carries bytes, is reset and counted; the report stream goes on.
    send.write_all(b"not part of the protocol").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1024))
        .await
        .expect("the extra stream was answered");
    assert!(read.is_err(), "the extra stream was not reset: {read:?}");
    drop((send, recv));
    assert_eq!(exceeded(&c, "streams").await, 1);
    let ack = tokio::time::timeout(Duration::from_secs(10), agent.report(&results(1, 5)))
        .await
        .expect("acked in time")
        .unwrap();
    assert_eq!(ack.up_to_seq, 5);
    assert_eq!(c.stored("a0"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_and_sse_clients_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path());
    // No pooled connections: the server closes a connection whose body it refused to read, and
    // a request must not land on one of those.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = |path: &str| format!("http://{}{path}", c.http);

    let big = client
        .post(url("/api/matrix"))
        .body(vec![b'x'; 8 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let big = client
        .get(url("/api/events"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(exceeded(&c, "http_body_bytes").await, 2);
    let fine = client.get(url("/api/matrix")).send().await.unwrap();
    assert_eq!(fine.status(), 200);

    // One stream client allowed: the second gets 503 and is counted; after the first leaves,
    // a new one is served.
    let first = client.get(url("/api/stream")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = client.get(url("/api/stream")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(exceeded(&c, "sse_clients").await, 1);
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        let next = client.get(url("/api/stream")).send().await.unwrap();
        if next.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the stream slot was never released");
}

/// The QUIC socket's receive buffer: a burst bigger than it is dropped by the kernel, which the
/// collector reads back from the socket's own drop counter and counts as the limit; the buffer it
/// was granted shows as a gauge, and agents still get in once the burst is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_the_kernel_drops_at_the_quic_socket_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // The smallest buffer the kernel grants (it rounds small requests up to about 2 KiB), so a
    // burst from one sender overflows it whatever the machine's speed.
    let c = QuicCollector::start_with(tmp.path(), 0, "udp_recv_buffer_bytes = 1\n", "");
    let granted = c
        .metric("egresswatch_ingest_udp_receive_buffer_bytes")
        .await
        .expect("the buffer gauge is in /metrics");
    assert!(
        granted > 0 && granted < 16 * 1024,
        "granted {granted} bytes"
    );
    assert_eq!(exceeded(&c, "udp_receive_buffer").await, 0);

    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = [0u8; 1200];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bursts = 0;
    loop {
        for _ in 0..2000 {
            let _ = sender.send_to(&datagram, c.quic);
        }
        bursts += 1;
        // The collector checks the kernel's counter once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if exceeded(&c, "udp_receive_buffer").await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bursts} bursts of 2000 datagrams, none counted as dropped"
        );
    }
    assert!(
        c.log_text().contains("QUIC packets"),
        "the drop is logged: {}",
        c.log_text()
    );

    let endpoint = support::quic::client_endpoint();
    let creds = c.issue("a0");
    let _agent = welcomed(&endpoint, &c, &creds).await;
}
