//! What every [`Store`] must do, checked the same way for each implementation: exactly-once by
//! the agent's high-water mark (a replay overlapping the stored range stores only what is new),
//! the freshest result per series, an agent's results newest first, events numbered as they are
//! stored and served with their id, and pruning by measurement time; and the long-kept tiers
//! (intervals, hourly rollups) derived from replayed streams, read back and pruned.

use crate::clock::rfc3339;
use crate::store::Inspect;

/// A store under test: the contract also inspects it and reads its feed.
pub trait Tested: Store + Inspect + SharedStore {}
impl<T: Store + Inspect + SharedStore> Tested for T {}
use super::shared::SharedStore;
use super::Store;
use crate::events::{Event, EventKind, Scope, State};
use crate::history::{Rollup, Selector, SeriesInterval, Tier};
use crate::identity::AgentMeta;
use egresswatch_wire::{Family, Labels, Outcome, ProbeResult};

pub fn result(seq: u64, port: u16, at: i64) -> ProbeResult {
    ProbeResult {
        seq,
        at_unix_ms: at,
        target: "mx".into(),
        port,
        family: Family::Ipv4,
        outcome: Outcome::Ok,
        ..Default::default()
    }
}

pub fn meta(id: &str) -> AgentMeta {
    AgentMeta {
        agent_id: id.into(),
        labels: Labels {
            provider: "aws".into(),
            ..Default::default()
        },
        agent_version: "t".into(),
    }
}

/// An agent-silent event of `agent` at `at`.
pub fn event(agent: &str, at: i64) -> Event {
    Event {
        kind: EventKind::AgentSilent,
        scope: Scope::Agent,
        provider: Some("aws".into()),
        account: Some("unlabelled".into()),
        agent: Some(agent.into()),
        target: None,
        port: None,
        from: State::Reporting,
        to: State::Silent,
        at: rfc3339(at),
        family: None,
        id: None,
        outcome: None,
        at_unix_ms: at,
        since: None,
        witnesses: Vec::new(),
        silenced_by: None,
    }
}

