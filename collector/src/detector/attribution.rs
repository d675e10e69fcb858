//! Attribution: which layer one group of same-direction, settled changes on one path belongs
//! to — the agent's own network (control port failing too), the destination (everyone fails,
//! across providers or while other targets answer), a provider (all its accounts), an account
//! (all its agents), or the single agent.

use super::scope::{self, Answer, Bounds, Layer, Voice};
use super::series::PortState;
use super::{other_family, secs_ms, Detector, PathKey, Pending, SeriesKey};
use crate::clock::rfc3339;
use crate::events::State;
use crate::events::{Event, EventKind, Scope, Witness};
use egresswatch_wire::Outcome;
use std::collections::{BTreeSet, HashMap};

/// Where the wait for one path's decided changes stands.
pub(super) struct Judged {
    /// The agents not yet heard cannot change the layer any more.
    pub settled: bool,
    /// An agent among those that decided is still testing the same change in its other family.
    pub twin_testing: bool,
    /// When waiting for the agents not yet heard (and the twins) is over.
    pub deadline_ms: i64,
}

/// How long past the expected next scheduled probe an agent's result may take: its name
/// lookup and probe timeouts and a margin (as the fan-out's deadline).
const RESULT_GRACE_MS: i64 = 15_000;

/// How far apart an agent's confirmations of a probe that reached the server come by default
/// (the politeness floor, `probe.min_interval_per_destination`): a series testing a change
/// waits at least this for its next one.
const CONFIRMATION_SPACING_MS: i64 = 10_000;

