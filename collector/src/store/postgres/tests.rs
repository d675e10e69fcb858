//! The PostgreSQL store against a real server: a throwaway cluster
//! ([`egresswatch_sim::postgres::PgCluster`]) shared by the tests that run together, each test
//! in a database of its own. Without PostgreSQL installed the tests say so and pass, except under
//! CI (`CI=true`), where they fail.

use super::super::contract::{self, event, meta, result};
use super::super::shared::{DeliveryOutcome, FeedCursor, NewDelivery, News, SharedStore};
use super::super::{StoreConfig, StoreKind};
use super::*;
use crate::history::Tier;
use egresswatch_sim::postgres::PgCluster;
use egresswatch_wire::Outcome;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The cluster the tests running now share; started by the first, stopped after the last.
static SHARED: Mutex<Option<Weak<PgCluster>>> = Mutex::new(None);

fn unavailable(reason: String) -> Option<Arc<PgCluster>> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL is needed for this test: {reason}");
    }
    eprintln!("skipped: no PostgreSQL to test against: {reason}");
    None
}

fn shared_cluster() -> Option<Arc<PgCluster>> {
    let mut held = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = held.as_ref().and_then(Weak::upgrade) {
        return Some(cluster);
    }
    match PgCluster::start() {
        Ok(cluster) => {
            let cluster = Arc::new(cluster);
            *held = Some(Arc::downgrade(&cluster));
            Some(cluster)
        }
        Err(e) => unavailable(e),
    }
}

/// A new, empty database `name` on `cluster`; its URL.
fn database(cluster: &PgCluster, name: &str) -> String {
    let mut admin = postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap();
    // One statement each: neither runs inside a transaction block.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    cluster.url_for(name)
}

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(url.to_string()),
        pool_size: 4,
        connect_timeout_secs: 2,
        ..Default::default()
    }
}

/// A store on a fresh database of the shared cluster (and the cluster, kept alive with it).
fn fresh_store(name: &str) -> Option<(Arc<PgCluster>, String, PostgresStore)> {
    let cluster = shared_cluster()?;
    let url = database(&cluster, name);
    let store = PostgresStore::open(&config(&url)).unwrap();
    Some((cluster, url, store))
}

