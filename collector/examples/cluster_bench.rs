//! Several collectors on one PostgreSQL (bench/cluster.sh): from one run against the real
//! collector binary on loopback and a throwaway PostgreSQL cluster (Debian's server, fsync on),
//! prints
//!
//! - ingest over QUIC, the same simulated agents and batches for three setups side by side: one
//!   collector on SQLite, one collector on PostgreSQL, two collectors on one PostgreSQL database
//!   with the agents split between them; results acked per second, the rows counted after the
//!   collectors are SIGKILLed, and bytes on disk per result (SQLite's file, PostgreSQL's results
//!   partitions with their indexes and the whole database);
//! - the connections each collector holds to PostgreSQL (`pg_stat_activity`, by application name
//!   and by the collector process that owns the client socket), sampled during the runs;
//! - leader failover with three collectors: the leader SIGKILLed right after one account's 587
//!   starts timing out (at its first closed round, before any collector could decide), the time
//!   from the kill to another collector's `egresswatch_collector_leader` = 1 and to the event in
//!   the new leader's `/api/events`; then the new leader stopped with SIGTERM and the time to the
//!   next leader. Each repetition has a database and three collectors of its own.
//!
//! Usage: `cluster_bench COLLECTOR_BINARY`; env `AGENTS=100 BATCHES=40 PER_BATCH=50 WINDOW=4
//! FAILOVERS=5`.

use anyhow::{anyhow, bail, Context, Result};
use egresswatch_collector::clock::now_unix_ms as now_ms;
use egresswatch_collector::ready::Ready;
use egresswatch_sim::postgres::PgCluster;
use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{
    AgentMessage, Batch, ClockQuality, CollectorMessage, Labels, Outcome, ProbeResult,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The QUIC bounds raised: every simulated agent comes from the one loopback address.
const QUIC_TABLE: &str = "listen = \"127.0.0.1:0\"\nmax_connections = 20000\n\
    max_connections_per_source = 20000\nmax_handshakes = 20000\nidle_timeout_secs = 120";

/// One collector process: its data dir, where it listens; SIGKILLed on drop.
struct Node {
    name: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    quic: SocketAddr,
    http: SocketAddr,
}

impl Node {
    /// Starts `bin run` in `work/name` with the fleet CA in `ca` copied into its data dir and
    /// `rest` (more config tables) after `[quic]` and `[http]`; waits for its ready.json.
    fn start(bin: &Path, work: &Path, name: &str, ca: &Path, rest: &str) -> Result<Node> {
        let dir = work.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        copy_dir(ca, &data.join("ca"))?;
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!("data_dir = {data:?}\n[quic]\n{QUIC_TABLE}\n[http]\nlisten = \"127.0.0.1:0\"\n{rest}"),
        )?;
        let log = dir.join("collector.log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,quinn=error")
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting the collector")?;
        let pid = child.id();
        let mut node = Node {
            name: name.to_string(),
            data,
            log,
            child: Some(child),
            quic: "127.0.0.1:0".parse()?,
            http: "127.0.0.1:0".parse()?,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(ready) = Ready::read(&node.data).filter(|r| r.pid == pid) {
                node.quic = ready.quic;
                node.http = ready.http;
                return Ok(node);
            }
            let exited = match node.child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if exited || Instant::now() > deadline {
                bail!(
                    "collector {name} did not become ready; its log:\n{}",
                    node.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop); the process is reaped by [`Node::exited_within`].
    fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("not running")?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `within` for the process to end; then it is killed if it has not.
    fn exited_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.child = None;
                    return true;
                }
            }
        }
        self.kill();
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The fleet CA of the whole run (`ca init`), and agents' credentials issued from it.
struct Fleet {
    bin: PathBuf,
    ca: PathBuf,
    certs: PathBuf,
}

impl Fleet {
    fn init(bin: &Path, work: &Path) -> Result<Fleet> {
        let ca = work.join("ca");
        let status = Command::new(bin)
            .args(["ca", "init", "--dir"])
            .arg(&ca)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("ca init failed");
        }
        Ok(Fleet {
            bin: bin.to_path_buf(),
            ca,
            certs: work.join("agents"),
        })
    }

    fn issue(&self, id: &str) -> Result<Credentials> {
        let status = Command::new(&self.bin)
            .args(["ca", "issue", "--dir"])
            .arg(&self.ca)
            .arg(id)
            .arg("--out")
            .arg(&self.certs)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("ca issue {id} failed");
        }
        Credentials::from_files(
            &self.ca.join("ca.pem"),
            &self.certs.join(format!("{id}.crt")),
            &self.certs.join(format!("{id}.key")),
        )
    }
}

