//! The Alertmanager alerts a sink has firing, and what a resolve must send to end them.
//!
//! A resolve carries the labels of the event that ends a problem, which are not always those of
//! the alert that fired: a port blocked over IPv4 only fires with `family=ipv4`, and when it
//! reopens over both families at once the resolving event has no family. Matching labels exactly
//! left such an alert firing — and re-sent every `resend_secs` — for ever. So a resolve ends
//! every firing alert of its subject (same scope, provider, account, agent, target and port;
//! a port's blocked and flapping alerts alike) in the families it names, each with its own
//! labels. A problem that fired over both families and reopens over one is ended and fired
//! again for the family still blocked, so what Alertmanager shows stays true.

use super::format::{self, Links};
use super::gate::{subject, Notice};
use crate::clock::rfc3339;
use egresswatch_wire::Family;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Held {
    subject: String,
    family: Option<Family>,
    alert: Value,
}

/// Firing alerts by their label set.
#[derive(Debug, Default)]
pub struct Firing {
    alerts: BTreeMap<String, Held>,
}

fn identity(alert: &Value) -> String {
    alert["labels"].to_string()
}

impl Firing {
    /// The alerts to POST for `n` at `now`: the firing alert, or the resolves (and re-fires) a
    /// resolve makes. A silenced resolve only ends what is firing; an unsilenced one that
    /// matches nothing (after a restart, say) still resolves its own labels, harmless if
    /// Alertmanager has no such alert.
    pub fn apply(&mut self, n: &Notice, links: &Links, now_unix_ms: i64) -> Vec<Value> {
        let e = &n.event;
        if format::fires(e) {
            if e.silenced_by.is_some() {
                return Vec::new();
            }
            let alert = format::alertmanager(n, links);
            self.alerts.insert(
                identity(&alert),
                Held {
                    subject: subject(e),
                    family: e.family,
                    alert: alert.clone(),
                },
            );
            return vec![alert];
        }
        let key = subject(e);
        let ends =
            |held: &Held| e.family.is_none() || held.family.is_none() || held.family == e.family;
        let ended: Vec<String> = self
            .alerts
            .iter()
            .filter(|(_, h)| h.subject == key && ends(h))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ended {
            let Some(held) = self.alerts.remove(&id) else {
                continue;
            };
            out.push(resolved(&held.alert, now_unix_ms));
            // Fired over both families, reopened over one: the other is still blocked.
            if let (None, Some(reopened)) = (held.family, e.family) {
                let still = match reopened {
                    Family::Ipv4 => Family::Ipv6,
                    Family::Ipv6 => Family::Ipv4,
                };
                let mut alert = held.alert.clone();
                alert["labels"]["family"] = still.as_str().into();
                self.alerts.insert(
                    identity(&alert),
                    Held {
                        subject: held.subject.clone(),
                        family: Some(still),
                        alert: alert.clone(),
                    },
                );
                out.push(alert);
            }
        }
        if out.is_empty() && e.silenced_by.is_none() {
            let own = format::alertmanager(n, links);
            out.push(resolved(&own, now_unix_ms));
        }
        out
    }

    /// Every firing alert, for the periodic re-send.
    pub fn all(&self) -> Vec<Value> {
        self.alerts.values().map(|h| h.alert.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }
}

/// The firing alert, ended at `now`.
fn resolved(alert: &Value, now_unix_ms: i64) -> Value {
    let mut alert = alert.clone();
    let starts = alert["startsAt"].as_str().unwrap_or_default().to_string();
    let now = rfc3339(now_unix_ms);
    // A resolve must not start after it ends (RFC 3339 UTC strings of one format sort as times).
    if starts.is_empty() || starts > now {
        alert["startsAt"] = now.clone().into();
    }
    alert["endsAt"] = now.into();
    alert
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, Scope, State};

    fn change(from: State, to: State, family: Option<Family>) -> Notice {
        Notice::of(Event {
            kind: EventKind::PolicyChanged,
            scope: Scope::Account,
            provider: Some("gcp".into()),
            account: Some("a".into()),
            agent: None,
            target: Some("mx".into()),
            port: Some(587),
            from,
            to,
            at: rfc3339(1_000),
            family,
            id: None,
            outcome: None,
            at_unix_ms: 1_000,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        })
    }

    #[test]
    fn a_resolve_over_both_families_ends_the_ipv4_alert() {
        let mut firing = Firing::default();
        let links = Links::default();
        let fired = firing.apply(
            &change(State::Open, State::Blocked, Some(Family::Ipv4)),
            &links,
            1_000,
        );
        assert_eq!(fired[0]["labels"]["family"], "ipv4");
        let sent = firing.apply(&change(State::Blocked, State::Open, None), &links, 2_000);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0]["labels"], fired[0]["labels"],
            "the resolve carries the firing labels"
        );
        assert_eq!(sent[0]["endsAt"], rfc3339(2_000));
        assert!(firing.is_empty(), "nothing left to re-send");
    }

    #[test]
    fn one_family_reopening_refires_the_other_and_flapping_ends_with_blocked() {
        let mut firing = Firing::default();
        let links = Links::default();
        firing.apply(&change(State::Open, State::Blocked, None), &links, 1_000);
        firing.apply(
            &change(State::Blocked, State::Flapping, None),
            &links,
            1_500,
        );
        let sent = firing.apply(
            &change(State::Flapping, State::Open, Some(Family::Ipv4)),
            &links,
            2_000,
        );
        let ended: Vec<_> = sent.iter().filter(|a| a.get("endsAt").is_some()).collect();
        assert_eq!(ended.len(), 2, "blocked and flapping both end: {sent:?}");
        let refired: Vec<_> = firing.all();
        assert_eq!(refired.len(), 2);
        assert!(refired.iter().all(|a| a["labels"]["family"] == "ipv6"));
        firing.apply(
            &change(State::Blocked, State::Open, Some(Family::Ipv6)),
            &links,
            3_000,
        );
        assert!(firing.is_empty());
    }

    #[test]
    fn a_resolve_of_another_subject_or_family_ends_nothing_else() {
        let mut firing = Firing::default();
        let links = Links::default();
        firing.apply(
            &change(State::Open, State::Blocked, Some(Family::Ipv6)),
            &links,
            1_000,
        );
        let sent = firing.apply(
            &change(State::Blocked, State::Open, Some(Family::Ipv4)),
            &links,
            2_000,
        );
        assert_eq!(sent.len(), 1, "its own resolve only");
        assert_eq!(sent[0]["labels"]["family"], "ipv4");
        assert_eq!(firing.all().len(), 1);
    }
}