fn raw(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

#[test]
fn keeps_the_store_contract() {
    let Some((_c, _url, store)) = fresh_store("contract") else {
        return;
    };
    contract::check(&store);
    let setting = |name: &str| -> String {
        store
            .client()
            .unwrap()
            .query_one(&format!("SHOW {name}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(setting("idle_in_transaction_session_timeout"), "1min");
    assert_eq!(setting("lock_timeout"), "30s");
}

#[test]
fn keeps_the_history_contract() {
    let Some((_c, _url, store)) = fresh_store("history_contract") else {
        return;
    };
    contract::check_history(&store);
}

#[test]
fn history_goes_on_from_the_stored_open_interval_in_another_collector() {
    let Some((_c, url, first)) = fresh_store("history_reopen") else {
        return;
    };
    contract::replay_first_half(&first);
    let second = PostgresStore::open(&config(&url)).unwrap();
    contract::replay_second_half_and_check(&second);
}

/// One series: `ok` 1..=60, `timeout` 61..=90, `ok` 91..=180, a minute apart.
fn stream() -> Vec<ProbeResult> {
    (1..=180u64)
        .map(|s| {
            let mut r = result(s, 587, contract::T0 + (s as i64 - 1) * 60_000);
            if (61..=90).contains(&s) {
                r.outcome = Outcome::Timeout;
            }
            r
        })
        .collect()
}

#[test]
fn a_writer_rereads_an_agent_another_collector_wrote_for_meanwhile() {
    let Some((_c, url, a)) = fresh_store("history_two_writers") else {
        return;
    };
    let b = PostgresStore::open(&config(&url)).unwrap();
    let later = contract::T0 + 86_400_000;
    a.upsert_agent(&meta("g1"), contract::T0).unwrap();
    let all = stream();
    // A caches g1's open interval (ok, up to 50); B goes on to 100; A takes the rest.
    a.insert_results("g1", all[..50].to_vec(), true.into(), later)
        .unwrap();
    b.insert_results("g1", all[40..100].to_vec(), true.into(), later)
        .unwrap();
    let r = a
        .insert_results("g1", all[90..].to_vec(), true.into(), later)
        .unwrap();
    assert_eq!((r.accepted, r.duplicates, r.high_water), (80, 10, 180));
    let selector = crate::history::Selector {
        agent: Some("g1".into()),
        ..Default::default()
    };
    let runs: Vec<_> = a
        .intervals(&selector, contract::T0, later, 10)
        .unwrap()
        .iter()
        .map(|i| (i.interval.outcome, i.interval.probes, i.interval.first_seq))
        .collect();
    assert_eq!(
        runs,
        vec![
            (Outcome::Ok, 90, 91),
            (Outcome::Timeout, 30, 61),
            (Outcome::Ok, 60, 1)
        ]
    );
    let hours = a
        .history_hours(&selector, contract::T0, later)
        .unwrap()
        .iter()
        .map(|(_, r)| r.probes())
        .sum::<u64>();
    assert_eq!(hours, 180);
}

#[test]
fn refuses_a_database_newer_than_it_knows() {
    let Some((_c, url, store)) = fresh_store("newer_schema") else {
        return;
    };
    drop(store);
    raw(&url)
        .batch_execute("INSERT INTO schema_version (version) VALUES (7)")
        .unwrap();
    let e = PostgresStore::open(&config(&url))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&format!(
            "database schema version 7 is newer than this collector knows ({}): upgrade the collector",
            schema::SCHEMA_VERSION
        )),
        "{e}"
    );
}

#[test]
fn migrations_run_once_when_collectors_start_together() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    let url = database(&cluster, "start_together");
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&config(&url)).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let versions: i64 = raw(&url)
        .query_one("SELECT COUNT(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, i64::from(schema::SCHEMA_VERSION));
}

#[test]
fn two_collectors_store_an_agents_overlapping_replays_once() {
    let Some((_c, url, first)) = fresh_store("two_collectors") else {
        return;
    };
    let stores = [
        Arc::new(first),
        Arc::new(PostgresStore::open(&config(&url)).unwrap()),
    ];
    stores[0].upsert_agent(&meta("a1"), 1).unwrap();
    let total = 400u64;
    // Each collector gets the whole stream in overlapping batches of 20, as an agent that keeps
    // reconnecting to the other one before its acks arrive. An agent resends from its oldest
    // unacknowledged result, so each collector's first batch starts at 1 (a batch starting
    // higher before anything below it was stored is what no agent sends: the high-water mark
    // would take the gap for duplicates); after it they overlap differently.
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                let mut start = 1u64;
                let mut step = 15 + n as u64 * 5;
                while start <= total {
                    let end = (start + 19).min(total);
                    let batch: Vec<_> = (start..=end).map(|s| result(s, 25, s as i64)).collect();
                    let r = store.insert_results("a1", batch, true.into(), 10).unwrap();
                    accepted += u64::from(r.accepted);
                    start += step;
                    step = 15;
                }
                // The start both may have skipped.
                let r = store
                    .insert_results(
                        "a1",
                        (1..=total).map(|s| result(s, 25, s as i64)).collect(),
                        true.into(),
                        10,
                    )
                    .unwrap();
                accepted + u64::from(r.accepted)
            })
        })
        .collect();
    let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(accepted, total);
    assert_eq!(stores[1].count_results("a1").unwrap(), total);
    let distinct: i64 = raw(&url)
        .query_one(
            "SELECT COUNT(DISTINCT seq) FROM results WHERE agent = 'a1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(distinct as u64, total);
    assert_eq!(stores[1].upsert_agent(&meta("a1"), 11).unwrap(), total);
    let probes: u64 = stores[0]
        .history_hours(&Default::default(), 0, 3_600_000)
        .unwrap()
        .iter()
        .map(|(_, r)| r.probes())
        .sum();
    assert_eq!(
        probes, total,
        "each result counted once in the cell rollups"
    );
}

