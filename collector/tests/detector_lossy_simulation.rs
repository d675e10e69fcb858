//! A seeded simulation of a fleet under random probe failures, through the real detector with a
//! fake clock: prints the false-alarm count of a lossy run and the detection delay of a real
//! policy change (first failing probe to event), and asserts the quiet and the loud.
//!
//! The loss model is per probe: each probe fails (timeout) independently with probability `q`.
//! Packet loss of 5% on a link gives a far smaller `q` (a SYN is retransmitted before the probe's
//! deadline), so `q = 0.05` is a harsher test than the lab's packet loss.

use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::events::{Event, Scope};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_wire::{Family, Labels, Outcome, ProbeResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INTERVAL_MS: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;
const PORTS: [u16; 5] = [25, 465, 587, 2525, 443];

fn fleet() -> Vec<AgentMeta> {
    let mut agents = Vec::new();
    for provider in ["gcp", "aws", "hetzner"] {
        for account in ["a", "b"] {
            for n in 0..2 {
                agents.push(AgentMeta {
                    agent_id: format!("{provider}-{account}-{n}"),
                    labels: Labels {
                        provider: provider.into(),
                        account: format!("{provider}-{account}"),
                        region: "r".into(),
                        instance: String::new(),
                    },
                    agent_version: "sim".into(),
                });
            }
        }
    }
    agents
}

/// Ground truth: GCP blocks 25 everywhere; account hetzner-a has 587 closed from `close_at`.
fn truth(agent: &AgentMeta, port: u16, round: i64, close_at: Option<i64>) -> bool {
    if agent.labels.provider == "gcp" && port == 25 {
        return false;
    }
    if agent.labels.account == "hetzner-a" && port == 587 && close_at.is_some_and(|c| round >= c) {
        return false;
    }
    true
}

/// Runs `rounds` probe rounds; returns the events with the time they were raised.
fn run(q: f64, rounds: i64, close_at: Option<i64>, seed: u64) -> Vec<(i64, Event)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut det = Detector::new(DetectorConfig::default());
    let agents = fleet();
    let mut out = Vec::new();
    let mut seq = 0u64;
    for round in 0..rounds {
        let now = T0 + round * INTERVAL_MS;
        for (i, a) in agents.iter().enumerate() {
            // Agents are spread over the interval, as real schedules are.
            let at = now + (i as i64) * 4_000;
            let results: Vec<ProbeResult> = PORTS
                .iter()
                .map(|&port| {
                    seq += 1;
                    let open = truth(a, port, round, close_at) && !rng.gen_bool(q);
                    ProbeResult {
                        seq,
                        at_unix_ms: at,
                        target: "mx.lab".into(),
                        port,
                        family: Family::Ipv4,
                        outcome: if open { Outcome::Ok } else { Outcome::Timeout },
                        ..Default::default()
                    }
                })
                .collect();
            for e in det.observe(a, &results, true, at) {
                out.push((at, e));
            }
        }
        for s in 1..=60 {
            let t = now + s * 1000;
            for e in det.tick(t) {
                out.push((t, e));
            }
        }
    }
    out
}

#[test]
fn lossy_run_false_alarms_and_detection_delay() {
    let rounds = 2_000;
    println!("fleet: 12 agents (3 providers x 2 accounts x 2), 5 ports, interval 60 s, confirm 3, settle 60 s");
    println!("| probe failure q | rounds | series | false alarms |");
    println!("|---|---|---|---|");
    let mut quiet_at_one_percent = None;
    for q in [0.01, 0.05] {
        let events = run(q, rounds, None, 7);
        println!("| {q} | {rounds} | 60 | {} |", events.len());
        for (_, e) in &events {
            println!("    {}", e.summary());
        }
        if q == 0.01 {
            quiet_at_one_percent = Some(events.len());
        }
    }
    assert_eq!(
        quiet_at_one_percent,
        Some(0),
        "1% probe failures raised events"
    );

    // A real change under 1% noise: one account event, no sibling event, and its delay.
    let close_at = 100;
    let events = run(0.01, 130, Some(close_at), 11);
    let relevant: Vec<_> = events.iter().filter(|(_, e)| e.port == Some(587)).collect();
    assert_eq!(relevant.len(), 1, "{relevant:?}");
    let (at, e) = relevant[0];
    assert_eq!(e.scope, Scope::Account);
    assert_eq!(e.account.as_deref(), Some("hetzner-a"));
    let flip = T0 + close_at * INTERVAL_MS;
    let delay_s = (at - flip) as f64 / 1000.0;
    println!("detection delay (policy flip to event; probes every 60 s): {delay_s} s");
    assert!(
        delay_s <= (3 * INTERVAL_MS / 1000 + 60) as f64,
        "delay {delay_s} s"
    );
}
