//! The history API's decisions, without sockets: parsing and bounding the parameters of
//! `/api/history` and `/api/intervals` (every refusal names the parameter and why), cutting the
//! hourly rollups into the requested buckets, and the JSON and CSV shapes both routes serve.

use super::{outcome_status, Rollup, Selector, SeriesInterval, HOUR_MS};
use crate::clock::rfc3339;
use egresswatch_wire::{Family, Outcome};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const DAY_MS: i64 = 86_400_000;
/// The longest range either route answers.
pub const MAX_RANGE_MS: i64 = 400 * DAY_MS;
/// The most buckets `/api/history` answers with.
pub const MAX_BUCKETS: i64 = 1_000;
/// The default step is the finest that keeps the range within this many buckets.
pub const DEFAULT_BUCKETS: i64 = 500;
pub const DEFAULT_INTERVALS: usize = 200;
pub const MAX_INTERVALS: usize = 1_000;

/// A parsed, bounded `/api/history` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    pub selector: Selector,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    pub csv: bool,
}

impl HistoryRequest {
    /// Where the first bucket starts: `from` rounded down to the step (UTC hours or days).
    pub fn first_bucket_ms(&self) -> i64 {
        self.from_ms.div_euclid(self.step_ms) * self.step_ms
    }

    /// Where the last bucket ends: the hours the store is asked for are
    /// `first_bucket_ms..end_ms`.
    pub fn end_ms(&self) -> i64 {
        let first = self.first_bucket_ms();
        first + bucket_count(first, self.to_ms, self.step_ms) * self.step_ms
    }
}

/// A parsed, bounded `/api/intervals` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalsRequest {
    pub selector: Selector,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
    pub csv: bool,
}

fn bucket_count(first_ms: i64, to_ms: i64, step_ms: i64) -> i64 {
    (to_ms - first_ms + step_ms - 1).div_euclid(step_ms)
}

/// The query's parameters, each at most once.
struct Params(BTreeMap<String, String>);

impl Params {
    fn new(pairs: &[(String, String)], allowed: &[&str]) -> Result<Params, String> {
        let mut map = BTreeMap::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                return Err(format!(
                    "unknown parameter {key:?} (expected one of: {})",
                    allowed.join(", ")
                ));
            }
            if map.insert(key.clone(), value.clone()).is_some() {
                return Err(format!("{key}: given more than once"));
            }
        }
        Ok(Params(map))
    }

    /// A value, an empty one being the same as none.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn selector(&self) -> Result<Selector, String> {
        let port = match self.get("port") {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("port: {p:?} is not a port (1..65535)")),
            },
        };
        let family = match self.get("family") {
            None => None,
            Some("ipv4") => Some(Family::Ipv4),
            Some("ipv6") => Some(Family::Ipv6),
            Some(f) => return Err(format!("family: {f:?} is not ipv4 or ipv6")),
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match self.get(key) {
                Some(v) if v.len() > 253 || v.chars().any(char::is_control) => Err(format!(
                    "{key}: longer than 253 bytes or has control characters"
                )),
                v => Ok(v.map(str::to_string)),
            }
        };
        Ok(Selector {
            provider: text("provider")?,
            account: text("account")?,
            agent: text("agent")?,
            target: text("target")?,
            port,
            family,
        })
    }

    /// `from` and `to`, defaulted (`to` = now, `from` = `to` − 24 h) and checked.
    fn range(&self, now_ms: i64) -> Result<(i64, i64), String> {
        let to = match self.get("to") {
            Some(t) => parse_time(t).map_err(|e| format!("to: {e}"))?,
            None => now_ms,
        };
        let from = match self.get("from") {
            Some(f) => parse_time(f).map_err(|e| format!("from: {e}"))?,
            None => to - DAY_MS,
        };
        if to <= from {
            return Err(format!(
                "to: {} is not after from ({})",
                rfc3339(to),
                rfc3339(from)
            ));
        }
        if to - from > MAX_RANGE_MS {
            return Err(format!(
                "from: the range {} .. {} is over 400 days",
                rfc3339(from),
                rfc3339(to)
            ));
        }
        Ok((from, to))
    }

    fn csv(&self, accept_csv: bool) -> Result<bool, String> {
        match self.get("format") {
            None => Ok(accept_csv),
            Some("csv") => Ok(true),
            Some("json") => Ok(false),
            Some(f) => Err(format!("format: {f:?} is not csv or json")),
        }
    }
}

const SELECTORS: [&str; 6] = ["provider", "account", "agent", "target", "port", "family"];

