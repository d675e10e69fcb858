//! `check --provider`'s reading of its probes, as plain functions of the results: which port to
//! configure, what blocks the others and at which layer, whether AUTH is offered only after
//! STARTTLS, whether the HTTPS API answers as the way out — and the verdict class that decides
//! the exit status.

use super::verdict::labels::join_words;
use crate::presets::{ResolvedPreset, TlsStart};
use crate::probe::smtp::Capabilities;
use crate::probe::SessionFacts;
use egresswatch_wire::{Family, Outcome, ProbeResult, SessionStep};
use serde::Serialize;

/// The verdict classes, each with its exit status (the contract in docs/check.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderClass {
    /// At least one of the provider's SMTP ports works: exit 0.
    SmtpWorks,
    /// No SMTP port works, the HTTPS API answers: exit 3.
    ApiOnly,
    /// Neither SMTP nor the API: exit 1.
    Neither,
    /// Nothing got past name resolution (the resolver failed, or no name has an address): exit 2.
    CouldNotRun,
}

impl ProviderClass {
    pub fn exit_status(self) -> u8 {
        match self {
            ProviderClass::SmtpWorks => 0,
            ProviderClass::Neither => 1,
            ProviderClass::CouldNotRun => 2,
            ProviderClass::ApiOnly => 3,
        }
    }
}

/// One SMTP probe of the preset with what the server offered.
#[derive(Debug, Clone)]
pub struct SmtpProbe {
    pub result: ProbeResult,
    pub tls: TlsStart,
    pub facts: SessionFacts,
}

/// How the HTTPS API fared, over every family probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiState {
    /// A TLS handshake with a verified certificate for the API host, in some family.
    Reachable,
    /// 443 answered, but with a certificate that is not the API host's (or not trusted): TLS is
    /// intercepted on the path, or the name leads elsewhere. Not reachable.
    Intercepted,
    /// No handshake: the connection failed, or the name did not resolve.
    Unreachable,
}

/// Everything the verdict says, for the sentences and for `--json`.
#[derive(Debug, Clone)]
pub struct ProviderReading {
    pub class: ProviderClass,
    /// The port to configure, the first of the preset's order that works in every family with
    /// an address (else in some family).
    pub recommended: Option<(u16, TlsStart)>,
    /// Some(true): AUTH offered only inside TLS wherever seen; Some(false): offered in plain text
    /// before STARTTLS on some port; None: no session got far enough to tell.
    pub auth_only_after_tls: Option<bool>,
    pub api: ApiState,
    pub sentences: Vec<String>,
}

/// Reads the probes of one preset.
pub fn read(preset: &ResolvedPreset, smtp: &[SmtpProbe], api: &[ProbeResult]) -> ProviderReading {
    let probed = |r: &ProbeResult| !matches!(r.outcome, Outcome::NoAddress | Outcome::DnsFailed);
    let api_state = api_state(api);
    let smtp_ok = smtp.iter().any(|p| p.result.outcome == Outcome::Ok);
    let class = if !smtp.iter().map(|p| &p.result).chain(api).any(probed) {
        ProviderClass::CouldNotRun
    } else if smtp_ok {
        ProviderClass::SmtpWorks
    } else if api_state == ApiState::Reachable {
        ProviderClass::ApiOnly
    } else {
        ProviderClass::Neither
    };
    let recommended = recommend(preset, smtp);
    let auth_only_after_tls = auth_only_after_tls(smtp);
    let mut sentences = vec![headline(preset, class, recommended, smtp, api)];
    if class != ProviderClass::CouldNotRun {
        sentences.extend(port_sentences(preset, smtp, recommended));
        sentences.push(auth_sentence(preset, smtp, auth_only_after_tls));
        sentences.push(api_sentence(preset, api, api_state));
    }
    sentences
        .push("Nothing was sent: no credentials, no mail (EHLO, STARTTLS and QUIT only).".into());
    ProviderReading {
        class,
        recommended,
        auth_only_after_tls,
        api: api_state,
        sentences,
    }
}

