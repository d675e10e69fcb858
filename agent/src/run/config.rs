//! The agent's configuration file (TOML). Every section but `[collector]` is optional; unknown
//! keys are an error that names the key and its line, so a typo never silently disables a probe.
//!
//! SIGHUP reloads the file (see `run`): everything applies live except what
//! [`AgentConfig::restart_only_changes`] names — where results are spooled and whom they are sent
//! to as whom, which the spooled results and their sequence numbers are tied to.

use crate::check::parse_duration;
use crate::error::AgentError;
use egresswatch_wire::{Labels, Level};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub collector: CollectorConfig,
    #[serde(default, rename = "labels")]
    labels_table: LabelsConfig,
    /// The validated `[labels]`.
    #[serde(skip)]
    pub labels: Labels,
    #[serde(default, rename = "targets")]
    targets_table: Vec<TargetTable>,
    /// The validated `[[targets]]`, each naming a preset turned into its hosts and ports.
    #[serde(skip)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// A file of mail-provider presets over the built-in ones, for `[[targets]] provider = …`.
    #[serde(default)]
    pub presets: Option<PathBuf>,
    /// How TLS starts on the ports of the presets named in `[[targets]]` (filled by validation).
    #[serde(skip)]
    pub preset_sessions: Vec<(String, u16, crate::probe::Session)>,
}

/// `[log]`: what the agent logs (to stderr).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `LEVEL` or `TARGET=LEVEL` directives, comma-separated (`info`, `debug`,
    /// `info,egresswatch_agent=debug`, …; no span or field filters). Unset: `RUST_LOG`,
    /// else `info`. `RUST_LOG`, when set, wins over this.
    pub level: Option<String>,
}

/// `[labels]`: empty or absent fields are detected (DMI, metadata service).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LabelsConfig {
    provider: String,
    account: String,
    region: String,
    instance: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// The collectors' QUIC listeners, `host:port` each, in the order they are tried: one string
    /// (`address = "c1.example:4433"`) or a list (`address = ["c1.example:4433", "c2.example:4433"]`).
    /// Several collectors sharing one store are interchangeable; the uplink sticks to one and
    /// moves on when it fails (see `uplink`).
    #[serde(deserialize_with = "one_or_many_addresses")]
    pub address: Vec<String>,
    /// Name the collector's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The fleet CA (`ca.pem` from the collector).
    pub ca: PathBuf,
    /// This agent's certificate and key, issued by `egresswatch-collector ca issue`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `linger` as configured; unset, it follows the targets' intervals ([`default_linger`]).
    #[serde(default, rename = "linger", deserialize_with = "optional_duration")]
    pub linger_setting: Option<Duration>,
    /// How long a result that is no news (its series' state unchanged) may wait for company
    /// before it is sent; news, confirmations and answers to requests go at once. Resolved from
    /// `linger_setting` when the configuration is read.
    #[serde(skip)]
    pub linger: Duration,
}

/// Half the shortest probe interval, at most 30 s: at the default 60 s interval each batch
/// carries about half of every series' results, and the collector's newest result of a series
/// is never older than interval + linger (90 s), well inside the matrix's 180 s before it calls
/// it stale; an agent probing every few seconds still reports every few seconds.
pub fn default_linger(targets: &[TargetConfig]) -> Duration {
    let shortest = targets
        .iter()
        .map(|t| t.interval)
        .min()
        .unwrap_or(Duration::from_secs(60));
    (shortest / 2).min(Duration::from_secs(30))
}

/// Longest linger accepted: beyond it the collector's matrix would call healthy series stale.
pub const MAX_LINGER: Duration = Duration::from_secs(120);

fn default_server_name() -> String {
    "egresswatch-collector".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub host: String,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub level: Level,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
}

/// `[[targets]]` as written: a host and its ports, or a mail provider's preset
/// (`provider = "zeptomail"`, `"ses:eu-west-1"`) that validation turns into two targets — its
/// SMTP host with the preset's ports, and its API host on 443.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetTable {
    host: Option<String>,
    provider: Option<String>,
    ports: Option<Vec<u16>>,
    #[serde(default)]
    level: Level,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    interval: Duration,
}

