//! `egresswatch-agent check`: answer one host's question in seconds — which outbound ports can
//! this host use, and which layer is in the way.
//!
//! Every (host, port, family) is probed at once, so a host where everything is dropped answers in
//! about one timeout rather than the sum. Output is a table for people, ending in a verdict in
//! plain words, or one JSON array for scripts (the contract in README). Exit 0 when every probe
//! is `ok`, 1 when any is not, 2 on usage error.

use crate::probe::{self, ProbeOptions, ProbeTarget, Resolution, PORT_HTTPS};
use egresswatch_wire::{Family, Level, Outcome, ProbeResult};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The ports people ask about, and 443 as the control.
pub const DEFAULT_PORTS: [u16; 5] = [25, 465, 587, 2525, 443];

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Hosts to probe (names or addresses).
    #[arg(required = true, value_name = "HOST")]
    pub hosts: Vec<String>,
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
        .map_err(|_| format!("invalid duration {text:?} (e.g. 5s, 500ms)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn main(args: CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresswatch-agent: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let roots = match probe::tls::load_roots(args.ca_file.as_deref()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("egresswatch-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = check_binding(&args.source, args.interface.as_deref()) {
        eprintln!("egresswatch-agent: {message}");
        return ExitCode::from(2);
    }
    let mut options = ProbeOptions::new(args.timeout, roots);
    for source in &args.source {
        match source {
            std::net::IpAddr::V4(v4) => options.source_v4 = Some(*v4),
            std::net::IpAddr::V6(v6) => options.source_v6 = Some(*v6),
        }
    }
    options.interface = args.interface.clone();
    let ports = if args.ports.is_empty() {
        DEFAULT_PORTS.to_vec()
    } else {
        without_repeats(&args.ports)
    };
    let hosts = without_repeats(&args.hosts);
    let families = match args.family {
        Some(f) => vec![f],
        None => vec![Family::Ipv4, Family::Ipv6],
    };
    let results = runtime.block_on(run_check(&hosts, &ports, &families, args.level, &options));
    // A name lookup that outlived its deadline still sits in a blocking thread; dropping the
    // runtime would wait for it, so leave it behind instead.
    runtime.shutdown_background();
    if args.json {
        let rows: Vec<JsonRow> = results.iter().map(JsonRow::from).collect();
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("egresswatch-agent: cannot encode JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render_table(&results));
        println!();
        for line in verdict(&results) {
            println!("{line}");
        }
    }
    if results.iter().all(|r| !r.outcome.is_failure())
        && results.iter().any(|r| r.outcome == Outcome::Ok)
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A source address or interface that this host does not have is the user's mistake, not a
/// network outcome: say so before probing rather than report every probe `unreachable`.
fn check_binding(sources: &[std::net::IpAddr], interface: Option<&str>) -> Result<(), String> {
    let mut families = BTreeSet::new();
    for source in sources {
        if !families.insert(source.is_ipv6()) {
            return Err(format!(
                "--source given twice for {}; give at most one per family",
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
            return Err(format!("--source {source}: not usable on this host ({e})"));
        }
    }
    if let Some(name) = interface {
        let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !valid || !std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(format!("--interface {name:?}: no such network interface"));
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

/// Probes every host × port × family concurrently; results in a stable order.
pub async fn run_check(
    hosts: &[String],
    ports: &[u16],
    families: &[Family],
    level: Level,
    options: &ProbeOptions,
) -> Vec<ProbeResult> {
    // One lookup per (host, family), shared by every port of it.
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts.iter().collect::<BTreeSet<_>>() {
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
    for host in hosts {
        for port in ports {
            for family in families {
                let Some(resolution) = resolved.get(&(host.clone(), *family)).cloned() else {
                    continue;
                };
                let target = ProbeTarget {
                    host: host.clone(),
                    port: *port,
                    family: *family,
                    level,
                };
                let options = options.clone();
                let at = index;
                index += 1;
                probes.spawn(async move {
                    (
                        at,
                        probe::probe_resolved(&target, &resolution, &options).await,
                    )
                });
            }
        }
    }
    let mut out: Vec<(usize, ProbeResult)> = Vec::with_capacity(index);
    while let Some(joined) = probes.join_next().await {
        if let Ok(pair) = joined {
            out.push(pair);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// One element of `check --json`: the contract fields first, then everything else we know.
#[derive(Debug, Serialize)]
pub struct JsonRow {
    pub host: String,
    pub port: u16,
    pub family: Family,
    pub address: Option<String>,
    pub outcome: Outcome,
    pub connect_ms: Option<f64>,
    pub detail: String,
    pub level: Level,
    pub dns_ms: Option<f64>,
    pub banner_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub syn_retransmits: Option<u8>,
    pub errno: Option<i32>,
    pub dns_failure: Option<egresswatch_wire::DnsFailure>,
    pub icmp: Option<JsonIcmp>,
    pub tls: Option<JsonTls>,
}

#[derive(Debug, Serialize)]
pub struct JsonIcmp {
    pub from: Option<String>,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

#[derive(Debug, Serialize)]
pub struct JsonTls {
    pub version: String,
    pub cipher: String,
    pub issuer: String,
}

fn ms(us: Option<u32>) -> Option<f64> {
    us.map(|us| (f64::from(us) / 1000.0 * 1000.0).round() / 1000.0)
}

impl From<&ProbeResult> for JsonRow {
    fn from(r: &ProbeResult) -> Self {
        JsonRow {
            host: r.target.clone(),
            port: r.port,
            family: r.family,
            address: r.address.map(|a| a.to_string()),
            outcome: r.outcome,
            connect_ms: ms(r.timings.connect_us),
            detail: r.detail.clone(),
            level: r.level,
            dns_ms: ms(r.timings.dns_us),
            banner_ms: ms(r.timings.banner_us),
            tls_ms: ms(r.timings.tls_us),
            syn_retransmits: r.syn_retransmits,
            errno: r.errno,
            dns_failure: r.dns_failure,
            icmp: r.icmp.as_ref().map(|i| JsonIcmp {
                from: i.from.map(|a| a.to_string()),
                icmp_type: i.icmp_type,
                icmp_code: i.icmp_code,
            }),
            tls: r.tls.as_ref().map(|t| JsonTls {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
                issuer: t.issuer.clone(),
            }),
        }
    }
}

/// The table for people: one row per host/port/family.
pub fn render_table(results: &[ProbeResult]) -> String {
    let header = [
        "HOST", "PORT", "FAMILY", "ADDRESS", "OUTCOME", "CONNECT", "TLS", "DETAIL",
    ];
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|r| {
            [
                printable(&r.target),
                r.port.to_string(),
                r.family.to_string(),
                r.address
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.outcome.to_string(),
                r.timings
                    .connect_us
                    .map(|us| format!("{:.1} ms", f64::from(us) / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                r.tls
                    .as_ref()
                    .map(|t| t.version.clone())
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".into()),
                printable(&r.detail),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(7) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 7 {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// Text from the network, made safe for a terminal: control characters become '?'.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn join_words(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// The verdict in plain words, naming the layer. Pure: results in, sentences out.
pub fn verdict(results: &[ProbeResult]) -> Vec<String> {
    let mut lines = Vec::new();
    if results.is_empty() {
        return vec!["Nothing was probed.".into()];
    }
    // A port that fails in one family only is named with it ("2525 over IPv6"), so a verdict
    // never calls the same port blocked and fine at once.
    let one_family = |port: u16, failing: bool| -> Option<Family> {
        let probed: Vec<&ProbeResult> = results
            .iter()
            .filter(|r| r.port == port && r.outcome != Outcome::NoAddress)
            .collect();
        let matching: Vec<Family> = probed
            .iter()
            .filter(|r| r.outcome.is_failure() == failing)
            .map(|r| r.family)
            .collect();
        let families: BTreeSet<Family> = probed.iter().map(|r| r.family).collect();
        let matching_families: BTreeSet<Family> = matching.iter().copied().collect();
        (families.len() > 1 && matching_families.len() == 1).then(|| matching[0])
    };
    let label = |ports: &BTreeSet<u16>, failing: bool| -> String {
        let labelled: Vec<String> = ports
            .iter()
            .map(|p| match one_family(*p, failing) {
                Some(Family::Ipv4) => format!("{p} over IPv4"),
                Some(Family::Ipv6) => format!("{p} over IPv6"),
                None => p.to_string(),
            })
            .collect();
        join_words(&labelled)
    };
    let failing = |ports: &BTreeSet<u16>| label(ports, true);
    let fine = |ports: &BTreeSet<u16>| label(ports, false);
    let with = |o: Outcome| -> BTreeSet<u16> {
        results
            .iter()
            .filter(|r| r.outcome == o && r.port != PORT_HTTPS)
            .map(|r| r.port)
            .collect()
    };
    // What the 443 control says about the path to the destination. Any answer from the far end
    // (a reset, a greeting, a handshake) proves packets get there and back.
    let control: Vec<&ProbeResult> = results
        .iter()
        .filter(|r| r.port == PORT_HTTPS && r.address.is_some())
        .collect();
    let control_ok = control.iter().any(|r| r.outcome == Outcome::Ok);
    let control_answer = control.iter().map(|r| r.outcome).find(|o| {
        !matches!(
            o,
            Outcome::Timeout | Outcome::Unreachable | Outcome::LocalDenied
        )
    });
    let control_silent =
        !control.is_empty() && control.iter().all(|r| r.outcome == Outcome::Timeout);
    let control_blocked = control
        .iter()
        .map(|r| r.outcome)
        .find(|o| matches!(o, Outcome::Unreachable | Outcome::LocalDenied));

    let dns: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.outcome == Outcome::DnsFailed)
        .map(|r| r.target.as_str())
        .collect();
    for host in &dns {
        let kind = results
            .iter()
            .find(|r| r.target == *host && r.outcome == Outcome::DnsFailed)
            .and_then(|r| r.dns_failure);
        lines.push(format!(
            "{host} does not resolve ({}): a DNS problem, not a port block.",
            kind.map(|k| k.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
    }

    let timeouts = with(Outcome::Timeout);
    if !timeouts.is_empty() {
        let verb = if timeouts.len() == 1 {
            "times out"
        } else {
            "time out"
        };
        let ports = failing(&timeouts);
        if control_ok {
            lines.push(format!(
                "{ports} {verb} while 443 answers: outbound SMTP is filtered on this network (a silent drop, the signature of a provider block)."
            ));
        } else if let Some(answer) = control_answer {
            lines.push(format!(
                "{ports} {verb} while 443 gets an answer ({answer}): the destination is reachable, so SMTP is silently dropped on the way (the signature of a provider block)."
            ));
        } else if control_silent {
            lines.push(format!(
                "{ports} {verb} and so does 443: the destination is unreachable from here, or this host has no outbound network; not an SMTP-specific block."
            ));
        } else if let Some(blocked) = control_blocked {
            lines.push(format!(
                "{ports} {verb} and 443 fails too ({blocked}): the path to the destination is broken or firewalled as a whole; not an SMTP-specific block."
            ));
        } else {
            lines.push(format!(
                "{ports} {verb}: the SYN is silently dropped, typical of a provider's SMTP block (probe 443 as a control to be sure)."
            ));
        }
    }

    // ICMP rejects: a router on the path (the provider's edge, say) is told from the
    // destination's own firewall by who sent the ICMP error.
    let mut by_router = BTreeSet::new();
    let mut routers = BTreeSet::new();
    let mut by_destination = BTreeSet::new();
    let mut no_icmp = BTreeSet::new();
    for r in results
        .iter()
        .filter(|r| r.outcome == Outcome::Unreachable && r.port != PORT_HTTPS)
    {
        match r.icmp.as_ref().and_then(|i| i.from) {
            Some(from) if Some(from) != r.address => {
                by_router.insert(r.port);
                routers.insert(from);
            }
            Some(_) => {
                by_destination.insert(r.port);
            }
            None => {
                no_icmp.insert(r.port);
            }
        }
    }
    let is_are = |ports: &BTreeSet<u16>| if ports.len() == 1 { "is" } else { "are" };
    if !by_router.is_empty() {
        let hops: Vec<String> = routers.iter().map(ToString::to_string).collect();
        lines.push(format!(
            "{} {} rejected by a router on the path ({}, ICMP): a firewall between this host and the destination, e.g. the provider's edge.",
            failing(&by_router),
            is_are(&by_router),
            hops.join(", ")
        ));
    }
    if !by_destination.is_empty() {
        lines.push(format!(
            "{} {} rejected by the destination itself (ICMP from its own address): the destination's firewall.",
            failing(&by_destination),
            is_are(&by_destination)
        ));
    }
    if !no_icmp.is_empty() {
        lines.push(format!(
            "{} {} unreachable with no ICMP to say who: no route from this host, or the network is down.",
            failing(&no_icmp),
            is_are(&no_icmp)
        ));
    }

    let local = with(Outcome::LocalDenied);
    if !local.is_empty() {
        lines.push(format!(
            "{}: this host's own firewall refuses to send (EPERM/EACCES).",
            failing(&local)
        ));
    }
    let refused = with(Outcome::Refused);
    if !refused.is_empty() {
        lines.push(format!(
            "{}: the destination refuses (TCP reset): nothing listens there, or a reject rule in front of it.",
            failing(&refused)
        ));
    }
    let reset = with(Outcome::Reset);
    if !reset.is_empty() {
        lines.push(format!(
            "{}: the connection was reset after it opened: a middlebox cutting SMTP sessions.",
            failing(&reset)
        ));
    }
    let no_banner = with(Outcome::NoBanner);
    if !no_banner.is_empty() {
        lines.push(format!(
            "{}: connects but no SMTP greeting arrives: a middlebox may be swallowing the session, or the server is overloaded.",
            failing(&no_banner)
        ));
    }
    let bad_banner = with(Outcome::BadBanner);
    if !bad_banner.is_empty() {
        lines.push(format!("{}: the destination greets with a refusal: policy at the destination, not the network.", failing(&bad_banner)));
    }
    let stripped = with(Outcome::StarttlsMissing);
    if !stripped.is_empty() {
        lines.push(format!(
            "{}: STARTTLS is not offered: stripped on the path (or the server does not offer it); mail would travel in clear.",
            failing(&stripped)
        ));
    }
    let tls_failed: BTreeSet<u16> = results
        .iter()
        .filter(|r| r.outcome == Outcome::TlsFailed)
        .map(|r| r.port)
        .collect();
    if !tls_failed.is_empty() {
        lines.push(format!(
            "{}: TLS fails (certificate not valid for the host, or the handshake broke): TLS intercepted on the path, or a misconfigured server (use --ca-file for a private relay).",
            failing(&tls_failed)
        ));
    }
    let no_v6 = results
        .iter()
        .filter(|r| r.outcome == Outcome::NoAddress)
        .count();
    let ok: BTreeSet<u16> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.port)
        .collect();
    if lines.is_empty() {
        if ok.is_empty() {
            lines.push("No address to probe.".into());
        } else {
            lines.push(format!(
                "{} {}: outbound SMTP is open from this host.",
                fine(&ok),
                if ok.len() == 1 { "answers" } else { "answer" }
            ));
        }
    } else if !ok.is_empty() {
        lines.push(format!(
            "{} {} fine.",
            fine(&ok),
            if ok.len() == 1 { "is" } else { "are" }
        ));
    }
    if no_v6 > 0 {
        lines.push(format!(
            "{no_v6} probe(s) had no address in their family (not a failure)."
        ));
    }
    let mut prefixed = vec![format!("Verdict: {}", lines[0])];
    prefixed.extend(lines.into_iter().skip(1).map(|l| format!("         {l}")));
    prefixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::IcmpReport;

    fn r(port: u16, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: "mx.example".into(),
            port,
            outcome,
            address: Some("198.18.0.25".parse().unwrap()),
            ..Default::default()
        }
    }

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

    #[test]
    fn provider_block_is_named() {
        let v = verdict(&[
            r(25, Outcome::Timeout),
            r(587, Outcome::Timeout),
            r(443, Outcome::Ok),
        ]);
        assert!(
            v[0].contains(
                "25 and 587 time out while 443 answers: outbound SMTP is filtered on this network"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn everything_dropped_is_not_called_an_smtp_block() {
        let v = verdict(&[r(587, Outcome::Timeout), r(443, Outcome::Timeout)]);
        assert!(v[0].contains("not an SMTP-specific block"), "{v:?}");
    }

    #[test]
    fn icmp_from_a_router_names_the_path() {
        let mut u = r(465, Outcome::Unreachable);
        u.icmp = Some(IcmpReport {
            from: Some("198.18.0.1".parse().unwrap()),
            icmp_type: 3,
            icmp_code: 13,
            origin: 2,
        });
        let v = verdict(&[u, r(443, Outcome::Ok)]);
        assert!(
            v[0].contains("465 is rejected by a router on the path (198.18.0.1, ICMP)"),
            "{v:?}"
        );
    }

    fn rejected_by(port: u16, hop: &str) -> ProbeResult {
        let mut u = r(port, Outcome::Unreachable);
        u.icmp = Some(IcmpReport {
            from: Some(hop.parse().unwrap()),
            icmp_type: 3,
            icmp_code: 13,
            origin: 2,
        });
        u
    }

    #[test]
    fn router_and_destination_rejects_are_told_apart() {
        let v = verdict(&[
            rejected_by(587, "198.18.0.1"),
            rejected_by(2525, "198.18.0.25"),
            r(443, Outcome::Ok),
        ]);
        let text = v.join("\n");
        assert!(
            text.contains("587 is rejected by a router on the path (198.18.0.1, ICMP)"),
            "{text}"
        );
        assert!(
            text.contains("2525 is rejected by the destination itself"),
            "{text}"
        );
        assert!(!text.contains("587 and 2525"), "{text}");
    }

    #[test]
    fn a_refused_control_still_proves_the_path() {
        let v = verdict(&[r(25, Outcome::Timeout), r(443, Outcome::Refused)]);
        assert!(
            v[0].contains(
                "25 times out while 443 gets an answer (refused): the destination is reachable"
            ),
            "{v:?}"
        );
        let v = verdict(&[r(25, Outcome::Timeout), r(443, Outcome::Unreachable)]);
        assert!(v[0].contains("443 fails too (unreachable)"), "{v:?}");
    }

    #[test]
    fn other_layers() {
        let all = verdict(&[
            r(25, Outcome::Refused),
            r(587, Outcome::StarttlsMissing),
            r(465, Outcome::TlsFailed),
            r(2525, Outcome::BadBanner),
        ]);
        let text = all.join("\n");
        assert!(text.contains("destination refuses"));
        assert!(text.contains("STARTTLS is not offered"));
        assert!(text.contains("TLS intercepted"));
        assert!(text.contains("policy at the destination"));
        let mut d = r(25, Outcome::DnsFailed);
        d.dns_failure = Some(egresswatch_wire::DnsFailure::Nxdomain);
        assert!(verdict(&[d])[0].contains("does not resolve (nxdomain): a DNS problem"));
        assert!(verdict(&[r(25, Outcome::Ok), r(443, Outcome::Ok)])[0].contains("open"));
    }

    #[test]
    fn table_escapes_control_characters() {
        let mut x = r(25, Outcome::BadBanner);
        x.detail = "greeting was 554 \u{1b}[31mred".into();
        let t = render_table(&[x]);
        assert!(!t.contains('\u{1b}'));
        assert!(t.starts_with("HOST"));
    }
}

#[cfg(test)]
mod family_tests {
    use super::*;

    #[test]
    fn a_port_failing_in_one_family_is_named_with_it() {
        let r = |port: u16, family: Family, outcome: Outcome| ProbeResult {
            target: "mx".into(),
            port,
            family,
            outcome,
            address: Some(if family == Family::Ipv4 {
                "198.19.0.25".parse().unwrap()
            } else {
                "2001:db8:ffff::25".parse().unwrap()
            }),
            ..Default::default()
        };
        let v = verdict(&[
            r(25, Family::Ipv4, Outcome::Timeout),
            r(25, Family::Ipv6, Outcome::Timeout),
            r(2525, Family::Ipv4, Outcome::Ok),
            r(2525, Family::Ipv6, Outcome::Timeout),
            r(443, Family::Ipv4, Outcome::Ok),
            r(443, Family::Ipv6, Outcome::Ok),
        ])
        .join("\n");
        assert!(
            v.contains("25 and 2525 over IPv6 time out while 443 answers"),
            "{v}"
        );
        assert!(v.contains("443 and 2525 over IPv4 are fine"), "{v}");
    }
}
