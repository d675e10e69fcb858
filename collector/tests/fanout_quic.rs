//! Evidence on demand over real QUIC on loopback, against the real collector binary: when one
//! agent's settled-open series departs, the collector asks the other agents of its account that
//! probe the same destination to probe it now, on their existing sessions — the suspect only for
//! its other family, never an agent older than wire 1.2 or one that takes no requests — and an
//! agent gone before
//! the request is sent holds nobody up. The answers come back as ordinary `requested` results.

mod support;

use egresswatch_sim::{self as sim, SimAgent};
use egresswatch_wire::{CollectorMessage, Family, Outcome};
use std::time::Duration;
use support::quic::{client_endpoint, connect, labels, now_ms, QuicCollector};

const TARGET: &str = "mx.lab.test";
const PORT: u16 = 587;

/// A welcomed agent of aws/prod announcing `TARGET:PORT`.
async fn agent(
    collector: &QuicCollector,
    endpoint: &quinn::Endpoint,
    id: &str,
    wire_minor: u16,
    accepts: bool,
) -> SimAgent {
    let creds = collector.issue(id);
    let mut agent = connect(endpoint, collector.quic, &creds).await.unwrap();
    let hello = sim::hello_probing(
        labels("aws", "prod"),
        &[(TARGET, &[25, PORT])],
        wire_minor,
        accepts,
    );
    match agent.hello_with(hello).await.unwrap() {
        CollectorMessage::Welcome(w) => assert_eq!(w.agent_id, id),
        other => panic!("{id}: {other:?}"),
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_asks_the_accounts_other_agents_and_only_those_that_can_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = QuicCollector::start(tmp.path());
    let endpoint = client_endpoint();
    let mut suspect = agent(&collector, &endpoint, "suspect", 2, true).await;
    let mut sibling_b = agent(&collector, &endpoint, "sibling-b", 2, true).await;
    let mut sibling_c = agent(&collector, &endpoint, "sibling-c", 2, true).await;
    let mut old = agent(&collector, &endpoint, "old", 1, true).await;
    let mut refuser = agent(&collector, &endpoint, "refuser", 2, false).await;
    // Welcomed, then gone without a goodbye before anything is asked of it.
    let leaver = agent(&collector, &endpoint, "leaver", 2, true).await;
    leaver.connection.close(0u32.into(), b"gone");

    // The suspect's series settles open, then a live result departs from it.
    let now = now_ms();
    // Enough agreeing results for the detector's baseline test to settle (it decides at its
    // false-alarm bound, so the count follows the default, not a fixed number).
    let settled: Vec<_> = (1..=6)
        .map(|s| sim::result_of(s, TARGET, PORT, Outcome::Ok, now - 7_000 + s as i64 * 1_000))
        .collect();
    assert_eq!(suspect.report(&settled).await.unwrap().accepted, 6);
    let departing = sim::result_of(7, TARGET, PORT, Outcome::Timeout, now_ms());
    assert_eq!(suspect.report(&[departing]).await.unwrap().accepted, 1);

    // Both siblings are asked, on their report stream, for the suspect's destination.
    let mut answered = 0;
    for sibling in [&mut sibling_b, &mut sibling_c] {
        let request = sibling
            .next_request(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a sibling of the suspect's account is asked");
        assert_eq!(
            (request.target.as_str(), request.port, request.family),
            (TARGET, PORT, Family::Ipv4)
        );
        assert!(request.deadline_ms > 0);
        // Its answer is stored like any result: ingest goes on for everyone.
        let ack = sibling
            .answer(1, &request, Outcome::Timeout, now_ms())
            .await
            .unwrap();
        assert_eq!((ack.accepted, ack.discarded), (1, 0));
        answered += 1;
    }
    assert_eq!(answered, 2);

    // The suspect is asked about the same destination over its other family only.
    let twin = suspect
        .next_request(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the suspect is asked about its other family");
    assert_eq!(
        (twin.target.as_str(), twin.port, twin.family),
        (TARGET, PORT, Family::Ipv6)
    );
    // The requests were queued together with the siblings' ones: by now, any more for the
    // suspect, or any for the old agent or the refuser, would be on its stream.
    for (name, agent) in [
        ("suspect", &mut suspect),
        ("old", &mut old),
        ("refuser", &mut refuser),
    ] {
        let asked = agent
            .next_request(Duration::from_millis(500))
            .await
            .unwrap();
        assert!(asked.is_none(), "{name} was asked: {asked:?}");
    }
    // And they report on as before.
    let ack = old
        .report(&[sim::result_of(1, TARGET, PORT, Outcome::Ok, now_ms())])
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);

    let metric = |series: &'static str| {
        let collector = &collector;
        async move { collector.metric(series).await.unwrap_or(0) }
    };
    assert_eq!(
        metric("egresswatch_fanout_requests_total{result=\"sent\"}").await,
        3
    );
    assert_eq!(
        metric("egresswatch_fanout_suspicions_total{result=\"asked\"}").await,
        1
    );
    let in_time = metric("egresswatch_fanout_answers_total{timing=\"in_time\"}").await;
    let late = metric("egresswatch_fanout_answers_total{timing=\"late\"}").await;
    assert_eq!(in_time + late, 2, "both answers are recognised as ours");
    assert_eq!(
        metric("egresswatch_fanout_answers_total{timing=\"unknown\"}").await,
        0
    );
    assert_eq!(collector.stored("sibling-b"), 1);
    assert_eq!(collector.stored("sibling-c"), 1);

    for agent in [suspect, sibling_b, sibling_c, old, refuser] {
        agent.finish().await;
    }
}
