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

/// An unusable spool (its directory read-only, gone, not creatable) is opened again first this
/// long after it failed, then at doubling waits up to [`SPOOL_RETRY_MAX`].
pub const SPOOL_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const SPOOL_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long to wait before opening an unusable spool again after `failures` failed attempts
/// (the first failure being the one that made it unusable).
pub fn spool_retry_wait(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    SPOOL_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(SPOOL_RETRY_MAX)
}

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

/// What a hello said of the spool: where it numbers next, whether no collector has welcomed that
/// numbering yet, and which opening of the spool that was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpoolSaid {
    pub next_seq: u64,
    pub new: bool,
    pub opening: u64,
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
    /// While there is no usable spool: failed attempts to open it, and when to try next.
    open_failures: u32,
    next_open_at: Option<Instant>,
}

/// What the schedule, the uplink and the spool share.
pub struct Shared {
    announcement: Mutex<Announcement>,
    /// Bumped when the announcement changes, so the uplink says hello again.
    announced: watch::Sender<u64>,
    spool: Arc<Mutex<Option<Spool>>>,
    /// Results not kept while there was no usable spool (and what a vanished one held), to be
    /// told with the first result the spool made again writes. Changed only while `spool` is
    /// locked, so a count is never taken by a reopening that raced the result it counts.
    untold: Arc<std::sync::atomic::AtomicU64>,
    /// Where the spool lives and its cap, to open it again while it is unusable; `None` when
    /// this agent does not retry (tests that run without a spool).
    spool_home: Mutex<Option<(PathBuf, u64)>>,
    spool_trouble: Mutex<SpoolTrouble>,
    /// Times a collector's welcome found this agent's spool started over below its high-water
    /// mark, so the numbering continued above it (logged, and in the stop message).
    renumberings: std::sync::atomic::AtomicU64,
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
            untold: Default::default(),
            spool_home: Mutex::new(None),
            spool_trouble: Mutex::new(SpoolTrouble {
                status: trouble,
                ..Default::default()
            }),
            renumberings: Default::default(),
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

    /// Opens the spool in `dir` again while it is unusable (at [`spool_retry_wait`]'s pace,
    /// from the next result on), instead of running without one for good.
    pub fn retry_spool_at(&self, dir: PathBuf, max_bytes: u64) {
        *lock(&self.spool_home) = Some((dir, max_bytes));
        let mut trouble = lock(&self.spool_trouble);
        if lock(&self.spool).is_none() {
            trouble.open_failures = trouble.open_failures.max(1);
            trouble.next_open_at = Some(Instant::now() + spool_retry_wait(trouble.open_failures));
        }
    }

    /// What the hello says of the spool ([`Spool::numbering`]); `None` without one.
    pub fn spool_numbering(&self) -> Option<SpoolSaid> {
        lock(&self.spool).as_ref().map(|s| {
            let (next_seq, new) = s.numbering();
            SpoolSaid {
                next_seq,
                new,
                opening: s.opening(),
            }
        })
    }

