//! Silences in the memory store, kept as they would be stored (the encoded record), so the
//! memory store fails where the SQLite one would.

use super::memory::MemoryStore;
use super::silences::{decode, encode, SilenceStore};
use crate::error::CollectorError;
use crate::silences::Silence;

impl SilenceStore for MemoryStore {
    fn put_silence(&self, silence: &Silence) -> Result<(), CollectorError> {
        let record = encode(silence)?;
        let mut held = self.silence_records();
        match held.iter_mut().find(|(id, _)| *id == silence.id) {
            Some(slot) => slot.1 = record,
            None => held.push((silence.id.clone(), record)),
        }
        Ok(())
    }

    fn silences(&self) -> Result<Vec<Silence>, CollectorError> {
        let mut out = self
            .silence_records()
            .iter()
            .map(|(_, json)| decode(json))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}
