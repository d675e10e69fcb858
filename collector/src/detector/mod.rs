//! Change detection that names the layer. A plain state machine: results and the clock go in,
//! [`Event`]s come out; no I/O, no wall clock, no sleeping.
//!
//! Per series (agent, target, port, family) a new state is confirmed only after N consistent
//! probes (hysteresis, [`series`]). Confirmed changes wait a short settling window so that
//! siblings' confirmations can be seen together, then are attributed using every series at once:
//! the agent's 443 control failing too means its network went away (no SMTP event); every agent
//! failing on one target/port (across providers, or while other targets still answer) is the
//! destination; all agents of an account together is the account; all accounts of a provider is
//! the provider; otherwise the agent.

mod attribution;
mod series;
mod suspicion;

use crate::events::{rfc3339, Event, EventKind, Scope, State};
pub use crate::identity::SeriesKey;
use crate::identity::{measured_at, AgentMeta, KnownAgent};
use egresswatch_wire::{Family, Outcome, ProbeResult};
use serde::Deserialize;
pub use series::PortState;
use series::{Series, Step};
use std::collections::{BTreeMap, BTreeSet};
pub use suspicion::Suspicion;

/// `[detector]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Consistent probes needed before a series' new state is confirmed.
    pub confirm_probes: u32,
    /// The longest a confirmed change waits for its siblings before it is attributed; the wait
    /// is one probe interval of the series (as observed) when that is shorter.
    pub settle_secs: u64,
    /// An agent unheard of for this long is `agent_silent`.
    pub silent_after_secs: u64,
    /// A result that arrives more than this after it was measured is a replay (spool drained
    /// after an outage): it updates state and history but raises no alert.
    pub replay_after_secs: u64,
    /// Deprecated: the matrix's freshness, now `[matrix] fresh_secs`; still read when that is
    /// not set (with a warning).
    pub fresh_secs: Option<u64>,
    /// Probes in the flapping window (Nagios uses 21).
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
            confirm_probes: 3,
            settle_secs: 60,
            silent_after_secs: 180,
            replay_after_secs: 300,
            fresh_secs: None,
            flap_window: 21,
            flap_high_pct: 50.0,
            flap_low_pct: 25.0,
            control_port: 443,
            min_agents_for_outage: 2,
            min_accounts_for_provider: 2,
        }
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
    /// How long this change waits for its siblings: about one probe interval of its series,
    /// capped by `settle_secs`.
    settle_ms: i64,
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
            return vec![self.agent_event(
                EventKind::AgentBack,
                &agent.agent_id,
                &info,
                State::Silent,
                State::Reporting,
                now_unix_ms,
            )];
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

    /// Feeds newly stored results. Returns the events that cannot wait for settling (an agent
    /// coming back, a series starting to flap); confirmed changes come out of [`Detector::tick`].
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
        for r in results {
            if r.outcome == Outcome::NoAddress {
                continue;
            }
            let at = measured_at(r, clock_trusted, now_unix_ms);
            let live = now_unix_ms - at <= secs_ms(self.config.replay_after_secs);
            let key = SeriesKey::of(&agent.agent_id, r);
            let is_control = r.port == self.config.control_port;
            let control_failing = !is_control && self.control_failing(&key.agent, key.family);
            let series = self.series.entry(key.clone()).or_default();
            let seen = PortState::of(r.outcome);
            if let Some(settled) = series.confirmed() {
                if live && !is_control && settled != seen && series.last() == Some(settled) {
                    self.suspicions.push(Suspicion {
                        key: key.clone(),
                        provider: info.provider.clone(),
                        account: info.account.clone(),
                        settled,
                        seen,
                        at_unix_ms: at,
                    });
                }
            }
            let step = series.observe(
                PortState::of(r.outcome),
                r.outcome,
                at,
                &self.config,
                control_failing,
            );
            match step {
                Step::None => {}
                Step::Confirmed { from, to } => {
                    let cap = secs_ms(self.config.settle_secs);
                    let settle_ms = series
                        .interval_ms()
                        .map_or(cap, |i| i.clamp(1_000, cap.max(1_000)));
                    if live && !is_control {
                        self.pending.retain(|p| p.key != key);
                        self.pending.push(Pending {
                            key,
                            from,
                            to,
                            confirmed_at_ms: now_unix_ms,
                            settle_ms,
                        });
                    }
                }
                Step::FlappingStarted { from } => {
                    self.pending.retain(|p| p.key != key);
                    if live && !is_control {
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
                    if live && !is_control {
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
        events
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
        // A change is attributed once every pending change of its (target, port, new state) is
        // settled, over both families together: the same account closing 587 over IPv4 and IPv6
        // a second apart is one event, not two.
        let mut clusters: Vec<(String, u16, PortState, i64)> = Vec::new();
        for p in &self.pending {
            let deadline = p.confirmed_at_ms + p.settle_ms;
            match clusters
                .iter_mut()
                .find(|c| c.0 == p.key.target && c.1 == p.key.port && c.2 == p.to)
            {
                Some(c) => c.3 = c.3.max(deadline),
                None => clusters.push((p.key.target.clone(), p.key.port, p.to, deadline)),
            }
        }
        clusters.retain(|c| c.3 <= now_unix_ms);
        clusters.sort_by_key(|c| c.3);
        for (target, port, to, _) in clusters {
            for family in [Family::Ipv4, Family::Ipv6] {
                let path: PathKey = (target.clone(), port, family);
                let (members, rest): (Vec<Pending>, Vec<Pending>) =
                    std::mem::take(&mut self.pending)
                        .into_iter()
                        .partition(|p| {
                            p.to == to
                                && p.key.target == path.0
                                && p.key.port == path.1
                                && p.key.family == path.2
                        });
                self.pending = rest;
                if !members.is_empty() {
                    events.extend(self.attribute(path, to, members, now_unix_ms));
                }
            }
        }
        attribution::merge_families(events)
    }

    /// Whether every control-port series of the agent in this family currently fails.
    fn control_failing(&self, agent: &str, family: Family) -> bool {
        let mut any = false;
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
            any = true;
            if s.last() != Some(PortState::Blocked) {
                return false;
            }
        }
        any
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
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
