//! `egresswatch-agent run`: the daemon. Probes on a [`schedule`], writes every result to the
//! disk [`spool`] before sending it, and streams batches to the collector over the QUIC
//! [`uplink`], labelled with its [`identity`] and its [`clock`]'s quality. Configured by one TOML
//! file ([`config`]; a commented example is `agent/config.example.toml`).
//!
//! SIGHUP reloads that file: targets, probe settings, labels, the spool's cap and the log level
//! change live; a file that does not parse or validate is rejected with an error in the log and
//! the running config kept; settings that only a restart can change are named in the log and
//! kept. The spool is never reopened, so nothing unacked is lost and numbering goes on.

pub mod clock;
pub mod config;
pub mod evidence;
pub mod identity;
pub mod logging;
pub mod schedule;
pub mod spool;
pub mod uplink;

use crate::error::AgentError;
use crate::probe::{self, ProbeOptions};
use config::{AgentConfig, TargetConfig};
use egresswatch_wire::{Labels, ProbeRequest, ProbeResult, TargetSpec};
use logging::LogControl;
use schedule::Plan;
use spool::Spool;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{error, info, warn};

/// Probe requests waiting for the schedule; more are dropped (the collector never waits on one).
const PROBE_REQUESTS_QUEUED: usize = 64;

/// While results cannot be spooled, the error is logged at most this often.
const SPOOL_TROUBLE_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Path of the agent's TOML config.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// What the agent tells the collector in its hello: who it is and what it probes.
#[derive(Clone, PartialEq)]
struct Announcement {
    labels: Labels,
    targets: Vec<TargetSpec>,
    accepts_probe_requests: bool,
}

/// What the spool holds for the uplink: the newest sequence number written, and the newest
/// one that is news (sent at once rather than left to linger).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spooled {
    pub newest_seq: u64,
    pub urgent_up_to: u64,
}

/// Results the spool could not keep, and when that was last logged.
#[derive(Default)]
struct SpoolTrouble {
    /// For the collector (hello `status`); empty when the spool is fine.
    status: String,
    not_kept: u64,
    logged_at: Option<Instant>,
    /// This spell of trouble was logged, so its end is logged too (a disk that is just full
    /// enough to flap between the two would otherwise log both every few seconds).
    spell_logged: bool,
}

