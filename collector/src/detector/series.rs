//! One series' memory: the confirmed state, the candidate that is collecting consistent probes
//! (hysteresis), and the recent observations that measure flapping the way Nagios does — a
//! weighted percentage of state changes over a window, newer changes weighing more, with a high
//! threshold to start and a lower one to stop.

use super::DetectorConfig;
use egresswatch_wire::Outcome;
use std::collections::VecDeque;

/// What one probe says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortState {
    Open,
    Blocked,
}

impl PortState {
    pub fn of(outcome: Outcome) -> PortState {
        if outcome.is_failure() {
            PortState::Blocked
        } else {
            PortState::Open
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Blocked => "blocked",
        }
    }
}

impl From<PortState> for crate::events::State {
    fn from(state: PortState) -> Self {
        match state {
            PortState::Open => crate::events::State::Open,
            PortState::Blocked => crate::events::State::Blocked,
        }
    }
}

/// What one observation did to the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    None,
    /// A new state was confirmed (the first confirmation of a series is a baseline and not
    /// reported).
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

#[derive(Debug, Clone, Default)]
pub struct Series {
    confirmed: Option<PortState>,
    candidate: Option<(PortState, u32)>,
    last: Option<PortState>,
    last_failure: Option<Outcome>,
    last_at_ms: i64,
    /// The gap between the last two probes: the series' probe interval as observed.
    interval_ms: Option<i64>,
    history: VecDeque<PortState>,
    flapping: bool,
}

impl Series {
    pub fn confirmed(&self) -> Option<PortState> {
        self.confirmed
    }

    pub fn last(&self) -> Option<PortState> {
        self.last
    }

    /// The probe interval as observed (the gap between the last two probes).
    pub fn interval_ms(&self) -> Option<i64> {
        self.interval_ms
    }

    /// The latest failing outcome (what a change to `blocked` is reported with).
    pub fn last_failure(&self) -> Option<Outcome> {
        self.last_failure
    }

    pub fn flapping(&self) -> bool {
        self.flapping
    }

    /// Takes one observation. Results older than the newest seen (out of order) are ignored.
    /// `hold_blocked` keeps a change to `blocked` from being confirmed (the agent's control port
    /// fails too: its network, not a policy).
    pub fn observe(
        &mut self,
        state: PortState,
        outcome: Outcome,
        at_ms: i64,
        config: &DetectorConfig,
        hold_blocked: bool,
    ) -> Step {
        if self.last.is_some() && at_ms < self.last_at_ms {
            return Step::None;
        }
        if self.last.is_some() && at_ms > self.last_at_ms {
            self.interval_ms = Some(at_ms - self.last_at_ms);
        }
        self.last_at_ms = at_ms;
        self.last = Some(state);
        if outcome.is_failure() {
            self.last_failure = Some(outcome);
        }
        let window = config.flap_window.max(3);
        self.history.push_back(state);
        while self.history.len() > window {
            self.history.pop_front();
        }
        let pct = self.change_percent(window);
        if !self.flapping && pct >= config.flap_high_pct {
            self.flapping = true;
            self.candidate = None;
            return Step::FlappingStarted {
                from: self.confirmed,
            };
        }
        if self.flapping {
            if pct < config.flap_low_pct {
                self.flapping = false;
                self.confirmed = Some(state);
                self.candidate = None;
                return Step::FlappingStopped { to: state };
            }
            return Step::None;
        }
        if self.confirmed == Some(state) {
            self.candidate = None;
            return Step::None;
        }
        let count = match self.candidate {
            Some((s, n)) if s == state => n.saturating_add(1),
            _ => 1,
        };
        self.candidate = Some((state, count));
        if count < config.confirm_probes.max(1) {
            return Step::None;
        }
        if state == PortState::Blocked && hold_blocked && self.confirmed.is_some() {
            return Step::None;
        }
        self.candidate = None;
        match self.confirmed.replace(state) {
            None => Step::None,
            Some(from) => Step::Confirmed { from, to: state },
        }
    }

    /// Undoes a confirmation that turned out to be a lost network; the candidate keeps its
    /// count so the change confirms at once when the network is back and the port still fails.
    pub fn revert(&mut self, from: PortState, confirm_probes: u32) {
        if let Some(to) = self.confirmed.replace(from) {
            self.candidate = Some((to, confirm_probes));
        }
    }

    /// Sets the baseline from stored history.
    pub fn restore(&mut self, state: PortState, outcome: Outcome, at_ms: i64) {
        self.confirmed = Some(state);
        self.candidate = None;
        self.last = Some(state);
        self.last_at_ms = at_ms;
        if outcome.is_failure() {
            self.last_failure = Some(outcome);
        }
    }

    /// Undoes a confirmation whose series went back before the change settled (a short burst
    /// of lost probes): as if it never happened.
    pub fn withdraw(&mut self, from: PortState) {
        self.confirmed = Some(from);
        self.candidate = None;
    }

    /// Confirms `to` now (a group change vouched for it).
    pub fn force(&mut self, to: PortState) {
        self.confirmed = Some(to);
        self.candidate = None;
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

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            flap_window: 10,
            ..Default::default()
        }
    }

    fn feed(s: &mut Series, states: &[PortState], t0: i64) -> Vec<Step> {
        states
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let o = if *st == PortState::Open {
                    Outcome::Ok
                } else {
                    Outcome::Timeout
                };
                s.observe(*st, o, t0 + i as i64 * 1000, &cfg(), false)
            })
            .filter(|s| *s != Step::None)
            .collect()
    }

    use PortState::{Blocked as B, Open as O};

    #[test]
    fn baseline_then_confirmed_change() {
        let mut s = Series::default();
        assert!(feed(&mut s, &[O, O, O], 0).is_empty());
        assert_eq!(s.confirmed(), Some(O));
        assert!(feed(&mut s, &[B, O, B, B], 10_000).is_empty());
        assert_eq!(
            feed(&mut s, &[B], 20_000),
            vec![Step::Confirmed { from: O, to: B }]
        );
    }

    #[test]
    fn out_of_order_is_ignored() {
        let mut s = Series::default();
        feed(&mut s, &[O, O, O], 100_000);
        assert!(feed(&mut s, &[B, B, B, B], 0).is_empty());
        assert_eq!(s.confirmed(), Some(O));
    }

    #[test]
    fn alternating_flaps_once() {
        let mut s = Series::default();
        let mut states = vec![O; 10];
        for i in 0..30 {
            states.push(if i % 2 == 0 { B } else { O });
        }
        let steps = feed(&mut s, &states, 0);
        assert_eq!(steps, vec![Step::FlappingStarted { from: Some(O) }]);
        let steps = feed(&mut s, &[O; 12], 100_000);
        assert_eq!(steps, vec![Step::FlappingStopped { to: O }]);
    }
}
