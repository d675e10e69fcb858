//! The detector as a pure state machine: hysteresis, attribution to agent / account / provider /
//! destination, the control port, flapping, replays and silence, and the family an event names
//! — driven with a fake clock.

use egresswatch_collector::clock::rfc3339;
use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::events::{Event, EventKind, Scope, State};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_wire::{Family, Outcome, PhaseTimings, ProbeResult};

mod support;
use support::agent_meta;

const INTERVAL: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;

fn result(seq: u64, at: i64, target: &str, port: u16, outcome: Outcome) -> ProbeResult {
    ProbeResult {
        seq,
        at_unix_ms: at,
        target: target.into(),
        port,
        family: Family::Ipv4,
        outcome,
        timings: PhaseTimings {
            connect_us: (outcome == Outcome::Ok).then_some(1500),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A small fleet probing "mx" on 587 and 443 every interval; `outcome_of(agent, port, round)`
/// says what each probe finds. Returns every event with the round it came out in.
struct Fleet {
    det: Detector,
    agents: Vec<AgentMeta>,
    round: i64,
    seq: u64,
    events: Vec<(i64, Event)>,
}

impl Fleet {
    fn new(agents: Vec<AgentMeta>) -> Fleet {
        Fleet::with_config(agents, counted())
    }

    fn with_config(agents: Vec<AgentMeta>, config: DetectorConfig) -> Fleet {
        Fleet {
            det: Detector::new(config),
            agents,
            round: 0,
            seq: 0,
            events: Vec::new(),
        }
    }

    fn now(&self) -> i64 {
        T0 + self.round * INTERVAL
    }

    /// One probe round for every agent, then ticks once a second until the next round.
    fn round(&mut self, outcome_of: impl Fn(&str, &str, u16) -> Outcome, targets: &[(&str, u16)]) {
        let now = self.now();
        for a in self.agents.clone() {
            let results: Vec<ProbeResult> = targets
                .iter()
                .map(|(t, p)| {
                    self.seq += 1;
                    result(self.seq, now, t, *p, outcome_of(&a.agent_id, t, *p))
                })
                .collect();
            for e in self.det.observe(&a, &results, true, now) {
                self.events.push((self.round, e));
            }
        }
        for s in 1..=60 {
            for e in self.det.tick(now + s * 1000) {
                self.events.push((self.round, e));
            }
        }
        self.round += 1;
    }

    fn rounds(
        &mut self,
        n: usize,
        outcome_of: impl Fn(&str, &str, u16) -> Outcome + Copy,
        targets: &[(&str, u16)],
    ) {
        for _ in 0..n {
            self.round(outcome_of, targets);
        }
    }

    fn policy_events(&self) -> Vec<&Event> {
        self.events.iter().map(|(_, e)| e).collect()
    }

    /// Every event so far, asserting there are exactly `n` of them.
    fn expect_events(&self, n: usize) -> Vec<&Event> {
        let ev = self.policy_events();
        assert_eq!(ev.len(), n, "{ev:?}");
        ev
    }

    /// Asserts that nothing has come out.
    fn expect_quiet(&self) {
        assert!(
            self.policy_events().is_empty(),
            "{:?}",
            self.policy_events()
        );
    }
}

/// A fleet of `agents` that has probed `STD` all ok for `n` rounds.
fn settled_fleet(agents: Vec<AgentMeta>, n: usize) -> Fleet {
    let mut f = Fleet::new(agents);
    f.rounds(n, all_ok, STD);
    f
}

/// What a probe finds: `outcome` where `fails(agent, target, port)` holds, ok everywhere else.
fn failing(
    outcome: Outcome,
    fails: impl Fn(&str, &str, u16) -> bool + Copy,
) -> impl Fn(&str, &str, u16) -> Outcome + Copy {
    move |a, t, p| if fails(a, t, p) { outcome } else { Outcome::Ok }
}

/// One agent's probes of "mx" on each port and family at `now`: `outcome_of(port)` says what
/// each finds; `seq` numbers them.
fn probes_of_mx(
    seq: &mut u64,
    now: i64,
    families: &[Family],
    outcome_of: impl Fn(u16) -> Outcome,
) -> Vec<ProbeResult> {
    let mut results = Vec::new();
    for &family in families {
        for port in [587u16, 443] {
            *seq += 1;
            let mut r = result(*seq, now, "mx", port, outcome_of(port));
            r.family = family;
            results.push(r);
        }
    }
    results
}

/// What a probe of "mx" finds while its agent's 587 is `closed` or not: 587 times out when
/// closed; everything else is ok.
fn closing_587(closed: bool) -> impl Fn(u16) -> Outcome {
    move |port| {
        if closed && port == 587 {
            Outcome::Timeout
        } else {
            Outcome::Ok
        }
    }
}

const STD: &[(&str, u16)] = &[("mx", 587), ("mx", 443)];

fn all_ok(_: &str, _: &str, _: u16) -> Outcome {
    Outcome::Ok
}

fn fleet_two_providers() -> Vec<AgentMeta> {
    vec![
        agent_meta("g1", "gcp", "acct-a"),
        agent_meta("g2", "gcp", "acct-a"),
        agent_meta("g3", "gcp", "acct-b"),
        agent_meta("h1", "hetzner", "h-acct"),
        agent_meta("h2", "hetzner", "h-acct2"),
    ]
}

#[test]
fn a_single_lost_probe_raises_nothing() {
    let mut f = settled_fleet(fleet_two_providers(), 5);
    f.round(
        failing(Outcome::Timeout, |a, _, p| a == "g1" && p == 587),
        STD,
    );
    f.rounds(5, all_ok, STD);
    f.expect_quiet();
}

#[test]
fn three_consistent_failures_of_one_agent_are_one_agent_event() {
    let mut f = settled_fleet(fleet_two_providers(), 5);
    let closed = failing(Outcome::Timeout, |a, _, p| a == "g1" && p == 587);
    f.rounds(2, closed, STD);
    f.expect_quiet();
    f.rounds(6, closed, STD);
    let e = f.expect_events(1)[0];
    assert_eq!(e.kind, EventKind::PolicyChanged);
    assert_eq!(e.scope, Scope::Agent);
    assert_eq!(e.agent.as_deref(), Some("g1"));
    assert_eq!(e.account.as_deref(), Some("acct-a"));
    assert_eq!((e.from.as_str(), e.to.as_str()), ("open", "blocked"));
    assert_eq!(e.outcome.as_deref(), Some("timeout"));
    assert_eq!(e.port, Some(587));
    // Detection delay: confirmed on the 3rd failing round, attributed one settle later.
    let first_fail_round = 5;
    assert!(f.events[0].0 <= first_fail_round + 3, "{:?}", f.events[0]);
}

#[test]
fn a_whole_account_changing_is_one_account_event_and_nothing_for_the_sibling() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    // g2's probe lands a round later than g1's: siblings still group.
    f.round(
        failing(Outcome::Timeout, |a, _, p| a == "g1" && p == 587),
        STD,
    );
    f.rounds(
        8,
        failing(Outcome::Timeout, |a, _, p| {
            (a == "g1" || a == "g2") && p == 587
        }),
        STD,
    );
    let ev = f.expect_events(1);
    assert_eq!(ev[0].scope, Scope::Account);
    assert_eq!(ev[0].provider.as_deref(), Some("gcp"));
    assert_eq!(ev[0].account.as_deref(), Some("acct-a"));
    assert_eq!(ev[0].agent, None);
    // And back open: one account event again.
    f.rounds(8, all_ok, STD);
    let ev = f.expect_events(2);
    assert_eq!(ev[1].scope, Scope::Account);
    assert_eq!(ev[1].to, State::Open);
}

#[test]
fn every_account_of_a_provider_is_a_provider_event() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    f.rounds(
        8,
        failing(Outcome::Refused, |a, _, p| a.starts_with('g') && p == 587),
        STD,
    );
    let ev = f.expect_events(1);
    assert_eq!(ev[0].scope, Scope::Provider);
    assert_eq!(ev[0].provider.as_deref(), Some("gcp"));
    assert_eq!(ev[0].account, None);
    assert_eq!(ev[0].outcome.as_deref(), Some("refused"));
}

#[test]
fn everyone_failing_on_one_target_is_a_destination_outage() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    f.rounds(8, failing(Outcome::Refused, |_, _, p| p == 587), STD);
    let ev = f.expect_events(1);
    assert_eq!(ev[0].kind, EventKind::DestinationOutage);
    assert_eq!(ev[0].scope, Scope::Destination);
    assert_eq!(ev[0].provider, None);
    assert!(f.det.outage_open("mx", 587, Family::Ipv4));
    f.rounds(8, all_ok, STD);
    let ev = f.expect_events(2);
    assert_eq!(ev[1].kind, EventKind::DestinationOutage);
    assert_eq!(ev[1].to, State::Open);
    assert!(!f.det.outage_open("mx", 587, Family::Ipv4));
}

