//! `check DOMAIN --mx`: probe where the domain's mail goes instead of the name itself — each MX
//! exchanger, lowest preference first, or the domain's own address when it has no MX records
//! (RFC 5321 §5.1). A domain with a null MX (RFC 7505) accepts no mail and is not probed; a
//! domain whose MX lookup fails gets `dns_failed` rows with the kind the nameservers gave.
//!
//! Every row says which exchanger it is ([`MxTargets::annotation`]: the `mx` field in JSON, the
//! HOST column in the table), and [`MxTargets::notes`] says in words where the mail goes.

use crate::probe::mx::{self, Exchanger, MailRoute};
use crate::probe::now_unix_ms;
use crate::probe::resolve::ResolveError;
use egresswatch_wire::{Family, Level, Outcome, PhaseTimings, ProbeResult};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `--mx` turned the domains into.
#[derive(Debug, Default)]
pub struct MxTargets {
    /// The hosts to probe, each once: every domain's exchangers, lowest preference first.
    pub hosts: Vec<String>,
    /// Which domain's exchanger each host is (the first domain that named it).
    pub exchangers: Vec<Exchanger>,
    /// Domains that publish a null MX.
    pub null_mx: Vec<String>,
    /// Domains whose MX lookup failed.
    pub failed: Vec<String>,
    /// Rows for the domains with nothing to probe (null MX, failed MX lookup).
    pub unprobed: Vec<ProbeResult>,
    /// Where each domain's mail goes, in words, for the table's reader.
    pub notes: Vec<String>,
}

/// The `mx` field of a `check --mx --json` row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JsonMx {
    /// The domain asked about.
    pub domain: String,
    /// The exchanger's MX preference (0 for the implicit MX); null when the MX lookup failed.
    pub preference: Option<u16>,
    /// The domain has no MX records; its own address is probed.
    pub implicit: bool,
    /// The domain publishes a null MX: it accepts no mail and nothing was probed.
    pub null_mx: bool,
}

/// Looks up every domain's MX records at once, within `deadline` each.
pub async fn targets(
    domains: &[String],
    ports: &[u16],
    families: &[Family],
    level: Level,
    deadline: Duration,
) -> MxTargets {
    let mut lookups = tokio::task::JoinSet::new();
    for (at, domain) in domains.iter().enumerate() {
        let domain = domain.clone();
        lookups.spawn(async move {
            let started = Instant::now();
            let route = mx::mail_route(&domain, deadline).await;
            (at, domain, route, started.elapsed())
        });
    }
    let mut routes = Vec::with_capacity(domains.len());
    while let Some(joined) = lookups.join_next().await {
        if let Ok(found) = joined {
            routes.push(found);
        }
    }
    routes.sort_by_key(|(at, ..)| *at);
    let mut out = MxTargets::default();
    for (_, domain, route, took) in routes {
        out.add(&domain, route, took, ports, families, level);
    }
    out
}

