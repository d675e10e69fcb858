//! One series' memory and its sequential test. While a series is settled, each live result adds
//! log-likelihood evidence for "the path changed" against "it did not" (Wald's SPRT, restarted
//! whenever the evidence leans back to the settled state, which is Page's CUSUM); the chance
//! that an unchanged path fails is the series' own background failure rate, learned while
//! settled. A series flapping is measured the way Nagios does — a weighted percentage of state
//! changes over a window of scheduled probes, newer changes weighing more, with a high threshold
//! to start and a lower one to stop.

use super::DetectorConfig;
pub use egresswatch_wire::PortState;
use egresswatch_wire::{Outcome, ProbeCause};
use std::collections::VecDeque;

/// The most scheduled results one test keeps for the background rate.
const MAX_TEST_SCHEDULED: usize = 256;

impl From<PortState> for crate::events::State {
    fn from(state: PortState) -> Self {
        match state {
            PortState::Open => crate::events::State::Open,
            PortState::Blocked => crate::events::State::Blocked,
        }
    }
}

/// One result as the series keeps it: what a witness of a change reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub state: PortState,
    pub outcome: Outcome,
    pub icmp_from: Option<String>,
    pub cause: ProbeCause,
    pub at_ms: i64,
}

/// What one observation did to the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    None,
    /// A live departure from the settled state started a test.
    Departed,
    /// A test under way took evidence without deciding.
    Evidence,
    /// A new state was decided (the first state of a series is a baseline and not reported).
    Confirmed {
        from: PortState,
        to: PortState,
    },
    FlappingStarted {
        from: Option<PortState>,
    },
    FlappingStopped {
        to: PortState,
    },
}

/// The test under way since a series' first departing result.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Toward which state.
    pub to: PortState,
    /// Log-likelihood ratio of "changed to `to`" over "unchanged"; the test ends at 0 or below.
    pub evidence: f64,
    /// The first departing result's time.
    pub since_ms: i64,
    /// The latest departing result.
    pub witness: Seen,
    /// The most the evidence reached: a test that came near a decision is no background.
    peak: f64,
    /// Confirmations still counted before the next scheduled or requested result.
    confirmations_left: u32,
    /// The scheduled results of the test, failed or not: background if the test ends unchanged.
    scheduled: Vec<bool>,
}

/// The evidence a decided change was made on, kept for the event that reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub to: PortState,
    pub since_ms: i64,
    pub witness: Seen,
    pub evidence: f64,
}

#[derive(Debug, Clone)]
pub struct Series {
    confirmed: Option<PortState>,
    /// Evidence for `blocked` over `open` before the series has a baseline (two-sided).
    baseline_evidence: f64,
    episode: Option<Episode>,
    decided: Option<Decided>,
    last: Option<PortState>,
    last_failure: Option<Outcome>,
    last_at_ms: i64,
    last_scheduled_at_ms: Option<i64>,
    /// The gap between the last two scheduled probes: the series' probe interval as observed.
    interval_ms: Option<i64>,
    /// Failure rate of the path while settled open (EWMA over scheduled results).
    background: f64,
    /// Scheduled results only: the window flapping is measured on.
    history: VecDeque<PortState>,
    flapping: bool,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            confirmed: None,
            baseline_evidence: 0.0,
            episode: None,
            decided: None,
            last: None,
            last_failure: None,
            last_at_ms: 0,
            last_scheduled_at_ms: None,
            interval_ms: None,
            background: 0.0,
            history: VecDeque::new(),
            flapping: false,
        }
    }
}

impl Series {
    pub fn confirmed(&self) -> Option<PortState> {
        self.confirmed
    }

    pub fn last(&self) -> Option<PortState> {
        self.last
    }

    /// When the newest result was measured.
    pub fn last_at_ms(&self) -> i64 {
        self.last_at_ms
    }

    /// The scheduled probe interval as observed.
    pub fn interval_ms(&self) -> Option<i64> {
        self.interval_ms
    }

    /// When the latest scheduled probe was measured.
    pub fn last_scheduled_at_ms(&self) -> Option<i64> {
        self.last_scheduled_at_ms
    }

    /// The latest failing outcome (what a change to `blocked` is reported with).
    pub fn last_failure(&self) -> Option<Outcome> {
        self.last_failure
    }

    pub fn flapping(&self) -> bool {
        self.flapping
    }

    /// The test under way, if any.
    pub fn episode(&self) -> Option<&Episode> {
        self.episode.as_ref()
    }

