//! The soak: the real `egresswatch-collector` binary, N simulated agents over real QUIC on
//! loopback, SIGKILL and restart of the collector every few minutes, and one agent in a hundred
//! sending garbage. Honest agents behave like the real one: numbered results, a window of
//! batches in flight, everything unacked kept and resent after a reconnect (capped exponential
//! backoff with jitter). At the end the collector is SIGKILLed once more (acks promise
//! durability) and the SQLite store is checked: every result of every honest agent exactly once.
//!
//! Shared by `examples/soak/main.rs` (bench/soak.sh) and `tests/soak_short.rs` (CI).

use anyhow::{anyhow, bail, Context, Result};
use egresswatch_collector::ca::{self, Authority};
use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{AgentMessage, Batch, ClockQuality, CollectorMessage, Labels};
use rand::{Rng, RngCore};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most batches an honest agent has in flight (the real agent keeps 8).
const WINDOW: usize = 4;
/// Most results per batch (the real agent's cap).
const BATCH_RESULTS: u64 = 500;
/// The collector's batch cap in the soak: above what honest agents send, below the wire's.
const SOAK_MAX_BATCH: usize = 1000;
/// How long a garbage agent waits for the collector to close its connection. Generous: on a
/// saturated machine the close (or the garbage) may be lost and retransmitted a few times.
const GARBAGE_CLOSE_WAIT: Duration = Duration::from_secs(60);
/// One agent in this many sends garbage.
const GARBAGE_ONE_IN: usize = 100;

#[derive(Debug, Clone)]
pub struct Options {
    pub collector: PathBuf,
    pub agents: usize,
    /// How long the agents produce results.
    pub duration: Duration,
    /// Collector SIGKILL + restart period; zero never restarts.
    pub restart_every: Duration,
    /// Each honest agent produces `per_batch` results every `batch_every`.
    pub batch_every: Duration,
    pub per_batch: u64,
    /// Client UDP sockets the agents share.
    pub endpoints: usize,
    /// Longest wait, after production stops, for every result to be acked.
    pub drain_timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Report {
    pub honest_agents: usize,
    pub garbage_agents: usize,
    pub elapsed: Duration,
    pub restarts: u64,
    pub collector_crashes: u64,
    pub produced: u64,
    pub stored_honest: u64,
    /// Honest agents whose stored results are not exactly 1..=produced.
    pub bad_agents: Vec<String>,
    /// Honest agents still holding unacked results when the drain timed out.
    pub undrained: usize,
    /// Honest sessions that ended while no restart had happened since they began.
    pub unexplained_disconnects: u64,
    pub disconnect_samples: Vec<String>,
    pub honest_sessions: u64,
    pub connect_failures: u64,
    pub garbage_sessions: u64,
    pub garbage_closed: u64,
    pub garbage_not_closed: u64,
    pub garbage_datagrams: u64,
    /// Of the closed: ended by a stateless reset or idle timeout (the collector forgot them).
    pub garbage_forgotten: u64,
    /// Garbage sent → connection closed by the collector: median and max.
    pub garbage_close_p50: Duration,
    pub garbage_close_max: Duration,
    /// UDP datagrams the kernel dropped for full receive buffers during the run (whole machine).
    pub udp_rcvbuf_drops: u64,
    /// VmHWM of each collector life, KiB.
    pub peak_rss_kib: Vec<u64>,
    pub acks: usize,
    pub ack_p50: Duration,
    pub ack_p99: Duration,
    pub ack_max: Duration,
    /// Results acked during the production phase, per second of it.
    pub ingest_rate: f64,
    pub limit_lines: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!("| figure | value |");
        println!("|---|---|");
        println!(
            "| agents | {} honest + {} sending garbage |",
            self.honest_agents, self.garbage_agents
        );
        println!(
            "| run | {:.1} min of production, {} collector restarts (SIGKILL), {} crashes |",
            self.elapsed.as_secs_f64() / 60.0,
            self.restarts,
            self.collector_crashes
        );
        println!("| results produced by honest agents | {} |", self.produced);
        println!(
            "| results stored (SQLite, after a final SIGKILL) | {} ({} agents not exactly once, {} undrained) |",
            self.stored_honest,
            self.bad_agents.len(),
            self.undrained
        );
        println!(
            "| ingest rate during the run | {:.0} results/s |",
            self.ingest_rate
        );
        println!(
            "| ack latency over {} batches | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
            self.acks,
            self.ack_p50.as_secs_f64() * 1e3,
            self.ack_p99.as_secs_f64() * 1e3,
            self.ack_max.as_secs_f64() * 1e3
        );
        let peaks: Vec<String> = self
            .peak_rss_kib
            .iter()
            .map(|k| format!("{:.1}", mib(*k)))
            .collect();
        println!(
            "| collector peak RSS (VmHWM) per life, MiB | {} (max {:.1}) |",
            peaks.join(", "),
            mib(self.peak_rss_kib.iter().copied().max().unwrap_or(0))
        );
        println!(
            "| honest sessions | {} ({} ended with no restart to explain it; {} failed connects) |",
            self.honest_sessions, self.unexplained_disconnects, self.connect_failures
        );
        println!(
            "| garbage sessions | {} ({} ended by the collector, {} of them by reset or idle timeout; {} still open after {} s; {} stray datagrams) |",
            self.garbage_sessions,
            self.garbage_closed,
            self.garbage_forgotten,
            self.garbage_not_closed,
            GARBAGE_CLOSE_WAIT.as_secs(),
            self.garbage_datagrams
        );
        println!(
            "| garbage sent -> closed by the collector | p50 {:.1} ms, max {:.1} ms |",
            self.garbage_close_p50.as_secs_f64() * 1e3,
            self.garbage_close_max.as_secs_f64() * 1e3
        );
        println!(
            "| UDP datagrams dropped by full receive buffers (kernel, whole machine) | {} |",
            self.udp_rcvbuf_drops
        );
        for line in &self.limit_lines {
            println!("| last life's {line} |");
        }
        for s in &self.disconnect_samples {
            println!("unexplained disconnect: {s}");
        }
        for a in self.bad_agents.iter().take(10) {
            println!("not exactly once: {a}");
        }
    }

