//! The raw results' day partitions: `results_YYYYMMDD` holds the results measured on that UTC
//! day (`at_ms` in `[day, day + 1)`), `results_default` whatever falls outside every partition
//! (an agent clock far off, a replay older than the database), so no timestamp is ever refused.
//!
//! Partitions are made ahead — today and the next [`AHEAD_DAYS`] days, when a store opens and
//! when its writer sees the date change — in a short transaction of their own, never inside a
//! write of results. Retention drops a day's partition whole once all of the day is older than
//! the cutoff (so raw results may be kept up to a day longer than the window says), and deletes
//! old rows from the default partition in bounded batches.

use crate::error::CollectorError;
use postgres::Client;
use std::collections::BTreeMap;

pub const DAY_MS: i64 = 86_400_000;
/// Days made ahead of today.
pub const AHEAD_DAYS: i64 = 3;
/// Serialises partition changes across collectors (`pg_advisory_xact_lock`).
const PARTITION_LOCK: i64 = 0x6567_7773_0002;
/// How long partition DDL waits for the table lock before giving up until next time: while it
/// waits, it queues every reader and writer of `results` behind it, so it waits little.
const DDL_LOCK_TIMEOUT: &str = "2s";

fn db_err(context: &str, e: postgres::Error) -> CollectorError {
    CollectorError::store(context, e)
}

/// The UTC day (days since the epoch) a time falls in.
pub fn day_of(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(DAY_MS)
}

/// `results_YYYYMMDD` of a day.
pub fn partition_name(day: i64) -> Option<String> {
    let date = time::OffsetDateTime::from_unix_timestamp(day.checked_mul(86_400)?)
        .ok()?
        .date();
    Some(format!(
        "results_{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

/// The day of a partition this store made, from its name; None for any other table.
fn day_of_name(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("results_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[0..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..8].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    Some(midnight.div_euclid(86_400))
}

/// The day partitions there are, by day.
fn existing(client: &mut Client) -> Result<BTreeMap<i64, String>, CollectorError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'results'::regclass",
            &[],
        )
        .map_err(|e| db_err("listing the results partitions", e))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let name: String = row
            .try_get(0)
            .map_err(|e| db_err("listing partitions", e))?;
        if let Some(day) = day_of_name(&name) {
            out.insert(day, name);
        }
    }
    Ok(out)
}

/// Makes the partitions of `first_day..=last_day` that are missing. Rows the default partition
/// already holds for such a day move into its new partition in the same transaction.
pub fn ensure(client: &mut Client, first_day: i64, last_day: i64) -> Result<(), CollectorError> {
    let have = existing(client)?;
    let missing: Vec<i64> = (first_day..=last_day)
        .filter(|d| !have.contains_key(d))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = client
        .transaction()
        .map_err(|e| db_err("making results partitions", e))?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        .map_err(|e| db_err("making results partitions", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .map_err(|e| db_err("waiting for the partition lock", e))?;
    for day in missing {
        let Some(name) = partition_name(day) else {
            continue;
        };
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
        // Made meanwhile by another collector (it held the lock first)?
        let made: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("making results partitions", e))?;
        if made {
            continue;
        }
        // A partition cannot be made over rows the default partition holds for its range:
        // they are set aside, the partition made, and they go back in (to it), ids unchanged.
        tx.batch_execute(&format!(
            "CREATE TEMPORARY TABLE moving ON COMMIT DROP AS
                 SELECT * FROM results_default WHERE at_ms >= {from} AND at_ms < {to};
             DELETE FROM results_default WHERE at_ms >= {from} AND at_ms < {to};
             CREATE TABLE {name} PARTITION OF results FOR VALUES FROM ({from}) TO ({to});
             INSERT INTO results SELECT * FROM moving;
             DROP TABLE moving;"
        ))
        .map_err(|e| db_err(&format!("making partition {name}"), e))?;
    }
    tx.commit()
        .map_err(|e| db_err("making results partitions", e))
}

/// Drops every day partition that ends at or before `before_ms`, and deletes at most the rest of
/// `max_rows` rows measured before it from the default partition. Returns the rows removed
/// (a dropped partition counts all its rows, which may be more than `max_rows`).
pub fn prune_raw(
    client: &mut Client,
    before_ms: i64,
    max_rows: usize,
) -> Result<usize, CollectorError> {
    let mut removed = 0usize;
    let expired: Vec<String> = existing(client)?
        .into_iter()
        .filter(|(day, _)| (day + 1) * DAY_MS <= before_ms)
        .map(|(_, name)| name)
        .collect();
    for name in expired {
        let mut tx = client
            .transaction()
            .map_err(|e| db_err("dropping a results partition", e))?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
            .map_err(|e| db_err("dropping a results partition", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .map_err(|e| db_err("waiting for the partition lock", e))?;
        let still: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err("dropping a results partition", e))?;
        if !still {
            continue;
        }
        let rows: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {name}"), &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_err(&format!("counting {name}"), e))?;
        tx.batch_execute(&format!("DROP TABLE {name}"))
            .map_err(|e| db_err(&format!("dropping {name}"), e))?;
        tx.commit()
            .map_err(|e| db_err(&format!("dropping {name}"), e))?;
        removed += rows as usize;
    }
    let budget = max_rows.saturating_sub(removed) as i64;
    if budget > 0 {
        let deleted = client
            .execute(
                "DELETE FROM results_default WHERE ctid IN
                 (SELECT ctid FROM results_default WHERE at_ms < $1 LIMIT $2)",
                &[&before_ms, &budget],
            )
            .map_err(|e| db_err("pruning old results of the default partition", e))?;
        removed += deleted as usize;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_days_round_trip() {
        // 2026-11-30T00:00:00Z
        let day = day_of(1_795_996_800_000);
        assert_eq!(partition_name(day).unwrap(), "results_20261130");
        assert_eq!(day_of_name("results_20261130"), Some(day));
        assert_eq!(day_of_name("results_default"), None);
        assert_eq!(day_of_name("results_2026113"), None);
        assert_eq!(partition_name(0).unwrap(), "results_19700101");
    }
}
