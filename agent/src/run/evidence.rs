//! Evidence on demand, decided without sockets or clocks of its own (the caller passes `now`).
//! [`Evidence`] keeps a small memory per series (target, port, family): the open/blocked state
//! its last results agreed on. A result that departs from it is *news*: the uplink sends it at
//! once instead of letting it linger, and a scheduled one earns a few confirmation probes at
//! short spacing, so a closing port is settled in seconds rather than after several intervals.
//! The same memory judges the collector's probe requests: only a (target, port) this agent is
//! configured to probe, within a per-minute budget, before the request's deadline.
//!
//! Bounds keep it polite whatever happens: confirmation probes per destination host per minute,
//! requested probes per minute, and one confirmation run per series at a time.
//!
//! Confirmations keep the politeness floor between them when the departing probe reached the
//! destination's service (it connected: a greeting, EHLO or TLS failed). When it never
//! connected — no answer to the SYN, a reset or an ICMP error — the destination's SMTP server
//! never saw it, and a confirmation is one more SYN at most: those run at the shorter
//! `unconnected_spacing`, start to start, still within the per-destination budget a minute.
//!
//! A scheduled probe of an open series whose connection attempt is still unanswered after
//! `unanswered_after` (past the kernel's first SYN retransmission, so one lost SYN does not
//! count) is most likely the departure that its timeout will report: its confirmations start
//! then, alongside it, instead of after the timeout, and the departure is settled that much
//! sooner. If it connects after all, they were a few SYNs within the same budget, and the
//! collector weighs confirmations only inside a test a departing result started.

use egresswatch_wire::{Family, Level, PortState, ProbeCause, ProbeRequest, ProbeResult};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Consecutive agreeing results that settle a series' state anew (a first result settles it).
pub const SETTLE_AFTER: u32 = 2;
const MINUTE: Duration = Duration::from_secs(60);

/// The `[evidence]` settings the decisions follow (validated by the config).
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceSettings {
    /// Confirmation probes after a departure; 0 turns confirmations off.
    pub confirm_probes: u32,
    /// Between one confirmation probe's start and the next (already raised to the floor).
    pub confirm_spacing: Duration,
    /// The same for a departure that never connected (see the module's note): below the floor.
    pub unconnected_spacing: Duration,
    /// A scheduled probe of an open series whose connection attempt is unanswered this long
    /// starts its confirmations then (see the module's note); at or above the probe timeout,
    /// never.
    pub unanswered_after: Duration,
    /// Most confirmation probes to one destination host in any minute.
    pub confirm_per_destination_per_minute: u32,
    /// Whether the collector's probe requests are answered at all.
    pub answer_probe_requests: bool,
    /// Most requested probes in any minute.
    pub requests_per_minute: u32,
}

impl Default for EvidenceSettings {
    fn default() -> Self {
        EvidenceSettings {
            confirm_probes: 3,
            confirm_spacing: Duration::from_secs(10),
            unconnected_spacing: Duration::from_secs(1),
            unanswered_after: Duration::from_millis(1500),
            confirm_per_destination_per_minute: 6,
            answer_probe_requests: true,
            requests_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesId {
    target: String,
    port: u16,
    family: Family,
}

#[derive(Debug, Default)]
struct SeriesMemory {
    settled: Option<PortState>,
    /// The state the latest results agree on, and how many in a row.
    streak: Option<(PortState, u32)>,
    /// A confirmation run is under way: no second one starts.
    confirming: bool,
}

/// What to do after a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The result departs from its series' settled state: send it at once.
    pub departs: bool,
    /// Confirmation probes to run now (0: none), `spacing` apart.
    pub confirmations: u32,
    pub spacing: Duration,
    /// The departure never connected: its confirmations start `spacing` apart (start to
    /// start, overlapping when they time out) while the schedule goes on; otherwise each
    /// waits for the one before and the series' next scheduled probe waits for them.
    pub unconnected: bool,
}

impl Judged {
    /// Whether the uplink should send this result at once rather than let it linger.
    pub fn urgent(&self, cause: ProbeCause) -> bool {
        self.departs || cause != ProbeCause::Scheduled
    }
}

/// A series this agent is configured to probe, as a request must name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Configured {
    pub host: String,
    pub ports: Vec<u16>,
    pub level: Level,
}

/// The answer to a probe request.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestVerdict {
    /// Probe `target`:`port` over `family` at `level` now, unless `deadline` passed first.
    Probe {
        request_id: u64,
        target: String,
        port: u16,
        family: Family,
        level: Level,
        deadline: Instant,
    },
    /// Not answered, and why (for the debug log).
    Drop(&'static str),
}

/// The agent's memory of its series and its budgets.
#[derive(Debug)]
pub struct Evidence {
    settings: EvidenceSettings,
    series: HashMap<SeriesId, SeriesMemory>,
    /// Starts of confirmation probes granted per destination host, within the last minute.
    confirmations_granted: HashMap<String, VecDeque<Instant>>,
    requests_granted: VecDeque<Instant>,
    /// Requests not answered since start.
    pub requests_dropped: u64,
}

/// Forgets grants older than a minute; whether another fits under `limit`.
fn room(granted: &mut VecDeque<Instant>, limit: u32, now: Instant) -> u32 {
    while granted
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= MINUTE)
    {
        granted.pop_front();
    }
    limit.saturating_sub(granted.len() as u32)
}

