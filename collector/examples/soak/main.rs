//! The fleet soak (bench/soak.sh): N simulated agents over real QUIC against the real collector
//! binary, SIGKILL and restart every few minutes, one agent in a hundred sending garbage; prints
//! the figures and exits non-zero unless every honest result is stored exactly once.
//!
//! Usage: `soak COLLECTOR_BINARY [--agents N] [--minutes M] [--restart-every S]
//!         [--batch-every S] [--per-batch K]`

mod harness;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let collector = PathBuf::from(
        args.next()
            .context("usage: soak COLLECTOR_BINARY [options]")?,
    );
    let mut opts = harness::Options {
        collector,
        agents: 10_000,
        duration: Duration::from_secs(30 * 60),
        restart_every: Duration::from_secs(180),
        batch_every: Duration::from_secs(10),
        per_batch: 10,
        endpoints: 16,
        drain_timeout: Duration::from_secs(300),
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<f64> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .with_context(|| format!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--agents" => opts.agents = number()? as usize,
            "--minutes" => opts.duration = Duration::from_secs_f64(number()? * 60.0),
            "--restart-every" => opts.restart_every = Duration::from_secs_f64(number()?),
            "--batch-every" => opts.batch_every = Duration::from_secs_f64(number()?.max(0.01)),
            "--per-batch" => opts.per_batch = (number()? as u64).max(1),
            other => bail!("unknown option {other}"),
        }
    }
    println!(
        "soak: {} agents, {:.1} min, restart every {} s, {} results every {:.1} s per agent",
        opts.agents,
        opts.duration.as_secs_f64() / 60.0,
        opts.restart_every.as_secs(),
        opts.per_batch,
        opts.batch_every.as_secs_f64()
    );
    let report = harness::run(&opts)?;
    report.print();
    report.check()?;
    println!("exactly once: every result of every honest agent, no gaps, no duplicates");
    Ok(())
}
