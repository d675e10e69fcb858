//! History figures (bench/history.sh): a simulated fleet's results stored through the SQLite
//! store with its history tiers, then bytes on disk per result, split per tier, and the latency
//! of `/api/history` over 90 days of one cell and of a whole provider, through real HTTP.
//!
//! The fleet: AGENTS agents (default 1,000) in 4 providers x 5 accounts, each probing one target
//! on 5 ports over both families (10 series) every 60 s for HOURS simulated hours (default 6).
//! Outcomes are realistic and mostly steady: port 25 is dropped on one provider, a stray timeout
//! now and then (about two a series a day), and one account's 587 is blocked from mid-run on.
//! Connect latency is spread around 20 ms. The 90 days of rollups the query figures need are the
//! simulated hours' rows repeated back in time (the same rows a real 90 days would have).

use anyhow::{Context, Result};
use egresswatch_collector::alerts::Alerts;
use egresswatch_collector::fleet::{Fleet, FleetConfig};
use egresswatch_collector::http::{self, HttpConfig};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::limits::LimitCounters;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::{Family, Labels, Outcome, PhaseTimings, ProbeResult};
use std::sync::Arc;
use std::time::Instant;

const PROVIDERS: [&str; 4] = ["aws", "gcp", "azure", "oci"];
const ACCOUNTS: usize = 5;
const PORTS: [u16; 5] = [25, 465, 587, 2525, 443];
const MIN: i64 = 60_000;
/// 2026-09-01T00:00:00Z: the simulated day.
const START: i64 = 1_788_220_800_000;

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

fn outcome_of(meta: &AgentMeta, port: u16, minute: i64, hours: i64, rng: &mut Rng) -> Outcome {
    if meta.labels.provider == "gcp" && port == 25 {
        return Outcome::Timeout;
    }
    if meta.labels.provider == "aws"
        && meta.labels.account == "acct-0"
        && port == 587
        && minute >= hours * 30
    {
        return Outcome::Timeout;
    }
    if rng.below(720) == 0 {
        return Outcome::Timeout;
    }
    Outcome::Ok
}

