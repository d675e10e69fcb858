//! Ingest benchmark: prints, from one run against the real collector binary on loopback,
//! bytes per result on the wire (compact MessagePack batch vs JSON of the same results), the
//! ingest rate with SQLite persistence from 100 simulated agents over QUIC, and the collector's
//! memory with 1,000 and 10,000 concurrent agent connections.
//!
//! Usage: `ingest_bench COLLECTOR_BINARY [CONNECTIONS...]` (see bench/ingest.sh).

use anyhow::{bail, Context, Result};
use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::limits::MAX_FRAME_BYTES;
use egresswatch_wire::{encode_frame, AgentMessage, Batch, ClockQuality, CollectorMessage, Labels};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egresswatch_collector::clock::now_unix_ms as now_ms;

struct Collector {
    child: Child,
    quic: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The collector with its connection bounds raised: every simulated agent of the bench comes
/// from the one loopback address, which `max_connections_per_source` would otherwise cap.
fn start(bin: &Path, dir: &Path) -> Result<Collector> {
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[quic]\nlisten = \"127.0.0.1:0\"\nmax_connections = 20000\nmax_connections_per_source = 20000\nmax_handshakes = 20000\nidle_timeout_secs = 120\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data")
        ),
    )?;
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut quic = None;
    while quic.is_none() {
        let Some(Ok(line)) = lines.next() else {
            bail!("collector exited early")
        };
        if let Some(rest) = line.strip_prefix("QUIC:") {
            quic = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Collector {
        child,
        quic: quic.context("QUIC address")?,
    })
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces, closed by the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / hz
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn issue(bin: &Path, dir: &Path, id: &str) -> Result<Credentials> {
    let ca_dir = dir.join("data/ca");
    let out = dir.join("agents");
    let status = Command::new(bin)
        .args(["ca", "issue", "--dir"])
        .arg(&ca_dir)
        .arg(id)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("ca issue failed");
    }
    Credentials::from_files(
        &ca_dir.join("ca.pem"),
        &out.join(format!("{id}.crt")),
        &out.join(format!("{id}.key")),
    )
}

fn labels(i: usize) -> Labels {
    Labels {
        provider: ["aws", "gcp", "azure", "digitalocean", "hetzner"][i % 5].into(),
        account: format!("acct-{}", i % 17),
        region: "r1".into(),
        instance: format!("vm-{i}"),
    }
}

/// Whole frame (length prefix included) per result, and JSON of the same results per result.
fn wire_sizes(count: u64) -> Result<(f64, f64)> {
    let base = now_ms();
    let results: Vec<_> = (1..=count)
        .map(|s| sim::result(s, base + s as i64 * 12_000))
        .collect();
    let frame = encode_frame(
        &AgentMessage::Batch(Batch::pack(&results, ClockQuality::Synchronised, 0)?),
        MAX_FRAME_BYTES,
    )?;
    let json = serde_json::to_vec(&results)?;
    let n = count as f64;
    Ok((frame.len() as f64 / n, json.len() as f64 / n))
}