    /// The background failure rate the test assumes: the learned one, never under the floor.
    pub fn background(&self, config: &DetectorConfig) -> f64 {
        self.background
            .max(config.background_floor)
            .clamp(f64::MIN_POSITIVE, 0.5)
    }

    /// The departure behind the series' current state or test: the test under way, else the
    /// decision that still stands.
    pub fn departure(&self) -> Option<(i64, &Seen)> {
        if let Some(e) = &self.episode {
            return Some((e.since_ms, &e.witness));
        }
        self.decided
            .as_ref()
            .filter(|d| self.confirmed == Some(d.to))
            .map(|d| (d.since_ms, &d.witness))
    }

    /// Takes one observation. Results older than the newest seen (out of order, such as an
    /// answer that arrives after a later scheduled result) are ignored. `control_failing`: the
    /// agent's control port fails too, so the result is no evidence about SMTP.
    pub fn observe(&mut self, seen: Seen, config: &DetectorConfig, control_failing: bool) -> Step {
        if self.last.is_some() && seen.at_ms < self.last_at_ms {
            return Step::None;
        }
        let state = seen.state;
        let scheduled = seen.cause == ProbeCause::Scheduled;
        if scheduled {
            if let Some(prev) = self.last_scheduled_at_ms {
                if seen.at_ms > prev {
                    self.interval_ms = Some(seen.at_ms - prev);
                }
            }
            self.last_scheduled_at_ms = Some(seen.at_ms);
        }
        self.last_at_ms = seen.at_ms;
        self.last = Some(state);
        if seen.outcome.is_failure() {
            self.last_failure = Some(seen.outcome);
        }
        if self.flapping {
            if scheduled {
                let from = self.confirmed;
                if let Some(step) = self.flapping_step(state, from, config) {
                    return step;
                }
            }
            return Step::None;
        }
        let before = self.confirmed;
        let step = self.test(seen, config, control_failing);
        if scheduled {
            // The flapping window holds what the test leaned to at each scheduled probe, not
            // the raw result: a lost probe the background explains is no state change.
            let leaning = match (step, &self.episode, self.confirmed) {
                (Step::Confirmed { to, .. }, _, _) => to,
                (_, Some(e), _) if e.evidence >= config.upper_bound() / 2.0 => e.to,
                (_, _, Some(settled)) => settled,
                (_, _, None) => state,
            };
            if let Some(flap) = self.flapping_step(leaning, before, config) {
                if matches!(flap, Step::FlappingStarted { .. }) {
                    self.confirmed = before;
                }
                return flap;
            }
        }
        step
    }

    /// The sequential test proper, on a series that is not flapping.
    fn test(&mut self, seen: Seen, config: &DetectorConfig, control_failing: bool) -> Step {
        let state = seen.state;
        let scheduled = seen.cause == ProbeCause::Scheduled;
        let Some(settled) = self.confirmed else {
            return self.baseline(&seen, config);
        };
        if control_failing {
            return Step::None;
        }
        let departing = state != settled;
        let Some(mut episode) = self.episode.take() else {
            if !departing {
                if scheduled {
                    self.fold_background(settled, &[state == PortState::Blocked], config);
                }
                return Step::None;
            }
            // The agent's own re-probes weigh only inside a test that a scheduled or requested
            // result started: they cannot start one.
            if seen.cause == ProbeCause::Confirmation {
                return Step::None;
            }
            let episode = Episode {
                to: settled.other(),
                evidence: self.llr(settled, &seen, config),
                peak: 0.0,
                since_ms: seen.at_ms,
                witness: seen.clone(),
                confirmations_left: config.confirmations_counted,
                scheduled: if scheduled { vec![true] } else { Vec::new() },
            };
            return self.after_evidence(episode, settled, config, Step::Departed);
        };
        if seen.cause == ProbeCause::Confirmation {
            if episode.confirmations_left == 0 {
                self.episode = Some(episode);
                return Step::None;
            }
            episode.confirmations_left -= 1;
        } else {
            episode.confirmations_left = config.confirmations_counted;
        }
        // A test is bounded in memory however long it stays undecided.
        if scheduled && episode.scheduled.len() < MAX_TEST_SCHEDULED {
            episode.scheduled.push(departing);
        }
        episode.evidence += self.llr(settled, &seen, config);
        if departing {
            episode.witness = seen;
        }
        self.after_evidence(episode, settled, config, Step::Evidence)
    }