    /// Exactly once for every honest agent, and garbage disturbed nobody.
    pub fn check(&self) -> Result<()> {
        if self.collector_crashes > 0 {
            bail!(
                "the collector died on its own {} times",
                self.collector_crashes
            );
        }
        if self.undrained > 0 {
            bail!("{} honest agents still had unacked results", self.undrained);
        }
        if !self.bad_agents.is_empty() {
            bail!(
                "{} honest agents not stored exactly once, e.g. {:?}",
                self.bad_agents.len(),
                &self.bad_agents[..self.bad_agents.len().min(5)]
            );
        }
        if self.stored_honest != self.produced {
            bail!("stored {} of {} results", self.stored_honest, self.produced);
        }
        if self.unexplained_disconnects > 0 {
            bail!(
                "{} honest sessions ended without a restart: {:?}",
                self.unexplained_disconnects,
                self.disconnect_samples
            );
        }
        if self.garbage_sessions == 0 || self.garbage_not_closed > 0 {
            bail!(
                "garbage sessions: {} closed, {} left open",
                self.garbage_closed,
                self.garbage_not_closed
            );
        }
        Ok(())
    }
}

/// What every agent task shares.
struct Shared {
    addr: SocketAddr,
    /// Incremented just before each SIGKILL: a session that ends with the same value it began
    /// with ended for a reason other than a restart.
    kills: AtomicU64,
    producing: AtomicBool,
    acked_total: AtomicU64,
    unexplained: AtomicU64,
    samples: Mutex<Vec<String>>,
    honest_sessions: AtomicU64,
    connect_failures: AtomicU64,
    garbage_sessions: AtomicU64,
    garbage_closed: AtomicU64,
    garbage_not_closed: AtomicU64,
    garbage_datagrams: AtomicU64,
    /// Milliseconds from the garbage sent to the collector's close, per judged session.
    garbage_close_ms: Mutex<Vec<u64>>,
    garbage_forgotten: AtomicU64,
}