impl MxTargets {
    fn add(
        &mut self,
        domain: &str,
        route: Result<MailRoute, ResolveError>,
        took: Duration,
        ports: &[u16],
        families: &[Family],
        level: Level,
    ) {
        let unprobed = |outcome: Outcome, kind, detail: &str| -> Vec<ProbeResult> {
            let mut rows = Vec::new();
            for port in ports {
                for family in families {
                    rows.push(ProbeResult {
                        at_unix_ms: now_unix_ms(),
                        target: domain.to_string(),
                        port: *port,
                        family: *family,
                        level,
                        outcome,
                        timings: PhaseTimings {
                            dns_us: Some(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
                            ..Default::default()
                        },
                        dns_failure: kind,
                        detail: detail.to_string(),
                        ..Default::default()
                    });
                }
            }
            rows
        };
        match route {
            Ok(MailRoute::Exchangers(exchangers)) => {
                self.notes.push(note(domain, &exchangers));
                for exchanger in exchangers {
                    if !self.hosts.contains(&exchanger.host) {
                        self.hosts.push(exchanger.host.clone());
                        self.exchangers.push(exchanger);
                    }
                }
            }
            Ok(MailRoute::NullMx) => {
                let text = format!(
                    "{domain} accepts no mail: it publishes a null MX (\"MX 0 .\", RFC 7505); nothing to probe."
                );
                self.unprobed
                    .extend(unprobed(Outcome::NoAddress, None, &text));
                self.notes.push(text);
                self.null_mx.push(domain.to_string());
            }
            Err(ResolveError::Failed { kind, detail }) => {
                let text = format!("{kind}: {detail}");
                self.unprobed
                    .extend(unprobed(Outcome::DnsFailed, Some(kind), &text));
                self.notes.push(format!(
                    "{domain}: its MX records could not be looked up ({text})."
                ));
                self.failed.push(domain.to_string());
            }
            Err(ResolveError::NoAddress) => {}
        }
    }

    /// Which domain's exchanger a row is.
    pub fn annotation(&self, row: &ProbeResult) -> Option<JsonMx> {
        if let Some(x) = self.exchangers.iter().find(|x| x.host == row.target) {
            return Some(JsonMx {
                domain: x.domain.clone(),
                preference: Some(x.preference),
                implicit: x.implicit,
                null_mx: false,
            });
        }
        if self.null_mx.contains(&row.target) {
            return Some(JsonMx {
                domain: row.target.clone(),
                preference: Some(0),
                implicit: false,
                null_mx: true,
            });
        }
        self.failed.contains(&row.target).then(|| JsonMx {
            domain: row.target.clone(),
            preference: None,
            implicit: false,
            null_mx: false,
        })
    }

    /// The HOST cell of a row in the table: the exchanger with its domain and preference.
    pub fn host_label(&self, row: &ProbeResult) -> String {
        match self.annotation(row) {
            Some(mx) if mx.implicit => format!("{} (no MX)", row.target),
            Some(mx) if mx.null_mx => format!("{} (null MX)", row.target),
            Some(JsonMx {
                domain,
                preference: Some(p),
                ..
            }) => format!("{} (MX {p} of {domain})", row.target),
            _ => row.target.clone(),
        }
    }
}

/// "lab.test: mail goes to mx1.lab.test (MX 10), then mx2.lab.test (MX 20)."
fn note(domain: &str, exchangers: &[Exchanger]) -> String {
    match exchangers {
        [only] if only.implicit => format!(
            "{domain} has no MX records: mail goes to the domain's own address (RFC 5321 §5.1)."
        ),
        _ => {
            let listed: Vec<String> = exchangers
                .iter()
                .map(|x| format!("{} (MX {})", x.host, x.preference))
                .collect();
            format!("{domain}: mail goes to {}.", listed.join(", then "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::DnsFailure;

    fn exchanger(domain: &str, host: &str, preference: u16, implicit: bool) -> Exchanger {
        Exchanger {
            domain: domain.into(),
            host: host.into(),
            preference,
            implicit,
        }
    }

    fn row(target: &str) -> ProbeResult {
        ProbeResult {
            target: target.into(),
            port: 25,
            ..Default::default()
        }
    }

    fn built() -> MxTargets {
        let mut t = MxTargets::default();
        let one = Duration::from_millis(1);
        let (ports, families) = ([25], [Family::Ipv4, Family::Ipv6]);
        let add =
            |t: &mut MxTargets, d: &str, r| t.add(d, r, one, &ports, &families, Level::Connect);
        add(
            &mut t,
            "lab.test",
            Ok(MailRoute::Exchangers(vec![
                exchanger("lab.test", "mx1.lab.test", 10, false),
                exchanger("lab.test", "mx2.lab.test", 20, false),
            ])),
        );
        add(
            &mut t,
            "other.test",
            Ok(MailRoute::Exchangers(vec![exchanger(
                "other.test",
                "mx1.lab.test",
                5,
                false,
            )])),
        );
        add(
            &mut t,
            "nomx.test",
            Ok(MailRoute::Exchangers(vec![exchanger(
                "nomx.test",
                "nomx.test",
                0,
                true,
            )])),
        );
        add(&mut t, "null.test", Ok(MailRoute::NullMx));
        add(
            &mut t,
            "gone.test",
            Err(ResolveError::Failed {
                kind: DnsFailure::Nxdomain,
                detail: "MX lookup of gone.test: no such domain".into(),
            }),
        );
        t
    }

    #[test]
    fn each_exchanger_is_probed_once_and_labelled_with_its_domain() {
        let t = built();
        assert_eq!(t.hosts, ["mx1.lab.test", "mx2.lab.test", "nomx.test"]);
        assert_eq!(
            t.host_label(&row("mx2.lab.test")),
            "mx2.lab.test (MX 20 of lab.test)"
        );
        assert_eq!(
            t.host_label(&row("mx1.lab.test")),
            "mx1.lab.test (MX 10 of lab.test)"
        );
        assert_eq!(t.host_label(&row("nomx.test")), "nomx.test (no MX)");
        assert_eq!(
            t.annotation(&row("nomx.test")),
            Some(JsonMx {
                domain: "nomx.test".into(),
                preference: Some(0),
                implicit: true,
                null_mx: false
            })
        );
        assert_eq!(
            t.notes[0],
            "lab.test: mail goes to mx1.lab.test (MX 10), then mx2.lab.test (MX 20)."
        );
        assert!(t.notes[2].contains("no MX records: mail goes to the domain's own address"));
    }

    #[test]
    fn null_mx_and_failed_lookups_are_rows_without_a_probe() {
        let t = built();
        // One row per port and family for each.
        assert_eq!(t.unprobed.len(), 4);
        let null: Vec<&ProbeResult> = t
            .unprobed
            .iter()
            .filter(|r| r.target == "null.test")
            .collect();
        assert!(null.iter().all(|r| r.outcome == Outcome::NoAddress));
        assert!(null[0].detail.contains("accepts no mail"));
        assert!(t.annotation(null[0]).unwrap().null_mx);
        let gone: Vec<&ProbeResult> = t
            .unprobed
            .iter()
            .filter(|r| r.target == "gone.test")
            .collect();
        assert!(gone.iter().all(
            |r| r.outcome == Outcome::DnsFailed && r.dns_failure == Some(DnsFailure::Nxdomain)
        ));
        assert_eq!(t.annotation(gone[0]).unwrap().preference, None);
    }
}
