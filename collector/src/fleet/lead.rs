//! The lease as the hub holds it, whatever the store: the lease itself (granted for good by a
//! store one collector has alone, won and lost in a cluster), what the detector was fed since
//! it was taken, the events the store did not take yet, and the wake-up of the outbox task.
//! Every event and its alert deliveries are recorded through the lease ([`Leadership`]), so a
//! collector that lost it cannot record or mark anything.

use crate::events::Event;
use crate::store::shared::{Leadership, NewDelivery};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Events kept for another try while the store cannot take them; beyond it the oldest go.
const MAX_UNRECORDED: usize = 1024;

/// A deterministic name of the change an event reports: two leaders that decided the same change
/// from the same stored results give it the same key. `since` (when the evidence began) is what
/// makes it so — `at`, the moment of the decision, differs between them.
pub fn event_key(e: &Event) -> String {
    let when = e.since.as_deref().unwrap_or(&e.at);
    format!(
        "{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}>{:?}|{}",
        e.kind,
        e.scope,
        e.provider.as_deref().unwrap_or(""),
        e.account.as_deref().unwrap_or(""),
        e.agent.as_deref().unwrap_or(""),
        e.target.as_deref().unwrap_or(""),
        e.port.map(|p| p.to_string()).unwrap_or_default(),
        e.family.map(|f| f.as_str()).unwrap_or(""),
        e.from,
        e.to,
        when,
    )
}

/// An event planned for recording that the database did not take yet.
#[derive(Debug, Clone)]
pub(super) struct Unrecorded {
    pub event: Event,
    pub key: String,
    pub deliveries: Vec<NewDelivery>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, Scope, State};

    fn event(at: &str, since: Option<&str>) -> Event {
        Event {
            kind: EventKind::PolicyChanged,
            scope: Scope::Account,
            provider: Some("aws".into()),
            account: Some("prod".into()),
            agent: None,
            target: Some("mx.lab.test".into()),
            port: Some(587),
            from: State::Open,
            to: State::Blocked,
            at: at.into(),
            family: None,
            id: None,
            outcome: Some("timeout".into()),
            at_unix_ms: 0,
            since: since.map(String::from),
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }

    #[test]
    fn two_leaders_deciding_the_same_change_later_or_sooner_name_it_alike() {
        let first = event_key(&event("2026-12-01T10:00:20Z", Some("2026-12-01T10:00:05Z")));
        let again = event_key(&event("2026-12-01T10:01:02Z", Some("2026-12-01T10:00:05Z")));
        assert_eq!(first, again);
        let other = event_key(&event("2026-12-01T10:01:02Z", Some("2026-12-01T10:00:45Z")));
        assert_ne!(
            first, other,
            "a later change of the same cell is a new event"
        );
        let mut reopened = event("2026-12-01T10:00:20Z", Some("2026-12-01T10:00:05Z"));
        reopened.to = State::Open;
        reopened.from = State::Blocked;
        assert_ne!(first, event_key(&reopened));
    }
}
