//! Evidence on demand: when the detector suspects a series changed ([`Suspicion`]), the hub asks
//! other connected agents that probe the same target and port to probe it now, over their
//! existing sessions, instead of waiting intervals for the schedule to confirm it. The agents of
//! the suspect's account, of its provider and a few elsewhere answer with ordinary results
//! marked `requested`, and those settle whether the agent, its account, its provider or the
//! destination changed.
//!
//! [`planner`] decides (sans IO): whom to ask, within which budgets, with which request ids, and
//! whether an answer is ours and in time. [`Fanout`] is the thin shell the hub calls: it asks the
//! live sessions ([`Sessions`], kept by ingest) for the witnesses, plans, hands each request to
//! its session without ever waiting, and counts ([`counters`]).

pub mod counters;
pub mod planner;

use crate::detector::Suspicion;
use crate::identity::{AgentMeta, KnownAgent};
use crate::metrics::Metrics;
pub use counters::{FanoutCounters, RequestResult};
use egresswatch_wire::{Hello, ProbeCause, ProbeRequest, ProbeResult};
pub use planner::{Plan, Planned, Planner, Timing, Verdict};
use serde::Deserialize;
use std::sync::{Arc, Mutex, OnceLock};

/// `[fanout]` in the collector's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Ask other agents to probe a suspect destination at once.
    pub enabled: bool,
    /// Most requests one agent is sent per minute (it has a budget of its own too).
    pub per_agent_per_minute: u32,
    /// Most requests about one destination (target and port) per minute, over all agents.
    pub per_destination_per_minute: u32,
    /// Most agents asked about one suspicion.
    pub max_per_suspicion: usize,
    /// Of those, most agents of other providers than the suspect's.
    pub elsewhere_per_suspicion: usize,
    /// Also ask the suspect itself to probe the same target and port over its other family
    /// (its own re-probes cover only the family that departed): a change of the path over both
    /// families is then settled by both at once.
    pub other_family: bool,
    /// A suspicion of a series asked about less than this long ago is not asked again.
    pub repeat_window_secs: u64,
    /// How long an answer is useful, from the request: the agent's name lookup and probe
    /// timeouts (5 s each by default) and a margin for its batching.
    pub deadline_secs: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            enabled: true,
            per_agent_per_minute: 6,
            per_destination_per_minute: 30,
            max_per_suspicion: 8,
            elsewhere_per_suspicion: 2,
            other_family: true,
            repeat_window_secs: 60,
            deadline_secs: 15,
        }
    }
}

impl FanoutConfig {
    /// The deadline as the wire carries it.
    pub fn deadline_ms(&self) -> u32 {
        u32::try_from(self.deadline_secs.saturating_mul(1000)).unwrap_or(u32::MAX)
    }
}

/// A connected agent as the fan-out sees it: who it is (labels normalised as the detector
/// normalises them, so it compares with a [`Suspicion`]'s), what it probes and whether it takes
/// requests — all from its hello.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConnectedAgent {
    pub agent_id: String,
    pub provider: String,
    pub account: String,
    /// Each announced target with its ports.
    pub targets: Vec<(String, Vec<u16>)>,
    pub wire_minor: u16,
    pub accepts_probe_requests: bool,
}

impl ConnectedAgent {
    /// The agent `agent` (as its hello was accepted) that said `hello`.
    pub fn from_hello(agent: &AgentMeta, hello: &Hello) -> ConnectedAgent {
        let known = KnownAgent::new(agent, 0);
        ConnectedAgent {
            agent_id: agent.agent_id.clone(),
            provider: known.provider,
            account: known.account,
            targets: hello
                .targets
                .iter()
                .map(|t| (t.host.clone(), t.ports.clone()))
                .collect(),
            wire_minor: hello.wire_minor,
            accepts_probe_requests: hello.accepts_probe_requests,
        }
    }

    /// Whether it announced probing `target` on `port`.
    pub fn probes(&self, target: &str, port: u16) -> bool {
        self.targets
            .iter()
            .any(|(host, ports)| host.eq_ignore_ascii_case(target) && ports.contains(&port))
    }
}

/// Whether a request reached its session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The session has not written its earlier requests yet; this one is dropped.
    Full,
    /// The agent is not connected (any more).
    Disconnected,
}

/// The live sessions, as ingest keeps them.
pub trait Sessions: Send + Sync {
    /// The connected agents that announced probing `target` on `port`.
    fn probing(&self, target: &str, port: u16) -> Vec<ConnectedAgent>;
    /// Queues `request` for `agent_id`'s session, never waiting.
    fn try_send(&self, agent_id: &str, request: ProbeRequest) -> Delivery;
}

/// The shell the hub calls.
pub struct Fanout {
    planner: Mutex<Planner>,
    sessions: OnceLock<Arc<dyn Sessions>>,
    counters: FanoutCounters,
}

impl Fanout {
    /// A fan-out with its counters registered in `metrics`; it asks nobody until [`Fanout::connect`].
    pub fn new(config: FanoutConfig, metrics: &Metrics, now_unix_ms: i64) -> Fanout {
        // Request ids start from the clock (in µs), so a restarted collector does not reuse the
        // ids its previous life sent and take a late answer to one for an answer of its own.
        let first_id = u64::try_from(now_unix_ms).unwrap_or(1).saturating_mul(1000);
        Fanout {
            planner: Mutex::new(Planner::new(config, first_id)),
            sessions: OnceLock::new(),
            counters: FanoutCounters::register(metrics),
        }
    }

