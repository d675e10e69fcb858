//! Publishing: the latest signed snapshot this collector made, kept for the HTTP layer to serve
//! at `/feed/snapshot.json` and `/feed/snapshot.json.minisig` when `[feed.publish]` is on. A
//! published snapshot is public by design: the routes need no token.

use super::{signed_snapshot, FeedConfig, Signed};
use crate::store::Store;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The snapshot being served (none until the first one is made).
#[derive(Debug, Default)]
pub struct Published {
    latest: RwLock<Option<Signed>>,
}

impl Published {
    pub fn new() -> Arc<Published> {
        Arc::new(Published::default())
    }

    pub fn set(&self, signed: Signed) {
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(signed);
    }

    pub fn latest(&self) -> Option<Signed> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Makes and signs a snapshot now and every `every_secs`, until `stop` resolves. The store is
/// read off the runtime's threads (PostgreSQL's client blocks).
pub async fn run(
    store: Arc<dyn Store>,
    config: FeedConfig,
    sk: minisign::SecretKey,
    published: Arc<Published>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let sk = Arc::new(sk);
    let work = async {
        let mut tick = tokio::time::interval(Duration::from_secs(config.publish.every_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (store, config, sk) = (store.clone(), config.clone(), sk.clone());
            let made = tokio::task::spawn_blocking(move || {
                signed_snapshot(store.as_ref(), &config, &sk, crate::clock::now_unix_ms())
            })
            .await;
            match made {
                Ok(Ok(signed)) => {
                    tracing::info!(at = %signed.generated_at, bytes = signed.bytes.len(), "feed snapshot published");
                    published.set(signed);
                }
                Ok(Err(e)) => tracing::warn!("feed snapshot not made: {e}"),
                Err(e) => tracing::warn!("feed snapshot task: {e}"),
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = stop => {}
    }
}