/// What the schedule, the uplink and the spool share.
pub struct Shared {
    announcement: Mutex<Announcement>,
    /// Bumped when the announcement changes, so the uplink says hello again.
    announced: watch::Sender<u64>,
    spool: Arc<Mutex<Option<Spool>>>,
    spool_trouble: Mutex<SpoolTrouble>,
    uplink_state: Mutex<String>,
    /// The collector the uplink is connected to (`entry (address)`), while it is.
    collector: Mutex<Option<String>>,
    pub new_results: Notify,
    spooled: Mutex<Spooled>,
    probe_requests: mpsc::Sender<ProbeRequest>,
    probe_requests_rx: Mutex<Option<mpsc::Receiver<ProbeRequest>>>,
    probe_requests_dropped: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        labels: Labels,
        targets: Vec<TargetSpec>,
        spool: Option<Spool>,
        trouble: String,
    ) -> Shared {
        let newest_seq = spool
            .as_ref()
            .map(|s| s.ledger().next_seq.saturating_sub(1))
            .unwrap_or(0);
        let (probe_requests, probe_requests_rx) = mpsc::channel(PROBE_REQUESTS_QUEUED);
        Shared {
            announcement: Mutex::new(Announcement {
                labels,
                targets,
                accepts_probe_requests: true,
            }),
            announced: watch::channel(0).0,
            spool: Arc::new(Mutex::new(spool)),
            spool_trouble: Mutex::new(SpoolTrouble {
                status: trouble,
                ..Default::default()
            }),
            uplink_state: Mutex::new(String::new()),
            collector: Mutex::new(None),
            new_results: Notify::new(),
            spooled: Mutex::new(Spooled {
                newest_seq,
                urgent_up_to: 0,
            }),
            probe_requests,
            probe_requests_rx: Mutex::new(Some(probe_requests_rx)),
            probe_requests_dropped: Default::default(),
        }
    }

    /// Whether the hello says this agent answers probe requests.
    pub fn accepts_probe_requests(&self) -> bool {
        lock(&self.announcement).accepts_probe_requests
    }

    /// Sets what the hello says about probe requests; a change says hello again.
    pub fn set_accepts_probe_requests(&self, accepts: bool) {
        let mut current = lock(&self.announcement);
        if current.accepts_probe_requests != accepts {
            current.accepts_probe_requests = accepts;
            drop(current);
            self.announced.send_modify(|generation| *generation += 1);
        }
    }

    /// Hands a probe request from the collector to the schedule; one that finds the queue full
    /// is dropped and counted.
    pub fn request_probe(&self, request: ProbeRequest) {
        if let Err(e) = self.probe_requests.try_send(request) {
            let dropped = 1 + self
                .probe_requests_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(dropped, "probe request not queued: {e}");
        }
    }

    /// The schedule's end of [`Shared::request_probe`] (taken once).
    pub fn take_probe_requests(&self) -> Option<mpsc::Receiver<ProbeRequest>> {
        lock(&self.probe_requests_rx).take()
    }

    /// What the spool holds for the uplink.
    pub fn spooled(&self) -> Spooled {
        *lock(&self.spooled)
    }

    pub fn labels(&self) -> Labels {
        lock(&self.announcement).labels.clone()
    }

    pub fn targets(&self) -> Vec<TargetSpec> {
        lock(&self.announcement).targets.clone()
    }

    /// Replaces labels and targets (a reload); a change makes the uplink say hello again.
    pub fn announce(&self, labels: Labels, targets: Vec<TargetSpec>) {
        let mut current = lock(&self.announcement);
        let new = Announcement {
            labels,
            targets,
            accepts_probe_requests: current.accepts_probe_requests,
        };
        if *current != new {
            *current = new;
            drop(current);
            self.announced.send_modify(|generation| *generation += 1);
        }
    }

    /// Changes when [`Shared::announce`] changed something.
    pub fn announcements(&self) -> watch::Receiver<u64> {
        self.announced.subscribe()
    }

    /// The agent's own trouble, for the collector (hello `status`).
    pub fn status(&self) -> String {
        lock(&self.spool_trouble).status.clone()
    }

    /// Results produced but not kept because the spool could not take them (since start; the
    /// stop message logs it).
    pub fn not_kept(&self) -> u64 {
        lock(&self.spool_trouble).not_kept
    }

    /// The uplink's last trouble ("rejected by the collector: …", "disconnected: …"); empty
    /// while connected.
    pub fn uplink_state(&self) -> String {
        lock(&self.uplink_state).clone()
    }

    pub fn set_uplink_state(&self, state: String) {
        *lock(&self.uplink_state) = state;
    }

    /// The collector the uplink is connected to, as `entry (address)` (or just the address when
    /// the entry is one); `None` while it is not connected.
    pub fn collector(&self) -> Option<String> {
        lock(&self.collector).clone()
    }

    pub fn set_collector(&self, collector: Option<String>) {
        *lock(&self.collector) = collector;
    }

    /// Spools one result (numbering it) and wakes the uplink. A spool that cannot write (a full
    /// disk, say) costs that result, never the agent: it is counted, the collector is told (the
    /// hello's status, and the count in the next batch), the error is logged once and then at
    /// most once a minute, and writing resumes by itself when there is room again. An `urgent`
    /// result (news) is sent at once; the rest may linger for company.
    pub async fn record(&self, result: ProbeResult, urgent: bool) {
        let spool = self.spool.clone();
        let written = tokio::task::spawn_blocking(move || match lock(&spool).as_mut() {
            Some(s) => s.append(result).map(Some),
            None => Ok(None),
        })
        .await;
        match written {
            Ok(Ok(Some(seq))) => {
                {
                    let mut spooled = lock(&self.spooled);
                    spooled.newest_seq = spooled.newest_seq.max(seq);
                    if urgent {
                        spooled.urgent_up_to = spooled.urgent_up_to.max(seq);
                    }
                }
                let mut trouble = lock(&self.spool_trouble);
                if !trouble.status.is_empty() {
                    if trouble.spell_logged {
                        info!(
                            not_kept = trouble.not_kept,
                            "spool writable again; results not kept meanwhile are counted in the next batch"
                        );
                    }
                    trouble.status.clear();
                    trouble.spell_logged = false;
                }
                drop(trouble);
                self.new_results.notify_one();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                let mut trouble = lock(&self.spool_trouble);
                trouble.not_kept += 1;
                trouble.status = format!("spool: {e}");
                let due = trouble
                    .logged_at
                    .is_none_or(|at| at.elapsed() >= SPOOL_TROUBLE_LOG_EVERY);
                if due {
                    error!(
                        not_kept = trouble.not_kept,
                        "spool: {e}; results are not kept until there is room (probing goes on; logged at most once a minute)"
                    );
                    trouble.logged_at = Some(Instant::now());
                    trouble.spell_logged = true;
                }
            }
            Err(e) => error!("spool task: {e}"),
        }
    }

    pub async fn unacked(&self, from_seq: u64, max: usize) -> (Vec<ProbeResult>, u64) {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            lock(&spool)
                .as_mut()
                .map(|s| s.unacked(from_seq, max))
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }

    pub async fn ack(&self, up_to_seq: u64) {
        let spool = self.spool.clone();
        let done = tokio::task::spawn_blocking(move || {
            lock(&spool).as_mut().map(|s| s.ack(up_to_seq)).transpose()
        })
        .await;
        if let Ok(Err(e)) = done {
            error!("spool: recording an ack: {e}");
        }
    }

    /// The spool's ledger (tests and the log).
    pub fn ledger(&self) -> Option<spool::Ledger> {
        lock(&self.spool).as_ref().map(Spool::ledger)
    }

    fn set_spool_max_bytes(&self, max_bytes: u64) {
        if let Some(s) = lock(&self.spool).as_mut() {
            s.set_max_bytes(max_bytes);
        }
    }
}