#[test]
fn one_provider_fleet_with_a_second_target_still_sees_the_destination() {
    let agents = vec![agent_meta("a1", "aws", "x"), agent_meta("a2", "aws", "y")];
    let targets: &[(&str, u16)] = &[("mx", 587), ("mx2", 587), ("mx", 443)];
    let mut f = Fleet::new(agents);
    f.rounds(4, all_ok, targets);
    f.rounds(
        8,
        failing(Outcome::Timeout, |_, t, p| t == "mx" && p == 587),
        targets,
    );
    let ev = f.expect_events(1);
    assert_eq!(ev[0].kind, EventKind::DestinationOutage);
}

#[test]
fn control_port_failing_too_means_lost_network_not_policy() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    f.rounds(8, failing(Outcome::Unreachable, |a, _, _| a == "g1"), STD);
    f.rounds(8, all_ok, STD);
    f.expect_quiet();
}

#[test]
fn a_flapping_series_is_alerted_once() {
    let config = DetectorConfig {
        flap_window: 11,
        ..counted()
    };
    let mut f = Fleet::with_config(fleet_two_providers(), config);
    f.rounds(12, all_ok, STD);
    for i in 0..40 {
        f.round(
            failing(Outcome::Timeout, move |a, _, p| {
                a == "h1" && p == 587 && (i % 4 < 2)
            }),
            STD,
        );
    }
    let ev = f.policy_events();
    let flapping: Vec<_> = ev.iter().filter(|e| e.to == State::Flapping).collect();
    assert_eq!(flapping.len(), 1, "{ev:?}");
    assert_eq!(flapping[0].agent.as_deref(), Some("h1"));
    // Nothing else while it flaps (no open/blocked on every flip).
    f.expect_events(1);
}

#[test]
fn replayed_old_results_raise_no_alert() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    let g1 = f.agents[0].clone();
    // An hour later g1's spool drains: ten old rounds in which 587 was closed.
    let now = f.now() + 3_600_000;
    let old: Vec<ProbeResult> = (0..10)
        .map(|i| {
            result(
                1000 + i,
                f.now() + i as i64 * INTERVAL,
                "mx",
                587,
                Outcome::Timeout,
            )
        })
        .collect();
    let mut events = f.det.observe(&g1, &old, true, now);
    for s in 1..=120 {
        events.extend(f.det.tick(now + s * 1000));
    }
    let policy: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::PolicyChanged || e.kind == EventKind::DestinationOutage)
        .collect();
    assert!(policy.is_empty(), "{policy:?}");
}