/// A confirmation run for a series, as many probes as the destination's budget has room for;
/// none while the series has one under way.
fn grant(
    memory: &mut SeriesMemory,
    granted: &mut HashMap<String, VecDeque<Instant>>,
    settings: &EvidenceSettings,
    target: &str,
    now: Instant,
) -> u32 {
    if memory.confirming || settings.confirm_probes == 0 {
        return 0;
    }
    let granted = granted.entry(target.to_string()).or_default();
    let left = room(granted, settings.confirm_per_destination_per_minute, now);
    let confirmations = settings.confirm_probes.min(left);
    for _ in 0..confirmations {
        granted.push_back(now);
    }
    memory.confirming = confirmations > 0;
    confirmations
}

impl Evidence {
    pub fn new(settings: EvidenceSettings) -> Evidence {
        Evidence {
            settings,
            series: HashMap::new(),
            confirmations_granted: HashMap::new(),
            requests_granted: VecDeque::new(),
            requests_dropped: 0,
        }
    }

    /// A reload: the memory of each series stays, the new bounds apply from now.
    pub fn set_settings(&mut self, settings: EvidenceSettings) {
        self.settings = settings;
    }

    pub fn settings(&self) -> &EvidenceSettings {
        &self.settings
    }

    /// Takes one result into its series' memory and says whether it is news and whether to
    /// confirm it. Only a scheduled result starts confirmations (a confirmation that departs
    /// again, or a requested one, never chains into more).
    pub fn on_result(&mut self, result: &ProbeResult, now: Instant) -> Judged {
        let id = SeriesId {
            target: result.target.clone(),
            port: result.port,
            family: result.family,
        };
        let state = PortState::of(result.outcome);
        let memory = self.series.entry(id).or_default();
        let departs = memory.settled.is_some_and(|settled| settled != state);
        let streak = match memory.streak {
            Some((s, n)) if s == state => n + 1,
            _ => 1,
        };
        memory.streak = Some((state, streak));
        if memory.settled.is_none() || streak >= SETTLE_AFTER {
            memory.settled = Some(state);
        }
        let confirmations = if departs && result.cause == ProbeCause::Scheduled {
            grant(
                memory,
                &mut self.confirmations_granted,
                &self.settings,
                &result.target,
                now,
            )
        } else {
            0
        };
        let unconnected = result.outcome.is_connect_failure();
        Judged {
            departs,
            confirmations,
            spacing: if unconnected {
                self.settings.unconnected_spacing
            } else {
                self.settings.confirm_spacing
            },
            unconnected,
        }
    }

    /// A scheduled probe's connection attempt is still unanswered after
    /// [`EvidenceSettings::unanswered_after`]: the confirmations to start now, alongside it,
    /// `unconnected_spacing` apart (0: none — the series is not settled open, a run is under
    /// way, or the budget is spent). The probe's own result then starts no second run.
    pub fn on_unanswered(&mut self, target: &str, port: u16, family: Family, now: Instant) -> u32 {
        let id = SeriesId {
            target: target.to_string(),
            port,
            family,
        };
        let Some(memory) = self.series.get_mut(&id) else {
            return 0;
        };
        if memory.settled != Some(PortState::Open) {
            return 0;
        }
        grant(
            memory,
            &mut self.confirmations_granted,
            &self.settings,
            target,
            now,
        )
    }