fn default_ports() -> Vec<u16> {
    crate::check::DEFAULT_PORTS.to_vec()
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Most probes in flight at once.
    pub concurrency: usize,
    /// Politeness: never probe one destination host more often than this, whatever the
    /// targets say.
    #[serde(deserialize_with = "duration")]
    pub min_interval_per_destination: Duration,
    pub source: Vec<std::net::IpAddr>,
    pub interface: Option<String>,
    /// Extra trust roots (PEM) for TLS probes of private relays.
    pub ca_file: Option<PathBuf>,
    /// Probes on fresh sockets after a scheduled result departs from its series' settled state;
    /// 0 turns confirmations off.
    pub confirm_probes: u32,
    /// Between confirmation probes; unset: 5 s, raised to `min_interval_per_destination`.
    #[serde(deserialize_with = "optional_duration")]
    pub confirm_spacing: Option<Duration>,
    /// Between confirmation probes of a departure that never connected (no answer to the SYN,
    /// a reset, an ICMP error): below the floor, as the destination's service never saw it.
    #[serde(deserialize_with = "duration")]
    pub confirm_spacing_unconnected: Duration,
    /// A scheduled probe of an open series whose connection attempt is unanswered this long
    /// starts its confirmations then, without waiting for its own timeout (at or above
    /// `timeout`: it waits, as a value that can never be reached).
    #[serde(deserialize_with = "duration")]
    pub confirm_unanswered_after: Duration,
    /// Most confirmation probes to one destination host in any minute.
    pub confirm_per_destination_per_minute: u32,
    /// Answer the collector's probe requests (for targets and ports configured here only).
    pub answer_probe_requests: bool,
    /// Most requested probes in any minute.
    pub requests_per_minute: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            timeout: Duration::from_secs(5),
            concurrency: 16,
            min_interval_per_destination: Duration::from_secs(10),
            source: Vec::new(),
            interface: None,
            ca_file: None,
            confirm_probes: 3,
            confirm_spacing: None,
            confirm_spacing_unconnected: Duration::from_secs(1),
            confirm_unanswered_after: Duration::from_millis(1500),
            confirm_per_destination_per_minute: 6,
            answer_probe_requests: true,
            requests_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Never under /tmp: the spool must survive a reboot.
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/egresswatch-agent"),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Ask the cloud's metadata service for labels the config does not give.
    pub metadata: bool,
    /// Base URL of the metadata service (tests point it at loopback).
    pub metadata_url: String,
    /// Where the DMI strings are.
    pub dmi_dir: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            metadata: true,
            metadata_url: "http://169.254.169.254".into(),
            dmi_dir: PathBuf::from("/sys/class/dmi/id"),
        }
    }
}

/// `collector.address` as one string or a list of strings.
fn one_or_many_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Addresses;
    impl<'de> serde::de::Visitor<'de> for Addresses {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("\"host:port\" or a list of them, [\"host:port\", …]")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut addresses = Vec::new();
            while let Some(address) = seq.next_element::<String>()? {
                addresses.push(address);
            }
            Ok(addresses)
        }
    }
    d.deserialize_any(Addresses)
}

