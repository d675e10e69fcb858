//! Alert delivery from the outbox, whatever the store. The hub records each event together with
//! its deliveries (one per sink that is owed a notice) through the lease; this task, while the
//! collector holds the lease, hands each sink its oldest pending notice, waits for the sink's
//! answer and marks the delivery, then hands it the next. A collector killed at any point finds
//! what it had not marked still pending when it (or, in a cluster, the next leader) starts, and
//! sends it.
//!
//! The retry policy ([`retry_delay`], [`GIVE_UP_AFTER_MS`]):
//! - one notice at a time per sink, in the order recorded: a sink that is down holds its later
//!   notices back and gets them all, in order, once it answers;
//! - each try is the sink's own `retries` with `backoff_ms` ([`crate::alerts::SinkConfig`]);
//!   after a failed try the sink is tried again after 1 s, 2 s, 4 s … at most 5 minutes apart,
//!   so a sink back after an hour hears within 5 minutes;
//! - a notice still undelivered 24 hours after it was recorded is given up, logged and counted
//!   (`egresswatch_outbox_deliveries{outcome="failed"}`), as is one whose sink is no longer
//!   configured.
//!
//! Finished deliveries are deleted from the outbox [`KEEP_FINISHED_MS`] (7 days) after they
//! ended; pending ones never are.
//!
//! The outbox is read when the hub says it recorded deliveries, when a delivery ends, every
//! second while something is owed (a sink at work or waiting for its retry), and once a minute
//! regardless (which is also when notices past 24 hours are given up).
//!
//! Each attempt is counted in the outbox before the sink is called, so a collector that dies
//! mid-send leaves a trace, and the delivery is sent again after the restart: the one case where
//! a sink can hear of an event twice (webhooks and Slack cannot tell; an Alertmanager takes the
//! same alert again as the same alert). A delivery the sink answered and that was marked is never
//! sent again. Every store call runs off the runtime's threads, through the lease: a collector
//! that lost the lead cannot mark anything.

use super::counters::FleetCounters;
use super::lead::Lead;
use super::Fleet;
use crate::alerts::gate::Notice;
use crate::alerts::DispatchError;
use crate::clock::now_unix_ms;
use crate::store::shared::{Delivery, DeliveryOutcome, Leadership};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A notice still undelivered this long after it was recorded is given up.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Finished deliveries are kept this long after they ended, then deleted (hourly).
pub const KEEP_FINISHED_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest wait between two tries of a sink that keeps failing.
const MAX_RETRY_DELAY_MS: i64 = 5 * 60 * 1000;
/// How often the outbox is read when the last read found nothing owed and nothing said it
/// changed, and how often deliveries past [`GIVE_UP_AFTER_MS`] are looked for. Reading it every
/// second regardless cost an idle collector more than everything else it does at a quiet
/// fleet's pace (bench/RESULTS.md, "Collector instructions at compare.sh's pace").
const QUIET_READ_EVERY_MS: i64 = 60 * 1000;

/// How long to wait before trying a sink again after `failures` failed tries in a row: 1 s,
/// doubling, at most [`MAX_RETRY_DELAY_MS`].
pub fn retry_delay(failures: u32) -> i64 {
    let doubled = 1000i64.saturating_mul(1i64 << failures.saturating_sub(1).min(20));
    doubled.min(MAX_RETRY_DELAY_MS)
}

/// A sink that failed: how often in a row, and when it may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    retry_at_ms: i64,
}

