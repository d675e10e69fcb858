//! The SQLite store's long-kept tiers: a series dictionary (so the agent and target text is
//! stored once per series, not once per row), state intervals, and hourly rollups per series and
//! per cell. Written by the store's writer inside the transaction that stores the results;
//! read with the reader connection.
//!
//! Every table is integers, text and small blobs ([`crate::history::counts::SparseCounts`]
//! encodings), keyed by natural primary keys: a PostgreSQL store can create the same tables
//! (`BIGINT`, `TEXT`, `BYTEA`) and run the same statements.

use crate::error::CollectorError;
use crate::history::counts::{LatencyHistogram, SparseCounts};
use crate::history::{
    fold_series, hour_of, Derived, Interval, Rollup, Selector, SeriesInterval, Tier, HOUR_MS,
};
use crate::identity::SeriesKey;
use egresswatch_wire::{Family, Outcome};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL, target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    provider TEXT NOT NULL, account TEXT NOT NULL,
    UNIQUE (agent, target, port, family)
);
CREATE TABLE IF NOT EXISTS intervals (
    series INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    outcome INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    probes INTEGER NOT NULL, connect BLOB NOT NULL,
    PRIMARY KEY (series, first_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS intervals_last ON intervals (last_ms);
CREATE TABLE IF NOT EXISTS series_hourly (
    series INTEGER NOT NULL, hour INTEGER NOT NULL, outcomes BLOB NOT NULL, connect BLOB NOT NULL,
    PRIMARY KEY (series, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cell_hourly (
    provider TEXT NOT NULL, account TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    hour INTEGER NOT NULL, outcomes BLOB NOT NULL, connect BLOB NOT NULL,
    PRIMARY KEY (provider, account, port, family, hour)
) WITHOUT ROWID;
";

fn db_err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> CollectorError {
    CollectorError::store(context, e)
}

fn corrupt(what: &str) -> CollectorError {
    CollectorError::store(
        "reading history",
        format!("a stored {what} does not decode"),
    )
}

/// What the writer remembers between transactions so the common case (a series' open interval
/// goes on) reads nothing: series ids and open intervals. Cleared when a transaction rolls back.
#[derive(Debug, Default)]
pub(super) struct HistoryCache {
    series_ids: HashMap<SeriesKey, i64>,
    open: HashMap<i64, Interval>,
}

impl HistoryCache {
    pub(super) fn clear(&mut self) {
        self.series_ids.clear();
        self.open.clear();
    }
}

fn series_id(
    tx: &Transaction<'_>,
    cache: &mut HistoryCache,
    series: &SeriesKey,
    labels: Option<&(String, String)>,
) -> Result<i64, CollectorError> {
    if let Some(id) = cache.series_ids.get(series) {
        return Ok(*id);
    }
    let (provider, account) = labels
        .map(|(p, a)| (p.as_str(), a.as_str()))
        .unwrap_or(("unlabelled", "unlabelled"));
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO series (agent, target, port, family, provider, account)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (agent, target, port, family)
             DO UPDATE SET provider = excluded.provider, account = excluded.account
             RETURNING id",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    series.agent,
                    series.target,
                    series.port,
                    series.family.code(),
                    provider,
                    account
                ],
                |row| row.get(0),
            )
        })
        .map_err(|e| db_err("recording a series", e))?;
    cache.series_ids.insert(series.clone(), id);
    Ok(id)
}

fn interval_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<(Interval, bool)> {
    let outcome_code: u8 = row.get(at + 2)?;
    let connect: Vec<u8> = row.get(at + 6)?;
    let decoded = SparseCounts::decode(&connect);
    let ok = decoded.is_some() && Outcome::from_code(outcome_code).is_some();
    Ok((
        Interval {
            first_seq: row.get::<_, i64>(at)? as u64,
            last_seq: row.get::<_, i64>(at + 1)? as u64,
            outcome: Outcome::from_code(outcome_code).unwrap_or_default(),
            first_ms: row.get(at + 3)?,
            last_ms: row.get(at + 4)?,
            probes: row.get::<_, i64>(at + 5)? as u64,
            connect: LatencyHistogram(decoded.unwrap_or_default()),
        },
        ok,
    ))
}

fn read_rollup(outcomes: &[u8], connect: &[u8]) -> Result<Rollup, CollectorError> {
    Ok(Rollup {
        outcomes: SparseCounts::decode(outcomes).ok_or_else(|| corrupt("rollup"))?,
        connect: LatencyHistogram(SparseCounts::decode(connect).ok_or_else(|| corrupt("rollup"))?),
    })
}