#[test]
fn a_long_transaction_in_another_database_holds_the_feed_back_not_at_all() {
    let Some((cluster, _url, store)) = fresh_store("feed_elsewhere") else {
        return;
    };
    let head = store.feed_head().unwrap();
    // Another application on the same server, in the middle of a long write.
    let other = database(&cluster, "feed_elsewhere_other");
    let mut elsewhere = raw(&other);
    elsewhere
        .batch_execute("CREATE TABLE busy (n INT)")
        .unwrap();
    let mut tx = elsewhere.transaction().unwrap();
    tx.execute("INSERT INTO busy VALUES (1)", &[]).unwrap();
    store
        .insert_results("a1", vec![result(1, 25, 6)], true.into(), 8)
        .unwrap();
    let read = store.feed_after(&head, 100).unwrap();
    assert_eq!(read.items.len(), 1, "the feed goes on beside it");
    tx.rollback().unwrap();
}

#[test]
fn the_feed_waits_for_a_late_commit_and_skips_nothing() {
    let Some((_c, url, store)) = fresh_store("feed") else {
        return;
    };
    store.upsert_agent(&meta("early"), 1).unwrap();
    store.upsert_agent(&meta("late"), 1).unwrap();
    let head = store.feed_head().unwrap();
    assert!(store.feed_after(&head, 100).unwrap().items.is_empty());
    // A transaction that began first and commits last.
    let mut slow = raw(&url);
    let mut tx = slow.transaction().unwrap();
    let record = rmp_serde::to_vec(&result(1, 25, 5)).unwrap();
    tx.execute(
        "INSERT INTO results (agent, seq, at_ms, received_ms, clock_trusted, target, port, family, outcome, record)
         VALUES ('early', 1, 5, 5, true, 'mx', 25, 4, 0, $1)",
        &[&record],
    )
    .unwrap();
    store
        .insert_results(
            "late",
            vec![result(1, 25, 6), result(2, 25, 7)],
            true.into(),
            8,
        )
        .unwrap();
    let before = store.feed_after(&head, 100).unwrap();
    assert!(
        before.items.is_empty(),
        "a result committed behind a running transaction waits for it"
    );
    assert_eq!(before.next, head);
    tx.commit().unwrap();
    // Other tests' transactions on the shared cluster hold the horizon back a moment too.
    let after = retry("the feed after the late commit", || {
        let after = store.feed_after(&head, 100).unwrap();
        (after.items.len() == 3).then_some(after)
    });
    let got: Vec<_> = after
        .items
        .iter()
        .map(|i| (i.agent.agent_id.as_str(), i.result.seq))
        .collect();
    assert_eq!(got, vec![("early", 1), ("late", 1), ("late", 2)]);
    assert_eq!(after.items[1].received_unix_ms, 8);
    assert_eq!(after.items[1].agent.labels.provider, "aws");
    // In bounded reads, and nothing again once read.
    let one = store.feed_after(&head, 1).unwrap();
    assert_eq!(one.items.len(), 1);
    let rest = store.feed_after(&one.next, 100).unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(store.feed_after(&rest.next, 100).unwrap().items.is_empty());
    assert!(store
        .feed_after(&store.feed_head().unwrap(), 100)
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        store
            .feed_after(&FeedCursor::default(), 100)
            .unwrap()
            .items
            .len(),
        3
    );
    let since = store.results_since(6, 10).unwrap();
    assert_eq!(
        since
            .iter()
            .map(|i| i.result.at_unix_ms)
            .collect::<Vec<_>>(),
        vec![6, 7]
    );
}