/// One life of the collector process.
struct Life {
    child: Child,
    http: Option<SocketAddr>,
}

impl Life {
    fn start(bin: &Path, config: &Path) -> Result<Life> {
        // SOAK_COLLECTOR_LOG=FILE keeps the collector's log (RUST_LOG as set, else warnings).
        let (stderr, filter) = match std::env::var_os("SOAK_COLLECTOR_LOG") {
            Some(path) => (
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| format!("opening {path:?}"))?,
                ),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,quinn=error".into()),
            ),
            None => (Stdio::null(), "warn,quinn=error".into()),
        };
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("collector stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut quic, mut http) = (false, None);
        while !(quic && http.is_some()) && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else {
                bail!("the collector exited while starting")
            };
            quic |= line.starts_with("QUIC:");
            if let Some(rest) = line.strip_prefix("HTTP:") {
                http = rest
                    .split_whitespace()
                    .next()
                    .map(|a| a.trim_start_matches("http://").trim_end_matches('/'))
                    .and_then(|a| a.parse().ok());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Life { child, http })
    }

    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `egresswatch_limit_exceeded_total` lines that are not zero.
    fn limit_lines(&self) -> Vec<String> {
        let Some(http) = self.http else {
            return Vec::new();
        };
        let text = (|| -> Option<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(5)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })()
        .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("egresswatch_limit_exceeded_total{") && !l.ends_with(" 0"))
            .map(str::to_string)
            .collect()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

fn labels(i: usize) -> Labels {
    Labels {
        provider: ["aws", "gcp", "azure", "digitalocean", "hetzner"][i % 5].into(),
        account: format!("acct-{}", i % 37),
        region: "soak-1".into(),
        instance: format!("vm-{i}"),
    }
}

fn agent_id(i: usize) -> String {
    format!("soak-{i:05}")
}

fn is_garbage(i: usize) -> bool {
    i % GARBAGE_ONE_IN == GARBAGE_ONE_IN - 1
}

use egresswatch_collector::clock::now_unix_ms as now_ms;

