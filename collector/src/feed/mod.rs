//! The feed: signed snapshots of observed policy that collectors publish and import, so a
//! matrix can show what other fleets observed beside what is documented and what this fleet
//! observed (docs/feed.md).
//!
//! - [`snapshot`]: the public format and how it is built from stored results (privacy rule:
//!   aggregated, no names, at least `k` accounts per cell).
//! - [`sign`]: minisign-compatible keys, signing, and the acceptance rule for imports.
//! - [`import`]: the imported feeds held in memory, fetched on a schedule, and what they say
//!   about a cell of the matrix.
//! - [`publish`]: the latest signed snapshot this collector serves, when `[feed.publish]` is on.

pub mod import;
pub mod publish;
pub mod sign;
pub mod snapshot;

use crate::error::CollectorError;
use crate::store::Store;
use serde::Deserialize;
use std::path::PathBuf;

/// `[feed]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// This collector's feed name, written into its snapshots (what importers see).
    pub name: String,
    /// The secret key that signs exports (relative to `data_dir` unless absolute).
    pub key: PathBuf,
    /// A cell is published only when at least this many distinct accounts observed it.
    pub k: u32,
    /// How far back a snapshot looks, hours.
    pub window_hours: u64,
    pub publish: PublishConfig,
    /// Feeds of other collectors shown beside this fleet's observations.
    pub import: Vec<import::ImportConfig>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            name: "egresswatch".to_string(),
            key: PathBuf::from("feed/feed.key"),
            k: snapshot::DEFAULT_K,
            window_hours: 168,
            publish: PublishConfig::default(),
            import: Vec::new(),
        }
    }
}

/// `[feed.publish]`: serving the latest signed snapshot at `/feed/snapshot.json` (and
/// `.minisig`). Off by default; when on, the snapshot is public by design (no token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    pub enabled: bool,
    /// How often a new snapshot is made and signed, seconds.
    pub every_secs: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            enabled: false,
            every_secs: 3600,
        }
    }
}

pub const K_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
pub const WINDOW_HOURS_RANGE: std::ops::RangeInclusive<u64> = 1..=(24 * 400);
/// How often an import is fetched.
pub const EVERY_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=(7 * 24 * 3600);
/// How often a snapshot is published: each reads the window's state intervals from the store.
pub const PUBLISH_EVERY_SECS_RANGE: std::ops::RangeInclusive<u64> = 60..=(7 * 24 * 3600);
pub const MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);
/// Most state intervals one snapshot reads (a bound on its memory).
pub const MAX_SNAPSHOT_INTERVALS: usize = 5_000_000;
/// Most `[[feed.import]]` tables.
pub const MAX_IMPORTS: usize = 64;

impl FeedConfig {
    /// Refuses a `[feed]` section outside its documented ranges, naming the key.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |path: String, reason: String| CollectorError::Config { path, reason };
        let name_ok = |n: &str| !n.trim().is_empty() && n.len() <= 64;
        if !name_ok(&self.name) {
            return Err(bad("feed.name".into(), "must be 1 to 64 bytes".into()));
        }
        if !K_RANGE.contains(&self.k) {
            return Err(bad(
                "feed.k".into(),
                format!("{} is outside {K_RANGE:?}", self.k),
            ));
        }
        if !WINDOW_HOURS_RANGE.contains(&self.window_hours) {
            return Err(bad(
                "feed.window_hours".into(),
                format!("{} is outside {WINDOW_HOURS_RANGE:?}", self.window_hours),
            ));
        }
        if !EVERY_SECS_RANGE.contains(&self.publish.every_secs) {
            return Err(bad(
                "feed.publish.every_secs".into(),
                format!(
                    "{} is outside {EVERY_SECS_RANGE:?}",
                    self.publish.every_secs
                ),
            ));
        }
        if self.import.len() > MAX_IMPORTS {
            return Err(bad(
                "feed.import".into(),
                format!("at most {MAX_IMPORTS} feeds"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, imp) in self.import.iter().enumerate() {
            let at = |key: &str| format!("feed.import[{i}].{key}");
            if !name_ok(&imp.name) {
                return Err(bad(at("name"), "must be 1 to 64 bytes".into()));
            }
            if !names.insert(imp.name.as_str()) {
                return Err(bad(at("name"), format!("{:?} is named twice", imp.name)));
            }
            match (&imp.url, &imp.file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(at("url"), "give exactly one of url and file".into()))
                }
                (Some(url), None) => {
                    let parsed = reqwest::Url::parse(url)
                        .map_err(|e| bad(at("url"), format!("{url:?}: {e}")))?;
                    if parsed.scheme() != "https" {
                        return Err(bad(at("url"), format!("{url:?} is not https")));
                    }
                }
                (None, Some(_)) => {}
            }
            if imp.keys.is_empty() {
                return Err(bad(
                    at("keys"),
                    "name at least one trusted public key".into(),
                ));
            }
            for (j, key) in imp.keys.iter().enumerate() {
                sign::parse_public_key(key)
                    .map_err(|e| bad(format!("feed.import[{i}].keys[{j}]"), e.to_string()))?;
            }
            if !EVERY_SECS_RANGE.contains(&imp.every_secs) {
                return Err(bad(
                    at("every_secs"),
                    format!("{} is outside {EVERY_SECS_RANGE:?}", imp.every_secs),
                ));
            }
            if !MAX_BYTES_RANGE.contains(&imp.max_bytes) {
                return Err(bad(
                    at("max_bytes"),
                    format!("{} is outside {MAX_BYTES_RANGE:?}", imp.max_bytes),
                ));
            }
        }
        Ok(())
    }
}