#[test]
fn silent_agents_and_their_return() {
    let f = settled_fleet(fleet_two_providers(), 2);
    let mut only_others = Fleet {
        agents: f.agents[1..].to_vec(),
        ..f
    };
    only_others.rounds(4, all_ok, STD);
    let ev = only_others.expect_events(1);
    assert_eq!(ev[0].kind, EventKind::AgentSilent);
    assert_eq!(ev[0].agent.as_deref(), Some("g1"));
    assert_eq!(
        (ev[0].from.as_str(), ev[0].to.as_str()),
        ("reporting", "silent")
    );
    let g1 = agent_meta("g1", "gcp", "acct-a");
    let back = only_others.det.agent_seen(&g1, only_others.now());
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].kind, EventKind::AgentBack);
    assert!(only_others
        .det
        .agent_seen(&g1, only_others.now())
        .is_empty());
}

#[test]
fn no_address_is_never_a_failure() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    f.rounds(6, failing(Outcome::NoAddress, |_, _, p| p == 587), STD);
    f.expect_quiet();
}

#[test]
fn detector_config_parses_and_rejects_unknown_keys() {
    let c: DetectorConfig = toml::from_str("false_alarm_rate = 1e-6\nsettle_secs = 30\n").unwrap();
    assert_eq!(c.false_alarm_rate, 1e-6);
    assert_eq!(c.settle_secs, 30);
    assert_eq!(
        c.silent_after_secs,
        DetectorConfig::default().silent_after_secs
    );
    // The fixed count it replaced (deprecated, then removed) is refused by name, like any unknown key.
    let err = toml::from_str::<DetectorConfig>("confirm_probes = 4\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("confirm_probes"), "{err}");
    let err = toml::from_str::<DetectorConfig>("confirm_probe = 4\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("confirm_probe"), "{err}");
}

#[test]
fn whole_collector_config_with_sinks_and_rules() {
    let text = r#"
[http]
listen = "127.0.0.1:9090"

[detector]
settle_secs = 60

[[alerts]]
kind = "slack"
url = "https://hooks.slack.com/services/T000/B000/XXXX"

[[alerts]]
name = "am"
kind = "alertmanager"
url = "http://127.0.0.1:9093"
[[alerts.match]]
ports = [587]
scopes = ["account", "provider"]
to = ["blocked", "open"]
"#;
    let c: egresswatch_collector::config::Config = toml::from_str(text).unwrap();
    assert_eq!(c.http.listen.port(), 9090);
    assert_eq!(c.alerts.len(), 2);
    let rule = c.alerts[1].rule();
    let mut e = Event {
        kind: EventKind::PolicyChanged,
        scope: Scope::Account,
        provider: Some("aws".into()),
        account: Some("x".into()),
        agent: None,
        target: Some("mx".into()),
        port: Some(587),
        from: State::Open,
        to: State::Blocked,
        at: String::new(),
        family: None,
        id: None,
        outcome: None,
        at_unix_ms: 0,
        since: None,
        witnesses: Vec::new(),
        silenced_by: None,
    };
    assert!(rule.admits(&e));
    e.scope = Scope::Agent;
    assert!(!rule.admits(&e));
    // An unknown key in a sink names itself and its line.
    let bad = "[[alerts]]\nurl = \"http://x\"\nretry = 3\n";
    let err = toml::from_str::<egresswatch_collector::config::Config>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("retry") && err.contains("line 3"), "{err}");
}

#[test]
fn restored_baseline_raises_nothing_and_detects_the_next_change() {
    let agents = fleet_two_providers();
    let mut det = Detector::new(counted());
    let now = T0;
    for a in &agents {
        det.restore(a, &result(1, now - 30_000, "mx", 587, Outcome::Ok), now);
        det.restore(a, &result(2, now - 30_000, "mx", 443, Outcome::Ok), now);
    }
    let mut f = Fleet {
        det,
        agents,
        round: 0,
        seq: 10,
        events: Vec::new(),
    };
    f.rounds(
        6,
        failing(Outcome::Timeout, |a, _, p| a == "h1" && p == 587),
        STD,
    );
    let ev = f.expect_events(1);
    assert_eq!(
        ev[0].scope,
        Scope::Account,
        "h1 is its account's only agent"
    );
    // The restored series were confirmed already: the change confirmed on the 3rd probe.
    assert!(f.events[0].0 <= 3, "{:?}", f.events[0]);
}

#[test]
fn the_settling_wait_follows_the_probe_interval() {
    // Agents probing every 5 s: the change is out about one interval after confirmation, not
    // after the 60 s cap.
    let agents = fleet_two_providers();
    let mut det = Detector::new(counted());
    let mut seq = 0;
    let close_at = T0 + 50_000;
    let mut first = None;
    let mut t = T0;
    while t < T0 + 120_000 && first.is_none() {
        if t % 5_000 == 0 {
            for a in &agents {
                let closed =
                    a.agent_id.starts_with('g') && a.labels.account == "acct-a" && t >= close_at;
                let rs = probes_of_mx(&mut seq, t, &[Family::Ipv4], closing_587(closed));
                let ev = det.observe(a, &rs, true, t);
                if let Some(e) = ev.into_iter().next() {
                    first.get_or_insert((t, e));
                }
            }
        }
        let ev = det.tick(t);
        if let Some(e) = ev.into_iter().next() {
            first.get_or_insert((t, e));
        }
        t += 500;
    }
    let (at, e) = first.expect("an event");
    assert_eq!(e.scope, Scope::Account);
    let delay = at - close_at;
    // 3 probes (the 3rd at +10 s) and one 5 s interval of settling.
    assert!(delay <= 15_000, "delay {delay} ms");
}

/// Agents probing every 10 s; account acct-a closes 587 at `close_at`, and g2 of that account
/// sends nothing from 3 s before it for `quiet_ms` (its collector died; it is failing over),
/// then everything its spool kept. Returns the policy events with the time each came out.
fn account_close_with_a_sibling_quiet(close_at: i64, quiet_ms: i64) -> Vec<(i64, Event)> {
    let agents = fleet_two_providers();
    let mut det = Detector::new(counted());
    let mut seq = 0;
    let quiet_from = close_at - 3_000;
    let mut spooled: Vec<ProbeResult> = Vec::new();
    let mut events = Vec::new();
    let mut t = T0;
    while t < close_at + 200_000 {
        if (t - T0) % 10_000 == 0 {
            for a in &agents {
                let closed = a.labels.account == "acct-a" && t >= close_at;
                let rs = probes_of_mx(&mut seq, t, &[Family::Ipv4], closing_587(closed));
                if a.agent_id == "g2" && t >= quiet_from && t < quiet_from + quiet_ms {
                    spooled.extend(rs);
                    continue;
                }
                let mut batch = std::mem::take(&mut spooled);
                batch.extend(rs);
                events.extend(det.observe(a, &batch, true, t).into_iter().map(|e| (t, e)));
            }
        }
        events.extend(det.tick(t).into_iter().map(|e| (t, e)));
        t += 1_000;
    }
    events.retain(|(_, e)| e.kind == EventKind::PolicyChanged);
    events
}

#[test]
fn an_account_sibling_unheard_since_the_departure_is_waited_for_up_to_settle_secs() {
    // g1 decides 20 s after the close (its third failure); one interval later g2 has still
    // sent nothing since before the close: the change waits for it, and when its spool comes
    // in 50 s after the close the account's change is one account event.
    let close_at = T0 + 100_000;
    let events = account_close_with_a_sibling_quiet(close_at, 53_000);
    let (at, first) = events.first().expect("an event");
    assert_eq!(first.scope, Scope::Account, "{events:#?}");
    assert_eq!(first.account.as_deref(), Some("acct-a"));
    let named: Vec<&str> = first.witnesses.iter().map(|w| w.agent.as_str()).collect();
    assert!(named.contains(&"g1") && named.contains(&"g2"), "{named:?}");
    assert_eq!(*at, close_at + 50_000, "out with g2's spooled results");
    assert_eq!(events.len(), 1, "{events:#?}");

    // A sibling that stays unheard is waited for `settle_secs` (60 s) after the decision, no
    // longer: then the one agent that saw the change is named.
    let events = account_close_with_a_sibling_quiet(close_at, 150_000);
    let (at, first) = events.first().expect("an event");
    assert_eq!(first.scope, Scope::Agent, "{events:#?}");
    assert_eq!(first.agent.as_deref(), Some("g1"));
    assert_eq!(
        *at,
        close_at + 20_000 + 60_000,
        "decided at +20 s, waited 60 s"
    );
}

#[test]
fn a_provider_blocking_what_others_always_blocked_is_not_a_destination_outage() {
    // GCP always blocks 25; when Hetzner starts blocking it too, everyone fails on mx:25 — but
    // only Hetzner changed: a provider change, not an outage.
    let targets: &[(&str, u16)] = &[("mx", 25), ("mx", 443)];
    let mut f = Fleet::new(fleet_two_providers());
    let gcp_blocks = failing(Outcome::Timeout, |a, _, p| a.starts_with('g') && p == 25);
    f.rounds(4, gcp_blocks, targets);
    f.rounds(8, failing(Outcome::Timeout, |_, _, p| p == 25), targets);
    let ev = f.expect_events(1);
    assert_eq!(ev[0].kind, EventKind::PolicyChanged);
    assert_eq!(ev[0].scope, Scope::Provider);
    assert_eq!(ev[0].provider.as_deref(), Some("hetzner"));
}

#[test]
fn both_families_changing_together_is_one_event() {
    let mut det = Detector::new(counted());
    let agents = fleet_two_providers();
    let mut seq = 0;
    let mut events = Vec::new();
    for round in 0..10i64 {
        let now = T0 + round * INTERVAL;
        for a in &agents {
            let closed = a.labels.account == "acct-a" && round >= 3;
            let rs = probes_of_mx(
                &mut seq,
                now,
                &[Family::Ipv4, Family::Ipv6],
                closing_587(closed),
            );
            events.extend(det.observe(a, &rs, true, now));
        }
        for s in 1..=60 {
            events.extend(det.tick(now + s * 1000));
        }
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].scope, Scope::Account);
    assert_eq!(events[0].family, None);
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json.get("family"), Some(&serde_json::Value::Null));
    assert!(
        !events[0].summary().contains("only"),
        "{}",
        events[0].summary()
    );
}

