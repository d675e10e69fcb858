//! Replays a collector's SQLite store through the detector, as a collector that takes the lead
//! rebuilds it: every stored result in the order it was received, batch by batch, with a tick a
//! second in between; prints each event with the second it came out. With
//! `RUST_LOG=egresswatch_collector::detector=debug` it also prints, at each attribution, what
//! every agent on the path had said — how to read back why a run named the layer it named.
//!
//! `cargo run -p egresswatch-collector --example replay_store -- DATA_DIR/egresswatch.db [collector.toml]`

use anyhow::{Context, Result};
use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::identity::AgentMeta;
use egresswatch_wire::{Labels, ProbeResult};
use std::collections::HashMap;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .context("usage: replay_store DB [collector.toml]")?;
    let config: DetectorConfig = match args.next() {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {path}"))?;
            match table.get("detector") {
                Some(d) => d.clone().try_into().context("[detector]")?,
                None => DetectorConfig::default(),
            }
        }
        None => DetectorConfig::default(),
    };
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {db}"))?;
    let mut agents: HashMap<String, AgentMeta> = HashMap::new();
    let mut stmt =
        conn.prepare("SELECT id, provider, account, region, instance, version FROM agents")?;
    let rows = stmt.query_map([], |r| {
        Ok(AgentMeta {
            agent_id: r.get(0)?,
            labels: Labels {
                provider: r.get(1)?,
                account: r.get(2)?,
                region: r.get(3)?,
                instance: r.get(4)?,
            },
            agent_version: r.get(5)?,
        })
    })?;
    for a in rows {
        let a = a?;
        agents.insert(a.agent_id.clone(), a);
    }
    let mut stmt = conn.prepare(
        "SELECT agent, received_ms, clock_trusted, record FROM results ORDER BY received_ms, agent, seq",
    )?;
    let rows: Vec<(String, i64, bool, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let Some(first) = rows.first().map(|r| r.1) else {
        println!("no results stored");
        return Ok(());
    };
    let mut detector = Detector::new(config);
    let mut next_tick = first + 1000;
    let mut start = 0;
    let print = |events: Vec<egresswatch_collector::events::Event>| {
        for e in events {
            println!(
                "{:>8.3} s  {:?} {:?} {} / {} / {} {}:{} {} -> {}",
                (e.at_unix_ms - first) as f64 / 1000.0,
                e.kind,
                e.scope,
                e.provider.as_deref().unwrap_or("-"),
                e.account.as_deref().unwrap_or("-"),
                e.agent.as_deref().unwrap_or("-"),
                e.target.as_deref().unwrap_or("-"),
                e.port.unwrap_or(0),
                e.from.as_str(),
                e.to.as_str()
            );
        }
    };
    while start < rows.len() {
        let (agent, received, trusted, _) = &rows[start];
        let mut end = start + 1;
        while end < rows.len() && rows[end].0 == *agent && rows[end].1 == *received {
            end += 1;
        }
        while next_tick <= *received {
            print(detector.tick(next_tick));
            next_tick += 1000;
        }
        let results: Vec<ProbeResult> = rows[start..end]
            .iter()
            .map(|r| rmp_serde::from_slice(&r.3).context("a stored record"))
            .collect::<Result<_>>()?;
        if let Some(meta) = agents.get(agent) {
            print(detector.observe(meta, &results, *trusted, *received));
        }
        start = end;
    }
    print(detector.tick(next_tick));
    Ok(())
}
