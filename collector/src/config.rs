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

impl Config {
    /// What the fleet hub's matrix and detector run with.
    pub fn fleet(&self) -> crate::fleet::FleetConfig {
        crate::fleet::FleetConfig {
            detector: self.detector.clone(),
            matrix: crate::matrix::MatrixConfig {
                fresh_ms: secs_ms(self.detector.fresh_secs),
                silent_after_ms: secs_ms(self.detector.silent_after_secs),
                control_port: self.detector.control_port,
            },
        }
    }

    /// Parses a config file's text. Errors name the key and the line (toml's messages do).
    pub fn parse(text: &str) -> Result<Config, crate::error::CollectorError> {
        toml::from_str(text).map_err(|e| crate::error::CollectorError::Config {
            path: "config".into(),
            reason: e.to_string(),
        })
    }
}

fn secs_ms(secs: u64) -> i64 {
    (secs as i64).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.quic.listen.port(), 4433);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let example = Config::parse(include_str!("../config.example.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(example.quic.listen, defaults.quic.listen);
        assert_eq!(example.http.listen, defaults.http.listen);
        assert_eq!(example.store.retention_days, defaults.store.retention_days);
        let (e, d) = (&example.quic, &defaults.quic);
        assert_eq!(
            (
                e.max_connections_per_source,
                e.max_streams_per_connection,
                e.max_batch_results,
                e.max_results_per_sec,
                e.results_burst,
                e.max_frame_bytes,
            ),
            (
                d.max_connections_per_source,
                d.max_streams_per_connection,
                d.max_batch_results,
                d.max_results_per_sec,
                d.results_burst,
                d.max_frame_bytes,
            )
        );
        assert_eq!(example.http.max_body_bytes, defaults.http.max_body_bytes);
        assert_eq!(example.http.max_sse_clients, defaults.http.max_sse_clients);
        assert_eq!(
            example.detector.confirm_probes,
            defaults.detector.confirm_probes
        );
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let err = Config::parse("data_dir = \"x\"\n[quic]\nlisten = \"0.0.0.0:4433\"\nlistn = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn") && err.contains("line 4"), "{err}");
    }
}
