//! `egresswatch-agent run`: the daemon. Probes on a [`schedule`], writes every result to the
//! disk [`spool`] before sending it, and streams batches to the collector over the QUIC
//! [`uplink`], labelled with its [`identity`] and its [`clock`]'s quality. Configured by one TOML
//! file ([`config`]; a commented example is `agent/config.example.toml`).

pub mod clock;
pub mod config;
pub mod identity;
pub mod schedule;
pub mod spool;
pub mod uplink;

use crate::error::AgentError;
use crate::probe::{self, ProbeOptions};
use config::AgentConfig;
use egresswatch_wire::{Labels, ProbeResult, TargetSpec};
use spool::Spool;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{error, info, warn};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Path of the agent's TOML config.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// What the schedule, the uplink and the spool share.
pub struct Shared {
    pub labels: Labels,
    pub targets: Vec<TargetSpec>,
    spool: Arc<Mutex<Option<Spool>>>,
    spool_trouble: Mutex<String>,
    uplink_state: Mutex<String>,
    pub new_results: Notify,
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
        Shared {
            labels,
            targets,
            spool: Arc::new(Mutex::new(spool)),
            spool_trouble: Mutex::new(trouble),
            uplink_state: Mutex::new(String::new()),
            new_results: Notify::new(),
        }
    }

    /// The agent's own trouble, for the collector (hello `status`).
    pub fn status(&self) -> String {
        lock(&self.spool_trouble).clone()
    }

    /// The uplink's last trouble ("rejected by the collector: …", "disconnected: …"); empty
    /// while connected.
    pub fn uplink_state(&self) -> String {
        lock(&self.uplink_state).clone()
    }

    pub fn set_uplink_state(&self, state: String) {
        *lock(&self.uplink_state) = state;
    }

    /// Spools one result (numbering it) and wakes the uplink. A spool that cannot write is a
    /// clear error in the log and in the status sent to the collector; the agent keeps running.
    pub async fn record(&self, result: ProbeResult) {
        let spool = self.spool.clone();
        let written = tokio::task::spawn_blocking(move || match lock(&spool).as_mut() {
            Some(s) => s.append(result).map(Some),
            None => Ok(None),
        })
        .await;
        match written {
            Ok(Ok(Some(_))) => {
                let mut trouble = lock(&self.spool_trouble);
                if !trouble.is_empty() {
                    info!("spool writable again");
                    trouble.clear();
                }
                drop(trouble);
                self.new_results.notify_one();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                let text = format!("spool: {e}");
                let mut trouble = lock(&self.spool_trouble);
                if *trouble != text {
                    error!("{text}; results are not kept until it is fixed");
                    *trouble = text;
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
}

pub fn main(args: RunArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let labels = identity::resolve(
        &config.labels,
        &config.identity.dmi_dir,
        config.identity.metadata,
        &config.identity.metadata_url,
    )
    .await;
    info!(provider = %labels.provider, account = %labels.account, region = %labels.region, instance = %labels.instance, "identity");
    let roots = Arc::new(probe::tls::load_roots(config.probe.ca_file.as_deref())?);
    let mut options = ProbeOptions::new(config.probe.timeout, roots);
    for source in &config.probe.source {
        match source {
            std::net::IpAddr::V4(v4) => options.source_v4 = Some(*v4),
            std::net::IpAddr::V6(v6) => options.source_v6 = Some(*v6),
        }
    }
    options.interface = config.probe.interface.clone();
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
    let targets = config.effective_targets();
    if config.targets.is_empty() {
        info!("no targets configured: probing the built-in submission endpoints every 5 minutes");
    }
    let specs = targets
        .iter()
        .map(|t| TargetSpec {
            host: t.host.clone(),
            ports: t.ports.clone(),
            level: t.level,
            interval_s: t.interval.as_secs() as u32,
        })
        .collect();
    let shared = Arc::new(Shared::new(labels, specs, spool, trouble));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let uplink = tokio::spawn(uplink::run(
        config.collector.clone(),
        shared.clone(),
        stop_rx.clone(),
    ));
    let schedule = tokio::spawn(schedule::run(
        targets,
        options,
        config.probe.min_interval_per_destination,
        config.probe.concurrency,
        shared.clone(),
        stop_rx,
    ));
    shutdown_signal().await;
    info!("stopping: no new probes, flushing what is in flight");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), schedule).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), uplink).await;
    Ok(())
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
