//! Imported feeds: `[[feed.import]]` names a snapshot by HTTPS URL or file and the public keys
//! it trusts. [`FeedBook`] holds, per feed, the last snapshot accepted with its provenance (which
//! feed, which key, the snapshot's date) and the last refusal; a refused snapshot is never
//! shown. [`annotate`] adds to `/api/matrix` what the feeds observed per provider cell and where
//! that disagrees with what is documented or with this fleet; [`start`] is the thin tokio shell
//! that fetches on a schedule.

use super::sign::{self, Refusal, Verified};
use super::snapshot::{Snapshot, SnapshotCell};
use crate::clock::rfc3339;
use crate::metrics::{label, Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One `[[feed.import]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// How the page and the API name this feed.
    pub name: String,
    /// `https://…/snapshot.json`; its signature is the same URL with `.minisig` appended.
    pub url: Option<String>,
    /// A snapshot file instead of a URL; its signature is the file with `.minisig` appended.
    pub file: Option<PathBuf>,
    /// A CA certificate (PEM) the URL's server certificate is checked against besides the
    /// system's roots: a feed served under a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trusted minisign public keys (the `RW…` line of a `.pub` file).
    pub keys: Vec<String>,
    /// How often it is fetched, seconds.
    #[serde(default = "default_every_secs")]
    pub every_secs: u64,
    /// Largest snapshot accepted, bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_every_secs() -> u64 {
    3600
}

fn default_max_bytes() -> usize {
    4 << 20
}

impl ImportConfig {
    /// Where it comes from, as shown in provenance.
    pub fn source(&self) -> String {
        match (&self.url, &self.file) {
            (Some(url), _) => url.clone(),
            (None, Some(file)) => file.display().to_string(),
            (None, None) => String::new(),
        }
    }
}

/// What is known of one imported feed.
#[derive(Debug, Clone, Default)]
pub struct FeedState {
    pub accepted: Option<Verified>,
    /// When the accepted snapshot was taken in, Unix ms.
    pub accepted_at_ms: Option<i64>,
    /// The last refusal and when (cleared by nothing: it says what happened last time).
    pub refused: Option<(Refusal, i64)>,
    /// A fetch that failed before there was anything to judge (network, file missing).
    pub unreachable: Option<(String, i64)>,
}

/// The imports' counters in `/metrics`, registered by [`FeedCounters::register`].
#[derive(Debug, Clone, Default)]
pub struct FeedCounters {
    /// `egresswatch_feed_accepted_total{feed}`.
    pub accepted: Family<Labels, Counter>,
    /// `egresswatch_feed_refused_total{feed,kind}`.
    pub refused: Family<Labels, Counter>,
    /// `egresswatch_feed_unreachable_total{feed}`.
    pub unreachable: Family<Labels, Counter>,
    /// `egresswatch_feed_snapshot_timestamp_seconds{feed}`: the held snapshot's date.
    pub snapshot_time: Family<Labels, Gauge>,
}

impl FeedCounters {
    pub fn register(metrics: &Metrics) -> FeedCounters {
        FeedCounters {
            accepted: metrics.registered(
                "egresswatch_feed_accepted",
                "New imported feed snapshots accepted (the one held fetched again is not counted), by feed",
            ),
            refused: metrics.registered(
                "egresswatch_feed_refused",
                "Imported feed snapshots refused, by feed and reason (oversized, garbage, unknown_key, bad_signature, unknown_version, replayed)",
            ),
            unreachable: metrics.registered("egresswatch_feed_unreachable", "Feed fetches that brought nothing to judge, by feed"),
            snapshot_time: metrics.registered(
                "egresswatch_feed_snapshot_timestamp_seconds",
                "The date of the snapshot held from each imported feed (Unix seconds)",
            ),
        }
    }
}

/// Every imported feed, by name, shared between the fetch tasks and the HTTP layer. With a
/// directory, each accepted snapshot is kept there (`NAME.json` and `.minisig`) and read back at
/// start, so a restart shows it at once and still refuses an older one replayed.
#[derive(Debug, Default)]
pub struct FeedBook {
    feeds: Mutex<BTreeMap<String, (String, FeedState)>>,
    counters: FeedCounters,
    keep_in: Option<PathBuf>,
}

