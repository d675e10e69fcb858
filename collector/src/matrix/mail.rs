//! The mail-provider view of the matrix (`GET /api/mail-providers`): per mail provider × cloud
//! provider × account, which of the mail provider's SMTP ports work and whether its HTTPS API
//! answers. A series belongs to a mail provider when its target is one of that provider's hosts
//! in the agent's presets (`agent/presets/mail-providers.toml`, the same file the agent embeds):
//! agents probe them through `[[targets]] provider = "…"`. Presets an agent adds from its own
//! file are not known here; their series stay in the port matrix only.
//!
//! Plain data in, view out, like the rest of the matrix: no I/O, no wall clock.

use super::Matrix;
use crate::clock::rfc3339;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const PRESETS: &str = include_str!("../../../agent/presets/mail-providers.toml");

/// What the collector needs of a preset: its name and every host it can probe.
#[derive(Debug, Clone)]
pub struct MailHosts {
    pub name: String,
    pub title: String,
    pub smtp_hosts: Vec<String>,
    pub api_hosts: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    provider: Vec<Entry>,
}

/// The fields read here; the agent validates the rest.
#[derive(Deserialize)]
struct Entry {
    name: String,
    title: String,
    smtp_host: String,
    api_host: String,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    region_hosts: BTreeMap<String, RegionHosts>,
}

#[derive(Deserialize)]
struct RegionHosts {
    smtp_host: Option<String>,
    api_host: Option<String>,
}

/// The presets' hosts, every region's included, read once. Empty when the embedded file does
/// not parse (the agent's and this module's tests make sure it does).
pub fn mail_hosts() -> &'static [MailHosts] {
    static HOSTS: std::sync::OnceLock<Vec<MailHosts>> = std::sync::OnceLock::new();
    HOSTS.get_or_init(read_hosts)
}

fn read_hosts() -> Vec<MailHosts> {
    let Ok(file) = toml::from_str::<File>(PRESETS) else {
        return Vec::new();
    };
    file.provider
        .into_iter()
        .map(|e| {
            let expand = |default: &str, pick: fn(&RegionHosts) -> Option<&String>| {
                let mut hosts: Vec<String> = Vec::new();
                let mut add = |h: String| {
                    let h = h.to_ascii_lowercase();
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                };
                if e.regions.is_empty() {
                    add(default.to_string());
                }
                for region in &e.regions {
                    let host = e
                        .region_hosts
                        .get(region)
                        .and_then(pick)
                        .map(String::as_str)
                        .unwrap_or(default);
                    add(host.replace("{region}", region));
                }
                hosts
            };
            MailHosts {
                smtp_hosts: expand(&e.smtp_host, |r| r.smtp_host.as_ref()),
                api_hosts: expand(&e.api_host, |r| r.api_host.as_ref()),
                name: e.name,
                title: e.title,
            }
        })
        .collect()
}

/// `open` (every fresh result ok), `blocked` (none), `partial` (some), as in the port matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    Open,
    Blocked,
    Partial,
}

/// One port's fresh results over the row's agents and both families.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailCell {
    pub status: MailStatus,
    pub ok: usize,
    pub failed: usize,
}

/// One mail provider as seen from one account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailRow {
    /// The preset's name (`zeptomail`) and title.
    pub mail_provider: String,
    pub title: String,
    /// The agents' cloud provider and account.
    pub provider: String,
    pub account: String,
    pub agents: usize,
    /// The SMTP ports probed, each with its cell.
    pub smtp: BTreeMap<u16, MailCell>,
    /// The SMTP ports open from every agent of the row.
    pub smtp_open_ports: Vec<u16>,
    /// The API host on 443; null when no agent of the row probes it.
    pub api: Option<MailCell>,
    /// True when the API answers from every agent of the row (a failed TLS check counts as not).
    pub api_reachable: bool,
}

/// The whole `/api/mail-providers` document.
#[derive(Debug, Clone, Serialize)]
pub struct MailView {
    pub generated_at: String,
    pub rows: Vec<MailRow>,
}

fn cell(ok: usize, failed: usize) -> MailCell {
    let status = match (ok, failed) {
        (_, 0) => MailStatus::Open,
        (0, _) => MailStatus::Blocked,
        _ => MailStatus::Partial,
    };
    MailCell { status, ok, failed }
}

