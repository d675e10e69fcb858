//! Mail-provider presets: how a transactional provider takes mail over SMTP (its host, and per
//! port whether TLS starts with STARTTLS or from the first byte) and its HTTPS API host, the way
//! out when SMTP is filtered. The presets are data (`agent/presets/mail-providers.toml`, embedded
//! in the binary), each with the provider's own page it was checked against and the day it was
//! read; a user's file in the same shape adds providers or replaces one by name.
//!
//! Everything here is plain parsing and lookup, testable without sockets: `check --provider`
//! turns a [`ResolvedPreset`] into probes.

use crate::error::AgentError;
use crate::probe::smtp::quoted;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The presets shipped with the agent.
pub const BUILTIN_TEXT: &str = include_str!("../presets/mail-providers.toml");
/// Where the shipped presets come from, as errors name it.
pub const BUILTIN_NAME: &str = "agent/presets/mail-providers.toml (built in)";

/// How TLS starts on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsStart {
    /// Plain SMTP first, then STARTTLS (25, 587, 2525, …).
    Starttls,
    /// TLS from the first byte, the greeting inside it (465, "SMTPS", "SSL").
    Implicit,
}

impl std::fmt::Display for TlsStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsStart::Starttls => "STARTTLS",
            TlsStart::Implicit => "implicit TLS",
        })
    }
}

/// One SMTP port of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetPort {
    pub port: u16,
    pub tls: TlsStart,
    /// False where the provider's page does not state this port (said in `check --provider list`).
    #[serde(default = "yes")]
    pub confirmed: bool,
}

fn yes() -> bool {
    true
}

/// Hosts that replace a provider's defaults in one region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionHosts {
    pub smtp_host: Option<String>,
    pub api_host: Option<String>,
}

/// One provider, as the data file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub title: String,
    /// May contain `{region}`.
    pub smtp_host: String,
    /// May contain `{region}`.
    pub api_host: String,
    pub ports: Vec<PresetPort>,
    /// The provider's own page the SMTP settings were checked against.
    pub source: String,
    /// Where the API host is documented, when that is another page.
    #[serde(default)]
    pub api_source: Option<String>,
    /// The day `source` was read, YYYY-MM-DD.
    pub read: String,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub default_region: Option<String>,
    #[serde(default)]
    pub region_hosts: BTreeMap<String, RegionHosts>,
    /// Fields the sources did not confirm (e.g. `smtp_host`), explained in `note`.
    #[serde(default)]
    pub unconfirmed: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    #[serde(default)]
    provider: Vec<Preset>,
}

/// A preset with its region applied: exactly what to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPreset {
    pub name: String,
    pub title: String,
    pub region: Option<String>,
    pub smtp_host: String,
    pub api_host: String,
    pub ports: Vec<PresetPort>,
    pub source: String,
}

impl ResolvedPreset {
    /// `name` or `name:region`, as the user would ask for it.
    pub fn label(&self) -> String {
        match &self.region {
            Some(region) => format!("{}:{region}", self.name),
            None => self.name.clone(),
        }
    }

    /// The ports spoken to with implicit TLS.
    pub fn implicit_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|p| p.tls == TlsStart::Implicit)
            .map(|p| p.port)
            .collect()
    }

    /// The probe sessions of the preset's SMTP ports on its SMTP host, for a schedule whose
    /// probe options serve many hosts ([`crate::probe::ProbeOptions::host_sessions`]).
    pub fn sessions(&self) -> Vec<(String, u16, crate::probe::Session)> {
        self.ports
            .iter()
            .map(|p| {
                let session = match p.tls {
                    TlsStart::Starttls => crate::probe::Session::Smtp,
                    TlsStart::Implicit => crate::probe::Session::ImplicitTls,
                };
                (self.smtp_host.clone(), p.port, session)
            })
            .collect()
    }

    /// How TLS starts on `port`, when it is one of the preset's.
    pub fn tls_of(&self, port: u16) -> Option<TlsStart> {
        self.ports.iter().find(|p| p.port == port).map(|p| p.tls)
    }
}

/// The presets in effect: the built-in ones, then a user's, which win by name.
#[derive(Debug, Clone)]
pub struct Presets {
    /// In the order shown by `check --provider list`: built-in order, then new user entries.
    pub providers: Vec<Preset>,
    /// Names that a user's file supplied (added or replaced).
    pub from_user: Vec<String>,
}

