//! History, derived: what the long-kept tiers hold and how they follow from stored results. Pure
//! functions, no I/O; both stores call them inside the transaction that stores the results, so
//! each result is folded in exactly once (duplicates never reach here).
//!
//! Two shapes come out of the results:
//! - **state intervals** per series (agent, target, port, family): a run of probes with one
//!   outcome, with its first and last time, probe count and connect-latency histogram. A new
//!   interval starts only when the outcome changes. Intervals follow the agent's sequence
//!   numbers, which are its order of measurement even when its clock steps (the store's
//!   high-water mark hands each series its results in that order): a clock stepped back shows as
//!   an interval whose times reach back, never as a change that did not happen.
//! - **hourly rollups** per series and per cell (provider, account, port, family): counts by
//!   outcome and a connect-latency histogram. They only add, so results arriving late (a spool
//!   replayed after a partition) or in any order across agents give the same rollup.
//!
//! `no_address` (the name has no address in the family) is a fact about the destination's DNS:
//! it is counted in `probes` and in `outcomes` but is neither ok nor failed, and an interval of
//! it has the status `unknown`.

pub mod counts;
pub mod query;

use crate::clock::measured_at;
use crate::identity::{label_or_unlabelled, SeriesKey};
use counts::{LatencyHistogram, SparseCounts};
use egresswatch_wire::{Family, Outcome, ProbeResult};
use std::collections::BTreeMap;

pub const HOUR_MS: i64 = 3_600_000;

/// The hour (Unix hours) a time falls in.
pub fn hour_of(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(HOUR_MS)
}

/// One result as history keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub seq: u64,
    /// When it counts as measured ([`measured_at`]).
    pub at_ms: i64,
    pub outcome: Outcome,
    pub connect_us: Option<u32>,
}

impl Point {
    pub fn of(result: &ProbeResult, clock_trusted: bool, now_unix_ms: i64) -> Point {
        Point {
            seq: result.seq,
            at_ms: measured_at(result, clock_trusted, now_unix_ms),
            outcome: result.outcome,
            connect_us: result.timings.connect_us,
        }
    }
}

/// `open`, `blocked`, `partial` or `unknown` from how many counted probes (or agents) were ok
/// and how many failed.
pub fn status_of(ok: u64, failed: u64) -> &'static str {
    match (ok, failed) {
        (0, 0) => "unknown",
        (_, 0) => "open",
        (0, _) => "blocked",
        _ => "partial",
    }
}

/// The status a single outcome stands for.
pub fn outcome_status(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::NoAddress => "unknown",
        o if o.is_failure() => "blocked",
        _ => "open",
    }
}

/// Counts by outcome and connect latency over some probes: one hour of a series or a cell, or
/// any merge of those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Probes by outcome code.
    pub outcomes: SparseCounts,
    pub connect: LatencyHistogram,
}

impl Rollup {
    pub fn add(&mut self, point: &Point) {
        self.outcomes.add(point.outcome.code(), 1);
        if let Some(us) = point.connect_us {
            self.connect.record(us);
        }
    }

    pub fn merge(&mut self, other: &Rollup) {
        self.outcomes.merge(&other.outcomes);
        self.connect.merge(&other.connect);
    }

    /// Every probe, `no_address` included.
    pub fn probes(&self) -> u64 {
        self.outcomes.total()
    }

    pub fn failed(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(code, _)| Outcome::from_code(*code).is_none_or(|o| o.is_failure()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Probes that were not failures, `no_address` not counted.
    pub fn ok(&self) -> u64 {
        self.probes() - self.failed() - self.outcomes.get(Outcome::NoAddress.code())
    }

    pub fn status(&self) -> &'static str {
        status_of(self.ok(), self.failed())
    }

    /// (outcome name, count), in code order; a code this build does not know is `code_N`.
    pub fn outcome_names(&self) -> Vec<(String, u64)> {
        self.outcomes
            .iter()
            .map(|(code, n)| {
                let name = Outcome::from_code(code)
                    .map(|o| o.as_str().to_string())
                    .unwrap_or_else(|| format!("code_{code}"));
                (name, n)
            })
            .collect()
    }
}

/// One run of probes of a series with the same outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub first_seq: u64,
    pub last_seq: u64,
    pub outcome: Outcome,
    pub first_ms: i64,
    pub last_ms: i64,
    pub probes: u64,
    pub connect: LatencyHistogram,
}

impl Interval {
    fn starting(point: &Point) -> Interval {
        let mut connect = LatencyHistogram::default();
        if let Some(us) = point.connect_us {
            connect.record(us);
        }
        Interval {
            first_seq: point.seq,
            last_seq: point.seq,
            outcome: point.outcome,
            first_ms: point.at_ms,
            last_ms: point.at_ms,
            probes: 1,
            connect,
        }
    }

    fn extend(&mut self, point: &Point) {
        self.last_seq = point.seq;
        self.first_ms = self.first_ms.min(point.at_ms);
        self.last_ms = self.last_ms.max(point.at_ms);
        self.probes += 1;
        if let Some(us) = point.connect_us {
            self.connect.record(us);
        }
    }
}

