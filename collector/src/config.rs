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
    pub matrix: crate::matrix::MatrixSettings,
    pub detector: crate::detector::DetectorConfig,
    /// Evidence on demand: asking other agents to probe a suspect destination now.
    pub fanout: crate::fanout::FanoutConfig,
    /// Alert sinks, each `[[alerts]]` table one sink.
    pub alerts: Vec<crate::alerts::SinkConfig>,
    /// Planned silences, each `[[silence]]` table one window (see `crate::silences`).
    pub silence: Vec<crate::silences::SilenceConfig>,
    /// Several collectors on one PostgreSQL database (`[store] kind = "postgres"`).
    pub cluster: crate::cluster::ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("egresswatch-data"),
            quic: Default::default(),
            store: Default::default(),
            http: Default::default(),
            matrix: Default::default(),
            detector: Default::default(),
            fanout: Default::default(),
            alerts: Vec::new(),
            silence: Vec::new(),
            cluster: Default::default(),
        }
    }
}

impl Config {
    /// The matrix's freshness in seconds: `[matrix] fresh_secs`, else 300.
    pub fn fresh_secs(&self) -> u64 {
        self.matrix.fresh_secs.unwrap_or(DEFAULT_FRESH_SECS)
    }

    /// What the fleet hub's matrix and detector run with.
    pub fn fleet(&self) -> crate::fleet::FleetConfig {
        crate::fleet::FleetConfig {
            detector: self.detector.clone(),
            matrix: crate::matrix::MatrixConfig {
                fresh_ms: secs_ms(self.fresh_secs()),
                silent_after_ms: secs_ms(self.detector.silent_after_secs),
                control_port: self.detector.control_port,
            },
            fanout: self.fanout.clone(),
        }
    }

    /// The `[[silence]]` windows as silences; an error names the table.
    pub fn silences(
        &self,
        now_unix_ms: i64,
    ) -> Result<Vec<crate::silences::Silence>, crate::error::CollectorError> {
        self.silence
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.silence(i, now_unix_ms)
                    .map_err(|reason| crate::error::CollectorError::Config {
                        path: format!("silence[{i}]"),
                        reason,
                    })
            })
            .collect()
    }

    /// Parses a config file's text. Errors name the key and the line (toml's messages do).
    /// A deprecated key still read is logged as a warning.
    pub fn parse(text: &str) -> Result<Config, crate::error::CollectorError> {
        let config: Config =
            toml::from_str(text).map_err(|e| crate::error::CollectorError::Config {
                path: "config".into(),
                reason: e.to_string(),
            })?;
        Ok(config)
    }
}

const DEFAULT_FRESH_SECS: u64 = 300;

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
        assert_eq!(example.store.raw_hours(), defaults.store.raw_hours());
        assert_eq!(
            example.store.history_retention_days,
            defaults.store.history_retention_days
        );
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
        assert_eq!(example.fanout, defaults.fanout);
        assert_eq!(example.fresh_secs(), defaults.fresh_secs());
    }

    #[test]
    fn fresh_secs_is_the_matrix_s_and_the_removed_deprecated_keys_are_refused_by_name() {
        let fresh = |text: &str| Config::parse(text).unwrap().fleet().matrix.fresh_ms;
        assert_eq!(fresh(""), 300_000);
        assert_eq!(fresh("[matrix]\nfresh_secs = 60\n"), 60_000);
        for (old, key) in [
            ("[detector]\nfresh_secs = 120\n", "fresh_secs"),
            ("[detector]\nconfirm_probes = 3\n", "confirm_probes"),
            ("[store]\nretention_days = 2\n", "retention_days"),
        ] {
            let err = Config::parse(old).unwrap_err().to_string();
            assert!(err.contains(key), "{old}: {err}");
        }
    }

    #[test]
    fn silence_tables_and_the_public_url_are_read() {
        let c = Config::parse(
            "[http]\npublic_url = \"https://watch.example/\"\n\n[[silence]]\nprovider = \"gcp\"\n\
             starts_at = \"2026-12-24T00:00:00Z\"\nends_at = \"2026-12-27T00:00:00Z\"\n\
             reason = \"freeze\"\n",
        )
        .unwrap();
        assert_eq!(c.http.public_url.as_deref(), Some("https://watch.example/"));
        let s = c.silences(0).unwrap();
        assert_eq!(s[0].matcher.provider.as_deref(), Some("gcp"));
        let bad =
            Config::parse("[[silence]]\nends_at = \"2026-12-27T00:00:00Z\"\nreason = \"x\"\n")
                .unwrap()
                .silences(0)
                .unwrap_err()
                .to_string();
        assert!(
            bad.contains("silence[0]") && bad.contains("silence every alert"),
            "{bad}"
        );
        let http = crate::http::HttpConfig {
            public_url: Some("watch.example".into()),
            ..Default::default()
        };
        assert!(http
            .validate()
            .unwrap_err()
            .to_string()
            .contains("public_url"));
    }

    #[test]
    fn the_fanout_section_is_read_and_defaults_to_on() {
        assert_eq!(
            Config::parse("").unwrap().fleet().fanout,
            crate::fanout::FanoutConfig::default()
        );
        assert!(crate::fanout::FanoutConfig::default().enabled);
        let c = Config::parse(
            "[fanout]\nenabled = false\nper_agent_per_minute = 2\ndeadline_secs = 30\n",
        )
        .unwrap();
        let f = c.fleet().fanout;
        assert_eq!(
            (f.enabled, f.per_agent_per_minute, f.deadline_ms()),
            (false, 2, 30_000)
        );
        let err = Config::parse("[fanout]\nenabeld = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enabeld"), "{err}");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let err = Config::parse("data_dir = \"x\"\n[quic]\nlisten = \"0.0.0.0:4433\"\nlistn = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn") && err.contains("line 4"), "{err}");
    }
}