    /// The live sessions to ask (set once, when ingest starts).
    pub fn connect(&self, sessions: Arc<dyn Sessions>) {
        let _ = self.sessions.set(sessions);
    }

    fn planner(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.planner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks witnesses about each suspicion; never waits on a session.
    pub fn on_suspicions(&self, suspicions: &[Suspicion], now_unix_ms: i64) {
        if suspicions.is_empty() {
            return;
        }
        let Some(sessions) = self.sessions.get() else {
            return;
        };
        for suspicion in suspicions {
            let mut planner = self.planner();
            if !planner.config().enabled {
                self.counters.suspicion(Verdict::Disabled);
                continue;
            }
            let connected = sessions.probing(&suspicion.key.target, suspicion.key.port);
            let plan = planner.plan(suspicion, &connected, now_unix_ms);
            self.counters.suspicion(plan.verdict);
            self.counters
                .requests(RequestResult::DroppedBudget, plan.dropped_budget);
            for Planned { agent_id, request } in plan.requests {
                let request_id = request.request_id;
                let result = match sessions.try_send(&agent_id, request) {
                    Delivery::Queued => RequestResult::Sent,
                    Delivery::Full => RequestResult::DroppedFull,
                    Delivery::Disconnected => RequestResult::DroppedDisconnected,
                };
                if result != RequestResult::Sent {
                    planner.undelivered(request_id);
                }
                self.counters.requests(result, 1);
            }
        }
    }

    /// Counts the answers among `agent_id`'s newly stored results.
    pub fn on_results(&self, agent_id: &str, results: &[ProbeResult], now_unix_ms: i64) {
        let mut answers = results
            .iter()
            .filter(|r| r.cause == ProbeCause::Requested)
            .peekable();
        if answers.peek().is_none() {
            return;
        }
        let mut planner = self.planner();
        for answer in answers {
            let timing = match answer.request_id {
                Some(id) => planner.answered(agent_id, id, now_unix_ms),
                None => Timing::Unknown,
            };
            self.counters.answer(timing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::PortState;
    use crate::identity::SeriesKey;
    use crate::ingest::registry::SessionRegistry;
    use egresswatch_wire::Family;

    fn agent(id: &str) -> ConnectedAgent {
        ConnectedAgent {
            agent_id: id.into(),
            provider: "aws".into(),
            account: "prod".into(),
            targets: vec![("mx.lab.test".into(), vec![587])],
            wire_minor: 2,
            accepts_probe_requests: true,
        }
    }

    fn suspicion() -> Suspicion {
        Suspicion {
            key: SeriesKey {
                agent: "suspect".into(),
                target: "mx.lab.test".into(),
                port: 587,
                family: Family::Ipv4,
            },
            provider: "aws".into(),
            account: "prod".into(),
            settled: PortState::Open,
            seen: PortState::Blocked,
            at_unix_ms: 1_000,
        }
    }

    fn sample(metrics: &Metrics, series: &str) -> u64 {
        let text = metrics.render();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {text}"))
    }

    #[test]
    fn a_session_gone_between_plan_and_send_is_counted_and_the_others_are_asked() {
        let metrics = Metrics::new();
        let fanout = Fanout::new(FanoutConfig::default(), &metrics, 1_000);
        let registry = Arc::new(SessionRegistry::default());
        fanout.connect(registry.clone());
        let (_live, mut live_requests) = registry.register(agent("live"));
        // Its session task has ended; its entry is not cleaned up yet.
        let (_gone, gone_requests) = registry.register(agent("gone"));
        drop(gone_requests);
        fanout.on_suspicions(&[suspicion()], 2_000);
        let request = live_requests.try_recv().expect("the live agent is asked");
        assert_eq!(
            (request.target.as_str(), request.port),
            ("mx.lab.test", 587)
        );
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_requests_total{result=\"sent\"}"
            ),
            1
        );
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_requests_total{result=\"dropped_disconnected\"}"
            ),
            1
        );

        let answer = |id| ProbeResult {
            target: "mx.lab.test".into(),
            port: 587,
            cause: ProbeCause::Requested,
            request_id: Some(id),
            ..Default::default()
        };
        let scheduled = ProbeResult::default();
        fanout.on_results(
            "live",
            &[scheduled, answer(request.request_id), answer(7)],
            3_000,
        );
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_answers_total{timing=\"in_time\"}"
            ),
            1
        );
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_answers_total{timing=\"unknown\"}"
            ),
            1
        );
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_answers_total{timing=\"late\"}"
            ),
            0
        );
    }

    #[test]
    fn switched_off_nothing_is_sent() {
        let metrics = Metrics::new();
        let config = FanoutConfig {
            enabled: false,
            ..FanoutConfig::default()
        };
        let fanout = Fanout::new(config, &metrics, 1_000);
        let registry = Arc::new(SessionRegistry::default());
        fanout.connect(registry.clone());
        let (_live, mut requests) = registry.register(agent("live"));
        fanout.on_suspicions(&[suspicion()], 2_000);
        assert!(requests.try_recv().is_err());
        assert_eq!(
            sample(
                &metrics,
                "egresswatch_fanout_suspicions_total{result=\"disabled\"}"
            ),
            1
        );
    }
}