/// What folding points into a series changed: the intervals to write (each keyed by its
/// `first_seq`, so writing one again replaces it) and the series' open interval afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Folded {
    pub touched: Vec<Interval>,
    pub open: Option<Interval>,
}

/// Folds a series' new points into its intervals, given the open (latest) one. Points are taken
/// in sequence order; one at or below the open interval's last sequence was folded in before and
/// is skipped, so folding the same points twice changes nothing.
pub fn fold_series(open: Option<Interval>, points: &[Point]) -> Folded {
    let mut ordered: Vec<&Point> = points.iter().collect();
    ordered.sort_by_key(|p| p.seq);
    let mut current = open;
    let mut dirty = false;
    let mut touched = Vec::new();
    for point in ordered {
        match &mut current {
            Some(c) if point.seq <= c.last_seq => {}
            Some(c) if c.outcome == point.outcome => {
                c.extend(point);
                dirty = true;
            }
            _ => {
                if let Some(done) = current.take() {
                    if dirty {
                        touched.push(done);
                    }
                }
                current = Some(Interval::starting(point));
                dirty = true;
            }
        }
    }
    if dirty {
        if let Some(c) = &current {
            touched.push(c.clone());
        }
    }
    Folded {
        touched,
        open: current,
    }
}

/// A cell of the matrix over time: provider and account (labels as the matrix normalises
/// them), port and family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    pub provider: String,
    pub account: String,
    pub port: u16,
    pub family: Family,
}

/// What one agent's fresh results add to history.
#[derive(Debug, Default)]
pub struct Derived {
    /// Each series' new points, in sequence order.
    pub points: BTreeMap<SeriesKey, Vec<Point>>,
    /// Each series' (provider, account), normalised.
    pub labels: BTreeMap<SeriesKey, (String, String)>,
    pub series_hours: BTreeMap<(SeriesKey, i64), Rollup>,
    pub cell_hours: BTreeMap<(CellKey, i64), Rollup>,
}

impl Derived {
    /// Adds `fresh` (results just stored, never a duplicate) of `agent` labelled
    /// `provider`/`account`.
    pub fn add<'r>(
        &mut self,
        agent: &str,
        provider: &str,
        account: &str,
        fresh: impl IntoIterator<Item = &'r ProbeResult>,
        clock_trusted: bool,
        now_unix_ms: i64,
    ) {
        let (provider, account) = (label_or_unlabelled(provider), label_or_unlabelled(account));
        for result in fresh {
            let point = Point::of(result, clock_trusted, now_unix_ms);
            let series = SeriesKey::of(agent, result);
            let hour = hour_of(point.at_ms);
            self.series_hours
                .entry((series.clone(), hour))
                .or_default()
                .add(&point);
            let cell = CellKey {
                provider: provider.clone(),
                account: account.clone(),
                port: result.port,
                family: result.family,
            };
            self.cell_hours.entry((cell, hour)).or_default().add(&point);
            if !self.labels.contains_key(&series) {
                self.labels
                    .insert(series.clone(), (provider.clone(), account.clone()));
            }
            self.points.entry(series).or_default().push(point);
        }
    }
}

/// Which series a history or interval query covers; every field left `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub provider: Option<String>,
    pub account: Option<String>,
    pub agent: Option<String>,
    pub target: Option<String>,
    pub port: Option<u16>,
    pub family: Option<Family>,
}

impl Selector {
    /// Whether a query needs the per-series tier: the cell tier does not know agents or targets.
    pub fn needs_series(&self) -> bool {
        self.agent.is_some() || self.target.is_some()
    }

    pub fn admits_cell(&self, cell: &CellKey) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == cell.provider)
            && self.account.as_ref().is_none_or(|a| *a == cell.account)
            && self.port.is_none_or(|p| p == cell.port)
            && self.family.is_none_or(|f| f == cell.family)
    }

    pub fn admits_series(&self, series: &SeriesKey, provider: &str, account: &str) -> bool {
        self.provider.as_ref().is_none_or(|p| p == provider)
            && self.account.as_ref().is_none_or(|a| a == account)
            && self.agent.as_ref().is_none_or(|a| *a == series.agent)
            && self.target.as_ref().is_none_or(|t| *t == series.target)
            && self.port.is_none_or(|p| p == series.port)
            && self.family.is_none_or(|f| f == series.family)
    }
}

/// An interval with the series and labels it belongs to, as `/api/intervals` serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInterval {
    pub series: SeriesKey,
    pub provider: String,
    pub account: String,
    pub interval: Interval,
}

/// Which long-kept or raw tier retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Raw results (`raw_retention_hours`).
    Raw,
    /// State intervals, by when they last held (`history_retention_days`).
    Intervals,
    /// Hourly rollups of series and cells (`history_retention_days`).
    Hourly,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Raw => "raw results",
            Tier::Intervals => "state intervals",
            Tier::Hourly => "hourly rollups",
        }
    }
}

#[cfg(test)]
mod tests;
