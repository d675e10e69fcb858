//! Revocation while the collector runs: `ca revoke` rewrites the CA directory's `crl.pem`; this
//! watcher notices (the file's mtime, size and inode, polled every second), re-reads it, swaps
//! the QUIC server's TLS configuration so that new handshakes check the new list, and publishes
//! the revoked serials to live sessions, which close themselves when their certificate is listed.
//! A list that does not load is logged and the previous one stays in force.

use super::tls::TlsMaterial;
use crate::ca::registry::{self, RevocationList};
use crate::error::CollectorError;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the CRL file is looked at: one `stat` a second.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Serials revoked right now (normalised, see `registry::normalise_serial`).
pub type RevokedSerials = Arc<HashSet<Vec<u8>>>;

/// What identifies one version of the file; the CA commands replace it by rename, so the inode
/// changes even when two revocations land within the file system's mtime granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The CA directory's revocation list as the ingest sees it.
pub struct CrlWatch {
    ca_dir: PathBuf,
    path: PathBuf,
    last: Option<Stamp>,
    current: Option<RevocationList>,
}

impl CrlWatch {
    /// Loads the list at start; a list that exists but does not load is an error (the collector
    /// must not start accepting agents it was told to refuse).
    pub fn open(ca_dir: &Path) -> Result<CrlWatch, CollectorError> {
        let path = ca_dir.join(registry::CRL_FILE);
        let last = stamp(&path);
        let current = registry::load_crl(ca_dir)?;
        if let Some(list) = &current {
            info!(revoked = list.revoked.len(), "revocation list loaded");
        }
        Ok(CrlWatch {
            ca_dir: ca_dir.to_path_buf(),
            path,
            last,
            current,
        })
    }

    pub fn current(&self) -> Option<&RevocationList> {
        self.current.as_ref()
    }

    pub fn revoked(&self) -> RevokedSerials {
        Arc::new(
            self.current
                .as_ref()
                .map(|l| l.revoked.clone())
                .unwrap_or_default(),
        )
    }

    /// Re-reads the list if the file changed; `Some` with the new list when it loaded.
    fn poll(&mut self) -> Option<RevocationList> {
        let now = stamp(&self.path);
        if now == self.last {
            return None;
        }
        self.last = now;
        match registry::load_crl(&self.ca_dir) {
            Ok(Some(list)) => Some(list),
            Ok(None) => {
                warn!(path = %self.path.display(), "the revocation list was removed; the last one loaded stays in force");
                None
            }
            Err(e) => {
                warn!("revocation list not reloaded, the last one loaded stays in force: {e}");
                None
            }
        }
    }

    /// Polls until `stop` resolves: on each change, swaps the endpoint's TLS configuration and
    /// tells live sessions.
    pub async fn run(
        mut self,
        endpoint: quinn::Endpoint,
        tls: Arc<TlsMaterial>,
        revoked: watch::Sender<RevokedSerials>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let Some(list) = self.poll() else { continue };
            match tls.server_config(Some(&list.der)) {
                Ok(config) => endpoint.set_server_config(Some(config)),
                Err(e) => {
                    warn!("revocation list not applied to new handshakes: {e}");
                    continue;
                }
            }
            info!(revoked = list.revoked.len(), "revocation list reloaded");
            revoked.send_replace(Arc::new(list.revoked.clone()));
            self.current = Some(list);
        }
    }
}
