//! `egresswatch-collector`: the command line — the fleet CA commands and `run`. The work lives
//! in the library; this file parses, wires the parts together and reports where things are.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use egresswatch_collector::clock::now_unix_ms;
use egresswatch_collector::cluster::{self, ClusterCounters};
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
    /// Signed snapshots of observed policy (docs/feed.md).
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
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

#[derive(Subcommand)]
enum FeedCommand {
    /// The key that signs this collector's snapshots.
    Key {
        #[command(subcommand)]
        command: FeedKeyCommand,
    },
    /// Write a signed snapshot of the store's observations: OUT/snapshot.json and
    /// OUT/snapshot.json.minisig.
    Export {
        /// The collector's TOML config (its store, `[feed]` name, key, k and window).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a snapshot against a public key, as an import would (minisign -V checks the same
    /// signature).
    Verify {
        /// The public key: a minisign .pub file, or its `RW…` line.
        #[arg(long)]
        pubkey: String,
        #[arg(long)]
        snapshot: PathBuf,
        /// Default: the snapshot's path with `.minisig` appended.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Largest snapshot accepted, bytes.
        #[arg(long, default_value_t = 4 << 20)]
        max_bytes: usize,
    },
}

#[derive(Subcommand)]
enum FeedKeyCommand {
    /// Create DIR/feed.key (secret, 0600) and DIR/feed.pub; refuses to overwrite them.
    Create {
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
        Command::Feed { command } => feed_command(command),
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

fn feed_command(command: FeedCommand) -> Result<()> {
    use egresswatch_collector::feed::{self, sign};
    match command {
        FeedCommand::Key {
            command: FeedKeyCommand::Create { dir },
        } => {
            let (sk, pk, line) = sign::create_key(&dir)?;
            println!(
                "secret key: {} (keep it here; it signs snapshots)",
                sk.display()
            );
            println!("public key: {} (give it to importers)", pk.display());
            println!("public key line for [[feed.import]] keys: {line}");
            Ok(())
        }
        FeedCommand::Export { config, out } => {
            let cfg = load_config(config.as_deref())?;
            let sk = sign::load_secret_key(&feed_key_path(&cfg))?;
            let db = cfg.data_dir.join(&cfg.store.path);
            if cfg.store.kind == store::StoreKind::Sqlite && !db.exists() {
                anyhow::bail!(
                    "no database at {}: nothing observed to export",
                    db.display()
                );
            }
            let opened = open_store(&cfg, None)?;
            let signed =
                feed::signed_snapshot(opened.store.as_ref(), &cfg.feed, &sk, now_unix_ms())?;
            opened.store.close();
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (snap_path, sig_path) = (
                out.join("snapshot.json"),
                out.join(format!("snapshot.json{}", sign::SIGNATURE_SUFFIX)),
            );
            std::fs::write(&snap_path, &signed.bytes)
                .with_context(|| format!("writing {}", snap_path.display()))?;
            std::fs::write(&sig_path, &signed.signature)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            println!(
                "snapshot:  {} ({} bytes, {})",
                snap_path.display(),
                signed.bytes.len(),
                signed.generated_at
            );
            println!("signature: {}", sig_path.display());
            Ok(())
        }
        FeedCommand::Verify {
            pubkey,
            snapshot,
            signature,
            max_bytes,
        } => {
            let key_text = match std::fs::read_to_string(&pubkey) {
                Ok(text) => text,
                Err(_) => pubkey.clone(),
            };
            let pk = sign::parse_public_key(&key_text)?;
            let sig_path = signature.unwrap_or_else(|| {
                let mut p = snapshot.clone().into_os_string();
                p.push(sign::SIGNATURE_SUFFIX);
                PathBuf::from(p)
            });
            let bytes = std::fs::read(&snapshot)
                .with_context(|| format!("reading {}", snapshot.display()))?;
            let sig = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading {}", sig_path.display()))?;
            let verified = sign::check(&bytes, &sig, &[pk], max_bytes, None)
                .map_err(|r| anyhow::anyhow!("refused: {r}"))?;
            println!(
                "verified: feed {:?}, snapshot of {}, key {}, {} cells (k = {})",
                verified.snapshot.feed,
                verified.snapshot.generated_at,
                verified.key_id,
                verified.snapshot.cells.len(),
                verified.snapshot.k
            );
            Ok(())
        }
    }
}

/// `[feed] key`, under the data dir unless absolute.
fn feed_key_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join(&cfg.feed.key)
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
    // The feed's files are read before anything is written: a publish key or an import's CA
    // that cannot be read refuses the start like a bad key in the config.
    if cfg.feed.publish.enabled {
        egresswatch_collector::feed::sign::load_secret_key(&feed_key_path(&cfg))
            .context("[feed.publish] is on, and its key cannot be read")?;
    }
    for import in &cfg.feed.import {
        egresswatch_collector::feed::import::client_for(import)?;
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // A data dir that cannot be written (a full disk) does not keep the page dark: the
    // collector serves what it has stored, read-only, and says why.
    let read_only = unwritable(&cfg.data_dir).map(|reason| StoreOutage {
        since: egresswatch_collector::clock::rfc3339(now_unix_ms()),
        reason,
    });
    // Opened, read and finally closed outside the runtime: the PostgreSQL client blocks, and
    // blocking is only allowed off the runtime's threads. The last handle is this one, so the
    // connections are also dropped here, after every task is gone.
    let opened = open_store(&cfg, read_only.as_ref())?;
    let stored_silences = store::silences::SilenceStore::silences(opened.store.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let served = runtime.block_on(serve(cfg, opened.clone(), stored_silences, read_only));
    drop(runtime);
    opened.store.close();
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
    let shared = opened.store.clone();
    let store: Arc<dyn store::Store> = shared.clone();

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
        });
    let fleet = Fleet::new(cfg.fleet(), shared.clone(), alerts, metrics.clone());
    fleet.restore_from_store(now_unix_ms()).await?;
    let read_only_gauge: prometheus_client::metrics::gauge::Gauge = metrics.registered(
        "egresswatch_read_only",
        "1 while the collector serves read-only because its data dir cannot be written (the \
         page and /healthz say why)",
    );
    let cluster_counters = ClusterCounters::register(&metrics);

    let reset_key = ingest::reset_key(&cfg.data_dir.join("quic-reset.key"))?;
    let ingest = ingest::Ingest::bind(&cfg.quic, &authority, reset_key, ingest_counters.clone())?;
    let http = http::bind(&cfg.http).await?;
    println!("data dir:  {}", cfg.data_dir.display());
    println!("fleet CA:  {} (agents trust it; issue agents with `egresswatch-collector ca issue --dir {} ID`)", ca_dir.join("ca.pem").display(), ca_dir.display());
    println!("database:  {}", opened.described);
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
            since: egresswatch_collector::clock::rfc3339(now_unix_ms()),
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
    // Whatever the store, the hub follows its feed, and leads while it holds the lease: at once
    // and for good on a store of its own (a cluster of one), when the lock is free on a shared
    // one. Following starts before ingest takes its first result.
    let cluster = cluster::start(
        fleet.clone(),
        shared,
        context.sessions.clone(),
        &cfg.cluster,
        cluster::Endpoints {
            quic: quic_addr.to_string(),
            http: http_addr.to_string(),
        },
        cluster_counters,
    )?;
    let ingest_task = tokio::spawn(ingest.serve(context, stopped(stop_rx.clone())));
    let feed_share = http::FeedShare {
        imports: match cfg.feed.import.is_empty() {
            true => None,
            false => Some(egresswatch_collector::feed::import::FeedBook::kept(
                &cfg.feed.import,
                egresswatch_collector::feed::import::FeedCounters::register(&metrics),
                cfg.data_dir.join("feeds"),
            )?),
        },
        published: cfg
            .feed
            .publish
            .enabled
            .then(egresswatch_collector::feed::publish::Published::new),
    };
    let http_task = tokio::spawn(http.with_feed(feed_share.clone()).serve(
        fleet.clone(),
        limits,
        stopped(stop_rx.clone()),
    ));
    let fleet_task = tokio::spawn(fleet.clone().run(stopped(stop_rx.clone())));
    let feed_task = start_feed(&cfg, store.clone(), &feed_share, stop_rx.clone())?;
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
    info!("shutting down: giving up the lead");
    cluster.stop().await;
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
    for task in feed_task {
        let _ = task.await;
    }
    info!("stopped");
    Ok(())
}

/// Spawns the feed's import and publish loops, when configured. The publish key is read
/// before anything starts, so a missing key stops the start with its path.
fn start_feed(
    cfg: &Config,
    store: Arc<dyn store::Store>,
    share: &http::FeedShare,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    use egresswatch_collector::feed::{import, publish, sign};
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = Vec::new();
    if let Some(published) = &share.published {
        let sk = sign::load_secret_key(&feed_key_path(cfg))?;
        tasks.push(tokio::spawn(publish::run(
            store,
            cfg.feed.clone(),
            sk,
            published.clone(),
            stopped(stop.clone()),
        )));
    }
    if let Some(book) = &share.imports {
        tasks.push(import::start(
            cfg.feed.import.clone(),
            book.clone(),
            stopped(stop),
        )?);
    }
    Ok(tasks)
}

/// The store the config names, opened (and for PostgreSQL, migrated): a file this collector has
/// alone or a database it shares — the pipeline is the same (see the `cluster` module).
#[derive(Clone)]
struct OpenedStore {
    store: Arc<dyn store::shared::SharedStore>,
    described: String,
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
            OpenedStore {
                store: Arc::new(sqlite),
                described: path.display().to_string(),
            }
        }
        store::StoreKind::Postgres => OpenedStore {
            store: Arc::new(store::postgres::PostgresStore::open(&cfg.store)?),
            described: format!(
                "PostgreSQL {} (shared: this collector is {:?})",
                cfg.store.url.as_deref().unwrap_or(""),
                cfg.cluster.id()
            ),
        },
    })
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
