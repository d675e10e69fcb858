//! The PostgreSQL store's long-kept tiers: the same tables and the same derivation as the SQLite
//! store's ([`crate::history::Derived`], [`crate::history::fold_series`]), written in the
//! transaction that stores the results, each kind of row in one statement for the whole group.
//!
//! A series, its intervals and its hourly rollups belong to one agent, whose row the writing
//! transaction holds locked, so no other collector writes them meanwhile. Cell rollups are
//! shared by agents on different collectors: each transaction locks the cells it adds to in one
//! fixed order (the sorted order of their keys) before it reads them, merges, and writes them
//! back, so concurrent writers add up and never deadlock.

use crate::error::CollectorError;
use crate::history::counts::{LatencyHistogram, SparseCounts};
use crate::history::{
    fold_series, hour_of, CellKey, Derived, Interval, Rollup, Selector, SeriesInterval, Tier,
    HOUR_MS,
};
use crate::identity::SeriesKey;
use egresswatch_wire::{Family, Outcome};
use postgres::types::ToSql;
use postgres::{GenericClient, Row, Transaction};
use std::collections::{BTreeMap, HashMap};

fn db_err(context: &str, e: postgres::Error) -> CollectorError {
    CollectorError::store(context, e)
}

fn corrupt(what: &str) -> CollectorError {
    CollectorError::store(
        "reading history",
        format!("a stored {what} does not decode"),
    )
}

/// What the writer remembers between transactions so the common case (a series' open interval
/// goes on) reads nothing: series ids, and each agent's series' open intervals. An agent's open
/// intervals are forgotten when another collector wrote for it since (its high-water mark is not
/// the one this writer left), and everything when a transaction rolls back.
#[derive(Debug, Default)]
pub(super) struct HistoryCache {
    series_ids: HashMap<SeriesKey, i64>,
    open: HashMap<String, HashMap<i64, Interval>>,
}

impl HistoryCache {
    pub(super) fn clear(&mut self) {
        self.series_ids.clear();
        self.open.clear();
    }

    pub(super) fn forget_agent(&mut self, agent: &str) {
        self.open.remove(agent);
    }

    fn open_of(&self, series: &SeriesKey, id: i64) -> Option<&Interval> {
        self.open.get(&series.agent)?.get(&id)
    }
}

fn interval_of(row: &Row, at: usize) -> Result<Interval, CollectorError> {
    let get_err = |e| db_err("reading an interval", e);
    let outcome: i32 = row.try_get(at + 2).map_err(get_err)?;
    let connect: Vec<u8> = row.try_get(at + 6).map_err(get_err)?;
    Ok(Interval {
        first_seq: row.try_get::<_, i64>(at).map_err(get_err)? as u64,
        last_seq: row.try_get::<_, i64>(at + 1).map_err(get_err)? as u64,
        outcome: u8::try_from(outcome)
            .ok()
            .and_then(Outcome::from_code)
            .ok_or_else(|| corrupt("interval"))?,
        first_ms: row.try_get(at + 3).map_err(get_err)?,
        last_ms: row.try_get(at + 4).map_err(get_err)?,
        probes: row.try_get::<_, i64>(at + 5).map_err(get_err)? as u64,
        connect: LatencyHistogram(
            SparseCounts::decode(&connect).ok_or_else(|| corrupt("interval"))?,
        ),
    })
}

fn read_rollup(outcomes: &[u8], connect: &[u8]) -> Result<Rollup, CollectorError> {
    Ok(Rollup {
        outcomes: SparseCounts::decode(outcomes).ok_or_else(|| corrupt("rollup"))?,
        connect: LatencyHistogram(SparseCounts::decode(connect).ok_or_else(|| corrupt("rollup"))?),
    })
}