impl FeedBook {
    /// A book held in memory only and counted nowhere (what [`FeedBook::kept`] builds on).
    pub fn new(imports: &[ImportConfig]) -> Arc<FeedBook> {
        Arc::new(FeedBook::unshared(imports))
    }

    fn unshared(imports: &[ImportConfig]) -> FeedBook {
        let book = FeedBook::default();
        if let Ok(mut feeds) = book.feeds.lock() {
            for i in imports {
                feeds.insert(i.name.clone(), (i.source(), FeedState::default()));
            }
        }
        book
    }

    /// A book counting in `counters` that keeps what it accepts in `dir` and starts from what
    /// is kept there, verified again with each import's keys (a kept file that no longer
    /// verifies — a key taken out of `keys` — is dropped).
    pub fn kept(
        imports: &[ImportConfig],
        counters: FeedCounters,
        dir: PathBuf,
    ) -> Result<Arc<FeedBook>, crate::CollectorError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| crate::CollectorError::io(format!("creating {}", dir.display()), e))?;
        let mut book = FeedBook::unshared(imports);
        book.counters = counters;
        for import in imports {
            let path = dir.join(kept_name(&import.name));
            let (Ok(bytes), Ok(sig)) = (
                std::fs::read(&path),
                std::fs::read_to_string(signature_path(&path)),
            ) else {
                continue;
            };
            let trusted: Vec<_> = import
                .keys
                .iter()
                .filter_map(|k| sign::parse_public_key(k).ok())
                .collect();
            match sign::check(&bytes, &sig, &trusted, import.max_bytes, None) {
                Ok(v) => {
                    book.counters
                        .snapshot_time
                        .get_or_create(&label("feed", &import.name))
                        .set(v.snapshot.generated_at_ms / 1000);
                    if let Ok(mut feeds) = book.feeds.lock() {
                        let state = &mut feeds.entry(import.name.clone()).or_default().1;
                        state.accepted = Some(v);
                    }
                }
                Err(r) => {
                    tracing::warn!(feed = %import.name, "the kept snapshot {} no longer verifies ({r}); dropped", path.display());
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(signature_path(&path));
                }
            }
        }
        book.keep_in = Some(dir);
        Ok(Arc::new(book))
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, (String, FeedState)>) -> R) -> R {
        let mut guard = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Judges fetched bytes for feed `name` against what it holds; accepted, they replace it.
    pub fn offer(
        &self,
        name: &str,
        bytes: &[u8],
        signature: &str,
        trusted: &[minisign::PublicKey],
        max_bytes: usize,
        now_unix_ms: i64,
    ) -> Result<(), Refusal> {
        self.with(|feeds| {
            let (_, state) = feeds.entry(name.to_string()).or_default();
            let held = state
                .accepted
                .as_ref()
                .map(|v| (v.snapshot.generated_at_ms, v.snapshot.generated_at.clone()));
            let judged = sign::check(
                bytes,
                signature,
                trusted,
                max_bytes,
                held.as_ref().map(|(ms, at)| (*ms, at.as_str())),
            );
            state.unreachable = None;
            let feed = label("feed", name);
            match judged {
                Ok(v) => {
                    let newer = held
                        .as_ref()
                        .is_none_or(|(ms, _)| v.snapshot.generated_at_ms > *ms);
                    if newer {
                        self.counters.accepted.get_or_create(&feed).inc();
                        self.counters
                            .snapshot_time
                            .get_or_create(&feed)
                            .set(v.snapshot.generated_at_ms / 1000);
                        if let Some(dir) = &self.keep_in {
                            keep(&dir.join(kept_name(name)), bytes, signature);
                        }
                    }
                    state.accepted = Some(v);
                    state.accepted_at_ms = Some(now_unix_ms);
                    state.refused = None;
                    Ok(())
                }
                Err(r) => {
                    let mut labels = feed;
                    labels.extend(label("kind", r.kind()));
                    self.counters.refused.get_or_create(&labels).inc();
                    state.refused = Some((r.clone(), now_unix_ms));
                    Err(r)
                }
            }
        })
    }

    /// A fetch that brought nothing to judge.
    pub fn unreachable(&self, name: &str, why: String, now_unix_ms: i64) {
        self.counters
            .unreachable
            .get_or_create(&label("feed", name))
            .inc();
        self.with(|feeds| {
            feeds.entry(name.to_string()).or_default().1.unreachable = Some((why, now_unix_ms));
        })
    }

    /// The accepted snapshots with their provenance: (feed name, key id, snapshot).
    pub fn accepted(&self) -> Vec<(String, String, Snapshot)> {
        self.with(|feeds| {
            feeds
                .iter()
                .filter_map(|(name, (_, s))| {
                    s.accepted
                        .as_ref()
                        .map(|v| (name.clone(), v.key_id.clone(), v.snapshot.clone()))
                })
                .collect()
        })
    }

    /// `/api/matrix`'s `feeds`: each import's provenance and state.
    pub fn status_json(&self) -> Value {
        self.with(|feeds| {
            Value::Array(
                feeds
                    .iter()
                    .map(|(name, (source, s))| {
                        let mut o = Map::new();
                        o.insert("feed".into(), json!(name));
                        o.insert("source".into(), json!(source));
                        if let Some(v) = &s.accepted {
                            o.insert("publisher".into(), json!(v.snapshot.feed));
                            o.insert("key_id".into(), json!(v.key_id));
                            o.insert("snapshot_at".into(), json!(v.snapshot.generated_at));
                            o.insert("window".into(), json!(v.snapshot.window));
                            o.insert("k".into(), json!(v.snapshot.k));
                            o.insert("cells".into(), json!(v.snapshot.cells.len()));
                        }
                        o.insert(
                            "accepted_at".into(),
                            json!(s.accepted_at_ms.map(rfc3339)),
                        );
                        o.insert(
                            "refused".into(),
                            match &s.refused {
                                Some((r, at)) => json!({ "kind": r.kind(), "reason": r.to_string(), "at": rfc3339(*at) }),
                                None => Value::Null,
                            },
                        );
                        o.insert(
                            "unreachable".into(),
                            match &s.unreachable {
                                Some((why, at)) => json!({ "reason": why, "at": rfc3339(*at) }),
                                None => Value::Null,
                            },
                        );
                        Value::Object(o)
                    })
                    .collect(),
            )
        })
    }
}