    fn after_evidence(
        &mut self,
        episode: Episode,
        settled: PortState,
        config: &DetectorConfig,
        step: Step,
    ) -> Step {
        let mut episode = episode;
        episode.peak = episode.peak.max(episode.evidence);
        if episode.evidence <= 0.0 {
            // The path looks as it did: the test's scheduled results were its background,
            // unless they came near a decision (what flaps must not become background).
            // (Only an open path's background is learned, where departing means failing.)
            if episode.peak < config.upper_bound() / 2.0 {
                self.fold_background(settled, &episode.scheduled, config);
            }
            return Step::None;
        }
        self.episode = Some(episode);
        if self
            .episode
            .as_ref()
            .is_some_and(|e| e.evidence >= config.upper_bound())
        {
            return self.decide().unwrap_or(Step::None);
        }
        step
    }

    /// Ends the test under way with the change it was testing for (its own evidence crossed
    /// the bound, or its group's did).
    pub fn decide(&mut self) -> Option<Step> {
        let episode = self.episode.take()?;
        let from = self.confirmed.replace(episode.to)?;
        self.decided = Some(Decided {
            to: episode.to,
            since_ms: episode.since_ms,
            witness: episode.witness,
            evidence: episode.evidence,
        });
        Some(Step::Confirmed {
            from,
            to: episode.to,
        })
    }

    /// One result's evidence for a change away from `settled`.
    fn llr(&self, settled: PortState, seen: &Seen, config: &DetectorConfig) -> f64 {
        let background = self.background(config);
        let blocked_answers = config.blocked_answer_rate.clamp(1e-9, 0.5);
        // The chance of a departing result if the path is unchanged, and if it changed.
        let (mut unchanged, changed) = match settled {
            PortState::Open => (background, 1.0 - blocked_answers),
            PortState::Blocked => (blocked_answers, 1.0 - background),
        };
        if seen.cause == ProbeCause::Confirmation {
            // A re-probe seconds after a failure shares its cause when that was a short blip:
            // it departs too with this extra chance even when nothing changed.
            let carry = config.confirmation_carryover.clamp(0.0, 0.99);
            unchanged = carry + (1.0 - carry) * unchanged;
        }
        if seen.state != settled {
            (changed / unchanged).ln()
        } else {
            ((1.0 - changed) / (1.0 - unchanged)).ln()
        }
    }

    fn fold_background(&mut self, settled: PortState, failed: &[bool], config: &DetectorConfig) {
        if settled != PortState::Open {
            return;
        }
        let weight = config.background_weight.clamp(0.0, 1.0);
        for f in failed {
            let x = if *f { 1.0 } else { 0.0 };
            self.background += weight * (x - self.background);
        }
    }

    /// Before a baseline, the same test two-sided: the first state the evidence settles on is
    /// the baseline (no event).
    fn baseline(&mut self, seen: &Seen, config: &DetectorConfig) -> Step {
        if seen.cause == ProbeCause::Confirmation {
            return Step::None;
        }
        self.baseline_evidence += self.llr(PortState::Open, seen, config);
        let bound = config.upper_bound();
        let state = if self.baseline_evidence >= bound {
            PortState::Blocked
        } else if self.baseline_evidence <= -bound {
            PortState::Open
        } else {
            return Step::None;
        };
        self.baseline_evidence = 0.0;
        self.confirmed = Some(state);
        Step::None
    }

    fn flapping_step(
        &mut self,
        state: PortState,
        from: Option<PortState>,
        config: &DetectorConfig,
    ) -> Option<Step> {
        let window = config.flap_window.max(3);
        self.history.push_back(state);
        while self.history.len() > window {
            self.history.pop_front();
        }
        let pct = self.change_percent(window);
        if !self.flapping && pct >= config.flap_high_pct {
            self.flapping = true;
            self.episode = None;
            return Some(Step::FlappingStarted { from });
        }
        if self.flapping && pct < config.flap_low_pct {
            self.flapping = false;
            self.confirmed = Some(state);
            self.episode = None;
            return Some(Step::FlappingStopped { to: state });
        }
        None
    }

    /// Undoes a decision that turned out to be a lost network; the evidence stays at the bound
    /// so the change is decided at once by the next departing result once the network is back.
    pub fn revert(&mut self, from: PortState, config: &DetectorConfig) {
        let Some(to) = self.confirmed.replace(from) else {
            return;
        };
        if let Some(d) = self.decided.take() {
            self.episode = Some(Episode {
                to,
                evidence: config.upper_bound(),
                peak: config.upper_bound(),
                since_ms: d.since_ms,
                witness: d.witness,
                confirmations_left: config.confirmations_counted,
                scheduled: Vec::new(),
            });
        }
    }

