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
    /// Signed snapshots of observed policy: export, publish, import (docs/feed.md).
    pub feed: crate::feed::FeedConfig,
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
            feed: Default::default(),
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
        config.validate()?;
        Ok(config)
    }

    /// Refuses the whole config, before anything is written to disk, when a setting is outside
    /// its documented range (docs/collector.md "Limits" and collector/config.example.toml give each), the
    /// flapping thresholds are the wrong way round, `[http]` is refused (token, addresses) or a
    /// `[[silence]]` or `[[alerts]]` table is malformed. The error names the key.
    pub fn validate(&self) -> Result<(), crate::error::CollectorError> {
        use egresswatch_wire::limits::{MAX_BATCH_RESULTS, MAX_FRAME_BYTES};
        const WEEK_SECS: u64 = 7 * 24 * 3600;
        self.http.validate()?;
        self.feed.validate()?;
        let q = &self.quic;
        in_range("quic.max_connections", q.max_connections, 1..=1_000_000)?;
        in_range("quic.max_handshakes", q.max_handshakes, 1..=100_000)?;
        in_range("quic.idle_timeout_secs", q.idle_timeout_secs, 1..=3600)?;
        in_range(
            "quic.max_frame_bytes",
            q.max_frame_bytes,
            1024..=MAX_FRAME_BYTES,
        )?;
        in_range(
            "quic.stream_window_bytes",
            q.stream_window_bytes,
            16_384..=(64 << 20),
        )?;
        if let Some(b) = q.udp_recv_buffer_bytes {
            in_range("quic.udp_recv_buffer_bytes", b, 0..=(1 << 30))?;
        }
        if let Some(b) = q.udp_send_buffer_bytes {
            in_range("quic.udp_send_buffer_bytes", b, 0..=(1 << 30))?;
        }
        in_range(
            "quic.max_connections_per_source",
            q.max_connections_per_source,
            1..=1_000_000,
        )?;
        in_range(
            "quic.max_streams_per_connection",
            q.max_streams_per_connection,
            1..=64,
        )?;
        in_range(
            "quic.max_batch_results",
            q.max_batch_results,
            1..=MAX_BATCH_RESULTS,
        )?;
        in_range(
            "quic.max_results_per_sec",
            q.max_results_per_sec,
            0..=1_000_000,
        )?;
        in_range("quic.results_burst", q.results_burst, 1..=10_000_000)?;
        in_range(
            "quic.enroll_attempts_per_minute",
            q.enroll_attempts_per_minute,
            1..=10_000,
        )?;
        in_range(
            "quic.enroll_attempts_burst",
            q.enroll_attempts_burst,
            1..=10_000,
        )?;
        let st = &self.store;
        in_range("store.pool_size", st.pool_size, 1..=256)?;
        in_range(
            "store.connect_timeout_secs",
            st.connect_timeout_secs,
            1..=300,
        )?;
        if let Some(h) = st.raw_retention_hours {
            in_range("store.raw_retention_hours", h, 0..=87_600)?;
        }
        in_range(
            "store.history_retention_days",
            st.history_retention_days,
            0..=3650,
        )?;
        if let Some(f) = self.matrix.fresh_secs {
            in_range("matrix.fresh_secs", f, 1..=WEEK_SECS)?;
        }
        let d = &self.detector;
        in_range("detector.false_alarm_rate", d.false_alarm_rate, 1e-12..=0.1)?;
        in_range(
            "detector.missed_change_rate",
            d.missed_change_rate,
            1e-6..=0.5,
        )?;
        in_range("detector.background_floor", d.background_floor, 0.0..=0.5)?;
        in_range(
            "detector.background_weight",
            d.background_weight,
            1e-4..=1.0,
        )?;
        in_range(
            "detector.blocked_answer_rate",
            d.blocked_answer_rate,
            1e-6..=0.5,
        )?;
        in_range(
            "detector.confirmation_carryover",
            d.confirmation_carryover,
            0.0..=0.9,
        )?;
        in_range(
            "detector.confirmations_counted",
            d.confirmations_counted,
            0..=20,
        )?;
        in_range("detector.settle_secs", d.settle_secs, 0..=3600)?;
        in_range(
            "detector.silent_after_secs",
            d.silent_after_secs,
            1..=WEEK_SECS,
        )?;
        in_range(
            "detector.replay_after_secs",
            d.replay_after_secs,
            1..=WEEK_SECS,
        )?;
        in_range("detector.flap_window", d.flap_window, 3..=1000)?;
        in_range("detector.flap_high_pct", d.flap_high_pct, 0.0..=100.0)?;
        in_range("detector.flap_low_pct", d.flap_low_pct, 0.0..=100.0)?;
        if d.flap_low_pct >= d.flap_high_pct {
            return Err(crate::error::CollectorError::Config {
                path: "detector.flap_low_pct".into(),
                reason: format!(
                    "{} must be below detector.flap_high_pct ({}): flapping starts above the \
                     high mark and ends below the low one",
                    d.flap_low_pct, d.flap_high_pct
                ),
            });
        }
        in_range("detector.control_port", d.control_port, 1..=65_535)?;
        in_range(
            "detector.min_agents_for_outage",
            d.min_agents_for_outage,
            1..=10_000,
        )?;
        in_range(
            "detector.min_accounts_for_provider",
            d.min_accounts_for_provider,
            1..=10_000,
        )?;
        let f = &self.fanout;
        in_range(
            "fanout.per_agent_per_minute",
            f.per_agent_per_minute,
            1..=600,
        )?;
        in_range(
            "fanout.per_destination_per_minute",
            f.per_destination_per_minute,
            1..=6000,
        )?;
        in_range("fanout.max_per_suspicion", f.max_per_suspicion, 1..=1000)?;
        in_range(
            "fanout.elsewhere_per_suspicion",
            f.elsewhere_per_suspicion,
            0..=1000,
        )?;
        in_range(
            "fanout.repeat_window_secs",
            f.repeat_window_secs,
            0..=86_400,
        )?;
        in_range("fanout.deadline_secs", f.deadline_secs, 1..=600)?;
        in_range(
            "cluster.replay_secs",
            self.cluster.replay_secs,
            1..=WEEK_SECS,
        )?;
        in_range(
            "cluster.heartbeat_secs",
            self.cluster.heartbeat_secs,
            1..=60,
        )?;
        for (i, a) in self.alerts.iter().enumerate() {
            let key = |k: &str| format!("alerts[{i}].{k}");
            let scheme_ok =
                reqwest::Url::parse(&a.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !scheme_ok {
                return Err(crate::error::CollectorError::Config {
                    path: key("url"),
                    reason: format!("{:?} is not an http:// or https:// URL", a.url),
                });
            }
            in_range(&key("timeout_secs"), a.timeout_secs, 1..=300)?;
            in_range(&key("retries"), a.retries, 0..=100)?;
            in_range(&key("backoff_ms"), a.backoff_ms, 1..=600_000)?;
            in_range(&key("queue"), a.queue, 1..=100_000)?;
            in_range(&key("resend_secs"), a.resend_secs, 1..=WEEK_SECS)?;
            in_range(&key("flap_hold_secs"), a.flap_hold_secs, 0..=WEEK_SECS)?;
        }
        self.silences(crate::clock::now_unix_ms())?;
        Ok(())
    }
}