pub fn main(args: RunArgs) -> ExitCode {
    let Some(path) = args.config else {
        eprintln!(
            "egresswatch-agent run: --config PATH is required (see agent/config.example.toml)"
        );
        return ExitCode::from(2);
    };
    let config = match AgentConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let log = logging::init(config.log.level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresswatch-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(path, config, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            ExitCode::from(1)
        }
    }
}

fn probe_options(config: &AgentConfig) -> Result<ProbeOptions, AgentError> {
    let roots = Arc::new(probe::tls::load_roots(config.probe.ca_file.as_deref())?);
    let mut options = ProbeOptions::new(config.probe.timeout, roots);
    for source in &config.probe.source {
        match source {
            std::net::IpAddr::V4(v4) => options.source_v4 = Some(*v4),
            std::net::IpAddr::V6(v6) => options.source_v6 = Some(*v6),
        }
    }
    options.interface = config.probe.interface.clone();
    options.host_sessions = Arc::new(config.preset_sessions.clone());
    Ok(options)
}

fn plan_of(config: &AgentConfig, options: ProbeOptions) -> Plan {
    Plan {
        targets: config.effective_targets(),
        options,
        floor: config.probe.min_interval_per_destination,
        concurrency: config.probe.concurrency,
        evidence: config.evidence(),
    }
}

fn specs_of(targets: &[TargetConfig]) -> Vec<TargetSpec> {
    targets
        .iter()
        .map(|t| TargetSpec {
            host: t.host.clone(),
            ports: t.ports.clone(),
            level: t.level,
            interval_s: t.interval.as_secs() as u32,
        })
        .collect()
}

