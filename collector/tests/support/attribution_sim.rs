//! The engine of the attribution simulation (shared by `collector/examples/attribution_sim.rs`,
//! the benchmark, and `collector/tests/attribution_simulation.rs`, its small version): a seeded,
//! discrete-event model of a fleet around the real detector and the real fan-out planner, with
//! a fake clock. One layer at a time changes — one agent's 587, one account's, one provider's
//! or the destination's — by a drop, a reset or an ICMP error, at a random moment; each change
//! is reverted once reported, and each close and each reopen is scored against the events the
//! detector raised: exactly one event, at the true layer, naming the right party.
//!
//! Around the detector it models what the agents and the hub do (agent/src/run/schedule.rs and
//! evidence.rs; collector/src/fanout): a fixed-rate schedule per series with a random phase and
//! ±10 % jitter, a probe longer than its interval delaying the next; the agent's memory of each
//! series (settled after two agreeing results) and its confirmations of a scheduled departure —
//! for a connection left unanswered, three starting 1.5, 2.5 and 3.5 s into the probe; for a
//! reset or ICMP error (or a timeout no longer than 1.5 s), three 1 s apart after it; for a
//! return to open, three at the 10 s politeness floor while the schedule waits — within six per
//! destination and minute; the uplink sending news at once and letting the rest linger (half
//! the interval, at most 30 s); each suspicion planned by the real [`Planner`] (default
//! `[fanout]`), answered by each asked agent after 0.2–3 s within its budget of ten a minute, some
//! answers never coming, some arriving late (the agent's uplink held 15–30 s), and now and then
//! an agent failing over (disconnected from shortly before the change for 5–40 s, then sending
//! everything its spool kept at once). IPv4 only: the suspect's request for its other family is
//! answered `no_address`.

use egresswatch_collector::detector::{Detector, DetectorConfig};
use egresswatch_collector::events::{Event, EventKind, Scope, State};
use egresswatch_collector::fanout::{ConnectedAgent, FanoutConfig, Planner};
use egresswatch_collector::identity::{AgentMeta, KnownAgent};
use egresswatch_wire::{Family, Labels, Outcome, ProbeCause, ProbeResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

const T0: i64 = 1_800_000_000_000;
const TARGET: &str = "mx";
const SMTP: u16 = 587;
const CONTROL: u16 = 443;
/// Index 0 is the control port, 1 the SMTP port.
const PORTS: [u16; 2] = [CONTROL, SMTP];
/// The agent's defaults (`probe.*`, `[evidence]`).
const PROBE_TIMEOUT_MS: i64 = 5_000;
const UNANSWERED_AFTER_MS: i64 = 1_500;
const UNCONNECTED_SPACING_MS: i64 = 1_000;
const CONNECTED_SPACING_MS: i64 = 10_000;
const CONFIRM_PROBES: u32 = 3;
const CONFIRM_PER_DESTINATION_PER_MINUTE: usize = 6;
const REQUESTS_PER_MINUTE: usize = 10;
const SETTLE_AFTER: u32 = 2;
/// The share of asked agents whose answer never comes, of answers that come late, and of
/// changes during which one agent fails over.
const MISSING_ANSWER: f64 = 0.10;
const LATE_ANSWER: f64 = 0.05;
const FAILOVER: f64 = 0.10;

/// The fleet: (provider, account, agents).
const FLEET: [(&str, &str, usize); 6] = [
    ("gcp", "gcp-main", 3),
    ("aws", "acct-a", 2),
    ("aws", "acct-b", 2),
    ("azure", "sub-1", 2),
    ("digitalocean", "team", 2),
    ("hetzner", "hz-main", 2),
];

/// The layer that truly changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Agent,
    Account,
    Provider,
    Destination,
}

impl Layer {
    pub const ALL: [Layer; 4] = [
        Layer::Agent,
        Layer::Account,
        Layer::Provider,
        Layer::Destination,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Agent => "agent",
            Layer::Account => "account",
            Layer::Provider => "provider",
            Layer::Destination => "destination",
        }
    }

    fn scope(self) -> Scope {
        match self {
            Layer::Agent => Scope::Agent,
            Layer::Account => Scope::Account,
            Layer::Provider => Scope::Provider,
            Layer::Destination => Scope::Destination,
        }
    }
}