const DEFAULT_FRESH_SECS: u64 = 300;

/// `value` within `range`, else an error naming `key` and the range (docs/collector.md "Limits" and the
/// example config document each range). A NaN is outside every range.
pub fn in_range<T>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), crate::error::CollectorError>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err(crate::error::CollectorError::Config {
        path: key.into(),
        reason: format!(
            "{value} is out of range: it must be from {} to {}",
            range.start(),
            range.end()
        ),
    })
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
                e.enroll_attempts_per_minute,
                e.enroll_attempts_burst,
            ),
            (
                d.max_connections_per_source,
                d.max_streams_per_connection,
                d.max_batch_results,
                d.max_results_per_sec,
                d.results_burst,
                d.max_frame_bytes,
                d.enroll_attempts_per_minute,
                d.enroll_attempts_burst,
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
                .map(|_| ())
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
    fn every_setting_out_of_range_is_refused_naming_its_key() {
        let refused = [
            ("[quic]\nmax_connections = 0", "quic.max_connections"),
            ("[quic]\nmax_handshakes = 0", "quic.max_handshakes"),
            ("[quic]\nidle_timeout_secs = 0", "quic.idle_timeout_secs"),
            ("[quic]\nmax_frame_bytes = 100", "quic.max_frame_bytes"),
            ("[quic]\nmax_frame_bytes = 99999999", "quic.max_frame_bytes"),
            (
                "[quic]\nstream_window_bytes = 0",
                "quic.stream_window_bytes",
            ),
            (
                "[quic]\nudp_recv_buffer_bytes = 99999999999",
                "quic.udp_recv_buffer_bytes",
            ),
            (
                "[quic]\nudp_send_buffer_bytes = 99999999999",
                "quic.udp_send_buffer_bytes",
            ),
            (
                "[quic]\nmax_connections_per_source = 0",
                "quic.max_connections_per_source",
            ),
            (
                "[quic]\nmax_streams_per_connection = 0",
                "quic.max_streams_per_connection",
            ),
            ("[quic]\nmax_batch_results = 0", "quic.max_batch_results"),
            ("[quic]\nmax_batch_results = 5000", "quic.max_batch_results"),
            (
                "[quic]\nmax_results_per_sec = 9999999",
                "quic.max_results_per_sec",
            ),
            ("[quic]\nresults_burst = 0", "quic.results_burst"),
            (
                "[quic]\nenroll_attempts_per_minute = 0",
                "quic.enroll_attempts_per_minute",
            ),
            ("[store]\npool_size = 0", "store.pool_size"),
            (
                "[store]\nconnect_timeout_secs = 0",
                "store.connect_timeout_secs",
            ),
            (
                "[store]\nraw_retention_hours = 100000",
                "store.raw_retention_hours",
            ),
            (
                "[store]\nhistory_retention_days = 4000",
                "store.history_retention_days",
            ),
            ("[matrix]\nfresh_secs = 0", "matrix.fresh_secs"),
            (
                "[detector]\nfalse_alarm_rate = nan",
                "detector.false_alarm_rate",
            ),
            (
                "[detector]\nfalse_alarm_rate = 0",
                "detector.false_alarm_rate",
            ),
            (
                "[detector]\nfalse_alarm_rate = 2",
                "detector.false_alarm_rate",
            ),
            (
                "[detector]\nmissed_change_rate = 0",
                "detector.missed_change_rate",
            ),
            (
                "[detector]\nbackground_floor = -0.1",
                "detector.background_floor",
            ),
            (
                "[detector]\nbackground_weight = 0",
                "detector.background_weight",
            ),
            (
                "[detector]\nblocked_answer_rate = inf",
                "detector.blocked_answer_rate",
            ),
            (
                "[detector]\nconfirmation_carryover = 1",
                "detector.confirmation_carryover",
            ),
            (
                "[detector]\nconfirmations_counted = 100",
                "detector.confirmations_counted",
            ),
            ("[detector]\nsettle_secs = 99999", "detector.settle_secs"),
            (
                "[detector]\nsilent_after_secs = 0",
                "detector.silent_after_secs",
            ),
            (
                "[detector]\nreplay_after_secs = 0",
                "detector.replay_after_secs",
            ),
            ("[detector]\nflap_window = 0", "detector.flap_window"),
            ("[detector]\nflap_high_pct = 150", "detector.flap_high_pct"),
            ("[detector]\nflap_low_pct = -1", "detector.flap_low_pct"),
            (
                "[detector]\nflap_high_pct = 20.0\nflap_low_pct = 30.0",
                "detector.flap_low_pct",
            ),
            ("[detector]\ncontrol_port = 0", "detector.control_port"),
            (
                "[detector]\nmin_agents_for_outage = 0",
                "detector.min_agents_for_outage",
            ),
            (
                "[detector]\nmin_accounts_for_provider = 0",
                "detector.min_accounts_for_provider",
            ),
            (
                "[fanout]\nper_agent_per_minute = 0",
                "fanout.per_agent_per_minute",
            ),
            (
                "[fanout]\nper_destination_per_minute = 0",
                "fanout.per_destination_per_minute",
            ),
            (
                "[fanout]\nmax_per_suspicion = 0",
                "fanout.max_per_suspicion",
            ),
            (
                "[fanout]\nelsewhere_per_suspicion = 5000",
                "fanout.elsewhere_per_suspicion",
            ),
            (
                "[fanout]\nrepeat_window_secs = 999999",
                "fanout.repeat_window_secs",
            ),
            ("[fanout]\ndeadline_secs = 0", "fanout.deadline_secs"),
            ("[cluster]\nreplay_secs = 0", "cluster.replay_secs"),
            ("[cluster]\nheartbeat_secs = 0", "cluster.heartbeat_secs"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            (
                "[http]\nheader_read_timeout_secs = 0",
                "http.header_read_timeout_secs",
            ),
            ("[http]\nmax_sse_clients = 0", "http.max_sse_clients"),
            ("[http]\nmax_body_bytes = 0", "http.max_body_bytes"),
            ("[http]\nmax_silences = 0", "http.max_silences"),
            (
                "[http]\nallowed_hosts = [\"https://x.example\"]",
                "http.allowed_hosts",
            ),
            ("[http]\ntoken = \"   \"", "http.token"),
            ("[http]\ntoken = \"\"", "http.token"),
        ];
        let sink = |rest: &str| {
            format!("[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n{rest}")
        };
        let alerts = [
            (sink("timeout_secs = 0"), "alerts[0].timeout_secs"),
            (sink("retries = 1000"), "alerts[0].retries"),
            (sink("backoff_ms = 0"), "alerts[0].backoff_ms"),
            (sink("queue = 0"), "alerts[0].queue"),
            (sink("resend_secs = 0"), "alerts[0].resend_secs"),
            (
                sink("flap_hold_secs = 99999999"),
                "alerts[0].flap_hold_secs",
            ),
            (
                "[[alerts]]\nkind = \"webhook\"\nurl = \"ftp://x.example/\"\n".to_string(),
                "alerts[0].url",
            ),
        ];
        let all = refused
            .iter()
            .map(|(t, k)| (t.to_string(), *k))
            .chain(alerts.iter().map(|(t, k)| (t.clone(), *k)));
        for (text, key) in all {
            let err = Config::parse(&text)
                .map(|_| ())
                .expect_err(&text)
                .to_string();
            assert!(err.contains(key), "{text:?} → {err}");
        }
        // Each bound itself is allowed.
        for ok in [
            "[quic]\nmax_batch_results = 1\nstream_window_bytes = 16384",
            "[detector]\nfalse_alarm_rate = 0.1\nflap_high_pct = 100\nflap_low_pct = 0",
            "[http]\nmax_connections = 16\nheader_read_timeout_secs = 300",
        ] {
            Config::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let err = Config::parse("data_dir = \"x\"\n[quic]\nlisten = \"0.0.0.0:4433\"\nlistn = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn") && err.contains("line 4"), "{err}");
    }
}