    /// The confirmation run of this series is over (done, or cut short).
    pub fn confirmations_done(&mut self, target: &str, port: u16, family: Family) {
        let id = SeriesId {
            target: target.to_string(),
            port,
            family,
        };
        if let Some(memory) = self.series.get_mut(&id) {
            memory.confirming = false;
        }
    }

    /// Judges a probe request against what this agent is configured to probe and its budget.
    pub fn on_request(
        &mut self,
        request: &ProbeRequest,
        configured: &[Configured],
        now: Instant,
    ) -> RequestVerdict {
        let verdict = self.judge_request(request, configured, now);
        if matches!(verdict, RequestVerdict::Drop(_)) {
            self.requests_dropped += 1;
        }
        verdict
    }

    fn judge_request(
        &mut self,
        request: &ProbeRequest,
        configured: &[Configured],
        now: Instant,
    ) -> RequestVerdict {
        if !self.settings.answer_probe_requests {
            return RequestVerdict::Drop("probe requests are turned off");
        }
        if request.deadline_ms == 0 {
            return RequestVerdict::Drop("its deadline has passed");
        }
        let Some(series) = configured
            .iter()
            .find(|c| c.host == request.target && c.ports.contains(&request.port))
        else {
            return RequestVerdict::Drop("not a target and port this agent probes");
        };
        if room(
            &mut self.requests_granted,
            self.settings.requests_per_minute,
            now,
        ) == 0
        {
            return RequestVerdict::Drop("over the per-minute budget for requests");
        }
        self.requests_granted.push_back(now);
        RequestVerdict::Probe {
            request_id: request.request_id,
            target: series.host.clone(),
            port: request.port,
            family: request.family,
            level: series.level,
            deadline: now + Duration::from_millis(u64::from(request.deadline_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::Outcome;

    fn result(target: &str, port: u16, outcome: Outcome, cause: ProbeCause) -> ProbeResult {
        ProbeResult {
            target: target.into(),
            port,
            family: Family::Ipv4,
            outcome,
            cause,
            ..Default::default()
        }
    }

    fn scheduled(outcome: Outcome) -> ProbeResult {
        result("mx.lab.test", 587, outcome, ProbeCause::Scheduled)
    }

    fn confirmation(outcome: Outcome) -> ProbeResult {
        result("mx.lab.test", 587, outcome, ProbeCause::Confirmation)
    }

    fn settings(confirm_probes: u32, per_minute: u32) -> EvidenceSettings {
        EvidenceSettings {
            confirm_probes,
            confirm_per_destination_per_minute: per_minute,
            ..Default::default()
        }
    }

    #[test]
    fn a_first_result_settles_the_series_and_is_no_news() {
        let mut evidence = Evidence::new(EvidenceSettings::default());
        let now = Instant::now();
        let judged = evidence.on_result(&scheduled(Outcome::Timeout), now);
        assert!(!judged.departs);
        assert_eq!(judged.confirmations, 0);
        assert!(!judged.urgent(ProbeCause::Scheduled));
        assert!(
            !evidence
                .on_result(&scheduled(Outcome::Timeout), now)
                .departs
        );
    }

    #[test]
    fn a_departure_is_news_and_earns_confirmations_until_the_new_state_settles() {
        let mut evidence = Evidence::new(settings(2, 6));
        let now = Instant::now();
        evidence.on_result(&scheduled(Outcome::Ok), now);
        evidence.on_result(&scheduled(Outcome::Ok), now);
        let closed = evidence.on_result(&scheduled(Outcome::Timeout), now);
        assert!(closed.departs && closed.urgent(ProbeCause::Scheduled));
        assert_eq!(closed.confirmations, 2);
        assert!(closed.unconnected, "a timeout never connected");
        assert_eq!(closed.spacing, Duration::from_secs(1));
        // A departure that reached the service keeps the floor between its confirmations.
        let mut reached = Evidence::new(settings(2, 6));
        reached.on_result(&scheduled(Outcome::Ok), now);
        let tls = reached.on_result(&scheduled(Outcome::TlsFailed), now);
        assert_eq!((tls.confirmations, tls.unconnected), (2, false));
        assert_eq!(tls.spacing, Duration::from_secs(10));
        // The first confirmation still departs (open is settled) and settles blocked.
        let first = evidence.on_result(&confirmation(Outcome::Timeout), now);
        assert!(first.departs);
        assert_eq!(first.confirmations, 0, "a confirmation never chains");
        let second = evidence.on_result(&confirmation(Outcome::Timeout), now);
        assert!(!second.departs, "two blocked in a row settled the series");
        assert!(
            second.urgent(ProbeCause::Confirmation),
            "still sent at once"
        );
        evidence.confirmations_done("mx.lab.test", 587, Family::Ipv4);
        let later = evidence.on_result(&scheduled(Outcome::Timeout), now);
        assert!(
            !later.departs && later.confirmations == 0,
            "blocked is settled now"
        );
    }

    #[test]
    fn a_single_blip_goes_back_without_moving_the_settled_state() {
        let mut evidence = Evidence::new(settings(0, 6));
        let now = Instant::now();
        evidence.on_result(&scheduled(Outcome::Ok), now);
        let blip = evidence.on_result(&scheduled(Outcome::Refused), now);
        assert!(blip.departs);
        assert_eq!(blip.confirmations, 0, "confirm_probes = 0 turns them off");
        assert!(!evidence.on_result(&scheduled(Outcome::Ok), now).departs);
        assert!(
            evidence
                .on_result(&scheduled(Outcome::Refused), now)
                .departs
        );
    }

    #[test]
    fn one_run_per_series_at_a_time_and_a_bound_per_destination_and_minute() {
        let mut evidence = Evidence::new(settings(2, 3));
        let now = Instant::now();
        evidence.on_result(&scheduled(Outcome::Ok), now);
        assert_eq!(
            evidence
                .on_result(&scheduled(Outcome::Timeout), now)
                .confirmations,
            2
        );
        // Back to open before the run ended: departs again, but the run is still under way.
        evidence.on_result(&scheduled(Outcome::Ok), now);
        let again = evidence.on_result(&scheduled(Outcome::Timeout), now);
        assert!(again.departs);
        assert_eq!(again.confirmations, 0, "one run at a time");
        evidence.confirmations_done("mx.lab.test", 587, Family::Ipv4);
        // Another port of the same destination shares its budget: one of three left.
        let other = |o| result("mx.lab.test", 25, o, ProbeCause::Scheduled);
        evidence.on_result(&other(Outcome::Ok), now);
        assert_eq!(
            evidence
                .on_result(&other(Outcome::Timeout), now)
                .confirmations,
            1
        );
        // Another destination has its own.
        let elsewhere = |o| result("smtp.lab.test", 25, o, ProbeCause::Scheduled);
        evidence.on_result(&elsewhere(Outcome::Ok), now);
        assert_eq!(
            evidence
                .on_result(&elsewhere(Outcome::Timeout), now)
                .confirmations,
            2
        );
        // The destination's budget is spent: a departure now is news but not confirmed.
        let third = |o| result("mx.lab.test", 465, o, ProbeCause::Scheduled);
        evidence.on_result(&third(Outcome::Ok), now);
        let spent = evidence.on_result(&third(Outcome::Timeout), now);
        assert!(spent.departs && spent.confirmations == 0);
        // A minute on, the budget is back.
        assert_eq!(
            evidence
                .on_result(&scheduled(Outcome::Timeout), now + MINUTE)
                .confirmations,
            2
        );
    }

    #[test]
    fn an_unanswered_connection_of_an_open_series_starts_its_confirmations_early_once() {
        let mut evidence = Evidence::new(settings(3, 9));
        let now = Instant::now();
        let unanswered =
            |e: &mut Evidence, at| e.on_unanswered("mx.lab.test", 587, Family::Ipv4, at);
        let done = |e: &mut Evidence| e.confirmations_done("mx.lab.test", 587, Family::Ipv4);
        assert_eq!(
            unanswered(&mut evidence, now),
            0,
            "a series not yet settled"
        );
        evidence.on_result(&scheduled(Outcome::Ok), now);
        assert_eq!(unanswered(&mut evidence, now), 3, "settled open");
        // The probe then times out: news, but its run is already under way.
        let judged = evidence.on_result(&scheduled(Outcome::Timeout), now);
        assert!(judged.departs && judged.unconnected);
        assert_eq!(judged.confirmations, 0);
        assert_eq!(unanswered(&mut evidence, now), 0, "one run at a time");
        done(&mut evidence);
        // Settled blocked (this departing result earns the usual run): a connection left
        // unanswered is what the series always does now, no departure.
        assert_eq!(
            evidence
                .on_result(&scheduled(Outcome::Timeout), now)
                .confirmations,
            3
        );
        done(&mut evidence);
        assert_eq!(unanswered(&mut evidence, now), 0);
        // Back open (its first result confirmed in turn): the destination's minute is spent.
        assert_eq!(
            evidence
                .on_result(&scheduled(Outcome::Ok), now)
                .confirmations,
            3
        );
        evidence.on_result(&scheduled(Outcome::Ok), now);
        done(&mut evidence);
        assert_eq!(unanswered(&mut evidence, now), 0, "over the budget");
        assert_eq!(unanswered(&mut evidence, now + MINUTE), 3, "a minute on");
        let mut off = Evidence::new(settings(0, 6));
        off.on_result(&scheduled(Outcome::Ok), now);
        assert_eq!(unanswered(&mut off, now), 0, "confirmations off");
    }

    fn request(id: u64, target: &str, port: u16, deadline_ms: u32) -> ProbeRequest {
        ProbeRequest {
            request_id: id,
            target: target.into(),
            port,
            family: Family::Ipv6,
            deadline_ms,
        }
    }

    fn configured() -> Vec<Configured> {
        vec![Configured {
            host: "mx.lab.test".into(),
            ports: vec![25, 587],
            level: Level::Tls,
        }]
    }

    #[test]
    fn a_request_for_a_configured_series_is_probed_at_its_configured_level() {
        let mut evidence = Evidence::new(EvidenceSettings::default());
        let now = Instant::now();
        assert_eq!(
            evidence.on_request(&request(7, "mx.lab.test", 587, 5000), &configured(), now),
            RequestVerdict::Probe {
                request_id: 7,
                target: "mx.lab.test".into(),
                port: 587,
                family: Family::Ipv6,
                level: Level::Tls,
                deadline: now + Duration::from_secs(5),
            }
        );
        assert_eq!(evidence.requests_dropped, 0);
    }

    #[test]
    fn requests_outside_the_config_the_budget_or_the_deadline_are_dropped_and_counted() {
        let mut evidence = Evidence::new(EvidenceSettings {
            requests_per_minute: 2,
            ..Default::default()
        });
        let now = Instant::now();
        let c = configured();
        let dropped = |v: RequestVerdict| matches!(v, RequestVerdict::Drop(_));
        assert!(dropped(evidence.on_request(
            &request(1, "other.test", 587, 5000),
            &c,
            now
        )));
        assert!(dropped(evidence.on_request(
            &request(2, "mx.lab.test", 465, 5000),
            &c,
            now
        )));
        assert!(dropped(evidence.on_request(
            &request(3, "mx.lab.test", 25, 0),
            &c,
            now
        )));
        assert!(!dropped(evidence.on_request(
            &request(4, "mx.lab.test", 25, 9),
            &c,
            now
        )));
        assert!(!dropped(evidence.on_request(
            &request(5, "mx.lab.test", 25, 9),
            &c,
            now
        )));
        assert!(dropped(evidence.on_request(
            &request(6, "mx.lab.test", 25, 9),
            &c,
            now
        )));
        assert_eq!(evidence.requests_dropped, 4);
        let later = now + MINUTE;
        assert!(!dropped(evidence.on_request(
            &request(7, "mx.lab.test", 25, 9),
            &c,
            later
        )));
        evidence.set_settings(EvidenceSettings {
            answer_probe_requests: false,
            ..Default::default()
        });
        assert_eq!(
            evidence.on_request(&request(8, "mx.lab.test", 25, 9), &c, later),
            RequestVerdict::Drop("probe requests are turned off")
        );
    }
}