/// The ids of `wanted` series, recorded (with their labels) where new.
fn series_ids(
    tx: &mut Transaction<'_>,
    cache: &mut HistoryCache,
    derived: &Derived,
) -> Result<(), CollectorError> {
    let missing: Vec<&SeriesKey> = derived
        .points
        .keys()
        .filter(|s| !cache.series_ids.contains_key(*s))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut agents = Vec::new();
    let mut targets = Vec::new();
    let mut ports = Vec::new();
    let mut families = Vec::new();
    let mut providers = Vec::new();
    let mut accounts = Vec::new();
    for series in &missing {
        let (provider, account) = derived
            .labels
            .get(*series)
            .map(|(p, a)| (p.as_str(), a.as_str()))
            .unwrap_or(("unlabelled", "unlabelled"));
        agents.push(series.agent.as_str());
        targets.push(series.target.as_str());
        ports.push(i32::from(series.port));
        families.push(i32::from(series.family.code()));
        providers.push(provider);
        accounts.push(account);
    }
    let rows = tx
        .query(
            "INSERT INTO series (agent, target, port, family, provider, account)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::text[], $6::text[])
             ON CONFLICT (agent, target, port, family)
             DO UPDATE SET provider = excluded.provider, account = excluded.account
             RETURNING id, agent, target, port, family",
            &[&agents, &targets, &ports, &families, &providers, &accounts],
        )
        .map_err(|e| db_err("recording series", e))?;
    for row in rows {
        let get_err = |e| db_err("recording series", e);
        let family: i32 = row.try_get(4).map_err(get_err)?;
        let key = SeriesKey {
            agent: row.try_get(1).map_err(get_err)?,
            target: row.try_get(2).map_err(get_err)?,
            port: u16::try_from(row.try_get::<_, i32>(3).map_err(get_err)?)
                .map_err(|_| corrupt("series"))?,
            family: u8::try_from(family)
                .ok()
                .and_then(Family::from_code)
                .ok_or_else(|| corrupt("series"))?,
        };
        cache
            .series_ids
            .insert(key, row.try_get(0).map_err(get_err)?);
    }
    Ok(())
}

fn id_of(cache: &HistoryCache, series: &SeriesKey) -> Result<i64, CollectorError> {
    cache
        .series_ids
        .get(series)
        .copied()
        .ok_or_else(|| CollectorError::store("recording series", "a series got no id"))
}

/// Upserts rollups (`series_hourly` or `cell_hourly` rows) given as key columns plus the blobs.
const UPSERT_SERIES_HOURS: &str = "INSERT INTO series_hourly (series, hour, outcomes, connect)
     SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::bytea[])
     ON CONFLICT (series, hour) DO UPDATE SET outcomes = excluded.outcomes, connect = excluded.connect";
const UPSERT_CELL_HOURS: &str = "INSERT INTO cell_hourly (provider, account, port, family, hour, outcomes, connect)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int8[], $6::bytea[], $7::bytea[])
     ON CONFLICT (provider, account, port, family, hour)
     DO UPDATE SET outcomes = excluded.outcomes, connect = excluded.connect";

/// Folds one transaction's derived history into the tables.
pub(super) fn apply(
    tx: &mut Transaction<'_>,
    cache: &mut HistoryCache,
    derived: &Derived,
) -> Result<(), CollectorError> {
    if derived.points.is_empty() {
        return Ok(());
    }
    series_ids(tx, cache, derived)?;
    write_intervals(tx, cache, derived)?;
    write_series_hours(tx, cache, derived)?;
    write_cell_hours(tx, derived)
}