async fn ingest_rate(
    bin: &Path,
    agents: usize,
    batches: u64,
    per_batch: u64,
    window: u64,
) -> Result<(f64, u64, u64, f64)> {
    let dir = tempfile::tempdir()?;
    let collector = start(bin, dir.path())?;
    let creds = issue(bin, dir.path(), "bench")?;
    // One identity is enough for the rate: each simulated agent gets its own id below.
    let mut all_creds = Vec::new();
    for i in 0..agents {
        all_creds.push(if i == 0 {
            creds.clone()
        } else {
            issue(bin, dir.path(), &format!("bench-{i}"))?
        });
    }
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let mut sessions = Vec::new();
    for (i, c) in all_creds.iter().enumerate() {
        let mut a = SimAgent::connect(
            &endpoint,
            collector.quic,
            sim::client_config(Some(c), &c.ca, sim::DEFAULT_ALPN)?,
        )
        .await?;
        match a.hello(labels(i)).await? {
            CollectorMessage::Welcome(_) => {}
            other => bail!("not welcomed: {other:?}"),
        }
        sessions.push(a);
    }
    let base = now_ms();
    let started = Instant::now();
    let cpu_before = cpu_secs(collector.child.id());
    let mut tasks = tokio::task::JoinSet::new();
    for mut a in sessions {
        tasks.spawn(async move {
            // A window of batches in flight, as a real agent keeps: the collector's writer can
            // then commit one agent's next batch in the same group as everyone else's.
            let mut stored = 0u64;
            let mut sent = 0u64;
            let mut acked = 0u64;
            while acked < batches {
                while sent < batches && sent - acked < window {
                    let first = sent * per_batch + 1;
                    let results: Vec<_> = (first..first + per_batch)
                        .map(|s| sim::result(s, base + s as i64))
                        .collect();
                    let batch = Batch::pack(&results, ClockQuality::Synchronised, 0)?;
                    a.send(&AgentMessage::Batch(batch)).await?;
                    sent += 1;
                }
                match a.receive().await? {
                    CollectorMessage::Ack(ack) => stored += u64::from(ack.accepted),
                    other => bail!("expected an ack, got {other:?}"),
                }
                acked += 1;
            }
            a.finish().await;
            anyhow::Ok(stored)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A second for the hub to finish following what was acked, then its CPU for all of it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_secs(collector.child.id()) - cpu_before;
    // Acks promise durability: kill the collector outright and count what the database holds.
    drop(collector);
    let db = rusqlite::Connection::open(dir.path().join("data/egresswatch.db"))?;
    let rows: u64 = db.query_row("SELECT count(*) FROM results", [], |row| row.get(0))?;
    Ok((
        total as f64 / elapsed,
        total,
        rows,
        cpu * 1000.0 / total.max(1) as f64,
    ))
}

async fn connection_memory(bin: &Path, connections: usize) -> Result<(u64, u64, u64, f64, u64)> {
    let dir = tempfile::tempdir()?;
    let collector = start(bin, dir.path())?;
    let creds = issue(bin, dir.path(), "mem")?;
    let (idle_rss, _) = rss_kib(collector.child.id());
    // Several client endpoints, so no single UDP socket carries all connections, each with a
    // buffer as large as the collector's: the figure is the collector's, not the bench's drops.
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| sim::client_endpoint(4 << 20))
        .collect::<Result<_>>()?;
    let drops_before = sim::udp_receive_buffer_errors();
    let config = sim::client_config(Some(&creds), &creds.ca, sim::DEFAULT_ALPN)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(connections);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..connections {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let config = config.clone();
        let addr = collector.quic;
        pending.spawn(async move {
            let mut a = SimAgent::connect(&endpoint, addr, config).await?;
            match a.hello(labels(i)).await? {
                CollectorMessage::Welcome(_) => anyhow::Ok(a),
                other => bail!("connection {i} not welcomed: {other:?}"),
            }
        });
        // Keep handshakes in flight bounded, as a real fleet's reconnects would be.
        while pending.len() >= 256 {
            if let Some(done) = pending.join_next().await {
                held.push(done??);
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        held.push(done??);
    }
    let setup = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = rss_kib(collector.child.id());
    drop(held);
    let dropped = sim::udp_receive_buffer_errors().saturating_sub(drops_before);
    Ok((idle_rss, rss, hwm, setup, dropped))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .context("usage: ingest_bench COLLECTOR_BINARY [CONNECTIONS...]")?,
    );
    let counts: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![1000, 10_000]
    } else {
        counts
    };

    println!("| figure | value |");
    println!("|---|---|");
    for count in [20, 50, 500] {
        let (compact, json) = wire_sizes(count)?;
        println!("| bytes per result, compact MessagePack batch of {count} (whole frame) | {compact:.1} |");
        println!("| bytes per result, JSON of the same {count} results | {json:.1} |");
    }
    let (rate, total, rows, cpu_per_1000) = ingest_rate(&bin, 100, 20, 500, 4).await?;
    println!("| ingest rate, 100 agents over QUIC (4 batches of 500 in flight each), SQLite (synchronous=FULL, WAL) | {rate:.0} results/s ({total} acked, {rows} rows in SQLite after SIGKILL) |");
    println!("| collector CPU per 1,000 results while ingesting them (user + system, hub included) | {cpu_per_1000:.4} s |");
    for n in counts {
        match connection_memory(&bin, n).await {
            Ok((idle, rss, hwm, setup, dropped)) => println!(
                "| collector RSS with {n} agent connections | {:.1} MiB (peak {:.1} MiB; idle {:.1} MiB; {:.1} KiB per connection; set up in {setup:.1} s; {dropped} UDP datagrams dropped by the kernel for full buffers) |",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                idle as f64 / 1024.0,
                rss.saturating_sub(idle) as f64 / n as f64
            ),
            Err(e) => println!("| collector RSS with {n} agent connections | failed: {e} |"),
        }
    }
    Ok(())
}