fn retry<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_leader_at_a_time_and_the_lock_goes_with_its_session() {
    let Some((_c, url, a)) = fresh_store("leadership") else {
        return;
    };
    let b = PostgresStore::open(&config(&url)).unwrap();
    let mut lead = a.try_lead("c1").unwrap().expect("the first takes the lead");
    assert!(b.try_lead("c2").unwrap().is_none());
    lead.check().unwrap();
    for (store, id) in [(&a, "c1"), (&b, "c2")] {
        store
            .heartbeat(&super::super::shared::CollectorRow {
                id: id.into(),
                quic: "127.0.0.1:1".into(),
                http: "127.0.0.1:2".into(),
                last_seen_unix_ms: 1_000,
                leader: false,
            })
            .unwrap();
    }
    let rows = b.collectors(1_500, 1_000).unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.id.as_str(), r.leader))
            .collect::<Vec<_>>(),
        vec![("c1", true), ("c2", false)]
    );
    assert!(b.collectors(5_000, 1_000).unwrap().is_empty());
    // Dropped: the session ends and the other takes the lead.
    drop(lead);
    let mut second = retry("the lock freed by a drop", || b.try_lead("c2").unwrap());
    assert!(a.try_lead("c1").unwrap().is_none());
    // Its session terminated by the server: the holder's checks fail, and the lead is free.
    let mut admin = raw(&url);
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'egresswatch-collector leader'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    retry("the terminated leader noticing", || second.check().err());
    assert!(
        second.record_event(&event("a1", 1), "k", &[]).is_err(),
        "no write through a lost lock"
    );
    let _third = retry("the lock freed by a terminated session", || {
        a.try_lead("c1").unwrap()
    });
    let rows = b.collectors(1_500, 1_000).unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.id.as_str(), r.leader))
            .collect::<Vec<_>>(),
        vec![("c1", true), ("c2", false)]
    );
}

fn notice(sink: &str) -> NewDelivery {
    // A serialised alert notice: the event and how long its problem lasted.
    let notice = serde_json::json!({ "event": event("a1", 5), "lasted_ms": null });
    NewDelivery {
        sink: sink.into(),
        notice_json: notice.to_string(),
    }
}

#[test]
fn events_are_recorded_once_by_key_with_their_deliveries() {
    let Some((_c, _url, store)) = fresh_store("outbox") else {
        return;
    };
    let mut lead = store.try_lead("c1").unwrap().unwrap();
    contract::check_outbox(&store, lead.as_mut());
    // Another leader after a failover sees the attempts made.
    let stored = lead
        .record_event(&event("a4", 8), "agent_silent|a4|8", &[notice("hook")])
        .unwrap()
        .expect("a new key");
    let head = lead.next_deliveries().unwrap();
    assert!(lead.start_attempt(head[0].id, 14).unwrap());
    drop(lead);
    let mut next = retry("the lead", || store.try_lead("c2").unwrap());
    let left = next.next_deliveries().unwrap();
    assert_eq!(
        (left.len(), left[0].event_id, left[0].attempts),
        (1, stored.id, 1)
    );
    next.finish_delivery(left[0].id, DeliveryOutcome::Failed, 15)
        .unwrap();
    assert!(next.next_deliveries().unwrap().is_empty());
}

#[test]
fn listeners_hear_results_events_probe_requests_and_silences() {
    let Some((_c, url, store)) = fresh_store("listener") else {
        return;
    };
    let mut listener = store.listen().unwrap();
    assert!(listener.wait(Duration::from_millis(50)).unwrap().is_empty());
    store.upsert_agent(&meta("a1"), 1).unwrap();
    store
        .insert_results("a1", vec![result(1, 25, 1)], true.into(), 2)
        .unwrap();
    assert_eq!(
        listener.wait(Duration::from_secs(5)).unwrap(),
        vec![News::Results]
    );
    let mut lead = store.try_lead("c1").unwrap().unwrap();
    let stored = lead
        .record_event(&event("a1", 5), "k1", &[])
        .unwrap()
        .unwrap();
    lead.publish_probe_request("a1", "{\"port\":25}").unwrap();
    store.notify_silences().unwrap();
    store.notify_silences().unwrap();
    raw(&url)
        .batch_execute("NOTIFY egresswatch, 'something from a newer collector'")
        .unwrap();
    let mut heard = Vec::new();
    retry("four kinds of news", || {
        heard.extend(listener.wait(Duration::from_millis(200)).unwrap());
        (heard.len() >= 3).then_some(())
    });
    assert_eq!(
        heard,
        vec![
            News::Event(stored.id),
            News::ProbeRequest {
                agent: "a1".into(),
                request_json: "{\"port\":25}".into()
            },
            News::Silences
        ]
    );
    let too_big = format!("{{\"pad\":\"{}\"}}", "x".repeat(8_000));
    assert!(lead.publish_probe_request("a1", &too_big).is_err());
    store.notify_results().unwrap();
}