fn write_intervals(
    tx: &mut Transaction<'_>,
    cache: &mut HistoryCache,
    derived: &Derived,
) -> Result<(), CollectorError> {
    // The open interval of each series the cache does not know, in one read.
    let mut unknown: Vec<i64> = Vec::new();
    for series in derived.points.keys() {
        let id = id_of(cache, series)?;
        if cache.open_of(series, id).is_none() {
            unknown.push(id);
        }
    }
    let mut stored: HashMap<i64, Interval> = HashMap::new();
    if !unknown.is_empty() {
        let rows = tx
            .query(
                "SELECT DISTINCT ON (series) series,
                     first_seq, last_seq, outcome, first_ms, last_ms, probes, connect
                 FROM intervals WHERE series = ANY($1) ORDER BY series, first_seq DESC",
                &[&unknown],
            )
            .map_err(|e| db_err("reading open intervals", e))?;
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| db_err("reading open intervals", e))?;
            stored.insert(id, interval_of(&row, 1)?);
        }
    }
    let mut ids = Vec::new();
    let mut first_seqs = Vec::new();
    let mut last_seqs = Vec::new();
    let mut outcomes = Vec::new();
    let mut first_ms = Vec::new();
    let mut last_ms = Vec::new();
    let mut probes = Vec::new();
    let mut connects = Vec::new();
    for (series, points) in &derived.points {
        let id = id_of(cache, series)?;
        let open = match cache.open_of(series, id) {
            Some(i) => Some(i.clone()),
            None => stored.remove(&id),
        };
        let folded = fold_series(open, points);
        for i in &folded.touched {
            ids.push(id);
            first_seqs.push(i.first_seq as i64);
            last_seqs.push(i.last_seq as i64);
            outcomes.push(i32::from(i.outcome.code()));
            first_ms.push(i.first_ms);
            last_ms.push(i.last_ms);
            probes.push(i.probes as i64);
            connects.push(i.connect.0.encode());
        }
        if let Some(open) = folded.open {
            cache
                .open
                .entry(series.agent.clone())
                .or_default()
                .insert(id, open);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO intervals (series, first_seq, last_seq, outcome, first_ms, last_ms, probes, connect)
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::int8[],
                              $7::int8[], $8::bytea[])
         ON CONFLICT (series, first_seq) DO UPDATE SET last_seq = excluded.last_seq,
             outcome = excluded.outcome, first_ms = excluded.first_ms, last_ms = excluded.last_ms,
             probes = excluded.probes, connect = excluded.connect",
        &[
            &ids, &first_seqs, &last_seqs, &outcomes, &first_ms, &last_ms, &probes, &connects,
        ],
    )
    .map_err(|e| db_err("writing intervals", e))?;
    Ok(())
}

fn write_series_hours(
    tx: &mut Transaction<'_>,
    cache: &HistoryCache,
    derived: &Derived,
) -> Result<(), CollectorError> {
    let mut keys: Vec<(i64, i64, &Rollup)> = Vec::with_capacity(derived.series_hours.len());
    for ((series, hour), add) in &derived.series_hours {
        keys.push((id_of(cache, series)?, *hour, add));
    }
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let hours: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let rows = tx
        .query(
            "SELECT h.series, h.hour, h.outcomes, h.connect FROM series_hourly h
             JOIN unnest($1::int8[], $2::int8[]) AS k(series, hour)
               ON h.series = k.series AND h.hour = k.hour",
            &[&ids, &hours],
        )
        .map_err(|e| db_err("reading series rollups", e))?;
    let mut held: HashMap<(i64, i64), Rollup> = HashMap::new();
    for row in rows {
        let get_err = |e| db_err("reading series rollups", e);
        let o: Vec<u8> = row.try_get(2).map_err(get_err)?;
        let c: Vec<u8> = row.try_get(3).map_err(get_err)?;
        held.insert(
            (
                row.try_get(0).map_err(get_err)?,
                row.try_get(1).map_err(get_err)?,
            ),
            read_rollup(&o, &c)?,
        );
    }
    let mut outcomes = Vec::with_capacity(keys.len());
    let mut connects = Vec::with_capacity(keys.len());
    for (id, hour, add) in &keys {
        let mut rollup = held.remove(&(*id, *hour)).unwrap_or_default();
        rollup.merge(add);
        outcomes.push(rollup.outcomes.encode());
        connects.push(rollup.connect.0.encode());
    }
    tx.execute(UPSERT_SERIES_HOURS, &[&ids, &hours, &outcomes, &connects])
        .map_err(|e| db_err("writing series rollups", e))?;
    Ok(())
}