/// Parses `/api/history`'s query (`accept_csv`: the request's `Accept` asked for CSV).
pub fn parse_history(
    pairs: &[(String, String)],
    accept_csv: bool,
    now_ms: i64,
) -> Result<HistoryRequest, String> {
    let mut allowed = SELECTORS.to_vec();
    allowed.extend(["from", "to", "step", "format"]);
    let params = Params::new(pairs, &allowed)?;
    let selector = params.selector()?;
    if selector.provider.is_none() {
        return Err("provider: required (a cell is provider[/account] x port[/family])".into());
    }
    let (from_ms, to_ms) = params.range(now_ms)?;
    let step_ms = match params.get("step") {
        Some(s) => parse_step(s).map_err(|e| format!("step: {e}"))?,
        None => {
            let hourly = bucket_count(from_ms.div_euclid(HOUR_MS) * HOUR_MS, to_ms, HOUR_MS);
            if hourly <= DEFAULT_BUCKETS {
                HOUR_MS
            } else {
                DAY_MS
            }
        }
    };
    let first = from_ms.div_euclid(step_ms) * step_ms;
    let buckets = bucket_count(first, to_ms, step_ms);
    if buckets > MAX_BUCKETS {
        return Err(format!(
            "step: {buckets} buckets over the range, more than {MAX_BUCKETS}: choose a longer step"
        ));
    }
    Ok(HistoryRequest {
        selector,
        from_ms,
        to_ms,
        step_ms,
        csv: params.csv(accept_csv)?,
    })
}

/// Parses `/api/intervals`' query.
pub fn parse_intervals(
    pairs: &[(String, String)],
    accept_csv: bool,
    now_ms: i64,
) -> Result<IntervalsRequest, String> {
    let mut allowed = SELECTORS.to_vec();
    allowed.extend(["from", "to", "limit", "format"]);
    let params = Params::new(pairs, &allowed)?;
    let selector = params.selector()?;
    let (from_ms, to_ms) = params.range(now_ms)?;
    let limit = match params.get("limit") {
        None => DEFAULT_INTERVALS,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_INTERVALS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "limit: {l:?} is not a number from 1 to {MAX_INTERVALS}"
                ))
            }
        },
    };
    Ok(IntervalsRequest {
        selector,
        from_ms,
        to_ms,
        limit,
        csv: params.csv(accept_csv)?,
    })
}

/// `1h`, `6h`, `1d`, or seconds (`3600`): a whole number of hours, since rollups are hourly.
pub fn parse_step(text: &str) -> Result<i64, String> {
    let (digits, unit_ms) = if let Some(d) = text.strip_suffix('h') {
        (d, HOUR_MS)
    } else if let Some(d) = text.strip_suffix('d') {
        (d, DAY_MS)
    } else {
        (text, 1000)
    };
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n <= 400 * 86_400)
        .ok_or_else(|| format!("{text:?} is not a step (1h, 1d or seconds)"))?;
    let ms = n * unit_ms;
    if ms % HOUR_MS != 0 || ms > MAX_RANGE_MS {
        return Err(format!(
            "{text:?}: history is kept by the hour, so a step is a whole number of hours up to 400 days"
        ));
    }
    Ok(ms)
}

/// RFC 3339 (`2026-11-30T00:00:00Z`, fractions and offsets allowed) or Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms <= 253_402_300_799_999)
            .ok_or_else(|| format!("{text:?} is out of range"));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("{text:?} is neither RFC 3339 (2026-11-30T00:00:00Z) nor Unix milliseconds")
    })
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0;
    if b[at] == b'.' {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let frac = &text[start..at.min(start + 3)];
        ms = format!("{frac:0<3}").parse::<i64>().ok()?;
    }
    let offset_ms = match text.get(at..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            if rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh = num(at + 1..at + 3)?;
            let om = num(at + 4..at + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60) * 1000
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s.min(59);
    Some(secs * 1000 + ms - offset_ms)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days (proleptic Gregorian), the inverse of the events' clock text.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One bucket of `/api/history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub start_ms: i64,
    pub rollup: Rollup,
}

/// Cuts hourly rollups (hour index, rollup) into the request's buckets, every bucket present
/// (an empty one is `unknown`).
pub fn bucketize(request: &HistoryRequest, hours: &[(i64, Rollup)]) -> Vec<Bucket> {
    let first = request.first_bucket_ms();
    let count = bucket_count(first, request.to_ms, request.step_ms).max(0);
    let mut buckets: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            start_ms: first + i * request.step_ms,
            rollup: Rollup::default(),
        })
        .collect();
    for (hour, rollup) in hours {
        let index = (hour * HOUR_MS - first).div_euclid(request.step_ms);
        if let Some(bucket) = usize::try_from(index).ok().and_then(|i| buckets.get_mut(i)) {
            bucket.rollup.merge(rollup);
        }
    }
    buckets
}

