//! The fan-out's decisions, sans IO: given a suspicion, the agents connected now and the clock,
//! which agents to ask for a probe of the suspect's destination, and — once results come back
//! marked `requested` — whether each answer is one we asked for and came in time. The shell in
//! [`super::Fanout`] only hands it what arrived and carries out the sends; every rule (who is a
//! useful witness, the budgets, the repeat window, request ids) is here and unit-tested.

use super::{ConnectedAgent, FanoutConfig};
use crate::detector::Suspicion;
use crate::identity::SeriesKey;
use egresswatch_wire::{Family, ProbeRequest};
use std::collections::{HashMap, VecDeque};

/// The wire minor that brought `ProbeRequest`; older agents would not understand one.
pub const PROBE_REQUEST_MINOR: u16 = 2;

/// The budgets are per minute.
const WINDOW_MS: i64 = 60_000;

/// How long past its deadline an answer is still recognised (and counted late) rather than
/// unknown; it bounds what the planner remembers of its requests.
const LATE_GRACE_MS: i64 = 10 * 60_000;

/// Most requests remembered at once; beyond it the oldest are forgotten (their answers then
/// count as unknown). The budgets keep the real number far below.
const MAX_OUTSTANDING: usize = 65_536;

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub agent_id: String,
    pub request: ProbeRequest,
}

/// What became of a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least one agent is to be asked.
    Asked,
    /// The fan-out is switched off.
    Disabled,
    /// The same series was asked about within the repeat window.
    Repeat,
    /// No other connected agent that takes requests probes that destination.
    NoWitness,
    /// Witnesses exist, but every one was over a budget.
    OverBudget,
}

/// The planner's answer for one suspicion.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub verdict: Verdict,
    pub requests: Vec<Planned>,
    /// Witnesses left out because they or the destination had used up their budget.
    pub dropped_budget: u64,
}

impl Plan {
    fn nothing(verdict: Verdict) -> Plan {
        Plan {
            verdict,
            requests: Vec::new(),
            dropped_budget: 0,
        }
    }
}

/// How an answer (a `requested` result) relates to what we asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    InTime,
    /// Ours, but after its deadline: stored like any result, too late to settle anything fast.
    Late,
    /// Not a request we sent (to this agent), or one already answered or long forgotten.
    Unknown,
}

#[derive(Debug, Clone)]
struct Outstanding {
    agent_id: String,
    destination: (String, u16),
    sent_at_ms: i64,
    deadline_at_ms: i64,
}

/// The fan-out's state: what was asked recently, and of whom.
#[derive(Debug)]
pub struct Planner {
    config: FanoutConfig,
    next_request_id: u64,
    asked_by_agent: HashMap<String, VecDeque<i64>>,
    asked_by_destination: HashMap<(String, u16), VecDeque<i64>>,
    /// When each series was last asked about (the repeat window).
    recent: HashMap<SeriesKey, i64>,
    outstanding: HashMap<u64, Outstanding>,
    /// Request ids in the order sent, to forget the oldest first.
    sent_order: VecDeque<u64>,
}