fn api_state(api: &[ProbeResult]) -> ApiState {
    if api.iter().any(|r| r.outcome == Outcome::Ok) {
        ApiState::Reachable
    } else if api.iter().any(intercepted) {
        ApiState::Intercepted
    } else {
        ApiState::Unreachable
    }
}

/// 443 answered and a handshake began, but the certificate was not the host's: what a TLS
/// proxy on the path shows.
fn intercepted(r: &ProbeResult) -> bool {
    r.outcome == Outcome::TlsFailed
        && r.step == Some(SessionStep::TlsHandshake)
        && r.detail.contains("certificate")
}

fn recommend(preset: &ResolvedPreset, smtp: &[SmtpProbe]) -> Option<(u16, TlsStart)> {
    let works_everywhere = |port: u16| {
        let rows: Vec<&SmtpProbe> = smtp
            .iter()
            .filter(|p| p.result.port == port && p.result.outcome != Outcome::NoAddress)
            .collect();
        !rows.is_empty() && rows.iter().all(|p| p.result.outcome == Outcome::Ok)
    };
    let works_somewhere = |port: u16| {
        smtp.iter()
            .any(|p| p.result.port == port && p.result.outcome == Outcome::Ok)
    };
    preset
        .ports
        .iter()
        .find(|p| works_everywhere(p.port))
        .or_else(|| preset.ports.iter().find(|p| works_somewhere(p.port)))
        .map(|p| (p.port, p.tls))
}

fn auth_only_after_tls(smtp: &[SmtpProbe]) -> Option<bool> {
    let offered = |c: &Option<Capabilities>| c.as_ref().is_some_and(|c| !c.auth.is_empty());
    if smtp.iter().any(|p| offered(&p.facts.before_tls)) {
        return Some(false);
    }
    smtp.iter()
        .any(|p| offered(&p.facts.after_tls))
        .then_some(true)
}

fn family_words(families: &[Family]) -> String {
    let names: Vec<String> = families
        .iter()
        .map(|f| match f {
            Family::Ipv4 => "IPv4".to_string(),
            Family::Ipv6 => "IPv6".to_string(),
        })
        .collect();
    join_words(&names)
}

/// The port as a verdict names it: "587 (STARTTLS)".
fn port_name(port: u16, tls: TlsStart) -> String {
    format!("{port} ({tls})")
}

/// What a failed probe's outcome says, as (singular verb phrase, plural verb phrase, reading).
fn outcome_words(r: &ProbeResult) -> (String, String, String) {
    let (one, many, why): (&str, &str, String) = match r.outcome {
        Outcome::Timeout => (
            "times out",
            "time out",
            "no answer to the connection: dropped on the path (the network layer)".into(),
        ),
        Outcome::Refused => (
            "is refused",
            "are refused",
            "a TCP reset to the connection: a firewall that resets, or nothing listening (the network layer)".into(),
        ),
        Outcome::Unreachable => {
            let from = r
                .icmp
                .as_ref()
                .and_then(|i| i.from)
                .map(|a| format!(", sent by {a}"))
                .unwrap_or_default();
            (
                "is rejected with ICMP",
                "are rejected with ICMP",
                format!("administratively prohibited by a firewall on the path{from} (the network layer)"),
            )
        }
        Outcome::LocalDenied => (
            "is denied by this host's own firewall",
            "are denied by this host's own firewall",
            "a rule in this host's output chain (the host itself)".into(),
        ),
        Outcome::Reset => (
            "connects, then is reset",
            "connect, then are reset",
            format!("{} (the session layer: a middlebox cuts it)", r.detail),
        ),
        Outcome::NoBanner => (
            "connects, but the session is swallowed",
            "connect, but the sessions are swallowed",
            format!("{} (the session layer: a proxy or filter holds it)", r.detail),
        ),
        Outcome::BadBanner => (
            "connects, but the server refuses",
            "connect, but the server refuses",
            format!("{} (the SMTP layer: the server's policy)", r.detail),
        ),
        Outcome::StarttlsMissing => (
            "connects, but STARTTLS is not offered",
            "connect, but STARTTLS is not offered",
            format!("{} (the SMTP layer)", r.detail),
        ),
        Outcome::TlsFailed => (
            "connects, but TLS fails",
            "connect, but TLS fails",
            format!("{} (the TLS layer)", r.detail),
        ),
        Outcome::DnsFailed => (
            "does not resolve",
            "do not resolve",
            format!("{} (DNS)", r.detail),
        ),
        Outcome::NoAddress | Outcome::Ok => ("", "", String::new()),
    };
    (one.into(), many.into(), why)
}