fn quantiles(connect: &super::counts::LatencyHistogram) -> (Option<f64>, Option<f64>) {
    (connect.quantile_ms(0.5), connect.quantile_ms(0.95))
}

/// The `/api/history` JSON.
pub fn history_json(request: &HistoryRequest, buckets: &[Bucket]) -> Value {
    let s = &request.selector;
    let list: Vec<Value> = buckets
        .iter()
        .map(|b| {
            let r = &b.rollup;
            let mut outcomes = Map::new();
            for (name, n) in r.outcome_names() {
                outcomes.insert(name, json!(n));
            }
            let (p50, p95) = quantiles(&r.connect);
            json!({
                "start": rfc3339(b.start_ms),
                "status": r.status(),
                "probes": r.probes(),
                "ok": r.ok(),
                "failed": r.failed(),
                "outcomes": outcomes,
                "p50_connect_ms": p50,
                "p95_connect_ms": p95,
            })
        })
        .collect();
    json!({
        "from": rfc3339(request.from_ms),
        "to": rfc3339(request.to_ms),
        "step_secs": request.step_ms / 1000,
        "selector": {
            "provider": s.provider, "account": s.account, "agent": s.agent,
            "target": s.target, "port": s.port, "family": s.family.map(|f| f.as_str()),
        },
        "buckets": list,
    })
}

/// Every outcome this build knows, in code order: the history CSV's `outcome_<name>` columns.
fn known_outcomes() -> Vec<Outcome> {
    (0..=u8::MAX).filter_map(Outcome::from_code).collect()
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn csv_row(out: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push('\n');
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The `/api/history` CSV: a header line, then one line per bucket.
pub fn history_csv(buckets: &[Bucket]) -> String {
    let outcomes = known_outcomes();
    let mut header: Vec<String> = ["start", "status", "probes", "ok", "failed"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(outcomes.iter().map(|o| format!("outcome_{}", o.as_str())));
    header.extend(["p50_connect_ms".to_string(), "p95_connect_ms".to_string()]);
    let mut out = String::new();
    csv_row(&mut out, &header);
    for b in buckets {
        let r = &b.rollup;
        let (p50, p95) = quantiles(&r.connect);
        let mut row = vec![
            rfc3339(b.start_ms),
            r.status().to_string(),
            r.probes().to_string(),
            r.ok().to_string(),
            r.failed().to_string(),
        ];
        row.extend(
            outcomes
                .iter()
                .map(|o| r.outcomes.get(o.code()).to_string()),
        );
        row.extend([opt_ms(p50), opt_ms(p95)]);
        csv_row(&mut out, &row);
    }
    out
}

/// The `/api/intervals` JSON (intervals as the store gave them: newest first).
pub fn intervals_json(intervals: &[SeriesInterval]) -> Value {
    let list: Vec<Value> = intervals
        .iter()
        .map(|i| {
            let (p50, p95) = quantiles(&i.interval.connect);
            json!({
                "agent": i.series.agent,
                "provider": i.provider,
                "account": i.account,
                "target": i.series.target,
                "port": i.series.port,
                "family": i.series.family.as_str(),
                "outcome": i.interval.outcome.as_str(),
                "status": outcome_status(i.interval.outcome),
                "first_seen": rfc3339(i.interval.first_ms),
                "last_seen": rfc3339(i.interval.last_ms),
                "probes": i.interval.probes,
                "p50_connect_ms": p50,
                "p95_connect_ms": p95,
            })
        })
        .collect();
    json!({ "intervals": list })
}

/// The `/api/intervals` CSV.
pub fn intervals_csv(intervals: &[SeriesInterval]) -> String {
    let mut out = String::new();
    let header = [
        "agent",
        "provider",
        "account",
        "target",
        "port",
        "family",
        "outcome",
        "status",
        "first_seen",
        "last_seen",
        "probes",
        "p50_connect_ms",
        "p95_connect_ms",
    ];
    csv_row(&mut out, &header.map(str::to_string));
    for i in intervals {
        let (p50, p95) = quantiles(&i.interval.connect);
        csv_row(
            &mut out,
            &[
                i.series.agent.clone(),
                i.provider.clone(),
                i.account.clone(),
                i.series.target.clone(),
                i.series.port.to_string(),
                i.series.family.as_str().to_string(),
                i.interval.outcome.as_str().to_string(),
                outcome_status(i.interval.outcome).to_string(),
                rfc3339(i.interval.first_ms),
                rfc3339(i.interval.last_ms),
                i.interval.probes.to_string(),
                opt_ms(p50),
                opt_ms(p95),
            ],
        );
    }
    out
}