#[test]
fn a_database_that_is_down_fails_writes_quickly_and_is_used_again_once_back() {
    // A cluster of its own: this test stops it.
    let mut cluster = match PgCluster::start() {
        Ok(c) => c,
        Err(e) => {
            unavailable(e);
            return;
        }
    };
    let url = database(&cluster, "down");
    let store = PostgresStore::open(&config(&url)).unwrap();
    store.upsert_agent(&meta("a1"), 1).unwrap();
    store
        .insert_results("a1", vec![result(1, 25, 1)], true.into(), 2)
        .unwrap();
    let mut listener = store.listen().unwrap();
    let postmaster = cluster.pid().expect("a running cluster has a postmaster");
    assert!(std::path::Path::new(&format!("/proc/{postmaster}")).exists());
    cluster.stop().unwrap();
    assert_eq!(cluster.pid(), None);
    let started = Instant::now();
    assert!(store
        .insert_results("a1", vec![result(2, 25, 2)], true.into(), 3)
        .is_err());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a write failed after {took:?}"
    );
    assert!(store.ping().is_err());
    assert!(listener.wait(Duration::from_millis(500)).is_err());
    cluster.start_again().unwrap();
    let r = store
        .insert_results("a1", vec![result(2, 25, 2)], true.into(), 3)
        .unwrap();
    assert_eq!((r.accepted, r.high_water), (1, 2));
    store.ping().unwrap();
    assert_eq!(store.count_results("a1").unwrap(), 2);
}