/// Ten rounds of every agent probing "mx" on 587 and 443 over both families, 587 timing out
/// from round 3 on where `closed(agent, account, family)` holds. Returns every event.
fn dual_stack_rounds(
    agents: &[AgentMeta],
    closed: impl Fn(&str, &str, Family) -> bool,
) -> Vec<Event> {
    let mut det = Detector::new(counted());
    let mut seq = 0;
    let mut events = Vec::new();
    for round in 0..10i64 {
        let now = T0 + round * INTERVAL;
        for a in agents {
            for family in [Family::Ipv4, Family::Ipv6] {
                let shut = round >= 3 && closed(&a.agent_id, &a.labels.account, family);
                let rs = probes_of_mx(&mut seq, now, &[family], closing_587(shut));
                events.extend(det.observe(a, &rs, true, now));
            }
        }
        for s in 1..=60 {
            events.extend(det.tick(now + s * 1000));
        }
    }
    events
}

#[test]
fn an_account_closing_over_ipv4_only_is_an_event_that_names_ipv4() {
    let events = dual_stack_rounds(&fleet_two_providers(), |_, account, family| {
        account == "acct-a" && family == Family::Ipv4
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.scope, Scope::Account);
    assert_eq!(e.account.as_deref(), Some("acct-a"));
    assert_eq!(e.family, Some(Family::Ipv4));
    assert_eq!(serde_json::to_value(e).unwrap()["family"], "ipv4");
    assert!(
        e.summary().contains("open → blocked over IPv4 only"),
        "{}",
        e.summary()
    );
}

#[test]
fn a_provider_closing_over_ipv4_only_names_ipv4() {
    let events = dual_stack_rounds(&fleet_two_providers(), |agent, _, family| {
        agent.starts_with('g') && family == Family::Ipv4
    });
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].scope, Scope::Provider);
    assert_eq!(events[0].provider.as_deref(), Some("gcp"));
    assert_eq!(events[0].family, Some(Family::Ipv4));
}

