//! Attribution figures (bench/attribution.sh): does the detector name the layer that changed,
//! once, whatever order the evidence arrives in? A seeded simulation of a 13-agent fleet
//! (gcp 1 account × 3 agents; aws acct-a × 2 and acct-b × 2; azure, digitalocean and hetzner
//! 1 × 2) probing "mx" on 587 and the control port 443, through the real detector and the real
//! fan-out planner with a fake clock (the engine, with its model of agents and hub, is in
//! collector/tests/support/attribution_sim.rs, shared with the test
//! collector/tests/attribution_simulation.rs). For each true layer (one agent, one account, aws
//! — the provider of two accounts —, the destination) × failure kind (drop, reset, ICMP) ×
//! probe interval (1 s, 10 s, 60 s), `--changes` changes close 587 at random moments and are
//! reverted once reported; it prints, per cell and direction, the events raised by scope (the
//! confusion matrix), the changes reported exactly once at their layer, the missing and the
//! extra, and change → first event (median, 95th percentile), then a timeline of the first
//! failures of each cell.
//!
//! Usage: attribution_sim [--changes N] [--seed S] [--intervals 1,10,60] [--threads T]

#[path = "../tests/support/attribution_sim.rs"]
mod engine;

use anyhow::{bail, Context, Result};
use engine::{cells, run_cell, table, CellReport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

struct Args {
    changes: usize,
    seed: u64,
    intervals_ms: Vec<i64>,
    threads: usize,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        changes: 2_000,
        seed: 1,
        intervals_ms: vec![1_000, 10_000, 60_000],
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--changes" => {
                args.changes = value()?
                    .parse()
                    .context("--changes takes a count of changes per cell")?;
            }
            "--seed" => args.seed = value()?.parse().context("--seed takes a number")?,
            "--threads" => {
                args.threads = value()?
                    .parse::<usize>()
                    .context("--threads takes a count")?
                    .max(1);
            }
            "--intervals" => {
                args.intervals_ms = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<i64>()
                            .ok()
                            .filter(|&n| n >= 1)
                            .map(|n| n * 1000)
                            .with_context(|| format!("--intervals: {s:?} is not whole seconds"))
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "attribution_sim [--changes N] [--seed S] [--intervals 1,10,60] [--threads T]"
                );
                std::process::exit(0);
            }
            other => bail!(
                "unknown argument {other:?} (expected --changes, --seed, --intervals, --threads)"
            ),
        }
    }
    if args.changes == 0 {
        bail!("--changes must be at least 1");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse()?;
    let cells = cells(args.changes, args.seed, &args.intervals_ms);
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, CellReport)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.threads.min(cells.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&cell) = cells.get(i) else { break };
                let report = run_cell(cell);
                eprintln!(
                    "cell {}/{}: {} {} {} s done ({:.0} s elapsed)",
                    i + 1,
                    cells.len(),
                    cell.layer.name(),
                    cell.kind.name(),
                    cell.interval_ms / 1000,
                    started.elapsed().as_secs_f64()
                );
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, report));
            });
        }
    });
    let mut reports = done.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<CellReport> = reports.into_iter().map(|(_, r)| r).collect();
    let wall = started.elapsed().as_secs_f64();

    let intervals: Vec<String> = args
        .intervals_ms
        .iter()
        .map(|i| (i / 1000).to_string())
        .collect();
    println!(
        "command: cargo run --release -p egresswatch-collector --example attribution_sim -- \
         --changes {} --seed {} --intervals {}",
        args.changes,
        args.seed,
        intervals.join(",")
    );
    println!(
        "seed {}; {} changes per cell, each closing 587 and reopening it (both scored); \
         agent = events of scope agent on 587 in the change's direction (likewise account, \
         provider, destination); other = any other event; correct = exactly one event, at the \
         true layer, naming the party that changed; extra = more than one event or one off the \
         diagonal (dup: more than one at the true layer); failed undisturbed = missing or extra \
         although no answer came late and no agent failed over during the change; median / p95 \
         = change -> first event",
        args.seed, args.changes
    );
    println!();
    print!("{}", table(&reports));
    println!();
    let (mut results, mut requests, mut simulated) = (0u64, 0u64, 0i64);
    let mut failing = Vec::new();
    for r in &reports {
        results += r.results;
        requests += r.requests;
        simulated += r.simulated_ms;
        let name = format!(
            "{} {} {} s",
            r.cell.layer.name(),
            r.cell.kind.name(),
            r.cell.interval_ms / 1000
        );
        if r.settle_events > 0 {
            println!("{name}: {} events while the fleet settled", r.settle_events);
        }
        let bad = |t: &engine::Tally| t.missing + t.extra + t.off_diagonal(r.cell.layer);
        if bad(&r.close) + bad(&r.reopen) > 0 || r.settle_events > 0 {
            failing.push(name);
        }
    }
    let total_off: usize = reports
        .iter()
        .map(|r| r.close.off_diagonal(r.cell.layer) + r.reopen.off_diagonal(r.cell.layer))
        .sum();
    let total_missing: usize = reports
        .iter()
        .map(|r| r.close.missing + r.reopen.missing)
        .sum();
    let total_extra: usize = reports.iter().map(|r| r.close.extra + r.reopen.extra).sum();
    println!(
        "totals: {} changes, {} off the diagonal, {} missing, {} extra; {} results and {} \
         requests over {:.1} simulated days; wall time {wall:.1} s on {} threads",
        reports
            .iter()
            .map(|r| r.close.changes + r.reopen.changes)
            .sum::<usize>(),
        total_off,
        total_missing,
        total_extra,
        results,
        requests,
        simulated as f64 / 86_400_000.0,
        args.threads
    );
    if failing.is_empty() {
        println!("every cell: every change reported once, at its layer");
    } else {
        println!("failing cells: {}", failing.join("; "));
    }
    for r in &reports {
        for f in &r.failures {
            println!();
            println!(
                "### {} {} {} s, change {} ({}{}): {}",
                r.cell.layer.name(),
                r.cell.kind.name(),
                r.cell.interval_ms / 1000,
                f.change,
                f.phase,
                if f.disturbed {
                    ", with a late answer or a failover"
                } else {
                    ", no late answer, no failover"
                },
                f.what
            );
            println!("(seconds from the change)");
            for line in &f.timeline {
                println!("    {line}");
            }
        }
    }
    Ok(())
}
