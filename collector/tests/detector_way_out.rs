//! A mail provider's HTTPS API as the way out, in the detector driven with a fake clock: the
//! API host on 443 is an ordinary series (not the network's control) for an agent that has a
//! control target of its own; its loss where the provider's SMTP was blocked already is one
//! `way_out_lost` event at the layer the usual rule names, and its return ends it; its loss where
//! SMTP works is an ordinary change; an agent that probes nothing but the preset keeps its API
//! as its control (it cannot tell the API from its own network).

use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::events::{Event, EventKind, Scope, State};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_wire::{Family, Outcome, PhaseTimings, ProbeResult};

mod support;
use support::agent_meta;

const INTERVAL: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;
const SMTP: &str = "smtp.zeptomail.com";
const API: &str = "api.zeptomail.com";

/// The demo's shape: the destination's control on 443, and the ZeptoMail preset's SMTP ports and
/// API host.
const WITH_CONTROL: &[(&str, u16)] = &[("mx", 443), (SMTP, 587), (SMTP, 465), (API, 443)];
/// An agent whose only target is the preset.
const PRESET_ONLY: &[(&str, u16)] = &[(SMTP, 587), (SMTP, 465), (API, 443)];

struct Fleet {
    det: Detector,
    agents: Vec<AgentMeta>,
    round: i64,
    seq: u64,
    events: Vec<Event>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            det: Detector::new(DetectorConfig::default()),
            agents: vec![
                agent_meta("d1", "digitalocean", "team"),
                agent_meta("d2", "digitalocean", "team"),
                agent_meta("g1", "gcp", "shop"),
                agent_meta("g2", "gcp", "shop"),
            ],
            round: 0,
            seq: 0,
            events: Vec::new(),
        }
    }

    /// `n` probe rounds, each followed by a minute of ticks; `outcome(agent, target, port)`.
    fn rounds(
        &mut self,
        n: usize,
        targets: &[(&str, u16)],
        outcome: impl Fn(&str, &str, u16) -> Outcome,
    ) {
        for _ in 0..n {
            let now = T0 + self.round * INTERVAL;
            for a in self.agents.clone() {
                let results: Vec<ProbeResult> = targets
                    .iter()
                    .map(|&(target, port)| {
                        self.seq += 1;
                        let o = outcome(&a.agent_id, target, port);
                        ProbeResult {
                            seq: self.seq,
                            at_unix_ms: now,
                            target: target.into(),
                            port,
                            family: Family::Ipv4,
                            outcome: o,
                            timings: PhaseTimings {
                                connect_us: (o == Outcome::Ok).then_some(1500),
                                ..Default::default()
                            },
                            ..Default::default()
                        }
                    })
                    .collect();
                self.events
                    .extend(self.det.observe(&a, &results, true, now));
            }
            for s in 1..=60 {
                self.events.extend(self.det.tick(now + s * 1000));
            }
            self.round += 1;
        }
    }
}

/// DigitalOcean drops the submission ports (as in the demo); everything else answers, except
/// where `also_fails` holds.
fn do_drops_smtp(
    also_fails: impl Fn(&str, &str, u16) -> bool,
) -> impl Fn(&str, &str, u16) -> Outcome {
    move |agent, target, port| {
        let smtp_dropped = agent.starts_with('d') && target == SMTP;
        if smtp_dropped || also_fails(agent, target, port) {
            Outcome::Timeout
        } else {
            Outcome::Ok
        }
    }
}

fn summary(e: &Event) -> String {
    format!(
        "{} {} {}/{} {}:{} {}→{}",
        e.kind.as_str(),
        e.scope.as_str(),
        e.provider.as_deref().unwrap_or("-"),
        e.account.as_deref().unwrap_or("-"),
        e.target.as_deref().unwrap_or("-"),
        e.port.unwrap_or(0),
        e.from,
        e.to
    )
}

