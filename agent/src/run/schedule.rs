//! The schedule: every target × port × family probed at its interval (a fixed rate: from one
//! probe's start to the next's, however long the probe took), with jitter so a fleet
//! does not probe in lockstep, a floor on the interval per destination (politeness), and a cap on
//! probes in flight. Each result goes to the spool and wakes the uplink.
//!
//! A target and port's IPv4 and IPv6 series start at the same moments ([`Slots`]: one random
//! phase and one jitter per start, drawn from the pair's seed): the matrix compares the
//! families at one moment, and a port that closes over both is seen failing over both at once —
//! which is what lets the collector decide an agent's change on both families together within
//! one timeout, instead of waiting up to one interval for the other family's turn.
//!
//! Time here is tokio's, i.e. the monotonic clock: a step of the wall clock (NTP, a VM resumed)
//! neither bursts nor stalls the probes; only the results' timestamps show it.
//!
//! The schedule follows a [`Plan`] that a config reload replaces: a series whose target, port,
//! family, level and interval are unchanged keeps its rhythm; a removed one stops; a new one
//! starts (spread over its first interval, like at startup). Probe options and the cap on probes
//! in flight apply to every series from its next probe on.
//!
//! Evidence on demand runs here too, as [`super::evidence`] decides: a scheduled result that
//! departs from its series' settled state is followed by a few confirmation probes at short
//! spacing before the series returns to its rhythm, and the collector's probe requests (handed
//! over by the uplink) are probed at once when they name a configured series and fit the budget.
//! Both use fresh sockets and the same cap on probes in flight; their results go to the spool
//! like any other, so they are kept while the collector is unreachable.

use super::config::TargetConfig;
use super::evidence::{Configured, Evidence, EvidenceSettings, RequestVerdict};
use super::Shared;
use crate::probe::{self, ProbeOptions, ProbeTarget};
use egresswatch_wire::{Family, Level, ProbeCause, ProbeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;
use tracing::debug;

/// What to probe and how; replaced whole on a reload.
#[derive(Clone)]
pub struct Plan {
    pub targets: Vec<TargetConfig>,
    pub options: ProbeOptions,
    /// Politeness: no series of a destination probes more often than this.
    pub floor: Duration,
    pub concurrency: usize,
    /// Confirmations and probe requests.
    pub evidence: EvidenceSettings,
}

type SharedEvidence = Arc<Mutex<Evidence>>;

fn lock(evidence: &SharedEvidence) -> std::sync::MutexGuard<'_, Evidence> {
    evidence.lock().unwrap_or_else(|p| p.into_inner())
}

fn configured_of(plan: &Plan) -> Vec<Configured> {
    plan.targets
        .iter()
        .map(|t| Configured {
            host: t.host.clone(),
            ports: t.ports.clone(),
            level: t.level,
        })
        .collect()
}

/// What every series reads before each probe.
#[derive(Clone)]
struct Settings {
    options: ProbeOptions,
    permits: Arc<Semaphore>,
}

/// One series: a (host, port, family, level) at an interval.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct SeriesKey {
    host: String,
    port: u16,
    family: Family,
    level: Level,
    interval: Duration,
}

impl SeriesKey {
    /// The seed of this series' [`Slots`]: the same for both families of a target and port.
    fn slot_seed(&self, schedule_seed: u64) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            schedule_seed,
            &self.host,
            self.port,
            self.level,
            self.interval,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// A series' start times: the first at a random phase within one interval of `origin` (so a
/// restart or a reload is not a burst), then one interval apart, each moved by up to ±10 % (so
/// a fleet does not probe in lockstep). Every start is a function of the seed and its number
/// alone, so two series with one seed keep starting together whatever either of them skips.
#[derive(Debug, Clone)]
struct Slots {
    origin: tokio::time::Instant,
    interval: Duration,
    seed: u64,
    next: u64,
}

impl Slots {
    fn new(seed: u64, interval: Duration, origin: tokio::time::Instant) -> Slots {
        let phase = interval.mul_f64(StdRng::seed_from_u64(seed).random_range(0.0..1.0));
        Slots {
            origin: origin + phase,
            interval,
            seed,
            next: 0,
        }
    }

