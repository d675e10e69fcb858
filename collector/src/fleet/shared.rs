//! The hub's side of running beside other collectors on one database
//! ([`crate::store::shared`]). In shared mode the hub does not take ingest's results directly:
//! every collector follows the database's feed of stored results — its own agents' included — so
//! all of them show the same matrix. Only the collector holding the lease runs the detector, and
//! it records each event together with its alert deliveries through the lease, under a key that
//! names the change ([`event_key`]): a leader that took over and rebuilt its state from the
//! stored results raises nothing the old one already raised. [`crate::cluster`] drives this.

use super::lead::Lead;
use crate::events::Event;
use crate::matrix::StoreOutage;
use crate::store::shared::{Leadership, NewDelivery, SharedStore};
use std::sync::{Arc, Mutex};

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

/// What the hub keeps in shared mode besides the lease ([`super::lead::Lead`]).
pub struct Shared {
    pub(super) store: Arc<dyn SharedStore>,
    lead: Arc<Lead>,
    pub(super) outage: Mutex<Option<StoreOutage>>,
}

impl Shared {
    pub(super) fn new(store: Arc<dyn SharedStore>, lead: Arc<Lead>) -> Shared {
        Shared {
            store,
            lead,
            outage: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Arc<dyn SharedStore> {
        &self.store
    }

    /// Whether this collector holds the lease now.
    pub fn leads(&self) -> bool {
        self.lead.leads()
    }

    /// The lease, for the health check and probe requests (`None`: not leading).
    pub fn lease(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn Leadership>>> {
        self.lead.lease()
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