impl Matrix {
    /// The mail-provider view at `now` from the fresh series.
    pub fn mail_view(&self, hosts: &[MailHosts], now_unix_ms: i64) -> MailView {
        // (mail provider index, provider, account) → (smtp port → (ok, failed), api (ok, failed), agents)
        type Counts = (BTreeMap<u16, (usize, usize)>, (usize, usize), Vec<String>);
        let mut rows: BTreeMap<(usize, String, String), Counts> = BTreeMap::new();
        for (key, latest) in &self.series {
            if now_unix_ms - latest.at_ms > self.config.fresh_ms
                || latest.outcome == egresswatch_wire::Outcome::NoAddress
            {
                continue;
            }
            let Some(agent) = self.agents.get(&key.agent) else {
                continue;
            };
            let target = key.target.to_ascii_lowercase();
            for (i, mail) in hosts.iter().enumerate() {
                let smtp = mail.smtp_hosts.contains(&target);
                let api = key.port == 443 && mail.api_hosts.contains(&target);
                if !smtp && !api {
                    continue;
                }
                let row = rows
                    .entry((i, agent.provider.clone(), agent.account.clone()))
                    .or_default();
                if !row.2.contains(&key.agent) {
                    row.2.push(key.agent.clone());
                }
                let counts = if api {
                    &mut row.1
                } else {
                    row.0.entry(key.port).or_default()
                };
                if latest.outcome.is_failure() {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                }
            }
        }
        let rows = rows
            .into_iter()
            .map(|((i, provider, account), (smtp, api, agents))| {
                let smtp: BTreeMap<u16, MailCell> = smtp
                    .into_iter()
                    .map(|(p, (ok, f))| (p, cell(ok, f)))
                    .collect();
                let api = (api != (0, 0)).then(|| cell(api.0, api.1));
                MailRow {
                    mail_provider: hosts[i].name.clone(),
                    title: hosts[i].title.clone(),
                    provider,
                    account,
                    agents: agents.len(),
                    smtp_open_ports: smtp
                        .iter()
                        .filter(|(_, c)| c.status == MailStatus::Open)
                        .map(|(p, _)| *p)
                        .collect(),
                    smtp,
                    api_reachable: api.as_ref().is_some_and(|c| c.status == MailStatus::Open),
                    api,
                }
            })
            .collect();
        MailView {
            generated_at: rfc3339(now_unix_ms),
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgentMeta;
    use crate::matrix::MatrixConfig;
    use egresswatch_wire::{Family, Labels, Outcome, ProbeResult};

    #[test]
    fn the_presets_hosts_are_known_with_their_regions() {
        let hosts = mail_hosts();
        let find = |n: &str| hosts.iter().find(|h| h.name == n).unwrap();
        assert_eq!(find("zeptomail").smtp_hosts, vec!["smtp.zeptomail.com"]);
        assert!(find("mailgun")
            .smtp_hosts
            .contains(&"smtp.eu.mailgun.org".to_string()));
        assert!(find("ses")
            .api_hosts
            .contains(&"email.eu-west-1.amazonaws.com".to_string()));
        assert_eq!(hosts.len(), 8);
    }

    fn agent(id: &str, provider: &str, account: &str) -> AgentMeta {
        AgentMeta {
            agent_id: id.into(),
            labels: Labels {
                provider: provider.into(),
                account: account.into(),
                ..Default::default()
            },
            agent_version: "test".into(),
        }
    }

    fn result(target: &str, port: u16, family: Family, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            target: target.into(),
            port,
            family,
            outcome,
            ..Default::default()
        }
    }

    #[test]
    fn per_account_smtp_ports_and_the_api() {
        let now = 1_000_000_000;
        let mut m = Matrix::new(MatrixConfig::default());
        let blocked = agent("a1", "digitalocean", "team");
        let open = agent("a2", "hetzner", "main");
        for a in [&blocked, &open] {
            m.agent_seen(a, now);
        }
        for f in [Family::Ipv4, Family::Ipv6] {
            m.record(
                "a1",
                &result("smtp.zeptomail.com", 587, f, Outcome::Timeout),
                now,
            );
            m.record(
                "a1",
                &result("smtp.zeptomail.com", 465, f, Outcome::Timeout),
                now,
            );
            m.record("a1", &result("api.zeptomail.com", 443, f, Outcome::Ok), now);
            m.record(
                "a2",
                &result("smtp.zeptomail.com", 587, f, Outcome::Ok),
                now,
            );
            m.record(
                "a2",
                &result("smtp.zeptomail.com", 465, f, Outcome::Ok),
                now,
            );
            m.record(
                "a2",
                &result("api.zeptomail.com", 443, f, Outcome::TlsFailed),
                now,
            );
            // Not a preset's host: not in this view.
            m.record("a2", &result("mx.example.net", 25, f, Outcome::Ok), now);
        }
        // Stale: not counted.
        m.record(
            "a1",
            &result("smtp.zeptomail.com", 2525, Family::Ipv4, Outcome::Ok),
            now - 10_000_000,
        );
        let view = m.mail_view(mail_hosts(), now);
        assert_eq!(view.rows.len(), 2, "{view:#?}");
        let do_row = view.rows.iter().find(|r| r.account == "team").unwrap();
        assert_eq!(do_row.mail_provider, "zeptomail");
        assert_eq!(do_row.smtp.len(), 2);
        assert!(do_row.smtp_open_ports.is_empty());
        assert_eq!(do_row.smtp[&587].status, MailStatus::Blocked);
        assert!(do_row.api_reachable);
        let hz = view.rows.iter().find(|r| r.account == "main").unwrap();
        assert_eq!(hz.smtp_open_ports, vec![465, 587]);
        assert!(!hz.api_reachable);
        assert_eq!(hz.api.as_ref().unwrap().status, MailStatus::Blocked);
        assert_eq!(hz.agents, 1);
    }
}
