//! Store figures (bench/store.sh): the same simulated fleet stored directly through
//! `Store::insert_results` (history tiers included) into SQLite and into PostgreSQL, with the
//! results stored per second and the raw tier's bytes on disk per result for each.
//!
//! The fleet is bench/history.sh's: AGENTS agents (default 1,000) in 4 providers x 5 accounts,
//! one target on 5 ports over both families (10 series) every 60 s, for HOURS simulated hours
//! (default 2), sent as batches of BATCH_MINUTES minutes (default 10) by SENDERS threads at once
//! (default 8), as many sessions would: the stores' writers fold what waits into one commit
//! (SENDERS=1 shows them without it). PostgreSQL is a throwaway cluster on this machine (fsync
//! on), as a collector beside its database would see it; SQLite is a file in the temporary
//! directory.

use anyhow::{anyhow, Context, Result};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::store::postgres::PostgresStore;
use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::{Store, StoreConfig, StoreKind};
use egresswatch_sim::postgres::PgCluster;
use egresswatch_wire::{Family, Labels, Outcome, PhaseTimings, ProbeResult};
use std::sync::Arc;
use std::time::Instant;

const PROVIDERS: [&str; 4] = ["aws", "gcp", "azure", "oci"];
const ACCOUNTS: usize = 5;
const PORTS: [u16; 5] = [25, 465, 587, 2525, 443];
const MIN: i64 = 60_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn agent(i: usize) -> AgentMeta {
    let provider = PROVIDERS[i % PROVIDERS.len()];
    AgentMeta {
        agent_id: format!("{provider}-{i:05}"),
        labels: Labels {
            provider: provider.into(),
            account: format!("acct-{}", (i / PROVIDERS.len()) % ACCOUNTS),
            region: "r1".into(),
            instance: format!("i-{i:05}"),
        },
        agent_version: "bench".into(),
    }
}

/// Every batch of the run, in sending rounds: round r holds each agent's batch r.
fn fleet(
    agents: usize,
    hours: i64,
    batch_minutes: i64,
    start: i64,
) -> Vec<Vec<(usize, Vec<ProbeResult>)>> {
    let metas: Vec<AgentMeta> = (0..agents).map(agent).collect();
    let mut rngs: Vec<Rng> = (0..agents)
        .map(|i| Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001)))
        .collect();
    let mut seqs = vec![0u64; agents];
    let mut rounds = Vec::new();
    let minutes = hours * 60;
    let mut minute = 0;
    while minute < minutes {
        let upto = (minute + batch_minutes).min(minutes);
        let mut round = Vec::with_capacity(agents);
        for (i, m) in metas.iter().enumerate() {
            let mut batch = Vec::new();
            for t in minute..upto {
                for port in PORTS {
                    for family in [Family::Ipv4, Family::Ipv6] {
                        seqs[i] += 1;
                        let outcome = if (m.labels.provider == "gcp" && port == 25)
                            || rngs[i].below(720) == 0
                        {
                            Outcome::Timeout
                        } else {
                            Outcome::Ok
                        };
                        let connect_us =
                            (outcome == Outcome::Ok).then(|| 12_000 + rngs[i].below(16_000) as u32);
                        batch.push(ProbeResult {
                            seq: seqs[i],
                            at_unix_ms: start + t * MIN + (i as i64 % 60) * 1000,
                            target: "mx.example.net".into(),
                            port,
                            family,
                            outcome,
                            address: Some(if family == Family::Ipv4 {
                                "198.18.0.25".parse().expect("an address")
                            } else {
                                "2001:db8::25".parse().expect("an address")
                            }),
                            timings: PhaseTimings {
                                dns_us: Some(800),
                                connect_us,
                                banner_us: connect_us.map(|c| c + 30_000),
                                tls_us: connect_us.map(|c| c + 60_000),
                            },
                            detail: if outcome == Outcome::Ok {
                                "220 mx.example.net ESMTP".into()
                            } else {
                                "no answer to the SYN within 5000 ms".into()
                            },
                            ..Default::default()
                        });
                    }
                }
            }
            round.push((i, batch));
        }
        rounds.push(round);
        minute = upto;
    }
    rounds
}