impl Detector {
    /// Every live agent probing `path`, with what it has said about the change to `to` under
    /// way there (see [`scope`]).
    fn voices(&self, path: &PathKey, to: PortState) -> Vec<Voice<SeriesKey>> {
        let since_ms = self
            .pending
            .iter()
            .filter(|p| p.to == to && p.on(path))
            .map(|p| p.since_ms)
            .min()
            .unwrap_or(i64::MAX);
        // An answer of the old state counts from about when the change was last seen: a test
        // can begin with a lost probe before the change itself, and an answer between the two
        // says nothing about the change.
        let lately_ms = self
            .pending
            .iter()
            .filter(|p| p.to == to && p.on(path))
            .filter_map(|p| Some(self.series.get(&p.key)?.departure()?.1.at_ms))
            .max()
            .map_or(since_ms, |latest| {
                since_ms.max(latest.saturating_sub(RESULT_GRACE_MS))
            });
        self.series
            .iter()
            .filter(|(k, _)| k.target == path.0 && k.port == path.1 && k.family == path.2)
            .filter_map(|(k, s)| {
                let a = self.agents.get(&k.agent).filter(|a| !a.silent)?;
                let confirmed = s.confirmed()?;
                if s.flapping() {
                    return None;
                }
                let pending = self.pending.iter().any(|p| p.key == *k && p.to == to);
                let answer = if !pending
                    && to == PortState::Blocked
                    && self.control_failing(&k.agent, k.family)
                {
                    // Its control port fails too (its network, or one lost probe): what its
                    // SMTP results say is no answer yet, and it is waited for like one unheard.
                    Answer::Unheard
                } else if pending {
                    Answer::Changed
                } else if confirmed == to {
                    Answer::Before
                } else if let Some(e) = s.episode().filter(|e| e.to == to) {
                    // Its own test leans to the change (past half the bound, as flapping
                    // counts it): with a change decided beside it on the same path, that is
                    // enough to tell which layer changed, though not to decide from nothing.
                    if e.evidence >= self.config.upper_bound() / 2.0 {
                        Answer::Changed
                    } else {
                        Answer::Leaning
                    }
                } else if s.last_at_ms() >= lately_ms {
                    Answer::Unchanged
                } else {
                    Answer::Unheard
                };
                Some(Voice {
                    key: k.clone(),
                    provider: a.provider.clone(),
                    account: a.account.clone(),
                    agent: k.agent.clone(),
                    answer,
                })
            })
            .collect()
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            min_agents_for_outage: self.config.min_agents_for_outage,
            min_accounts_for_provider: self.config.min_accounts_for_provider,
        }
    }

    /// Whether the decided changes to `to` on `path` can be attributed, and until when the
    /// agents that could still change their layer are waited for: an agent heard since the
    /// change began, until its next scheduled result is overdue; one unheard since (failing
    /// over to another collector, its uplink down, its spool holding what it saw), up to
    /// `settle_secs` after the decision; never more than the larger of `settle_secs` and two
    /// probe intervals and a half-minute after it.
    pub(super) fn judge(&self, path: &PathKey, to: PortState, now: i64) -> Judged {
        let members: Vec<&Pending> = self
            .pending
            .iter()
            .filter(|p| p.to == to && p.on(path))
            .collect();
        let decided_ms = members.iter().map(|p| p.confirmed_at_ms).max().unwrap_or(0);
        let since_ms = members.iter().map(|p| p.since_ms).min().unwrap_or(0);
        let settle = secs_ms(self.config.settle_secs);
        let interval = members
            .iter()
            .filter_map(|p| self.series.get(&p.key)?.interval_ms())
            .max()
            .unwrap_or(0);
        let cap = decided_ms + settle.max(2 * interval + 30_000);
        let expected = |k: &SeriesKey| -> i64 {
            let Some(s) = self.series.get(k) else {
                return (decided_ms + settle).min(cap);
            };
            let every = s.interval_ms().unwrap_or(settle);
            let testing = s.episode().is_some_and(|e| e.to == to);
            // A series testing the change is followed by its latest result of any kind: a return
            // to open is confirmed at the politeness floor (10 s apart) while its schedule
            // waits, and each confirmation moves the wait on. One not heard on this path since
            // the change began is due by its schedule; if its agent has measured nothing at all
            // since, or has sent nothing for longer than it ever waits to send (its uplink
            // stalled, failing over), it may be holding what it saw: up to `settle_secs` after
            // the decision.
            let scheduled = s.last_scheduled_at_ms().unwrap_or(s.last_at_ms());
            let mut due = scheduled + every * 3 / 2 + RESULT_GRACE_MS;
            if testing {
                due = due.max(s.last_at_ms() + CONFIRMATION_SPACING_MS + RESULT_GRACE_MS);
            }
            // An agent sends at least every half interval (30 s at most) even with no news.
            let quiet_for = self
                .agents
                .get(&k.agent)
                .map_or(i64::MAX, |a| now.saturating_sub(a.last_seen_ms));
            let reporting = quiet_for <= (every / 2).min(30_000) + 5_000;
            let due = if reporting && (testing || self.measured_since(&k.agent, since_ms)) {
                due
            } else {
                due.max(decided_ms + settle)
            };
            due.min(cap)
        };
        let voices = self.voices(path, to);
        let mut deadline_ms = decided_ms;
        for v in voices
            .iter()
            .filter(|v| matches!(v.answer, Answer::Leaning | Answer::Unheard))
        {
            deadline_ms = deadline_ms.max(expected(&v.key));
        }
        let twins: Vec<SeriesKey> = members
            .iter()
            .map(|p| SeriesKey {
                family: other_family(p.key.family),
                ..p.key.clone()
            })
            .filter(|twin| {
                self.series
                    .get(twin)
                    .and_then(|s| s.episode())
                    .is_some_and(|e| e.to == to)
            })
            .collect();
        for twin in &twins {
            deadline_ms = deadline_ms.max(expected(twin));
        }
        let reaches_other_targets = self.reaches_other_targets(path, to, &voices);
        let settled = if to == PortState::Open && self.outages.contains(path) {
            !voices
                .iter()
                .any(|v| matches!(v.answer, Answer::Leaning | Answer::Unheard))
        } else {
            scope::settled(&voices, reaches_other_targets, self.bounds(), false).is_some()
        };
        Judged {
            settled,
            twin_testing: !twins.is_empty(),
            deadline_ms,
        }
    }

    /// Names the layer of one path's decided changes to `to` and returns its events: the
    /// widest layer what every agent on the path has said supports, the agents not heard
    /// counting as unchanged ([`scope::layers`]).
    pub(super) fn attribute(
        &mut self,
        path: PathKey,
        to: PortState,
        members: Vec<Pending>,
        now: i64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let judged_members = members.len();
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
        if kept.len() < judged_members {
            // A member went back or lost its network: the layer was judged with it. The rest
            // wait to be judged again without it.
            self.pending.extend(kept);
            return events;
        }
        let from = kept[0].from;
        // The kept members are the changed voices; put them back while the voices are read.
        self.pending.extend(kept.iter().cloned());
        let voices = self.voices(&path, to);
        self.pending.retain(|p| !(p.to == to && p.on(&path)));
        // Attributed once the wait is over: a voice leaning to the change by then counts as
        // changed (see `scope::settled`), and is vouched for with the rest.
        let changed: Vec<SeriesKey> = voices
            .iter()
            .filter(|v| matches!(v.answer, Answer::Changed | Answer::Leaning))
            .map(|v| v.key.clone())
            .collect();

        // A destination outage already open: this agent's part of it, or its end.
        if self.outages.contains(&path) {
            if to == PortState::Blocked {
                self.force(changed.iter(), to);
                return events;
            }
            self.outages.remove(&path);
            let outcome = self.dominant_outcome(changed.iter(), to);
            let evidence = self.evidence(changed.iter());
            self.force(changed.iter(), to);
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

        let reaches_other_targets = self.reaches_other_targets(&path, to, &voices);
        tracing::debug!(
            target = %path.0, port = path.1, family = ?path.2, to = ?to,
            voices = %voices
                .iter()
                .map(|v| format!("{}={:?}", v.agent, v.answer))
                .collect::<Vec<_>>()
                .join(" "),
            "attributing a change over what every agent on the path said"
        );
        let layers =
            scope::settled(&voices, reaches_other_targets, self.bounds(), true).unwrap_or_default();
        for (layer, keys) in layers {
            // A layer of voices that only lean (a lost probe elsewhere on the path, say) is no
            // change of its own: it is decided when it is, if ever.
            if !keys.iter().any(|k| kept.iter().any(|m| m.key == *k)) {
                continue;
            }
            let changed_here: Vec<SeriesKey> = keys
                .iter()
                .filter(|k| changed.contains(k))
                .cloned()
                .collect();
            let outcome = self.dominant_outcome(changed_here.iter(), to);
            let evidence = self.evidence(changed_here.iter());
            let (kind, scope, who, event_from) = match layer {
                Layer::Destination => {
                    if to == PortState::Blocked {
                        self.outages.insert(path.clone());
                    }
                    (
                        EventKind::DestinationOutage,
                        Scope::Destination,
                        (None, None, None),
                        from,
                    )
                }
                Layer::Provider { provider } => (
                    EventKind::PolicyChanged,
                    Scope::Provider,
                    (Some(provider), None, None),
                    from,
                ),
                Layer::Account { provider, account } => (
                    EventKind::PolicyChanged,
                    Scope::Account,
                    (Some(provider), Some(account), None),
                    from,
                ),
                Layer::Agent {
                    provider,
                    account,
                    agent,
                } => {
                    let event_from = kept
                        .iter()
                        .find(|m| keys.contains(&m.key))
                        .map_or(from, |m| m.from);
                    (
                        EventKind::PolicyChanged,
                        Scope::Agent,
                        (Some(provider), Some(account), Some(agent)),
                        event_from,
                    )
                }
            };
            self.force(keys.iter(), to);
            events.push(self.with_evidence(
                evidence,
                self.event(
                    kind,
                    scope,
                    who,
                    &path,
                    event_from.into(),
                    to.into(),
                    outcome,
                    now,
                ),
            ));
        }
        events
    }

    /// Whether the agent has a result on any path measured at or after `since_ms`: it is
    /// reporting, not stalled (its arrival alone could be of something measured before).
    fn measured_since(&self, agent: &str, since_ms: i64) -> bool {
        self.series
            .range(
                SeriesKey {
                    agent: agent.to_string(),
                    target: String::new(),
                    port: 0,
                    family: egresswatch_wire::Family::Ipv4,
                }..,
            )
            .take_while(|(k, _)| k.agent == agent)
            .any(|(_, s)| s.last_at_ms() >= since_ms)
    }

    /// Whether an agent that changed on `path` still reaches another target on the same port:
    /// then the port is not blocked for it, and the destination is what changed. Only for a
    /// change to `blocked`: a path opening says nothing of the port being blocked elsewhere (an
    /// open outage's return is judged apart), and an account whose mail provider's API comes
    /// back while its 443 control answers is that account's change, not the destination's.
    fn reaches_other_targets(
        &self,
        path: &PathKey,
        to: PortState,
        voices: &[Voice<SeriesKey>],
    ) -> bool {
        if to != PortState::Blocked {
            return false;
        }
        let agents: BTreeSet<&str> = voices
            .iter()
            .filter(|v| v.answer != Answer::Unchanged && v.answer != Answer::Before)
            .map(|v| v.agent.as_str())
            .collect();
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