/// Runs the soak and checks the store; the caller prints and asserts the report.
pub fn run(opts: &Options) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ca_dir = data.join("ca");
    ca::init(&ca_dir)?;
    let authority = Authority::load(&ca_dir)?;
    let ca_der = authority.cert_der()?;
    eprintln!("soak: issuing {} agent certificates", opts.agents);
    let mut creds = Vec::with_capacity(opts.agents);
    for i in 0..opts.agents {
        let (cert, key) = authority.issue_agent(&agent_id(i))?;
        creds.push(Credentials {
            ca: ca_der.clone(),
            chain: vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
            key: Arc::new(PrivateKeyDer::from_pem_slice(key.as_bytes())?),
        });
    }
    let port = free_udp_port()?;
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[quic]\nlisten = \"127.0.0.1:{port}\"\n\
             max_connections = {}\nmax_connections_per_source = {}\nmax_handshakes = 256\n\
             max_batch_results = {SOAK_MAX_BATCH}\nidle_timeout_secs = 30\n\
             udp_recv_buffer_bytes = 8388608\nudp_send_buffer_bytes = 8388608\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            opts.agents * 2 + 100,
            opts.agents * 2 + 100,
        ),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut life = Life::start(&opts.collector, &config)?;
    let shared = Arc::new(Shared {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        kills: AtomicU64::new(0),
        producing: AtomicBool::new(true),
        acked_total: AtomicU64::new(0),
        unexplained: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        honest_sessions: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        garbage_sessions: AtomicU64::new(0),
        garbage_closed: AtomicU64::new(0),
        garbage_not_closed: AtomicU64::new(0),
        garbage_datagrams: AtomicU64::new(0),
        garbage_close_ms: Mutex::new(Vec::new()),
        garbage_forgotten: AtomicU64::new(0),
    });
    let mut report = Report::default();

    let (tasks, endpoints) = runtime.block_on(async {
        let mut endpoints = Vec::new();
        for _ in 0..opts.endpoints.max(1) {
            // Buffers as large as the collector's: the drops counted are the collector's.
            endpoints.push(sim::client_endpoint(8 << 20)?);
        }
        let mut tasks = tokio::task::JoinSet::new();
        // Agents start over a ramp, as a fleet does, not all in one instant.
        let ramp = Duration::from_millis((opts.agents as u64 * 2).min(30_000));
        for (i, c) in creds.into_iter().enumerate() {
            let config = sim::client_config(Some(&c), &c.ca, sim::DEFAULT_ALPN)?;
            let endpoint = endpoints[i % endpoints.len()].clone();
            let shared = shared.clone();
            let delay = ramp.mul_f64(i as f64 / opts.agents.max(1) as f64);
            let opts = opts.clone();
            tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                if is_garbage(i) {
                    garbage_agent(i, endpoint, config, shared).await;
                    AgentEnd::default()
                } else {
                    honest_agent(i, endpoint, config, shared, &opts).await
                }
            });
        }
        anyhow::Ok((tasks, endpoints))
    })?;
    report.honest_agents = (0..opts.agents).filter(|i| !is_garbage(*i)).count();
    report.garbage_agents = opts.agents - report.honest_agents;

    // The production phase, with restarts.
    let drops_before = sim::udp_receive_buffer_errors();
    let started = Instant::now();
    let mut next_restart = started + opts.restart_every;
    while started.elapsed() < opts.duration {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = life.child.try_wait() {
            report.collector_crashes += 1;
            eprintln!("soak: the collector exited on its own: {status}");
            shared.kills.fetch_add(1, Ordering::SeqCst);
            life = Life::start(&opts.collector, &config)?;
        }
        if !opts.restart_every.is_zero() && Instant::now() >= next_restart {
            report.peak_rss_kib.push(life.peak_rss_kib());
            shared.kills.fetch_add(1, Ordering::SeqCst);
            life.kill();
            report.restarts += 1;
            eprintln!(
                "soak: {:.0} s: SIGKILLed the collector ({} results acked so far), restarting",
                started.elapsed().as_secs_f64(),
                shared.acked_total.load(Ordering::Relaxed)
            );
            life = Life::start(&opts.collector, &config)?;
            next_restart = Instant::now() + opts.restart_every;
        }
    }
    report.elapsed = started.elapsed();
    report.ingest_rate =
        shared.acked_total.load(Ordering::Relaxed) as f64 / report.elapsed.as_secs_f64();
    shared.producing.store(false, Ordering::SeqCst);
    eprintln!("soak: production stopped; draining");

    // Drain: every honest agent finishes once all it produced is acked.
    let ends = runtime.block_on(async {
        let mut ends = Vec::new();
        let mut tasks = tasks;
        let deadline = tokio::time::Instant::now() + opts.drain_timeout;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok(end))) => ends.push(end),
                Ok(Some(Err(e))) => eprintln!("soak: an agent task failed: {e}"),
                Ok(None) => break,
                Err(_) => {
                    eprintln!("soak: drain timed out with {} agents left", tasks.len());
                    tasks.abort_all();
                    break;
                }
            }
        }
        for e in &endpoints {
            e.close(0u32.into(), b"soak over");
        }
        ends
    });
    report.udp_rcvbuf_drops = sim::udp_receive_buffer_errors().saturating_sub(drops_before);
    report.peak_rss_kib.push(life.peak_rss_kib());
    report.limit_lines = life.limit_lines();
    life.kill();
    drop(runtime);

    let mut latencies: Vec<u32> = Vec::new();
    let mut produced = std::collections::HashMap::new();
    for end in ends {
        if let Some(id) = end.agent {
            report.produced += end.produced;
            if end.acked < end.produced {
                report.undrained += 1;
            }
            produced.insert(id, end.produced);
        }
        latencies.extend(end.latencies_us);
    }
    report.undrained += report.honest_agents.saturating_sub(produced.len());
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        Duration::from_micros(u64::from(latencies[i]))
    };
    report.acks = latencies.len();
    report.ack_p50 = pct(0.50);
    report.ack_p99 = pct(0.99);
    report.ack_max = pct(1.0);

    // The store, after the last SIGKILL.
    let db = rusqlite::Connection::open(data.join("egresswatch.db"))?;
    let mut rows = db.prepare(
        "SELECT agent, count(*), count(DISTINCT seq), min(seq), max(seq) FROM results GROUP BY agent",
    )?;
    let mut seen = std::collections::HashSet::new();
    let stats = rows.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
            r.get::<_, i64>(4)? as u64,
        ))
    })?;
    for row in stats {
        let (agent, count, distinct, min, max) = row?;
        let Some(&want) = produced.get(&agent) else {
            continue;
        };
        seen.insert(agent.clone());
        report.stored_honest += count;
        if count != want || distinct != count || min != 1 || max != want {
            report.bad_agents.push(format!(
                "{agent}: produced 1..={want}, stored {count} rows ({distinct} distinct) {min}..={max}"
            ));
        }
    }
    for (agent, want) in &produced {
        if *want > 0 && !seen.contains(agent) {
            report
                .bad_agents
                .push(format!("{agent}: produced {want}, stored none"));
        }
    }
    report.unexplained_disconnects = shared.unexplained.load(Ordering::Relaxed);
    report.disconnect_samples = shared.samples.lock().map(|s| s.clone()).unwrap_or_default();
    report.honest_sessions = shared.honest_sessions.load(Ordering::Relaxed);
    report.connect_failures = shared.connect_failures.load(Ordering::Relaxed);
    report.garbage_sessions = shared.garbage_sessions.load(Ordering::Relaxed);
    report.garbage_closed = shared.garbage_closed.load(Ordering::Relaxed);
    report.garbage_not_closed = shared.garbage_not_closed.load(Ordering::Relaxed);
    report.garbage_datagrams = shared.garbage_datagrams.load(Ordering::Relaxed);
    report.garbage_forgotten = shared.garbage_forgotten.load(Ordering::Relaxed);
    let mut closes = shared
        .garbage_close_ms
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    closes.sort_unstable();
    if !closes.is_empty() {
        report.garbage_close_p50 = Duration::from_millis(closes[(closes.len() - 1) / 2]);
        report.garbage_close_max = Duration::from_millis(closes[closes.len() - 1]);
    }
    Ok(report)
}

