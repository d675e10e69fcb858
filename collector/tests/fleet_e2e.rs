//! The real agent binary against the real collector binary on loopback: nothing lost, nothing
//! counted twice when the collector is SIGKILLed mid-stream or when the agent is SIGKILLed in a
//! loop while writing its spool; an agent whose certificate comes from another CA, or whose
//! certificate is revoked while it reports, is told "rejected by the collector" and does not
//! hammer it, while a good agent keeps reporting.
//!
//! The agent binary is the sibling `egresswatch-agent` of the collector binary (test.sh builds
//! every binary first; `cargo build --workspace --bins` does too).

mod support;

use egresswatch_collector::store::Inspect;
use rand::Rng;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::fleet::{probe_target, Agent, Collector};
use support::{collector_bin, issue, wait_until, work_dir};

/// The spool as the test sees it: the agents here share the test's mount namespace.
const ROOT: &str = "/";

fn stored_count(collector: &Collector, agent: &str) -> u64 {
    collector.store().count_results(agent).unwrap()
}

#[test]
fn collector_sigkilled_and_restarted_loses_and_doubles_nothing() {
    let tmp = work_dir("ew-fleet-");
    let root = Path::new(ROOT);
    let mut collector = Collector::start(tmp.path(), 0);
    let mut agent_setup = Agent::new(tmp.path(), "e2e-a", &collector, vec![probe_target()]);
    let mut agent = agent_setup.start();
    assert!(
        agent_setup.wait_acked(root, 3, Duration::from_secs(30)),
        "first acks; log:\n{}",
        agent_setup.log()
    );

    // SIGKILL the collector while the agent keeps probing into its spool.
    collector.kill();
    let acked_at_kill = agent_setup.ledger(root).1;
    std::thread::sleep(Duration::from_secs(4));
    collector = Collector::start(tmp.path(), collector.addr.port());
    // The agent reconnects (backoff ≤ a few seconds by now) and sends what piled up.
    assert!(
        agent_setup.wait_acked(root, acked_at_kill + 6, Duration::from_secs(40)),
        "acks resumed after the restart; ledger {:?}; log:\n{}",
        agent_setup.ledger(root),
        agent_setup.log()
    );
    agent.terminate();
    let produced = agent_setup.drain(root);
    assert!(produced >= acked_at_kill + 6);
    collector.assert_exactly_once("e2e-a", produced);
}

/// The embedded default runs the cluster's pipeline: the hub follows the store's feed (the
/// writer's own tail) and the collector leads a cluster of one.
#[test]
fn a_collector_on_its_own_store_is_a_cluster_of_one_fed_by_its_tail() {
    let tmp = work_dir("ew-fleet-");
    let root = Path::new(ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let agent_setup = Agent::new(tmp.path(), "e2e-one", &collector, vec![probe_target()]);
    let mut agent = agent_setup.start();
    assert!(
        agent_setup.wait_acked(root, 3, Duration::from_secs(30)),
        "first acks; log:\n{}",
        agent_setup.log()
    );
    // What was stored reached the hub by the feed: the page shows the agent's cell.
    assert!(
        wait_until(Duration::from_secs(10), || collector
            .counter("egresswatch_feed_results")
            >= 3.0),
        "feed counter {}",
        collector.counter("egresswatch_feed_results")
    );
    let matrix = collector.get("/api/matrix");
    assert!(matrix.contains("\"lab\""), "{matrix}");
    let collectors: serde_json::Value =
        serde_json::from_str(&collector.get("/api/collectors")).expect("/api/collectors is JSON");
    let list = collectors.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{collectors}");
    assert_eq!(list[0]["leader"], true, "{collectors}");
    assert_eq!(collector.gauge("egresswatch_collector_leader"), 1.0);
    assert_eq!(collector.gauge("egresswatch_cluster_collectors"), 1.0);
    assert_eq!(collector.counter("egresswatch_leader_acquired"), 0.0);
    agent.terminate();
}

#[test]
fn agent_sigkilled_in_a_loop_always_restarts_and_loses_nothing_written() {
    let tmp = work_dir("ew-fleet-");
    let root = Path::new(ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let mut agent_setup = Agent::new(tmp.path(), "e2e-b", &collector, vec![probe_target()]);
    let mut rng = rand::thread_rng();
    for round in 0..10 {
        let mut agent = agent_setup.start();
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2500)));
        assert!(
            matches!(agent.0.try_wait(), Ok(None)),
            "round {round}: the agent exited by itself; log:\n{}",
            agent_setup.log()
        );
        let _ = agent.0.kill();
        let _ = agent.0.wait();
    }
    let produced = agent_setup.drain(root);
    let log = agent_setup.log();
    assert!(
        log.matches("spool open").count() >= 11,
        "every start read its spool; log:\n{log}"
    );
    assert!(produced > 0, "the agent produced results; log:\n{log}");
    collector.assert_exactly_once("e2e-b", produced);
}