impl Planner {
    /// A planner whose first request id is `first_request_id` (ids then count up, so they are
    /// unique for the planner's life; the shell seeds it from the clock so that a restarted
    /// collector does not take an answer to its previous life's request for one of its own).
    pub fn new(config: FanoutConfig, first_request_id: u64) -> Planner {
        Planner {
            config,
            next_request_id: first_request_id.max(1),
            asked_by_agent: HashMap::new(),
            asked_by_destination: HashMap::new(),
            recent: HashMap::new(),
            outstanding: HashMap::new(),
            sent_order: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &FanoutConfig {
        &self.config
    }

    /// Whom to ask about `suspicion`, from the agents connected now (`connected`: those that
    /// announced the suspect's target and port, or more; the rest are ignored).
    ///
    /// Witnesses are, in this order, the other agents of the suspect's account, those of other
    /// accounts of its provider, and at most `elsewhere_per_suspicion` of other providers: what
    /// tells the agent, its account, its provider and the destination apart. The suspect is
    /// asked only about its other family (`other_family`; it re-probes the departed one by
    /// itself), first and outside `max_per_suspicion`. Never an agent older than wire 1.2 or one
    /// that said it takes no requests.
    pub fn plan(
        &mut self,
        suspicion: &Suspicion,
        connected: &[ConnectedAgent],
        now_ms: i64,
    ) -> Plan {
        if !self.config.enabled {
            return Plan::nothing(Verdict::Disabled);
        }
        self.forget_before(now_ms);
        let key = &suspicion.key;
        let repeat_ms = secs_ms(self.config.repeat_window_secs);
        if let Some(&asked) = self.recent.get(key) {
            if now_ms - asked < repeat_ms {
                return Plan::nothing(Verdict::Repeat);
            }
        }
        self.recent.insert(key.clone(), now_ms);

        let able = |a: &&ConnectedAgent| {
            a.wire_minor >= PROBE_REQUEST_MINOR
                && a.accepts_probe_requests
                && a.probes(&key.target, key.port)
        };
        let suspect = connected
            .iter()
            .filter(|_| self.config.other_family)
            .find(|a| a.agent_id == key.agent)
            .filter(able);
        let mut witnesses: Vec<&ConnectedAgent> = connected
            .iter()
            .filter(|a| a.agent_id != key.agent)
            .filter(able)
            .collect();
        if witnesses.is_empty() && suspect.is_none() {
            return Plan::nothing(Verdict::NoWitness);
        }
        let closeness = |a: &ConnectedAgent| match (
            a.provider == suspicion.provider,
            a.account == suspicion.account,
        ) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
        witnesses.sort_by(|a, b| {
            closeness(a)
                .cmp(&closeness(b))
                .then_with(|| a.agent_id.cmp(&b.agent_id))
        });
        let most = self.config.max_per_suspicion;
        let elsewhere = witnesses.iter().filter(|a| closeness(a) == 2).count();
        let elsewhere_quota = self.config.elsewhere_per_suspicion.min(elsewhere).min(most);
        let nearby_quota = most - elsewhere_quota;

        let mut plan = Plan::nothing(Verdict::OverBudget);
        if let Some(suspect) = suspect {
            let other = match key.family {
                Family::Ipv4 => Family::Ipv6,
                Family::Ipv6 => Family::Ipv4,
            };
            self.ask(&mut plan, &suspect.agent_id, key, other, now_ms);
        }
        let (mut nearby_taken, mut elsewhere_taken) = (0usize, 0usize);
        for witness in witnesses {
            let (taken, quota) = if closeness(witness) == 2 {
                (&mut elsewhere_taken, elsewhere_quota)
            } else {
                (&mut nearby_taken, nearby_quota)
            };
            if *taken >= quota {
                continue;
            }
            if self.ask(&mut plan, &witness.agent_id, key, key.family, now_ms) {
                *taken += 1;
            }
        }
        if !plan.requests.is_empty() {
            plan.verdict = Verdict::Asked;
        }
        plan
    }

    /// Adds a request to `agent_id` for `key`'s target and port over `family` when the agent's
    /// and the destination's budgets allow; whether it did.
    fn ask(
        &mut self,
        plan: &mut Plan,
        agent_id: &str,
        key: &SeriesKey,
        family: Family,
        now_ms: i64,
    ) -> bool {
        let destination = (key.target.clone(), key.port);
        if !self.within_budget(agent_id, &destination, now_ms) {
            plan.dropped_budget += 1;
            return false;
        }
        let deadline_ms = self.config.deadline_ms();
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        self.spend(agent_id, &destination, now_ms);
        self.remember(
            request_id,
            Outstanding {
                agent_id: agent_id.to_string(),
                destination,
                sent_at_ms: now_ms,
                deadline_at_ms: now_ms.saturating_add(i64::from(deadline_ms)),
            },
        );
        plan.requests.push(Planned {
            agent_id: agent_id.to_string(),
            request: ProbeRequest {
                request_id,
                target: key.target.clone(),
                port: key.port,
                family,
                deadline_ms,
            },
        });
        true
    }

    /// A planned request could not be handed to its session (the agent left between plan and
    /// send, or its queue is full): its answer would be unknown, and it spent no budget.
    pub fn undelivered(&mut self, request_id: u64) {
        let Some(gone) = self.outstanding.remove(&request_id) else {
            return;
        };
        refund(&mut self.asked_by_agent, &gone.agent_id, gone.sent_at_ms);
        refund(
            &mut self.asked_by_destination,
            &gone.destination,
            gone.sent_at_ms,
        );
    }

    /// A `requested` result of `agent_id` naming `request_id` arrived at `now_ms`.
    pub fn answered(&mut self, agent_id: &str, request_id: u64, now_ms: i64) -> Timing {
        match self.outstanding.get(&request_id) {
            Some(asked) if asked.agent_id == agent_id => {
                let timing = if now_ms <= asked.deadline_at_ms {
                    Timing::InTime
                } else {
                    Timing::Late
                };
                self.outstanding.remove(&request_id);
                timing
            }
            _ => Timing::Unknown,
        }
    }

    fn within_budget(&self, agent_id: &str, destination: &(String, u16), now_ms: i64) -> bool {
        let used = |window: Option<&VecDeque<i64>>| {
            window.map_or(0, |w| w.iter().filter(|&&t| now_ms - t < WINDOW_MS).count())
        };
        used(self.asked_by_agent.get(agent_id)) < self.config.per_agent_per_minute as usize
            && used(self.asked_by_destination.get(destination))
                < self.config.per_destination_per_minute as usize
    }

    fn spend(&mut self, agent_id: &str, destination: &(String, u16), now_ms: i64) {
        self.asked_by_agent
            .entry(agent_id.to_string())
            .or_default()
            .push_back(now_ms);
        self.asked_by_destination
            .entry(destination.clone())
            .or_default()
            .push_back(now_ms);
    }

    fn remember(&mut self, request_id: u64, asked: Outstanding) {
        while self.outstanding.len() >= MAX_OUTSTANDING {
            match self.sent_order.pop_front() {
                Some(oldest) => {
                    self.outstanding.remove(&oldest);
                }
                None => break,
            }
        }
        self.outstanding.insert(request_id, asked);
        self.sent_order.push_back(request_id);
    }

    /// Drops what no rule looks at any more, so memory follows the budgets, not uptime.
    fn forget_before(&mut self, now_ms: i64) {
        self.asked_by_agent.prune(now_ms);
        self.asked_by_destination.prune(now_ms);
        let repeat_ms = secs_ms(self.config.repeat_window_secs);
        self.recent.retain(|_, &mut at| now_ms - at < repeat_ms);
        let outstanding = &mut self.outstanding;
        outstanding.retain(|_, o| now_ms <= o.deadline_at_ms.saturating_add(LATE_GRACE_MS));
        self.sent_order.retain(|id| outstanding.contains_key(id));
    }
}

/// Budget windows that forget what is older than a minute.
trait Prune {
    fn prune(&mut self, now_ms: i64);
}

impl<K: std::hash::Hash + Eq> Prune for HashMap<K, VecDeque<i64>> {
    fn prune(&mut self, now_ms: i64) {
        self.retain(|_, window| {
            while window.front().is_some_and(|&t| now_ms - t >= WINDOW_MS) {
                window.pop_front();
            }
            !window.is_empty()
        });
    }
}

fn refund<K, Q>(windows: &mut HashMap<K, VecDeque<i64>>, key: &Q, sent_at_ms: i64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(window) = windows.get_mut(key) {
        if let Some(i) = window.iter().rposition(|&t| t == sent_at_ms) {
            window.remove(i);
        }
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::PortState;

    const T0: i64 = 1_000_000;

    fn suspicion(agent: &str) -> Suspicion {
        Suspicion {
            key: SeriesKey {
                agent: agent.into(),
                target: "mx.lab.test".into(),
                port: 587,
                family: Family::Ipv4,
            },
            provider: "aws".into(),
            account: "prod".into(),
            settled: PortState::Open,
            seen: PortState::Blocked,
            at_unix_ms: T0,
        }
    }

    fn agent(id: &str, provider: &str, account: &str) -> ConnectedAgent {
        ConnectedAgent {
            agent_id: id.into(),
            provider: provider.into(),
            account: account.into(),
            targets: vec![("mx.lab.test".into(), vec![25, 587])],
            wire_minor: PROBE_REQUEST_MINOR,
            accepts_probe_requests: true,
        }
    }

    fn asked(plan: &Plan) -> Vec<&str> {
        plan.requests.iter().map(|p| p.agent_id.as_str()).collect()
    }

    fn planner(config: FanoutConfig) -> Planner {
        Planner::new(config, 1)
    }

    #[test]
    fn the_suspects_other_family_then_siblings_of_the_account_then_the_provider_then_a_few_elsewhere(
    ) {
        let fleet = vec![
            agent("suspect", "aws", "prod"),
            agent("p-2", "aws", "prod"),
            agent("p-1", "aws", "prod"),
            agent("dev-1", "aws", "dev"),
            agent("g-1", "gcp", "x"),
            agent("g-2", "gcp", "y"),
            agent("h-1", "hetzner", "z"),
        ];
        let mut p = planner(FanoutConfig::default());
        let plan = p.plan(&suspicion("suspect"), &fleet, T0);
        assert_eq!(plan.verdict, Verdict::Asked);
        assert_eq!(
            asked(&plan),
            vec!["suspect", "p-1", "p-2", "dev-1", "g-1", "g-2"]
        );
        let twin = &plan.requests[0].request;
        assert_eq!((twin.port, twin.family), (587, Family::Ipv6));
        let first = &plan.requests[1].request;
        assert_eq!(
            (
                first.target.as_str(),
                first.port,
                first.family,
                first.deadline_ms
            ),
            ("mx.lab.test", 587, Family::Ipv4, 15_000)
        );
    }

    #[test]
    fn request_ids_are_unique() {
        let fleet: Vec<_> = (0..5)
            .map(|i| agent(&format!("a{i}"), "aws", "prod"))
            .collect();
        let mut p = planner(FanoutConfig::default());
        let mut ids: Vec<u64> = Vec::new();
        for port in [25, 587] {
            let mut s = suspicion("a0");
            s.key.port = port;
            ids.extend(
                p.plan(&s, &fleet, T0)
                    .requests
                    .iter()
                    .map(|r| r.request.request_id),
            );
        }
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        // Each suspicion: a0's other family and the four others.
        assert_eq!((ids.len(), count), (10, 10));
    }

    #[test]
    fn an_old_agent_and_one_that_takes_no_requests_are_never_asked() {
        let mut old = agent("old", "aws", "prod");
        old.wire_minor = 1;
        let mut refuses = agent("refuses", "aws", "prod");
        refuses.accepts_probe_requests = false;
        let fleet = vec![old, refuses, agent("new", "aws", "prod")];
        let plan = planner(FanoutConfig::default()).plan(&suspicion("suspect"), &fleet, T0);
        assert_eq!(asked(&plan), vec!["new"]);
        let plan = planner(FanoutConfig::default()).plan(&suspicion("suspect"), &fleet[..2], T0);
        assert_eq!((plan.verdict, plan.requests.len()), (Verdict::NoWitness, 0));
    }

    #[test]
    fn an_agent_alone_is_asked_for_its_other_family_unless_that_is_switched_off() {
        let fleet = vec![agent("suspect", "aws", "prod")];
        let plan = planner(FanoutConfig::default()).plan(&suspicion("suspect"), &fleet, T0);
        assert_eq!(plan.verdict, Verdict::Asked);
        assert_eq!(asked(&plan), vec!["suspect"]);
        assert_eq!(plan.requests[0].request.family, Family::Ipv6);
        let config = FanoutConfig {
            other_family: false,
            ..FanoutConfig::default()
        };
        let plan = planner(config).plan(&suspicion("suspect"), &fleet, T0);
        assert_eq!((plan.verdict, plan.requests.len()), (Verdict::NoWitness, 0));
    }

    #[test]
    fn switched_off_it_asks_nobody() {
        let config = FanoutConfig {
            enabled: false,
            ..FanoutConfig::default()
        };
        let plan = planner(config).plan(&suspicion("s"), &[agent("a", "aws", "prod")], T0);
        assert_eq!((plan.verdict, plan.requests.len()), (Verdict::Disabled, 0));
    }

    #[test]
    fn no_agent_elsewhere_probes_that_target_so_only_siblings_are_asked() {
        let mut elsewhere = agent("g-1", "gcp", "x");
        elsewhere.targets = vec![("mx.other.test".into(), vec![587])];
        let mut other_port = agent("g-2", "gcp", "x");
        other_port.targets = vec![("mx.lab.test".into(), vec![25])];
        let fleet = vec![elsewhere, other_port, agent("p-1", "aws", "prod")];
        let plan = planner(FanoutConfig::default()).plan(&suspicion("s"), &fleet, T0);
        assert_eq!(asked(&plan), vec!["p-1"]);
        let plan = planner(FanoutConfig::default()).plan(&suspicion("s"), &fleet[..2], T0);
        assert_eq!(plan.verdict, Verdict::NoWitness);
    }

    #[test]
    fn at_most_n_per_suspicion_with_room_kept_for_elsewhere() {
        let mut fleet: Vec<_> = (0..10)
            .map(|i| agent(&format!("p{i}"), "aws", "prod"))
            .collect();
        fleet.push(agent("g", "gcp", "x"));
        let config = FanoutConfig {
            max_per_suspicion: 3,
            elsewhere_per_suspicion: 1,
            ..FanoutConfig::default()
        };
        let plan = planner(config).plan(&suspicion("s"), &fleet, T0);
        assert_eq!(asked(&plan), vec!["p0", "p1", "g"]);
        assert_eq!(
            plan.dropped_budget, 0,
            "left out by the cap, not by a budget"
        );
    }

    #[test]
    fn the_same_series_is_asked_once_within_the_repeat_window() {
        let fleet = vec![agent("a", "aws", "prod")];
        let mut p = planner(FanoutConfig::default());
        assert_eq!(p.plan(&suspicion("s"), &fleet, T0).verdict, Verdict::Asked);
        let again = p.plan(&suspicion("s"), &fleet, T0 + 59_000);
        assert_eq!((again.verdict, again.requests.len()), (Verdict::Repeat, 0));
        let mut other_family = suspicion("s");
        other_family.key.family = Family::Ipv6;
        assert_eq!(
            p.plan(&other_family, &fleet, T0 + 1).verdict,
            Verdict::Asked
        );
        assert_eq!(
            p.plan(&suspicion("s"), &fleet, T0 + 60_000).verdict,
            Verdict::Asked
        );
    }

    #[test]
    fn an_agent_over_its_budget_is_left_out_and_counted_until_the_minute_passes() {
        let fleet = vec![agent("a", "aws", "prod"), agent("b", "aws", "prod")];
        let config = FanoutConfig {
            per_agent_per_minute: 1,
            ..FanoutConfig::default()
        };
        let mut p = planner(config);
        assert_eq!(asked(&p.plan(&suspicion("s"), &fleet, T0)), vec!["a", "b"]);
        let mut other = suspicion("s");
        other.key.port = 25;
        let over = p.plan(&other, &fleet, T0 + 1_000);
        assert_eq!(
            (over.verdict, over.dropped_budget),
            (Verdict::OverBudget, 2)
        );
        let mut later = suspicion("s");
        later.key.family = Family::Ipv6;
        assert_eq!(asked(&p.plan(&later, &fleet, T0 + 60_000)), vec!["a", "b"]);
    }

    #[test]
    fn a_destination_over_its_budget_asks_nobody_more() {
        let fleet: Vec<_> = (0..4)
            .map(|i| agent(&format!("a{i}"), "aws", "prod"))
            .collect();
        let config = FanoutConfig {
            per_destination_per_minute: 3,
            ..FanoutConfig::default()
        };
        let mut p = planner(config);
        let first = p.plan(&suspicion("x"), &fleet, T0);
        assert_eq!((first.requests.len(), first.dropped_budget), (3, 1));
        let mut v6 = suspicion("y");
        v6.key.family = Family::Ipv6;
        let second = p.plan(&v6, &fleet, T0 + 1);
        assert_eq!(
            (second.verdict, second.dropped_budget),
            (Verdict::OverBudget, 4)
        );
    }

    #[test]
    fn answers_in_time_late_and_unknown() {
        let fleet = vec![agent("a", "aws", "prod"), agent("b", "aws", "prod")];
        let mut p = planner(FanoutConfig::default());
        let plan = p.plan(&suspicion("s"), &fleet, T0);
        let (to_a, to_b) = (
            plan.requests[0].request.request_id,
            plan.requests[1].request.request_id,
        );
        assert_eq!(p.answered("a", to_a, T0 + 15_000), Timing::InTime);
        assert_eq!(
            p.answered("a", to_a, T0 + 15_000),
            Timing::Unknown,
            "answered once"
        );
        assert_eq!(
            p.answered("a", to_b, T0 + 1),
            Timing::Unknown,
            "not asked of a"
        );
        assert_eq!(p.answered("b", to_b, T0 + 15_001), Timing::Late);
        assert_eq!(p.answered("b", 424_242, T0), Timing::Unknown);
    }

    #[test]
    fn requests_are_forgotten_long_after_their_deadline() {
        let fleet = vec![agent("a", "aws", "prod")];
        let mut p = planner(FanoutConfig::default());
        let id = p.plan(&suspicion("s"), &fleet, T0).requests[0]
            .request
            .request_id;
        let much_later = T0 + 15_000 + LATE_GRACE_MS + 1;
        let mut other = suspicion("s");
        other.key.port = 25;
        p.plan(&other, &fleet, much_later);
        assert_eq!(p.answered("a", id, much_later), Timing::Unknown);
    }

    #[test]
    fn an_agent_that_disconnected_between_plan_and_send_spends_no_budget() {
        let fleet = vec![agent("gone", "aws", "prod")];
        let config = FanoutConfig {
            per_agent_per_minute: 1,
            ..FanoutConfig::default()
        };
        let mut p = planner(config);
        let id = p.plan(&suspicion("s"), &fleet, T0).requests[0]
            .request
            .request_id;
        p.undelivered(id);
        assert_eq!(p.answered("gone", id, T0 + 1), Timing::Unknown);
        // Back within the minute, it can be asked again: the undelivered request cost nothing.
        let mut other = suspicion("s");
        other.key.port = 25;
        assert_eq!(asked(&p.plan(&other, &fleet, T0 + 2)), vec!["gone"]);
    }
}