/// Why `entry` is not a usable `host:port`, if it is not. Names are only resolved when
/// connecting (and again on every round), so a name that does not resolve yet is not an error.
fn address_problem(entry: &str) -> Option<String> {
    if entry.parse::<std::net::SocketAddr>().is_ok() {
        return None;
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Some(format!(
            "{entry:?} has no port: write host:port, e.g. \"{entry}:4433\""
        ));
    };
    if host.contains(':') || host.starts_with('[') {
        return Some(format!(
            "{entry:?} is not host:port: an IPv6 address goes in brackets, e.g. \"[2001:db8::1]:4433\""
        ));
    }
    if host.is_empty() || host.len() > 253 {
        return Some(format!("{entry:?}: the host is empty or too long"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Some(format!(
            "{entry:?}: the host has {c:?}, which no host name has"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Some(format!("{entry:?}: the port must be 1..=65535")),
        Ok(_) => None,
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Spacing of confirmation probes when the config does not say (before the politeness floor).
const DEFAULT_CONFIRM_SPACING: Duration = Duration::from_secs(5);
/// The shortest spacing of confirmations of a departure that never connected.
const MIN_UNCONNECTED_SPACING: Duration = Duration::from_millis(500);
/// The kernel retransmits an unanswered SYN after 1 s: below that, every lost SYN would look
/// like a departure.
const MIN_UNANSWERED_AFTER: Duration = Duration::from_secs(1);
/// Most confirmation probes after one departure.
pub const MAX_CONFIRM_PROBES: u32 = 10;

/// The range of every numeric setting, by key, as docs/agent.md and `config.example.toml` state
/// them; a value outside is refused with an error naming the key. Durations are also bounded by
/// how they are written (above 0, at most 24 h). Beyond these, two settings depend on others:
/// `probe.confirm_spacing` is not below `probe.min_interval_per_destination`, and the per-minute
/// budgets may be 0 only while what they budget is off.
pub mod ranges {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    pub const LINGER: RangeInclusive<Duration> =
        RangeInclusive::new(Duration::ZERO, super::MAX_LINGER);
    pub const TARGET_INTERVAL: RangeInclusive<Duration> =
        RangeInclusive::new(Duration::from_secs(1), Duration::from_secs(86_400));
    pub const PROBE_TIMEOUT: RangeInclusive<Duration> =
        RangeInclusive::new(Duration::from_millis(100), Duration::from_secs(120));
    pub const CONCURRENCY: RangeInclusive<usize> = RangeInclusive::new(1, 1024);
    pub const MIN_INTERVAL_PER_DESTINATION: RangeInclusive<Duration> =
        RangeInclusive::new(Duration::ZERO, Duration::from_secs(3600));
    pub const CONFIRM_PROBES: RangeInclusive<u32> =
        RangeInclusive::new(0, super::MAX_CONFIRM_PROBES);
    pub const CONFIRM_SPACING: RangeInclusive<Duration> =
        RangeInclusive::new(Duration::ZERO, Duration::from_secs(3600));
    pub const CONFIRM_SPACING_UNCONNECTED: RangeInclusive<Duration> =
        RangeInclusive::new(super::MIN_UNCONNECTED_SPACING, Duration::from_secs(60));
    pub const CONFIRM_UNANSWERED_AFTER: RangeInclusive<Duration> =
        RangeInclusive::new(super::MIN_UNANSWERED_AFTER, Duration::from_secs(86_400));
    pub const CONFIRM_PER_DESTINATION_PER_MINUTE: RangeInclusive<u32> = RangeInclusive::new(0, 60);
    pub const REQUESTS_PER_MINUTE: RangeInclusive<u32> = RangeInclusive::new(0, 600);
    pub const SPOOL_MAX_BYTES: RangeInclusive<u64> = RangeInclusive::new(64 * 1024, 1 << 40);
}

/// `key`'s `value` within `range`, or the error that names the key and the range.
fn within<T: PartialOrd + std::fmt::Debug>(
    key: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(format!(
        "{key} must be {:?} to {:?}, not {value:?}",
        range.start(),
        range.end()
    ))
}

/// Widely used submission endpoints, probed when no target is configured, politely.
pub const BUILTIN_TARGETS: &[&str] = &[
    "smtp.gmail.com",
    "smtp.office365.com",
    "smtp.mail.yahoo.com",
    "smtp.fastmail.com",
];
const BUILTIN_INTERVAL: Duration = Duration::from_secs(300);

impl AgentConfig {
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, AgentError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| AgentError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        config.validate(path)
    }

    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?;
        AgentConfig::parse(&text, path)
    }

    fn validate(mut self, path: &Path) -> Result<AgentConfig, AgentError> {
        let bad = |reason: String| AgentError::Config {
            path: path.display().to_string(),
            reason,
        };
        if self.collector.address.is_empty() {
            return Err(bad(
                "collector.address: the list is empty; give at least one \"host:port\"".into(),
            ));
        }
        for (i, entry) in self.collector.address.iter().enumerate() {
            if let Some(problem) = address_problem(entry) {
                return Err(bad(format!("collector.address[{i}]: {problem}")));
            }
            if let Some(first) = self.collector.address[..i].iter().position(|e| e == entry) {
                return Err(bad(format!(
                    "collector.address[{i}]: {entry:?} repeats collector.address[{first}]"
                )));
            }
        }
        let table = &self.labels_table;
        self.labels = Labels {
            provider: table.provider.clone(),
            account: table.account.clone(),
            region: table.region.clone(),
            instance: table.instance.clone(),
        }
        .validated()
        .map_err(|e| bad(e.to_string()))?;
        self.expand_provider_targets().map_err(bad)?;
        self.check_ranges().map_err(bad)?;
        for t in &self.targets {
            if t.host.is_empty() || t.host.len() > egresswatch_wire::limits::MAX_TARGET_BYTES {
                return Err(bad(format!(
                    "targets: host {:?} is empty or too long",
                    t.host
                )));
            }
            if t.ports.is_empty() || t.ports.contains(&0) {
                return Err(bad(format!(
                    "targets: {}: ports must be 1..=65535 and not empty",
                    t.host
                )));
            }
            if t.interval < Duration::from_secs(1) {
                return Err(bad(format!(
                    "targets: {}: interval must be at least 1s",
                    t.host
                )));
            }
        }
        let p = &self.probe;
        if let Some(spacing) = p.confirm_spacing {
            if spacing < p.min_interval_per_destination {
                return Err(bad(format!(
                    "probe.confirm_spacing ({spacing:?}) must not be below probe.min_interval_per_destination ({:?}): confirmations keep the same politeness as the schedule",
                    p.min_interval_per_destination
                )));
            }
        }
        if p.confirm_spacing_unconnected < MIN_UNCONNECTED_SPACING {
            return Err(bad(format!(
                "probe.confirm_spacing_unconnected ({:?}) must be at least {MIN_UNCONNECTED_SPACING:?}",
                p.confirm_spacing_unconnected
            )));
        }
        if p.confirm_unanswered_after < MIN_UNANSWERED_AFTER {
            return Err(bad(format!(
                "probe.confirm_unanswered_after ({:?}) must be at least {MIN_UNANSWERED_AFTER:?}, the kernel's first SYN retransmission (set it to probe.timeout or more to wait for the timeout)",
                p.confirm_unanswered_after
            )));
        }
        if p.confirm_probes > 0 && p.confirm_per_destination_per_minute == 0 {
            return Err(bad(
                "probe.confirm_per_destination_per_minute must be at least 1 (set probe.confirm_probes = 0 to turn confirmations off)".into(),
            ));
        }
        if p.answer_probe_requests && p.requests_per_minute == 0 {
            return Err(bad(
                "probe.requests_per_minute must be at least 1 (set probe.answer_probe_requests = false to turn requests off)".into(),
            ));
        }
        self.collector.linger = self
            .collector
            .linger_setting
            .unwrap_or_else(|| default_linger(&self.effective_targets()));
        if self.collector.linger > MAX_LINGER {
            return Err(bad(format!(
                "collector.linger must be at most {}s: the collector calls a series stale after 180 s",
                MAX_LINGER.as_secs()
            )));
        }
        if self.spool.dir.starts_with("/tmp") {
            return Err(bad(
                "spool.dir must not be under /tmp: the spool must survive a reboot".into(),
            ));
        }
        if let Some(level) = &self.log.level {
            crate::run::logging::parse_filter(level)
                .map_err(|e| bad(format!("log.level {level:?}: {e}")))?;
        }
        Ok(self)
    }

    /// Every numeric setting within [`ranges`].
    fn check_ranges(&self) -> Result<(), String> {
        use ranges::*;
        if let Some(linger) = self.collector.linger_setting {
            within("collector.linger", linger, &LINGER)?;
        }
        for (i, t) in self.targets.iter().enumerate() {
            within(
                &format!("targets[{i}].interval"),
                t.interval,
                &TARGET_INTERVAL,
            )?;
        }
        let p = &self.probe;
        within("probe.timeout", p.timeout, &PROBE_TIMEOUT)?;
        within("probe.concurrency", p.concurrency, &CONCURRENCY)?;
        within(
            "probe.min_interval_per_destination",
            p.min_interval_per_destination,
            &MIN_INTERVAL_PER_DESTINATION,
        )?;
        within("probe.confirm_probes", p.confirm_probes, &CONFIRM_PROBES)?;
        if let Some(spacing) = p.confirm_spacing {
            within("probe.confirm_spacing", spacing, &CONFIRM_SPACING)?;
        }
        within(
            "probe.confirm_spacing_unconnected",
            p.confirm_spacing_unconnected,
            &CONFIRM_SPACING_UNCONNECTED,
        )?;
        within(
            "probe.confirm_unanswered_after",
            p.confirm_unanswered_after,
            &CONFIRM_UNANSWERED_AFTER,
        )?;
        within(
            "probe.confirm_per_destination_per_minute",
            p.confirm_per_destination_per_minute,
            &CONFIRM_PER_DESTINATION_PER_MINUTE,
        )?;
        within(
            "probe.requests_per_minute",
            p.requests_per_minute,
            &REQUESTS_PER_MINUTE,
        )?;
        within("spool.max_bytes", self.spool.max_bytes, &SPOOL_MAX_BYTES)?;
        Ok(())
    }

    /// Settings that differ between `self` (running) and `new` but only take effect on a
    /// restart, by name. The spool directory holds the unacked results and their numbering; the
    /// collectors' addresses and this agent's certificate say whom they are sent to as whom (the
    /// certificate *files* are re-read at every reconnect, so one renewed in place needs no
    /// restart). The address list compares as a list: one string and a list of that one string
    /// are the same setting, while a reordered list is a change (the order is the order tried).
    pub fn restart_only_changes(&self, new: &AgentConfig) -> Vec<&'static str> {
        let (a, b) = (&self.collector, &new.collector);
        [
            ("collector.address", a.address != b.address),
            ("collector.server_name", a.server_name != b.server_name),
            ("collector.ca", a.ca != b.ca),
            ("collector.cert", a.cert != b.cert),
            ("collector.key", a.key != b.key),
            ("collector.linger", a.linger_setting != b.linger_setting),
            ("spool.dir", self.spool.dir != new.spool.dir),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }

    /// `new` as it can be applied to a running agent: its restart-only settings replaced by the
    /// running ones.
    pub fn live_part_of(&self, new: AgentConfig) -> AgentConfig {
        let mut applied = new;
        applied.collector = self.collector.clone();
        applied.spool.dir = self.spool.dir.clone();
        applied
    }

    /// What the confirmation and request decisions follow.
    pub fn evidence(&self) -> crate::run::evidence::EvidenceSettings {
        let p = &self.probe;
        crate::run::evidence::EvidenceSettings {
            confirm_probes: p.confirm_probes,
            confirm_spacing: p
                .confirm_spacing
                .unwrap_or(DEFAULT_CONFIRM_SPACING)
                .max(p.min_interval_per_destination),
            unconnected_spacing: p.confirm_spacing_unconnected,
            unanswered_after: p.confirm_unanswered_after,
            confirm_per_destination_per_minute: p.confirm_per_destination_per_minute,
            answer_probe_requests: p.answer_probe_requests,
            requests_per_minute: p.requests_per_minute,
        }
    }

    /// `[[targets]]` as written into the targets to probe: a `provider` into its preset's SMTP
    /// host with the preset's ports and its API host on 443 (the presets are loaded only when
    /// some target names one).
    fn expand_provider_targets(&mut self) -> Result<(), String> {
        let presets = if self.targets_table.iter().any(|t| t.provider.is_some()) {
            Some(
                crate::presets::Presets::load(self.presets.as_deref())
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let mut targets = Vec::with_capacity(self.targets_table.len() + 1);
        self.preset_sessions.clear();
        for t in &self.targets_table {
            let (host, asked) = match (&t.host, &t.provider, &presets) {
                (Some(host), None, _) => (host, None),
                (None, Some(asked), Some(presets)) => (asked, Some(presets.resolve(asked))),
                (Some(_), Some(asked), _) => {
                    return Err(format!(
                        "targets: provider {asked:?}: give host or provider, not both"
                    ))
                }
                _ => return Err("targets: each needs host = \"…\" or provider = \"…\"".into()),
            };
            let Some(resolved) = asked else {
                targets.push(TargetConfig {
                    host: host.clone(),
                    ports: t.ports.clone().unwrap_or_else(default_ports),
                    level: t.level,
                    interval: t.interval,
                });
                continue;
            };
            let at = format!("targets: provider {host:?}");
            if t.ports.is_some() {
                return Err(format!("{at}: ports come from the preset; leave ports out"));
            }
            let preset = resolved.map_err(|e| format!("{at}: {e}"))?;
            self.preset_sessions.extend(preset.sessions());
            targets.push(TargetConfig {
                host: preset.smtp_host.clone(),
                ports: preset.ports.iter().map(|p| p.port).collect(),
                level: t.level,
                interval: t.interval,
            });
            targets.push(TargetConfig {
                host: preset.api_host.clone(),
                ports: vec![crate::probe::PORT_HTTPS],
                level: t.level,
                interval: t.interval,
            });
        }
        self.targets = targets;
        Ok(())
    }

    /// The targets to probe: the configured ones, or the built-in list at a polite interval.
    pub fn effective_targets(&self) -> Vec<TargetConfig> {
        if !self.targets.is_empty() {
            return self.targets.clone();
        }
        BUILTIN_TARGETS
            .iter()
            .map(|host| TargetConfig {
                host: host.to_string(),
                ports: vec![25, 465, 587],
                level: Level::Banner,
                interval: BUILTIN_INTERVAL,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[collector]\naddress = \"collector.example:4433\"\nca = \"/etc/ew/ca.pem\"\ncert = \"/etc/ew/a.crt\"\nkey = \"/etc/ew/a.key\"\n";

    #[test]
    fn a_config_with_only_the_collector_is_useful() {
        let c = AgentConfig::parse(MINIMAL, Path::new("a.toml")).unwrap();
        assert_eq!(c.collector.server_name, "egresswatch-collector");
        assert_eq!(c.spool.dir, PathBuf::from("/var/lib/egresswatch-agent"));
        let targets = c.effective_targets();
        assert!(targets.len() >= 3);
        assert!(targets
            .iter()
            .all(|t| t.interval >= Duration::from_secs(300)));
    }

    #[test]
    fn the_documented_example_parses() {
        let c = AgentConfig::parse(
            include_str!("../../config.example.toml"),
            Path::new("config.example.toml"),
        )
        .unwrap();
        assert_eq!(c.targets[0].ports, vec![25, 465, 587, 2525, 443]);
        assert_eq!(c.spool.max_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn full_config() {
        let text = format!(
            "{MINIMAL}[labels]\nprovider = \"aws\"\naccount = \"prod\"\n[[targets]]\nhost = \"mx.lab.test\"\nports = [25, 587]\nlevel = \"banner\"\ninterval = \"30s\"\n[probe]\ntimeout = \"2s\"\n[spool]\ndir = \"/var/lib/x\"\nmax_bytes = 1048576\n"
        );
        let c = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(c.targets[0].interval, Duration::from_secs(30));
        assert_eq!(c.targets[0].level, Level::Banner);
        assert_eq!(c.probe.timeout, Duration::from_secs(2));
        assert_eq!(c.labels.provider, "aws");
    }

    #[test]
    fn a_reload_names_what_needs_a_restart_and_keeps_it() {
        let running = AgentConfig::parse(MINIMAL, Path::new("a.toml")).unwrap();
        let text = MINIMAL.replace("collector.example:4433", "other.example:4433")
            + "[spool]\ndir = \"/var/lib/elsewhere\"\nmax_bytes = 1048576\n[log]\nlevel = \"debug\"\n[[targets]]\nhost = \"mx.lab.test\"\n";
        let new = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(
            running.restart_only_changes(&new),
            vec!["collector.address", "spool.dir"]
        );
        let applied = running.live_part_of(new);
        assert_eq!(applied.collector.address, ["collector.example:4433"]);
        assert_eq!(
            applied.spool.dir,
            PathBuf::from("/var/lib/egresswatch-agent")
        );
        assert_eq!(applied.spool.max_bytes, 1048576, "the cap is live");
        assert_eq!(applied.targets[0].host, "mx.lab.test");
        assert_eq!(applied.log.level.as_deref(), Some("debug"));
        assert!(running.restart_only_changes(&applied).is_empty());
    }

    #[test]
    fn the_collector_address_is_one_string_or_a_list() {
        let one = AgentConfig::parse(MINIMAL, Path::new("a.toml")).unwrap();
        assert_eq!(one.collector.address, ["collector.example:4433"]);
        let listed = MINIMAL.replace(
            "address = \"collector.example:4433\"",
            "address = [\"c1.example:4433\", \"192.0.2.7:4433\", \"[2001:db8::7]:4433\"]",
        );
        let many = AgentConfig::parse(&listed, Path::new("a.toml")).unwrap();
        assert_eq!(
            many.collector.address,
            ["c1.example:4433", "192.0.2.7:4433", "[2001:db8::7]:4433"]
        );
        let one_listed =
            MINIMAL.replace("\"collector.example:4433\"", "[\"collector.example:4433\"]");
        let one_listed = AgentConfig::parse(&one_listed, Path::new("a.toml")).unwrap();
        assert!(
            one.restart_only_changes(&one_listed).is_empty(),
            "a string and a list of it are the same setting"
        );
        assert_eq!(one.restart_only_changes(&many), vec!["collector.address"]);
        let reordered = listed.replace(
            "[\"c1.example:4433\", \"192.0.2.7:4433\"",
            "[\"192.0.2.7:4433\", \"c1.example:4433\"",
        );
        let reordered = AgentConfig::parse(&reordered, Path::new("a.toml")).unwrap();
        assert_eq!(
            many.restart_only_changes(&reordered),
            vec!["collector.address"],
            "the order is the order tried"
        );
        assert_eq!(
            many.live_part_of(reordered).collector.address,
            many.collector.address
        );
    }

    #[test]
    fn a_bad_collector_address_names_its_entry() {
        let with = |value: &str| {
            AgentConfig::parse(
                &MINIMAL.replace("\"collector.example:4433\"", value),
                Path::new("a.toml"),
            )
            .unwrap_err()
            .to_string()
        };
        for (value, names) in [
            ("[\"c1.example:4433\", \"c2.example\"]", "collector.address[1]: \"c2.example\" has no port"),
            ("[\"c1.example:4433\", \"c2.example:0\"]", "collector.address[1]: \"c2.example:0\": the port"),
            ("[\"c1.example:99999\"]", "collector.address[0]: \"c1.example:99999\": the port"),
            ("[\"c1.example:4433\", \"2001:db8::1:4433\"]", "collector.address[1]: \"2001:db8::1:4433\" is not host:port: an IPv6 address goes in brackets"),
            ("[\"c1.example:4433\", \"\"]", "collector.address[1]: \"\" has no port"),
            ("[\"c 1.example:4433\"]", "collector.address[0]: \"c 1.example:4433\": the host has ' '"),
            ("[\"c1.example:4433\", \"c1.example:4433\"]", "collector.address[1]: \"c1.example:4433\" repeats collector.address[0]"),
            ("[]", "collector.address: the list is empty"),
            ("\"c1.example\"", "collector.address[0]: \"c1.example\" has no port"),
        ] {
            let err = with(value);
            assert!(err.contains(names), "{value}: {err}");
        }
        let err = with("[\"c1.example:4433\", 4433]");
        assert!(err.contains("address"), "{err}");
        let err = with("4433");
        assert!(err.contains("host:port"), "{err}");
    }

    #[test]
    fn a_bad_log_level_is_a_config_error() {
        let err = AgentConfig::parse(
            &format!("{MINIMAL}[log]\nlevel = \"info,egresswatch=loud\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("log.level"), "{err}");
    }

    #[test]
    fn evidence_settings_default_to_the_floor_and_reject_what_would_be_rude() {
        let c = AgentConfig::parse(MINIMAL, Path::new("a.toml")).unwrap();
        let e = c.evidence();
        assert_eq!(e.confirm_probes, 3);
        assert_eq!(
            e.confirm_spacing,
            Duration::from_secs(10),
            "5 s raised to the 10 s floor"
        );
        assert_eq!(e.unconnected_spacing, Duration::from_secs(1));
        assert_eq!(e.unanswered_after, Duration::from_millis(1500));
        assert!(e.answer_probe_requests);
        assert_eq!(e.requests_per_minute, 10);
        // The built-in targets every 5 minutes: the 30 s cap; a target every 4 s: 2 s.
        assert_eq!(c.collector.linger, Duration::from_secs(30));
        let fast = format!(
            "{MINIMAL}[[targets]]\nhost = \"mx.lab.test\"\nports = [587]\ninterval = \"4s\"\n"
        );
        let c = AgentConfig::parse(&fast, Path::new("a.toml")).unwrap();
        assert_eq!(c.collector.linger, Duration::from_secs(2));
        let set = fast.replace("[collector]\n", "[collector]\nlinger = \"20s\"\n");
        let c = AgentConfig::parse(&set, Path::new("a.toml")).unwrap();
        assert_eq!(c.collector.linger, Duration::from_secs(20));
        let low_floor = format!("{MINIMAL}[probe]\nmin_interval_per_destination = \"1s\"\n");
        let c = AgentConfig::parse(&low_floor, Path::new("a.toml")).unwrap();
        assert_eq!(c.evidence().confirm_spacing, Duration::from_secs(5));
        let off = format!("{MINIMAL}[probe]\nconfirm_probes = 0\nconfirm_per_destination_per_minute = 0\nanswer_probe_requests = false\nrequests_per_minute = 0\n");
        let c = AgentConfig::parse(&off, Path::new("a.toml")).unwrap();
        assert_eq!(c.evidence().confirm_probes, 0);
        assert!(!c.evidence().answer_probe_requests);
        for (text, names) in [
            (
                "[probe]\nconfirm_spacing = \"2s\"\n",
                "probe.confirm_spacing",
            ),
            ("[probe]\nconfirm_probes = 50\n", "probe.confirm_probes"),
            (
                "[probe]\nconfirm_spacing_unconnected = \"100ms\"\n",
                "probe.confirm_spacing_unconnected",
            ),
            (
                "[probe]\nconfirm_unanswered_after = \"500ms\"\n",
                "probe.confirm_unanswered_after",
            ),
            (
                "[probe]\nconfirm_per_destination_per_minute = 0\n",
                "confirm_probes = 0",
            ),
            (
                "[probe]\nrequests_per_minute = 0\n",
                "answer_probe_requests = false",
            ),
        ] {
            let err = AgentConfig::parse(&format!("{MINIMAL}{text}"), Path::new("a.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(names), "{err}");
        }
        let err = AgentConfig::parse(
            &MINIMAL.replace("[collector]\n", "[collector]\nlinger = \"10m\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("collector.linger"), "{err}");
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let err = AgentConfig::parse(
            &format!("{MINIMAL}[probe]\ntimeuot = \"2s\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("timeuot") && err.contains("line 7"), "{err}");
        let err = AgentConfig::parse(
            &format!("{MINIMAL}[probe]\ntimeout = \"2 parsecs\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("duration"), "{err}");
        let err = AgentConfig::parse(
            &format!("{MINIMAL}[spool]\ndir = \"/tmp/x\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/tmp"), "{err}");
        let err = AgentConfig::parse(
            &format!("{MINIMAL}[labels]\nprovider = \"a\\u001b\"\n"),
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("provider"), "{err}");
    }

    #[test]
    fn every_numeric_setting_out_of_its_range_is_refused_naming_the_key() {
        // (table, key = value) → the key the error must name.
        let out_of_range = [
            ("collector", "linger = \"121s\"", "collector.linger"),
            ("probe", "timeout = \"50ms\"", "probe.timeout"),
            ("probe", "timeout = \"121s\"", "probe.timeout"),
            ("probe", "concurrency = 0", "probe.concurrency"),
            ("probe", "concurrency = 1025", "probe.concurrency"),
            (
                "probe",
                "concurrency = 9223372036854775807",
                "probe.concurrency",
            ),
            ("probe", "concurrency = -1", "concurrency"),
            (
                "probe",
                "min_interval_per_destination = \"2h\"",
                "probe.min_interval_per_destination",
            ),
            ("probe", "confirm_probes = 11", "probe.confirm_probes"),
            ("probe", "confirm_probes = 4294967296", "confirm_probes"),
            (
                "probe",
                "confirm_spacing = \"61m\"",
                "probe.confirm_spacing",
            ),
            ("probe", "confirm_spacing = \"2s\"", "probe.confirm_spacing"),
            (
                "probe",
                "confirm_spacing_unconnected = \"100ms\"",
                "probe.confirm_spacing_unconnected",
            ),
            (
                "probe",
                "confirm_spacing_unconnected = \"61s\"",
                "probe.confirm_spacing_unconnected",
            ),
            (
                "probe",
                "confirm_unanswered_after = \"500ms\"",
                "probe.confirm_unanswered_after",
            ),
            (
                "probe",
                "confirm_unanswered_after = \"25h\"",
                "confirm_unanswered_after",
            ),
            (
                "probe",
                "confirm_per_destination_per_minute = 61",
                "probe.confirm_per_destination_per_minute",
            ),
            (
                "probe",
                "confirm_per_destination_per_minute = 0",
                "probe.confirm_per_destination_per_minute",
            ),
            (
                "probe",
                "requests_per_minute = 601",
                "probe.requests_per_minute",
            ),
            (
                "probe",
                "requests_per_minute = 0",
                "probe.requests_per_minute",
            ),
            ("spool", "max_bytes = 65535", "spool.max_bytes"),
            ("spool", "max_bytes = 1099511627777", "spool.max_bytes"),
            ("spool", "max_bytes = -5", "max_bytes"),
        ];
        for (table, setting, key) in out_of_range {
            let text = if table == "collector" {
                MINIMAL.replace("[collector]\n", &format!("[collector]\n{setting}\n"))
            } else {
                format!("{MINIMAL}[{table}]\n{setting}\n")
            };
            let err = AgentConfig::parse(&text, Path::new("a.toml"))
                .map(|_| ())
                .expect_err(setting)
                .to_string();
            assert!(err.contains(key), "{setting}: {err}");
        }
        let target = |interval: &str| {
            format!("{MINIMAL}[[targets]]\nhost = \"mx.example\"\ninterval = \"{interval}\"\n")
        };
        for interval in ["500ms", "25h"] {
            let err = AgentConfig::parse(&target(interval), Path::new("a.toml"))
                .map(|_| ())
                .expect_err(interval)
                .to_string();
            assert!(err.contains("interval"), "{interval}: {err}");
        }
        // Each range's ends are accepted.
        let at_the_ends = [
            "[probe]\ntimeout = \"100ms\"\nconcurrency = 1\nconfirm_probes = 0\nconfirm_per_destination_per_minute = 0\nanswer_probe_requests = false\nrequests_per_minute = 0\nmin_interval_per_destination = \"1ms\"\nconfirm_spacing_unconnected = \"500ms\"\nconfirm_unanswered_after = \"1s\"\n[spool]\nmax_bytes = 65536\n",
            "[probe]\ntimeout = \"120s\"\nconcurrency = 1024\nconfirm_probes = 10\nconfirm_per_destination_per_minute = 60\nrequests_per_minute = 600\nmin_interval_per_destination = \"1h\"\nconfirm_spacing = \"1h\"\nconfirm_spacing_unconnected = \"60s\"\nconfirm_unanswered_after = \"24h\"\n[spool]\nmax_bytes = 1099511627776\n",
        ];
        for tail in at_the_ends {
            let text = format!("{MINIMAL}{tail}");
            if let Err(e) = AgentConfig::parse(&text, Path::new("a.toml")) {
                panic!("{tail}: {e}");
            }
        }
        assert!(AgentConfig::parse(&target("24h"), Path::new("a.toml")).is_ok());
        assert!(AgentConfig::parse(
            &MINIMAL.replace("[collector]\n", "[collector]\nlinger = \"120s\"\n"),
            Path::new("a.toml")
        )
        .is_ok());
    }

    #[test]
    fn a_target_can_name_a_mail_provider_preset() {
        let text = format!(
            "{MINIMAL}[[targets]]\nprovider = \"zeptomail\"\ninterval = \"30s\"\n[[targets]]\nhost = \"mx.lab.test\"\nports = [25]\n"
        );
        let c = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        let hosts: Vec<(&str, &[u16])> = c
            .targets
            .iter()
            .map(|t| (t.host.as_str(), t.ports.as_slice()))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("smtp.zeptomail.com", &[587, 465][..]),
                ("api.zeptomail.com", &[443][..]),
                ("mx.lab.test", &[25][..]),
            ]
        );
        assert!(c.targets[..2]
            .iter()
            .all(|t| t.interval == Duration::from_secs(30)));
        use crate::probe::Session;
        assert!(c.preset_sessions.contains(&(
            "smtp.zeptomail.com".into(),
            465,
            Session::ImplicitTls
        )));
        assert!(c
            .preset_sessions
            .contains(&("smtp.zeptomail.com".into(), 587, Session::Smtp)));
    }

    #[test]
    fn a_bad_provider_target_is_named() {
        for (target, wanted) in [
            (
                "provider = \"zeptomial\"",
                "targets: provider \"zeptomial\": no mail-provider preset \"zeptomial\"",
            ),
            (
                "provider = \"ses\"",
                "targets: provider \"ses\": ses needs a region",
            ),
            (
                "provider = \"resend\"\nports = [587]",
                "targets: provider \"resend\": ports come from the preset",
            ),
            (
                "provider = \"resend\"\nhost = \"smtp.resend.com\"",
                "give host or provider, not both",
            ),
            ("interval = \"30s\"", "targets: each needs host"),
        ] {
            let text = format!("{MINIMAL}[[targets]]\n{target}\n");
            let e = AgentConfig::parse(&text, Path::new("a.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(wanted), "{wanted:?} not in {e}");
        }
    }

    #[test]
    fn a_users_presets_file_serves_the_targets_and_its_bad_field_is_named() {
        let dir = std::env::temp_dir().join(format!("ew-presets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mail-providers.toml");
        let preset = "[[provider]]\nname = \"relay\"\ntitle = \"Our relay\"\nsmtp_host = \"relay.corp.example\"\napi_host = \"api.corp.example\"\nports = [{ port = 2465, tls = \"implicit\" }]\nsource = \"https://wiki.corp.example/relay\"\nread = \"2026-12-07\"\n";
        std::fs::write(&file, preset).unwrap();
        let text = format!(
            "presets = {:?}\n{MINIMAL}[[targets]]\nprovider = \"relay\"\n",
            file.display().to_string()
        );
        let c = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(c.targets[0].host, "relay.corp.example");
        assert_eq!(
            c.preset_sessions,
            vec![(
                "relay.corp.example".into(),
                2465,
                crate::probe::Session::ImplicitTls
            )]
        );
        std::fs::write(&file, preset.replace("\"implicit\"", "\"ssl\"")).unwrap();
        let e = AgentConfig::parse(&text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.starts_with("config a.toml: presets "), "{e}");
        assert!(e.contains("mail-providers.toml"), "{e}");
        assert!(
            e.contains("unknown variant `ssl`, expected `starttls` or `implicit`"),
            "{e}"
        );
    }
}
