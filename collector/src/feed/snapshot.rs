//! The feed snapshot: what a fleet observed of each provider's SMTP policy, aggregated so that
//! it can be published — provider × region × port × family × destination class, with outcome
//! counts over a window, when each state was first and last seen, and how many distinct
//! accounts and agents saw it. Nothing that names a member of the fleet goes in: no agent or
//! account id, no instance name, no address or host name; a destination is only a documented
//! class (a mail-provider preset's name, or `any`), and a cell is published only when at least
//! `k` distinct accounts observed it. The format is a public contract, versioned
//! ([`FORMAT_VERSION`]) and written down in docs/feed.md.
//!
//! Plain functions over stored results (agents and state intervals, read through the store's
//! own methods): no I/O, no clock.

use crate::history::{outcome_status, SeriesInterval};
use crate::identity::{AgentMeta, KnownAgent};
use crate::matrix::mail::mail_hosts;
use egresswatch_wire::Family;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The `format` field of every snapshot.
pub const FORMAT_NAME: &str = "egresswatch-feed";
/// The version this collector writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The destination class of a target that is no mail-provider preset's host.
pub const ANY_DESTINATION: &str = "any";
/// The default privacy threshold: a cell needs this many distinct accounts.
pub const DEFAULT_K: u32 = 3;

/// A whole snapshot (docs/feed.md, "The format").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] for what this collector writes.
    pub version: u32,
    /// The publisher's own name for its feed (`[feed] name`).
    pub feed: String,
    /// When it was made, RFC 3339 UTC; a reader refuses one older than what it already holds.
    pub generated_at: String,
    /// The same instant in Unix milliseconds (what replay is judged by).
    pub generated_at_ms: i64,
    /// The window the observations come from.
    pub window: Window,
    /// The privacy threshold the publisher applied (distinct accounts per cell).
    pub k: u32,
    pub cells: Vec<SnapshotCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: String,
    pub to: String,
}

/// One published cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCell {
    pub provider: String,
    pub region: String,
    pub port: u16,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// A mail-provider preset's name, or `any` (any SMTP destination).
    pub destination: String,
    /// `open`, `blocked` or `partial` over the window's probes (counted ones: `no_address` is
    /// neither).
    pub status: String,
    /// Probes by outcome name.
    pub outcomes: BTreeMap<String, u64>,
    /// Per state (`open`, `blocked`): when it was first and last seen in the window.
    pub states: BTreeMap<String, StateSpan>,
    /// Distinct accounts that observed the cell (at least `k`).
    pub accounts: u32,
    /// Distinct agents that observed the cell.
    pub agents: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpan {
    pub first_seen: String,
    pub last_seen: String,
}

