//! `check --provider NAME[:REGION]`: can this host send through that mail provider, over which
//! port, and if not, does its HTTPS API answer? Every port of the preset is probed at level tls
//! over both families (each family on its own), reading EHLO before and inside TLS; the API host
//! gets a TLS handshake on 443 with its certificate verified. Nothing else is sent: no
//! credentials, no mail.
//!
//! The reading is [`super::provider_verdict`]; this file runs the probes and renders them.

use super::provider_verdict::{self, ApiState, ProviderClass, ProviderReading, SmtpProbe};
use super::{json::JsonRow, table};
use crate::presets::{Presets, ResolvedPreset, TlsStart};
use crate::probe::smtp::Capabilities;
use crate::probe::{self, ProbeOptions, ProbeTarget, Resolution, PORT_HTTPS};
use egresswatch_wire::{Family, Level, ProbeResult};
use serde::Serialize;
use std::collections::HashMap;

/// Probes the preset's SMTP ports and its API host, every family at once.
pub async fn run(
    preset: &ResolvedPreset,
    families: &[Family],
    options: &ProbeOptions,
) -> (Vec<SmtpProbe>, Vec<ProbeResult>) {
    // SMTP: the preset says which ports are implicit TLS; none is a bare TLS control, so a
    // provider's SMTP on 443 (SMTP2GO) is spoken to as SMTP.
    let mut smtp_options = options.clone();
    smtp_options.implicit_tls_ports = preset.implicit_ports();
    smtp_options.tls_only_ports = Vec::new();
    smtp_options.read_capabilities = true;
    let mut api_options = options.clone();
    api_options.implicit_tls_ports = Vec::new();
    api_options.tls_only_ports = vec![PORT_HTTPS];

    let hosts = [preset.smtp_host.clone(), preset.api_host.clone()];
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts.iter().collect::<std::collections::BTreeSet<_>>() {
        for family in families {
            let (host, family, options) = (host.clone(), *family, options.clone());
            lookups.spawn(async move {
                let resolution = probe::resolve_host(&host, family, &options).await;
                (host, family, resolution)
            });
        }
    }
    let mut resolved: HashMap<(String, Family), Resolution> = HashMap::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((host, family, resolution)) = joined {
            resolved.insert((host, family), resolution);
        }
    }

    let mut probes = tokio::task::JoinSet::new();
    let mut index = 0usize;
    let mut spawn =
        |host: &str, port: u16, family: Family, options: &ProbeOptions, tls: Option<TlsStart>| {
            let Some(resolution) = resolved.get(&(host.to_string(), family)).cloned() else {
                return;
            };
            let target = ProbeTarget {
                host: host.to_string(),
                port,
                family,
                level: Level::Tls,
            };
            let options = options.clone();
            let at = index;
            index += 1;
            probes.spawn(async move {
                let (result, facts) =
                    probe::probe_resolved_with_facts(&target, &resolution, &options).await;
                (at, tls, result, facts)
            });
        };
    for port in &preset.ports {
        for family in families {
            spawn(
                &preset.smtp_host,
                port.port,
                *family,
                &smtp_options,
                Some(port.tls),
            );
        }
    }
    for family in families {
        spawn(&preset.api_host, PORT_HTTPS, *family, &api_options, None);
    }
    let mut done = Vec::with_capacity(index);
    while let Some(joined) = probes.join_next().await {
        if let Ok(one) = joined {
            done.push(one);
        }
    }
    done.sort_by_key(|d| d.0);
    let mut smtp = Vec::new();
    let mut api = Vec::new();
    for (_, tls, result, facts) in done {
        match tls {
            Some(tls) => smtp.push(SmtpProbe { result, tls, facts }),
            None => api.push(result),
        }
    }
    (smtp, api)
}