#[test]
fn the_api_lost_where_smtp_was_blocked_is_one_way_out_lost_and_its_return_ends_it() {
    let mut f = Fleet::new();
    // DigitalOcean's SMTP to the provider is blocked from the first probe: its baseline, no event.
    f.rounds(4, WITH_CONTROL, do_drops_smtp(|_, _, _| false));
    assert!(f.events.is_empty(), "{:?}", f.events);
    // Then its API goes too, from both of the account's agents.
    f.rounds(
        8,
        WITH_CONTROL,
        do_drops_smtp(|a, t, _| a.starts_with('d') && t == API),
    );
    let named: Vec<String> = f.events.iter().map(summary).collect();
    assert_eq!(
        named,
        ["way_out_lost account digitalocean/team api.zeptomail.com:443 open→blocked"]
    );
    assert_eq!(f.events[0].outcome.as_deref(), Some("timeout"));
    assert!(!f.events[0].witnesses.is_empty());
    // The API comes back while SMTP stays blocked: an ordinary change to open of the same
    // subject, which ends the alert.
    f.rounds(8, WITH_CONTROL, do_drops_smtp(|_, _, _| false));
    let named: Vec<String> = f.events.iter().map(summary).collect();
    assert_eq!(
        named[1..],
        ["policy_changed account digitalocean/team api.zeptomail.com:443 blocked→open"]
    );
}

#[test]
fn the_api_lost_where_smtp_works_is_an_ordinary_change() {
    let mut f = Fleet::new();
    f.rounds(4, WITH_CONTROL, do_drops_smtp(|_, _, _| false));
    f.rounds(
        8,
        WITH_CONTROL,
        do_drops_smtp(|a, t, _| a.starts_with('g') && t == API),
    );
    let named: Vec<String> = f.events.iter().map(summary).collect();
    assert_eq!(
        named,
        ["policy_changed account gcp/shop api.zeptomail.com:443 open→blocked"]
    );
}

#[test]
fn the_api_lost_from_one_agent_only_is_that_agents() {
    let mut f = Fleet::new();
    f.rounds(4, WITH_CONTROL, do_drops_smtp(|_, _, _| false));
    f.rounds(
        8,
        WITH_CONTROL,
        do_drops_smtp(|a, t, _| a == "d1" && t == API),
    );
    assert_eq!(f.events.len(), 1, "{:?}", f.events);
    let e = &f.events[0];
    assert_eq!((e.kind, e.scope), (EventKind::WayOutLost, Scope::Agent));
    assert_eq!(e.agent.as_deref(), Some("d1"));
    assert_eq!(e.to, State::Blocked);
}

#[test]
fn a_failing_api_does_not_hide_an_smtp_change_when_the_agent_has_its_own_control() {
    let mut f = Fleet::new();
    // GCP's API is unreachable from the start (a baseline), its own control answers.
    let api_down = |a: &str, t: &str, _: u16| a.starts_with('g') && t == API;
    f.rounds(4, WITH_CONTROL, do_drops_smtp(api_down));
    assert!(f.events.is_empty(), "{:?}", f.events);
    // Its 587 to the provider closes: still an account change.
    f.rounds(
        8,
        WITH_CONTROL,
        do_drops_smtp(move |a, t, p| {
            api_down(a, t, p) || (a.starts_with('g') && t == SMTP && p == 587)
        }),
    );
    let named: Vec<String> = f.events.iter().map(summary).collect();
    assert_eq!(
        named,
        ["policy_changed account gcp/shop smtp.zeptomail.com:587 open→blocked"]
    );
}

#[test]
fn the_network_going_away_is_no_event_with_or_without_an_own_control() {
    for targets in [WITH_CONTROL, PRESET_ONLY] {
        let mut f = Fleet::new();
        f.rounds(4, targets, do_drops_smtp(|_, _, _| false));
        // Everything of GCP's g1 times out: its network, not a policy.
        f.rounds(8, targets, do_drops_smtp(|a, _, _| a == "g1"));
        assert!(f.events.is_empty(), "{targets:?}: {:?}", f.events);
    }
}
