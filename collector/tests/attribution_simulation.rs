//! The attribution simulation, small: every true layer (one agent, one account, a provider, the
//! destination) × failure kind (drop, reset, ICMP) × probe interval (1 s, 10 s, 60 s), 16
//! changes each (8 at 1 s, where a change costs the most probes) closing and reopening 587 at
//! random moments, through the real detector and fan-out planner with the
//! agents' confirmations, late, missing and failing-over answers (the engine is
//! tests/support/attribution_sim.rs; the benchmark with 2,000 changes per cell is
//! bench/attribution.sh). Asserts the promise: every change, closing and reopening, reported
//! exactly once at its true layer — nothing off the diagonal, nothing missing, no duplicate.

#[path = "support/attribution_sim.rs"]
mod engine;

use engine::{cells, run_cell, table, CellReport};

/// Changes per cell: enough for the orders of answers to vary, few enough for a debug build.
const CHANGES: usize = 16;
const CHANGES_AT_1S: usize = 8;

#[test]
fn every_change_is_reported_once_at_its_layer() {
    let seed = std::env::var("EGRESSWATCH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64);
    let mut cells = cells(CHANGES, seed, &[1_000, 10_000, 60_000]);
    for c in &mut cells {
        if c.interval_ms == 1_000 {
            c.changes = CHANGES_AT_1S;
        }
    }
    let reports: Vec<CellReport> = std::thread::scope(|s| {
        let handles: Vec<_> = cells
            .chunks(cells.len().div_ceil(2))
            .map(|chunk| s.spawn(move || chunk.iter().map(|&c| run_cell(c)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    println!(
        "seed {seed}, {CHANGES} changes per cell ({CHANGES_AT_1S} at 1 s)\n{}",
        table(&reports)
    );
    let mut failures = Vec::new();
    for r in &reports {
        let name = format!(
            "{} {} {} s",
            r.cell.layer.name(),
            r.cell.kind.name(),
            r.cell.interval_ms / 1000
        );
        for (phase, t) in [("close", &r.close), ("reopen", &r.reopen)] {
            let off = t.off_diagonal(r.cell.layer);
            if off + t.missing + t.extra > 0 {
                failures.push(format!(
                    "{name} {phase}: {off} off the diagonal, {} missing, {} extra ({} duplicates)",
                    t.missing, t.extra, t.duplicates
                ));
            }
            assert_eq!(t.changes, r.cell.changes, "{name} {phase}");
        }
        if r.settle_events > 0 {
            failures.push(format!(
                "{name}: {} events while the fleet settled",
                r.settle_events
            ));
        }
        for f in &r.failures {
            println!(
                "{name}, change {} ({}, {}): {}",
                f.change,
                f.phase,
                if f.disturbed {
                    "with a late answer or a failover"
                } else {
                    "no late answer, no failover"
                },
                f.what
            );
            for line in &f.timeline {
                println!("    {line}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
