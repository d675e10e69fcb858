//! Change detection that names the layer. A plain state machine: results and the clock go in,
//! [`Event`]s come out; no I/O, no wall clock, no sleeping.
//!
//! Per series (agent, target, port, family) a sequential test weighs each live result as
//! evidence for a change against the series' own background failure rate ([`series`]); results
//! the agent re-probed (`confirmation`) and results the collector asked other agents for
//! (`requested`) are evidence too, so a change is decided in seconds when they agree. A whole
//! account's series on one path decide together on their summed evidence. *That* something
//! changed is decided per series; *where* is decided per path, over what every agent on it has
//! said since ([`scope`]): a decided change goes out once the agents not yet heard cannot change
//! its layer, or their next result is overdue. The agent's 443 control failing too means its
//! network went away (no SMTP event); nobody with the old state and the change across providers
//! (or while other targets still answer) is the destination; every agent of every account of a
//! provider is the provider; every agent of an account is the account; otherwise the agent.
//! A mail provider's HTTPS API on 443 is a series like any other, not the control, for an agent
//! with a control of its own; losing it where that provider's SMTP was blocked already is
//! `way_out_lost` ([`way_out`]).

mod accounts;
mod attribution;
pub mod scope;
mod series;
mod suspicion;
mod way_out;

use crate::clock::{measured_at, rfc3339};
use crate::events::{Event, EventKind, Scope, State, Witness};
pub use crate::identity::SeriesKey;
use crate::identity::{AgentMeta, KnownAgent};
use egresswatch_wire::{Family, Outcome, ProbeResult};
use serde::Deserialize;
pub use series::PortState;
use series::{Seen, Series, Step};
use std::collections::{BTreeMap, BTreeSet};
pub use suspicion::Suspicion;

/// `[detector]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The chance that one test on a path that did not change ends in a change (Wald's α).
    pub false_alarm_rate: f64,
    /// The chance that a test on a path that changed misses it (Wald's β).
    pub missed_change_rate: f64,
    /// The least background failure rate a series is assumed to have, however quiet it was.
    pub background_floor: f64,
    /// The weight of one scheduled result in the learned background rate (an EWMA).
    pub background_weight: f64,
    /// The chance that a blocked path answers a probe anyway.
    pub blocked_answer_rate: f64,
    /// The extra chance that an agent's quick re-probe fails with the blip that failed the
    /// probe before it (confirmations are seconds apart, not independent).
    pub confirmation_carryover: f64,
    /// Confirmations counted after each scheduled or requested result; more are ignored.
    pub confirmations_counted: u32,
    /// How long a decided change waits, after its decision, for an agent of its path that has
    /// sent nothing at all since the change began (failing over, its uplink down) before that
    /// agent counts as unchanged. An agent that reports is waited for until its next scheduled
    /// result is overdue instead; either wait ends as soon as the layer is settled, and none
    /// lasts past the larger of this and two probe intervals and 30 s.
    pub settle_secs: u64,
    /// An agent unheard of for this long is `agent_silent`.
    pub silent_after_secs: u64,
    /// A result that arrives more than this after it was measured is a replay (spool drained
    /// after an outage): it updates state and history but raises no alert.
    pub replay_after_secs: u64,
    /// Scheduled probes in the flapping window (Nagios uses 21).
    pub flap_window: usize,
    /// State-change percentage above which a series starts flapping.
    pub flap_high_pct: f64,
    /// ...and below which it stops.
    pub flap_low_pct: f64,
    /// The control port: its failure means the agent's network, not an SMTP policy.
    pub control_port: u16,
    /// Fewest agents that can make a destination outage.
    pub min_agents_for_outage: usize,
    /// Fewest accounts that can make a provider-wide change.
    pub min_accounts_for_provider: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            false_alarm_rate: 1e-7,
            missed_change_rate: 0.01,
            background_floor: 0.02,
            background_weight: 0.01,
            blocked_answer_rate: 0.01,
            confirmation_carryover: 0.2,
            confirmations_counted: 3,
            settle_secs: 60,
            silent_after_secs: 180,
            replay_after_secs: 300,
            flap_window: 21,
            flap_high_pct: 50.0,
            flap_low_pct: 25.0,
            control_port: 443,
            min_agents_for_outage: 2,
            min_accounts_for_provider: 2,
        }
    }
}