/// How the closed port fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Silently dropped: `timeout`, one probe timeout after the start.
    Drop,
    /// A TCP reset: `refused` within 10–50 ms.
    Reset,
    /// An ICMP error: `unreachable` within 10–50 ms.
    Icmp,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Drop, Kind::Reset, Kind::Icmp];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::Reset => "reset",
            Kind::Icmp => "icmp",
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Kind::Drop => Outcome::Timeout,
            Kind::Reset => Outcome::Refused,
            Kind::Icmp => Outcome::Unreachable,
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub layer: Layer,
    pub kind: Kind,
    pub interval_ms: i64,
    pub changes: usize,
    pub seed: u64,
}

/// Every cell: each layer × each kind × each interval.
pub fn cells(changes: usize, seed: u64, intervals_ms: &[i64]) -> Vec<Cell> {
    let mut out = Vec::new();
    for layer in Layer::ALL {
        for kind in Kind::ALL {
            for &interval_ms in intervals_ms {
                let n = out.len() as u64;
                out.push(Cell {
                    layer,
                    kind,
                    interval_ms,
                    changes,
                    seed: seed.wrapping_mul(1_000_003).wrapping_add(n),
                });
            }
        }
    }
    out
}

/// What the detector said about one direction of the changes of a cell.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub changes: usize,
    /// Change events on 587 in the right direction, by scope: agent, account, provider,
    /// destination.
    pub by_scope: [usize; 4],
    /// Any other event raised during the change (the wrong direction, another port, flapping,
    /// silence).
    pub other: usize,
    /// Exactly one event, at the true layer, naming the party that changed.
    pub correct: usize,
    /// No event at all.
    pub missing: usize,
    /// More than one event, or one at a wrong layer or naming a wrong party.
    pub extra: usize,
    /// Of the extras, those with more than one event at the true layer (a duplicate page).
    pub duplicates: usize,
    /// Of the missing and extra, those of changes during which no answer came late and no
    /// agent failed over.
    pub failed_undisturbed: usize,
    /// Change → first event.
    pub latencies_ms: Vec<i64>,
}

impl Tally {
    /// Events off the diagonal: at another scope than the true one (or not a change event).
    pub fn off_diagonal(&self, layer: Layer) -> usize {
        let own = Layer::ALL.iter().position(|l| *l == layer).unwrap_or(0);
        self.by_scope
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != own)
            .map(|(_, n)| n)
            .sum::<usize>()
            + self.other
    }

    /// The q-quantile of the latencies, in seconds.
    pub fn quantile_s(&self, q: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        Some(v[i.min(v.len() - 1)] as f64 / 1000.0)
    }
}

/// One change the detector did not report once at its layer, with what led to it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub phase: &'static str,
    /// An answer came late or an agent failed over during the change.
    pub disturbed: bool,
    pub change: usize,
    pub what: String,
    pub timeline: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CellReport {
    pub cell: Cell,
    pub close: Tally,
    pub reopen: Tally,
    /// Events raised while the fleet settled, before the first change (should be none).
    pub settle_events: usize,
    /// The first few failures, with their timelines.
    pub failures: Vec<Failure>,
    pub simulated_ms: i64,
    pub results: u64,
    pub requests: u64,
}

/// Failures kept per cell with their timelines.
const FAILURES_KEPT: usize = 2;

// ---------------------------------------------------------------------------------------------
// The agents.

/// A series' slots: a random phase, then one interval apart with ±10 % jitter (schedule.rs).
struct Slots {
    origin: i64,
    interval: i64,
    seed: u64,
    next: u64,
}

impl Slots {
    fn at(&self, n: u64) -> i64 {
        if n == 0 {
            return self.origin;
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let jitter: f64 = rng.gen_range(-0.1..0.1);
        self.origin + ((n as f64 + jitter) * self.interval as f64) as i64
    }

    fn next_start(&mut self, now: i64) -> i64 {
        let due = self.at(self.next);
        self.next += 1;
        if due >= now {
            return due;
        }
        while self.at(self.next) < now {
            self.next += 1;
        }
        now
    }
}

/// The agent's memory of one series (evidence.rs).
#[derive(Default)]
struct Memory {
    settled: Option<bool>,
    streak: Option<(bool, u32)>,
    confirming: bool,
    /// Confirmations of the run under way not yet done.
    run_left: u32,
    /// The run under way waits for each probe before the next (a return to open).
    chained: bool,
}

struct AgentSim {
    meta: AgentMeta,
    known: KnownAgent,
    slots: [Slots; 2],
    memory: [Memory; 2],
    confirm_grants: VecDeque<i64>,
    request_grants: VecDeque<i64>,
    /// Recorded and not sent yet (lingering, or held while disconnected).
    spool: Vec<ProbeResult>,
    flush_due: Option<i64>,
    /// Failing over: not connected, sends nothing, until then.
    disconnected_until: i64,
    /// Its uplink holds everything until then (a late answer).
    held_until: i64,
    last_delivery: i64,
    seq: u64,
}

impl AgentSim {
    fn connected(&self, now: i64) -> bool {
        now >= self.disconnected_until
    }