fn write_cell_hours(tx: &mut Transaction<'_>, derived: &Derived) -> Result<(), CollectorError> {
    // Sorted by key (the map's order): every writer locks cells in the same order.
    let cells: Vec<(&(CellKey, i64), &Rollup)> = derived.cell_hours.iter().collect();
    if cells.is_empty() {
        return Ok(());
    }
    let providers: Vec<&str> = cells
        .iter()
        .map(|((c, _), _)| c.provider.as_str())
        .collect();
    let accounts: Vec<&str> = cells.iter().map(|((c, _), _)| c.account.as_str()).collect();
    let ports: Vec<i32> = cells.iter().map(|((c, _), _)| i32::from(c.port)).collect();
    let families: Vec<i32> = cells
        .iter()
        .map(|((c, _), _)| i32::from(c.family.code()))
        .collect();
    let hours: Vec<i64> = cells.iter().map(|((_, h), _)| *h).collect();
    let empty: Vec<u8> = Vec::new();
    // Each row made if missing, then locked (a no-op update) and read, one after another in the
    // order given.
    let rows = tx
        .query(
            "INSERT INTO cell_hourly (provider, account, port, family, hour, outcomes, connect)
             SELECT k.provider, k.account, k.port, k.family, k.hour, $6, $6
             FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int8[])
                  WITH ORDINALITY AS k(provider, account, port, family, hour, n)
             ORDER BY k.n
             ON CONFLICT (provider, account, port, family, hour) DO UPDATE SET hour = excluded.hour
             RETURNING provider, account, port, family, hour, outcomes, connect",
            &[&providers, &accounts, &ports, &families, &hours, &empty],
        )
        .map_err(|e| db_err("locking cell rollups", e))?;
    let mut held: HashMap<(String, String, i32, i32, i64), Rollup> = HashMap::new();
    for row in rows {
        let get_err = |e| db_err("reading cell rollups", e);
        let o: Vec<u8> = row.try_get(5).map_err(get_err)?;
        let c: Vec<u8> = row.try_get(6).map_err(get_err)?;
        held.insert(
            (
                row.try_get(0).map_err(get_err)?,
                row.try_get(1).map_err(get_err)?,
                row.try_get(2).map_err(get_err)?,
                row.try_get(3).map_err(get_err)?,
                row.try_get(4).map_err(get_err)?,
            ),
            read_rollup(&o, &c)?,
        );
    }
    let mut outcomes = Vec::with_capacity(cells.len());
    let mut connects = Vec::with_capacity(cells.len());
    for (i, (_, add)) in cells.iter().enumerate() {
        let key = (
            providers[i].to_string(),
            accounts[i].to_string(),
            ports[i],
            families[i],
            hours[i],
        );
        let mut rollup = held.remove(&key).unwrap_or_default();
        rollup.merge(add);
        outcomes.push(rollup.outcomes.encode());
        connects.push(rollup.connect.0.encode());
    }
    tx.execute(
        UPSERT_CELL_HOURS,
        &[
            &providers, &accounts, &ports, &families, &hours, &outcomes, &connects,
        ],
    )
    .map_err(|e| db_err("writing cell rollups", e))?;
    Ok(())
}

/// `AND alias.col = $n` for each selector field present.
fn conditions(
    selector: &Selector,
    alias: &str,
    series_fields: bool,
    sql: &mut String,
    values: &mut Vec<Box<dyn ToSql + Sync>>,
) {
    let mut add = |column: &str, value: Box<dyn ToSql + Sync>| {
        values.push(value);
        sql.push_str(&format!(" AND {alias}.{column} = ${}", values.len()));
    };
    if let Some(p) = &selector.provider {
        add("provider", Box::new(p.clone()));
    }
    if let Some(a) = &selector.account {
        add("account", Box::new(a.clone()));
    }
    if series_fields {
        if let Some(a) = &selector.agent {
            add("agent", Box::new(a.clone()));
        }
        if let Some(t) = &selector.target {
            add("target", Box::new(t.clone()));
        }
    }
    if let Some(p) = selector.port {
        add("port", Box::new(i32::from(p)));
    }
    if let Some(f) = selector.family {
        add("family", Box::new(i32::from(f.code())));
    }
}

fn params(values: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v.as_ref()).collect()
}