fn tier_bytes(path: &std::path::Path) -> Result<Vec<(String, i64)>> {
    let conn = rusqlite::Connection::open(path)?;
    let mut stmt =
        conn.prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let agents = env("AGENTS", 1000);
    let hours = env("HOURS", 6) as i64;
    let batch_minutes = env("BATCH_MINUTES", 10) as i64;
    let requests = env("REQUESTS", 50);
    let dir = tempfile_dir()?;
    let path = dir.join("history-bench.db");
    let store = Arc::new(SqliteStore::open(&path)?);
    let metas: Vec<AgentMeta> = (0..agents).map(agent).collect();
    for m in &metas {
        store.upsert_agent(m, START)?;
    }
    let end = START + hours * 3_600_000;
    let started = Instant::now();
    let mut total = 0u64;
    // Threads send their agents' batches at once, as many sessions would: the writer folds
    // them into group commits.
    let threads = 8;
    let minutes = hours * 60;
    let mut rngs: Vec<Rng> = (0..agents)
        .map(|i| Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001)))
        .collect();
    let mut seqs = vec![0u64; agents];
    let mut minute = 0;
    while minute < minutes {
        let upto = (minute + batch_minutes).min(minutes);
        let mut batches: Vec<(usize, Vec<ProbeResult>)> = Vec::with_capacity(agents);
        for (i, m) in metas.iter().enumerate() {
            let mut batch = Vec::new();
            for t in minute..upto {
                for port in PORTS {
                    for family in [Family::Ipv4, Family::Ipv6] {
                        seqs[i] += 1;
                        let outcome = outcome_of(m, port, t, hours, &mut rngs[i]);
                        let connect_us =
                            (outcome == Outcome::Ok).then(|| 12_000 + rngs[i].below(16_000) as u32);
                        batch.push(ProbeResult {
                            seq: seqs[i],
                            at_unix_ms: START + t * MIN + (i as i64 % 60) * 1000,
                            target: "mx.example.net".into(),
                            port,
                            family,
                            outcome,
                            address: Some(if family == Family::Ipv4 {
                                "198.18.0.25".parse()?
                            } else {
                                "2001:db8::25".parse()?
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
            total += batch.len() as u64;
            batches.push((i, batch));
        }
        let chunk = batches.len().div_ceil(threads);
        std::thread::scope(|s| -> Result<()> {
            let mut handles = Vec::new();
            for part in batches.chunks(chunk) {
                let store = store.clone();
                let metas = &metas;
                handles.push(s.spawn(move || -> Result<()> {
                    for (i, batch) in part {
                        store.insert_results(
                            &metas[*i].agent_id,
                            batch.clone(),
                            true.into(),
                            end,
                        )?;
                    }
                    Ok(())
                }));
            }
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
            }
            Ok(())
        })?;
        minute = upto;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    store.close();
    drop(store);

    let tiers = tier_bytes(&path).context("dbstat (SQLite built without it?)")?;
    let of = |names: &[&str]| -> i64 {
        tiers
            .iter()
            .filter(|(n, _)| names.iter().any(|x| n == x))
            .map(|(_, b)| b)
            .sum()
    };
    let raw = of(&["results", "results_at"]);
    let intervals = of(&["intervals", "intervals_last"]);
    let series_hourly = of(&["series_hourly"]);
    let cell_hourly = of(&["cell_hourly"]);
    let series = of(&["series", "sqlite_autoindex_series_1"]);
    let long = intervals + series_hourly + cell_hourly + series;
    let per = |b: i64| b as f64 / total as f64;
    let results_48h = (agents * 10 * 60 * 48) as f64;
    println!("history bench: {agents} agents x 10 series at 60 s for {hours} h = {total} results (batches of {batch_minutes} min)");
    println!("{:<70} {:>14}", "figure", "value");
    println!(
        "{:<70} {:>14.0}",
        "results stored per second with the history tiers (group commit)",
        total as f64 / ingest_secs
    );
    println!(
        "{:<70} {:>14.1}",
        "raw tier bytes per result (results + index)",
        per(raw)
    );
    println!(
        "{:<70} {:>14.1}",
        "  raw tier on disk at steady state, 48 h window (MiB)",
        per(raw) * results_48h / 1_048_576.0
    );
    println!(
        "{:<70} {:>14.2}",
        "long-kept tiers bytes per result (all four below)",
        per(long)
    );
    println!(
        "{:<70} {:>14.2}",
        "  state intervals (+ index)",
        per(intervals)
    );
    println!(
        "{:<70} {:>14.2}",
        "  series hourly rollups",
        per(series_hourly)
    );
    println!("{:<70} {:>14.2}", "  cell hourly rollups", per(cell_hourly));
    println!("{:<70} {:>14.2}", "  series dictionary", per(series));
    println!(
        "{:<70} {:>14.1}",
        "  long-kept tiers per day of this fleet (MiB)",
        per(long) * (agents * 10 * 1440) as f64 / 1_048_576.0
    );
    println!(
        "{:<70} {:>14.1}",
        "  long-kept tiers for 400 days of this fleet (GiB)",
        per(long) * (agents * 10 * 1440) as f64 * 400.0 / 1_073_741_824.0
    );

    // 90 days of rollups: the simulated hours repeated back in time, for every cell and for the
    // one agent whose series are queried (the whole fleet's series rows would take longer to
    // copy than the rest of the bench).
    {
        let conn = rusqlite::Connection::open(&path)?;
        let first_hour = START / 3_600_000;
        let tx = conn.unchecked_transaction()?;
        let span = hours.max(1);
        let mut back = span;
        while back < 90 * 24 {
            tx.execute(
                "INSERT OR IGNORE INTO cell_hourly SELECT provider, account, port, family, hour - ?1, outcomes, connect FROM cell_hourly WHERE hour >= ?2 AND hour < ?3",
                rusqlite::params![back, first_hour, first_hour + span],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO series_hourly SELECT series, hour - ?1, outcomes, connect FROM series_hourly
                 WHERE hour >= ?2 AND hour < ?3 AND series IN (SELECT id FROM series WHERE agent = 'aws-00000')",
                rusqlite::params![back, first_hour, first_hour + span],
            )?;
            back += span;
        }
        tx.commit()?;
    }
    let store = Arc::new(SqliteStore::open(&path)?);
    let metrics = Arc::new(Metrics::new());
    let limits = LimitCounters::register(&metrics);
    let fleet = Fleet::new(FleetConfig::default(), store, Alerts::none(), metrics);
    let bound = http::bind(&HttpConfig {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", bound.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(fleet, limits, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let from = end - 90 * 86_400_000;
    for (what, query) in [
        (
            "one cell (aws/acct-0 x 587/ipv4), 90 days, 1d",
            format!("provider=aws&account=acct-0&port=587&family=ipv4&from={from}&to={end}"),
        ),
        (
            "one cell, last 30 days, 1h (720 buckets)",
            format!(
                "provider=aws&account=acct-0&port=587&family=ipv4&from={}&to={end}&step=1h",
                end - 30 * 86_400_000
            ),
        ),
        (
            "whole provider (aws: 5 accounts x 10 cells), 90 days, 1d",
            format!("provider=aws&from={from}&to={end}"),
        ),
        (
            "one agent's 10 series, 90 days, 1d",
            format!("provider=aws&agent=aws-00000&from={from}&to={end}"),
        ),
    ] {
        let url = format!("{base}/api/history?{query}");
        let mut ms = Vec::with_capacity(requests);
        let mut probes = 0;
        for _ in 0..requests {
            let t = Instant::now();
            let body: serde_json::Value = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            probes = body["buckets"].as_array().map_or(0, |b| {
                b.iter().map(|x| x["probes"].as_u64().unwrap_or(0)).sum()
            });
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<70} {:>14}",
            format!("/api/history {what}: p50 / p99 ms ({requests} requests)"),
            format!("{:.1} / {:.1}", quantile(&ms, 0.5), quantile(&ms, 0.99))
        );
        println!("{:<70} {:>14}", "  probes covered", probes);
    }
    let _ = stop.send(());
    server.await??;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("egresswatch-history-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