/// The file a feed's accepted snapshot is kept in: its name, made safe for a path.
fn kept_name(feed: &str) -> String {
    let safe: String = feed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{:08x}.json", fnv(feed))
}

/// A short stable hash, so two names made the same by [`kept_name`] stay apart.
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn signature_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(sign::SIGNATURE_SUFFIX);
    PathBuf::from(p)
}

/// Writes the snapshot and its signature (each to a temporary file renamed over the old one);
/// a failure is logged: the snapshot is held in memory all the same.
fn keep(path: &std::path::Path, bytes: &[u8], signature: &str) {
    let write = |to: &std::path::Path, data: &[u8]| -> std::io::Result<()> {
        let tmp = to.with_extension("tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, to)
    };
    let sig_path = signature_path(path);
    if let Err(e) = write(&sig_path, signature.as_bytes()).and_then(|_| write(path, bytes)) {
        tracing::warn!("keeping the feed snapshot {}: {e}", path.display());
    }
}

/// What one feed observed of one provider × port (its cells over regions, destinations and the
/// view's families, summed).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub status: &'static str,
    pub ok: u64,
    pub failed: u64,
    /// The most distinct accounts of any one of the feed's cells summed here: a lower bound
    /// (the same accounts may be in several regions' and both families' cells).
    pub accounts: u32,
    /// The same for agents.
    pub agents: u32,
    pub regions: usize,
    /// Since when the current state was seen (its earliest `first_seen`).
    pub since: Option<String>,
    pub last_seen: Option<String>,
}