    /// Sets the baseline from stored history.
    pub fn restore(&mut self, state: PortState, outcome: Outcome, at_ms: i64) {
        self.confirmed = Some(state);
        self.episode = None;
        self.last = Some(state);
        self.last_at_ms = at_ms;
        if outcome.is_failure() {
            self.last_failure = Some(outcome);
        }
    }

    /// Undoes a decision whose series went back before the change settled (a short burst of
    /// lost probes): as if it never happened.
    pub fn withdraw(&mut self, from: PortState) {
        self.confirmed = Some(from);
        self.episode = None;
        self.decided = None;
    }

    /// Decides `to` now (a group change vouched for it); the test's evidence is kept for the
    /// event's witnesses.
    pub fn force(&mut self, to: PortState) {
        if self.confirmed != Some(to) {
            if let Some(e) = self.episode.take().filter(|e| e.to == to) {
                self.decided = Some(Decided {
                    to,
                    since_ms: e.since_ms,
                    witness: e.witness,
                    evidence: e.evidence,
                });
            }
        }
        self.confirmed = Some(to);
        self.episode = None;
    }

    /// Nagios' weighted state-change percentage: changes late in the window weigh up to 1.25×,
    /// early ones 0.75×. Zero until the window is full, so a young series never "flaps".
    fn change_percent(&self, window: usize) -> f64 {
        let n = self.history.len();
        if n < window {
            return 0.0;
        }
        let mut weighted = 0.0;
        for i in 1..n {
            if self.history[i] != self.history[i - 1] {
                let position = (i - 1) as f64 / (n - 2).max(1) as f64;
                weighted += 0.75 + 0.5 * position;
            }
        }
        weighted * 100.0 / (n - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortState::{Blocked as B, Open as O};

    /// The counts in these tests are for α = 1e-5: at the 2 % floor three failing scheduled
    /// probes decide (the default's α = 1e-7 takes one more).
    fn cfg() -> DetectorConfig {
        DetectorConfig {
            flap_window: 10,
            false_alarm_rate: 1e-5,
            ..Default::default()
        }
    }

    fn seen(state: PortState, cause: ProbeCause, at_ms: i64) -> Seen {
        Seen {
            state,
            outcome: if state == O {
                Outcome::Ok
            } else {
                Outcome::Timeout
            },
            icmp_from: None,
            cause,
            at_ms,
        }
    }

    fn feed_with(
        s: &mut Series,
        states: &[PortState],
        t0: i64,
        config: &DetectorConfig,
    ) -> Vec<Step> {
        states
            .iter()
            .enumerate()
            .map(|(i, st)| {
                s.observe(
                    seen(*st, ProbeCause::Scheduled, t0 + i as i64 * 60_000),
                    config,
                    false,
                )
            })
            .filter(|s| !matches!(s, Step::None | Step::Departed | Step::Evidence))
            .collect()
    }

    fn feed(s: &mut Series, states: &[PortState], t0: i64) -> Vec<Step> {
        feed_with(s, states, t0, &cfg())
    }

    fn settled_open() -> Series {
        let mut s = Series::default();
        feed(&mut s, &[O, O, O], 0);
        assert_eq!(s.confirmed(), Some(O));
        s
    }

    #[test]
    fn baseline_then_evidence_accumulates_to_a_decision() {
        let mut s = settled_open();
        // A lost probe, then back: the test ends where it began.
        assert!(feed(&mut s, &[B, O], 1_000_000).is_empty());
        assert!(s.episode().is_none());
        assert!(feed(&mut s, &[B, B], 2_000_000).is_empty());
        let e = s.episode().unwrap().evidence;
        assert!(e > 0.0 && e < cfg().upper_bound(), "{e}");
        assert_eq!(
            feed(&mut s, &[B], 2_120_000),
            vec![Step::Confirmed { from: O, to: B }]
        );
        let (since, witness) = s.departure().unwrap();
        assert_eq!(since, 2_000_000);
        assert_eq!(witness.at_ms, 2_120_000);
    }

    #[test]
    fn the_learned_background_rate_needs_more_evidence_and_has_a_floor() {
        let config = cfg();
        let quiet = settled_open();
        assert_eq!(quiet.background(&config), config.background_floor);
        // A path that fails one scheduled probe in ten: its failures say less.
        let mut noisy = settled_open();
        let mut t = 1_000_000;
        for i in 0..400 {
            let st = if i % 10 == 0 { B } else { O };
            noisy.observe(seen(st, ProbeCause::Scheduled, t), &config, false);
            t += 60_000;
        }
        let learned = noisy.background(&config);
        assert!(learned > 0.05 && learned < 0.15, "{learned}");
        // Three failures decide on a quiet series; the noisy one needs more.
        let failures_to_decide = |s: &mut Series, t0: i64| {
            (1..=20)
                .find(|n| !feed(s, &[B], t0 + n * 60_000).is_empty())
                .unwrap()
        };
        assert_eq!(failures_to_decide(&mut quiet.clone(), 9_000_000), 3);
        let n = failures_to_decide(&mut noisy, 90_000_000);
        assert!((4..=6).contains(&n), "{n}");
    }

    #[test]
    fn confirmations_count_less_and_cannot_start_or_flood_a_test() {
        let config = cfg();
        let mut s = settled_open();
        // A confirmation alone starts nothing.
        assert_eq!(
            s.observe(seen(B, ProbeCause::Confirmation, 1_000_000), &config, false),
            Step::None
        );
        assert!(s.episode().is_none());
        assert_eq!(
            s.observe(seen(B, ProbeCause::Scheduled, 1_001_000), &config, false),
            Step::Departed
        );
        let after_one = s.episode().unwrap().evidence;
        s.observe(seen(B, ProbeCause::Confirmation, 1_004_000), &config, false);
        let conf = s.episode().unwrap().evidence - after_one;
        assert!(
            conf > 0.0 && conf < after_one,
            "confirmation {conf} vs {after_one}"
        );
        // A flood of confirmations: only the counted ones weigh, and they do not decide.
        for i in 0..100 {
            s.observe(
                seen(B, ProbeCause::Confirmation, 1_005_000 + i),
                &config,
                false,
            );
        }
        let flooded = s.episode().unwrap().evidence;
        assert!(
            (flooded - (after_one + f64::from(config.confirmations_counted) * conf)).abs() < 1e-9,
            "{flooded}"
        );
        assert_eq!(s.confirmed(), Some(O));
    }

    #[test]
    fn requested_results_are_ordinary_evidence() {
        let config = cfg();
        let mut s = settled_open();
        let mut r = settled_open();
        s.observe(seen(B, ProbeCause::Scheduled, 1_000_000), &config, false);
        r.observe(seen(B, ProbeCause::Requested, 1_000_000), &config, false);
        assert_eq!(s.episode().unwrap().evidence, r.episode().unwrap().evidence);
        assert_eq!(r.departure().unwrap().1.cause, ProbeCause::Requested);
    }

    #[test]
    fn a_failing_control_means_no_evidence() {
        let config = cfg();
        let mut s = settled_open();
        for i in 0..10 {
            assert_eq!(
                s.observe(
                    seen(B, ProbeCause::Scheduled, 1_000_000 + i * 60_000),
                    &config,
                    true
                ),
                Step::None
            );
        }
        assert!(s.episode().is_none());
        assert_eq!(s.confirmed(), Some(O));
    }

    #[test]
    fn a_late_answer_changes_nothing() {
        let config = cfg();
        let mut s = settled_open();
        assert_eq!(feed(&mut s, &[B, B, B], 1_000_000).len(), 1);
        // An answer measured before the decision's last result, arriving after it.
        assert_eq!(
            s.observe(seen(O, ProbeCause::Requested, 1_000_500), &config, false),
            Step::None
        );
        assert_eq!(s.confirmed(), Some(B));
        assert!(s.episode().is_none());
    }

    #[test]
    fn out_of_order_is_ignored() {
        let mut s = Series::default();
        feed(&mut s, &[O, O, O], 100_000_000);
        assert!(feed(&mut s, &[B, B, B, B], 0).is_empty());
        assert_eq!(s.confirmed(), Some(O));
    }

    #[test]
    fn isolated_lost_probes_are_no_flapping() {
        let mut s = Series::default();
        let mut states = vec![O; 10];
        for i in 0..60 {
            states.push(if i % 2 == 0 { B } else { O });
        }
        assert!(feed(&mut s, &states, 0).is_empty());
    }

    #[test]
    fn alternating_flaps_once() {
        let mut s = Series::default();
        let mut states = vec![O; 10];
        for i in 0..40 {
            states.push(if i % 4 < 2 { B } else { O });
        }
        let steps = feed(&mut s, &states, 0);
        assert_eq!(steps, vec![Step::FlappingStarted { from: Some(O) }]);
        let steps = feed(&mut s, &[O; 12], 100_000_000);
        assert_eq!(steps, vec![Step::FlappingStopped { to: O }]);
    }
}