    /// Times the numbering continued above a collector's high-water mark.
    pub fn renumberings(&self) -> u64 {
        self.renumberings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The collector's welcome: it holds this agent's results up to `high_water`, and the hello
    /// said `said` of the spool. A spool that started over continues its numbering above the
    /// mark (logged once, counted). An error means the renumbering could not be made durable,
    /// or the spool was opened anew since the hello (which then said nothing true of it): the
    /// session must not go on, or its first ack could delete what was never sent.
    pub async fn continue_above(
        &self,
        said: Option<SpoolSaid>,
        high_water: u64,
    ) -> Result<(), String> {
        let spool = self.spool.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&spool);
            if guard.as_ref().map(Spool::opening) != said.map(|said| said.opening) {
                return Some(Err(AgentError::io(
                    "spool",
                    std::io::Error::other("opened anew while the hello was on its way"),
                )));
            }
            let said = said?;
            guard.as_mut().map(|s| {
                s.continue_above((said.next_seq, said.new), high_water)
                    .map(|moved| moved.map(|m| (m, s.ledger())))
            })
        })
        .await
        .map_err(|e| format!("spool task: {e}"))?;
        match done {
            None | Some(Ok(None)) => Ok(()),
            Some(Ok(Some((moved, ledger)))) => {
                self.renumberings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                {
                    // A result written since (already numbered above the mark) may have
                    // raised it further.
                    let mut spooled = lock(&self.spooled);
                    spooled.newest_seq = spooled.newest_seq.max(ledger.next_seq.saturating_sub(1));
                    if spooled.urgent_up_to > 0 {
                        spooled.urgent_up_to += moved.by;
                    }
                }
                warn!(
                    high_water,
                    renumbered = moved.results,
                    first_seq = moved.first_seq,
                    "the collector already holds results up to seq {high_water} for this agent's certificate, but this spool numbers below it (it started over: a rebuilt machine, a new spool.dir, a lost disk): numbering continues above it, nothing waiting is dropped"
                );
                Ok(())
            }
            Some(Err(e)) => Err(format!(
                "spool: cannot continue the numbering above the collector's seq {high_water}: {e}"
            )),
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
    /// most once a minute, and writing resumes by itself when there is room again. A spool that
    /// could not be opened, or whose directory vanished, is opened again at
    /// [`spool_retry_wait`]'s pace; what was not kept meanwhile is counted the same way, and the
    /// uplink says hello again so the reopened spool's numbering is welcomed. An `urgent` result
    /// (news) is sent at once; the rest may linger for company.
    pub async fn record(&self, result: ProbeResult, urgent: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let spool = self.spool.clone();
        let untold = self.untold.clone();
        let reopen = self.reopen_due();
        let written = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&spool);
            let mut reopened = None;
            if guard.is_none() {
                if let Some((dir, max_bytes)) = reopen {
                    reopened = Some(Spool::open(&dir, max_bytes).map(|mut s| {
                        let told = untold.swap(0, SeqCst);
                        s.note_not_kept(told);
                        *guard = Some(s);
                        told
                    }));
                }
            }
            let Some(s) = guard.as_mut() else {
                untold.fetch_add(1, SeqCst);
                return (reopened, Ok(None), None);
            };
            match s.append(result) {
                Ok(seq) => (reopened, Ok(Some(seq)), None),
                Err(e) if !s.dir().exists() => {
                    // The directory is gone: what waited in it went too. The spool is made
                    // again where it was (the retry), and the loss told from there.
                    let ledger = s.ledger();
                    *guard = None;
                    let lost = ledger.next_seq - 1 - ledger.acked_seq;
                    untold.fetch_add(1 + lost, SeqCst);
                    (reopened, Err(e), Some(lost))
                }
                Err(e) => (reopened, Err(e), None),
            }
        })
        .await;
        let (reopened, written, vanished) = match written {
            Ok(done) => done,
            Err(e) => {
                error!("spool task: {e}");
                return;
            }
        };
        match reopened {
            Some(Ok(told)) => self.spool_reopened(told),
            Some(Err(e)) => self.spool_open_failed(&e),
            None => {}
        }
        match written {
            Ok(Some(seq)) => {
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
            Ok(None) => {
                let mut trouble = lock(&self.spool_trouble);
                trouble.not_kept += 1;
                Self::log_trouble(
                    &mut trouble,
                    "no usable spool; results are not kept until it can be opened again (probing goes on; logged at most once a minute)",
                );
            }
            Err(e) => {
                let mut trouble = lock(&self.spool_trouble);
                trouble.not_kept += 1;
                trouble.status = format!("spool: {e}");
                if let Some(lost) = vanished {
                    // This result and what waited in the directory, told from the new spool.
                    trouble.not_kept += lost;
                    trouble.open_failures = 1;
                    trouble.next_open_at = Some(Instant::now());
                    error!(lost, "{e}: making the spool again (results not kept meanwhile are counted and told)");
                    trouble.logged_at = Some(Instant::now());
                    trouble.spell_logged = true;
                } else {
                    Self::log_trouble(
                        &mut trouble,
                        &format!("spool: {e}; results are not kept until there is room (probing goes on; logged at most once a minute)"),
                    );
                }
            }
        }
    }

    /// Logs the spool's trouble once, then at most once a minute.
    fn log_trouble(trouble: &mut SpoolTrouble, message: &str) {
        let due = trouble
            .logged_at
            .is_none_or(|at| at.elapsed() >= SPOOL_TROUBLE_LOG_EVERY);
        if due {
            error!(not_kept = trouble.not_kept, "{message}");
            trouble.logged_at = Some(Instant::now());
            trouble.spell_logged = true;
        }
    }

    /// Where and how to open the spool again, if there is none and the retry is due.
    fn reopen_due(&self) -> Option<(PathBuf, u64)> {
        let home = lock(&self.spool_home).clone()?;
        if lock(&self.spool).is_some() {
            return None;
        }
        let mut trouble = lock(&self.spool_trouble);
        let now = Instant::now();
        if trouble.next_open_at.is_some_and(|at| now < at) {
            return None;
        }
        // Not tried again by anyone else until this attempt's outcome sets the next time.
        trouble.next_open_at = Some(now + SPOOL_RETRY_MAX);
        Some(home)
    }

    /// The spool opened again; `told` of the results not kept meanwhile travel from it.
    fn spool_reopened(&self, told: u64) {
        let numbering = self.spool_numbering().map(|s| (s.next_seq, s.new));
        let mut trouble = lock(&self.spool_trouble);
        trouble.open_failures = 0;
        trouble.next_open_at = None;
        trouble.status.clear();
        trouble.spell_logged = false;
        info!(
            not_kept = trouble.not_kept,
            told,
            next_seq = numbering.map(|n| n.0).unwrap_or(0),
            "spool usable again; results not kept meanwhile are counted in the next batch"
        );
        drop(trouble);
        if let Some((next_seq, _)) = numbering {
            let mut spooled = lock(&self.spooled);
            spooled.newest_seq = next_seq.saturating_sub(1);
            spooled.urgent_up_to = spooled.urgent_up_to.min(spooled.newest_seq);
        }
        // A new hello carries the reopened spool's numbering, for the welcome to settle.
        self.announced.send_modify(|generation| *generation += 1);
    }

    fn spool_open_failed(&self, e: &AgentError) {
        let mut trouble = lock(&self.spool_trouble);
        trouble.open_failures += 1;
        let wait = spool_retry_wait(trouble.open_failures);
        trouble.next_open_at = Some(Instant::now() + wait);
        trouble.status = format!("spool unusable: {e}");
        Self::log_trouble(
            &mut trouble,
            &format!(
                "spool unusable: {e}; trying again in {} s (results are not kept meanwhile; logged at most once a minute)",
                wait.as_secs()
            ),
        );
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
        if let Some(home) = lock(&self.spool_home).as_mut() {
            home.1 = max_bytes;
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

/// The probes' settings from the config, once its sources and interface are found on this host
/// (as `check` finds them): a source address the host does not have would make every result
/// `unreachable`, false outcomes for the matrix and the detector.
fn probe_options(path: &Path, config: &AgentConfig) -> Result<ProbeOptions, AgentError> {
    crate::check::args::check_binding(
        &config.probe.source,
        config.probe.interface.as_deref(),
        crate::check::args::RUN_KEYS,
    )
    .map_err(|reason| AgentError::Config {
        path: path.display().to_string(),
        reason,
    })?;
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
    // Everything the config is checked against comes before anything is written to disk.
    let options = probe_options(&path, &config)?;
    let labels = resolve_labels(&config).await;
    let (spool, trouble) = match Spool::open(&config.spool.dir, config.spool.max_bytes) {
        Ok(s) => {
            let r = s.recovery;
            if r.corrupt > 0 || r.torn_bytes > 0 || r.missing > 0 {
                warn!(
                    corrupt = r.corrupt,
                    torn_bytes = r.torn_bytes,
                    missing = r.missing,
                    "spool recovered after a crash: skipped what could not be read; the results missing are told to the collector"
                );
            }
            info!(dir = %config.spool.dir.display(), unacked_from = s.ledger().acked_seq + 1, next_seq = s.ledger().next_seq, "spool open");
            (Some(s), String::new())
        }
        Err(e) => {
            error!(
                "spool unusable: {e}; trying again in {} s, then at most every {} s (results are not kept meanwhile)",
                SPOOL_RETRY_FIRST.as_secs(),
                SPOOL_RETRY_MAX.as_secs()
            );
            (None, format!("spool unusable: {e}"))
        }
    };
    if config.targets.is_empty() {
        info!("no targets configured: probing the built-in submission endpoints every 5 minutes");
    }
    let plan = plan_of(&config, options);
    let shared = Arc::new(Shared::new(labels, specs_of(&plan.targets), spool, trouble));
    shared.retry_spool_at(config.spool.dir.clone(), config.spool.max_bytes);
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
        renumbered = shared.renumberings(),
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
    let checked =
        AgentConfig::load(path).and_then(|new| probe_options(path, &new).map(|o| (new, o)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_spool_is_tried_again_at_doubling_waits_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| spool_retry_wait(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(spool_retry_wait(0), SPOOL_RETRY_FIRST);
        assert_eq!(spool_retry_wait(u32::MAX), SPOOL_RETRY_MAX);
    }

    #[tokio::test]
    async fn results_without_a_spool_are_counted_and_told_from_the_spool_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("spool");
        let shared = Shared::new(Labels::default(), Vec::new(), None, "spool unusable".into());
        shared.retry_spool_at(home.clone(), 1 << 20);
        // Not due yet: counted, not kept, nothing made.
        for _ in 0..3 {
            shared.record(ProbeResult::default(), false).await;
        }
        assert_eq!(shared.not_kept(), 3);
        assert!(!home.exists());
        assert_eq!(shared.spool_numbering(), None);
        // Due: the spool is made, and the three travel with its first result.
        lock(&shared.spool_trouble).next_open_at = Some(Instant::now());
        let announced = *shared.announcements().borrow();
        shared.record(ProbeResult::default(), false).await;
        assert_eq!(
            shared.spool_numbering().map(|s| (s.next_seq, s.new)),
            Some((2, true))
        );
        assert_eq!(shared.unacked(0, 10).await.1, 3);
        assert_eq!(shared.status(), "");
        assert!(
            *shared.announcements().borrow() > announced,
            "a new hello carries the new spool's numbering"
        );
    }

    #[tokio::test]
    async fn a_welcome_for_a_spool_opened_anew_since_the_hello_ends_the_session_unacked() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(&dir.path().join("a"), 1 << 20).unwrap();
        let shared = Shared::new(Labels::default(), Vec::new(), Some(first), String::new());
        shared.record(ProbeResult::default(), false).await;
        let said = shared.spool_numbering();
        // The spool is opened anew (its directory vanished, say) before the welcome comes.
        *lock(&shared.spool) = Some(Spool::open(&dir.path().join("b"), 1 << 20).unwrap());
        shared.record(ProbeResult::default(), false).await;
        assert!(shared.continue_above(said, 40).await.is_err());
        assert!(shared.continue_above(None, 40).await.is_err());
        assert_eq!(
            shared.unacked(0, 10).await.0.len(),
            1,
            "nothing was acked away"
        );
        // What the hello says of the spool now holds for its welcome.
        let said = shared.spool_numbering();
        assert_eq!(shared.continue_above(said, 40).await, Ok(()));
        assert_eq!(shared.renumberings(), 1);
        assert_eq!(shared.unacked(0, 10).await.0[0].seq, 41);
    }
}
