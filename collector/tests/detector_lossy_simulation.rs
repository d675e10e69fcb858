//! A seeded simulation of a fleet under random probe failures, through the real detector with a
//! fake clock, modelling what agents and collector do around it: an agent whose result departs
//! from its previous one re-probes three times a few seconds apart (`confirmation`), and each
//! suspicion the detector raises makes the other agents of the same account, one agent of
//! another account of the same provider and one of another provider answer within a few seconds
//! (`requested`). Prints the false events of lossy runs per scope, the detection delay of a real
//! account change (policy flip to event) and what the extra probes cost; asserts the quiet and
//! the loud.
//!
//! The loss model is per probe, the same for every cause: each probe fails (timeout)
//! independently with probability `q`. Packet loss of 5% on a link gives a far smaller `q` (a
//! SYN is retransmitted before the probe's deadline), so `q = 0.05` is a harsher test than the
//! lab's packet loss.

use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::events::{Event, Scope};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_wire::{Family, Labels, Outcome, ProbeCause, ProbeResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

const INTERVAL_MS: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;
const PORTS: [u16; 5] = [443, 25, 465, 587, 2525];
/// When an agent's confirmations of a failure arrive after the result that departed: the
/// agent's defaults for a connection left unanswered (every failure here is a timeout), three
/// probes 1 s apart from the moment the attempt has waited 1.5 s, each timing out 5 s after
/// its start as the departing probe did.
const CONFIRMATION_DELAYS_MS: [i64; 3] = [1_500, 2_500, 3_500];
/// ...and of a return to open: a probe that reached the service is confirmed at the politeness
/// floor (10 s), one after the other.
const RETURN_CONFIRMATION_DELAYS_MS: [i64; 3] = [10_000, 20_000, 30_000];

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
fn truth(agent: &AgentMeta, port: u16, at: i64, close_at: Option<i64>) -> bool {
    if agent.labels.provider == "gcp" && port == 25 {
        return false;
    }
    if agent.labels.account == "hetzner-a" && port == 587 && close_at.is_some_and(|c| at >= c) {
        return false;
    }
    true
}

/// A probe due: (at, order, agent, port, cause 0 scheduled / 1 confirmation / 2 requested).
type Due = (i64, u64, usize, u16, u8);

#[derive(Default)]
struct Run {
    /// Every event with the time it was raised.
    events: Vec<(i64, Event)>,
    scheduled: u64,
    confirmations: u64,
    requested: u64,
}

/// Runs `rounds` probe rounds with scheduled probes, confirmations and requested answers.
fn run(q: f64, rounds: i64, close_at: Option<i64>, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut det = Detector::new(DetectorConfig::default());
    let agents = fleet();
    let index: BTreeMap<String, usize> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.agent_id.clone(), i))
        .collect();
    // Each agent's previous scheduled or requested state per port: what it re-probes on.
    let mut previous: BTreeMap<(usize, u16), bool> = BTreeMap::new();
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut seq = 0u64;
    let mut out = Run::default();
    for round in 0..rounds {
        let start = T0 + round * INTERVAL_MS;
        for (i, _) in agents.iter().enumerate() {
            // Agents are spread over the interval, as real schedules are; control port first.
            for port in PORTS {
                order += 1;
                due.push(Reverse((start + i as i64 * 4_000, order, i, port, 0)));
            }
        }
        for s in 0..60 {
            let t = start + s * 1000;
            while let Some(Reverse((at, _, i, port, cause))) = due.peek().copied() {
                if at > t {
                    break;
                }
                due.pop();
                let cause = match cause {
                    0 => ProbeCause::Scheduled,
                    1 => ProbeCause::Confirmation,
                    _ => ProbeCause::Requested,
                };
                match cause {
                    ProbeCause::Scheduled => out.scheduled += 1,
                    ProbeCause::Confirmation => out.confirmations += 1,
                    ProbeCause::Requested => out.requested += 1,
                }
                let agent = &agents[i];
                let open = truth(agent, port, at, close_at) && !rng.gen_bool(q);
                seq += 1;
                let result = ProbeResult {
                    seq,
                    at_unix_ms: at,
                    target: "mx.lab".into(),
                    port,
                    family: Family::Ipv4,
                    outcome: if open { Outcome::Ok } else { Outcome::Timeout },
                    cause,
                    ..Default::default()
                };
                if cause != ProbeCause::Confirmation && port != 443 {
                    let before = previous.insert((i, port), open);
                    if before.is_some_and(|b| b != open) {
                        let delays = if open {
                            RETURN_CONFIRMATION_DELAYS_MS
                        } else {
                            CONFIRMATION_DELAYS_MS
                        };
                        for d in delays {
                            order += 1;
                            due.push(Reverse((at + d, order, i, port, 1)));
                        }
                    }
                }
                for e in det.observe(agent, &[result], true, t) {
                    out.events.push((t, e));
                }
                for s in det.take_suspicions() {
                    let Some(&suspect) = index.get(&s.key.agent) else {
                        continue;
                    };
                    let mut asked: Vec<usize> = agents
                        .iter()
                        .enumerate()
                        .filter(|(j, a)| *j != suspect && a.labels.account == s.account)
                        .map(|(j, _)| j)
                        .collect();
                    let same_provider: Vec<usize> = agents
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| {
                            a.labels.provider == s.provider && a.labels.account != s.account
                        })
                        .map(|(j, _)| j)
                        .collect();
                    let elsewhere: Vec<usize> = agents
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.labels.provider != s.provider)
                        .map(|(j, _)| j)
                        .collect();
                    for pool in [same_provider, elsewhere] {
                        if !pool.is_empty() {
                            asked.push(pool[rng.gen_range(0..pool.len())]);
                        }
                    }
                    for j in asked {
                        order += 1;
                        let delay = rng.gen_range(1_000..5_000);
                        due.push(Reverse((t + delay, order, j, s.key.port, 2)));
                    }
                }
            }
            for e in det.tick(t) {
                out.events.push((t, e));
            }
        }
    }
    out
}