    /// The agent's judgement of a result (evidence.rs `on_result`): whether it departs from
    /// the series' settled state, and the confirmations it earns.
    fn on_result(
        &mut self,
        port_ix: usize,
        open: bool,
        cause: ProbeCause,
        now: i64,
    ) -> (bool, u32) {
        let m = &mut self.memory[port_ix];
        let departs = m.settled.is_some_and(|s| s != open);
        let streak = match m.streak {
            Some((s, n)) if s == open => n + 1,
            _ => 1,
        };
        m.streak = Some((open, streak));
        if m.settled.is_none() || streak >= SETTLE_AFTER {
            m.settled = Some(open);
        }
        let confirmations = if departs && cause == ProbeCause::Scheduled {
            self.grant(port_ix, now)
        } else {
            0
        };
        (departs, confirmations)
    }

    fn grant(&mut self, port_ix: usize, now: i64) -> u32 {
        if self.memory[port_ix].confirming {
            return 0;
        }
        while self
            .confirm_grants
            .front()
            .is_some_and(|&t| now - t >= 60_000)
        {
            self.confirm_grants.pop_front();
        }
        let room = CONFIRM_PER_DESTINATION_PER_MINUTE.saturating_sub(self.confirm_grants.len());
        let n = CONFIRM_PROBES.min(room as u32);
        for _ in 0..n {
            self.confirm_grants.push_back(now);
        }
        self.memory[port_ix].confirming = n > 0;
        n
    }

    fn request_room(&mut self, now: i64) -> bool {
        while self
            .request_grants
            .front()
            .is_some_and(|&t| now - t >= 60_000)
        {
            self.request_grants.pop_front();
        }
        if self.request_grants.len() >= REQUESTS_PER_MINUTE {
            return false;
        }
        self.request_grants.push_back(now);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The event queue.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Not a confirmation.
    None,
    /// One of a run started together (unconnected).
    Parallel,
    /// One of a run one after the other (connected), with this many still to come after it.
    Chain(u32),
}

enum Ev {
    Tick,
    Start {
        agent: usize,
        port_ix: usize,
        family: Family,
        cause: ProbeCause,
        request_id: Option<u64>,
        run: Run,
    },
    Unanswered {
        agent: usize,
        port_ix: usize,
    },
    Done {
        agent: usize,
        port_ix: usize,
        result: Box<ProbeResult>,
        run: Run,
    },
    Flush {
        agent: usize,
    },
    /// The end of a failover or an uplink stall: everything kept goes at once.
    Release {
        agent: usize,
    },
    Deliver {
        agent: usize,
        batch: Vec<ProbeResult>,
    },
}

struct Due {
    at: i64,
    order: u64,
    ev: Ev,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // A min-heap on (time, order).
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// One line of a change's timeline, formatted only when the change failed.
enum Log {
    Truth(String),
    Arrived {
        agent: usize,
        results: Vec<(i64, u16, Family, Outcome, ProbeCause)>,
    },
    Suspicion {
        agent: usize,
        at: i64,
        asked: Vec<String>,
    },
    Event(String),
}

// ---------------------------------------------------------------------------------------------
// The simulation.

struct Sim {
    cell: Cell,
    rng: StdRng,
    det: Detector,
    planner: Planner,
    agents: Vec<AgentSim>,
    /// Ground truth: whose 587 is closed now.
    closed: Vec<bool>,
    queue: BinaryHeap<Due>,
    order: u64,
    now: i64,
    linger_ms: i64,
    timeout_ms: i64,
    /// Events of the phase under way, with the time each came out.
    events: Vec<(i64, Event)>,
    log: Vec<(i64, Log)>,
    results: u64,
    requests: u64,
    /// Uplinks held for a late answer so far.
    stalls: u64,
}

impl Sim {
    fn new(cell: Cell) -> Sim {
        let mut rng = StdRng::seed_from_u64(cell.seed);
        let interval = cell.interval_ms;
        let mut agents = Vec::new();
        for (provider, account, n) in FLEET {
            for i in 1..=n {
                let meta = AgentMeta {
                    agent_id: format!("{account}-{i}"),
                    labels: Labels {
                        provider: provider.into(),
                        account: account.into(),
                        region: "r1".into(),
                        instance: String::new(),
                    },
                    agent_version: "sim".into(),
                };
                let slots = |rng: &mut StdRng| Slots {
                    origin: T0 + rng.gen_range(0..interval),
                    interval,
                    seed: rng.gen(),
                    next: 0,
                };
                agents.push(AgentSim {
                    known: KnownAgent::new(&meta, 0),
                    meta,
                    slots: [slots(&mut rng), slots(&mut rng)],
                    memory: [Memory::default(), Memory::default()],
                    confirm_grants: VecDeque::new(),
                    request_grants: VecDeque::new(),
                    spool: Vec::new(),
                    flush_due: None,
                    disconnected_until: i64::MIN,
                    held_until: i64::MIN,
                    last_delivery: i64::MIN,
                    seq: 0,
                });
            }
        }
        let closed = vec![false; agents.len()];
        Sim {
            cell,
            rng,
            det: Detector::new(DetectorConfig::default()),
            planner: Planner::new(FanoutConfig::default(), 1),
            agents,
            closed,
            queue: BinaryHeap::new(),
            order: 0,
            now: T0,
            linger_ms: (interval / 2).min(30_000),
            timeout_ms: PROBE_TIMEOUT_MS.min(interval),
            events: Vec::new(),
            log: Vec::new(),
            results: 0,
            requests: 0,
            stalls: 0,
        }
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.order += 1;
        self.queue.push(Due {
            at,
            order: self.order,
            ev,
        });
    }