pub(super) fn history_hours(
    client: &mut impl GenericClient,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, Rollup)>, CollectorError> {
    let first_hour = hour_of(from_ms);
    let end_hour = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
    let mut values: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(first_hour), Box::new(end_hour)];
    let mut sql = if selector.needs_series() {
        let mut sql = "SELECT h.hour, h.outcomes, h.connect FROM series_hourly h
             JOIN series s ON s.id = h.series WHERE h.hour >= $1 AND h.hour < $2"
            .to_string();
        conditions(selector, "s", true, &mut sql, &mut values);
        sql
    } else {
        let mut sql =
            "SELECT c.hour, c.outcomes, c.connect FROM cell_hourly c WHERE c.hour >= $1 AND c.hour < $2"
                .to_string();
        conditions(selector, "c", false, &mut sql, &mut values);
        sql
    };
    sql.push_str(" ORDER BY 1");
    let rows = client
        .query(&sql, &params(&values))
        .map_err(|e| db_err("reading history", e))?;
    let mut hours: BTreeMap<i64, Rollup> = BTreeMap::new();
    for row in rows {
        let get_err = |e| db_err("reading history", e);
        let hour: i64 = row.try_get(0).map_err(get_err)?;
        let o: Vec<u8> = row.try_get(1).map_err(get_err)?;
        let c: Vec<u8> = row.try_get(2).map_err(get_err)?;
        hours.entry(hour).or_default().merge(&read_rollup(&o, &c)?);
    }
    Ok(hours.into_iter().collect())
}

pub(super) fn intervals(
    client: &mut impl GenericClient,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<SeriesInterval>, CollectorError> {
    let mut values: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(from_ms), Box::new(to_ms)];
    let mut sql = "SELECT s.agent, s.target, s.port, s.family, s.provider, s.account,
             i.first_seq, i.last_seq, i.outcome, i.first_ms, i.last_ms, i.probes, i.connect
         FROM intervals i JOIN series s ON s.id = i.series
         WHERE i.last_ms >= $1 AND i.first_ms < $2"
        .to_string();
    conditions(selector, "s", true, &mut sql, &mut values);
    values.push(Box::new(limit as i64));
    sql.push_str(&format!(
        " ORDER BY i.last_ms DESC, i.first_seq DESC LIMIT ${}",
        values.len()
    ));
    let rows = client
        .query(&sql, &params(&values))
        .map_err(|e| db_err("reading intervals", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let get_err = |e| db_err("reading intervals", e);
        let family: i32 = row.try_get(3).map_err(get_err)?;
        out.push(SeriesInterval {
            series: SeriesKey {
                agent: row.try_get(0).map_err(get_err)?,
                target: row.try_get(1).map_err(get_err)?,
                port: u16::try_from(row.try_get::<_, i32>(2).map_err(get_err)?)
                    .map_err(|_| corrupt("series"))?,
                family: u8::try_from(family)
                    .ok()
                    .and_then(Family::from_code)
                    .ok_or_else(|| corrupt("series"))?,
            },
            provider: row.try_get(4).map_err(get_err)?,
            account: row.try_get(5).map_err(get_err)?,
            interval: interval_of(&row, 6)?,
        });
    }
    Ok(out)
}

/// Prunes the long-kept tiers (the raw one is [`super::partitions::prune_raw`]).
pub(super) fn prune_tier(
    client: &mut impl GenericClient,
    tier: Tier,
    before_ms: i64,
    max_rows: usize,
) -> Result<usize, CollectorError> {
    let limit = max_rows as i64;
    let mut run = |sql: &str, cutoff: i64, limit: i64| -> Result<usize, CollectorError> {
        if limit <= 0 {
            return Ok(0);
        }
        client
            .execute(sql, &[&cutoff, &limit])
            .map(|n| n as usize)
            .map_err(|e| db_err(&format!("pruning {}", tier.as_str()), e))
    };
    match tier {
        Tier::Raw => Err(CollectorError::store(
            "pruning raw results",
            "the raw tier is pruned by partition",
        )),
        Tier::Intervals => run(
            "DELETE FROM intervals WHERE ctid IN
             (SELECT ctid FROM intervals WHERE last_ms < $1 LIMIT $2)",
            before_ms,
            limit,
        ),
        Tier::Hourly => {
            // An hour goes once all of it is older than the cutoff.
            let before_hour = before_ms.div_euclid(HOUR_MS);
            let series = run(
                "DELETE FROM series_hourly WHERE ctid IN
                 (SELECT ctid FROM series_hourly WHERE hour < $1 LIMIT $2)",
                before_hour,
                limit,
            )?;
            let cells = run(
                "DELETE FROM cell_hourly WHERE ctid IN
                 (SELECT ctid FROM cell_hourly WHERE hour < $1 LIMIT $2)",
                before_hour,
                limit - series as i64,
            )?;
            Ok(series + cells)
        }
    }
}