#[test]
fn one_agent_closing_over_ipv6_only_names_ipv6() {
    let events = dual_stack_rounds(&fleet_two_providers(), |agent, _, family| {
        agent == "g1" && family == Family::Ipv6
    });
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].scope, Scope::Agent);
    assert_eq!(events[0].agent.as_deref(), Some("g1"));
    assert_eq!(events[0].family, Some(Family::Ipv6));
}

#[test]
fn an_account_closing_over_both_families_names_none() {
    let events = dual_stack_rounds(&fleet_two_providers(), |_, account, _| account == "acct-a");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].scope, Scope::Account);
    assert_eq!(events[0].family, None);
}

/// One account closing 587 over IPv4 and IPv6, with the IPv6 probes a few seconds behind the
/// IPv4 ones (as real schedules are): one event without a family, not two.
#[test]
fn both_families_changing_a_few_seconds_apart_are_one_event() {
    let config = DetectorConfig {
        settle_secs: 5,
        ..counted()
    };
    let mut det = Detector::new(config);
    let agents = [
        agent_meta("p1", "aws", "prod"),
        agent_meta("p2", "aws", "prod"),
        agent_meta("d1", "aws", "dev"),
    ];
    let mut seq = 0u64;
    let mut events = Vec::new();
    let step = 2_000i64;
    for round in 0..12i64 {
        let blocked = round >= 4;
        for (offset, family) in [(0i64, Family::Ipv4), (1_200, Family::Ipv6)] {
            let now = T0 + round * step + offset;
            for a in &agents {
                let closed = blocked && a.labels.account == "prod";
                let results = probes_of_mx(&mut seq, now, &[family], closing_587(closed));
                events.extend(det.observe(a, &results, true, now));
            }
            events.extend(det.tick(now));
        }
    }
    for t in 0..20 {
        events.extend(det.tick(T0 + 12 * step + t * 1000));
    }
    let changes: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::PolicyChanged)
        .collect();
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0].scope, Scope::Account);
    assert_eq!(changes[0].family, None);
}

/// One result of "mx" at `at`, with why it ran and, for a failure, the ICMP error's sender.
fn evidence(seq: u64, at: i64, port: u16, outcome: Outcome, cause: ProbeCause) -> ProbeResult {
    let mut r = result(seq, at, "mx", port, outcome);
    r.cause = cause;
    if outcome.is_failure() {
        r.icmp = Some(IcmpReport {
            from: Some("198.18.0.1".parse().unwrap()),
            icmp_type: 3,
            icmp_code: 13,
            origin: 2,
        });
    }
    r
}

/// Feeds `(agent index, offset from t, port, outcome, cause)` at their times and ticks every
/// second up to `t + until_ms`; returns the events.
fn on_demand(
    f: &mut Fleet,
    t: i64,
    results: &[(usize, i64, u16, Outcome, ProbeCause)],
    until_ms: i64,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut pending: Vec<_> = results.to_vec();
    pending.sort_by_key(|r| r.1);
    let mut next = 0;
    for s in 0..=until_ms / 1000 {
        let now = t + s * 1000;
        while next < pending.len() && t + pending[next].1 <= now {
            let (i, off, port, outcome, cause) = pending[next];
            f.seq += 1;
            let a = f.agents[i].clone();
            let r = evidence(f.seq, t + off, port, outcome, cause);
            events.extend(f.det.observe(&a, &[r], true, now));
            next += 1;
        }
        events.extend(f.det.tick(now));
    }
    events
}

use egresswatch_wire::{IcmpReport, ProbeCause};
use Outcome::{Ok as Up, Timeout as Down};
use ProbeCause::{Confirmation as Conf, Requested as Req, Scheduled as Sched};