/// Folds one transaction's derived history into the tables.
pub(super) fn apply(
    tx: &Transaction<'_>,
    cache: &mut HistoryCache,
    derived: &Derived,
) -> Result<(), CollectorError> {
    for (series, points) in &derived.points {
        let id = series_id(tx, cache, series, derived.labels.get(series))?;
        let open = match cache.open.get(&id) {
            Some(i) => Some(i.clone()),
            None => tx
                .prepare_cached(
                    "SELECT first_seq, last_seq, outcome, first_ms, last_ms, probes, connect
                     FROM intervals WHERE series = ?1 ORDER BY first_seq DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([id], |row| interval_from_row(row, 0))
                        .optional()
                })
                .map_err(|e| db_err("reading the open interval", e))?
                .map(|(i, ok)| if ok { Ok(i) } else { Err(corrupt("interval")) })
                .transpose()?,
        };
        let folded = fold_series(open, points);
        let mut write = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO intervals
                 (series, first_seq, last_seq, outcome, first_ms, last_ms, probes, connect)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(|e| db_err("prepare intervals", e))?;
        for i in &folded.touched {
            write
                .execute(params![
                    id,
                    i.first_seq as i64,
                    i.last_seq as i64,
                    i.outcome.code(),
                    i.first_ms,
                    i.last_ms,
                    i.probes as i64,
                    i.connect.0.encode()
                ])
                .map_err(|e| db_err("writing an interval", e))?;
        }
        if let Some(open) = folded.open {
            cache.open.insert(id, open);
        }
    }
    for ((series, hour), add) in &derived.series_hours {
        let id = series_id(tx, cache, series, derived.labels.get(series))?;
        let held = tx
            .prepare_cached(
                "SELECT outcomes, connect FROM series_hourly WHERE series = ?1 AND hour = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![id, hour], |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .map_err(|e| db_err("reading a series rollup", e))?;
        let mut rollup = match held {
            Some((o, c)) => read_rollup(&o, &c)?,
            None => Rollup::default(),
        };
        rollup.merge(add);
        tx.prepare_cached(
            "INSERT OR REPLACE INTO series_hourly (series, hour, outcomes, connect)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                hour,
                rollup.outcomes.encode(),
                rollup.connect.0.encode()
            ])
        })
        .map_err(|e| db_err("writing a series rollup", e))?;
    }
    for ((cell, hour), add) in &derived.cell_hours {
        let key = params![
            cell.provider,
            cell.account,
            cell.port,
            cell.family.code(),
            hour
        ];
        let held = tx
            .prepare_cached(
                "SELECT outcomes, connect FROM cell_hourly
                 WHERE provider = ?1 AND account = ?2 AND port = ?3 AND family = ?4 AND hour = ?5",
            )
            .and_then(|mut s| {
                s.query_row(key, |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .map_err(|e| db_err("reading a cell rollup", e))?;
        let mut rollup = match held {
            Some((o, c)) => read_rollup(&o, &c)?,
            None => Rollup::default(),
        };
        rollup.merge(add);
        tx.prepare_cached(
            "INSERT OR REPLACE INTO cell_hourly (provider, account, port, family, hour, outcomes, connect)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                cell.provider,
                cell.account,
                cell.port,
                cell.family.code(),
                hour,
                rollup.outcomes.encode(),
                rollup.connect.0.encode()
            ])
        })
        .map_err(|e| db_err("writing a cell rollup", e))?;
    }
    Ok(())
}

/// `AND col = ?` for each selector field present, over the table aliased `alias`.
fn conditions(
    selector: &Selector,
    alias: &str,
    series_fields: bool,
    sql: &mut String,
    values: &mut Vec<SqlValue>,
) {
    let mut add = |column: &str, value: SqlValue| {
        values.push(value);
        sql.push_str(&format!(" AND {alias}.{column} = ?{}", values.len()));
    };
    if let Some(p) = &selector.provider {
        add("provider", SqlValue::Text(p.clone()));
    }
    if let Some(a) = &selector.account {
        add("account", SqlValue::Text(a.clone()));
    }
    if series_fields {
        if let Some(a) = &selector.agent {
            add("agent", SqlValue::Text(a.clone()));
        }
        if let Some(t) = &selector.target {
            add("target", SqlValue::Text(t.clone()));
        }
    }
    if let Some(p) = selector.port {
        add("port", SqlValue::Integer(i64::from(p)));
    }
    if let Some(f) = selector.family {
        add("family", SqlValue::Integer(i64::from(f.code())));
    }
}