impl Presets {
    /// The built-in presets. They are tested to parse; should they not, the error says so.
    pub fn builtin() -> Result<Presets, AgentError> {
        Ok(Presets {
            providers: parse(BUILTIN_TEXT, BUILTIN_NAME)?,
            from_user: Vec::new(),
        })
    }

    /// The built-in presets with a user's file (text read from `origin`) applied over them.
    pub fn with_user(text: &str, origin: &str) -> Result<Presets, AgentError> {
        let mut presets = Presets::builtin()?;
        for preset in parse(text, origin)? {
            presets.from_user.push(preset.name.clone());
            match presets.providers.iter_mut().find(|p| p.name == preset.name) {
                Some(existing) => *existing = preset,
                None => presets.providers.push(preset),
            }
        }
        Ok(presets)
    }

    /// The built-in presets, with the file at `path` over them when one is given.
    pub fn load(path: Option<&std::path::Path>) -> Result<Presets, AgentError> {
        match path {
            None => Presets::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?;
                Presets::with_user(&text, &path.display().to_string())
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// `NAME` or `NAME:REGION` to the hosts and ports to probe, or a message for the user.
    pub fn resolve(&self, asked: &str) -> Result<ResolvedPreset, String> {
        let (name, region) = match asked.split_once(':') {
            Some((name, region)) => (name, Some(region)),
            None => (asked, None),
        };
        let Some(preset) = self.get(name) else {
            let names: Vec<&str> = self.providers.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "no mail-provider preset {} (presets: {}; `check --provider list` shows them)",
                quoted(name),
                names.join(", ")
            ));
        };
        let region = match (region, &preset.default_region) {
            (Some(region), _) => Some(region.to_string()),
            (None, Some(default)) => Some(default.clone()),
            (None, None) if preset.regions.is_empty() => None,
            (None, None) => {
                return Err(format!(
                    "{} needs a region: {}:REGION, one of {}",
                    preset.name,
                    preset.name,
                    preset.regions.join(", ")
                ))
            }
        };
        if let Some(region) = &region {
            if !preset.regions.iter().any(|r| r == region) {
                return Err(if preset.regions.is_empty() {
                    format!("{} has no regions; ask for {}", preset.name, preset.name)
                } else {
                    format!(
                        "{} has no region {}; its regions: {}",
                        preset.name,
                        quoted(region),
                        preset.regions.join(", ")
                    )
                });
            }
        }
        let hosts = region.as_ref().and_then(|r| preset.region_hosts.get(r));
        let fill = |host: &str| match &region {
            Some(region) => host.replace("{region}", region),
            None => host.to_string(),
        };
        Ok(ResolvedPreset {
            name: preset.name.clone(),
            title: preset.title.clone(),
            smtp_host: fill(
                hosts
                    .and_then(|h| h.smtp_host.as_deref())
                    .unwrap_or(&preset.smtp_host),
            ),
            api_host: fill(
                hosts
                    .and_then(|h| h.api_host.as_deref())
                    .unwrap_or(&preset.api_host),
            ),
            region,
            ports: preset.ports.clone(),
            source: preset.source.clone(),
        })
    }
}

/// Parses and checks a presets file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Preset>, AgentError> {
    let bad = |reason: String| AgentError::Presets {
        origin: origin.to_string(),
        reason,
    };
    let file: PresetFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut seen: Vec<&str> = Vec::new();
    for (i, preset) in file.provider.iter().enumerate() {
        let at = format!("provider[{i}] ({})", quoted(&preset.name));
        validate(preset).map_err(|reason| bad(format!("{at}: {reason}")))?;
        if seen.iter().any(|s| s.eq_ignore_ascii_case(&preset.name)) {
            return Err(bad(format!("{at}: name: given twice in this file")));
        }
        seen.push(&preset.name);
    }
    Ok(file.provider)
}