/// `check --provider --json`: one object (the contract in docs/check.md).
#[derive(Debug, Serialize)]
pub struct JsonProviderCheck {
    pub provider: String,
    pub title: String,
    pub region: Option<String>,
    pub source: String,
    pub smtp_host: String,
    pub api_host: String,
    /// `smtp_works`, `api_only`, `neither` or `could_not_run`.
    pub verdict: ProviderClass,
    pub exit_code: u8,
    pub recommended_port: Option<u16>,
    /// `starttls` or `implicit`, for `recommended_port`.
    pub recommended_tls: Option<TlsStart>,
    pub auth_only_after_tls: Option<bool>,
    /// `reachable`, `intercepted` or `unreachable`.
    pub api: ApiState,
    pub api_reachable: bool,
    pub sentences: Vec<String>,
    pub smtp: Vec<JsonSmtpRow>,
    pub api_probes: Vec<JsonRow>,
}

/// One SMTP probe: the `check --json` row, how TLS starts there, and what EHLO offered.
#[derive(Debug, Serialize)]
pub struct JsonSmtpRow {
    #[serde(flatten)]
    pub row: JsonRow,
    pub tls_start: TlsStart,
    pub ehlo_before_tls: Option<Capabilities>,
    pub ehlo_after_tls: Option<Capabilities>,
}

pub fn json(
    preset: &ResolvedPreset,
    reading: &ProviderReading,
    smtp: &[SmtpProbe],
    api: &[ProbeResult],
) -> JsonProviderCheck {
    JsonProviderCheck {
        provider: preset.name.clone(),
        title: preset.title.clone(),
        region: preset.region.clone(),
        source: preset.source.clone(),
        smtp_host: preset.smtp_host.clone(),
        api_host: preset.api_host.clone(),
        verdict: reading.class,
        exit_code: reading.class.exit_status(),
        recommended_port: reading.recommended.map(|r| r.0),
        recommended_tls: reading.recommended.map(|r| r.1),
        auth_only_after_tls: reading.auth_only_after_tls,
        api: reading.api,
        api_reachable: reading.api == ApiState::Reachable,
        sentences: reading.sentences.clone(),
        smtp: smtp
            .iter()
            .map(|p| JsonSmtpRow {
                row: JsonRow::from(&p.result),
                tls_start: p.tls,
                ehlo_before_tls: p.facts.before_tls.clone(),
                ehlo_after_tls: p.facts.after_tls.clone(),
            })
            .collect(),
        api_probes: api.iter().map(JsonRow::from).collect(),
    }
}