    fn start(&mut self) {
        for a in 0..self.agents.len() {
            for port_ix in 0..2 {
                let at = self.agents[a].slots[port_ix].next_start(T0);
                self.push(
                    at,
                    Ev::Start {
                        agent: a,
                        port_ix,
                        family: Family::Ipv4,
                        cause: ProbeCause::Scheduled,
                        request_id: None,
                        run: Run::None,
                    },
                );
            }
        }
        self.push(T0 + 1_000, Ev::Tick);
    }

    /// Runs the world up to `until`; with `stop_on_event`, stops after the first moment that
    /// brought an event. Returns whether it stopped on one.
    fn run_until(&mut self, until: i64, stop_on_event: bool) -> bool {
        while let Some(due) = self.queue.peek() {
            if due.at > until {
                break;
            }
            let Some(due) = self.queue.pop() else { break };
            self.now = due.at;
            let before = self.events.len();
            self.handle(due.ev);
            if stop_on_event && self.events.len() > before {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Tick => {
                let events = self.det.tick(now);
                self.record_events(events);
                self.push(now + 1_000, Ev::Tick);
            }
            Ev::Start {
                agent,
                port_ix,
                family,
                cause,
                request_id,
                run,
            } => self.probe(agent, port_ix, family, cause, request_id, run),
            Ev::Unanswered { agent, port_ix } => {
                let a = &mut self.agents[agent];
                if a.memory[port_ix].settled != Some(true) {
                    return;
                }
                let n = a.grant(port_ix, now);
                a.memory[port_ix].run_left = n;
                a.memory[port_ix].chained = false;
                for i in 0..n {
                    self.push(
                        now + i64::from(i) * UNCONNECTED_SPACING_MS,
                        Ev::Start {
                            agent,
                            port_ix,
                            family: Family::Ipv4,
                            cause: ProbeCause::Confirmation,
                            request_id: None,
                            run: Run::Parallel,
                        },
                    );
                }
            }
            Ev::Done {
                agent,
                port_ix,
                result,
                run,
            } => self.done(agent, port_ix, *result, run),
            Ev::Flush { agent } => {
                if self.agents[agent].flush_due == Some(now) {
                    self.flush(agent);
                }
            }
            Ev::Release { agent } => self.flush(agent),
            Ev::Deliver { agent, batch } => self.deliver(agent, batch),
        }
    }

    fn probe(
        &mut self,
        agent: usize,
        port_ix: usize,
        family: Family,
        cause: ProbeCause,
        request_id: Option<u64>,
        run: Run,
    ) {
        let now = self.now;
        let port = PORTS[port_ix];
        let (outcome, took) = if family == Family::Ipv6 {
            (Outcome::NoAddress, self.rng.gen_range(1..10))
        } else if port == SMTP && self.closed[agent] {
            let o = self.cell.kind.outcome();
            let took = match self.cell.kind {
                Kind::Drop => self.timeout_ms,
                Kind::Reset | Kind::Icmp => self.rng.gen_range(10..=50),
            };
            (o, took)
        } else {
            (Outcome::Ok, self.rng.gen_range(40..=250))
        };
        let a = &mut self.agents[agent];
        a.seq += 1;
        let result = ProbeResult {
            seq: a.seq,
            at_unix_ms: now,
            target: TARGET.into(),
            port,
            family,
            outcome,
            cause,
            request_id,
            ..Default::default()
        };
        if cause == ProbeCause::Scheduled
            && outcome == Outcome::Timeout
            && UNANSWERED_AFTER_MS < self.timeout_ms
        {
            self.push(now + UNANSWERED_AFTER_MS, Ev::Unanswered { agent, port_ix });
        }
        self.push(
            now + took,
            Ev::Done {
                agent,
                port_ix,
                result: Box::new(result),
                run,
            },
        );
    }

    fn next_scheduled(&mut self, agent: usize, port_ix: usize) {
        let at = self.agents[agent].slots[port_ix].next_start(self.now);
        self.push(
            at,
            Ev::Start {
                agent,
                port_ix,
                family: Family::Ipv4,
                cause: ProbeCause::Scheduled,
                request_id: None,
                run: Run::None,
            },
        );
    }

    fn confirmation(&mut self, agent: usize, port_ix: usize, at: i64, run: Run) {
        self.push(
            at,
            Ev::Start {
                agent,
                port_ix,
                family: Family::Ipv4,
                cause: ProbeCause::Confirmation,
                request_id: None,
                run,
            },
        );
    }

    fn done(&mut self, agent: usize, port_ix: usize, result: ProbeResult, run: Run) {
        let now = self.now;
        let cause = result.cause;
        let family = result.family;
        let open = !result.outcome.is_failure();
        let unconnected = result.outcome.is_connect_failure();
        let (departs, confirmations) = if family == Family::Ipv4 {
            self.agents[agent].on_result(port_ix, open, cause, now)
        } else {
            (false, 0)
        };
        let urgent = departs || cause != ProbeCause::Scheduled;
        if cause == ProbeCause::Requested && self.rng.gen_bool(LATE_ANSWER) {
            // Its uplink stalls: the answer (and all after it) arrives 15-30 s late.
            let hold = self.rng.gen_range(15_000..30_000);
            self.stalls += 1;
            let a = &mut self.agents[agent];
            a.held_until = a.held_until.max(now + hold);
            let at = a.held_until;
            self.push(at, Ev::Release { agent });
        }
        self.record(agent, result, urgent);
        match (cause, run) {
            (ProbeCause::Scheduled, _) => {
                if confirmations > 0 && unconnected {
                    let m = &mut self.agents[agent].memory[port_ix];
                    m.run_left = confirmations;
                    m.chained = false;
                    for i in 1..=confirmations {
                        self.confirmation(
                            agent,
                            port_ix,
                            now + i64::from(i) * UNCONNECTED_SPACING_MS,
                            Run::Parallel,
                        );
                    }
                    self.next_scheduled(agent, port_ix);
                } else if confirmations > 0 {
                    // It reached the service: confirmed at the floor, one after the other,
                    // and the schedule waits for them.
                    let m = &mut self.agents[agent].memory[port_ix];
                    m.run_left = confirmations;
                    m.chained = true;
                    self.confirmation(
                        agent,
                        port_ix,
                        now + CONNECTED_SPACING_MS,
                        Run::Chain(confirmations - 1),
                    );
                } else {
                    self.next_scheduled(agent, port_ix);
                }
            }
            (ProbeCause::Confirmation, Run::Parallel) => {
                let m = &mut self.agents[agent].memory[port_ix];
                m.run_left = m.run_left.saturating_sub(1);
                if m.run_left == 0 {
                    m.confirming = false;
                }
            }
            (ProbeCause::Confirmation, Run::Chain(left)) => {
                if left > 0 {
                    self.confirmation(
                        agent,
                        port_ix,
                        now + CONNECTED_SPACING_MS,
                        Run::Chain(left - 1),
                    );
                } else {
                    self.agents[agent].memory[port_ix].confirming = false;
                    self.next_scheduled(agent, port_ix);
                }
            }
            _ => {}
        }
    }

    /// The uplink: news goes at once with whatever lingers; the rest lingers.
    fn record(&mut self, agent: usize, result: ProbeResult, urgent: bool) {
        let now = self.now;
        self.results += 1;
        let a = &mut self.agents[agent];
        a.spool.push(result);
        if now < a.held_until.max(a.disconnected_until) {
            return;
        }
        if urgent {
            self.flush(agent);
        } else if a.flush_due.is_none() {
            let at = now + self.linger_ms;
            a.flush_due = Some(at);
            self.push(at, Ev::Flush { agent });
        }
    }

    fn flush(&mut self, agent: usize) {
        let now = self.now;
        let a = &mut self.agents[agent];
        // Held: the release sends everything, lingering results too.
        a.flush_due = None;
        if now < a.held_until.max(a.disconnected_until) {
            return;
        }
        if a.spool.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut a.spool);
        let delay = self.rng.gen_range(5..=50);
        let at = (now + delay).max(a.last_delivery + 1);
        a.last_delivery = at;
        self.push(at, Ev::Deliver { agent, batch });
    }