/// The checks serde cannot make; the message starts with the field it is about.
fn validate(preset: &Preset) -> Result<(), String> {
    let name_ok = !preset.name.is_empty()
        && preset.name.len() <= 40
        && preset
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err("name: use 1-40 of a-z, 0-9 and '-'".into());
    }
    if preset.title.trim().is_empty() {
        return Err("title: empty".into());
    }
    let templated = |host: &str| host.contains("{region}");
    for (field, host) in [
        ("smtp_host", &preset.smtp_host),
        ("api_host", &preset.api_host),
    ] {
        check_host(&host.replace("{region}", "region"))
            .map_err(|why| format!("{field}: {} {why}", quoted(host)))?;
        if templated(host) && preset.regions.is_empty() {
            return Err(format!(
                "{field}: {} names {{region}} but the provider has no regions",
                quoted(host)
            ));
        }
    }
    if preset.ports.is_empty() {
        return Err("ports: empty; give at least one { port = N, tls = \"starttls\" }".into());
    }
    for (i, port) in preset.ports.iter().enumerate() {
        if port.port == 0 {
            return Err(format!("ports[{i}].port: 0 is not a port"));
        }
        if preset.ports[..i].iter().any(|p| p.port == port.port) {
            return Err(format!("ports[{i}].port: {} given twice", port.port));
        }
    }
    for (field, url) in [
        ("source", Some(&preset.source)),
        ("api_source", preset.api_source.as_ref()),
    ] {
        if let Some(url) = url {
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                return Err(format!("{field}: {} is not an https:// link", quoted(url)));
            }
        }
    }
    if !is_date(&preset.read) {
        return Err(format!(
            "read: {} is not a date (YYYY-MM-DD)",
            quoted(&preset.read)
        ));
    }
    for region in &preset.regions {
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "regions: {} is not a region name (a-z, 0-9, '-')",
                quoted(region)
            ));
        }
    }
    if let Some(default) = &preset.default_region {
        if !preset.regions.contains(default) {
            return Err(format!(
                "default_region: {} is not one of regions",
                quoted(default)
            ));
        }
    }
    for (region, hosts) in &preset.region_hosts {
        if !preset.regions.contains(region) {
            return Err(format!(
                "region_hosts.{region}: {} is not one of regions",
                quoted(region)
            ));
        }
        for (field, host) in [
            ("smtp_host", &hosts.smtp_host),
            ("api_host", &hosts.api_host),
        ] {
            if let Some(host) = host {
                check_host(&host.replace("{region}", "region")).map_err(|why| {
                    format!("region_hosts.{region}.{field}: {} {why}", quoted(host))
                })?;
            }
        }
    }
    Ok(())
}

/// A DNS name a probe can resolve: letters, digits, '-' and '.', labels of 1-63.
fn check_host(host: &str) -> Result<(), &'static str> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err("is not a host name")
    }
}

fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let numeric = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !numeric(parts[0], 4) || !numeric(parts[1], 2) || !numeric(parts[2], 2) {
        return false;
    }
    let month: u8 = parts[1].parse().unwrap_or(0);
    let day: u8 = parts[2].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// `check --provider list`: one block per provider, with its sources.