/// Stores every round through `store`, `senders` threads at once; returns (results, seconds).
fn ingest(
    store: &Arc<dyn Store>,
    rounds: &[Vec<(usize, Vec<ProbeResult>)>],
    agents: usize,
    senders: usize,
    now: i64,
    start: i64,
) -> Result<(u64, f64)> {
    let metas: Vec<AgentMeta> = (0..agents).map(agent).collect();
    for m in &metas {
        store.upsert_agent(m, start)?;
    }
    let started = Instant::now();
    let mut total = 0u64;
    for round in rounds {
        let chunk = round.len().div_ceil(senders);
        std::thread::scope(|s| -> Result<()> {
            let mut handles = Vec::new();
            for part in round.chunks(chunk) {
                let store = store.clone();
                let metas = &metas;
                handles.push(s.spawn(move || -> Result<u64> {
                    let mut n = 0;
                    for (i, batch) in part {
                        let report = store.insert_results(
                            &metas[*i].agent_id,
                            batch.clone(),
                            true.into(),
                            now,
                        )?;
                        n += u64::from(report.accepted);
                    }
                    Ok(n)
                }));
            }
            for h in handles {
                total += h.join().map_err(|_| anyhow!("a sender panicked"))??;
            }
            Ok(())
        })?;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let agents = env("AGENTS", 1000);
    let hours = env("HOURS", 2) as i64;
    let batch_minutes = env("BATCH_MINUTES", 10) as i64;
    let senders = env("SENDERS", 8).max(1);
    // Today, so the results land in the day partitions PostgreSQL made ahead (not the default).
    let day = 86_400_000;
    let now_ms = egresswatch_collector::clock::now_unix_ms();
    let start = now_ms.div_euclid(day) * day;
    let now = start + hours * 3_600_000;
    let rounds = fleet(agents, hours, batch_minutes, start);
    let expected: u64 = rounds
        .iter()
        .flat_map(|r| r.iter().map(|(_, b)| b.len() as u64))
        .sum();
    println!(
        "store bench: {agents} agents x 10 series at 60 s for {hours} h = {expected} results \
         (batches of {batch_minutes} min, {senders} sending threads)"
    );
    println!("{:<62} {:>14} {:>14}", "figure", "SQLite", "PostgreSQL");

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store-bench.db");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&path)?);
    let (sqlite_n, sqlite_secs) = ingest(&sqlite, &rounds, agents, senders, now, start)?;
    drop(sqlite);
    let sqlite_raw: i64 = {
        let conn = rusqlite::Connection::open(&path)?;
        conn.query_row(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('results', 'results_at')",
            [],
            |r| r.get(0),
        )
        .context("dbstat (SQLite built without it?)")?
    };

    let cluster = PgCluster::start().map_err(|e| anyhow!("starting PostgreSQL: {e}"))?;
    let config = StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(cluster.url()),
        ..Default::default()
    };
    let postgres: Arc<dyn Store> = Arc::new(PostgresStore::open(&config)?);
    let (pg_n, pg_secs) = ingest(&postgres, &rounds, agents, senders, now, start)?;
    drop(postgres);
    let mut client = postgres::Client::connect(&cluster.url(), postgres::NoTls)?;
    client.batch_execute("VACUUM ANALYZE results")?;
    let row = client.query_one(
        "SELECT (SELECT SUM(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits
                 WHERE inhparent = 'results'::regclass),
                (SELECT COUNT(*) FROM results),
                (SELECT COUNT(*) FROM results_default)",
        &[],
    )?;
    let (pg_raw, pg_rows, in_default): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    anyhow::ensure!(
        sqlite_n == expected && pg_n == expected && pg_rows as u64 == expected,
        "stored {sqlite_n} (SQLite) and {pg_n} / {pg_rows} rows (PostgreSQL) of {expected}"
    );
    anyhow::ensure!(
        in_default == 0,
        "{in_default} rows fell into the default partition"
    );
    println!(
        "{:<62} {:>14.0} {:>14.0}",
        "results stored per second (Store::insert_results, history on)",
        sqlite_n as f64 / sqlite_secs,
        pg_n as f64 / pg_secs
    );
    println!(
        "{:<62} {:>14.1} {:>14.1}",
        "raw tier bytes on disk per result (rows + indexes)",
        sqlite_raw as f64 / expected as f64,
        pg_raw as f64 / expected as f64
    );
    Ok(())
}