    /// The hub: the detector sees the batch, the fan-out asks about its suspicions.
    fn deliver(&mut self, agent: usize, batch: Vec<ProbeResult>) {
        let now = self.now;
        self.log.push((
            now,
            Log::Arrived {
                agent,
                results: batch
                    .iter()
                    .map(|r| (r.at_unix_ms, r.port, r.family, r.outcome, r.cause))
                    .collect(),
            },
        ));
        let meta = self.agents[agent].meta.clone();
        let events = self.det.observe(&meta, &batch, true, now);
        for r in batch.iter().filter(|r| r.cause == ProbeCause::Requested) {
            if let Some(id) = r.request_id {
                self.planner.answered(&meta.agent_id, id, now);
            }
        }
        self.record_events(events);
        let suspicions = self.det.take_suspicions();
        if suspicions.is_empty() {
            return;
        }
        let connected: Vec<ConnectedAgent> = self
            .agents
            .iter()
            .filter(|a| a.connected(now))
            .map(|a| ConnectedAgent {
                agent_id: a.meta.agent_id.clone(),
                provider: a.known.provider.clone(),
                account: a.known.account.clone(),
                targets: vec![(TARGET.into(), PORTS.to_vec())],
                wire_minor: 2,
                accepts_probe_requests: true,
            })
            .collect();
        for s in suspicions {
            let plan = self.planner.plan(&s, &connected, now);
            let suspect = self
                .agents
                .iter()
                .position(|a| a.meta.agent_id == s.key.agent)
                .unwrap_or(agent);
            let mut asked = Vec::new();
            for p in plan.requests {
                let Some(j) = self
                    .agents
                    .iter()
                    .position(|a| a.meta.agent_id == p.agent_id)
                else {
                    continue;
                };
                self.requests += 1;
                let family = p.request.family;
                asked.push(format!("{}/{}", p.agent_id, family_name(family)));
                if self.rng.gen_bool(MISSING_ANSWER) || !self.agents[j].request_room(now) {
                    if let Some(last) = asked.last_mut() {
                        last.push_str(" (never answers)");
                    }
                    continue;
                }
                let Some(port_ix) = PORTS.iter().position(|&port| port == p.request.port) else {
                    continue;
                };
                let delay = self.rng.gen_range(200..=3_000);
                self.push(
                    now + delay,
                    Ev::Start {
                        agent: j,
                        port_ix,
                        family,
                        cause: ProbeCause::Requested,
                        request_id: Some(p.request.request_id),
                        run: Run::None,
                    },
                );
            }
            self.log.push((
                now,
                Log::Suspicion {
                    agent: suspect,
                    at: s.at_unix_ms,
                    asked,
                },
            ));
        }
    }

