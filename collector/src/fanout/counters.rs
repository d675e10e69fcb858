//! The fan-out's counters in `/metrics`: suspicions by what became of them, requests by whether
//! they reached a session, and answers by whether they came in time. Every label value is
//! present from the start, at 0, so a dashboard can tell "none" from "not counted".

use super::planner::{Timing, Verdict};
use crate::metrics::{label, Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What became of a planned request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Sent,
    /// A witness (or the destination) had used up its per-minute budget.
    DroppedBudget,
    /// The witness's session ended between plan and send.
    DroppedDisconnected,
    /// The witness's session had not written its earlier requests yet.
    DroppedFull,
}

impl RequestResult {
    const ALL: [RequestResult; 4] = [
        RequestResult::Sent,
        RequestResult::DroppedBudget,
        RequestResult::DroppedDisconnected,
        RequestResult::DroppedFull,
    ];

    fn name(self) -> &'static str {
        match self {
            RequestResult::Sent => "sent",
            RequestResult::DroppedBudget => "dropped_budget",
            RequestResult::DroppedDisconnected => "dropped_disconnected",
            RequestResult::DroppedFull => "dropped_full",
        }
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Asked => "asked",
        Verdict::Disabled => "disabled",
        Verdict::Repeat => "repeat",
        Verdict::NoWitness => "no_witness",
        Verdict::OverBudget => "over_budget",
    }
}

fn timing_name(timing: Timing) -> &'static str {
    match timing {
        Timing::InTime => "in_time",
        Timing::Late => "late",
        Timing::Unknown => "unknown",
    }
}

/// Cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct FanoutCounters {
    suspicions: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    answers: Family<Labels, Counter>,
}

impl FanoutCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> FanoutCounters {
        let counters = FanoutCounters {
            suspicions: metrics.registered(
                "egresswatch_fanout_suspicions",
                "Suspected changes the fan-out considered, by what became of them",
            ),
            requests: metrics.registered(
                "egresswatch_fanout_requests",
                "Probe requests planned for other agents, by whether they were sent",
            ),
            answers: metrics.registered(
                "egresswatch_fanout_answers",
                "Requested results received, by whether they answered a request of ours in time",
            ),
        };
        for verdict in [
            Verdict::Asked,
            Verdict::Disabled,
            Verdict::Repeat,
            Verdict::NoWitness,
            Verdict::OverBudget,
        ] {
            let _ = counters
                .suspicions
                .get_or_create(&label("result", verdict_name(verdict)));
        }
        for result in RequestResult::ALL {
            let _ = counters
                .requests
                .get_or_create(&label("result", result.name()));
        }
        for timing in [Timing::InTime, Timing::Late, Timing::Unknown] {
            let _ = counters
                .answers
                .get_or_create(&label("timing", timing_name(timing)));
        }
        counters
    }

    pub fn suspicion(&self, verdict: Verdict) {
        self.suspicions
            .get_or_create(&label("result", verdict_name(verdict)))
            .inc();
    }

    pub fn requests(&self, result: RequestResult, count: u64) {
        if count > 0 {
            self.requests
                .get_or_create(&label("result", result.name()))
                .inc_by(count);
        }
    }

    pub fn answer(&self, timing: Timing) {
        self.answers
            .get_or_create(&label("timing", timing_name(timing)))
            .inc();
    }
}