/// The failing probes of the preset's SMTP ports, one entry per port: "465 and 587 time out".
/// Also says whether the ports were told apart ("465 is refused and 587 times out").
fn failing_summary(smtp: &[SmtpProbe]) -> (String, bool) {
    let mut ports: Vec<(u16, Outcome, String, String)> = Vec::new();
    for p in smtp {
        let r = &p.result;
        if matches!(r.outcome, Outcome::Ok | Outcome::NoAddress)
            || ports.iter().any(|q| q.0 == r.port)
        {
            continue;
        }
        let (one, many, _) = outcome_words(r);
        ports.push((r.port, r.outcome, one, many));
    }
    ports.sort_by_key(|p| p.0);
    if ports.is_empty() {
        return (String::new(), false);
    }
    if ports.iter().all(|p| p.1 == ports[0].1 && p.3 == ports[0].3) {
        let names: Vec<String> = ports.iter().map(|p| p.0.to_string()).collect();
        let verb = if names.len() == 1 {
            &ports[0].2
        } else {
            &ports[0].3
        };
        return (format!("{} {verb}", join_words(&names)), false);
    }
    let each: Vec<String> = ports.iter().map(|p| format!("{} {}", p.0, p.2)).collect();
    (join_words(&each), true)
}

fn headline(
    preset: &ResolvedPreset,
    class: ProviderClass,
    recommended: Option<(u16, TlsStart)>,
    smtp: &[SmtpProbe],
    api: &[ProbeResult],
) -> String {
    let title = &preset.title;
    let (summary, told_apart) = failing_summary(smtp);
    // "465 is refused and 587 times out, while 443 answers": the comma keeps 443 off 587.
    let api_443 = match (api.iter().any(|r| r.outcome == Outcome::Ok), told_apart) {
        (false, _) => "",
        (true, false) => " while 443 answers",
        (true, true) => ", while 443 answers",
    };
    match class {
        ProviderClass::SmtpWorks => {
            let (port, tls) = recommended.unwrap_or((0, TlsStart::Starttls));
            format!(
                "SMTP to {title} works from here: configure {} port {port} ({tls}).",
                preset.smtp_host
            )
        }
        ProviderClass::ApiOnly => format!(
            "SMTP to {title} is filtered on this network ({}{api_443}); its HTTPS API {} answers: \
             send over the API, or ask your provider to lift the block.",
            summary, preset.api_host
        ),
        ProviderClass::Neither => format!(
            "Neither SMTP to {title} ({}) nor its HTTPS API {} works from here: no way out to \
             this provider on this network.",
            summary, preset.api_host
        ),
        ProviderClass::CouldNotRun => {
            let details: Vec<String> = smtp
                .iter()
                .map(|p| &p.result)
                .chain(api)
                .filter(|r| r.outcome == Outcome::DnsFailed)
                .map(|r| r.detail.clone())
                .fold(Vec::new(), |mut seen, d| {
                    if !seen.contains(&d) {
                        seen.push(d);
                    }
                    seen
                });
            let why = if details.is_empty() {
                "no address in any family probed".to_string()
            } else {
                details.join("; ")
            };
            format!(
                "The check could not run: neither {} nor {} could be resolved ({why}). Nothing \
                 was probed; check this host's resolver.",
                preset.smtp_host, preset.api_host
            )
        }
    }
}

