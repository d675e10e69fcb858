//! The `check` command line: what to probe and how, and the checks of it that need no network.
//!
//! A new option is one field in [`CheckArgs`]; what it means for the probes is applied in
//! [`CheckArgs::probe_options`] or in the runner.

use crate::probe::smtp::quoted;
use crate::probe::ProbeOptions;
use egresswatch_wire::{Family, Level};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The ports people ask about, and 443 as the control.
pub const DEFAULT_PORTS: [u16; 5] = [25, 465, 587, 2525, 443];

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Hosts to probe (names or addresses).
    #[arg(required_unless_present = "provider", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Instead of HOSTs, a mail provider's preset: NAME or NAME:REGION. Probes each of its SMTP
    /// ports at level tls and its HTTPS API on 443; `--provider list` prints the presets (with
    /// --json, as one JSON document).
    #[arg(long, value_name = "NAME[:REGION]", conflicts_with_all = ["hosts", "ports", "mx", "level"])]
    pub provider: Option<String>,
    /// A file of mail-provider presets that adds to the built-in ones or replaces one by name.
    #[arg(long, value_name = "PATH", requires = "provider")]
    pub presets: Option<PathBuf>,
    /// Port to probe; repeat for several. Default: 25, 465, 587, 2525 and 443 (control).
    #[arg(long = "port", short = 'p', value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Deadline of each probe, e.g. 5s, 1500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// How far to go: connect, banner or tls.
    #[arg(long, default_value = "tls", value_name = "L")]
    pub level: Level,
    /// Extra trust roots (PEM) for private relays, added to the system's.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Source address to send from (multi-homed hosts); repeat for one per family.
    #[arg(long, value_name = "ADDR")]
    pub source: Vec<std::net::IpAddr>,
    /// Network interface to send from (SO_BINDTODEVICE).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// Only this family: ipv4 or ipv6 (default: both, each probed on its own).
    #[arg(long, value_name = "F")]
    pub family: Option<Family>,
    /// Print one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Treat each HOST as a mail domain: probe its MX exchangers, lowest preference first (the
    /// domain itself when it has no MX records).
    #[arg(long)]
    pub mx: bool,
}

impl CheckArgs {
    /// The ports asked for, each once, or the default set.
    pub fn ports(&self) -> Vec<u16> {
        if self.ports.is_empty() {
            DEFAULT_PORTS.to_vec()
        } else {
            without_repeats(&self.ports)
        }
    }

    /// The hosts asked for, each once, in the order given.
    pub fn hosts(&self) -> Vec<String> {
        without_repeats(&self.hosts)
    }

    /// The families to probe, each on its own.
    pub fn families(&self) -> Vec<Family> {
        match self.family {
            Some(f) => vec![f],
            None => vec![Family::Ipv4, Family::Ipv6],
        }
    }

    /// The probe options these arguments ask for, with `roots` as the trust store.
    pub fn probe_options(&self, roots: Arc<rustls::RootCertStore>) -> ProbeOptions {
        let mut options = ProbeOptions::new(self.timeout, roots);
        for source in &self.source {
            match source {
                std::net::IpAddr::V4(v4) => options.source_v4 = Some(*v4),
                std::net::IpAddr::V6(v6) => options.source_v6 = Some(*v6),
            }
        }
        options.interface = self.interface.clone();
        options
    }
}

/// Parses "5s", "1500ms", "2m", or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {} (e.g. 5s, 500ms)", quoted(text)))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {} (use ms, s, m or h)",
                quoted(text)
            ))
        }
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("duration {} out of range", quoted(text)));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How [`check_binding`] names the settings it checks: `check`'s flags, or `run`'s config keys.
#[derive(Debug, Clone, Copy)]
pub struct BindingNames {
    pub source: &'static str,
    pub interface: &'static str,
}

pub const CHECK_FLAGS: BindingNames = BindingNames {
    source: "--source",
    interface: "--interface",
};

pub const RUN_KEYS: BindingNames = BindingNames {
    source: "probe.source",
    interface: "probe.interface",
};

/// A source address or interface that this host does not have is the user's mistake, not a
/// network outcome: say so before probing rather than report every probe `unreachable`.
pub fn check_binding(
    sources: &[std::net::IpAddr],
    interface: Option<&str>,
    names: BindingNames,
) -> Result<(), String> {
    let mut families = BTreeSet::new();
    for source in sources {
        if !families.insert(source.is_ipv6()) {
            return Err(format!(
                "{} given twice for {}; give at most one per family",
                names.source,
                if source.is_ipv6() { "IPv6" } else { "IPv4" }
            ));
        }
        // Binding sends nothing; it fails when the address is not one of this host's.
        let bound = socket2::Socket::new(
            socket2::Domain::for_address(std::net::SocketAddr::new(*source, 0)),
            socket2::Type::STREAM,
            None,
        )
        .and_then(|s| s.bind(&std::net::SocketAddr::new(*source, 0).into()));
        if let Err(e) = bound {
            return Err(format!(
                "{} {source}: not usable on this host ({e})",
                names.source
            ));
        }
    }
    if let Some(name) = interface {
        let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !valid || !std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(format!(
                "{} {}: no such network interface",
                names.interface,
                quoted(name)
            ));
        }
    }
    Ok(())
}

/// The items in their first-seen order, each once.
fn without_repeats<T: Clone + PartialEq>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }
}