/// Runs `f` with a session to `url` off the async runtime (the PostgreSQL client blocks).
async fn with_pg<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T> + Send + 'static,
) -> Result<T> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)
            .with_context(|| format!("connecting to {url}"))?;
        f(&mut client)
    })
    .await?
}

async fn create_database(pg: &PgCluster, name: &str) -> Result<()> {
    let statement = format!("CREATE DATABASE {name}");
    with_pg(&pg.url(), move |c| Ok(c.batch_execute(&statement)?)).await
}

async fn database_size(url: &str) -> Result<i64> {
    with_pg(url, |c| {
        Ok(
            c.query_one("SELECT pg_database_size(current_database())", &[])?
                .get(0),
        )
    })
    .await
}

/// What one ingest setup printed.
struct IngestFigures {
    rate: f64,
    acked: u64,
    rows: u64,
    /// (what, bytes) on disk.
    sizes: Vec<(String, i64)>,
    connections: Option<ConnectionSample>,
}

#[derive(Clone, Copy)]
struct IngestPlan {
    agents: usize,
    batches: u64,
    per_batch: u64,
    window: u64,
}

fn ingest_labels(i: usize) -> Labels {
    Labels {
        provider: ["aws", "gcp", "azure", "digitalocean", "hetzner"][i % 5].into(),
        account: format!("acct-{}", i % 17),
        region: "r1".into(),
        instance: format!("vm-{i}"),
    }
}

