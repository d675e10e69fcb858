//! What every [`Store`] must do, checked the same way for each implementation: exactly-once by
//! the agent's high-water mark (a replay overlapping the stored range stores only what is new),
//! the freshest result per series, an agent's results newest first, events numbered as they are
//! stored and served with their id, and pruning by measurement time.

use super::Store;
use crate::events::{rfc3339, Event, EventKind, Scope, State};
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
pub fn recent_seqs(store: &dyn Store, agent: &str, limit: usize) -> Vec<u64> {
    store
        .recent_results(agent, limit)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// Agent `a1`'s results 1..=10 on port 25, then a replay of 8..=12 on 587 that overlaps them:
/// only 11 and 12 are new.
pub fn store_overlapping_batches(store: &dyn Store) {
    assert_eq!(store.upsert_agent(&meta("a1"), 1).unwrap(), 0);
    let (r, fresh) = store
        .insert_results(
            "a1",
            (1..=10).map(|s| result(s, 25, s as i64)).collect(),
            true,
            5,
        )
        .unwrap();
    assert_eq!(
        (r.accepted, r.duplicates, r.high_water, fresh.len()),
        (10, 0, 10, 10)
    );
    let (r, fresh) = store
        .insert_results(
            "a1",
            (8..=12).map(|s| result(s, 587, s as i64)).collect(),
            true,
            6,
        )
        .unwrap();
    assert_eq!(
        (r.accepted, r.duplicates, r.high_water, fresh.len()),
        (2, 3, 12, 2)
    );
    assert_eq!(
        fresh.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 12]
    );
}

pub fn check(store: &dyn Store) {
    super::silences::check(store);
    store_overlapping_batches(store);
    // The mark is the agent's: a hello learns it, another agent's replay does not touch it.
    assert_eq!(store.upsert_agent(&meta("a1"), 7).unwrap(), 12);
    store.upsert_agent(&meta("a2"), 7).unwrap();
    let (r, _) = store
        .insert_results("a2", vec![result(3, 25, 3)], true, 7)
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
