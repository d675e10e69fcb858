//! The store's part of silences: each one kept as its JSON record under its id, written again
//! when it is ended early (the record is never deleted, so `?all=1` shows what was silenced and
//! by whom). [`SilenceStore`] is part of every [`super::Store`]; [`check`] is its share of the
//! store contract, run against each implementation.

use crate::error::CollectorError;
use crate::silences::Silence;

pub trait SilenceStore {
    /// Stores a silence, replacing the one with its id.
    fn put_silence(&self, silence: &Silence) -> Result<(), CollectorError>;
    /// Every stored silence, expired ones included, oldest first.
    fn silences(&self) -> Result<Vec<Silence>, CollectorError>;
}

/// The record as stored.
pub(super) fn encode(silence: &Silence) -> Result<String, CollectorError> {
    serde_json::to_string(silence).map_err(|e| CollectorError::store("serialising a silence", e))
}

pub(super) fn decode(json: &str) -> Result<Silence, CollectorError> {
    serde_json::from_str(json).map_err(|e| CollectorError::store("reading a stored silence", e))
}

/// A silence is stored, read back equal, replaced by id (ending it) and kept after it ended.
#[cfg(test)]
pub fn check(store: &dyn SilenceStore) {
    use crate::silences::{Matcher, Origin};
    let mut s = Silence {
        id: "s-1".into(),
        matcher: Matcher {
            provider: Some("gcp".into()),
            port: Some(25),
            ..Default::default()
        },
        all: false,
        starts_at_ms: 10,
        ends_at_ms: 1_000,
        reason: "maintenance".into(),
        created_by: "ops".into(),
        created_at_ms: 10,
        ended_early_at_ms: None,
        origin: Origin::Api,
    };
    assert!(store.silences().unwrap().is_empty());
    store.put_silence(&s).unwrap();
    let other = Silence {
        id: "s-2".into(),
        created_at_ms: 11,
        ..s.clone()
    };
    store.put_silence(&other).unwrap();
    s.end(20);
    store.put_silence(&s).unwrap();
    assert_eq!(store.silences().unwrap(), vec![s, other]);
}
