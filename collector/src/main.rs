//! `egresswatch-collector`: the command line — the fleet CA commands and `run`. The work lives
//! in the library; this file parses, wires the parts together and reports where things are.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use egresswatch_collector::cluster::{self, ClusterCounters};
use egresswatch_collector::events::now_unix_ms;
use egresswatch_collector::fleet::{Fleet, ResultObserver};
use egresswatch_collector::limits::LimitCounters;
use egresswatch_collector::matrix::StoreOutage;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::{alerts, ca, config::Config, http, ingest, ready, store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tracing::{error, info, warn};

/// At a graceful stop, the longest a leader waits for its alert deliveries under way to end
/// before it gives up the lead (a sink's own timeout and retries bound each of them too).
const DELIVERIES_FINISH_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "egresswatch-collector",
    version,
    about = "Collect egresswatch agents' reports; serve the policy matrix"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fleet's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Join tokens: a new agent enrolls with one (`egresswatch-agent enroll`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run the collector (QUIC ingest, store, matrix, alerts, HTTP).
    Run {
        /// TOML config; without it, embedded defaults (see docs/collector.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new fleet CA in DIR (refuses to overwrite one).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue AGENT_ID's certificate and key (OUT/AGENT_ID.crt and .key, 0600).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        agent_id: String,
        /// Where to write them; default DIR/agents.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the certificate is valid: a number and s, m, h or d (default 825d; at
        /// least 10s). Agents renew it over their session when a third of it is left.
        #[arg(long, value_name = "DURATION")]
        valid_for: Option<String>,
    },
    /// Revoke every certificate issued to AGENT_ID (DIR/crl.pem); a running collector refuses
    /// it within seconds and closes its live sessions.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        agent_id: String,
        /// A note kept in DIR/index.json (not sent anywhere).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the certificates issued by the CA in DIR, valid and revoked.
    List {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// `ca issue --valid-for`: the default agent validity, or the duration given (at least 10 s).
fn issue_validity(valid_for: Option<&str>) -> Result<time::Duration> {
    let Some(text) = valid_for else {
        return Ok(time::Duration::days(ca::AGENT_VALIDITY_DAYS));
    };
    let secs = ca::enrollment::parse_lifetime(text)
        .map_err(|e| anyhow::anyhow!(e.replace("--expires", "--valid-for")))?;
    if secs < ca::enrollment::MIN_VALIDITY_SECS {
        anyhow::bail!(
            "--valid-for {text:?}: at least {}s",
            ca::enrollment::MIN_VALIDITY_SECS
        );
    }
    Ok(time::Duration::seconds(secs))
}

/// The packaged collector's CA directory (its `data_dir` + `/ca`).
const PACKAGED_CA_DIR: &str = "/var/lib/egresswatch-collector/ca";

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a join token and print it (once: only its hash is kept, in DIR/tokens.json). It pins
    /// the fleet CA's fingerprint, so the agent trusts nothing else.
    Create {
        /// The fleet CA's directory (the collector's data_dir/ca).
        #[arg(long, default_value = PACKAGED_CA_DIR)]
        dir: PathBuf,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it may be used: a number and s, m, h or d (at most 365d).
        #[arg(long, default_value = "24h")]
        expires: String,
        /// A label given to each agent it enrolls: provider, account, region or instance
        /// (repeatable), e.g. --label provider=aws --label account=prod.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List the tokens: id, validity, uses, status, labels and the agents each enrolled.
    List {
        #[arg(long, default_value = PACKAGED_CA_DIR)]
        dir: PathBuf,
    },
    /// Revoke a token (by the id `token list` shows): it enrolls nobody any more. Agents it
    /// enrolled keep their certificates (`ca revoke` those).
    Revoke {
        #[arg(long, default_value = PACKAGED_CA_DIR)]
        dir: PathBuf,
        id: String,
    },
}

fn token_command(command: TokenCommand) -> Result<()> {
    use ca::enrollment;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match command {
        TokenCommand::Create {
            dir,
            uses,
            expires,
            labels,
        } => {
            let request = enrollment::TokenRequest {
                uses,
                valid_for_secs: enrollment::parse_lifetime(&expires).map_err(anyhow::Error::msg)?,
                labels: ca::tokens::parse_labels(&labels).map_err(anyhow::Error::msg)?,
            };
            let (token, record) = enrollment::create_token(&dir, &request, now)?;
            // The token alone on stdout, so that `$(egresswatch-collector token create)` is it.
            println!("{token}");
            eprintln!(
                "token {} : {} use(s), expires in {expires}; shown once, only its hash is kept. On a VM: egresswatch-agent enroll --collector HOST:PORT --token TOKEN",
                record.id, record.uses_allowed
            );
            Ok(())
        }
        TokenCommand::List { dir } => {
            print!("{}", enrollment::list_tokens(&dir, now)?);
            Ok(())
        }
        TokenCommand::Revoke { dir, id } => {
            let record = enrollment::revoke_token(&dir, &id, now)?;
            println!("revoked token {} ({} use(s) made)", record.id, record.uses);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let outcome = match cli.command {
        Command::Token { command } => token_command(command),
        Command::Ca {
            command: CaCommand::Init { dir },
        } => ca::init(&dir)
            .map(|path| {
                println!(
                    "fleet CA created: {} (give it to agents; ca.key stays here)",
                    path.display()
                )
            })
            .map_err(anyhow::Error::from),
        Command::Ca {
            command:
                CaCommand::Issue {
                    dir,
                    agent_id,
                    out,
                    valid_for,
                },
        } => issue_validity(valid_for.as_deref())
            .and_then(|validity| {
                ca::issue_to_files_valid_for(&dir, &agent_id, out.as_deref(), validity)
                    .map_err(anyhow::Error::from)
            })
            .map(|issued| {
                println!("certificate: {}", issued.cert.display());
                println!("key:         {}", issued.key.display());
            }),
        Command::Ca {
            command:
                CaCommand::Revoke {
                    dir,
                    agent_id,
                    reason,
                },
        } => ca::registry::revoke(&dir, &agent_id, &reason)
            .map(|done| {
                for record in &done.newly_revoked {
                    println!("revoked: {} (serial {})", record.agent_id, record.serial);
                }
                if done.already_revoked > 0 {
                    println!(
                        "{} earlier certificate(s) of {agent_id} were already revoked",
                        done.already_revoked
                    );
                }
                println!("revocation list: {}", done.crl.display());
            })
            .map_err(anyhow::Error::from),
        Command::Ca {
            command: CaCommand::List { dir },
        } => ca::listing::list(&dir, time::OffsetDateTime::now_utc().unix_timestamp())
            .map(|listing| print!("{listing}"))
            .map_err(anyhow::Error::from),
        Command::Run { config } => load_config(config.as_deref()).and_then(run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresswatch-collector: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Config::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // A data dir that cannot be written (a full disk) does not keep the page dark: the
    // collector serves what it has stored, read-only, and says why.
    let read_only = unwritable(&cfg.data_dir).map(|reason| StoreOutage {
        since: egresswatch_collector::events::rfc3339(now_unix_ms()),
        reason,
    });
    // Opened, read and finally closed outside the runtime: the PostgreSQL client blocks, and
    // blocking is only allowed off the runtime's threads. The last handle is this one, so the
    // connections are also dropped here, after every task is gone.
    let opened = open_store(&cfg, read_only.as_ref())?;
    let stored_silences = store::silences::SilenceStore::silences(opened.store().as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let served = runtime.block_on(serve(cfg, opened.clone(), stored_silences, read_only));
    drop(runtime);
    opened.close();
    served
}

/// Why `dir` cannot be written, if it cannot: a small file is written, synced and removed.
fn unwritable(dir: &Path) -> Option<String> {
    use std::io::Write;
    let probe = dir.join(".write-check");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written
        .err()
        .map(|e| format!("the data dir {} cannot be written: {e}", dir.display()))
}

async fn serve(
    cfg: Config,
    opened: OpenedStore,
    stored_silences: Vec<egresswatch_collector::silences::Silence>,
    mut read_only: Option<StoreOutage>,
) -> Result<()> {
    cfg.http.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let ca_dir = cfg.data_dir.join("ca");
    if !ca::exists(&ca_dir) {
        ca::init(&ca_dir)?;
        println!("made a new fleet CA in {}", ca_dir.display());
    }
    let authority = ca::Authority::load(&ca_dir)?;
    let store: Arc<dyn store::Store> = opened.store();

    let metrics = Arc::new(Metrics::new());
    let ingest_counters = ingest::IngestCounters::register(&metrics);
    let limits = LimitCounters::register(&metrics);
    let mut silences = cfg.silences(now_unix_ms())?;
    silences.extend(stored_silences);
    let alerts = alerts::Alerts::start(&cfg.alerts, alerts::AlertCounters::register(&metrics))?
        .with_silences(Arc::new(egresswatch_collector::silences::SilenceBook::new(
            silences,
        )))
        .with_links(alerts::Links {
            public_url: cfg.http.public_url.clone(),
        })
        .with_agents(store.clone());
    let fleet = Fleet::new(cfg.fleet(), store.clone(), alerts, metrics.clone());
    fleet.restore_from_store(now_unix_ms()).await?;
    let read_only_gauge: prometheus_client::metrics::gauge::Gauge = metrics.registered(
        "egresswatch_read_only",
        "1 while the collector serves read-only because its data dir cannot be written (the \
         page and /healthz say why)",
    );
    let cluster_counters = match &opened {
        OpenedStore::Postgres(_) => Some(ClusterCounters::register(&metrics)),
        OpenedStore::Sqlite(_) => None,
    };

    let reset_key = ingest::reset_key(&cfg.data_dir.join("quic-reset.key"))?;
    let ingest = ingest::Ingest::bind(&cfg.quic, &authority, reset_key, ingest_counters.clone())?;
    let http = http::bind(&cfg.http).await?;
    println!("data dir:  {}", cfg.data_dir.display());
    println!("fleet CA:  {} (agents trust it; issue agents with `egresswatch-collector ca issue --dir {} ID`)", ca_dir.join("ca.pem").display(), ca_dir.display());
    println!("database:  {}", opened.describe(&cfg));
    let (quic_addr, http_addr) = (ingest.local_addr()?, http.local_addr()?);
    println!("QUIC:      {quic_addr} (agents report here)");
    println!("HTTP:      http://{http_addr}/ (matrix page, /api/matrix, /metrics)");
    let written = ready::Ready {
        pid: std::process::id(),
        quic: quic_addr,
        http: http_addr,
    }
    .write(&cfg.data_dir);
    if let Err(e) = written {
        read_only.get_or_insert_with(|| StoreOutage {
            since: egresswatch_collector::events::rfc3339(now_unix_ms()),
            reason: format!("the data dir cannot be written: {e}"),
        });
    }
    if let Some(why) = read_only {
        eprintln!("egresswatch-collector: serving read-only: {}", why.reason);
        read_only_gauge.set(1);
        fleet.set_read_only(why);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let context = Arc::new(ingest::IngestContext::new(
        &cfg.quic,
        store.clone(),
        fleet.clone() as Arc<dyn ResultObserver>,
        ingest_counters,
        limits.clone(),
    ));
    if matches!(opened, OpenedStore::Sqlite(_)) {
        fleet.fanout().connect(context.sessions.clone());
    }
    // Several collectors on one database: follow the fleet's feed, and lead when the lock is
    // free. Shared mode is on before ingest takes its first result.
    let cluster = match (&opened, cluster_counters) {
        (OpenedStore::Postgres(pg), Some(counters)) => Some(cluster::start(
            fleet.clone(),
            pg.clone(),
            context.sessions.clone(),
            &cfg.cluster,
            cluster::Endpoints {
                quic: quic_addr.to_string(),
                http: http_addr.to_string(),
            },
            counters,
        )?),
        _ => None,
    };
    let ingest_task = tokio::spawn(ingest.serve(context, stopped(stop_rx.clone())));
    let http_task = tokio::spawn(http.serve(fleet.clone(), limits, stopped(stop_rx.clone())));
    let fleet_task = tokio::spawn(fleet.clone().run(stopped(stop_rx.clone())));
    let retention = tokio::spawn(store::retention::prune_loop(
        store.clone(),
        store::retention::RetentionPolicy::of(&cfg.store),
        stopped(stop_rx.clone()),
    ));

    shutdown_signal().await;
    // The alert deliveries under way are marked first, or the next start (or the next leader)
    // would send them again; then the lead goes, so another collector takes it while this one
    // drains its sessions, instead of after.
    info!("shutting down: recording the events decided, finishing the alert deliveries under way");
    if !fleet.events_recorded(DELIVERIES_FINISH_WITHIN).await {
        warn!("events decided before the stop were not all recorded within {DELIVERIES_FINISH_WITHIN:?}");
    }
    fleet.finish_deliveries(DELIVERIES_FINISH_WITHIN).await;
    if let Some(cluster) = cluster {
        info!("shutting down: giving up the lead");
        cluster.stop().await;
    }
    info!("shutting down: no new agents, draining sessions");
    let _ = stop_tx.send(true);
    let _ = ingest_task.await;
    match http_task.await {
        Ok(Err(e)) => error!("http: {e}"),
        Err(e) => error!("http task: {e}"),
        Ok(Ok(())) => {}
    }
    let _ = fleet_task.await;
    retention.abort();
    info!("stopped");
    Ok(())
}

/// The store the config names, opened (and for PostgreSQL, migrated).
#[derive(Clone)]
enum OpenedStore {
    Sqlite(Arc<store::sqlite::SqliteStore>),
    Postgres(Arc<store::postgres::PostgresStore>),
}

/// The database; a SQLite one read-only when the data dir cannot be written (`read_only`).
fn open_store(cfg: &Config, read_only: Option<&StoreOutage>) -> Result<OpenedStore> {
    Ok(match cfg.store.kind {
        store::StoreKind::Sqlite => {
            let path = cfg.data_dir.join(&cfg.store.path);
            let sqlite = match read_only {
                Some(why) if path.exists() => {
                    store::sqlite::SqliteStore::open_read_only(&path, &why.reason)?
                }
                _ => store::sqlite::SqliteStore::open(&path)?,
            };
            OpenedStore::Sqlite(Arc::new(sqlite))
        }
        store::StoreKind::Postgres => {
            OpenedStore::Postgres(Arc::new(store::postgres::PostgresStore::open(&cfg.store)?))
        }
    })
}

impl OpenedStore {
    fn store(&self) -> Arc<dyn store::Store> {
        match self {
            OpenedStore::Sqlite(s) => s.clone(),
            OpenedStore::Postgres(p) => p.clone(),
        }
    }

    fn describe(&self, cfg: &Config) -> String {
        match self {
            OpenedStore::Sqlite(_) => cfg.data_dir.join(&cfg.store.path).display().to_string(),
            OpenedStore::Postgres(_) => format!(
                "PostgreSQL {} (shared: this collector is {:?})",
                cfg.store.url.as_deref().unwrap_or(""),
                cfg.cluster.id()
            ),
        }
    }

    /// Finishes pending writes (graceful shutdown).
    fn close(&self) {
        match self {
            OpenedStore::Sqlite(s) => s.close(),
            OpenedStore::Postgres(p) => p.close(),
        }
    }
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
