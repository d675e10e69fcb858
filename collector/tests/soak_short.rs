//! The 3-minute soak for CI: the harness of `examples/soak` (bench/soak.sh) with 1,000 agents
//! against the real collector binary, restarted with SIGKILL every 60 s, 10 of them sending
//! garbage. Asserts that every result of every honest agent is stored exactly once and that no
//! honest session ended except by a restart (garbage closed only its own connections).
//!
//! Why 1,000: this test runs the debug builds of both the collector and the simulated agents on
//! two cores shared with the rest of the suite; 1,000 agents reconnecting after each SIGKILL is a
//! real handshake storm there yet settles in seconds, leaving most of each minute for steady
//! traffic. The full 10,000-agent run is bench/soak.sh (release build); its figures are in
//! bench/README.md. Set EGRESSWATCH_SOAK_AGENTS / EGRESSWATCH_SOAK_SECS to change the size.

#[path = "../examples/soak/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn three_minutes_of_a_thousand_agents_with_restarts_and_garbage_store_exactly_once() {
    let opts = harness::Options {
        collector: env!("CARGO_BIN_EXE_egresswatch-collector").into(),
        agents: env_or("EGRESSWATCH_SOAK_AGENTS", 1000) as usize,
        duration: Duration::from_secs(env_or("EGRESSWATCH_SOAK_SECS", 150)),
        restart_every: Duration::from_secs(60),
        batch_every: Duration::from_secs(5),
        per_batch: 10,
        endpoints: 4,
        drain_timeout: Duration::from_secs(90),
    };
    let report = harness::run(&opts).expect("the soak ran");
    report.print();
    assert!(report.restarts >= 2, "restarts: {}", report.restarts);
    assert!(report.produced > 0);
    if let Err(e) = report.check() {
        panic!("{e:#}");
    }
}