/// Sums a feed's cells for `provider` × `port` in `families` (None: both).
pub fn observed(
    snapshot: &Snapshot,
    provider: &str,
    port: u16,
    family: Option<&str>,
) -> Option<Observed> {
    let cells: Vec<&SnapshotCell> = snapshot
        .cells
        .iter()
        .filter(|c| c.provider == provider && c.port == port)
        .filter(|c| family.is_none_or(|f| c.family == f))
        .collect();
    if cells.is_empty() {
        return None;
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for c in &cells {
        for (name, n) in &c.outcomes {
            match egresswatch_wire::Outcome::ALL
                .iter()
                .find(|o| o.as_str() == name)
            {
                Some(o) if crate::history::outcome_status(*o) == "open" => ok += n,
                Some(o) if crate::history::outcome_status(*o) == "blocked" => failed += n,
                _ => {}
            }
        }
    }
    let status = crate::history::status_of(ok, failed);
    let spans: Vec<_> = cells.iter().filter_map(|c| c.states.get(status)).collect();
    let mut regions: Vec<&str> = cells.iter().map(|c| c.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    Some(Observed {
        status,
        ok,
        failed,
        accounts: cells.iter().map(|c| c.accounts).max().unwrap_or(0),
        agents: cells.iter().map(|c| c.agents).max().unwrap_or(0),
        regions: regions.len(),
        since: spans.iter().map(|s| s.first_seen.clone()).min(),
        last_seen: spans.iter().map(|s| s.last_seen.clone()).max(),
    })
}

fn opposed(a: &str, b: &str) -> bool {
    matches!((a, b), ("open", "blocked") | ("blocked", "open"))
}

/// Adds to a serialised `/api/matrix` view (additive only): per provider cell `elsewhere`
/// (each feed's observation with its provenance), `elsewhere_disagrees` and, when it does,
/// `elsewhere_note` in plain words; `imported_providers` for providers only the feeds saw; and
/// `feeds`, each import's state. A view with no imports configured is left as it was.
pub fn annotate(view: &mut Value, book: &FeedBook) {
    let accepted = book.accepted();
    let family = view
        .get("family")
        .and_then(Value::as_str)
        .filter(|f| *f != "all")
        .map(str::to_string);
    let ports: Vec<u16> = view
        .get("ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64().map(|p| p as u16))
                .collect()
        })
        .unwrap_or_default();
    let cell_for = |provider: &str,
                    port: u16,
                    ours: Option<&Map<String, Value>>|
     -> Option<Map<String, Value>> {
        let mut list = Vec::new();
        let mut notes = Vec::new();
        let documented = ours
            .and_then(|c| c.get("doc"))
            .and_then(|d| d.get("policy"))
            .and_then(Value::as_str);
        let here = ours.and_then(|c| c.get("status")).and_then(Value::as_str);
        for (name, key_id, snap) in &accepted {
            let Some(o) = observed(snap, provider, port, family.as_deref()) else {
                continue;
            };
            if let Some(doc) = documented.filter(|d| opposed(d, o.status)) {
                notes.push(format!(
                    "documented {doc}, observed {} by {} accounts of feed {name}{}",
                    o.status,
                    o.accounts,
                    o.since
                        .as_ref()
                        .map(|s| format!(" since {s}"))
                        .unwrap_or_default()
                ));
            }
            if let Some(h) = here.filter(|h| opposed(h, o.status)) {
                notes.push(format!(
                    "this fleet sees {h}, feed {name} observed {} by {} accounts",
                    o.status, o.accounts
                ));
            }
            list.push(json!({
                "feed": name,
                "key_id": key_id,
                "snapshot_at": snap.generated_at,
                "status": o.status,
                "ok": o.ok,
                "failed": o.failed,
                "accounts": o.accounts,
                "agents": o.agents,
                "regions": o.regions,
                "since": o.since,
                "last_seen": o.last_seen,
            }));
        }
        if list.is_empty() {
            return None;
        }
        let mut extra = Map::new();
        extra.insert("elsewhere".into(), Value::Array(list));
        extra.insert("elsewhere_disagrees".into(), json!(!notes.is_empty()));
        if !notes.is_empty() {
            extra.insert("elsewhere_note".into(), json!(notes.join("; ")));
        }
        Some(extra)
    };
    let mut seen = std::collections::BTreeSet::new();
    if let Some(rows) = view.get_mut("providers").and_then(Value::as_array_mut) {
        for row in rows {
            let Some(provider) = row
                .get("provider")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                continue;
            };
            seen.insert(provider.clone());
            let Some(cells) = row.get_mut("cells").and_then(Value::as_object_mut) else {
                continue;
            };
            for (port, cell) in cells.iter_mut() {
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                let Some(obj) = cell.as_object_mut() else {
                    continue;
                };
                if let Some(extra) = cell_for(&provider, port, Some(obj)) {
                    obj.extend(extra);
                }
            }
        }
    }
    let only_elsewhere: std::collections::BTreeSet<String> = accepted
        .iter()
        .flat_map(|(_, _, snap)| snap.cells.iter().map(|c| c.provider.clone()))
        .filter(|p| !seen.contains(p))
        .collect();
    let imported: Vec<Value> = only_elsewhere
        .into_iter()
        .map(|provider| {
            let doc = crate::providers::Policies::embedded();
            let mut cells = Map::new();
            for &port in &ports {
                let mut ours = Map::new();
                if let Some(d) = doc.doc(&provider, port) {
                    ours.insert("doc".into(), json!(d));
                }
                if let Some(extra) = cell_for(&provider, port, Some(&ours)) {
                    ours.extend(extra);
                    cells.insert(port.to_string(), Value::Object(ours));
                }
            }
            json!({ "provider": provider, "cells": cells })
        })
        .collect();
    if let Some(obj) = view.as_object_mut() {
        obj.insert("imported_providers".into(), Value::Array(imported));
        obj.insert("feeds".into(), book.status_json());
    }
}