/// Reads the store (agents and the state intervals of the window ending at `now_unix_ms`) and
/// builds the snapshot. Through the store's own read methods only.
pub fn snapshot_of(
    store: &dyn Store,
    config: &FeedConfig,
    now_unix_ms: i64,
) -> Result<snapshot::Snapshot, CollectorError> {
    let from_ms = now_unix_ms - (config.window_hours as i64) * 3_600_000;
    let agents: Vec<_> = store.agents()?.into_iter().map(|(a, _)| a).collect();
    let intervals = store.intervals(
        &crate::history::Selector::default(),
        from_ms,
        now_unix_ms,
        MAX_SNAPSHOT_INTERVALS,
    )?;
    Ok(snapshot::build(
        &agents,
        &intervals,
        &snapshot::BuildParams {
            feed: config.name.clone(),
            k: config.k,
            from_ms,
            to_ms: now_unix_ms,
        },
    ))
}

/// A snapshot's bytes and their minisign signature.
#[derive(Debug, Clone)]
pub struct Signed {
    pub bytes: Vec<u8>,
    pub signature: String,
    pub generated_at: String,
}

/// Builds and signs a snapshot with `sk`.
pub fn signed_snapshot(
    store: &dyn Store,
    config: &FeedConfig,
    sk: &minisign::SecretKey,
    now_unix_ms: i64,
) -> Result<Signed, CollectorError> {
    let snap = snapshot_of(store, config, now_unix_ms)?;
    let bytes = snapshot::encode(&snap);
    let signature = sign::sign(sk, &bytes, &snap)?;
    Ok(Signed {
        bytes,
        signature,
        generated_at: snap.generated_at,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const KEY: &str = "RWR69rMspJJD4f/JC874gFH7RjUKQa6uTHuSkp6SIXM2IPt0pP4cgRBC";

    fn refused(import: &str) -> String {
        let text = format!("[feed]\nk = 3\n[[feed.import]]\nname = \"peer\"\n{import}\n");
        Config::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn imports_are_checked_whole_naming_the_key() {
        let ok = format!("url = \"https://peer.example/feed/snapshot.json\"\nkeys = [\"{KEY}\"]");
        let text = format!("[[feed.import]]\nname = \"peer\"\n{ok}\n");
        let parsed = Config::parse(&text).unwrap();
        assert_eq!(parsed.feed.import[0].every_secs, 3600);
        assert_eq!(parsed.feed.import[0].max_bytes, 4 << 20);
        let plain = refused(&format!(
            "url = \"http://peer.example/s.json\"\nkeys = [\"{KEY}\"]"
        ));
        assert!(
            plain.contains("feed.import[0].url") && plain.contains("not https"),
            "{plain}"
        );
        let both = refused(&format!(
            "url = \"https://p.example/s\"\nfile = \"/s\"\nkeys = [\"{KEY}\"]"
        ));
        assert!(both.contains("exactly one of url and file"), "{both}");
        let no_keys = refused("file = \"/s\"\nkeys = []");
        assert!(no_keys.contains("feed.import[0].keys"), "{no_keys}");
        let bad_key = refused("file = \"/s\"\nkeys = [\"RWnot-a-key\"]");
        assert!(bad_key.contains("feed.import[0].keys[0]"), "{bad_key}");
        let big = refused(&format!("file = \"/s\"\nkeys = [\"{KEY}\"]\nmax_bytes = 1"));
        assert!(big.contains("feed.import[0].max_bytes"), "{big}");
        let k0 = Config::parse("[feed]\nk = 0\n").unwrap_err().to_string();
        assert!(k0.contains("feed.k"), "{k0}");
        let twice = format!(
            "[[feed.import]]\nname = \"p\"\nfile = \"/a\"\nkeys = [\"{KEY}\"]\n[[feed.import]]\nname = \"p\"\nfile = \"/b\"\nkeys = [\"{KEY}\"]\n"
        );
        assert!(Config::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("named twice"));
    }
}