impl DetectorConfig {
    /// Wald's upper threshold: the evidence (natural log of the likelihood ratio) at which a
    /// test decides that the path changed.
    pub fn upper_bound(&self) -> f64 {
        let alpha = self.false_alarm_rate.clamp(1e-15, 0.5);
        let beta = self.missed_change_rate.clamp(0.0, 0.5);
        ((1.0 - beta) / alpha).ln()
    }
}

/// (target, port, family): what a destination outage or a group change is about.
type PathKey = (String, u16, Family);

type AgentInfo = KnownAgent;

#[derive(Debug, Clone)]
struct Pending {
    key: SeriesKey,
    from: PortState,
    to: PortState,
    confirmed_at_ms: i64,
    /// The first departing result's time.
    since_ms: i64,
}

impl Pending {
    fn on(&self, path: &PathKey) -> bool {
        self.key.target == path.0 && self.key.port == path.1 && self.key.family == path.2
    }
}

/// The detector.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    agents: BTreeMap<String, AgentInfo>,
    series: BTreeMap<SeriesKey, Series>,
    pending: Vec<Pending>,
    outages: BTreeSet<PathKey>,
    /// Series that asked for evidence since the hub last took them.
    suspicions: Vec<Suspicion>,
    /// The accounts with no agent left reporting.
    silent_accounts: accounts::SilentAccounts,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        Detector {
            config,
            agents: BTreeMap::new(),
            series: BTreeMap::new(),
            pending: Vec::new(),
            outages: BTreeSet::new(),
            suspicions: Vec::new(),
            silent_accounts: accounts::SilentAccounts::default(),
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Whether a destination outage is currently open for this path.
    pub fn outage_open(&self, target: &str, port: u16, family: Family) -> bool {
        self.outages.contains(&(target.to_string(), port, family))
    }

    /// The agent said hello or sent results: it is alive. Returns `agent_back` if it was silent.
    pub fn agent_seen(&mut self, agent: &AgentMeta, now_unix_ms: i64) -> Vec<Event> {
        let info = self
            .agents
            .entry(agent.agent_id.clone())
            .or_insert_with(|| KnownAgent::new(agent, now_unix_ms));
        // Labels follow the latest hello; last-seen only moves forward.
        *info = KnownAgent {
            last_seen_ms: info.last_seen_ms.max(now_unix_ms),
            silent: info.silent,
            ..KnownAgent::new(agent, now_unix_ms)
        };
        if info.silent {
            info.silent = false;
            let info = info.clone();
            let mut events = vec![self.agent_event(
                EventKind::AgentBack,
                &agent.agent_id,
                &info,
                State::Silent,
                State::Reporting,
                now_unix_ms,
            )];
            let accounts = self.silent_accounts.follow(&events, &self.agents);
            events.extend(accounts);
            return events;
        }
        Vec::new()
    }

    /// Restores one series from stored history at startup: its latest result becomes the
    /// confirmed baseline (no event), and the agent counts as seen at `now` so a restart does
    /// not make the whole fleet "silent".
    pub fn restore(&mut self, agent: &AgentMeta, result: &ProbeResult, now_unix_ms: i64) {
        self.agent_seen(agent, now_unix_ms);
        if result.outcome == Outcome::NoAddress {
            return;
        }
        self.series
            .entry(SeriesKey::of(&agent.agent_id, result))
            .or_default()
            .restore(
                PortState::of(result.outcome),
                result.outcome,
                result.at_unix_ms,
            );
    }

    /// Feeds newly stored results. Returns the events they bring: an agent coming back, a
    /// series starting to flap, and decided changes whose answers are all in (among these
    /// results, or before); a decided change that waits for its siblings comes out of
    /// [`Detector::tick`] when they answer or its wait is over.
    pub fn observe(
        &mut self,
        agent: &AgentMeta,
        results: &[ProbeResult],
        clock_trusted: bool,
        now_unix_ms: i64,
    ) -> Vec<Event> {
        let mut events = self.agent_seen(agent, now_unix_ms);
        let Some(info) = self.agents.get(&agent.agent_id).cloned() else {
            return events;
        };
        // The control results of a batch first: an SMTP result is no evidence when the same
        // round's control probe failed too. A mail provider's API on 443 is the control only
        // for an agent that probes no other 443 target ([`way_out`]).
        let control_port = self.config.control_port;
        let own_control =
            [Family::Ipv4, Family::Ipv6].map(|f| self.has_own_control(&agent.agent_id, f, results));
        let control = |r: &&ProbeResult| {
            r.port == control_port
                && (!way_out::is_mail_api(&r.target, r.port)
                    || !own_control[usize::from(r.family == Family::Ipv6)])
        };
        let ordered = results
            .iter()
            .filter(control)
            .chain(results.iter().filter(|r| !control(r)));
        for r in ordered {
            if r.outcome == Outcome::NoAddress {
                continue;
            }
            let at = measured_at(r, clock_trusted, now_unix_ms);
            let live = now_unix_ms - at <= secs_ms(self.config.replay_after_secs);
            let key = SeriesKey::of(&agent.agent_id, r);
            let is_control = control(&r);
            let control_failing = !is_control && self.control_failing(&key.agent, key.family);
            let seen = Seen {
                state: PortState::of(r.outcome),
                outcome: r.outcome,
                icmp_from: r.icmp.as_ref().and_then(|i| i.from).map(|a| a.to_string()),
                cause: r.cause,
                at_ms: at,
            };
            let series = self.series.entry(key.clone()).or_default();
            let settled = series.confirmed();
            let step = series.observe(seen, &self.config, control_failing);
            let watched = live && !is_control;
            match step {
                Step::None => {}
                Step::Departed | Step::Evidence => {
                    if step == Step::Departed && watched {
                        if let Some(settled) = settled {
                            // Once per departure: the hub asks the siblings once, and their
                            // answers are evidence of their own series.
                            self.suspicions.push(Suspicion {
                                key: key.clone(),
                                provider: info.provider.clone(),
                                account: info.account.clone(),
                                settled,
                                seen: settled.other(),
                                at_unix_ms: at,
                            });
                        }
                    }
                    if watched {
                        self.decide_account(&key, &info, now_unix_ms);
                    }
                }
                Step::Confirmed { from, to } => {
                    if watched {
                        self.push_pending(&key, from, to, now_unix_ms);
                    }
                }
                Step::FlappingStarted { from } => {
                    self.pending.retain(|p| p.key != key);
                    if watched {
                        events.push(self.series_event(
                            &key,
                            &info,
                            from.map_or(State::Unknown, State::from),
                            State::Flapping,
                            None,
                            now_unix_ms,
                        ));
                    }
                }
                Step::FlappingStopped { to } => {
                    if watched {
                        events.push(self.series_event(
                            &key,
                            &info,
                            State::Flapping,
                            to.into(),
                            None,
                            now_unix_ms,
                        ));
                    }
                }
            }
        }
        events.extend(self.attribute_settled(now_unix_ms));
        events
    }

    /// A decided change waits for the agents whose answers could still change its layer.
    fn push_pending(&mut self, key: &SeriesKey, from: PortState, to: PortState, now: i64) {
        let Some(series) = self.series.get(key) else {
            return;
        };
        let since_ms = series.departure().map_or(now, |(since, _)| since);
        self.pending.retain(|p| p.key != *key);
        self.pending.push(Pending {
            key: key.clone(),
            from,
            to,
            confirmed_at_ms: now,
            since_ms,
        });
    }

    /// The account's series on one path decide together: when every one of them is testing
    /// for the same change (or has decided it) and their evidence summed crosses the bound.
    /// Each series' own test already stops one agent's confirmations from weighing more than
    /// they should, so one agent alone cannot decide for an account of several. The group is
    /// first the account's series in the result's family; failing that, its series of the
    /// target and port over both families (an account of one agent, whose IPv4 and IPv6 both
    /// fail, is then judged on both).
    fn decide_account(&mut self, key: &SeriesKey, info: &AgentInfo, now: i64) {
        let Some(to) = self.series.get(key).and_then(|s| s.episode()).map(|e| e.to) else {
            return;
        };
        for both_families in [false, true] {
            if let Some(group) = self.account_group(key, info, to, both_families) {
                for k in group {
                    let step = self.series.get_mut(&k).and_then(|s| s.decide());
                    if let Some(Step::Confirmed { from, to }) = step {
                        self.push_pending(&k, from, to, now);
                    }
                }
                return;
            }
        }
    }

    /// The account's live series on `key`'s target and port (in its family, or in both), when
    /// there are at least two, every one is testing for `to` (or has decided it and waits to be
    /// attributed) and their evidence summed reaches the bound.
    fn account_group(
        &self,
        key: &SeriesKey,
        info: &AgentInfo,
        to: PortState,
        both_families: bool,
    ) -> Option<Vec<SeriesKey>> {
        let from = to.other();
        let siblings: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(k, s)| {
                k.target == key.target
                    && k.port == key.port
                    && (both_families || k.family == key.family)
                    && s.last().is_some()
            })
            .filter(|(k, _)| {
                self.agents.get(&k.agent).is_some_and(|a| {
                    !a.silent && a.provider == info.provider && a.account == info.account
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        if siblings.len() < 2 {
            return None;
        }
        let mut total = 0.0;
        for k in &siblings {
            let s = self.series.get(k)?;
            match s.episode() {
                Some(e) if e.to == to && s.confirmed() == Some(from) => total += e.evidence,
                None if s.confirmed() == Some(to) && self.pending.iter().any(|p| p.key == *k) => {
                    total += self.config.upper_bound();
                }
                _ => return None,
            }
        }
        (total >= self.config.upper_bound()).then_some(siblings)
    }

    /// The series that asked for evidence since the last call (see [`Suspicion`]), oldest first.
    pub fn take_suspicions(&mut self) -> Vec<Suspicion> {
        std::mem::take(&mut self.suspicions)
    }

    /// Called about every second: silence, and attribution of settled changes.
    pub fn tick(&mut self, now_unix_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let grace = secs_ms(self.config.silent_after_secs);
        let newly_silent: Vec<(String, AgentInfo)> = self
            .agents
            .iter_mut()
            .filter(|(_, a)| !a.silent && now_unix_ms - a.last_seen_ms > grace)
            .map(|(id, a)| {
                a.silent = true;
                (id.clone(), a.clone())
            })
            .collect();
        for (id, info) in newly_silent {
            events.push(self.agent_event(
                EventKind::AgentSilent,
                &id,
                &info,
                State::Reporting,
                State::Silent,
                now_unix_ms,
            ));
        }
        let accounts = self.silent_accounts.follow(&events, &self.agents);
        events.extend(accounts);
        events.extend(self.attribute_settled(now_unix_ms));
        events
    }

    /// Attributes the decided changes whose layer is settled, as one event per change. The
    /// decided changes of one (target, port, new state) are judged together over both families
    /// (the same account closing 587 over IPv4 and IPv6 a second apart is one event, not two),
    /// and they go out together once, for each family, the agents that have not said yet
    /// cannot change the layer ([`scope::settled`]) and no agent among them is still testing
    /// the same change in its other family — or once the wait for those agents is over.
    fn attribute_settled(&mut self, now_unix_ms: i64) -> Vec<Event> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let mut clusters: Vec<(String, u16, PortState)> = Vec::new();
        for p in &self.pending {
            let c = (p.key.target.clone(), p.key.port, p.to);
            if !clusters.contains(&c) {
                clusters.push(c);
            }
        }
        let mut events = Vec::new();
        for (target, port, to) in clusters {
            let paths: Vec<PathKey> = [Family::Ipv4, Family::Ipv6]
                .into_iter()
                .map(|family| (target.clone(), port, family))
                .filter(|path| self.pending.iter().any(|p| p.to == to && p.on(path)))
                .collect();
            let mut deadline = i64::MIN;
            let mut ready = true;
            for path in &paths {
                let judged = self.judge(path, to, now_unix_ms);
                deadline = deadline.max(judged.deadline_ms);
                ready &= judged.settled && !judged.twin_testing;
            }
            if !ready && now_unix_ms < deadline {
                continue;
            }
            for path in paths {
                let (members, rest): (Vec<Pending>, Vec<Pending>) =
                    std::mem::take(&mut self.pending)
                        .into_iter()
                        .partition(|p| p.to == to && p.on(&path));
                self.pending = rest;
                events.extend(self.attribute(path, to, members, now_unix_ms));
            }
        }
        self.name_ways_out(attribution::merge_families(events))
    }

    /// The evidence behind a change, for its event: one witness per series among `keys` that
    /// departed (its latest departing result).
    fn witnesses<'a>(&self, keys: impl Iterator<Item = &'a SeriesKey>) -> Vec<Witness> {
        let mut out: Vec<Witness> = keys
            .filter_map(|k| {
                let (_, seen) = self.series.get(k)?.departure()?;
                Some(Witness {
                    agent: k.agent.clone(),
                    family: k.family,
                    outcome: seen.outcome.as_str().to_string(),
                    icmp_from: seen.icmp_from.clone(),
                    cause: seen.cause,
                    at: rfc3339(seen.at_ms),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.agent, a.family).cmp(&(&b.agent, b.family)));
        out
    }

    /// The first departing probe's time among `keys`.
    fn since<'a>(&self, keys: impl Iterator<Item = &'a SeriesKey>) -> Option<String> {
        keys.filter_map(|k| self.series.get(k)?.departure().map(|(since, _)| since))
            .min()
            .map(rfc3339)
    }

    /// Whether every control-port series of the agent in this family currently fails (its
    /// mail providers' APIs count only when it probes no other target on the port).
    fn control_failing(&self, agent: &str, family: Family) -> bool {
        // (any, every one blocked) of its own control targets and of the APIs.
        let mut own = (false, true);
        let mut api = (false, true);
        for (k, s) in self.series.range(
            SeriesKey {
                agent: agent.to_string(),
                target: String::new(),
                port: 0,
                family: Family::Ipv4,
            }..,
        ) {
            if k.agent != agent {
                break;
            }
            if k.port != self.config.control_port || k.family != family {
                continue;
            }
            let seen = if way_out::is_mail_api(&k.target, k.port) {
                &mut api
            } else {
                &mut own
            };
            seen.0 = true;
            seen.1 &= s.last() == Some(PortState::Blocked);
        }
        let (any, all_blocked) = if own.0 { own } else { api };
        any && all_blocked
    }

    fn series_event(
        &self,
        key: &SeriesKey,
        info: &AgentInfo,
        from: State,
        to: State,
        outcome: Option<String>,
        now: i64,
    ) -> Event {
        self.event(
            EventKind::PolicyChanged,
            Scope::Agent,
            (
                Some(info.provider.clone()),
                Some(info.account.clone()),
                Some(key.agent.clone()),
            ),
            &(key.target.clone(), key.port, key.family),
            from,
            to,
            outcome,
            now,
        )
    }

    fn agent_event(
        &self,
        kind: EventKind,
        agent: &str,
        info: &AgentInfo,
        from: State,
        to: State,
        now: i64,
    ) -> Event {
        Event {
            kind,
            scope: Scope::Agent,
            provider: Some(info.provider.clone()),
            account: Some(info.account.clone()),
            agent: Some(agent.to_string()),
            target: None,
            port: None,
            from,
            to,
            at: rfc3339(now),
            family: None,
            id: None,
            outcome: None,
            at_unix_ms: now,
            // An agent's silence began with its last sign of life; its return is its own start.
            // Both come from the results' receive times, so a collector that rebuilt this state
            // from the store names the same change the same way.
            since: Some(rfc3339(match kind {
                EventKind::AgentSilent => info.last_seen_ms,
                _ => now,
            })),
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }
}

fn other_family(family: Family) -> Family {
    match family {
        Family::Ipv4 => Family::Ipv6,
        Family::Ipv6 => Family::Ipv4,
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
