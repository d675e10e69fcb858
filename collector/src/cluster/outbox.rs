//! The leader's alert delivery from the outbox. The leader records each event with the notices
//! its sinks are owed in one transaction; this task hands the pending ones to the sinks' workers
//! and marks each as it ends. An attempt is counted in the database before the sink is called,
//! so a leader that dies mid-send leaves a trace, and the next leader sends that delivery again:
//! the one case where a sink can hear of an event twice (webhooks and Slack cannot tell; an
//! Alertmanager takes the same alert again as the same alert). All database calls go through the
//! lease's own session: a collector that lost the lead cannot mark anything.

use super::ClusterCounters;
use crate::alerts::gate::Notice;
use crate::alerts::DispatchError;
use crate::events::now_unix_ms;
use crate::fleet::{Fleet, Shared};
use crate::store::shared::{Delivery, DeliveryOutcome};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Most deliveries read per pass.
const BATCH: usize = 64;
/// Leaders that may try one delivery before it is given up (each try has the sink's own
/// retries).
const MAX_ATTEMPTS: u32 = 5;

/// Runs until `stopped` completes, or until `wind_down` is set and the deliveries then under
/// way have ended and been marked (said on `wound_down`); once it is set, no new one starts.
pub(super) async fn deliver(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    counters: ClusterCounters,
    stopped: impl Future<Output = ()>,
    (mut wind_down, wound_down): (watch::Receiver<bool>, watch::Sender<bool>),
) {
    let mut in_flight: HashSet<i64> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i64, bool)>();
    let mut finishing = false;
    tokio::pin!(stopped);
    loop {
        if finishing && in_flight.is_empty() {
            let _ = wound_down.send(true);
            return;
        }
        tokio::select! {
            _ = &mut stopped => return,
            changed = wind_down.changed(), if !finishing => {
                finishing = changed.is_err() || *wind_down.borrow();
                continue;
            }
            _ = shared.deliveries.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            Some((id, delivered)) = done_rx.recv() => {
                in_flight.remove(&id);
                let outcome = if delivered { DeliveryOutcome::Delivered } else { DeliveryOutcome::Failed };
                counters.delivery(if delivered { "delivered" } else { "failed" });
                finish(&shared, id, outcome).await;
                continue;
            }
        }
        if finishing || !shared.leads() {
            continue;
        }
        let pending = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                shared
                    .lease()
                    .as_mut()
                    .map(|lease| lease.pending_deliveries(BATCH))
            })
            .await
        };
        let pending = match pending {
            Ok(Some(Ok(pending))) => pending,
            Ok(Some(Err(e))) => {
                tracing::warn!("reading the alert outbox: {e}");
                continue;
            }
            _ => continue,
        };
        for delivery in pending {
            if in_flight.contains(&delivery.id) {
                continue;
            }
            if delivery.attempts >= MAX_ATTEMPTS {
                tracing::error!(sink = %delivery.sink, event = delivery.event_id, "an alert delivery was tried by {MAX_ATTEMPTS} leaders: given up");
                counters.delivery("failed");
                finish(&shared, delivery.id, DeliveryOutcome::Failed).await;
                continue;
            }
            if let Some(id) = start(&fleet, &shared, &delivery, &done_tx).await {
                in_flight.insert(id);
            }
        }
    }
}

/// Counts the attempt and queues the notice for its sink; the id when it is on its way.
async fn start(
    fleet: &Fleet,
    shared: &Arc<Shared>,
    delivery: &Delivery,
    done_tx: &mpsc::UnboundedSender<(i64, bool)>,
) -> Option<i64> {
    let notice = match Notice::from_json(&delivery.notice_json) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(sink = %delivery.sink, "an outbox notice does not parse ({e}): given up");
            finish(shared, delivery.id, DeliveryOutcome::Failed).await;
            return None;
        }
    };
    let started = {
        let shared = shared.clone();
        let id = delivery.id;
        tokio::task::spawn_blocking(move || {
            shared
                .lease()
                .as_mut()
                .map(|lease| lease.start_attempt(id, now_unix_ms()))
        })
        .await
    };
    match started {
        Ok(Some(Ok(true))) => {}
        Ok(Some(Err(e))) => {
            tracing::warn!("counting an alert attempt: {e}");
            return None;
        }
        _ => return None,
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    match fleet.alerts().dispatch(&delivery.sink, notice, Some(tx)) {
        Ok(()) => {
            let done = done_tx.clone();
            let id = delivery.id;
            tokio::spawn(async move {
                let delivered = rx.await.unwrap_or(false);
                let _ = done.send((id, delivered));
            });
            Some(delivery.id)
        }
        Err(DispatchError::UnknownSink) => {
            tracing::warn!(sink = %delivery.sink, "an outbox delivery names a sink no longer configured: given up");
            finish(shared, delivery.id, DeliveryOutcome::Failed).await;
            None
        }
        // Tried again on the next pass.
        Err(DispatchError::Full) => None,
    }
}

async fn finish(shared: &Arc<Shared>, id: i64, outcome: DeliveryOutcome) {
    let shared = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        shared
            .lease()
            .as_mut()
            .map(|lease| lease.finish_delivery(id, outcome, now_unix_ms()))
    })
    .await;
    if let Ok(Some(Err(e))) = done {
        tracing::warn!("marking an alert delivery: {e}");
    }
}