/// The output for people: what was probed, the table, what EHLO offered, the verdict.
pub fn render_text(
    preset: &ResolvedPreset,
    reading: &ProviderReading,
    smtp: &[SmtpProbe],
    api: &[ProbeResult],
) -> String {
    let ports: Vec<String> = preset
        .ports
        .iter()
        .map(|p| format!("{} {}", p.port, p.tls))
        .collect();
    let mut out = format!(
        "{}, preset {}: SMTP {} ({}), HTTPS API {}\nsource: {}\n\n",
        preset.title,
        preset.label(),
        preset.smtp_host,
        ports.join(", "),
        preset.api_host,
        preset.source
    );
    let rows: Vec<ProbeResult> = smtp
        .iter()
        .map(|p| p.result.clone())
        .chain(api.iter().cloned())
        .collect();
    out.push_str(&table::render_table(&rows));
    let ehlo: Vec<String> = smtp
        .iter()
        .filter(|p| p.facts.before_tls.is_some() || p.facts.after_tls.is_some())
        .map(|p| {
            let said = |c: &Option<Capabilities>| match c {
                None => "-".to_string(),
                Some(c) => capabilities_words(c),
            };
            format!(
                "{} {} {}: before TLS {}; inside TLS {}",
                p.result.port,
                p.result.family,
                p.tls,
                said(&p.facts.before_tls),
                said(&p.facts.after_tls)
            )
        })
        .collect();
    if !ehlo.is_empty() {
        out.push_str("\nEHLO offers\n");
        for line in ehlo {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push('\n');
    for sentence in &reading.sentences {
        out.push_str(sentence);
        out.push('\n');
    }
    out
}

fn capabilities_words(c: &Capabilities) -> String {
    let mut words = Vec::new();
    if c.starttls {
        words.push("STARTTLS".to_string());
    }
    if c.auth.is_empty() {
        words.push("no AUTH".to_string());
    } else {
        words.push(format!("AUTH {}", c.auth.join(" ")));
    }
    match c.size {
        Some(0) => words.push("SIZE".to_string()),
        Some(n) => words.push(format!("SIZE {n}")),
        None => {}
    }
    words.join(", ")
}

/// Runs `check --provider` to its exit status: 0 SMTP works, 3 only the API answers, 1 neither,
/// 2 could not run (also every usage error).
pub fn main(
    asked: &str,
    presets: &Presets,
    families: &[Family],
    options: &ProbeOptions,
    as_json: bool,
) -> u8 {
    let preset = match presets.resolve(asked) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("egresswatch-agent: --provider: {message}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresswatch-agent: cannot start the runtime: {e}");
            return 2;
        }
    };
    let (smtp, api) = runtime.block_on(run(&preset, families, options));
    runtime.shutdown_background();
    let reading = provider_verdict::read(&preset, &smtp, &api);
    if as_json {
        match serde_json::to_string_pretty(&json(&preset, &reading, &smtp, &api)) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("egresswatch-agent: cannot encode JSON: {e}");
                return 2;
            }
        }
    } else {
        print!("{}", render_text(&preset, &reading, &smtp, &api));
    }
    reading.class.exit_status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::SessionFacts;
    use egresswatch_wire::Outcome;

    /// The `--json` contract (docs/check.md): these keys at the top, and the `check --json` row keys
    /// with the EHLO fields in each SMTP row.
    #[test]
    fn the_json_shape_is_the_documented_one() {
        let preset = Presets::builtin().unwrap().resolve("zeptomail").unwrap();
        let smtp = vec![SmtpProbe {
            result: ProbeResult {
                target: "smtp.zeptomail.com".into(),
                port: 587,
                outcome: Outcome::Ok,
                ..Default::default()
            },
            tls: TlsStart::Starttls,
            facts: SessionFacts {
                before_tls: Some(Capabilities {
                    starttls: true,
                    auth: vec![],
                    size: Some(1000),
                }),
                after_tls: Some(Capabilities {
                    starttls: false,
                    auth: vec!["PLAIN".into()],
                    size: Some(1000),
                }),
            },
        }];
        let api = vec![ProbeResult {
            target: "api.zeptomail.com".into(),
            port: 443,
            outcome: Outcome::Ok,
            ..Default::default()
        }];
        let reading = provider_verdict::read(&preset, &smtp, &api);
        let value = serde_json::to_value(json(&preset, &reading, &smtp, &api)).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "provider",
            "title",
            "region",
            "source",
            "smtp_host",
            "api_host",
            "verdict",
            "exit_code",
            "recommended_port",
            "recommended_tls",
            "auth_only_after_tls",
            "api",
            "api_reachable",
            "sentences",
            "smtp",
            "api_probes",
        ];
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        want.sort_unstable();
        assert_eq!(sorted, want);
        assert_eq!(value["verdict"], "smtp_works");
        assert_eq!(value["recommended_tls"], "starttls");
        let row = &value["smtp"][0];
        for key in [
            "host",
            "port",
            "family",
            "address",
            "outcome",
            "connect_ms",
            "detail",
        ] {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
        assert_eq!(row["tls_start"], "starttls");
        assert_eq!(
            row["ehlo_after_tls"],
            serde_json::json!({"starttls": false, "auth": ["PLAIN"], "size": 1000})
        );
        assert_eq!(value["api_probes"][0]["outcome"], "ok");
    }
}