/// Fetches one import's snapshot and signature: over HTTPS with rustls (a redirect is not
/// followed; the body is cut at `max_bytes + 1`), or from a file.
async fn fetch(
    client: &reqwest::Client,
    import: &ImportConfig,
) -> Result<(Vec<u8>, String), String> {
    let cap = import.max_bytes + 1;
    match (&import.url, &import.file) {
        (Some(url), _) => {
            let body = |url: String, cap: usize| async move {
                let mut resp = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("{url}: HTTP {}", resp.status()));
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() >= cap {
                        bytes.truncate(cap);
                        break;
                    }
                }
                Ok(bytes)
            };
            let snapshot = body(url.clone(), cap).await?;
            let sig = body(format!("{url}{}", sign::SIGNATURE_SUFFIX), 4097).await?;
            Ok((snapshot, String::from_utf8_lossy(&sig).into_owned()))
        }
        (None, Some(file)) => {
            use std::io::Read;
            let read = |path: PathBuf, cap: usize| -> Result<Vec<u8>, String> {
                let f =
                    std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut bytes = Vec::new();
                f.take(cap as u64)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(bytes)
            };
            let mut sig_path = file.clone().into_os_string();
            sig_path.push(sign::SIGNATURE_SUFFIX);
            let snapshot = read(file.clone(), cap)?;
            let sig = read(PathBuf::from(sig_path), 4097)?;
            Ok((snapshot, String::from_utf8_lossy(&sig).into_owned()))
        }
        (None, None) => Err("neither url nor file".into()),
    }
}