/// One sentence per preset port that does not work in some family, naming its layer.
fn port_sentences(
    preset: &ResolvedPreset,
    smtp: &[SmtpProbe],
    recommended: Option<(u16, TlsStart)>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut fine = Vec::new();
    for port in &preset.ports {
        let rows: Vec<&ProbeResult> = smtp
            .iter()
            .map(|p| &p.result)
            .filter(|r| r.port == port.port && r.outcome != Outcome::NoAddress)
            .collect();
        let failing: Vec<&&ProbeResult> =
            rows.iter().filter(|r| r.outcome != Outcome::Ok).collect();
        if failing.is_empty() {
            if !rows.is_empty() && recommended.map(|r| r.0) != Some(port.port) {
                fine.push(port_name(port.port, port.tls));
            }
            continue;
        }
        // Families failing the same way are said once; a reading that differs by family (the
        // ICMP sender, a detail) is given for each.
        let mut parts: Vec<String> = Vec::new();
        let mut done: Vec<Family> = Vec::new();
        for r in &failing {
            if done.contains(&r.family) {
                continue;
            }
            let same: Vec<&&&ProbeResult> =
                failing.iter().filter(|o| o.outcome == r.outcome).collect();
            done.extend(same.iter().map(|o| o.family));
            let (one, _, _) = outcome_words(r);
            let mut whys: Vec<(String, Vec<Family>)> = Vec::new();
            for o in &same {
                let why = outcome_words(o).2;
                match whys.iter_mut().find(|w| w.0 == why) {
                    Some(w) => w.1.push(o.family),
                    None => whys.push((why, vec![o.family])),
                }
            }
            let families: Vec<Family> = same.iter().map(|o| o.family).collect();
            let why = if whys.len() == 1 {
                whys[0].0.clone()
            } else {
                let each: Vec<String> = whys
                    .iter()
                    .map(|(why, fs)| format!("{} {why}", family_words(fs)))
                    .collect();
                each.join("; ")
            };
            parts.push(format!("{one} over {}: {why}", family_words(&families)));
        }
        let fine_families: Vec<Family> = rows
            .iter()
            .filter(|r| r.outcome == Outcome::Ok)
            .map(|r| r.family)
            .collect();
        let works = if fine_families.is_empty() {
            String::new()
        } else {
            format!("; it works over {}", family_words(&fine_families))
        };
        out.push(format!(
            "Port {} {}{works}.",
            port_name(port.port, port.tls),
            parts.join("; ")
        ));
    }
    if !fine.is_empty() {
        out.push(format!("Also working: {}.", join_words(&fine)));
    }
    out
}

fn auth_sentence(preset: &ResolvedPreset, smtp: &[SmtpProbe], only_after: Option<bool>) -> String {
    let host = &preset.smtp_host;
    let mut after_starttls: Vec<u16> = Vec::new();
    let mut inside_implicit: Vec<u16> = Vec::new();
    let mut before: Vec<u16> = Vec::new();
    let mut mechanisms: Vec<String> = Vec::new();
    let mut size: Option<u64> = None;
    for p in smtp {
        let port = p.result.port;
        if let Some(caps) = &p.facts.before_tls {
            if !caps.auth.is_empty() && !before.contains(&port) {
                before.push(port);
            }
        }
        if let Some(caps) = &p.facts.after_tls {
            size = size.or(caps.size);
            if caps.auth.is_empty() {
                continue;
            }
            for m in &caps.auth {
                if !mechanisms.contains(m) {
                    mechanisms.push(m.clone());
                }
            }
            let list = match p.tls {
                TlsStart::Starttls => &mut after_starttls,
                TlsStart::Implicit => &mut inside_implicit,
            };
            if !list.contains(&port) {
                list.push(port);
            }
        }
    }
    let ports = |ps: &[u16]| join_words(&ps.iter().map(u16::to_string).collect::<Vec<_>>());
    let size_words = match size {
        Some(0) => "; SIZE offered without a limit".to_string(),
        Some(n) => format!("; it takes messages up to {n} bytes (SIZE)"),
        None => String::new(),
    };
    match only_after {
        None => format!(
            "Whether {host} offers AUTH only after STARTTLS could not be seen: no SMTP session got \
             that far."
        ),
        Some(false) => format!(
            "{host} offers AUTH before STARTTLS on {} ({}): a client could send its credentials \
             in plain text there; make sure yours starts TLS first{size_words}.",
            ports(&before),
            mechanisms.join(" ")
        ),
        Some(true) => {
            let mut where_ = Vec::new();
            if !after_starttls.is_empty() {
                where_.push(format!("only after STARTTLS on {}", ports(&after_starttls)));
            }
            if !inside_implicit.is_empty() {
                where_.push(format!("inside TLS on {}", ports(&inside_implicit)));
            }
            format!(
                "{host} offers AUTH ({}) {}, never in plain text{size_words}.",
                mechanisms.join(" "),
                join_words(&where_)
            )
        }
    }
}