fn by_scope(events: &[(i64, Event)]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for scope in [
        Scope::Agent,
        Scope::Account,
        Scope::Provider,
        Scope::Destination,
    ] {
        counts.insert(scope.as_str(), 0);
    }
    for (_, e) in events {
        *counts.entry(e.scope.as_str()).or_default() += 1;
    }
    counts
}

fn per_thousand(extra: u64, scheduled: u64) -> f64 {
    (extra as f64 * 1000.0 / scheduled as f64 * 10.0).round() / 10.0
}

#[test]
fn lossy_run_false_alarms_and_detection_delay() {
    let rounds = 2_000;
    let config = DetectorConfig::default();
    // Another seed shows the figures are not one seed's luck: EGRESSWATCH_SIM_SEED=3.
    let seed = std::env::var("EGRESSWATCH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    println!(
        "fleet: 12 agents (3 providers x 2 accounts x 2), 5 ports, interval 60 s; \
         false_alarm_rate {}, background floor {}, confirmations {:?} ms after a failure \
         that departed and {:?} ms after a return (the agent's defaults), requests to the \
         account's other agents + 1 in the provider + 1 elsewhere, answered in 1-5 s; \
         seed {seed}",
        config.false_alarm_rate,
        config.background_floor,
        CONFIRMATION_DELAYS_MS,
        RETURN_CONFIRMATION_DELAYS_MS,
    );
    println!("| probe failure q | rounds | series | agent | account | provider | destination | confirmations per 1000 scheduled | requested per 1000 scheduled |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut quiet = BTreeMap::new();
    for q in [0.01, 0.05, 0.10] {
        let r = run(q, rounds, None, seed);
        let counts = by_scope(&r.events);
        println!(
            "| {q} | {rounds} | 60 | {} | {} | {} | {} | {} | {} |",
            counts["agent"],
            counts["account"],
            counts["provider"],
            counts["destination"],
            per_thousand(r.confirmations, r.scheduled),
            per_thousand(r.requested, r.scheduled),
        );
        for (_, e) in &r.events {
            println!("    {}", e.summary());
        }
        quiet.insert((q * 100.0) as u32, counts);
    }
    for (q, counts) in &quiet {
        let most = if *q >= 10 { 1 } else { 0 };
        for (scope, n) in counts {
            assert!(
                *n <= most,
                "{q}% probe failures raised {n} {scope} events (at most {most})"
            );
        }
    }

    // A real change: hetzner-a's 587 closes at a random moment of a round, 25 times. Each time
    // one account event naming both of its agents, nothing for a sibling, and its delay.
    let mut rng = StdRng::seed_from_u64(seed + 4);
    for q in [0.01, 0.05] {
        let mut delays = Vec::new();
        let (mut confirmations, mut requested, mut scheduled) = (0, 0, 0);
        for trial in 0..25u64 {
            let flip = T0 + 20 * INTERVAL_MS + rng.gen_range(0..INTERVAL_MS);
            let r = run(q, 30, Some(flip), 100 + trial);
            confirmations += r.confirmations;
            requested += r.requested;
            scheduled += r.scheduled;
            let relevant: Vec<_> = r
                .events
                .iter()
                .filter(|(_, e)| e.port == Some(587))
                .collect();
            assert_eq!(relevant.len(), 1, "q {q} trial {trial}: {relevant:#?}");
            let (at, e) = relevant[0];
            assert_eq!(e.scope, Scope::Account, "{e:#?}");
            assert_eq!(e.account.as_deref(), Some("hetzner-a"));
            let mut named: Vec<&str> = e.witnesses.iter().map(|w| w.agent.as_str()).collect();
            named.dedup();
            assert_eq!(named, ["hetzner-a-0", "hetzner-a-1"], "{e:#?}");
            assert!(e.since.is_some());
            delays.push((at - flip) as f64 / 1000.0);
        }
        delays.sort_by(f64::total_cmp);
        let median = delays[delays.len() / 2];
        println!(
            "q {q}: detection delay (policy flip to event), 25 flips at random moments, probes \
             every 60 s: median {median} s, min {} s, max {} s; extra probes per 1000 scheduled: \
             {} confirmations, {} requested",
            delays[0],
            delays[delays.len() - 1],
            per_thousand(confirmations, scheduled),
            per_thousand(requested, scheduled),
        );
        if q == 0.01 {
            assert!(median <= 75.0, "median delay {median} s");
        }
    }
}