/// The seqs of `agent`'s `limit` latest results, in the order the store serves them.
pub fn recent_seqs(store: &dyn Tested, agent: &str, limit: usize) -> Vec<u64> {
    store
        .recent_results(agent, limit)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// Agent `a1`'s results 1..=10 on port 25, then a replay of 8..=12 on 587 that overlaps them:
/// only 11 and 12 are new, and the feed carries each new result once, duplicates never.
pub fn store_overlapping_batches(store: &dyn Tested) {
    assert_eq!(store.upsert_agent(&meta("a1"), 1).unwrap(), 0);
    let head = store.feed_head().unwrap();
    let r = store
        .insert_results(
            "a1",
            (1..=10).map(|s| result(s, 25, s as i64)).collect(),
            true.into(),
            5,
        )
        .unwrap();
    assert_eq!((r.accepted, r.duplicates, r.high_water), (10, 0, 10));
    let r = store
        .insert_results(
            "a1",
            (8..=12).map(|s| result(s, 587, s as i64)).collect(),
            true.into(),
            6,
        )
        .unwrap();
    assert_eq!((r.accepted, r.duplicates, r.high_water), (2, 3, 12));
    // The two new ones are 11 and 12 on 587, and what was stored before stayed as it was.
    assert_eq!(recent_seqs(store, "a1", 3), vec![12, 11, 10]);
    let ports: Vec<u16> = store
        .recent_results("a1", 3)
        .unwrap()
        .iter()
        .map(|r| r.port)
        .collect();
    assert_eq!(ports, vec![587, 587, 25]);
    let fed: Vec<(u64, u16)> = store
        .feed_after(&head, 100)
        .unwrap()
        .items
        .iter()
        .map(|item| (item.result.seq, item.result.port))
        .collect();
    let expected: Vec<(u64, u16)> = (1..=10)
        .map(|s| (s, 25))
        .chain([(11, 587), (12, 587)])
        .collect();
    assert_eq!(fed, expected);
}

pub fn check(store: &dyn Tested) {
    super::silences::check(store);
    store_overlapping_batches(store);
    // The mark is the agent's: a hello learns it, another agent's replay does not touch it.
    assert_eq!(store.upsert_agent(&meta("a1"), 7).unwrap(), 12);
    store.upsert_agent(&meta("a2"), 7).unwrap();
    let r = store
        .insert_results("a2", vec![result(3, 25, 3)], true.into(), 7)
        .unwrap();
    assert_eq!((r.accepted, r.high_water), (1, 3));
    assert_eq!(store.count_results("a1").unwrap(), 12);
    assert_eq!(store.count_results("a2").unwrap(), 1);

    let latest = store.latest_per_series(0).unwrap();
    assert_eq!(latest.len(), 3);
    assert!(latest
        .iter()
        .any(|(m, r)| m.agent_id == "a1" && r.port == 587 && r.seq == 12));
    assert!(latest
        .iter()
        .any(|(m, r)| m.agent_id == "a1" && r.port == 25 && r.seq == 10));
    assert!(latest
        .windows(2)
        .all(|w| w[0].1.at_unix_ms <= w[1].1.at_unix_ms));
    assert_eq!(store.latest_per_series(11).unwrap().len(), 1);
    assert_eq!(recent_seqs(store, "a1", 3), vec![12, 11, 10]);

    let first = store.append_event(&event("a1", 1)).unwrap();
    let second = store.append_event(&event("a2", 2)).unwrap();
    assert!(first.id > 0 && second.id > first.id);
    let served = store.events(10).unwrap();
    assert_eq!(served, vec![second.json.clone(), first.json.clone()]);
    let newest: serde_json::Value = serde_json::from_str(&served[0]).unwrap();
    assert_eq!(newest["id"], second.id);
    assert_eq!(newest["agent"], "a2");
    assert_eq!(store.events(1).unwrap().len(), 1);

    assert_eq!(store.prune(5).unwrap(), 5);
    assert_eq!(store.count_results("a1").unwrap(), 8);
    let agents = store.agents().unwrap();
    assert_eq!(
        agents
            .iter()
            .map(|(m, _)| m.agent_id.as_str())
            .collect::<Vec<_>>(),
        vec!["a1", "a2"]
    );
}

// ---- The long-kept tiers ----

/// 2026-11-30T00:00:00Z: the replayed streams start on an hour.
pub const T0: i64 = 1_795_996_800_000;
const MIN: i64 = 60_000;
/// Far enough after every stream that no agent clock is ahead of the collector's.
const LATER: i64 = T0 + 10 * 86_400_000;

fn labelled(id: &str, provider: &str, account: &str) -> AgentMeta {
    AgentMeta {
        agent_id: id.into(),
        labels: Labels {
            provider: provider.into(),
            account: account.into(),
            ..Default::default()
        },
        agent_version: "t".into(),
    }
}

fn probe(seq: u64, at: i64, port: u16, family: Family, outcome: Outcome) -> ProbeResult {
    let mut r = result(seq, port, at);
    r.family = family;
    r.outcome = outcome;
    if !outcome.is_failure() && outcome != Outcome::NoAddress {
        r.timings.connect_us = Some(10_000);
    }
    r
}

/// g1's port-587 IPv4 stream over three hours: 60 ok, 30 timeout, 90 ok, one a minute.
fn g1_stream() -> Vec<ProbeResult> {
    (1..=180u64)
        .map(|s| {
            let outcome = if (61..=90).contains(&s) {
                Outcome::Timeout
            } else {
                Outcome::Ok
            };
            probe(s, T0 + (s as i64 - 1) * MIN, 587, Family::Ipv4, outcome)
        })
        .collect()
}

/// Sends `results` in batches of `size`, each batch twice (an ack lost): the second is all
/// duplicates.
fn send(store: &dyn Tested, agent: &str, results: &[ProbeResult], size: usize) {
    for batch in results.chunks(size) {
        let first = store
            .insert_results(agent, batch.to_vec(), true.into(), LATER)
            .unwrap();
        let again = store
            .insert_results(agent, batch.to_vec(), true.into(), LATER)
            .unwrap();
        assert_eq!(
            (again.accepted, again.duplicates as usize),
            (0, batch.len())
        );
        assert_eq!(first.accepted as usize, batch.len());
    }
}

fn sel(provider: &str) -> Selector {
    Selector {
        provider: Some(provider.into()),
        ..Default::default()
    }
}

fn runs(intervals: &[SeriesInterval]) -> Vec<(Outcome, u64, i64, i64)> {
    intervals
        .iter()
        .map(|i| {
            (
                i.interval.outcome,
                i.interval.probes,
                (i.interval.first_ms - T0) / MIN,
                (i.interval.last_ms - T0) / MIN,
            )
        })
        .collect()
}

fn counts(hours: &[(i64, Rollup)]) -> Vec<(i64, u64, u64, u64)> {
    hours
        .iter()
        .map(|(h, r)| (h - T0 / 3_600_000, r.probes(), r.ok(), r.failed()))
        .collect()
}

/// Replayed streams through `insert_results`, then the tiers read back and pruned: duplicates
/// (every batch twice), a spool arriving after a partition (g2's three hours after g1's), a
/// clock stepped back (g3), `no_address` (g1's IPv6), and retention of each tier in bounded
/// batches.
pub fn check_history(store: &dyn Tested) {
    for (id, account) in [("g1", "acct-a"), ("g2", "acct-a"), ("g3", "acct-b")] {
        store
            .upsert_agent(&labelled(id, "gcp", account), T0)
            .unwrap();
    }
    // g1 live: its IPv4 stream interleaved with an IPv6 stream that has no address.
    let mut g1 = g1_stream();
    g1.extend((181..=240u64).map(|s| {
        probe(
            s,
            T0 + (s as i64 - 181) * MIN,
            587,
            Family::Ipv6,
            Outcome::NoAddress,
        )
    }));
    g1.sort_by_key(|r| r.seq);
    send(store, "g1", &g1, 25);
    // g2 was cut off: its three hours of timeouts arrive afterwards, in one replay.
    let g2: Vec<_> = (1..=180u64)
        .map(|s| {
            probe(
                s,
                T0 + (s as i64 - 1) * MIN + 7,
                587,
                Family::Ipv4,
                Outcome::Timeout,
            )
        })
        .collect();
    send(store, "g2", &g2, 500);
    // g3's clock steps back two hours after its 30th probe: all ok.
    let g3: Vec<_> = (1..=60u64)
        .map(|s| {
            let minute = if s <= 30 {
                120 + s as i64 - 1
            } else {
                s as i64 - 1
            };
            probe(s, T0 + minute * MIN, 25, Family::Ipv4, Outcome::Ok)
        })
        .collect();
    send(store, "g3", &g3, 7);
    assert_eq!(store.count_results("g1").unwrap(), 240);

    let far = T0 + 86_400_000;
    let g1_v4 = Selector {
        agent: Some("g1".into()),
        port: Some(587),
        family: Some(Family::Ipv4),
        ..sel("gcp")
    };
    let intervals = store.intervals(&g1_v4, T0, far, 100).unwrap();
    assert_eq!(
        runs(&intervals),
        vec![
            (Outcome::Ok, 90, 90, 179),
            (Outcome::Timeout, 30, 60, 89),
            (Outcome::Ok, 60, 0, 59)
        ]
    );
    assert_eq!(intervals[0].provider, "gcp");
    assert_eq!(intervals[0].account, "acct-a");
    assert!(intervals[0].interval.connect.quantile_ms(0.5).is_some());
    assert_eq!(intervals[1].interval.connect.quantile_ms(0.5), None);
    assert_eq!(store.intervals(&g1_v4, T0, far, 1).unwrap().len(), 1);
    // Only the intervals that held within the range.
    assert_eq!(
        runs(
            &store
                .intervals(&g1_v4, T0 + 65 * MIN, T0 + 70 * MIN, 100)
                .unwrap()
        ),
        vec![(Outcome::Timeout, 30, 60, 89)]
    );
    let g1_v6 = Selector {
        family: Some(Family::Ipv6),
        ..g1_v4.clone()
    };
    assert_eq!(
        runs(&store.intervals(&g1_v6, T0, far, 100).unwrap()),
        vec![(Outcome::NoAddress, 60, 0, 59)]
    );
    let g3 = Selector {
        agent: Some("g3".into()),
        ..Default::default()
    };
    assert_eq!(
        runs(&store.intervals(&g3, T0, far, 100).unwrap()),
        vec![(Outcome::Ok, 60, 30, 149)],
        "a clock stepped back is one interval reaching back, not a change"
    );

    // The cell acct-a x 587 / IPv4: g1 and g2 together, g2's late replay included.
    let cell = Selector {
        account: Some("acct-a".into()),
        port: Some(587),
        family: Some(Family::Ipv4),
        ..sel("gcp")
    };
    let hours = store.history_hours(&cell, T0, T0 + 3 * 3_600_000).unwrap();
    assert_eq!(
        counts(&hours),
        vec![(0, 120, 60, 60), (1, 120, 30, 90), (2, 120, 60, 60)]
    );
    let p50 = hours[0].1.connect.quantile_ms(0.5).unwrap();
    assert!((9.5..=10.5).contains(&p50), "{p50}");
    // The whole provider: no_address counted in probes only; g3's stepped probes in the hour
    // its clock said.
    assert_eq!(
        counts(
            &store
                .history_hours(&sel("gcp"), T0, T0 + 3 * 3_600_000)
                .unwrap()
        ),
        vec![(0, 210, 90, 60), (1, 120, 30, 90), (2, 150, 90, 60)]
    );
    assert!(store
        .history_hours(&sel("aws"), T0, far)
        .unwrap()
        .is_empty());
    // One agent's series, from the per-series tier.
    assert_eq!(
        counts(&store.history_hours(&g1_v4, T0, far).unwrap()),
        vec![(0, 60, 60, 0), (1, 60, 30, 30), (2, 60, 60, 0)]
    );
    // A range inside an hour still gets the whole hour.
    assert_eq!(
        counts(
            &store
                .history_hours(&g1_v4, T0 + 61 * MIN, T0 + 62 * MIN)
                .unwrap()
        ),
        vec![(1, 60, 30, 30)]
    );

    // Retention, tier by tier, in bounded batches.
    let cutoff = T0 + 60 * MIN;
    let drain = |tier: Tier, max: usize| -> Vec<usize> {
        let mut rounds = Vec::new();
        loop {
            let n = store.prune_tier(tier, cutoff, max).unwrap();
            rounds.push(n);
            if n < max {
                return rounds;
            }
        }
    };
    // g1's first ok interval and its IPv6 one ended before the cutoff.
    assert_eq!(drain(Tier::Intervals, 1), vec![1, 1, 0]);
    assert_eq!(store.intervals(&g1_v4, T0, far, 100).unwrap().len(), 2);
    // Hour 0: series rows of g1 (two), g2, g3; cell rows acct-a 587 v4 and v6, acct-b 25.
    assert_eq!(drain(Tier::Hourly, 5), vec![5, 2]);
    assert_eq!(
        counts(&store.history_hours(&g1_v4, T0, far).unwrap())[0].0,
        1
    );
    assert_eq!(
        counts(&store.history_hours(&sel("gcp"), T0, far).unwrap())[0],
        (1, 120, 30, 90)
    );
    // Raw: g1 120, g2 60, g3 30 were measured before the cutoff.
    assert_eq!(drain(Tier::Raw, 100), vec![100, 100, 10]);
    assert_eq!(store.count_results("g1").unwrap(), 120);
}

/// g1's stream up to seq 75 (the timeout interval still open).
pub fn replay_first_half(store: &dyn Tested) {
    store
        .upsert_agent(&labelled("g1", "gcp", "acct-a"), T0)
        .unwrap();
    send(store, "g1", &g1_stream()[..75], 30);
}

/// The rest of g1's stream, after the store was reopened: the stored open interval goes on.
pub fn replay_second_half_and_check(store: &dyn Tested) {
    assert_eq!(
        store
            .upsert_agent(&labelled("g1", "gcp", "acct-a"), T0)
            .unwrap(),
        75
    );
    // The agent replays from before the mark: only what is new is folded in.
    let report = store
        .insert_results("g1", g1_stream()[50..].to_vec(), true.into(), LATER)
        .unwrap();
    assert_eq!((report.accepted, report.duplicates), (105, 25));
    let all = Selector {
        agent: Some("g1".into()),
        ..Default::default()
    };
    assert_eq!(
        runs(&store.intervals(&all, T0, LATER, 100).unwrap()),
        vec![
            (Outcome::Ok, 90, 90, 179),
            (Outcome::Timeout, 30, 60, 89),
            (Outcome::Ok, 60, 0, 59)
        ]
    );
}

/// A notice for `sink` as the hub plans one (its event's id is filled in when recorded).
fn notice(sink: &str) -> super::shared::NewDelivery {
    super::shared::NewDelivery {
        sink: sink.into(),
        notice_json: serde_json::json!({"event": {"kind": "agent_silent"}}).to_string(),
    }
}

/// The outbox through the lease: an event is recorded once per key with its deliveries, each
/// sink is handed its oldest pending delivery first, attempts are counted, a finished delivery is
/// never handed out again, and deliveries recorded before the retry policy's bound are given up.
pub fn check_outbox(store: &dyn Tested, lease: &mut dyn super::shared::Leadership) {
    use super::shared::DeliveryOutcome;
    let before = store.append_event(&event("a0", 1)).unwrap();
    let stored = lease
        .record_event(
            &event("a1", 5),
            "agent_silent|a1|5",
            &[notice("hook"), notice("mail")],
        )
        .unwrap()
        .expect("a new key is recorded");
    assert!(stored.id > before.id);
    let v: serde_json::Value = serde_json::from_str(&stored.json).unwrap();
    assert_eq!(v["id"], stored.id);
    assert!(lease
        .record_event(&event("a1", 5), "agent_silent|a1|5", &[notice("hook")])
        .unwrap()
        .is_none());
    assert_eq!(store.events(10).unwrap()[0], stored.json);
    let later = lease
        .record_event(&event("a2", 6), "agent_silent|a2|6", &[notice("hook")])
        .unwrap()
        .expect("another key");

    let heads = lease.next_deliveries().unwrap();
    assert_eq!(
        heads
            .iter()
            .map(|d| (d.sink.as_str(), d.event_id, d.attempts))
            .collect::<Vec<_>>(),
        vec![("hook", stored.id, 0), ("mail", stored.id, 0)],
        "one head per sink, oldest first"
    );
    let n: serde_json::Value = serde_json::from_str(&heads[0].notice_json).unwrap();
    assert_eq!(n["event"]["id"], stored.id);
    assert!(lease.start_attempt(heads[0].id, 10).unwrap());
    assert!(lease.start_attempt(heads[0].id, 11).unwrap());
    lease
        .finish_delivery(heads[0].id, DeliveryOutcome::Delivered, 12)
        .unwrap();
    assert!(!lease.start_attempt(heads[0].id, 13).unwrap());
    let heads = lease.next_deliveries().unwrap();
    assert_eq!(
        heads
            .iter()
            .map(|d| (d.sink.as_str(), d.event_id))
            .collect::<Vec<_>>(),
        vec![("mail", stored.id), ("hook", later.id)],
        "the hook's next notice comes once the first is delivered"
    );
    let newest = heads.iter().map(|d| d.created_ms).max().unwrap();
    assert_eq!(lease.give_up_deliveries(newest + 1, 20).unwrap(), 2);
    assert!(lease.next_deliveries().unwrap().is_empty());
    // Finished deliveries are forgotten, however old; a pending one never is.
    let pending = lease
        .record_event(&event("a3", 7), "agent_silent|a3|7", &[notice("hook")])
        .unwrap()
        .expect("another key");
    lease.forget_finished(i64::MAX).unwrap();
    let left = lease.next_deliveries().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id, pending.id);
    lease
        .finish_delivery(left[0].id, DeliveryOutcome::Delivered, 30)
        .unwrap();
}