#[test]
fn a_certificate_from_another_ca_is_rejected_without_a_tight_loop() {
    let tmp = work_dir("ew-fleet-");
    let root = Path::new(ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let target = probe_target();
    let mut good = Agent::new(tmp.path(), "e2e-good", &collector, vec![target]);
    let mut good_agent = good.start();
    assert!(
        good.wait_acked(root, 1, Duration::from_secs(30)),
        "good agent reports"
    );

    // Another fleet CA, and an agent certificate from it.
    let other_ca = tmp.path().join("other-ca");
    let status = Command::new(collector_bin())
        .args(["ca", "init", "--dir"])
        .arg(&other_ca)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ca init");
    // It trusts the real collector; the collector must not trust it.
    let mut stranger = Agent::new(tmp.path(), "e2e-stranger", &collector, vec![target]);
    (stranger.cert, stranger.key) =
        issue(&other_ca, &tmp.path().join("other-agents"), "e2e-stranger");
    let acked_before = good.ledger(root).1;
    let mut stranger_agent = stranger.start();
    std::thread::sleep(Duration::from_secs(6));
    stranger_agent.terminate();
    let log = stranger.log();
    let rejections = log.matches("rejected by the collector").count();
    eprintln!("stranger: {rejections} rejection(s) logged in 6 s");
    assert!(rejections >= 1, "the stranger was told; log:\n{log}");
    assert!(
        rejections <= 2,
        "{rejections} attempts in 6 s is a tight loop; log:\n{log}"
    );
    assert!(
        good.ledger(root).1 > acked_before,
        "the good agent kept reporting meanwhile"
    );
    good_agent.terminate();
    let produced = good.drain(root);
    collector.assert_exactly_once("e2e-good", produced);
    assert_eq!(
        stored_count(&collector, "e2e-stranger"),
        0,
        "nothing stored for the stranger"
    );
}

#[test]
fn a_revoked_agent_is_cut_off_mid_session_and_told_why() {
    let tmp = work_dir("ew-fleet-");
    let root = Path::new(ROOT);
    let collector = Collector::start(tmp.path(), 0);
    let target = probe_target();
    let mut good = Agent::new(tmp.path(), "e2e-stays", &collector, vec![target]);
    let doomed = Agent::new(tmp.path(), "e2e-revoked", &collector, vec![target]);
    let mut good_agent = good.start();
    let mut doomed_agent = doomed.start();
    assert!(
        good.wait_acked(root, 1, Duration::from_secs(30)),
        "good agent reports"
    );
    assert!(
        doomed.wait_acked(root, 1, Duration::from_secs(30)),
        "doomed agent reports"
    );

    let revoked = Command::new(collector_bin())
        .args(["ca", "revoke", "--dir"])
        .arg(collector.ca_dir())
        .arg("e2e-revoked")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(revoked.success(), "ca revoke");
    doomed.wait_log("rejected by the collector", Duration::from_secs(15));
    let log = doomed.log();
    let told = log
        .lines()
        .find(|l| l.contains("rejected by the collector"))
        .unwrap_or_else(|| panic!("the revoked agent was not told within 15 s; log:\n{log}"))
        .to_string();
    assert!(told.contains("revoked"), "{told}");
    let stored_at_rejection = stored_count(&collector, "e2e-revoked");
    let good_acked = good.ledger(root).1;

    std::thread::sleep(Duration::from_secs(5));
    doomed_agent.terminate();
    let log = doomed.log();
    let rejections = log.matches("rejected by the collector").count();
    eprintln!("revoked agent: {rejections} rejection(s) logged; first: {told}");
    assert!(
        rejections <= 2,
        "{rejections} in 5 s is a tight loop; log:\n{log}"
    );
    assert_eq!(
        stored_count(&collector, "e2e-revoked"),
        stored_at_rejection,
        "nothing stored for the revoked agent after it was told"
    );
    assert!(
        good.ledger(root).1 > good_acked,
        "the good agent kept reporting"
    );
    good_agent.terminate();
    let produced = good.drain(root);
    collector.assert_exactly_once("e2e-stays", produced);
}

#[test]
fn an_unusable_spool_is_an_error_in_the_log_and_the_hello_not_a_crash() {
    let tmp = work_dir("ew-fleet-");
    let collector = Collector::start(tmp.path(), 0);
    let mut agent_setup = Agent::new(tmp.path(), "e2e-nospool", &collector, vec![probe_target()]);
    // The spool's parent is a regular file: the directory can never be made.
    let blocker = agent_setup.dir.join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    agent_setup.settings.spool = blocker.join("spool");
    let mut agent = agent_setup.start();
    let reported = wait_until(Duration::from_secs(20), || {
        collector
            .log()
            .lines()
            .any(|l| l.contains("agent reports trouble") && l.contains("spool"))
    });
    let agent_log = agent_setup.log();
    assert!(
        reported,
        "the collector heard of the spool trouble; agent log:\n{agent_log}"
    );
    assert!(
        agent_log.contains("spool unusable"),
        "the agent logged it; log:\n{agent_log}"
    );
    assert!(
        matches!(agent.0.try_wait(), Ok(None)),
        "the agent kept running; log:\n{agent_log}"
    );
    agent.terminate();
}