#[test]
fn an_account_change_is_decided_in_seconds_by_confirmations_and_requested_answers() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    f.det.take_suspicions();
    let t = f.now() + 10_000;
    // g1's scheduled 587 fails; it re-probes three times from 1.5 s after its start (the
    // connection is left unanswered); the collector asks g2 (same account), g3 (the provider's
    // other account) and h1 (elsewhere), who answer once each (requested probes are not
    // re-probed).
    let events = on_demand(
        &mut f,
        t,
        &[
            (0, 0, 587, Down, Sched),
            (1, 2_000, 587, Down, Req),
            (2, 2_500, 587, Up, Req),
            (3, 3_000, 587, Up, Req),
            (0, 1_500, 587, Down, Conf),
            (0, 2_500, 587, Down, Conf),
            (0, 3_500, 587, Down, Conf),
        ],
        20_000,
    );
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e.scope, Scope::Account);
    assert_eq!(e.account.as_deref(), Some("acct-a"));
    assert_eq!(e.since.as_deref(), Some(rfc3339(t).as_str()));
    let named: Vec<&str> = e.witnesses.iter().map(|w| w.agent.as_str()).collect();
    assert_eq!(named, ["g1", "g2"]);
    for w in &e.witnesses {
        assert_eq!(w.outcome, "timeout");
        assert_eq!(w.icmp_from.as_deref(), Some("198.18.0.1"));
        assert_eq!(w.family, Family::Ipv4);
    }
    // Once per departure: g1's and g2's re-probes raised no more suspicions; the requested
    // answers that departed (g2's) one each.
    let suspects: Vec<String> = f
        .det
        .take_suspicions()
        .into_iter()
        .map(|s| s.key.agent)
        .collect();
    assert_eq!(suspects, ["g1", "g2"]);
}

#[test]
fn an_agent_flooding_confirmations_cannot_decide_its_account_or_provider() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    let t = f.now() + 10_000;
    let mut flood = vec![(0, 0, 587, Down, Sched)];
    for i in 0..50 {
        flood.push((0, 1_000 + i * 200, 587, Down, Conf));
    }
    let events = on_demand(&mut f, t, &flood, 40_000);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn a_late_answer_after_the_decision_changes_nothing() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    let t = f.now() + 10_000;
    let decided = on_demand(
        &mut f,
        t,
        &[
            (0, 0, 587, Down, Sched),
            (1, 2_000, 587, Down, Req),
            (0, 1_500, 587, Down, Conf),
            (0, 2_500, 587, Down, Conf),
            (0, 3_500, 587, Down, Conf),
            (2, 2_500, 587, Up, Req),
            (3, 3_000, 587, Up, Req),
        ],
        20_000,
    );
    assert_eq!(decided.len(), 1, "{decided:#?}");
    // g2 answers a request again, late: measured before its latest result (ignored), and one
    // measured after that agrees with the decision.
    let g2 = f.agents[1].clone();
    let late = [
        evidence(900, t + 1_000, 587, Up, Req),
        evidence(901, t + 21_000, 587, Down, Req),
    ];
    let mut events = f.det.observe(&g2, &late, true, t + 22_000);
    for s in 0..60 {
        events.extend(f.det.tick(t + 22_000 + s * 1000));
    }
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn a_failing_control_of_the_same_round_means_no_smtp_evidence() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    // g1's network goes: 587 listed before the control in its batch, and its re-probes too.
    for _ in 0..6 {
        let t = f.now() + 10_000;
        let g1 = f.agents[0].clone();
        f.seq += 3;
        let batch = [
            evidence(f.seq, t, 587, Down, Sched),
            evidence(f.seq + 1, t, 443, Down, Sched),
        ];
        let mut events = f.det.observe(&g1, &batch, true, t);
        let conf = [evidence(f.seq + 2, t + 3_000, 587, Down, Conf)];
        events.extend(f.det.observe(&g1, &conf, true, t + 3_000));
        for s in 0..50 {
            events.extend(f.det.tick(t + s * 1000));
        }
        events.retain(|e| e.kind != EventKind::AgentSilent);
        assert!(events.is_empty(), "{events:#?}");
        f.round += 1;
    }
    assert!(f.det.take_suspicions().iter().all(|s| s.key.agent != "g1"));
}

#[test]
fn fast_answers_never_turn_a_destination_outage_into_a_policy_change() {
    let mut f = settled_fleet(fleet_two_providers(), 4);
    let t = f.now() + 10_000;
    // mx:587 goes down for everyone: g1's departure and its re-probes, quick failing answers
    // from g2, g3 and h1; h2 only reports on its schedule (and re-probes), half a minute later.
    let mut results = vec![(0, 0, 587, Down, Sched)];
    for (i, off) in [(1usize, 2_000i64), (2, 2_500), (3, 3_000)] {
        results.push((i, off, 587, Down, Req));
    }
    for after in [1_500, 2_500, 3_500] {
        results.push((0, after, 587, Down, Conf));
        results.push((4, 30_000 + after, 587, Down, Conf));
    }
    results.push((4, 30_000, 587, Down, Sched));
    let events = on_demand(&mut f, t, &results, 60_000);
    assert!(
        events.iter().all(|e| e.kind != EventKind::PolicyChanged),
        "{events:#?}"
    );
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].kind, EventKind::DestinationOutage);
    assert_eq!(events[0].since.as_deref(), Some(rfc3339(t).as_str()));
    assert!(f.det.outage_open("mx", 587, Family::Ipv4));
}

/// The probe counts these tests feed are for α = 1e-5 (three failing scheduled probes at the 2 %
/// floor decide); the default, 1e-7, takes one more, which the lossy simulation measures.
fn counted() -> DetectorConfig {
    DetectorConfig {
        false_alarm_rate: 1e-5,
        ..DetectorConfig::default()
    }
}

