//! Silences in the SQLite store: one row per silence, its JSON record beside the columns a
//! listing orders by. Small writes, so they share the store's reader connection like events do.

use crate::error::CollectorError;
use crate::silences::Silence;
use crate::store::silences::{decode, encode, SilenceStore};
use crate::store::sqlite::SqliteStore;
use rusqlite::params;

/// Created with the rest of the schema when the store opens.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, ends_at_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
";

impl SilenceStore for SqliteStore {
    fn put_silence(&self, silence: &Silence) -> Result<(), CollectorError> {
        let record = encode(silence)?;
        self.conn()
            .execute(
                "INSERT INTO silences (id, created_at_ms, ends_at_ms, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET ends_at_ms = excluded.ends_at_ms,
                     record = excluded.record",
                params![silence.id, silence.created_at_ms, silence.ends_at_ms, record],
            )
            .map_err(|e| CollectorError::store("storing a silence", e))?;
        Ok(())
    }

    fn silences(&self) -> Result<Vec<Silence>, CollectorError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM silences ORDER BY created_at_ms, id")
            .map_err(|e| CollectorError::store("reading silences", e))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| CollectorError::store("reading silences", e))?;
        let mut out = Vec::new();
        for row in rows {
            let json = row.map_err(|e| CollectorError::store("reading silences", e))?;
            out.push(decode(&json)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn silences_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        crate::store::silences::check(&store);
        let before = store.silences().unwrap();
        store.close();
        drop(store);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.silences().unwrap(), before);
        let _: &dyn Store = &again;
    }
}
