//! The PostgreSQL store's schema and its versioned migrations, applied when a store opens.
//!
//! `schema_version` holds every version applied. The migrations run in one transaction under a
//! transaction-level advisory lock, so collectors starting together apply each step once and
//! the others wait and then see it done. A database already at a version newer than this binary
//! knows is refused: an older collector must not write into a schema it does not understand.
//!
//! The tables are the SQLite store's (agents with their high-water marks, results, the freshest
//! result per series, events, silences and the long-kept tiers) plus what several collectors
//! share: `results` partitioned by day of measurement with each row's transaction id and a
//! serial id (the feed's order), events with a unique `dedup_key`, the alert `outbox`, and the
//! `collectors` heartbeat table.

use crate::error::CollectorError;
use postgres::Client;

/// The schema this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 2;

/// Serialises migrations across collectors (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6567_7773_0001;

const V1: &str = "
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL, account TEXT NOT NULL, region TEXT NOT NULL, instance TEXT NOT NULL,
    version TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
    high_water BIGINT NOT NULL DEFAULT 0
);
-- Raw results, one partition a day of measurement time (see partitions.rs). `xact` and `id` are
-- the feed's order: a reader takes only rows of transactions older than every one still running.
-- No unique key on (agent, seq): a partitioned table can only enforce one that holds the
-- partition key; exactly-once is the agent's high-water mark, read under its row lock.
CREATE TABLE results (
    id BIGSERIAL NOT NULL,
    xact xid8 NOT NULL DEFAULT pg_current_xact_id(),
    agent TEXT NOT NULL, seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL, clock_trusted BOOLEAN NOT NULL,
    target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL, outcome INTEGER NOT NULL,
    record BYTEA NOT NULL
) PARTITION BY RANGE (at_ms);
CREATE INDEX results_agent_seq ON results (agent, seq);
CREATE INDEX results_feed ON results (xact, id);
CREATE INDEX results_at ON results (at_ms);
-- Whatever falls outside every day partition (an agent clock far off) is kept here.
CREATE TABLE results_default PARTITION OF results DEFAULT;
CREATE TABLE latest (
    agent TEXT NOT NULL, target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    seq BIGINT NOT NULL, at_ms BIGINT NOT NULL, record BYTEA NOT NULL,
    PRIMARY KEY (agent, target, port, family)
);
CREATE INDEX latest_at ON latest (at_ms);
-- `dedup_key` names the change an event records: a leader that rebuilt its state after a
-- failover cannot record it twice. NULL for events appended without one.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, json TEXT NOT NULL, dedup_key TEXT UNIQUE
);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    event_id BIGINT NOT NULL REFERENCES events (id),
    sink TEXT NOT NULL, notice_json TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    created_ms BIGINT NOT NULL, attempted_ms BIGINT, finished_ms BIGINT
);
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'pending';
-- `leader_pid` is the backend that took the leader's lock for this collector: it leads while
-- that backend holds the lock (pg_locks), whatever its last heartbeat said.
CREATE TABLE collectors (
    id TEXT PRIMARY KEY, quic TEXT NOT NULL, http TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL, leader BOOLEAN NOT NULL, leader_pid INTEGER
);
CREATE TABLE silences (
    id TEXT PRIMARY KEY, created_at_ms BIGINT NOT NULL, ends_at_ms BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE series (
    id BIGSERIAL PRIMARY KEY,
    agent TEXT NOT NULL, target TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    provider TEXT NOT NULL, account TEXT NOT NULL,
    UNIQUE (agent, target, port, family)
);
CREATE TABLE intervals (
    series BIGINT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
    outcome INTEGER NOT NULL, first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL,
    probes BIGINT NOT NULL, connect BYTEA NOT NULL,
    PRIMARY KEY (series, first_seq)
);
CREATE INDEX intervals_last ON intervals (last_ms);
CREATE TABLE series_hourly (
    series BIGINT NOT NULL, hour BIGINT NOT NULL, outcomes BYTEA NOT NULL, connect BYTEA NOT NULL,
    PRIMARY KEY (series, hour)
);
CREATE TABLE cell_hourly (
    provider TEXT NOT NULL, account TEXT NOT NULL, port INTEGER NOT NULL, family INTEGER NOT NULL,
    hour BIGINT NOT NULL, outcomes BYTEA NOT NULL, connect BYTEA NOT NULL,
    PRIMARY KEY (provider, account, port, family, hour)
);
CREATE INDEX cell_hourly_hour ON cell_hourly (hour);
";

/// Version 2: each collector publishes its live agent sessions beside its heartbeat, so the
/// leader's fan-out can ask agents connected elsewhere.
const V2: &str = "
ALTER TABLE collectors ADD COLUMN sessions TEXT NOT NULL DEFAULT '[]';
";

/// Each version and the statements that take the schema to it from the one before.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2)];

fn db_err(context: &str, e: postgres::Error) -> CollectorError {
    CollectorError::store(context, e)
}

/// Brings the database to [`SCHEMA_VERSION`]; refuses one that is newer.
pub(super) fn migrate(client: &mut Client) -> Result<(), CollectorError> {
    let mut tx = client
        .transaction()
        .map_err(|e| db_err("migrating the schema", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| db_err("waiting for the migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .map_err(|e| db_err("creating schema_version", e))?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .and_then(|row| row.try_get(0))
        .map_err(|e| db_err("reading the schema version", e))?;
    if current > SCHEMA_VERSION {
        return Err(CollectorError::store(
            "opening the database",
            format!(
                "database schema version {current} is newer than this collector knows \
                 ({SCHEMA_VERSION}): upgrade the collector"
            ),
        ));
    }
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(statements)
            .map_err(|e| db_err(&format!("migrating the schema to version {version}"), e))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )
        .map_err(|e| db_err("recording the schema version", e))?;
    }
    tx.commit().map_err(|e| db_err("migrating the schema", e))
}