/// One agent alone in its account, probing mx on 587, 25 and 443 over both families every 10 s
/// (as in `bench/compare.sh`), settled open; then 587 is dropped at `t` over IPv4, and over
/// IPv6 too unless `ipv6` says otherwise. As the agent does now, both families of a port start
/// at the same moments; a connection left unanswered for 1.5 s starts its three confirmations
/// then, 1 s apart, alongside the scheduled probe; a dropped probe's result arrives when it
/// times out, 5 s after its start. Returns `t` and the events up to `until_ms` after it.
fn solo_flip(ipv6: Outcome, until_ms: i64) -> (i64, Vec<Event>) {
    let solo = agent_meta("solo", "lab", "solo");
    let mut det = Detector::new(DetectorConfig::default());
    let mut seq = 0;
    let mut feed = |det: &mut Detector, fam, at, port, outcome, cause, now| {
        seq += 1;
        let mut r = evidence(seq, at, port, outcome, cause);
        r.family = fam;
        det.observe(&solo, &[r], true, now)
    };
    let t0 = T0;
    for round in 0..6 {
        for (i, port) in [587u16, 25, 443].into_iter().enumerate() {
            for fam in [Family::Ipv4, Family::Ipv6] {
                let at = t0 + round * 10_000 + i as i64 * 1_000;
                feed(&mut det, fam, at, port, Up, Sched, at + 100);
            }
        }
    }
    let t = t0 + 60_000;
    let mut results = Vec::new();
    for round in 0..3 {
        let start = t + round * 10_000;
        for (fam, outcome) in [(Family::Ipv4, Down), (Family::Ipv6, ipv6)] {
            results.push((fam, start, outcome, Sched));
            if outcome == Down {
                for after in [1_500, 2_500, 3_500] {
                    results.push((fam, start + after, Down, Conf));
                }
            }
        }
    }
    let arrival =
        |r: &(Family, i64, Outcome, ProbeCause)| r.1 + if r.2 == Down { 5_000 } else { 100 };
    results.sort_by_key(arrival);
    let mut events = Vec::new();
    let mut next = 0;
    for s in 0..=until_ms / 1000 {
        let now = t + s * 1000;
        while next < results.len() && arrival(&results[next]) <= now {
            let (fam, at, outcome, cause) = results[next];
            events.extend(feed(&mut det, fam, at, 587, outcome, cause, now));
            next += 1;
        }
        events.extend(det.tick(now));
    }
    (t, events)
}

#[test]
fn an_agent_alone_in_its_account_decides_on_both_families_together() {
    // At the default α: each family's failure and its three early confirmations; the last of
    // them times out 8.5 s after the failing probes started.
    let (t, events) = solo_flip(Down, 30_000);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!((e.port, e.to), (Some(587), State::Blocked));
    assert_eq!(e.scope, Scope::Account, "alone in its account: {e:#?}");
    assert_eq!(e.family, None, "both families, one event: {e:#?}");
    assert!(e.at_unix_ms - t <= 9_000, "{}", e.at_unix_ms - t);
    // IPv4 alone: its evidence from one round does not decide; the next scheduled probe and
    // its confirmations do, and the event names IPv4.
    let (t, events) = solo_flip(Up, 30_000);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].family, Some(Family::Ipv4), "{events:#?}");
    let after = events[0].at_unix_ms - t;
    assert!((10_000..=19_000).contains(&after), "{after}");
}

/// The lab demo's fleet and timeline through the detector, at the demo's pace (every agent
/// probes mx on 587, 2525 and 443 every 3 s with a phase and a ±10 % jitter of its own; a
/// result reaches the collector 0.1–2.5 s after it ends, in whatever order that makes), with
/// the agents' confirmations as they make them: AWS acct-a's 587 is dropped from 60 s to
/// 180 s, and the destination refuses 2525 from 240 s to 330 s. Returns the policy and outage
/// events with the second each came out.
fn demo_timeline(seed: u64) -> Vec<(i64, Event)> {
    let (agents, results) = demo_results(seed);
    let mut det = Detector::new(DetectorConfig::default());
    let mut events = live(&mut det, &agents, &results, 0..=450);
    events.retain(|(_, e)| e.kind != EventKind::AgentSilent && e.kind != EventKind::AgentBack);
    events
}

/// One result on its way: (arrival, measured, agent, port, outcome, cause).
type Arrival = (i64, i64, usize, u16, Outcome, ProbeCause);

/// Feeds the results arriving in the seconds of `span` (counted from `T0`) as a collector does,
/// each at the second it arrives by, ticking once a second; returns the events with the second
/// each came out.
fn live(
    det: &mut Detector,
    agents: &[AgentMeta],
    results: &[Arrival],
    span: std::ops::RangeInclusive<i64>,
) -> Vec<(i64, Event)> {
    let mut events = Vec::new();
    for s in span {
        let now = T0 + s * 1000;
        let from = results.partition_point(|r| r.0 <= now - 1000);
        let to = results.partition_point(|r| r.0 <= now);
        for (n, r) in results.iter().enumerate().take(to).skip(from) {
            let (_, at, i, port, outcome, cause) = *r;
            let result = evidence(n as u64 + 1, at, port, outcome, cause);
            events.extend(
                det.observe(&agents[i], &[result], true, now)
                    .into_iter()
                    .map(|e| (s, e)),
            );
        }
        events.extend(det.tick(now).into_iter().map(|e| (s, e)));
    }
    events
}

