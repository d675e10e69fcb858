//! Attribution: which layer one group of same-direction, settled changes on one path belongs
//! to — the agent's own network (control port failing too), the destination (everyone fails,
//! across providers or while other targets answer), a provider (all its accounts), an account
//! (all its agents), or the single agent.

use super::series::PortState;
use super::{Detector, PathKey, Pending, SeriesKey};
use crate::events::State;
use crate::events::{rfc3339, Event, EventKind, Scope, Witness};
use egresswatch_wire::Outcome;
use std::collections::{BTreeMap, BTreeSet, HashMap};

impl Detector {
    /// Decides which layer one group of same-direction changes on one path belongs to.
    pub(super) fn attribute(
        &mut self,
        path: PathKey,
        to: PortState,
        members: Vec<Pending>,
        now: i64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        // Still valid, and not a lost network in disguise.
        let mut kept = Vec::new();
        for m in members {
            let Some(s) = self.series.get(&m.key) else {
                continue;
            };
            if s.confirmed() != Some(m.to) || s.flapping() {
                continue;
            }
            if self.agents.get(&m.key.agent).is_some_and(|a| a.silent) {
                continue;
            }
            if s.last() != Some(m.to) {
                // It went back before the change settled: a burst, not a change.
                if let Some(s) = self.series.get_mut(&m.key) {
                    s.withdraw(m.from);
                }
                continue;
            }
            if to == PortState::Blocked && self.control_failing(&m.key.agent, m.key.family) {
                tracing::info!(
                    agent = %m.key.agent, port = m.key.port,
                    "control port fails too: the agent lost its network, not an SMTP policy"
                );
                if let Some(s) = self.series.get_mut(&m.key) {
                    s.revert(m.from, &self.config);
                }
                continue;
            }
            kept.push(m);
        }
        if kept.is_empty() {
            return events;
        }
        let from = kept[0].from;
        let member_keys: BTreeSet<&SeriesKey> = kept.iter().map(|m| &m.key).collect();
        // Every live series on this path, with its agent's provider and account, and whether it
        // changed to `to` (confirmed in this group, or on its way there). A series that always
        // was in `to` did not change.
        let universe: Vec<(SeriesKey, String, String, bool)> = self
            .series
            .iter()
            .filter(|(k, s)| {
                k.target == path.0 && k.port == path.1 && k.family == path.2 && s.last().is_some()
            })
            .filter_map(|(k, s)| {
                let a = self.agents.get(&k.agent)?;
                (!a.silent).then(|| {
                    (
                        k.clone(),
                        a.provider.clone(),
                        a.account.clone(),
                        member_keys.contains(k)
                            || (s.last() == Some(to) && s.confirmed() != Some(to)),
                    )
                })
            })
            .collect();
        let outcome = self.dominant_outcome(universe.iter().filter(|u| u.3).map(|u| &u.0), to);

        // The destination.
        // A destination is judged on state: every agent fails there now, whatever it did before.
        let all_changed = universe
            .iter()
            .all(|u| self.series.get(&u.0).and_then(|s| s.last()) == Some(to));
        if to == PortState::Blocked && all_changed && self.looks_like_destination(&path, &universe)
        {
            self.outages.insert(path.clone());
            let evidence = self.evidence(universe.iter().filter(|u| u.3).map(|u| &u.0));
            self.force(universe.iter().map(|u| &u.0), to);
            events.push(self.with_evidence(
                evidence,
                self.event(
                    EventKind::DestinationOutage,
                    Scope::Destination,
                    (None, None, None),
                    &path,
                    from.into(),
                    to.into(),
                    outcome,
                    now,
                ),
            ));
            return events;
        }
        if to == PortState::Open && self.outages.remove(&path) {
            let evidence = self.evidence(universe.iter().filter(|u| u.3).map(|u| &u.0));
            self.force(universe.iter().filter(|u| u.3).map(|u| &u.0), to);
            events.push(self.with_evidence(
                evidence,
                self.event(
                    EventKind::DestinationOutage,
                    Scope::Destination,
                    (None, None, None),
                    &path,
                    from.into(),
                    to.into(),
                    None,
                    now,
                ),
            ));
            return events;
        }

        // Providers, then accounts, then agents.
        let providers: BTreeSet<String> = kept
            .iter()
            .filter_map(|m| self.agents.get(&m.key.agent).map(|a| a.provider.clone()))
            .collect();
        for provider in providers {
            let in_provider: Vec<&(SeriesKey, String, String, bool)> =
                universe.iter().filter(|u| u.1 == provider).collect();
            let mut by_account: BTreeMap<&str, Vec<&(SeriesKey, String, String, bool)>> =
                BTreeMap::new();
            for u in &in_provider {
                by_account.entry(u.2.as_str()).or_default().push(u);
            }
            let account_changed =
                |acc: &str| by_account.get(acc).is_some_and(|v| v.iter().all(|u| u.3));
            if by_account.len() >= self.config.min_accounts_for_provider
                && by_account.keys().all(|a| account_changed(a))
            {
                let evidence = self.evidence(in_provider.iter().filter(|u| u.3).map(|u| &u.0));
                self.force(in_provider.iter().map(|u| &u.0), to);
                events.push(self.with_evidence(
                    evidence,
                    self.event(
                        EventKind::PolicyChanged,
                        Scope::Provider,
                        (Some(provider.clone()), None, None),
                        &path,
                        from.into(),
                        to.into(),
                        outcome.clone(),
                        now,
                    ),
                ));
                continue;
            }
            let member_accounts: BTreeSet<String> = kept
                .iter()
                .filter_map(|m| {
                    let a = self.agents.get(&m.key.agent)?;
                    (a.provider == provider).then(|| a.account.clone())
                })
                .collect();
            for account in member_accounts {
                if account_changed(&account) {
                    let keys: Vec<SeriesKey> = by_account
                        .get(account.as_str())
                        .map(|v| v.iter().map(|u| u.0.clone()).collect())
                        .unwrap_or_default();
                    let evidence = self.evidence(keys.iter());
                    self.force(keys.iter(), to);
                    events.push(self.with_evidence(
                        evidence,
                        self.event(
                            EventKind::PolicyChanged,
                            Scope::Account,
                            (Some(provider.clone()), Some(account.clone()), None),
                            &path,
                            from.into(),
                            to.into(),
                            outcome.clone(),
                            now,
                        ),
                    ));
                    continue;
                }
                for m in &kept {
                    let Some(a) = self.agents.get(&m.key.agent) else {
                        continue;
                    };
                    if a.provider != provider || a.account != account {
                        continue;
                    }
                    let one_outcome = self.dominant_outcome(std::iter::once(&m.key), to);
                    let evidence = self.evidence(std::iter::once(&m.key));
                    events.push(self.with_evidence(
                        evidence,
                        self.event(
                            EventKind::PolicyChanged,
                            Scope::Agent,
                            (
                                Some(provider.clone()),
                                Some(account.clone()),
                                Some(m.key.agent.clone()),
                            ),
                            &path,
                            m.from.into(),
                            to.into(),
                            one_outcome,
                            now,
                        ),
                    ));
                }
            }
        }
        events
    }

