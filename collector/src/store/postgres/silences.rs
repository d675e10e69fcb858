//! Silences in the PostgreSQL store: one row per silence, its JSON record beside the columns a
//! listing orders by (the SQLite store's table). Telling the other collectors that they changed
//! is [`super::super::shared::SharedStore::notify_silences`], called by whoever changed them.

use super::super::silences::{decode, encode, SilenceStore};
use super::PostgresStore;
use crate::error::CollectorError;
use crate::silences::Silence;

impl SilenceStore for PostgresStore {
    fn put_silence(&self, silence: &Silence) -> Result<(), CollectorError> {
        let record = encode(silence)?;
        self.client()?
            .execute(
                "INSERT INTO silences (id, created_at_ms, ends_at_ms, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET ends_at_ms = excluded.ends_at_ms,
                     record = excluded.record",
                &[&silence.id, &silence.created_at_ms, &silence.ends_at_ms, &record],
            )
            .map_err(|e| CollectorError::store("storing a silence", e))?;
        Ok(())
    }

    fn silences(&self) -> Result<Vec<Silence>, CollectorError> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM silences ORDER BY created_at_ms, id",
                &[],
            )
            .map_err(|e| CollectorError::store("reading silences", e))?;
        rows.iter()
            .map(|row| {
                let json: &str = row
                    .try_get(0)
                    .map_err(|e| CollectorError::store("reading silences", e))?;
                decode(json)
            })
            .collect()
    }
}