    fn record_events(&mut self, events: Vec<Event>) {
        for e in events {
            self.log.push((self.now, Log::Event(e.summary())));
            self.events.push((self.now, e));
        }
    }

    /// Fails `agent` over: disconnected from now for `for_ms`, then all it kept at once.
    fn fail_over(&mut self, agent: usize, for_ms: i64) {
        let until = self.now + for_ms;
        let a = &mut self.agents[agent];
        a.disconnected_until = until;
        let id = a.meta.agent_id.clone();
        self.push(until, Ev::Release { agent });
        self.log.push((
            self.now,
            Log::Truth(format!(
                "{id} fails over: disconnected, sends nothing for {:.1} s",
                for_ms as f64 / 1000.0
            )),
        ));
    }

    fn timeline(&self, from: i64) -> Vec<String> {
        let at = |t: i64| format!("{:>9.3}", (t - from) as f64 / 1000.0);
        let mut out = Vec::new();
        for (t, l) in &self.log {
            match l {
                Log::Truth(s) => out.push(format!("{} truth: {s}", at(*t))),
                Log::Arrived { agent, results } => {
                    // Open control results are the background; left out.
                    let shown: Vec<String> = results
                        .iter()
                        .filter(|r| !(r.1 == CONTROL && r.3 == Outcome::Ok))
                        .map(|(m, port, family, outcome, cause)| {
                            format!(
                                "{port}/{} {} {} measured {}",
                                family_name(*family),
                                outcome.as_str(),
                                cause_name(*cause),
                                at(*m).trim()
                            )
                        })
                        .collect();
                    if !shown.is_empty() {
                        out.push(format!(
                            "{} arrive {}: {}",
                            at(*t),
                            self.agents[*agent].meta.agent_id,
                            shown.join("; ")
                        ));
                    }
                }
                Log::Suspicion {
                    agent,
                    at: m,
                    asked,
                } => out.push(format!(
                    "{} suspicion {} (departure measured {}): asked {}",
                    at(*t),
                    self.agents[*agent].meta.agent_id,
                    at(*m).trim(),
                    if asked.is_empty() {
                        "nobody".to_string()
                    } else {
                        asked.join(", ")
                    }
                )),
                Log::Event(s) => out.push(format!("{} EVENT {s}", at(*t))),
            }
        }
        out
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    }
}

fn cause_name(c: ProbeCause) -> &'static str {
    match c {
        ProbeCause::Scheduled => "scheduled",
        ProbeCause::Confirmation => "confirmation",
        ProbeCause::Requested => "requested",
    }
}

/// Who changed in one change: the agents, and the party an event must name.
struct Change {
    agents: Vec<usize>,
    provider: Option<String>,
    account: Option<String>,
    agent: Option<String>,
}

fn pick(sim: &mut Sim) -> Change {
    let n = sim.agents.len();
    match sim.cell.layer {
        Layer::Agent => {
            let a = sim.rng.gen_range(0..n);
            let k = &sim.agents[a].known;
            Change {
                agents: vec![a],
                provider: Some(k.provider.clone()),
                account: Some(k.account.clone()),
                agent: Some(sim.agents[a].meta.agent_id.clone()),
            }
        }
        Layer::Account => {
            let (_, account, _) = FLEET[sim.rng.gen_range(0..FLEET.len())];
            let agents: Vec<usize> = (0..n)
                .filter(|&a| sim.agents[a].meta.labels.account == account)
                .collect();
            let k = &sim.agents[agents[0]].known;
            Change {
                provider: Some(k.provider.clone()),
                account: Some(k.account.clone()),
                agent: None,
                agents,
            }
        }
        Layer::Provider => {
            // aws is the only provider of several accounts: the only true provider change.
            let agents: Vec<usize> = (0..n)
                .filter(|&a| sim.agents[a].meta.labels.provider == "aws")
                .collect();
            let k = &sim.agents[agents[0]].known;
            Change {
                provider: Some(k.provider.clone()),
                account: None,
                agent: None,
                agents,
            }
        }
        Layer::Destination => Change {
            agents: (0..n).collect(),
            provider: None,
            account: None,
            agent: None,
        },
    }
}

/// Scores one phase: `to` is the state the change went to.
fn score(sim: &Sim, change: &Change, to: State, began: i64, tally: &mut Tally) -> Option<String> {
    let layer = sim.cell.layer;
    tally.changes += 1;
    let mut right = 0;
    let mut wrong = 0;
    for (_, e) in &sim.events {
        let change_event = matches!(
            e.kind,
            EventKind::PolicyChanged | EventKind::DestinationOutage
        ) && e.port == Some(SMTP)
            && e.to == to;
        if !change_event {
            tally.other += 1;
            wrong += 1;
            continue;
        }
        let ix = match e.scope {
            Scope::Agent => 0,
            Scope::Account => 1,
            Scope::Provider => 2,
            Scope::Destination => 3,
        };
        tally.by_scope[ix] += 1;
        let party = match layer {
            Layer::Agent => e.agent == change.agent,
            Layer::Account => e.provider == change.provider && e.account == change.account,
            Layer::Provider => e.provider == change.provider,
            Layer::Destination => e.kind == EventKind::DestinationOutage,
        };
        if e.scope == layer.scope() && party {
            right += 1;
        } else {
            wrong += 1;
        }
    }
    if let Some((t, _)) = sim.events.first() {
        tally.latencies_ms.push(t - began);
    }
    let who = change
        .agent
        .clone()
        .or_else(|| {
            change
                .account
                .as_ref()
                .map(|a| format!("{} / {a}", change.provider.clone().unwrap_or_default()))
        })
        .or_else(|| change.provider.clone())
        .unwrap_or_else(|| "everyone".into());
    if sim.events.is_empty() {
        tally.missing += 1;
        return Some(format!("missing: no event for {who}"));
    }
    if right == 1 && wrong == 0 {
        tally.correct += 1;
        return None;
    }
    tally.extra += 1;
    if right > 1 {
        tally.duplicates += 1;
    }
    Some(format!(
        "{} events for {who} ({right} at the true layer): {}",
        sim.events.len(),
        sim.events
            .iter()
            .map(|(_, e)| e.summary())
            .collect::<Vec<_>>()
            .join(" | ")
    ))
}

/// Runs one cell: the fleet settles open, then `changes` times one change closes 587 at a
/// random moment and is reverted once reported.
pub fn run_cell(cell: Cell) -> CellReport {
    let mut sim = Sim::new(cell);
    let interval = cell.interval_ms;
    // Long enough for the detector to hear, after the first event, any event a wider layer
    // would bring (its wait is at most the larger of 60 s and two intervals and a half-minute).
    let hold = 2 * interval + 30_000;
    let give_up = 10 * interval + 120_000;
    sim.start();
    sim.run_until(T0 + 10 * interval + 30_000, false);
    let settle_events = sim.events.len();
    let mut report = CellReport {
        cell,
        close: Tally::default(),
        reopen: Tally::default(),
        settle_events,
        failures: Vec::new(),
        simulated_ms: 0,
        results: 0,
        requests: 0,
    };
    for n in 0..cell.changes {
        let change = pick(&mut sim);
        for (phase, to) in [("close", State::Blocked), ("reopen", State::Open)] {
            // A random moment, with room before it for an agent to start failing over.
            let at = sim.now + 5_000 + sim.rng.gen_range(0..interval);
            let failover = sim.rng.gen_bool(FAILOVER).then(|| {
                let agent = sim.rng.gen_range(0..sim.agents.len());
                let before = sim.rng.gen_range(0..5_000);
                let lasts = sim.rng.gen_range(5_000..=40_000);
                (agent, before, lasts)
            });
            sim.events.clear();
            sim.log.clear();
            let stalls = sim.stalls;
            if let Some((agent, before, lasts)) = failover {
                sim.run_until(at - before, false);
                sim.fail_over(agent, lasts);
            }
            sim.run_until(at, false);
            let closes = to == State::Blocked;
            for &a in &change.agents {
                sim.closed[a] = closes;
            }
            let names: Vec<&str> = change
                .agents
                .iter()
                .map(|&a| sim.agents[a].meta.agent_id.as_str())
                .collect();
            let text = format!(
                "587 {} ({}) for {}",
                if closes { "closes" } else { "reopens" },
                cell.kind.name(),
                names.join(", ")
            );
            sim.log.push((at, Log::Truth(text)));
            if sim.run_until(at + give_up, true) {
                let first = sim.now;
                sim.run_until(first + hold, false);
            }
            let tally = if closes {
                &mut report.close
            } else {
                &mut report.reopen
            };
            if let Some(what) = score(&sim, &change, to, at, tally) {
                let disturbed = failover.is_some() || sim.stalls > stalls;
                if !disturbed {
                    tally.failed_undisturbed += 1;
                }
                // One of each: with and without a late answer or a failover.
                if report.failures.len() < FAILURES_KEPT
                    && report.failures.iter().all(|f| f.disturbed != disturbed)
                {
                    report.failures.push(Failure {
                        phase,
                        disturbed,
                        change: n,
                        what,
                        timeline: sim.timeline(at),
                    });
                }
            }
        }
    }
    report.simulated_ms = sim.now - T0;
    report.results = sim.results;
    report.requests = sim.requests;
    report
}

/// The confusion matrix as a markdown table, one row per cell and direction.
pub fn table(reports: &[CellReport]) -> String {
    let mut out = String::from(
        "| true layer | kind | interval | change | n | agent | account | provider | destination \
         | other | correct | missing | extra (dup) | failed undisturbed | median s | p95 s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        for (phase, t) in [("close", &r.close), ("reopen", &r.reopen)] {
            let q = |q: f64| t.quantile_s(q).map_or("-".into(), |s| format!("{s:.1}"));
            out.push_str(&format!(
                "| {} | {} | {} s | {phase} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} |\n",
                r.cell.layer.name(),
                r.cell.kind.name(),
                r.cell.interval_ms / 1000,
                t.changes,
                t.by_scope[0],
                t.by_scope[1],
                t.by_scope[2],
                t.by_scope[3],
                t.other,
                t.correct,
                t.missing,
                t.extra,
                t.duplicates,
                t.failed_undisturbed,
                q(0.5),
                q(0.95),
            ));
        }
    }
    out
}
