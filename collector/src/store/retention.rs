//! Retention: results older than `store.retention_days` are deleted once an hour (events and the
//! latest result per series stay). The loop runs beside the collector until it stops.

use super::Store;
use crate::events::now_unix_ms;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// How often old results are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes now and then every hour until `shutdown` completes; returns at once when
/// `retention_days` is 0 (keep everything).
pub async fn prune_loop(
    store: Arc<dyn Store>,
    retention_days: u32,
    shutdown: impl Future<Output = ()>,
) {
    if retention_days == 0 {
        return;
    }
    tokio::pin!(shutdown);
    loop {
        let before = now_unix_ms() - i64::from(retention_days) * 86_400_000;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune(before)).await {
            Ok(Ok(n)) if n > 0 => info!(deleted = n, "retention: pruned old results"),
            Ok(Err(e)) => error!("retention: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = &mut shutdown => return,
        }
    }
}