pub(super) fn history_hours(
    conn: &Connection,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, Rollup)>, CollectorError> {
    let first_hour = hour_of(from_ms);
    let end_hour = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
    let mut values = vec![SqlValue::Integer(first_hour), SqlValue::Integer(end_hour)];
    let mut sql = if selector.needs_series() {
        let mut sql = "SELECT h.hour, h.outcomes, h.connect FROM series_hourly h
             JOIN series s ON s.id = h.series WHERE h.hour >= ?1 AND h.hour < ?2"
            .to_string();
        conditions(selector, "s", true, &mut sql, &mut values);
        sql
    } else {
        let mut sql =
            "SELECT c.hour, c.outcomes, c.connect FROM cell_hourly c WHERE c.hour >= ?1 AND c.hour < ?2"
                .to_string();
        conditions(selector, "c", false, &mut sql, &mut values);
        sql
    };
    sql.push_str(" ORDER BY 1");
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| db_err("prepare history", e))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(|e| db_err("query history", e))?;
    let mut hours: BTreeMap<i64, Rollup> = BTreeMap::new();
    for row in rows {
        let (hour, o, c) = row.map_err(|e| db_err("reading history", e))?;
        hours.entry(hour).or_default().merge(&read_rollup(&o, &c)?);
    }
    Ok(hours.into_iter().collect())
}

pub(super) fn intervals(
    conn: &Connection,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<SeriesInterval>, CollectorError> {
    let mut values = vec![SqlValue::Integer(from_ms), SqlValue::Integer(to_ms)];
    let mut sql = "SELECT s.agent, s.target, s.port, s.family, s.provider, s.account,
             i.first_seq, i.last_seq, i.outcome, i.first_ms, i.last_ms, i.probes, i.connect
         FROM intervals i JOIN series s ON s.id = i.series
         WHERE i.last_ms >= ?1 AND i.first_ms < ?2"
        .to_string();
    conditions(selector, "s", true, &mut sql, &mut values);
    values.push(SqlValue::Integer(limit as i64));
    sql.push_str(&format!(
        " ORDER BY i.last_ms DESC, i.first_seq DESC LIMIT ?{}",
        values.len()
    ));
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| db_err("prepare intervals", e))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |row| {
            let family: u8 = row.get(3)?;
            let (interval, ok) = interval_from_row(row, 6)?;
            Ok((
                SeriesInterval {
                    series: SeriesKey {
                        agent: row.get(0)?,
                        target: row.get(1)?,
                        port: row.get(2)?,
                        family: Family::from_code(family).unwrap_or_default(),
                    },
                    provider: row.get(4)?,
                    account: row.get(5)?,
                    interval,
                },
                ok && Family::from_code(family).is_some(),
            ))
        })
        .map_err(|e| db_err("query intervals", e))?;
    rows.map(|r| match r {
        Ok((i, true)) => Ok(i),
        Ok((_, false)) => Err(corrupt("interval")),
        Err(e) => Err(db_err("reading intervals", e)),
    })
    .collect()
}

pub(super) fn prune_tier(
    conn: &Connection,
    tier: Tier,
    before_ms: i64,
    max_rows: usize,
) -> Result<usize, CollectorError> {
    let limit = max_rows as i64;
    let run = |sql: &str, cutoff: i64, limit: i64| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![cutoff, limit]))
            .map_err(|e| db_err(&format!("pruning {}", tier.as_str()), e))
    };
    match tier {
        Tier::Raw => run(
            "DELETE FROM results WHERE (agent, seq) IN
             (SELECT agent, seq FROM results WHERE at_ms < ?1 LIMIT ?2)",
            before_ms,
            limit,
        ),
        Tier::Intervals => run(
            "DELETE FROM intervals WHERE (series, first_seq) IN
             (SELECT series, first_seq FROM intervals WHERE last_ms < ?1 LIMIT ?2)",
            before_ms,
            limit,
        ),
        Tier::Hourly => {
            // An hour goes once all of it is older than the cutoff.
            let before_hour = before_ms.div_euclid(HOUR_MS);
            let series = run(
                "DELETE FROM series_hourly WHERE (series, hour) IN
                 (SELECT series, hour FROM series_hourly WHERE hour < ?1 LIMIT ?2)",
                before_hour,
                limit,
            )?;
            let cells = run(
                "DELETE FROM cell_hourly WHERE (provider, account, port, family, hour) IN
                 (SELECT provider, account, port, family, hour FROM cell_hourly WHERE hour < ?1 LIMIT ?2)",
                before_hour,
                limit - series as i64,
            )?;
            Ok(series + cells)
        }
    }
}