    fn at(&self, n: u64) -> tokio::time::Instant {
        if n == 0 {
            // The phase is the first start's randomness.
            return self.origin;
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let jitter: f64 = rng.random_range(-0.1..0.1);
        self.origin + self.interval.mul_f64(n as f64 + jitter)
    }

    /// The next start: its slot, or at once when a probe that ran long passed it (the slots it
    /// passed beyond that one are skipped: never two at a time, never a burst).
    fn next_start(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
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

fn series_of(plan: &Plan) -> Vec<SeriesKey> {
    let mut keys = Vec::new();
    for target in &plan.targets {
        let interval = target.interval.max(plan.floor);
        for port in &target.ports {
            for family in [Family::Ipv4, Family::Ipv6] {
                let key = SeriesKey {
                    host: target.host.clone(),
                    port: *port,
                    family,
                    level: target.level,
                    interval,
                };
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
    }
    keys
}

pub async fn run(
    mut plans: watch::Receiver<Plan>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let first = plans.borrow_and_update().clone();
    let mut concurrency = first.concurrency.max(1);
    let (settings_tx, settings) = watch::channel(Settings {
        options: first.options.clone(),
        permits: Arc::new(Semaphore::new(concurrency)),
    });
    let evidence: SharedEvidence = Arc::new(Mutex::new(Evidence::new(first.evidence.clone())));
    let mut requests = shared.take_probe_requests();
    let mut series = tokio::task::JoinSet::new();
    let mut answers = tokio::task::JoinSet::new();
    let mut running: HashMap<SeriesKey, AbortHandle> = HashMap::new();
    let mut configured = configured_of(&first);
    let mut plan = first;
    let schedule_seed: u64 = rand::rng().random();
    loop {
        let wanted = series_of(&plan);
        let origin = tokio::time::Instant::now();
        running.retain(|key, handle| {
            let keep = wanted.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        for key in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let slots = Slots::new(key.slot_seed(schedule_seed), key.interval, origin);
            let context = Context {
                settings: settings.clone(),
                shared: shared.clone(),
                evidence: evidence.clone(),
            };
            let handle = series.spawn(probe_series(key.clone(), slots, context));
            running.insert(key, handle);
        }
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    break;
                }
                plan = plans.borrow_and_update().clone();
                configured = configured_of(&plan);
                lock(&evidence).set_settings(plan.evidence.clone());
                // A new cap is a new semaphore: probes in flight finish on the old one.
                let permits = if plan.concurrency.max(1) == concurrency {
                    settings.borrow().permits.clone()
                } else {
                    concurrency = plan.concurrency.max(1);
                    Arc::new(Semaphore::new(concurrency))
                };
                let _ = settings_tx.send(Settings { options: plan.options.clone(), permits });
            }
            Some(request) = recv_request(&mut requests) => {
                let now = tokio::time::Instant::now().into_std();
                let verdict = lock(&evidence).on_request(&request, &configured, now);
                match verdict {
                    RequestVerdict::Probe { request_id, target, port, family, level, deadline } => {
                        let target = ProbeTarget { host: target, port, family, level };
                        answers.spawn(answer_request(
                            target,
                            request_id,
                            tokio::time::Instant::from_std(deadline),
                            settings.clone(),
                            shared.clone(),
                            evidence.clone(),
                        ));
                    }
                    RequestVerdict::Drop(reason) => {
                        let dropped = lock(&evidence).requests_dropped;
                        debug!(request_id = request.request_id, target = %request.target, port = request.port, dropped, "probe request not answered: {reason}");
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        // Reap what was aborted, so the set does not grow over many reloads.
        while series.try_join_next().is_some() {}
        while answers.try_join_next().is_some() {}
    }
    series.abort_all();
    answers.abort_all();
}

/// The next probe request, or never when the uplink cannot send any (no channel).
async fn recv_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<ProbeRequest>>,
) -> Option<ProbeRequest> {
    match requests {
        Some(rx) => match rx.recv().await {
            Some(request) => Some(request),
            None => {
                *requests = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// One requested probe: on a fresh socket now, unless the cap on probes in flight holds it past
/// the request's deadline (then the answer would be of no use).
async fn answer_request(
    target: ProbeTarget,
    request_id: u64,
    deadline: tokio::time::Instant,
    settings: watch::Receiver<Settings>,
    shared: Arc<Shared>,
    evidence: SharedEvidence,
) {
    let Settings { options, permits } = settings.borrow().clone();
    let mut result = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        if tokio::time::Instant::now() >= deadline {
            lock(&evidence).requests_dropped += 1;
            debug!(
                request_id,
                "probe request not answered: its deadline passed while waiting to probe"
            );
            return;
        }
        probe::probe(&target, &options).await
    };
    result.cause = ProbeCause::Requested;
    result.request_id = Some(request_id);
    let now = tokio::time::Instant::now().into_std();
    lock(&evidence).on_result(&result, now);
    shared.record(result, true).await;
}

/// Marks a series' confirmation run over however it ends, aborted by a reload included.
struct ConfirmationRun {
    evidence: SharedEvidence,
    target: ProbeTarget,
}

impl Drop for ConfirmationRun {
    fn drop(&mut self) {
        lock(&self.evidence).confirmations_done(
            &self.target.host,
            self.target.port,
            self.target.family,
        );
    }
}

/// A task that goes when its holder goes: the series' quick confirmation run ends with the
/// series (a reload, shutdown).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a series' probes share: the probe settings, the spool and uplink, the evidence.
#[derive(Clone)]
struct Context {
    settings: watch::Receiver<Settings>,
    shared: Arc<Shared>,
    evidence: SharedEvidence,
}

/// One confirmation probe of `target` on a fresh socket, recorded and sent at once — or, when
/// it started alongside the probe it confirms, once that probe's result is recorded (`after`
/// says so), so a confirmation answered first never comes before what it confirms.
async fn confirm_once(target: ProbeTarget, context: Context, after: Option<watch::Receiver<bool>>) {
    let Settings { options, permits } = context.settings.borrow().clone();
    let mut result = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        probe::probe(&target, &options).await
    };
    if let Some(mut recorded) = after {
        // An error is the series gone (a reload, shutdown): nothing to wait for then.
        let _ = recorded.wait_for(|done| *done).await;
    }
    result.cause = ProbeCause::Confirmation;
    lock(&context.evidence).on_result(&result, tokio::time::Instant::now().into_std());
    context.shared.record(result, true).await;
}

/// The confirmations of a departure that never connected: `count` probes started `spacing`
/// apart (the first `first_after` from now), each on its own, so that probes which time out
/// overlap instead of queueing; the series' schedule goes on meanwhile.
async fn confirm_unconnected(
    target: ProbeTarget,
    count: u32,
    (first_after, spacing): (Duration, Duration),
    context: Context,
    after: Option<watch::Receiver<bool>>,
) {
    let _run = ConfirmationRun {
        evidence: context.evidence.clone(),
        target: target.clone(),
    };
    let mut probes = tokio::task::JoinSet::new();
    for n in 0..count {
        tokio::time::sleep(if n == 0 { first_after } else { spacing }).await;
        probes.spawn(confirm_once(target.clone(), context.clone(), after.clone()));
    }
    while probes.join_next().await.is_some() {}
}

/// Completes once the probe's connection attempt has waited `after` for an answer; never if
/// it is answered (or fails) first. A slow resolution postpones the count, which starts with
/// the attempt.
async fn left_unanswered(progress: &probe::Progress, after: Duration) {
    let mut wait = after;
    // Bounded: each round waits at least a millisecond, and the probe's own deadline ends the
    // race this runs in.
    loop {
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        match progress.unanswered_for() {
            Some(waited) if waited >= after => return,
            Some(waited) => wait = after - waited,
            None if progress.resolving() => wait = after,
            None => return std::future::pending().await,
        }
    }
}

async fn probe_series(key: SeriesKey, mut slots: Slots, context: Context) {
    let Context {
        settings,
        shared,
        evidence,
    } = context.clone();
    let target = ProbeTarget {
        host: key.host,
        port: key.port,
        family: key.family,
        level: key.level,
    };
    tokio::time::sleep_until(slots.next_start(tokio::time::Instant::now())).await;
    // The quick confirmation run under way, if any (one per series at a time: the evidence
    // grants no second while it lasts).
    let mut _quick_run: Option<AbortOnDrop> = None;
    loop {
        // Fixed rate: the next probe is due at the next slot, one interval after this one's,
        // however long this one took, so a series that times out is probed as often as one
        // that answers (and the collector sees a failing port at the same rhythm it saw it
        // open). A probe longer than its interval makes the next one start at once, never two
        // at a time.
        let started = tokio::time::Instant::now();
        let Settings { options, permits } = settings.borrow().clone();
        // Set once this probe's result is recorded, when confirmations started alongside it.
        let mut recorded: Option<watch::Sender<bool>> = None;
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let progress = probe::Progress::default();
            let probing = probe::probe_with_progress(&target, &options, &progress);
            tokio::pin!(probing);
            let unanswered_after = lock(&evidence).settings().unanswered_after;
            tokio::select! {
                result = &mut probing => result,
                () = left_unanswered(&progress, unanswered_after) => {
                    // Most likely the departure its timeout will report: confirm it now.
                    let now = tokio::time::Instant::now().into_std();
                    let (granted, spacing) = {
                        let mut evidence = lock(&evidence);
                        let granted =
                            evidence.on_unanswered(&target.host, target.port, target.family, now);
                        (granted, evidence.settings().unconnected_spacing)
                    };
                    if granted > 0 {
                        let (tx, rx) = watch::channel(false);
                        recorded = Some(tx);
                        let run = tokio::spawn(confirm_unconnected(
                            target.clone(),
                            granted,
                            (Duration::ZERO, spacing),
                            context.clone(),
                            Some(rx),
                        ));
                        _quick_run = Some(AbortOnDrop(run.abort_handle()));
                    }
                    probing.await
                }
            }
        };
        let judged = lock(&evidence).on_result(&result, started.into_std());
        shared
            .record(result, judged.urgent(ProbeCause::Scheduled))
            .await;
        if let Some(recorded) = recorded {
            let _ = recorded.send(true);
        }
        if judged.confirmations > 0 && judged.unconnected {
            let run = tokio::spawn(confirm_unconnected(
                target.clone(),
                judged.confirmations,
                (judged.spacing, judged.spacing),
                context.clone(),
                None,
            ));
            _quick_run = Some(AbortOnDrop(run.abort_handle()));
        } else if judged.confirmations > 0 {
            // The departure reached the service: its confirmations keep the floor, one after
            // the other, and the schedule waits for them.
            let _run = ConfirmationRun {
                evidence: evidence.clone(),
                target: target.clone(),
            };
            for _ in 0..judged.confirmations {
                tokio::time::sleep(judged.spacing).await;
                confirm_once(target.clone(), context.clone(), None).await;
            }
        }
        tokio::time::sleep_until(slots.next_start(tokio::time::Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::spool::Spool;
    use egresswatch_wire::{Labels, Outcome, ProbeResult};

    /// What a series records to: a spool in a directory of its own (kept while the test runs).
    fn spooled() -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool"), 1 << 20).unwrap();
        let shared = Shared::new(Labels::default(), Vec::new(), Some(spool), String::new());
        (dir, Arc::new(shared))
    }

    /// A port that accepts and never greets: every banner probe runs to its deadline.
    async fn silent_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        port
    }

    #[test]
    fn both_families_of_a_port_start_together_and_a_long_probe_skips_without_a_burst() {
        let interval = Duration::from_secs(10);
        let origin = tokio::time::Instant::now();
        let key = |family| SeriesKey {
            host: "mx.lab.test".into(),
            port: 587,
            family,
            level: Level::Tls,
            interval,
        };
        let seed = key(Family::Ipv4).slot_seed(7);
        assert_eq!(
            seed,
            key(Family::Ipv6).slot_seed(7),
            "one seed per target and port"
        );
        let other_port = SeriesKey {
            port: 25,
            ..key(Family::Ipv4)
        };
        assert_ne!(seed, other_port.slot_seed(7));
        let mut v4 = Slots::new(seed, interval, origin);
        let mut v6 = Slots::new(seed, interval, origin);
        let mut now = origin;
        let mut starts = Vec::new();
        for _ in 0..50 {
            let a = v4.next_start(now);
            assert_eq!(a, v6.next_start(now));
            starts.push(a);
            now = a + Duration::from_millis(5);
        }
        assert!(
            starts[0] < origin + interval,
            "the first within one interval"
        );
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= interval.mul_f64(0.8) && gap <= interval.mul_f64(1.2),
                "{gap:?}"
            );
        }
        // IPv4's probe runs 35 s past its start: it starts at once, then is back on the slots
        // IPv6 keeps to.
        let late = now + Duration::from_secs(35);
        assert_eq!(v4.next_start(late), late);
        let mut v6_next = v6.next_start(now);
        while v6_next <= late {
            v6_next = v6.next_start(v6_next + Duration::from_millis(5));
        }
        assert_eq!(v4.next_start(late + Duration::from_millis(5)), v6_next);
    }

    /// A port that accepts until `closing` says so, then leaves its accept queue (of one) full,
    /// so that the kernel drops every new SYN: connections go unanswered, as behind a filter.
    async fn closable_port(closing: watch::Receiver<bool>) -> u16 {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(0).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut closing = closing;
            loop {
                tokio::select! {
                    accepted = listener.accept() => { if accepted.is_err() { return; } }
                    _ = closing.wait_for(|c| *c) => break,
                }
            }
            // The one queued connection that fills the queue; the listener stays open.
            let _filler = std::net::TcpStream::connect(("127.0.0.1", port));
            std::future::pending::<()>().await;
        });
        port
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confirmation_answered_first_waits_for_the_result_it_confirms() {
        let (_dir, shared) = spooled();
        // A connect-level probe of it is answered at once.
        let port = silent_port().await;
        let options = ProbeOptions::new(
            Duration::from_secs(2),
            Arc::new(rustls::RootCertStore::empty()),
        );
        let permits = Arc::new(Semaphore::new(4));
        let (_settings_tx, settings) = watch::channel(Settings { options, permits });
        let context = Context {
            settings,
            shared: shared.clone(),
            evidence: Arc::new(Mutex::new(Evidence::new(EvidenceSettings::default()))),
        };
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            port,
            family: Family::Ipv4,
            level: Level::Connect,
        };
        let (recorded, after) = watch::channel(false);
        let confirming = tokio::spawn(confirm_once(target, context, Some(after)));
        // Its probe connects at once; the result it confirms is still out.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(shared.unacked(1, 10).await.0.is_empty());
        let _ = recorded.send(true);
        confirming.await.unwrap();
        let (results, _) = shared.unacked(1, 10).await;
        assert_eq!(results.len(), 1, "{results:#?}");
        assert_eq!(results[0].cause, ProbeCause::Confirmation);
        assert_eq!(results[0].outcome, Outcome::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_connection_is_confirmed_before_its_own_timeout() {
        let (_dir, shared) = spooled();
        let (close, closing) = watch::channel(false);
        let timeout = Duration::from_millis(2500);
        let plan = Plan {
            targets: vec![TargetConfig {
                host: "127.0.0.1".into(),
                ports: vec![closable_port(closing).await],
                level: Level::Connect,
                interval: Duration::from_secs(3),
            }],
            options: ProbeOptions::new(timeout, Arc::new(rustls::RootCertStore::empty())),
            floor: Duration::ZERO,
            concurrency: 4,
            evidence: EvidenceSettings {
                confirm_probes: 2,
                unconnected_spacing: Duration::from_millis(500),
                unanswered_after: Duration::from_millis(1000),
                ..EvidenceSettings::default()
            },
        };
        let (_plans_tx, plans) = watch::channel(plan);
        let (stop_tx, stop) = watch::channel(false);
        let schedule = tokio::spawn(run(plans, shared.clone(), stop));
        let ipv4 = |results: Vec<ProbeResult>| -> Vec<ProbeResult> {
            results
                .into_iter()
                .filter(|r| r.family == Family::Ipv4)
                .collect()
        };
        // Bounded waits: the first probe comes within one interval, the closing one within two.
        let mut results = Vec::new();
        for _ in 0..100 {
            results = ipv4(shared.unacked(1, 1000).await.0);
            if results.iter().any(|r| r.outcome == Outcome::Ok) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            results.iter().any(|r| r.outcome == Outcome::Ok),
            "{results:#?}"
        );
        let _ = close.send(true);
        let mut departed = None;
        for _ in 0..150 {
            results = ipv4(shared.unacked(1, 1000).await.0);
            departed = results
                .iter()
                .find(|r| r.cause == ProbeCause::Scheduled && r.outcome == Outcome::Timeout)
                .cloned();
            let confirmations = results
                .iter()
                .filter(|r| r.cause == ProbeCause::Confirmation)
                .count();
            if departed.is_some() && confirmations >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop_tx.send(true);
        let _ = schedule.await;
        let departed = departed.unwrap_or_else(|| panic!("no scheduled timeout: {results:#?}"));
        let confirmations: Vec<&ProbeResult> = results
            .iter()
            .filter(|r| r.cause == ProbeCause::Confirmation)
            .collect();
        assert_eq!(confirmations.len(), 2, "{results:#?}");
        for c in &confirmations {
            assert_eq!(c.outcome, Outcome::Timeout, "{c:?}");
            assert!(
                c.seq > departed.seq,
                "recorded after what it confirms: {c:?}"
            );
            let after = c.at_unix_ms - departed.at_unix_ms;
            // Started once the attempt had waited 1 s, before the probe's own 2.5 s timeout.
            assert!(
                (900..2500).contains(&after),
                "confirmation started {after} ms after the departing probe: {results:#?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_that_runs_to_its_deadline_does_not_stretch_the_interval() {
        let (_dir, shared) = spooled();
        let interval = Duration::from_millis(1000);
        let timeout = Duration::from_millis(700);
        let plan = Plan {
            targets: vec![TargetConfig {
                host: "127.0.0.1".into(),
                ports: vec![silent_port().await],
                level: Level::Banner,
                interval,
            }],
            options: ProbeOptions::new(timeout, Arc::new(rustls::RootCertStore::empty())),
            floor: Duration::ZERO,
            concurrency: 4,
            evidence: EvidenceSettings::default(),
        };
        let (_plans_tx, plans) = watch::channel(plan);
        let (stop_tx, stop) = watch::channel(false);
        let schedule = tokio::spawn(run(plans, shared.clone(), stop));
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let _ = stop_tx.send(true);
        let _ = schedule.await;

        let (results, _) = shared.unacked(1, 1000).await;
        let mut starts: Vec<i64> = results
            .iter()
            .filter(|r| r.family == Family::Ipv4)
            .inspect(|r| assert_eq!(r.outcome, Outcome::NoBanner, "{r:?}"))
            .map(|r| r.at_unix_ms)
            .collect();
        starts.sort();
        let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "probes in 6.5 s: {starts:?}");
        let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
        // Fixed rate: about the interval (±10 % jitter), not interval + timeout (1700 ms).
        assert!(
            (850.0..1250.0).contains(&mean),
            "mean gap {mean} ms between probe starts; gaps {gaps:?}"
        );
    }
}