/// Agent `i` connects to `addrs[i % len]`, says hello, then every agent sends `batches`
/// batches of `per_batch` with `window` in flight. Returns (results acked, seconds from the
/// first batch sent to the last ack).
async fn ingest(
    addrs: &[SocketAddr],
    creds: &[Credentials],
    plan: IngestPlan,
) -> Result<(u64, f64)> {
    let endpoints: Vec<quinn::Endpoint> = (0..4)
        .map(|_| sim::client_endpoint(4 << 20))
        .collect::<Result<_>>()?;
    let mut sessions = Vec::new();
    for (i, c) in creds.iter().enumerate().take(plan.agents) {
        let config = sim::client_config(Some(c), &c.ca, sim::DEFAULT_ALPN)?;
        let addr = addrs[i % addrs.len()];
        let endpoint = &endpoints[i % endpoints.len()];
        let agent = tokio::time::timeout(Duration::from_secs(20), async {
            let mut a = SimAgent::connect(endpoint, addr, config).await?;
            match a.hello(ingest_labels(i)).await? {
                CollectorMessage::Welcome(_) => Ok(a),
                other => bail!("agent {i} not welcomed: {other:?}"),
            }
        })
        .await
        .map_err(|_| anyhow!("agent {i}: no welcome within 20 s"))??;
        sessions.push(agent);
    }
    let base = now_ms();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut a) in sessions.into_iter().enumerate() {
        tasks.spawn(async move {
            let (mut sent, mut acked, mut stored) = (0u64, 0u64, 0u64);
            while acked < plan.batches {
                while sent < plan.batches && sent - acked < plan.window {
                    let first = sent * plan.per_batch + 1;
                    let results: Vec<_> = (first..first + plan.per_batch)
                        .map(|s| sim::result(s, base + s as i64))
                        .collect();
                    let batch = Batch::pack(&results, ClockQuality::Synchronised, 0)?;
                    a.send(&AgentMessage::Batch(batch)).await?;
                    sent += 1;
                }
                let answer = tokio::time::timeout(Duration::from_secs(60), a.receive())
                    .await
                    .map_err(|_| anyhow!("agent {i}: no ack within 60 s"))??;
                match answer {
                    CollectorMessage::Ack(ack) => stored += u64::from(ack.accepted),
                    other => bail!("agent {i}: expected an ack, got {other:?}"),
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
    Ok((total, started.elapsed().as_secs_f64()))
}

/// One reading of `pg_stat_activity` for the database: sessions by application name, and by
/// application name per collector (the process owning the client end of the TCP connection).
#[derive(Clone, Default)]
struct ConnectionSample {
    by_application: BTreeMap<String, usize>,
    by_collector: BTreeMap<String, BTreeMap<String, usize>>,
    total: usize,
}

/// The local TCP ports of the sockets process `pid` has open (its fds matched to /proc/net/tcp).
fn local_tcp_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, inode.parse::<u64>()) {
                if inodes.contains(&inode) {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

fn sample_connections(
    client: &mut postgres::Client,
    collectors: &[(String, u32)],
) -> Result<ConnectionSample> {
    let rows = client.query(
        "SELECT COALESCE(application_name, ''), client_port FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )?;
    let owners: Vec<(String, HashSet<u16>)> = collectors
        .iter()
        .map(|(name, pid)| (name.clone(), local_tcp_ports(*pid)))
        .collect();
    let mut sample = ConnectionSample::default();
    for row in rows {
        let application: String = row.get(0);
        let port: Option<i32> = row.get(1);
        *sample
            .by_application
            .entry(application.clone())
            .or_default() += 1;
        let owner = port
            .and_then(|p| u16::try_from(p).ok())
            .and_then(|p| owners.iter().find(|(_, ports)| ports.contains(&p)))
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| "(no collector)".to_string());
        *sample
            .by_collector
            .entry(owner)
            .or_default()
            .entry(application)
            .or_default() += 1;
        sample.total += 1;
    }
    Ok(sample)
}

/// Samples `pg_stat_activity` every 500 ms until stopped; keeps the sample with the most sessions.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<ConnectionSample>>>,
}

impl Sampler {
    fn start(url: &str, collectors: Vec<(String, u32)>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let url = url.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            let mut most = ConnectionSample::default();
            // At most 10 minutes of samples, whatever happens to the caller.
            for _ in 0..1200 {
                let sample = sample_connections(&mut client, &collectors)?;
                if sample.total > most.total {
                    most = sample;
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(most)
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<ConnectionSample> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(sample)) => sample,
            _ => bail!("the connection sampler panicked"),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pg_store_table(url: &str, id: &str, extra: &str) -> String {
    format!("[store]\nkind = \"postgres\"\nurl = {url:?}\n[cluster]\nid = {id:?}\nheartbeat_secs = 1\n{extra}")
}

async fn ingest_sqlite(
    bin: &Path,
    fleet: &Fleet,
    work: &Path,
    creds: &[Credentials],
    plan: IngestPlan,
) -> Result<IngestFigures> {
    let mut node = Node::start(bin, work, "sqlite", &fleet.ca, "")?;
    let (acked, secs) = ingest(&[node.quic], creds, plan).await?;
    // Acks promise durability: kill outright, then count; opening and closing the file folds
    // the WAL back into it, so the file's size is the data's.
    node.kill();
    let path = node.data.join("egresswatch.db");
    let db = rusqlite::Connection::open(&path)?;
    let rows: u64 = db.query_row("SELECT count(*) FROM results", [], |r| r.get(0))?;
    let results_bytes: i64 = db
        .query_row(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN
                 (SELECT name FROM sqlite_master WHERE tbl_name = 'results')",
            [],
            |r| r.get(0),
        )
        .context("dbstat (SQLite built without it?)")?;
    db.close().map_err(|(_, e)| e)?;
    let file_bytes = std::fs::metadata(&path)?.len() as i64;
    let wal = std::fs::metadata(node.data.join("egresswatch.db-wal")).map_or(0, |m| m.len() as i64);
    Ok(IngestFigures {
        rate: acked as f64 / secs,
        acked,
        rows,
        sizes: vec![
            ("table results + its indexes (dbstat)".into(), results_bytes),
            ("whole database file (+ WAL left)".into(), file_bytes + wal),
        ],
        connections: None,
    })
}

async fn ingest_postgres(
    bin: &Path,
    fleet: &Fleet,
    work: &Path,
    pg: &PgCluster,
    collectors: usize,
    creds: &[Credentials],
    plan: IngestPlan,
) -> Result<IngestFigures> {
    let db = format!("ingest_{collectors}");
    create_database(pg, &db).await?;
    let url = pg.url_for(&db);
    let mut nodes = Vec::new();
    for i in 1..=collectors {
        let id = format!("c{i}");
        nodes.push(Node::start(
            bin,
            &work.join(&db),
            &id,
            &fleet.ca,
            &pg_store_table(&url, &id, ""),
        )?);
    }
    let before = database_size(&url).await?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.quic).collect();
    let owners: Vec<(String, u32)> = nodes
        .iter()
        .filter_map(|n| n.pid().map(|p| (n.name.clone(), p)))
        .collect();
    let sampler = Sampler::start(&url, owners);
    let ingested = ingest(&addrs, creds, plan).await;
    let connections = sampler.finish();
    let (acked, secs) = ingested?;
    for n in &mut nodes {
        n.kill();
    }
    let (rows, partitions, whole): (i64, i64, i64) = with_pg(&url, |c| {
        c.batch_execute("VACUUM ANALYZE")?;
        let row = c.query_one(
            "SELECT (SELECT count(*) FROM results),
                    (SELECT COALESCE(SUM(pg_total_relation_size(inhrelid)), 0)::bigint
                     FROM pg_inherits WHERE inhparent = 'results'::regclass),
                    pg_database_size(current_database())",
            &[],
        )?;
        Ok((row.get(0), row.get(1), row.get(2)))
    })
    .await?;
    Ok(IngestFigures {
        rate: acked as f64 / secs,
        acked,
        rows: rows as u64,
        sizes: vec![
            (
                "results partitions + their indexes (pg_total_relation_size)".into(),
                partitions,
            ),
            ("whole database (pg_database_size)".into(), whole),
            (
                format!(
                    "whole database less its size before ingest ({:.1} MiB)",
                    before as f64 / 1048576.0
                ),
                whole - before,
            ),
        ],
        connections: Some(connections?),
    })
}

// --- Leader failover -------------------------------------------------------------------------

const TARGET: &str = "mx.lab.test";
/// (id, provider, account) of the failover fleet; `prod`'s 587 closes.
const FAILOVER_AGENTS: [(&str, &str, &str); 6] = [
    ("p1", "aws", "prod"),
    ("p2", "aws", "prod"),
    ("p3", "aws", "prod"),
    ("d1", "aws", "dev"),
    ("d2", "aws", "dev"),
    ("g1", "gcp", "proj"),
];

/// One simulated agent of the failover fleet: a round every second (587 and the 443 control),
/// reported to one collector and, when that one fails, to the next, resending what was not
/// acked (as the real agent's spool does).
struct AgentPlan {
    labels: Labels,
    creds: Credentials,
    addrs: Vec<SocketAddr>,
    first: usize,
    /// While set, this agent's 587 times out.
    closed: Option<Arc<AtomicBool>>,
    /// Set once a round with 587 timing out is acked.
    closed_acked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

struct Link {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    index: usize,
    session: Option<SimAgent>,
    pending: Vec<ProbeResult>,
}

impl Link {
    /// A few tries to have everything pending acked, each on the next collector after a failure.
    async fn deliver(&mut self, plan: &AgentPlan) {
        for _ in 0..3 {
            if self.session.is_none() {
                let addr = plan.addrs[self.index % plan.addrs.len()];
                let (endpoint, config) = (self.endpoint.clone(), self.config.clone());
                let labels = plan.labels.clone();
                let connected = tokio::time::timeout(Duration::from_secs(3), async move {
                    let mut agent = SimAgent::connect(&endpoint, addr, config).await?;
                    match agent.hello(labels).await? {
                        CollectorMessage::Welcome(w) => Ok((agent, w.acked_seq)),
                        other => bail!("refused: {other:?}"),
                    }
                })
                .await;
                match connected {
                    Ok(Ok((agent, acked))) => {
                        self.pending.retain(|r| r.seq > acked);
                        self.session = Some(agent);
                    }
                    _ => {
                        self.index += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
            if self.pending.is_empty() {
                return;
            }
            let Some(agent) = self.session.as_mut() else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(4), agent.report(&self.pending)).await {
                Ok(Ok(ack)) => {
                    let closed_acked = self
                        .pending
                        .iter()
                        .any(|r| r.seq <= ack.up_to_seq && r.outcome == Outcome::Timeout);
                    if closed_acked {
                        plan.closed_acked.store(true, Ordering::Relaxed);
                    }
                    self.pending.retain(|r| r.seq > ack.up_to_seq);
                    return;
                }
                _ => {
                    self.session = None;
                    self.index += 1;
                }
            }
        }
    }
}

async fn run_agent(plan: AgentPlan) -> Result<()> {
    let mut link = Link {
        endpoint: sim::client_endpoint(1 << 20)?,
        config: sim::client_config(Some(&plan.creds), &plan.creds.ca, sim::DEFAULT_ALPN)?,
        index: plan.first,
        session: None,
        pending: Vec::new(),
    };
    let mut seq = 0u64;
    // Bounded: the bench stops its fleets within minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !plan.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let closed = plan
            .closed
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed));
        let now = now_ms();
        for (port, fails) in [(587u16, closed), (443, false)] {
            seq += 1;
            let outcome = if fails { Outcome::Timeout } else { Outcome::Ok };
            link.pending
                .push(sim::result_of(seq, TARGET, port, outcome, now));
        }
        link.deliver(&plan).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(agent) = link.session {
        agent.finish().await;
    }
    Ok(())
}

struct FailoverFleet {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl FailoverFleet {
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FailoverFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn get_text(url: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

async fn leads(node: &Node) -> bool {
    let Some(text) = get_text(&node.url("/metrics")).await else {
        return false;
    };
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some("egresswatch_collector_leader"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        == Some(1.0)
}

async fn leader(nodes: &[Node]) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        if n.alive() && leads(n).await {
            return Some(i);
        }
    }
    None
}

fn is_prod_587_blocked(e: &Value) -> bool {
    e["kind"] == "policy_changed"
        && e["port"] == 587
        && e["account"] == "prod"
        && e["to"] == "blocked"
}

async fn api_has_prod_587_event(node: &Node) -> bool {
    let text = get_text(&node.url("/api/events?limit=1000"))
        .await
        .unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(&text)
        .is_ok_and(|events| events.iter().any(is_prod_587_blocked))
}

/// The scopes of prod's 587 events in the database (`account`, `agent`, ...), one per event.
async fn stored_prod_587_events(url: &str) -> Result<Vec<String>> {
    with_pg(url, |c| {
        let rows = c.query("SELECT json FROM events ORDER BY id", &[])?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).ok())
            .filter(is_prod_587_blocked)
            .map(|e| e["scope"].as_str().unwrap_or("?").to_string())
            .collect())
    })
    .await
}

/// Polls `check` every 100 ms up to `within`; the time it took to hold.
async fn time_until<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

struct FailoverFigures {
    takeover: Duration,
    event: Duration,
    /// The scopes of prod's 587 events stored, 3 s after the new leader's event.
    events_stored: Vec<String>,
    graceful_takeover: Duration,
    graceful_exit: Option<Duration>,
    connections: ConnectionSample,
}

async fn failover(
    bin: &Path,
    fleet: &Fleet,
    work: &Path,
    pg: &PgCluster,
    run: usize,
    creds: &[Credentials],
) -> Result<FailoverFigures> {
    let db = format!("failover_{run}");
    create_database(pg, &db).await?;
    let url = pg.url_for(&db);
    let dir = work.join(&db);
    let detector =
        "[detector]\nfalse_alarm_rate = 0.001\nsettle_secs = 5\nsilent_after_secs = 120\n";
    let mut nodes = Vec::new();
    for name in ["c1", "c2", "c3"] {
        nodes.push(Node::start(
            bin,
            &dir,
            name,
            &fleet.ca,
            &pg_store_table(&url, name, detector),
        )?);
    }
    time_until(Duration::from_secs(30), || async {
        leader(&nodes).await.is_some()
    })
    .await
    .context("no collector took the lead within 30 s")?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.quic).collect();
    let closed = Arc::new(AtomicBool::new(false));
    let closed_acked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, ((id, provider, account), creds)) in FAILOVER_AGENTS.iter().zip(creds).enumerate() {
        tasks.push(tokio::spawn(run_agent(AgentPlan {
            labels: Labels {
                provider: provider.to_string(),
                account: account.to_string(),
                region: "r1".into(),
                instance: id.to_string(),
            },
            creds: creds.clone(),
            addrs: addrs.clone(),
            first: i,
            closed: (*account == "prod").then(|| closed.clone()),
            closed_acked: closed_acked.clone(),
            stop: stop.clone(),
        })));
    }
    let agents = FailoverFleet { stop, tasks };
    for node in &nodes {
        time_until(Duration::from_secs(30), || async {
            let text = get_text(&node.url("/api/matrix")).await.unwrap_or_default();
            FAILOVER_AGENTS
                .iter()
                .all(|(id, _, _)| text.contains(&format!("\"{id}\"")))
        })
        .await
        .with_context(|| format!("{}: not every agent in its matrix within 30 s", node.name))?;
    }
    // A settled baseline, as the test of the same scenario has.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let owners: Vec<(String, u32)> = nodes
        .iter()
        .filter_map(|n| n.pid().map(|p| (n.name.clone(), p)))
        .collect();
    let connections = with_pg(&url, move |c| sample_connections(c, &owners)).await?;
    let old = leader(&nodes).await.context("no leader before the kill")?;
    // prod's 587 closes; the leader dies as soon as the first closed round is acked: one
    // timeout per series is not enough evidence to decide, so the event is the new leader's.
    closed.store(true, Ordering::Relaxed);
    time_until(Duration::from_secs(10), || async {
        closed_acked.load(Ordering::Relaxed)
    })
    .await
    .context("the first closed round was not acked within 10 s")?;
    let killed = Instant::now();
    nodes[old].kill();
    let before_kill = stored_prod_587_events(&url).await?;
    if !before_kill.is_empty() {
        bail!("the old leader had recorded prod's 587 event before it was killed");
    }
    let mut new = None;
    let mut event = None;
    let deadline = killed + Duration::from_secs(60);
    while (new.is_none() || event.is_none()) && Instant::now() < deadline {
        if new.is_none() {
            if let Some(i) = leader(&nodes).await {
                new = Some((i, killed.elapsed()));
            }
        }
        if let (Some((i, _)), None) = (new, event) {
            if api_has_prod_587_event(&nodes[i]).await {
                event = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (new, takeover) = new.context("no collector took the lead within 60 s of the kill")?;
    let event = event.with_context(|| {
        format!(
            "no event for prod's 587 at the new leader {} within 60 s; its log:\n{}",
            nodes[new].name,
            nodes[new].log_text()
        )
    })?;
    // Let a duplicate show itself before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events_stored = stored_prod_587_events(&url).await?;
    // A graceful stop of the new leader: the last collector should take the lead at once.
    let stopping = Instant::now();
    nodes[new].terminate()?;
    let graceful_takeover = time_until(Duration::from_secs(60), || async {
        for (i, n) in nodes.iter().enumerate() {
            if i != new && n.alive() && leads(n).await {
                return true;
            }
        }
        false
    })
    .await
    .context("no collector took the lead within 60 s of the SIGTERM")?;
    let exited = nodes[new].exited_within(Duration::from_secs(30));
    let graceful_exit = exited.then(|| stopping.elapsed());
    agents.stop().await;
    eprintln!(
        "failover {run}: {} killed, {} led after {:.2} s, event after {:.2} s; SIGTERM to {}: next leader after {:.2} s",
        nodes[old].name,
        nodes[new].name,
        takeover.as_secs_f64(),
        event.as_secs_f64(),
        nodes[new].name,
        graceful_takeover.as_secs_f64()
    );
    Ok(FailoverFigures {
        takeover,
        event,
        events_stored,
        graceful_takeover,
        graceful_exit,
        connections,
    })
}

fn median_max(values: &[Duration]) -> String {
    let mut secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let Some(max) = secs.last() else {
        return "no runs".into();
    };
    let n = secs.len();
    let median = if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    };
    let all: Vec<String> = secs.iter().map(|s| format!("{s:.2}")).collect();
    format!(
        "median {median:.2} s, max {max:.2} s (all: {})",
        all.join(", ")
    )
}

fn print_connections(setup: &str, sample: &ConnectionSample) {
    let by_app: Vec<String> = sample
        .by_application
        .iter()
        .map(|(app, n)| format!("{app:?} {n}"))
        .collect();
    println!(
        "| PostgreSQL sessions, {setup} | {} in all: {} |",
        sample.total,
        by_app.join(", ")
    );
    for (collector, apps) in &sample.by_collector {
        let apps: Vec<String> = apps.iter().map(|(app, n)| format!("{app:?} {n}")).collect();
        let total: usize = sample.by_collector[collector].values().sum();
        println!(
            "| &nbsp;&nbsp;of {collector} | {total}: {} |",
            apps.join(", ")
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: cluster_bench COLLECTOR_BINARY")?,
    );
    let plan = IngestPlan {
        agents: env("AGENTS", 100) as usize,
        batches: env("BATCHES", 40),
        per_batch: env("PER_BATCH", 50),
        window: env("WINDOW", 4),
    };
    let failovers = env("FAILOVERS", 5) as usize;
    let work = tempfile::Builder::new()
        .prefix("cluster-bench-")
        .tempdir()?;
    let fleet = Fleet::init(&bin, work.path())?;
    let pg = PgCluster::start().map_err(|e| anyhow!("starting PostgreSQL: {e}"))?;
    eprintln!(
        "issuing {} agent certificates",
        plan.agents + FAILOVER_AGENTS.len()
    );
    let creds: Vec<Credentials> = (0..plan.agents)
        .map(|i| fleet.issue(&format!("bench-{i:03}")))
        .collect::<Result<_>>()?;
    let failover_creds: Vec<Credentials> = FAILOVER_AGENTS
        .iter()
        .map(|(id, _, _)| fleet.issue(id))
        .collect::<Result<_>>()?;
    let results = plan.agents as u64 * plan.batches * plan.per_batch;
    let mut lines = Vec::new();
    let setups: [(&str, usize); 3] = [
        ("one collector, SQLite", 0),
        ("one collector, PostgreSQL", 1),
        ("two collectors, one PostgreSQL (agents split)", 2),
    ];
    for (setup, collectors) in setups {
        eprintln!("ingest: {setup}");
        let figures = if collectors == 0 {
            ingest_sqlite(&bin, &fleet, work.path(), &creds, plan).await?
        } else {
            ingest_postgres(&bin, &fleet, work.path(), &pg, collectors, &creds, plan).await?
        };
        lines.push((setup, figures));
    }
    let mut failed = Vec::new();
    let mut runs = Vec::new();
    for run in 1..=failovers {
        eprintln!("failover {run} of {failovers}");
        match failover(&bin, &fleet, work.path(), &pg, run, &failover_creds).await {
            Ok(f) => runs.push(f),
            Err(e) => {
                eprintln!("failover {run} failed: {e:#}");
                failed.push(format!("{run}: {e}"));
            }
        }
    }

    println!(
        "ingest: {} agents over QUIC, each {} batches of {} results with {} in flight ({results} results per setup)",
        plan.agents, plan.batches, plan.per_batch, plan.window
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    for (setup, f) in &lines {
        println!(
            "| ingest rate, {setup} | {:.0} results/s ({} acked, {} rows after SIGKILL) |",
            f.rate, f.acked, f.rows
        );
    }
    for (setup, f) in &lines {
        for (what, bytes) in &f.sizes {
            println!(
                "| bytes on disk per result, {setup}: {what} | {:.1} ({:.1} MiB / {} rows) |",
                *bytes as f64 / f.rows.max(1) as f64,
                *bytes as f64 / 1048576.0,
                f.rows
            );
        }
    }
    for (setup, f) in &lines {
        if let Some(c) = &f.connections {
            print_connections(
                &format!("ingest, {setup} (most seen of a sample every 500 ms)"),
                c,
            );
        }
    }
    if let Some(first) = runs.first() {
        print_connections(
            "failover, three collectors at 1 round/s before the kill (run 1, one sample)",
            &first.connections,
        );
    }
    let takeovers: Vec<Duration> = runs.iter().map(|r| r.takeover).collect();
    let events: Vec<Duration> = runs.iter().map(|r| r.event).collect();
    let graceful: Vec<Duration> = runs.iter().map(|r| r.graceful_takeover).collect();
    let exits: Vec<Duration> = runs.iter().filter_map(|r| r.graceful_exit).collect();
    let stored: Vec<String> = runs
        .iter()
        .map(|r| {
            let mut scopes: BTreeMap<&str, usize> = BTreeMap::new();
            for scope in &r.events_stored {
                *scopes.entry(scope.as_str()).or_default() += 1;
            }
            let parts: Vec<String> = scopes.iter().map(|(s, n)| format!("{n} {s}")).collect();
            parts.join(" + ")
        })
        .collect();
    println!(
        "| failover runs (3 collectors, 6 agents, 1 round/s; false_alarm_rate 0.001, settle_secs 5) | {} of {failovers} completed |",
        runs.len()
    );
    println!(
        "| SIGKILL of the leader -> another collector's leader gauge = 1 | {} |",
        median_max(&takeovers)
    );
    println!(
        "| SIGKILL of the leader -> prod's 587 event in the new leader's /api/events | {} |",
        median_max(&events)
    );
    println!(
        "| prod's 587 events stored per run, by scope (none before the kill) | {} |",
        stored.join(", ")
    );
    println!(
        "| SIGTERM of the leader -> another collector's leader gauge = 1 | {} |",
        median_max(&graceful)
    );
    println!(
        "| SIGTERM of the leader -> its process exited | {} |",
        median_max(&exits)
    );
    for f in &failed {
        println!("failover run {f}");
    }
    if !failed.is_empty() {
        bail!("{} of {failovers} failover runs failed", failed.len());
    }
    Ok(())
}