/// The HTTPS client imports fetch with: rustls, the system's roots plus `extra_roots` (PEM;
/// tests give theirs), no redirects, a 30 s bound per request.
pub fn client(extra_roots: &[Vec<u8>]) -> Result<reqwest::Client, crate::CollectorError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for pem in extra_roots {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| crate::CollectorError::Feed(format!("a feed CA: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| crate::CollectorError::Feed(format!("the feed HTTPS client: {e}")))
}

/// Fetches `import` now and offers it to the book; logs what happened.
pub async fn fetch_once(client: &reqwest::Client, import: &ImportConfig, book: &FeedBook) {
    let trusted: Vec<_> = import
        .keys
        .iter()
        .filter_map(|k| sign::parse_public_key(k).ok())
        .collect();
    let now = crate::clock::now_unix_ms();
    match fetch(client, import).await {
        Ok((bytes, sig)) => {
            match book.offer(&import.name, &bytes, &sig, &trusted, import.max_bytes, now) {
                Ok(()) => tracing::info!(feed = %import.name, "feed snapshot accepted"),
                Err(r) => tracing::warn!(feed = %import.name, "feed snapshot refused: {r}"),
            }
        }
        Err(why) => {
            tracing::warn!(feed = %import.name, "feed not fetched: {why}");
            book.unreachable(&import.name, why, now);
        }
    }
}

/// The client for one import: its own `ca_file`, if any, is trusted for its URL only.
pub fn client_for(import: &ImportConfig) -> Result<reqwest::Client, crate::CollectorError> {
    let mut roots = Vec::new();
    if let Some(path) = &import.ca_file {
        roots.push(std::fs::read(path).map_err(|e| {
            crate::CollectorError::io(
                format!(
                    "feed.import {:?}: reading ca_file {}",
                    import.name,
                    path.display()
                ),
                e,
            )
        })?);
    }
    client(&roots)
}

/// Fetches every import at once and then each on its own schedule, until `stop` resolves.
/// Each import's client is made first, so a `ca_file` that cannot be read stops the start.
pub fn start(
    imports: Vec<ImportConfig>,
    book: Arc<FeedBook>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, crate::CollectorError> {
    let mut clients = Vec::new();
    for import in imports {
        let client = client_for(&import)?;
        clients.push((import, client));
    }
    Ok(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (import, client) in clients {
            let book = book.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(import.every_secs));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    fetch_once(&client, &import, &book).await;
                }
            });
        }
        stop.await;
        tasks.abort_all();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::snapshot::{build, encode, BuildParams};

    fn signed(sk: &minisign::SecretKey, at_ms: i64) -> (Vec<u8>, String) {
        let snap = build(
            &[],
            &[],
            &BuildParams {
                feed: "pub".into(),
                k: 3,
                from_ms: 0,
                to_ms: at_ms,
            },
        );
        let bytes = encode(&snap);
        let sig = sign::sign(sk, &bytes, &snap).unwrap();
        (bytes, sig)
    }

    #[test]
    fn a_kept_snapshot_survives_a_restart_and_still_refuses_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let minisign::KeyPair { pk, sk } =
            minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let import = ImportConfig {
            name: "peer/one".into(),
            url: None,
            file: Some("/unused".into()),
            ca_file: None,
            keys: vec![pk.to_base64()],
            every_secs: 60,
            max_bytes: 1 << 20,
        };
        let metrics = Metrics::new();
        let book = FeedBook::kept(
            std::slice::from_ref(&import),
            FeedCounters::register(&metrics),
            dir.path().into(),
        )
        .unwrap();
        let (new_bytes, new_sig) = signed(&sk, 9_000_000);
        let (old_bytes, old_sig) = signed(&sk, 5_000_000);
        book.offer(
            "peer/one",
            &new_bytes,
            &new_sig,
            std::slice::from_ref(&pk),
            1 << 20,
            1,
        )
        .unwrap();
        assert_eq!(
            book.offer(
                "peer/one",
                &old_bytes,
                &old_sig,
                std::slice::from_ref(&pk),
                1 << 20,
                2
            )
            .unwrap_err()
            .kind(),
            "replayed"
        );
        let text = metrics.render_prometheus();
        assert!(
            text.contains("egresswatch_feed_accepted_total{feed=\"peer/one\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("egresswatch_feed_refused_total{feed=\"peer/one\",kind=\"replayed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("egresswatch_feed_snapshot_timestamp_seconds{feed=\"peer/one\"} 9000"),
            "{text}"
        );

        // A restart: the kept snapshot is held at once, and the old one is still a replay.
        let again = FeedBook::kept(
            std::slice::from_ref(&import),
            FeedCounters::default(),
            dir.path().into(),
        )
        .unwrap();
        assert_eq!(again.accepted()[0].2.generated_at_ms, 9_000_000);
        assert_eq!(
            again
                .offer(
                    "peer/one",
                    &old_bytes,
                    &old_sig,
                    std::slice::from_ref(&pk),
                    1 << 20,
                    3
                )
                .unwrap_err()
                .kind(),
            "replayed"
        );

        // Its key taken out of the config: the kept file no longer verifies and is dropped.
        let minisign::KeyPair { pk: other, .. } =
            minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let rekeyed = ImportConfig {
            keys: vec![other.to_base64()],
            ..import
        };
        let dropped =
            FeedBook::kept(&[rekeyed], FeedCounters::default(), dir.path().into()).unwrap();
        assert!(dropped.accepted().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_matrix_gains_elsewhere_fields_and_keeps_its_own() {
        use crate::feed::snapshot::{Snapshot, SnapshotCell, StateSpan, Window};
        let cell =
            |region: &str, family: &str, outcome: &str, n: u64, accounts: u32| SnapshotCell {
                provider: "hetzner".into(),
                region: region.into(),
                port: 25,
                family: family.into(),
                destination: "any".into(),
                status: "blocked".into(),
                outcomes: [(outcome.to_string(), n)].into_iter().collect(),
                states: [(
                    "blocked".to_string(),
                    StateSpan {
                        first_seen: "2026-11-01T00:00:00.000Z".into(),
                        last_seen: "2026-11-02T00:00:00.000Z".into(),
                    },
                )]
                .into_iter()
                .collect(),
                accounts,
                agents: accounts + 1,
            };
        let snapshot = Snapshot {
            format: "egresswatch-feed".into(),
            version: 1,
            feed: "pub".into(),
            generated_at: "2026-11-02T00:00:00.000Z".into(),
            generated_at_ms: 1,
            window: Window {
                from: "a".into(),
                to: "b".into(),
            },
            k: 3,
            cells: vec![
                cell("fsn1", "ipv4", "timeout", 10, 4),
                cell("nbg1", "ipv6", "timeout", 5, 3),
                cell("fsn1", "ipv4", "timeout", 1, 3),
            ],
        };
        let mut only = snapshot.clone();
        only.cells = vec![SnapshotCell {
            provider: "ovh".into(),
            ..cell("gra", "ipv4", "ok", 7, 3)
        }];
        let book = FeedBook::default();
        book.with(|f| {
            f.insert(
                "peer".into(),
                (
                    "src".into(),
                    FeedState {
                        accepted: Some(Verified {
                            snapshot,
                            key_id: "K1".into(),
                        }),
                        ..Default::default()
                    },
                ),
            );
            f.insert(
                "other".into(),
                (
                    "src2".into(),
                    FeedState {
                        accepted: Some(Verified {
                            snapshot: only,
                            key_id: "K2".into(),
                        }),
                        ..Default::default()
                    },
                ),
            );
        });
        let mut view = serde_json::json!({
            "ports": [25, 465], "family": "all",
            "providers": [{ "provider": "hetzner", "cells": {
                "25": { "status": "open", "ok": 2, "failed": 0, "doc": { "policy": "open" }, "doc_mismatch": false },
                "465": { "status": "open", "ok": 2, "failed": 0 }
            }}]
        });
        annotate(&mut view, &book);
        let c25 = &view["providers"][0]["cells"]["25"];
        assert_eq!(c25["status"], "open");
        assert_eq!(c25["doc_mismatch"], false);
        let e = &c25["elsewhere"][0];
        assert_eq!(
            (
                e["feed"].as_str(),
                e["status"].as_str(),
                e["failed"].as_u64(),
                e["accounts"].as_u64(),
                e["regions"].as_u64()
            ),
            (Some("peer"), Some("blocked"), Some(16), Some(4), Some(2))
        );
        assert_eq!(e["key_id"], "K1");
        assert_eq!(
            e["agents"], 5,
            "the most of one cell, not a sum over families"
        );
        assert_eq!(e["since"], "2026-11-01T00:00:00.000Z");
        assert_eq!(c25["elsewhere_disagrees"], true);
        let note = c25["elsewhere_note"].as_str().unwrap();
        assert!(
            note.contains(
                "documented open, observed blocked by 4 accounts of feed peer since 2026-11-01"
            ),
            "{note}"
        );
        assert!(note.contains("this fleet sees open"), "{note}");
        assert!(view["providers"][0]["cells"]["465"]
            .get("elsewhere")
            .is_none());
        assert_eq!(view["imported_providers"][0]["provider"], "ovh");
        assert_eq!(
            view["imported_providers"][0]["cells"]["25"]["elsewhere"][0]["status"],
            "open"
        );
        assert_eq!(view["feeds"].as_array().unwrap().len(), 2);
        // A one-family view sums that family only.
        let mut v4 = serde_json::json!({ "ports": [25], "family": "ipv6", "providers": [{ "provider": "hetzner", "cells": { "25": { "status": "open" } } }] });
        annotate(&mut v4, &book);
        assert_eq!(
            v4["providers"][0]["cells"]["25"]["elsewhere"][0]["failed"],
            5
        );
    }
}