/// The demo's fleet, and every result its agents send over the timeline, in arrival order.
fn demo_results(seed: u64) -> (Vec<AgentMeta>, Vec<Arrival>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut agents = Vec::new();
    for (provider, account, n) in [
        ("gcp", "shop-prod", 3),
        ("aws", "acct-a", 2),
        ("aws", "acct-b", 2),
        ("azure", "sub-1", 2),
        ("digitalocean", "team", 2),
        ("hetzner", "proj", 2),
    ] {
        for i in 0..n {
            agents.push(agent_meta(&format!("{account}-{i}"), provider, account));
        }
    }
    let closed = |a: &AgentMeta, port: u16, at: i64| -> Option<Outcome> {
        let s = (at - T0) / 1000;
        if port == 587 && a.labels.account == "acct-a" && (60..180).contains(&s) {
            return Some(Down);
        }
        if port == 2525 && (240..330).contains(&s) {
            return Some(Outcome::Refused);
        }
        None
    };
    let mut results: Vec<Arrival> = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let first = results.len();
        let mut start = T0 + rng.gen_range(0..3_000);
        // The agent's own memory of each port: a departure gets three confirmations.
        let mut was_open = [true; 3];
        while start < T0 + 420_000 {
            for (p, port) in [587u16, 2525, 443].into_iter().enumerate() {
                let at = start + p as i64 * 50;
                let outcome = closed(a, port, at).unwrap_or(Up);
                let took = match outcome {
                    Down => 3_000,
                    Outcome::Refused => 5,
                    _ => 30,
                };
                results.push((at + took, at, i, port, outcome, Sched));
                let open = outcome == Up;
                if open != was_open[p] {
                    let after: [i64; 3] = match outcome {
                        Down => [1_500, 2_500, 3_500],
                        Outcome::Refused => [1_000, 2_000, 3_000],
                        _ => [1_000, 2_000, 3_000],
                    };
                    for d in after {
                        let c = at + d;
                        let o = closed(a, port, c).unwrap_or(Up);
                        let took = if o == Down { 3_000 } else { 30 };
                        results.push((c + took, c, i, port, o, Conf));
                    }
                }
                was_open[p] = open;
            }
            start += 3_000 + rng.gen_range(-300..=300);
        }
        // One agent's results reach the collector in the order they were recorded (when each
        // probe ended), in batches that take a while each.
        let mine = &mut results[first..];
        mine.sort_by_key(|r| r.0);
        let mut last = 0;
        for r in mine.iter_mut() {
            r.0 = (r.0 + rng.gen_range(100..2_500)).max(last);
            last = r.0;
        }
    }
    results.sort_by_key(|r| r.0);
    (agents, results)
}

#[test]
fn the_demo_timeline_names_its_four_changes_at_their_layers_whatever_the_order() {
    for seed in 0..60 {
        let events = demo_timeline(seed);
        let named: Vec<String> = events
            .iter()
            .map(|(_, e)| {
                format!(
                    "{:?} {:?} {} {}:{} {}→{}",
                    e.kind,
                    e.scope,
                    e.provider.as_deref().unwrap_or("-"),
                    e.account.as_deref().unwrap_or("-"),
                    e.port.unwrap_or(0),
                    e.from.as_str(),
                    e.to.as_str()
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                "PolicyChanged Account aws acct-a:587 open→blocked",
                "PolicyChanged Account aws acct-a:587 blocked→open",
                "DestinationOutage Destination - -:2525 open→blocked",
                "DestinationOutage Destination - -:2525 blocked→open",
            ],
            "seed {seed}: {events:#?}"
        );
    }
}

/// What a change's event says, whoever decided it: how a collector that takes the lead
/// recognises what the previous leader already recorded.
fn change_key(e: &Event) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {} {} {:?}",
        e.kind,
        e.scope,
        e.provider,
        e.account,
        e.agent,
        e.port,
        e.from.as_str(),
        e.to.as_str(),
        e.since
    )
}

#[test]
fn a_collector_taking_the_lead_mid_decision_names_the_same_layers() {
    // The leader dies at a moment of the demo's timeline, some of them while a change is
    // decided and waits for its layer; the next rebuilds its detector from the stored results
    // (replayed with ticks at their arrival times, as `take_lead` does) and goes on live. What
    // both record together is what one collector alone records.
    for seed in 0..6 {
        let (agents, results) = demo_results(seed);
        let alone: Vec<String> = live(
            &mut Detector::new(DetectorConfig::default()),
            &agents,
            &results,
            0..=450,
        )
        .iter()
        .filter(|(_, e)| e.kind != EventKind::AgentSilent && e.kind != EventKind::AgentBack)
        .map(|(_, e)| change_key(e))
        .collect();
        for dies_at in [61, 64, 67, 183, 242, 244, 246, 333, 336] {
            let mut leader = Detector::new(DetectorConfig::default());
            let mut recorded: Vec<String> = live(&mut leader, &agents, &results, 0..=dies_at)
                .iter()
                .map(|(_, e)| change_key(e))
                .collect();
            let takeover = T0 + (dies_at + 1) * 1000;
            let mut next = Detector::new(DetectorConfig::default());
            let mut replayed = Vec::new();
            let stored = &results[..results.partition_point(|r| r.0 <= takeover)];
            // Stored with the second they arrived by, as the collector receives them.
            let received = |r: &Arrival| (r.0 + 999) / 1000 * 1000;
            let mut next_tick = stored.first().map(|r| received(r) + 1000);
            for (n, r) in stored.iter().enumerate() {
                while let Some(t) = next_tick.filter(|t| *t <= received(r)) {
                    replayed.extend(next.tick(t));
                    next_tick = Some(t + 1000);
                }
                let (_, at, i, port, outcome, cause) = *r;
                let result = evidence(n as u64 + 1, at, port, outcome, cause);
                replayed.extend(next.observe(&agents[i], &[result], true, received(r)));
            }
            replayed.extend(next.tick(takeover));
            let after = live(&mut next, &agents, &results, dies_at + 2..=450);
            for e in replayed.iter().chain(after.iter().map(|(_, e)| e)) {
                let key = change_key(e);
                if !recorded.contains(&key) {
                    recorded.push(key);
                }
            }
            recorded.retain(|k| !k.starts_with("AgentSilent") && !k.starts_with("AgentBack"));
            assert_eq!(recorded, alone, "seed {seed}, leader died at {dies_at} s");
        }
    }
}
