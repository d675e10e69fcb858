//! The simulated agents' load mode: a fixed number of results from a fixed number of agents to a
//! running collector, in batches of a given mean size, one batch in flight per agent (as an
//! agent that lingers to fill its batch sends them). It exists to profile the collector with a
//! repeatable amount of work (for instance under `valgrind --tool=callgrind`); it prints what was
//! acknowledged and nothing about time.
//!
//! Usage: `sim-load ADDR CA_PEM CERT_DIR AGENTS RESULTS_PER_AGENT MEAN_BATCH` where CERT_DIR holds
//! `load-0.crt`/`.key` … as `egresswatch-collector ca issue --out CERT_DIR load-N` writes them.

use anyhow::{bail, Context, Result};
use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{CollectorMessage, Labels};
use std::path::PathBuf;

/// The size of batch `index` such that the first `n` batches hold `floor(n * mean)` results.
fn batch_size(index: u64, mean: f64) -> u64 {
    let end = ((index + 1) as f64 * mean).floor() as u64;
    let start = (index as f64 * mean).floor() as u64;
    end - start
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, ca, cert_dir, agents, per_agent, mean] = args.as_slice() else {
        bail!("usage: sim-load ADDR CA_PEM CERT_DIR AGENTS RESULTS_PER_AGENT MEAN_BATCH");
    };
    let addr = addr.parse().context("ADDR")?;
    let ca = PathBuf::from(ca);
    let cert_dir = PathBuf::from(cert_dir);
    let agents: usize = agents.parse().context("AGENTS")?;
    let per_agent: u64 = per_agent.parse().context("RESULTS_PER_AGENT")?;
    let mean: f64 = mean.parse().context("MEAN_BATCH")?;
    if mean < 1.0 {
        bail!("MEAN_BATCH must be at least 1");
    }
    let endpoint = sim::client_endpoint(4 << 20)?;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..agents {
        let id = format!("load-{i}");
        let creds = Credentials::from_files(
            &ca,
            &cert_dir.join(format!("{id}.crt")),
            &cert_dir.join(format!("{id}.key")),
        )?;
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            let config = sim::client_config(Some(&creds), &creds.ca, sim::DEFAULT_ALPN)?;
            let mut agent = SimAgent::connect(&endpoint, addr, config).await?;
            let labels = Labels {
                provider: "aws".into(),
                account: format!("acct-{}", i % 4),
                region: "lab-1".into(),
                instance: id.clone(),
            };
            match agent.hello(labels).await? {
                CollectorMessage::Welcome(_) => {}
                other => bail!("{id} not welcomed: {other:?}"),
            }
            let (mut next, mut index, mut accepted) = (1u64, 0u64, 0u64);
            while next <= per_agent {
                let size = batch_size(index, mean).clamp(1, per_agent - next + 1);
                let results: Vec<_> = (next..next + size)
                    .map(|s| sim::result(s, base + s as i64 * 10))
                    .collect();
                accepted += u64::from(agent.report(&results).await?.accepted);
                next += size;
                index += 1;
            }
            agent.finish().await;
            anyhow::Ok((accepted, index))
        });
    }
    let (mut results, mut batches) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (r, b) = done??;
        results += r;
        batches += b;
    }
    println!("{agents} agents: {results} results acknowledged in {batches} batches");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::batch_size;

    #[test]
    fn batch_sizes_average_the_mean() {
        let sizes: Vec<u64> = (0..10).map(|i| batch_size(i, 1.7)).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 17);
        assert!(sizes.iter().all(|&s| s == 1 || s == 2));
        assert_eq!((0..5).map(|i| batch_size(i, 20.0)).sum::<u64>(), 100);
    }
}