#[derive(Default)]
struct AgentEnd {
    agent: Option<String>,
    produced: u64,
    acked: u64,
    latencies_us: Vec<u32>,
}

/// An honest agent: produces numbered results on a schedule, keeps them until acked, resends
/// after any reconnect. Ends once production stopped and all it produced is acked.
async fn honest_agent(
    i: usize,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    shared: Arc<Shared>,
    opts: &Options,
) -> AgentEnd {
    let mut end = AgentEnd {
        agent: Some(agent_id(i)),
        ..Default::default()
    };
    // Results are produced even while disconnected (the real agent's spool holds them).
    let first_at = tokio::time::Instant::now()
        + opts
            .batch_every
            .mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    let mut next_production = first_at;
    let mut backoff = Duration::from_secs(1);
    loop {
        if !shared.producing.load(Ordering::SeqCst) && end.acked >= end.produced {
            return end;
        }
        let kills_at_start = shared.kills.load(Ordering::SeqCst);
        match session(
            &endpoint,
            &config,
            &shared,
            opts,
            &mut end,
            &mut next_production,
            i,
        )
        .await
        {
            Ok(()) => return end,
            Err(SessionEnd::Connect) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(SessionEnd::Lost(reason)) => {
                backoff = Duration::from_secs(1);
                if shared.kills.load(Ordering::SeqCst) == kills_at_start {
                    shared.unexplained.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut s) = shared.samples.lock() {
                        if s.len() < 10 {
                            s.push(format!("{}: {reason}", agent_id(i)));
                        }
                    }
                }
            }
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        // Produce what came due while waiting.
        catch_up(&mut end, &mut next_production, &shared, opts);
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

enum SessionEnd {
    /// Could not connect or was not welcomed (restart in progress, handshake cap).
    Connect,
    /// A welcomed session ended.
    Lost(String),
}

fn catch_up(
    end: &mut AgentEnd,
    next_production: &mut tokio::time::Instant,
    shared: &Shared,
    opts: &Options,
) {
    let now = tokio::time::Instant::now();
    while shared.producing.load(Ordering::SeqCst) && *next_production <= now {
        end.produced += opts.per_batch;
        *next_production += opts.batch_every;
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    shared: &Shared,
    opts: &Options,
    end: &mut AgentEnd,
    next_production: &mut tokio::time::Instant,
    i: usize,
) -> std::result::Result<(), SessionEnd> {
    let connect = SimAgent::connect(endpoint, shared.addr, config.clone());
    let mut agent = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(a)) => a,
        _ => return Err(SessionEnd::Connect),
    };
    let welcome = match tokio::time::timeout(Duration::from_secs(15), agent.hello(labels(i))).await
    {
        Ok(Ok(CollectorMessage::Welcome(w))) => w,
        // Refused (handshake cap), or the collector went away while we said hello.
        _ => return Err(SessionEnd::Connect),
    };
    shared.honest_sessions.fetch_add(1, Ordering::Relaxed);
    if welcome.acked_seq > end.produced {
        // The collector claims results this agent never sent: a real failure, not a restart.
        return Err(SessionEnd::Lost(format!(
            "welcome acks {} of {} produced",
            welcome.acked_seq, end.produced
        )));
    }
    note_ack(end, shared, welcome.acked_seq);
    let (connection, mut send, mut recv) = agent.split();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let message = sim::read_message(&mut recv).await;
            let failed = message.is_err();
            if ack_tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut sent_up_to = end.acked;
    let mut in_flight: VecDeque<(u64, tokio::time::Instant)> = VecDeque::new();
    loop {
        catch_up(end, next_production, shared, opts);
        if !shared.producing.load(Ordering::SeqCst) && end.acked >= end.produced {
            let _ = send.get_mut().finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            return Ok(());
        }
        while in_flight.len() < WINDOW && sent_up_to < end.produced {
            let first = sent_up_to + 1;
            let last = end.produced.min(sent_up_to + BATCH_RESULTS);
            let base = now_ms();
            let results: Vec<_> = (first..=last)
                .map(|s| sim::result(s, base - (last - s) as i64))
                .collect();
            let batch = Batch::pack(&results, ClockQuality::Synchronised, 0)
                .map_err(|e| SessionEnd::Lost(format!("packing: {e}")))?;
            send.send(&AgentMessage::Batch(batch))
                .await
                .map_err(|e| SessionEnd::Lost(format!("sending: {}", sim::stream_error(&e))))?;
            in_flight.push_back((last, tokio::time::Instant::now()));
            sent_up_to = last;
        }
        let wake = if shared.producing.load(Ordering::SeqCst) {
            *next_production
        } else {
            tokio::time::Instant::now() + Duration::from_millis(500)
        };
        tokio::select! {
            message = ack_rx.recv() => match message {
                Some(Ok(CollectorMessage::Ack(ack))) => {
                    if ack.up_to_seq > end.produced {
                        return Err(SessionEnd::Lost(format!("ack {} beyond {}", ack.up_to_seq, end.produced)));
                    }
                    let now = tokio::time::Instant::now();
                    while let Some(&(last, at)) = in_flight.front() {
                        if last > ack.up_to_seq {
                            break;
                        }
                        end.latencies_us.push(now.duration_since(at).as_micros().min(u32::MAX as u128) as u32);
                        in_flight.pop_front();
                    }
                    note_ack(end, shared, ack.up_to_seq);
                }
                Some(Ok(other)) => return Err(SessionEnd::Lost(format!("unexpected {other:?}"))),
                Some(Err(e)) => return Err(SessionEnd::Lost(e.to_string())),
                None => return Err(SessionEnd::Lost("reader ended".into())),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn note_ack(end: &mut AgentEnd, shared: &Shared, up_to: u64) {
    if up_to > end.acked {
        shared
            .acked_total
            .fetch_add(up_to - end.acked, Ordering::Relaxed);
        end.acked = up_to;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An agent with a valid certificate that sends garbage, one kind after another, and checks
/// that the collector closes its connection each time. It stops when production stops.
async fn garbage_agent(
    i: usize,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    shared: Arc<Shared>,
) {
    let mut round = i / GARBAGE_ONE_IN;
    while shared.producing.load(Ordering::SeqCst) {
        round += 1;
        let kind = round % 6;
        let kills_at_start = shared.kills.load(Ordering::SeqCst);
        let outcome = garbage_session(kind, i, &endpoint, &config, &shared).await;
        match outcome {
            Ok(Some(true)) => {
                shared.garbage_sessions.fetch_add(1, Ordering::Relaxed);
                shared.garbage_closed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(false)) if shared.kills.load(Ordering::SeqCst) == kills_at_start => {
                shared.garbage_sessions.fetch_add(1, Ordering::Relaxed);
                shared.garbage_not_closed.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "soak: garbage kind {kind} from {} was not closed",
                    agent_id(i)
                );
            }
            // A restart got in the way, or the datagram kind: nothing to judge.
            _ => {}
        }
        let pause = rand::thread_rng().gen_range(2.0..6.0);
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
    }
}

/// One garbage session; `Some(closed)` when connected and judged.
async fn garbage_session(
    kind: usize,
    i: usize,
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    shared: &Shared,
) -> Result<Option<bool>> {
    if kind == 5 {
        // Stray datagrams at the QUIC port: not even a connection.
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut buf = vec![0u8; 1200];
        for _ in 0..20 {
            rand::thread_rng().fill_bytes(&mut buf);
            socket.send_to(&buf, shared.addr).await?;
        }
        shared.garbage_datagrams.fetch_add(20, Ordering::Relaxed);
        return Ok(None);
    }
    let connect = SimAgent::connect(endpoint, shared.addr, config.clone());
    let Ok(Ok(mut agent)) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
        return Ok(None);
    };
    let mut random = vec![0u8; rand::thread_rng().gen_range(16..2048)];
    rand::thread_rng().fill_bytes(&mut random);
    let sent = match kind {
        // Random bytes instead of a hello.
        0 => agent.send_raw(&random).await,
        // A frame header announcing 4 GiB.
        1 => agent.send_raw(&u32::MAX.to_be_bytes()).await,
        // A well-sized frame of random bytes.
        2 => {
            let mut frame = (random.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&random);
            agent.send_raw(&frame).await
        }
        // Labels over the wire's caps.
        3 => {
            let bad = Labels {
                provider: "p\u{7}".into(),
                account: "a".repeat(4000),
                ..labels(i)
            };
            agent.send(&AgentMessage::Hello(sim::hello(bad))).await
        }
        // Welcomed, then a batch over the collector's max_batch_results.
        _ => match agent.hello(labels(i)).await {
            Ok(CollectorMessage::Welcome(_)) => {
                let base = now_ms();
                let results: Vec<_> = (1..=SOAK_MAX_BATCH as u64 + 1)
                    .map(|s| sim::result(s, base))
                    .collect();
                let batch = Batch::pack(&results, ClockQuality::Synchronised, 0)?;
                agent.send(&AgentMessage::Batch(batch)).await
            }
            Ok(other) => Err(anyhow!("not welcomed: {other:?}")),
            Err(e) => Err(e),
        },
    };
    if sent.is_err() {
        return Ok(None);
    }
    let sent_at = Instant::now();
    let closed = tokio::time::timeout(GARBAGE_CLOSE_WAIT, agent.connection.closed()).await;
    // Closed with the collector's error code; or forgotten by it — its handshake timed out under
    // load and it answers with a stateless reset, or goes silent into our idle timeout. Only a
    // connection still open after the wait is one the collector kept.
    let ended = match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(ref c)) => c.error_code.into_inner() != 3,
        Ok(quinn::ConnectionError::Reset) | Ok(quinn::ConnectionError::TimedOut) => {
            shared.garbage_forgotten.fetch_add(1, Ordering::Relaxed);
            true
        }
        _ => false,
    };
    if ended {
        if let Ok(mut times) = shared.garbage_close_ms.lock() {
            times.push(sent_at.elapsed().as_millis() as u64);
        }
    }
    agent.connection.close(0u32.into(), b"");
    Ok(Some(ended))
}