fn api_sentence(preset: &ResolvedPreset, api: &[ProbeResult], state: ApiState) -> String {
    let host = &preset.api_host;
    match state {
        ApiState::Reachable => {
            let ok: Vec<Family> = api
                .iter()
                .filter(|r| r.outcome == Outcome::Ok)
                .map(|r| r.family)
                .collect();
            let tls = api
                .iter()
                .find_map(|r| r.tls.as_ref().map(|t| t.version.clone()))
                .unwrap_or_default();
            format!(
                "Its HTTPS API {host} answers on 443 over {} ({tls}, certificate verified): the \
                 way out when SMTP is blocked.",
                family_words(&ok)
            )
        }
        ApiState::Intercepted => {
            let detail = api
                .iter()
                .find(|r| intercepted(r))
                .map(|r| r.detail.clone())
                .unwrap_or_default();
            format!(
                "Its HTTPS API {host} is not reachable as itself: 443 answers, but {detail} — TLS \
                 is intercepted on the path, or the name leads elsewhere. Not counted as a way out."
            )
        }
        ApiState::Unreachable => {
            let parts: Vec<String> = api
                .iter()
                .filter(|r| r.outcome != Outcome::NoAddress)
                .map(|r| {
                    let (one, _, why) = outcome_words(r);
                    format!("{one} over {}: {why}", family_words(&[r.family]))
                })
                .collect();
            format!("Its HTTPS API {host} on 443 {}.", parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::Presets;

    fn zepto() -> ResolvedPreset {
        Presets::builtin().unwrap().resolve("zeptomail").unwrap()
    }

    fn row(host: &str, port: u16, family: Family, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: host.into(),
            port,
            family,
            outcome,
            detail: match outcome {
                Outcome::Ok => "ok".into(),
                _ => format!("{outcome}"),
            },
            ..Default::default()
        }
    }

    fn smtp_row(port: u16, family: Family, outcome: Outcome, facts: SessionFacts) -> SmtpProbe {
        SmtpProbe {
            result: row("smtp.zeptomail.com", port, family, outcome),
            tls: if port == 465 {
                TlsStart::Implicit
            } else {
                TlsStart::Starttls
            },
            facts,
        }
    }

    fn caps(auth: &[&str]) -> Option<Capabilities> {
        Some(Capabilities {
            starttls: true,
            auth: auth.iter().map(|s| s.to_string()).collect(),
            size: Some(10_240_000),
        })
    }

    fn both(outcome_465: Outcome, outcome_587: Outcome, facts_587: SessionFacts) -> Vec<SmtpProbe> {
        let mut v = Vec::new();
        for f in [Family::Ipv4, Family::Ipv6] {
            v.push(smtp_row(465, f, outcome_465, SessionFacts::default()));
            v.push(smtp_row(587, f, outcome_587, facts_587.clone()));
        }
        v
    }

    fn api(outcome: Outcome) -> Vec<ProbeResult> {
        [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .map(|f| row("api.zeptomail.com", 443, f, outcome))
            .collect()
    }

    #[test]
    fn smtp_works_names_the_port_and_auth_after_starttls() {
        let facts = SessionFacts {
            before_tls: caps(&[]),
            after_tls: caps(&["PLAIN", "LOGIN"]),
        };
        let r = read(
            &zepto(),
            &both(Outcome::Timeout, Outcome::Ok, facts),
            &api(Outcome::Ok),
        );
        assert_eq!(r.class, ProviderClass::SmtpWorks);
        assert_eq!(r.class.exit_status(), 0);
        assert_eq!(r.recommended, Some((587, TlsStart::Starttls)));
        assert_eq!(r.auth_only_after_tls, Some(true));
        assert_eq!(
            r.sentences[0],
            "SMTP to ZeptoMail (Zoho) works from here: configure smtp.zeptomail.com port 587 (STARTTLS)."
        );
        assert!(
            r.sentences[1]
                .starts_with("Port 465 (implicit TLS) times out over IPv4 and IPv6: no answer"),
            "{:?}",
            r.sentences
        );
        assert!(
            r.sentences[2].contains(
                "offers AUTH (PLAIN LOGIN) only after STARTTLS on 587, never in plain text"
            ),
            "{:?}",
            r.sentences
        );
    }

    #[test]
    fn smtp_blocked_with_the_api_reachable_is_the_way_out() {
        let r = read(
            &zepto(),
            &both(Outcome::Timeout, Outcome::Timeout, SessionFacts::default()),
            &api(Outcome::Ok),
        );
        assert_eq!(r.class, ProviderClass::ApiOnly);
        assert_eq!(r.class.exit_status(), 3);
        assert_eq!(r.recommended, None);
        assert_eq!(r.auth_only_after_tls, None);
        assert_eq!(
            r.sentences[0],
            "SMTP to ZeptoMail (Zoho) is filtered on this network (465 and 587 time out while 443 \
             answers); its HTTPS API api.zeptomail.com answers: send over the API, or ask your \
             provider to lift the block."
        );
    }

    #[test]
    fn neither_and_could_not_run() {
        let r = read(
            &zepto(),
            &both(Outcome::Refused, Outcome::Timeout, SessionFacts::default()),
            &api(Outcome::Timeout),
        );
        assert_eq!(r.class, ProviderClass::Neither);
        assert_eq!(r.class.exit_status(), 1);
        assert!(
            r.sentences[0].contains("(465 is refused and 587 times out)"),
            "{:?}",
            r.sentences
        );
        let r = read(
            &zepto(),
            &both(
                Outcome::DnsFailed,
                Outcome::DnsFailed,
                SessionFacts::default(),
            ),
            &api(Outcome::DnsFailed),
        );
        assert_eq!(r.class, ProviderClass::CouldNotRun);
        assert_eq!(r.class.exit_status(), 2);
    }

    #[test]
    fn a_wrong_certificate_on_the_api_is_interception_not_reachable() {
        let mut rows = api(Outcome::TlsFailed);
        for r in &mut rows {
            r.step = Some(SessionStep::TlsHandshake);
            r.detail = "TLS: the certificate is for mx.lab.test, not for api.zeptomail.com".into();
        }
        let r = read(
            &zepto(),
            &both(Outcome::Timeout, Outcome::Timeout, SessionFacts::default()),
            &rows,
        );
        assert_eq!(r.api, ApiState::Intercepted);
        assert_eq!(r.class, ProviderClass::Neither);
        assert!(
            r.sentences
                .iter()
                .any(|s| s.contains("is not reachable as itself") && s.contains("intercepted")),
            "{:?}",
            r.sentences
        );
    }

    #[test]
    fn auth_in_plain_text_is_said() {
        let facts = SessionFacts {
            before_tls: caps(&["PLAIN"]),
            after_tls: caps(&["PLAIN"]),
        };
        let r = read(
            &zepto(),
            &both(Outcome::Ok, Outcome::Ok, facts),
            &api(Outcome::Ok),
        );
        assert_eq!(r.auth_only_after_tls, Some(false));
        assert!(r
            .sentences
            .iter()
            .any(|s| s.contains("offers AUTH before STARTTLS on 587")));
        // 587 comes first in the preset's order and works in both families.
        assert_eq!(r.recommended, Some((587, TlsStart::Starttls)));
    }

    #[test]
    fn a_port_that_works_in_one_family_only_is_said_so() {
        let mut smtp = both(Outcome::Ok, Outcome::Ok, SessionFacts::default());
        smtp[3].result.outcome = Outcome::Timeout; // 587 over IPv6
        let r = read(&zepto(), &smtp, &api(Outcome::Ok));
        // 465 works in both families, so it is the one to configure.
        assert_eq!(r.recommended, Some((465, TlsStart::Implicit)));
        assert!(
            r.sentences
                .iter()
                .any(|s| s.starts_with("Port 587 (STARTTLS) times out over IPv6")
                    && s.ends_with("; it works over IPv4.")),
            "{:?}",
            r.sentences
        );
    }
}