pub fn render_list(presets: &Presets) -> String {
    let mut out = String::new();
    for p in &presets.providers {
        let user = if presets.from_user.contains(&p.name) {
            " [from --presets]"
        } else {
            ""
        };
        out.push_str(&format!("{}  {}{user}\n", p.name, p.title));
        let regions = if p.regions.is_empty() {
            String::new()
        } else {
            let default = p
                .default_region
                .as_deref()
                .map(|d| format!(", default {d}"))
                .unwrap_or_else(|| ", one must be given".into());
            format!(" (regions: {}{default})", p.regions.join(", "))
        };
        out.push_str(&format!("  smtp   {}{regions}\n", p.smtp_host));
        for (region, hosts) in &p.region_hosts {
            if let Some(host) = &hosts.smtp_host {
                out.push_str(&format!("         {host} ({region})\n"));
            }
        }
        let ports: Vec<String> = p
            .ports
            .iter()
            .map(|port| {
                let mark = if port.confirmed { "" } else { ", unconfirmed" };
                format!("{} {}{mark}", port.port, port.tls)
            })
            .collect();
        out.push_str(&format!("  ports  {}\n", ports.join("; ")));
        out.push_str(&format!("  api    {} (443, HTTPS)\n", p.api_host));
        for (region, hosts) in &p.region_hosts {
            if let Some(host) = &hosts.api_host {
                out.push_str(&format!("         {host} ({region})\n"));
            }
        }
        out.push_str(&format!("  source {} (read {})\n", p.source, p.read));
        if let Some(api_source) = &p.api_source {
            out.push_str(&format!("         {api_source}\n"));
        }
        if !p.unconfirmed.is_empty() {
            out.push_str(&format!("  unconfirmed: {}\n", p.unconfirmed.join(", ")));
        }
        if let Some(note) = &p.note {
            out.push_str(&format!("  note   {note}\n"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_preset_parses_and_names_its_sources() {
        let presets = Presets::builtin().expect("the built-in presets parse");
        let names: Vec<&str> = presets.providers.iter().map(|p| p.name.as_str()).collect();
        for wanted in [
            "sendgrid",
            "postmark",
            "ses",
            "mailgun",
            "zeptomail",
            "resend",
            "brevo",
            "smtp2go",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        for p in &presets.providers {
            assert!(p.source.starts_with("https://"), "{}: {}", p.name, p.source);
            assert!(is_date(&p.read), "{}: {}", p.name, p.read);
            assert!(!p.ports.is_empty(), "{}", p.name);
            // Every unconfirmed field is explained.
            if !p.unconfirmed.is_empty() || p.ports.iter().any(|port| !port.confirmed) {
                assert!(p.note.is_some(), "{}: unconfirmed without a note", p.name);
            }
            // Every region resolves.
            if p.regions.is_empty() {
                presets.resolve(&p.name).unwrap();
            }
            for region in &p.regions {
                let r = presets.resolve(&format!("{}:{region}", p.name)).unwrap();
                assert!(!r.smtp_host.contains('{'), "{r:?}");
                assert!(!r.api_host.contains('{'), "{r:?}");
            }
        }
    }

    #[test]
    fn regions_pick_hosts() {
        let presets = Presets::builtin().unwrap();
        let eu = presets.resolve("mailgun:eu").unwrap();
        assert_eq!(eu.smtp_host, "smtp.eu.mailgun.org");
        assert_eq!(eu.api_host, "api.eu.mailgun.net");
        let us = presets.resolve("mailgun").unwrap();
        assert_eq!(us.region.as_deref(), Some("us"));
        assert_eq!(us.smtp_host, "smtp.mailgun.org");
        let ses = presets.resolve("ses:eu-west-1").unwrap();
        assert_eq!(ses.smtp_host, "email-smtp.eu-west-1.amazonaws.com");
        assert_eq!(ses.api_host, "email.eu-west-1.amazonaws.com");
        assert_eq!(ses.label(), "ses:eu-west-1");
        let zepto = presets.resolve("ZeptoMail").unwrap();
        assert_eq!(zepto.implicit_ports(), vec![465]);
        assert_eq!(zepto.tls_of(587), Some(TlsStart::Starttls));
        assert_eq!(zepto.region, None);
    }

    #[test]
    fn unknown_names_and_regions_are_clear_errors() {
        let presets = Presets::builtin().unwrap();
        let e = presets.resolve("sendgird").unwrap_err();
        assert!(e.contains("no mail-provider preset \"sendgird\""), "{e}");
        assert!(e.contains("sendgrid"), "{e}");
        let e = presets.resolve("ses").unwrap_err();
        assert!(
            e.starts_with("ses needs a region: ses:REGION, one of us-east-1"),
            "{e}"
        );
        let e = presets.resolve("ses:mars-1").unwrap_err();
        assert!(e.contains("ses has no region \"mars-1\""), "{e}");
        let e = presets.resolve("postmark:eu").unwrap_err();
        assert!(e.contains("postmark has no regions"), "{e}");
    }

    #[test]
    fn a_presets_sessions_steer_the_probe_per_host() {
        use crate::probe::{ProbeOptions, Session};
        let presets = Presets::builtin().unwrap();
        let smtp2go = presets.resolve("smtp2go").unwrap();
        let mut options = ProbeOptions::new(
            std::time::Duration::from_secs(1),
            std::sync::Arc::new(rustls::RootCertStore::empty()),
        );
        options.host_sessions = std::sync::Arc::new(smtp2go.sessions());
        // SMTP2GO's 443 is SMTP with implicit TLS on its SMTP host …
        assert_eq!(
            options.session_of("MAIL.smtp2go.com", 443),
            Session::ImplicitTls
        );
        assert_eq!(
            options.session_of("mail.smtp2go.com", 8465),
            Session::ImplicitTls
        );
        assert_eq!(options.session_of("mail.smtp2go.com", 80), Session::Smtp);
        // … and every other host keeps the port defaults: 443 the TLS control, 465 implicit.
        assert_eq!(options.session_of("api.smtp2go.com", 443), Session::TlsOnly);
        assert_eq!(options.session_of("mx.example", 465), Session::ImplicitTls);
        assert_eq!(options.session_of("mx.example", 8465), Session::Smtp);
    }

    const USER: &str = r#"
[[provider]]
name = "acme"
title = "Acme Mail"
smtp_host = "smtp.acme.example"
api_host = "api.acme.example"
ports = [{ port = 587, tls = "starttls" }, { port = 465, tls = "implicit", confirmed = false }]
source = "https://acme.example/docs/smtp"
read = "2026-12-07"
note = "465 is not in the docs"

[[provider]]
name = "postmark"
title = "Postmark via our relay"
smtp_host = "relay.corp.example"
api_host = "api.postmarkapp.com"
ports = [{ port = 2525, tls = "starttls" }]
source = "https://wiki.corp.example/postmark"
read = "2026-11-30"
"#;

    #[test]
    fn a_user_file_adds_and_replaces_by_name() {
        let presets = Presets::with_user(USER, "mine.toml").unwrap();
        let acme = presets.resolve("acme").unwrap();
        assert_eq!(acme.smtp_host, "smtp.acme.example");
        assert_eq!(acme.implicit_ports(), vec![465]);
        let postmark = presets.resolve("postmark").unwrap();
        assert_eq!(postmark.smtp_host, "relay.corp.example");
        assert_eq!(postmark.ports.len(), 1);
        // Replaced in place, added at the end; the rest untouched.
        assert_eq!(presets.providers[1].name, "postmark");
        assert_eq!(presets.providers.last().unwrap().name, "acme");
        assert_eq!(presets.from_user, vec!["acme", "postmark"]);
        assert!(presets.resolve("sendgrid").is_ok());
        let list = render_list(&presets);
        assert!(list.contains("acme  Acme Mail [from --presets]"), "{list}");
        assert!(list.contains("465 implicit TLS, unconfirmed"), "{list}");
        assert!(
            list.contains("source https://acme.example/docs/smtp (read 2026-12-07)"),
            "{list}"
        );
    }

    /// A user's preset with one bad field: the error names the file, the provider and the field.
    #[test]
    fn a_bad_field_in_a_user_file_is_named() {
        let cases: [(&str, &str, &str); 10] = [
            ("tls = \"starttls\" }, { port = 465, tls = \"implicit\", confirmed = false }",
             "tls = \"startls\" }, { port = 465, tls = \"implicit\", confirmed = false }",
             "unknown variant `startls`, expected `starttls` or `implicit`"),
            ("smtp_host = \"smtp.acme.example\"", "smtp_host = \"smtp acme\"",
             "provider[0] (\"acme\"): smtp_host: \"smtp acme\" is not a host name"),
            ("read = \"2026-12-07\"", "read = \"last week\"",
             "provider[0] (\"acme\"): read: \"last week\" is not a date (YYYY-MM-DD)"),
            ("source = \"https://acme.example/docs/smtp\"", "source = \"acme docs\"",
             "provider[0] (\"acme\"): source: \"acme docs\" is not an https:// link"),
            ("name = \"acme\"", "name = \"Acme Mail\"",
             "provider[0] (\"Acme Mail\"): name: use 1-40 of a-z, 0-9 and '-'"),
            ("ports = [{ port = 587", "ports = [{ port = 0", "provider[0] (\"acme\"): ports[0].port: 0 is not a port"),
            ("{ port = 465, tls", "{ port = 587, tls", "provider[0] (\"acme\"): ports[1].port: 587 given twice"),
            ("note = \"465 is not in the docs\"", "note = \"x\"\nsmtp_port = 25", "unknown field `smtp_port`"),
            ("api_host = \"api.acme.example\"", "api_host = \"api.{region}.acme.example\"",
             "provider[0] (\"acme\"): api_host: \"api.{region}.acme.example\" names {region} but the provider has no regions"),
            ("read = \"2026-12-07\"", "read = \"2026-12-07\"\ndefault_region = \"eu\"",
             "provider[0] (\"acme\"): default_region: \"eu\" is not one of regions"),
        ];
        for (from, to, wanted) in cases {
            assert!(USER.contains(from), "test case does not apply: {from}");
            let text = USER.replacen(from, to, 1);
            let e = Presets::with_user(&text, "/etc/egresswatch/mail-providers.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("presets /etc/egresswatch/mail-providers.toml: "),
                "{e}"
            );
            assert!(e.contains(wanted), "{wanted:?} not in: {e}");
        }
    }
}