#[test]
fn retention_drops_whole_day_partitions_and_old_rows_of_the_default() {
    let Some((_c, url, store)) = fresh_store("retention") else {
        return;
    };
    let today = partitions::day_of(now_unix_ms());
    let day = partitions::DAY_MS;
    store.upsert_agent(&meta("a1"), 1).unwrap();
    let results = vec![
        // Long ago, before any partition: the default partition.
        result(1, 25, 1_000),
        result(2, 25, 2_000),
        // Today, twice, and tomorrow.
        result(3, 25, today * day + 10),
        result(4, 25, today * day + 20),
        result(5, 25, (today + 1) * day + 10),
        // Far ahead of every partition: the default partition.
        result(6, 25, (today + 30) * day),
    ];
    store
        .insert_results("a1", results, true.into(), today * day)
        .unwrap();
    let mut client = raw(&url);
    let where_is = |client: &mut postgres::Client, seq: i64| -> String {
        client
            .query_one(
                "SELECT tableoid::regclass::text FROM results WHERE agent = 'a1' AND seq = $1",
                &[&seq],
            )
            .unwrap()
            .get(0)
    };
    let today_name = partitions::partition_name(today).unwrap();
    assert_eq!(where_is(&mut client, 1), "results_default");
    assert_eq!(where_is(&mut client, 3), today_name);
    assert_eq!(where_is(&mut client, 6), "results_default");
    // A partition made over rows the default one holds takes them over.
    partitions::ensure(&mut client, today + 30, today + 30).unwrap();
    assert_eq!(
        where_is(&mut client, 6),
        partitions::partition_name(today + 30).unwrap()
    );
    // A cutoff inside tomorrow: today goes whole (2 rows), the default loses its old rows.
    let cutoff = (today + 1) * day + 50;
    assert_eq!(store.prune_tier(Tier::Raw, cutoff, 1).unwrap(), 2);
    assert_eq!(store.prune_tier(Tier::Raw, cutoff, 1).unwrap(), 1);
    assert_eq!(store.prune_tier(Tier::Raw, cutoff, 1).unwrap(), 1);
    assert_eq!(store.prune_tier(Tier::Raw, cutoff, 1).unwrap(), 0);
    let gone: bool = client
        .query_one("SELECT to_regclass($1) IS NULL", &[&today_name])
        .unwrap()
        .get(0);
    assert!(gone);
    assert_eq!(contract::recent_seqs(&store, "a1", 10), vec![6, 5]);
    // Results of the dropped day are still the agent's: a replay of them is a duplicate.
    let r = store
        .insert_results(
            "a1",
            vec![result(3, 25, today * day + 10)],
            true.into(),
            today * day,
        )
        .unwrap();
    assert_eq!(r.duplicates, 1);
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, chain PEM, key PEM).
fn server_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn sslmode_verify_full_speaks_tls_to_a_server_the_ca_file_vouches_for() {
    let (ca, chain, key) = server_certificate();
    let cluster = match PgCluster::start_with_tls(&chain, &key) {
        Ok(c) => c,
        Err(e) => {
            unavailable(e);
            return;
        }
    };
    let url = database(&cluster, "tls");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let in_tls = |store: &PostgresStore| -> bool {
        store
            .client()
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let tls = StoreConfig {
        ca_file: Some(ca_file.clone()),
        ..config(&format!("{url}?sslmode=verify-full"))
    };
    let store = PostgresStore::open(&tls).unwrap();
    assert!(in_tls(&store));
    store.upsert_agent(&meta("a1"), 1).unwrap();
    store
        .insert_results("a1", vec![result(1, 25, 1)], true.into(), 2)
        .unwrap();
    let mut listener = store.listen().unwrap();
    assert!(store.try_lead("c1").unwrap().is_some());
    assert!(listener.wait(Duration::from_millis(10)).unwrap().is_empty());
    // No sslmode: plain TCP.
    assert!(!in_tls(&PostgresStore::open(&config(&url)).unwrap()));
    // A certificate no configured root vouches for is refused.
    let (other_ca, _, _) = server_certificate();
    std::fs::write(&ca_file, other_ca).unwrap();
    let refused = PostgresStore::open(&tls).err().unwrap().to_string();
    assert!(refused.contains("connecting to PostgreSQL"), "{refused}");
}

#[test]
fn writers_on_two_collectors_add_to_shared_cells_without_deadlocks() {
    let Some((_c, url, first)) = fresh_store("shared_cells") else {
        return;
    };
    let stores = [
        Arc::new(first),
        Arc::new(PostgresStore::open(&config(&url)).unwrap()),
    ];
    // Sixteen agents of one account, eight on each collector, each batch adding to six cells
    // (three ports, two hours) that every other writer adds to as well.
    let threads: Vec<_> = (0..16)
        .map(|a| {
            let store = stores[a % 2].clone();
            std::thread::spawn(move || {
                let id = format!("agent-{a:02}");
                store.upsert_agent(&meta(&id), 0).unwrap();
                for batch in 0..10u64 {
                    let rs: Vec<_> = (1..=12u64)
                        .map(|n| {
                            let seq = batch * 12 + n;
                            let port = [25, 465, 587][(seq % 3) as usize];
                            result(seq, port, (seq % 2) as i64 * 3_600_000 + seq as i64)
                        })
                        .collect();
                    let r = store
                        .insert_results(&id, rs.clone(), true.into(), 1)
                        .unwrap();
                    assert_eq!(r.accepted, 12);
                    let again = store.insert_results(&id, rs, true.into(), 1).unwrap();
                    assert_eq!(again.accepted, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let hours = stores[0]
        .history_hours(&Default::default(), 0, 2 * 3_600_000)
        .unwrap();
    assert_eq!(hours.iter().map(|(_, r)| r.probes()).sum::<u64>(), 16 * 120);
    let deadlocks: i64 = raw(&url)
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(deadlocks, 0);
}