    /// All agents fail on the path: it is the destination when the ones that changed span
    /// providers, or when they still reach another target on the same port.
    fn looks_like_destination(
        &self,
        path: &PathKey,
        universe: &[(SeriesKey, String, String, bool)],
    ) -> bool {
        let agents: BTreeSet<&str> = universe.iter().map(|u| u.0.agent.as_str()).collect();
        if agents.len() < self.config.min_agents_for_outage {
            return false;
        }
        // Providers that *changed* now: a provider that always blocked this port (GCP's 25)
        // says nothing about the destination, and must not turn one provider's new block into
        // an "outage".
        let changed = universe.iter().filter(|u| u.3);
        let providers: BTreeSet<&str> = changed.clone().map(|u| u.1.as_str()).collect();
        if providers.len() >= 2 {
            return true;
        }
        let agents: BTreeSet<&str> = changed.map(|u| u.0.agent.as_str()).collect();
        self.series.iter().any(|(k, s)| {
            agents.contains(k.agent.as_str())
                && k.port == path.1
                && k.family == path.2
                && k.target != path.0
                && s.last() == Some(PortState::Open)
        })
    }

    /// A group change vouches for siblings whose own confirmation is still under way: they are
    /// confirmed now, so their later confirmations raise nothing twice.
    fn force<'a>(&mut self, keys: impl Iterator<Item = &'a SeriesKey>, to: PortState) {
        let keys: Vec<SeriesKey> = keys.cloned().collect();
        for k in &keys {
            if let Some(s) = self.series.get_mut(k) {
                if s.last() == Some(to) {
                    s.force(to);
                }
            }
        }
        self.pending
            .retain(|p| !(keys.contains(&p.key) && p.to == to));
    }

    /// When the evidence for a change began and who saw it, among `keys`.
    fn evidence<'a>(
        &self,
        keys: impl Iterator<Item = &'a SeriesKey> + Clone,
    ) -> (Option<String>, Vec<Witness>) {
        (self.since(keys.clone()), self.witnesses(keys))
    }

    fn with_evidence(&self, evidence: (Option<String>, Vec<Witness>), mut event: Event) -> Event {
        event.since = evidence.0;
        event.witnesses = evidence.1;
        event
    }

    fn dominant_outcome<'a>(
        &self,
        keys: impl Iterator<Item = &'a SeriesKey>,
        to: PortState,
    ) -> Option<String> {
        if to != PortState::Blocked {
            return None;
        }
        let mut counts: HashMap<Outcome, usize> = HashMap::new();
        for k in keys {
            if let Some(o) = self.series.get(k).and_then(|s| s.last_failure()) {
                *counts.entry(o).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(o, c)| (*c, std::cmp::Reverse(*o)))
            .map(|(o, _)| o.as_str().to_string())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn event(
        &self,
        kind: EventKind,
        scope: Scope,
        who: (Option<String>, Option<String>, Option<String>),
        path: &PathKey,
        from: State,
        to: State,
        outcome: Option<String>,
        now: i64,
    ) -> Event {
        Event {
            kind,
            scope,
            provider: who.0,
            account: who.1,
            agent: who.2,
            target: Some(path.0.clone()),
            port: Some(path.1),
            from,
            to,
            at: rfc3339(now),
            family: Some(path.2),
            id: None,
            outcome,
            at_unix_ms: now,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }
}

/// The same change seen over IPv4 and IPv6 at once is one event (`family` null); a change
/// in one family only keeps its family.
pub(super) fn merge_families(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for e in events {
        let twin = out.iter_mut().find(|o| {
            o.family.is_some()
                && e.family.is_some()
                && o.family != e.family
                && o.kind == e.kind
                && o.scope == e.scope
                && o.provider == e.provider
                && o.account == e.account
                && o.agent == e.agent
                && o.target == e.target
                && o.port == e.port
                && o.from == e.from
                && o.to == e.to
        });
        match twin {
            Some(o) => {
                o.family = None;
                // RFC 3339 UTC strings of one format order as their times do.
                o.since = match (o.since.take(), e.since) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                o.witnesses.extend(e.witnesses);
                o.witnesses
                    .sort_by(|a, b| (&a.agent, a.family).cmp(&(&b.agent, b.family)));
            }
            None => out.push(e),
        }
    }
    out
}