/// What a snapshot is made with.
#[derive(Debug, Clone)]
pub struct BuildParams {
    pub feed: String,
    pub k: u32,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The destination class of a probed host: the preset it belongs to, else [`ANY_DESTINATION`].
/// A host name itself never leaves the collector.
pub fn destination_class(target: &str) -> String {
    let host = target.trim().trim_end_matches('.').to_ascii_lowercase();
    mail_hosts()
        .iter()
        .find(|m| m.smtp_hosts.contains(&host) || m.api_hosts.contains(&host))
        .map(|m| m.name.clone())
        .unwrap_or_else(|| ANY_DESTINATION.to_string())
}

/// A region label as published: one that looks like a provider's region code (lowercase
/// letters, digits, `-` and `_`, at most 32, at least one letter); anything else — a label an
/// operator filled with a name or an address — is published as `unlabelled`.
pub fn region_class(region: &str) -> String {
    let r = region.trim().to_ascii_lowercase();
    let shaped = !r.is_empty()
        && r.len() <= 32
        && r.chars().any(|c| c.is_ascii_lowercase())
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && r.parse::<std::net::IpAddr>().is_err();
    if shaped {
        r
    } else {
        "unlabelled".to_string()
    }
}

#[derive(Default)]
struct Acc {
    outcomes: BTreeMap<String, u64>,
    states: BTreeMap<String, (i64, i64)>,
    accounts: BTreeSet<String>,
    agents: BTreeSet<String>,
}

/// Builds the snapshot of `intervals` (the state runs that held in the window) for `agents`
/// (every agent ever seen, for its region). Cells seen by fewer than `params.k` accounts are
/// left out; an interval of an agent not in `agents` is skipped.
pub fn build(agents: &[AgentMeta], intervals: &[SeriesInterval], params: &BuildParams) -> Snapshot {
    let known: HashMap<&str, KnownAgent> = agents
        .iter()
        .map(|a| (a.agent_id.as_str(), KnownAgent::new(a, 0)))
        .collect();
    let mut cells: BTreeMap<(String, String, u16, Family, String), Acc> = BTreeMap::new();
    for i in intervals {
        let Some(agent) = known.get(i.series.agent.as_str()) else {
            continue;
        };
        let key = (
            agent.provider.clone(),
            region_class(&agent.region),
            i.series.port,
            i.series.family,
            destination_class(&i.series.target),
        );
        let acc = cells.entry(key).or_default();
        *acc.outcomes
            .entry(i.interval.outcome.as_str().to_string())
            .or_default() += i.interval.probes;
        let state = outcome_status(i.interval.outcome);
        if state != "unknown" {
            let first = i.interval.first_ms.max(params.from_ms);
            let last = i.interval.last_ms.min(params.to_ms);
            let span = acc.states.entry(state.to_string()).or_insert((first, last));
            span.0 = span.0.min(first);
            span.1 = span.1.max(last);
        }
        acc.accounts.insert(agent.account.clone());
        acc.agents.insert(i.series.agent.clone());
    }
    let k = params.k.max(1);
    let cells = cells
        .into_iter()
        .filter(|(_, acc)| acc.accounts.len() as u32 >= k)
        .map(|((provider, region, port, family, destination), acc)| {
            let (mut ok, mut failed) = (0u64, 0u64);
            for (name, n) in &acc.outcomes {
                match egresswatch_wire::Outcome::ALL
                    .iter()
                    .find(|o| o.as_str() == name)
                    .map(|o| outcome_status(*o))
                {
                    Some("open") => ok += n,
                    Some("blocked") => failed += n,
                    _ => {}
                }
            }
            SnapshotCell {
                provider,
                region,
                port,
                family: family.as_str().to_string(),
                destination,
                status: crate::history::status_of(ok, failed).to_string(),
                outcomes: acc.outcomes,
                states: acc
                    .states
                    .into_iter()
                    .map(|(s, (first, last))| {
                        (
                            s,
                            StateSpan {
                                first_seen: crate::clock::rfc3339(first),
                                last_seen: crate::clock::rfc3339(last),
                            },
                        )
                    })
                    .collect(),
                accounts: acc.accounts.len() as u32,
                agents: acc.agents.len() as u32,
            }
        })
        .collect();
    Snapshot {
        format: FORMAT_NAME.to_string(),
        version: FORMAT_VERSION,
        feed: params.feed.clone(),
        generated_at: crate::clock::rfc3339(params.to_ms),
        generated_at_ms: params.to_ms,
        window: Window {
            from: crate::clock::rfc3339(params.from_ms),
            to: crate::clock::rfc3339(params.to_ms),
        },
        k,
        cells,
    }
}

/// The bytes published: pretty JSON with a final newline (what is signed).
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(snapshot).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Why a snapshot's bytes (already verified as signed) cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a snapshot at all.
    Garbage(String),
    /// A snapshot of a version this collector does not know.
    UnknownVersion(u64),
}

