//! The lease as the hub holds it, whatever the store: the lease itself (granted for good by a
//! store one collector has alone, won and lost in a cluster), what the detector was fed since
//! it was taken, the events the store did not take yet, and the wake-up of the outbox task.
//! Every event and its alert deliveries are recorded through the lease ([`Leadership`]), so a
//! collector that lost it cannot record or mark anything.

use super::shared::Unrecorded;
use crate::store::shared::Leadership;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Events kept for another try while the store cannot take them; beyond it the oldest go.
const MAX_UNRECORDED: usize = 1024;

#[derive(Default)]
pub struct Lead {
    lease: Mutex<Option<Box<dyn Leadership>>>,
    /// Per agent, the highest sequence the detector has been fed: the feed repeats what a
    /// rebuilt detector's replay already saw, and it must not count twice.
    pub(super) fed: Mutex<HashMap<String, u64>>,
    pub(super) unrecorded: Mutex<Vec<Unrecorded>>,
    /// Woken when deliveries were recorded.
    pub deliveries: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lead {
    /// Whether this collector holds the lease now.
    pub fn leads(&self) -> bool {
        lock(&self.lease).is_some()
    }

    /// The lease, for the recorder, the outbox and the health check (`None`: not leading).
    pub fn lease(&self) -> MutexGuard<'_, Option<Box<dyn Leadership>>> {
        lock(&self.lease)
    }

    pub(super) fn set_lease(&self, lease: Option<Box<dyn Leadership>>) {
        *lock(&self.lease) = lease;
    }

    pub(super) fn keep_unrecorded(&self, item: Unrecorded) {
        let mut held = lock(&self.unrecorded);
        if held.len() >= MAX_UNRECORDED {
            tracing::error!(event = %held[0].event.summary(), "the store has refused events too long: an event is given up");
            held.remove(0);
        }
        held.push(item);
    }
}