/// Runs until the hub is gone, or until `wind_down` is set and the deliveries then under way
/// have ended and been marked (said on `wound_down`); once it is set, no new one starts.
pub(super) async fn deliver(
    fleet: Weak<Fleet>,
    lead: Arc<Lead>,
    counters: FleetCounters,
    (mut wind_down, wound_down): (watch::Receiver<bool>, watch::Sender<bool>),
) {
    // Delivery id → its sink, while the sink works on it.
    let mut in_flight: HashMap<i64, String> = HashMap::new();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i64, bool)>();
    let mut finishing = false;
    let mut forgot_at_ms = i64::MIN;
    let mut read_at_ms = i64::MIN;
    // The last read found nothing owed: a tick of the clock alone need not read again.
    let mut nothing_owed = false;
    loop {
        if finishing && in_flight.is_empty() {
            let _ = wound_down.send(true);
            return;
        }
        let mut ticked = false;
        tokio::select! {
            changed = wind_down.changed(), if !finishing => {
                finishing = changed.is_err() || *wind_down.borrow();
                continue;
            }
            _ = lead.deliveries.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => ticked = true,
            Some((id, delivered)) = done_rx.recv() => {
                let now = now_unix_ms();
                let sink = in_flight.remove(&id).unwrap_or_default();
                if delivered {
                    backoff.remove(&sink);
                    counters.delivery("delivered");
                    finish(&lead, id, DeliveryOutcome::Delivered).await;
                } else {
                    // Still pending: the same notice is this sink's next, after the delay.
                    let failures = backoff.get(&sink).map_or(0, |b| b.failures) + 1;
                    let delay = retry_delay(failures);
                    tracing::warn!(sink = %sink, failures, "alert delivery failed: tried again in {} s", delay / 1000);
                    backoff.insert(sink, Backoff { failures, retry_at_ms: now + delay });
                }
            }
        }
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        if finishing || !lead.leads() {
            // A collector that takes the lead (again) reads what it is owed at once.
            nothing_owed = false;
            continue;
        }
        let now = now_unix_ms();
        let quiet_read_due = now.saturating_sub(read_at_ms) >= QUIET_READ_EVERY_MS;
        if ticked && nothing_owed && !quiet_read_due {
            continue;
        }
        if now.saturating_sub(forgot_at_ms) >= 3_600_000 {
            forgot_at_ms = now;
            let cutoff = now - KEEP_FINISHED_MS;
            if let Some(Err(e)) =
                with_lease(&lead, move |lease| lease.forget_finished(cutoff)).await
            {
                tracing::warn!("deleting old finished alert deliveries: {e}");
            }
        }
        let heads = with_lease(&lead, move |lease| {
            let given_up = if quiet_read_due {
                lease.give_up_deliveries(now - GIVE_UP_AFTER_MS, now)?
            } else {
                0
            };
            Ok((given_up, lease.next_deliveries()?))
        })
        .await;
        if quiet_read_due {
            read_at_ms = now;
        }
        let heads = match heads {
            Some(Ok((given_up, heads))) => {
                if given_up > 0 {
                    tracing::error!(
                        given_up,
                        "alert deliveries undelivered for {} h: given up",
                        GIVE_UP_AFTER_MS / 3_600_000
                    );
                    counters.deliveries_failed(given_up);
                }
                heads
            }
            Some(Err(e)) => {
                tracing::warn!("reading the alert outbox: {e}");
                nothing_owed = false;
                continue;
            }
            None => continue,
        };
        nothing_owed = heads.is_empty() && in_flight.is_empty();
        for delivery in heads {
            if in_flight.contains_key(&delivery.id)
                || in_flight.values().any(|s| *s == delivery.sink)
                || backoff
                    .get(&delivery.sink)
                    .is_some_and(|b| b.retry_at_ms > now)
            {
                continue;
            }
            if start(&fleet, &lead, &counters, &delivery, &done_tx).await {
                in_flight.insert(delivery.id, delivery.sink);
            }
        }
    }
}

/// Runs `call` on the lease off the runtime's threads; `None` when not leading.
async fn with_lease<T: Send + 'static>(
    lead: &Arc<Lead>,
    call: impl FnOnce(&mut dyn Leadership) -> Result<T, crate::CollectorError> + Send + 'static,
) -> Option<Result<T, crate::CollectorError>> {
    let lead = lead.clone();
    tokio::task::spawn_blocking(move || lead.lease().as_mut().map(|lease| call(lease.as_mut())))
        .await
        .ok()
        .flatten()
}

/// Counts the attempt and queues the notice for its sink; true when it is on its way.
async fn start(
    fleet: &Fleet,
    lead: &Arc<Lead>,
    counters: &FleetCounters,
    delivery: &Delivery,
    done_tx: &mpsc::UnboundedSender<(i64, bool)>,
) -> bool {
    let notice = match Notice::from_json(&delivery.notice_json) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(sink = %delivery.sink, "an outbox notice does not parse ({e}): given up");
            counters.delivery("failed");
            finish(lead, delivery.id, DeliveryOutcome::Failed).await;
            return false;
        }
    };
    let id = delivery.id;
    match with_lease(lead, move |lease| lease.start_attempt(id, now_unix_ms())).await {
        Some(Ok(true)) => {}
        Some(Err(e)) => {
            tracing::warn!("counting an alert attempt: {e}");
            return false;
        }
        _ => return false,
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    match fleet.alerts().dispatch(&delivery.sink, notice, Some(tx)) {
        Ok(()) => {
            let done = done_tx.clone();
            tokio::spawn(async move {
                let delivered = rx.await.unwrap_or(false);
                let _ = done.send((id, delivered));
            });
            true
        }
        Err(DispatchError::UnknownSink) => {
            tracing::warn!(sink = %delivery.sink, "an outbox delivery names a sink no longer configured: given up");
            counters.delivery("failed");
            finish(lead, delivery.id, DeliveryOutcome::Failed).await;
            false
        }
        // Tried again on the next pass.
        Err(DispatchError::Full) => false,
    }
}

async fn finish(lead: &Arc<Lead>, id: i64, outcome: DeliveryOutcome) {
    let done = with_lease(lead, move |lease| {
        lease.finish_delivery(id, outcome, now_unix_ms())
    })
    .await;
    if let Some(Err(e)) = done {
        tracing::warn!("marking an alert delivery: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_sink_is_tried_again_sooner_first_and_at_most_five_minutes_apart() {
        let delays: Vec<i64> = (1..=12).map(retry_delay).collect();
        assert_eq!(&delays[..6], &[1_000, 2_000, 4_000, 8_000, 16_000, 32_000]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_RETRY_DELAY_MS);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY_MS);
    }
}