/// Reads a snapshot: the version is read first, so a newer format is named as such rather
/// than as garbage.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u64,
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Garbage(format!("not a feed snapshot: {e}")))?;
    if head.format != FORMAT_NAME {
        return Err(DecodeError::Garbage(format!(
            "format is {:?}, not {FORMAT_NAME:?}",
            head.format
        )));
    }
    if head.version != u64::from(FORMAT_VERSION) {
        return Err(DecodeError::UnknownVersion(head.version));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Garbage(format!("not a version {FORMAT_VERSION} snapshot: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Interval, SeriesInterval};
    use crate::identity::SeriesKey;
    use egresswatch_wire::{Labels, Outcome};

    fn meta(id: &str, provider: &str, account: &str, region: &str) -> AgentMeta {
        AgentMeta {
            agent_id: id.into(),
            labels: Labels {
                provider: provider.into(),
                account: account.into(),
                region: region.into(),
                instance: format!("{id}-instance"),
            },
            agent_version: "test".into(),
        }
    }

    fn run(
        agent: &str,
        target: &str,
        port: u16,
        outcome: Outcome,
        first: i64,
        last: i64,
        probes: u64,
    ) -> SeriesInterval {
        SeriesInterval {
            series: SeriesKey {
                agent: agent.into(),
                target: target.into(),
                port,
                family: Family::Ipv4,
            },
            provider: "p".into(),
            account: "a".into(),
            interval: Interval {
                first_seq: 1,
                last_seq: probes,
                outcome,
                first_ms: first,
                last_ms: last,
                probes,
                connect: Default::default(),
            },
        }
    }

    fn params(k: u32) -> BuildParams {
        BuildParams {
            feed: "test".into(),
            k,
            from_ms: 1_000,
            to_ms: 100_000,
        }
    }

    #[test]
    fn a_cell_needs_k_distinct_accounts() {
        let agents = vec![
            meta("a1", "hetzner", "acct-1", "fsn1"),
            meta("a2", "hetzner", "acct-1", "fsn1"),
            meta("a3", "hetzner", "acct-2", "fsn1"),
            meta("a4", "hetzner", "acct-3", "fsn1"),
        ];
        let two_accounts = vec![
            run(
                "a1",
                "mx.example.net",
                25,
                Outcome::Timeout,
                2_000,
                9_000,
                5,
            ),
            run(
                "a2",
                "mx.example.net",
                25,
                Outcome::Timeout,
                2_000,
                9_000,
                5,
            ),
            run(
                "a3",
                "mx.example.net",
                25,
                Outcome::Timeout,
                2_000,
                9_000,
                5,
            ),
        ];
        assert!(build(&agents, &two_accounts, &params(3)).cells.is_empty());
        let mut three = two_accounts.clone();
        three.push(run(
            "a4",
            "mx.example.net",
            25,
            Outcome::Timeout,
            3_000,
            8_000,
            2,
        ));
        let snap = build(&agents, &three, &params(3));
        assert_eq!(snap.cells.len(), 1);
        let c = &snap.cells[0];
        assert_eq!((c.accounts, c.agents, c.status.as_str()), (3, 4, "blocked"));
        assert_eq!(c.outcomes.get("timeout"), Some(&17));
        assert_eq!(c.destination, ANY_DESTINATION);
        assert_eq!(c.states["blocked"].first_seen, crate::clock::rfc3339(2_000));
        assert_eq!(c.states["blocked"].last_seen, crate::clock::rfc3339(9_000));
        // k is a setting: two accounts are enough at k = 2.
        assert_eq!(build(&agents, &two_accounts, &params(2)).cells.len(), 1);
    }

    #[test]
    fn states_are_clipped_to_the_window_and_mixed_cells_are_partial() {
        let agents = vec![
            meta("a1", "do", "x", "ams3"),
            meta("a2", "do", "y", "ams3"),
            meta("a3", "do", "z", "ams3"),
        ];
        let runs = vec![
            run("a1", "smtp.sendgrid.net", 587, Outcome::Ok, 0, 50_000, 10),
            run(
                "a2",
                "smtp.sendgrid.net",
                587,
                Outcome::Timeout,
                60_000,
                200_000,
                10,
            ),
            run(
                "a3",
                "smtp.sendgrid.net",
                587,
                Outcome::NoAddress,
                60_000,
                70_000,
                1,
            ),
        ];
        let snap = build(&agents, &runs, &params(3));
        let c = &snap.cells[0];
        assert_eq!(c.destination, "sendgrid");
        assert_eq!(c.status, "partial");
        assert_eq!(c.states["open"].first_seen, crate::clock::rfc3339(1_000));
        assert_eq!(
            c.states["blocked"].last_seen,
            crate::clock::rfc3339(100_000)
        );
        assert!(!c.states.contains_key("unknown"));
        assert_eq!(c.outcomes.get("no_address"), Some(&1));
    }

    #[test]
    fn nothing_naming_the_fleet_is_published() {
        let agents = vec![
            meta("agent-7f3a", "aws", "123456789012", "10.1.2.3"),
            meta("agent-9c1b", "aws", "alice@example.org", "10.1.2.3"),
            meta("agent-00de", "aws", "acct-zeta", "10.1.2.3"),
        ];
        let runs: Vec<_> = ["agent-7f3a", "agent-9c1b", "agent-00de"]
            .iter()
            .map(|a| {
                run(
                    a,
                    "mail.internal.example.com",
                    25,
                    Outcome::Timeout,
                    2_000,
                    3_000,
                    1,
                )
            })
            .collect();
        let bytes = encode(&build(&agents, &runs, &params(3)));
        let text = String::from_utf8(bytes).unwrap();
        for secret in [
            "agent-7f3a",
            "agent-9c1b",
            "agent-00de",
            "123456789012",
            "alice@example.org",
            "acct-zeta",
            "10.1.2.3",
            "instance",
            "mail.internal.example.com",
        ] {
            assert!(!text.contains(secret), "{secret} published in {text}");
        }
        assert!(text.contains("\"region\": \"unlabelled\""));
    }

    #[test]
    fn regions_that_do_not_look_like_region_codes_are_unlabelled() {
        assert_eq!(region_class("eu-central-1"), "eu-central-1");
        assert_eq!(region_class("FSN1"), "fsn1");
        for odd in [
            "10.0.0.1",
            "2001:db8::1",
            "bob's box",
            "",
            "1234",
            &"x".repeat(33),
        ] {
            assert_eq!(region_class(odd), "unlabelled", "{odd}");
        }
    }

    #[test]
    fn decode_names_an_unknown_version_and_garbage() {
        let snap = build(&[], &[], &params(3));
        let bytes = encode(&snap);
        assert_eq!(decode(&bytes), Ok(snap));
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert_eq!(
            decode(newer.as_bytes()),
            Err(DecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            decode(b"\x00\x01garbage"),
            Err(DecodeError::Garbage(_))
        ));
        assert!(matches!(
            decode(br#"{"format":"other","version":1}"#),
            Err(DecodeError::Garbage(_))
        ));
    }
}
