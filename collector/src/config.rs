//! The collector's configuration: one TOML file, every key optional, embedded defaults that work
//! with no file at all. Each section's type lives in the module it configures.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the CA, the database and other state live.
    pub data_dir: PathBuf,
    pub quic: crate::ingest::QuicConfig,
    pub store: crate::store::StoreConfig,
    pub http: crate::http::HttpConfig,
    pub detector: crate::detector::DetectorConfig,
    /// Alert sinks, each `[[alerts]]` table one sink.
    pub alerts: Vec<crate::alerts::SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("egresswatch-data"),
            quic: Default::default(),
            store: Default::default(),
            http: Default::default(),
            detector: Default::default(),
            alerts: Vec::new(),
        }
    }
}