async fn resolve_labels(config: &AgentConfig) -> Labels {
    let labels = identity::resolve(
        &config.labels,
        &config.identity.dmi_dir,
        config.identity.metadata,
        &config.identity.metadata_url,
    )
    .await;
    info!(provider = %labels.provider, account = %labels.account, region = %labels.region, instance = %labels.instance, "identity");
    labels
}

/// Runs the agent until SIGINT/SIGTERM; SIGHUP reloads `path`.
pub async fn run(
    path: PathBuf,
    config: AgentConfig,
    mut log: LogControl,
) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    // First of all: SIGHUP's default action would end the agent.
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|e| AgentError::io("listening for SIGHUP", e))?;
    let labels = resolve_labels(&config).await;
    let options = probe_options(&config)?;
    let (spool, trouble) = match Spool::open(&config.spool.dir, config.spool.max_bytes) {
        Ok(s) => {
            let r = s.recovery;
            if r.corrupt > 0 || r.torn_bytes > 0 {
                warn!(
                    corrupt = r.corrupt,
                    torn_bytes = r.torn_bytes,
                    "spool recovered after a crash: skipped what could not be read"
                );
            }
            info!(dir = %config.spool.dir.display(), unacked_from = s.ledger().acked_seq + 1, next_seq = s.ledger().next_seq, "spool open");
            (Some(s), String::new())
        }
        Err(e) => {
            error!("spool unusable, results will not be kept: {e}");
            (None, format!("spool unusable: {e}"))
        }
    };
    if config.targets.is_empty() {
        info!("no targets configured: probing the built-in submission endpoints every 5 minutes");
    }
    let plan = plan_of(&config, options);
    let shared = Arc::new(Shared::new(labels, specs_of(&plan.targets), spool, trouble));
    shared.set_accepts_probe_requests(running_accepts(&config));
    let (plan_tx, plan_rx) = watch::channel(plan);
    let (stop_tx, stop_rx) = watch::channel(false);
    let uplink = tokio::spawn(uplink::run(
        config.collector.clone(),
        shared.clone(),
        stop_rx.clone(),
    ));
    let schedule = tokio::spawn(schedule::run(plan_rx, shared.clone(), stop_rx));
    let mut running = config;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hangup.recv() => {
                if let Some(applied) = reload(&path, &running, &shared, &plan_tx, &mut log).await {
                    running = applied;
                }
            }
        }
    }
    info!(
        not_kept = shared.not_kept(),
        "stopping: no new probes, flushing what is in flight"
    );
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), schedule).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), uplink).await;
    Ok(())
}

/// Reads `path` again and applies what can change live; returns the config now running, or
/// `None` (and an error in the log) when the file is rejected and nothing changed.
async fn reload(
    path: &Path,
    running: &AgentConfig,
    shared: &Shared,
    plan_tx: &watch::Sender<Plan>,
    log: &mut LogControl,
) -> Option<AgentConfig> {
    info!(config = %path.display(), "SIGHUP: reloading the config");
    let checked = AgentConfig::load(path).and_then(|new| probe_options(&new).map(|o| (new, o)));
    let (new, options) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            error!("config reload rejected, the running config stays: {e}");
            return None;
        }
    };
    for name in running.restart_only_changes(&new) {
        warn!("config reload: {name} changed, which only a restart applies; keeping the running value");
    }
    let applied = running.live_part_of(new);
    log.apply(applied.log.level.as_deref());
    shared.set_spool_max_bytes(applied.spool.max_bytes);
    let plan = plan_of(&applied, options);
    let labels = resolve_labels(&applied).await;
    shared.announce(labels, specs_of(&plan.targets));
    shared.set_accepts_probe_requests(running_accepts(&applied));
    let series: usize = plan.targets.iter().map(|t| t.ports.len() * 2).sum();
    plan_tx.send_replace(plan);
    info!(targets = applied.targets.len(), series, "config reloaded");
    Some(applied)
}

fn running_accepts(config: &AgentConfig) -> bool {
    config.probe.answer_probe_requests
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
