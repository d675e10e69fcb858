//! The live provider × port policy matrix: the freshest result per (agent, target, port,
//! family), rolled up by provider, account, region and agent into cells that say `open`,
//! `blocked`, `partial` or `unknown`. The families are judged apart and then combined, so the
//! both-families view never shows `open` where one family is blocked: such a cell is `partial`
//! and its `families` say which. A plain state machine: results and the clock go in, the
//! `/api/matrix` view comes out; no I/O, no wall clock.

pub mod mail;

use crate::clock::rfc3339;
use crate::identity::{AgentMeta, KnownAgent, SeriesKey};
use crate::providers::{contradicts, CellDoc, Policies};
use egresswatch_wire::{Family, Outcome, ProbeResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The ports shown first, in this order (443 last: the control column).
pub const DEFAULT_PORTS: [u16; 5] = [25, 465, 587, 2525, 443];

/// The control port unless told otherwise: its failure means the agent's network, not a policy.
pub const DEFAULT_CONTROL_PORT: u16 = 443;

/// `[matrix]` in the collector's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixSettings {
    /// Freshness: older results make a cell `unknown` (300 when not set).
    pub fresh_secs: Option<u64>,
}

/// How the matrix judges age, and which column is the control.
#[derive(Debug, Clone)]
pub struct MatrixConfig {
    /// A result older than this no longer counts (its cell turns `unknown`).
    pub fresh_ms: i64,
    /// An agent not heard from for this long is shown as silent.
    pub silent_after_ms: i64,
    /// The port the view names as its control column (the detector's `control_port`).
    pub control_port: u16,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        MatrixConfig {
            fresh_ms: 300_000,
            silent_after_ms: 180_000,
            control_port: DEFAULT_CONTROL_PORT,
        }
    }
}

/// Which address families a view covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyFilter {
    All,
    Ipv4,
    Ipv6,
}

impl FamilyFilter {
    pub fn parse(text: Option<&str>) -> Result<FamilyFilter, String> {
        match text {
            None | Some("") | Some("all") => Ok(FamilyFilter::All),
            Some("ipv4") => Ok(FamilyFilter::Ipv4),
            Some("ipv6") => Ok(FamilyFilter::Ipv6),
            Some(other) => Err(format!(
                "unknown family {other:?} (expected ipv4, ipv6 or all)"
            )),
        }
    }

    fn admits(self, f: Family) -> bool {
        match self {
            FamilyFilter::All => true,
            FamilyFilter::Ipv4 => f == Family::Ipv4,
            FamilyFilter::Ipv6 => f == Family::Ipv6,
        }
    }

    /// The families this view judges, each on its own.
    fn families(self) -> &'static [Family] {
        match self {
            FamilyFilter::All => &[Family::Ipv4, Family::Ipv6],
            FamilyFilter::Ipv4 => &[Family::Ipv4],
            FamilyFilter::Ipv6 => &[Family::Ipv6],
        }
    }
}

/// One cell's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Blocked,
    Partial,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Blocked => "blocked",
            Status::Partial => "partial",
            Status::Unknown => "unknown",
        }
    }

    /// The status of a group from how many of its agents are open and how many failed.
    fn of_counts(ok: u32, failed: u32) -> Status {
        match (ok, failed) {
            (0, 0) => Status::Unknown,
            (_, 0) => Status::Open,
            (0, _) => Status::Blocked,
            _ => Status::Partial,
        }
    }
}

/// Each family's own status for one cell of the both-families view: what `?family=ipv4` and
/// `?family=ipv6` show for the same agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FamilyStatuses {
    pub ipv4: Status,
    pub ipv6: Status,
}

impl FamilyStatuses {
    /// The both-families status: `open` or `blocked` only when every family with fresh results
    /// says so, `unknown` when none has any, `partial` otherwise (one family blocked while the
    /// other is open is the difference the families are kept apart to show).
    pub fn combined(self) -> Status {
        match (self.ipv4, self.ipv6) {
            (Status::Unknown, other) | (other, Status::Unknown) => other,
            (a, b) if a == b => a,
            _ => Status::Partial,
        }
    }
}

/// One cell of `/api/matrix`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub status: Status,
    /// Agents whose path is open (in every family they have fresh results in).
    pub ok: u32,
    /// Agents whose path failed (in at least one family).
    pub failed: u32,
    /// The most common outcome among the agents (`null` when unknown).
    pub outcome: Option<&'static str>,
    pub p50_connect_ms: Option<f64>,
    /// Since when this status holds (as first seen by this collector), RFC 3339.
    pub since: Option<String>,
    /// Each family's own status, in the both-families view where the families differ (`None`
    /// where both say `status`, and in a per-family view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub families: Option<FamilyStatuses>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<Option<CellDoc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_mismatch: Option<bool>,
}

pub type Cells = BTreeMap<String, Cell>;

#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub agent: String,
    pub instance: String,
    pub region: String,
    pub last_seen: String,
    pub silent: bool,
    pub cells: Cells,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionRow {
    pub region: String,
    pub agents: u32,
    pub cells: Cells,
    pub agent_list: Vec<AgentRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountRow {
    pub account: String,
    pub agents: u32,
    pub cells: Cells,
    pub regions: Vec<RegionRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderRow {
    pub provider: String,
    pub agents: u32,
    pub cells: Cells,
    pub accounts: Vec<AccountRow>,
}

/// The whole `/api/matrix` document.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixView {
    pub ports: Vec<u16>,
    /// The control column among `ports` (the page sets it apart).
    pub control_port: u16,
    pub family: FamilyFilter,
    pub generated_at: String,
    pub providers: Vec<ProviderRow>,
    /// Set when the shared database cannot be reached: what the page shows is the last state
    /// known, not live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreOutage>,
}

/// The shared database has been unreachable since `since`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreOutage {
    /// RFC 3339, UTC.
    pub since: String,
    /// The last error, for the operator.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Latest {
    at_ms: i64,
    outcome: Outcome,
    connect_ms: Option<f64>,
}

/// The live matrix.
#[derive(Debug)]
pub struct Matrix {
    config: MatrixConfig,
    agents: BTreeMap<String, KnownAgent>,
    series: BTreeMap<SeriesKey, Latest>,
    ports: BTreeSet<u16>,
    /// Last status seen per cell path and since when: "since" in the view.
    since: HashMap<String, (Status, i64)>,
}

/// What one agent's fresh series in one family say about one port.
struct FamilyVerdict {
    ok: bool,
    outcome: Outcome,
    connects: Vec<f64>,
}

/// Per (agent, port, family): the verdict of that family's fresh series.
type Verdicts = HashMap<(String, u16, Family), FamilyVerdict>;

impl Matrix {
    pub fn new(config: MatrixConfig) -> Self {
        Matrix {
            config,
            agents: BTreeMap::new(),
            series: BTreeMap::new(),
            ports: BTreeSet::new(),
            since: HashMap::new(),
        }
    }

    pub fn config(&self) -> &MatrixConfig {
        &self.config
    }

    /// The agent said something (hello or results): labels and last-seen are refreshed.
    pub fn agent_seen(&mut self, agent: &AgentMeta, now_unix_ms: i64) {
        self.agents
            .insert(agent.agent_id.clone(), KnownAgent::new(agent, now_unix_ms));
    }

    /// Records one result; `at_ms` is the time to judge freshness by (the agent's timestamp, or
    /// the receive time when its clock is not trusted). Older results than the one held are
    /// history only and do not replace it.
    pub fn record(&mut self, agent_id: &str, result: &ProbeResult, at_ms: i64) {
        let key = SeriesKey::of(agent_id, result);
        if let Some(held) = self.series.get(&key) {
            if held.at_ms > at_ms {
                return;
            }
        }
        self.ports.insert(result.port);
        self.series.insert(
            key,
            Latest {
                at_ms,
                outcome: result.outcome,
                connect_ms: result.timings.connect_ms(),
            },
        );
    }

    /// The port list of the view: the defaults, then any other port seen, ascending.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = DEFAULT_PORTS.to_vec();
        ports.extend(self.ports.iter().filter(|p| !DEFAULT_PORTS.contains(p)));
        ports
    }

    /// Builds the `/api/matrix` view at `now` and remembers each cell's status for `since`.
    pub fn view(&mut self, family: FamilyFilter, now_unix_ms: i64) -> MatrixView {
        let ports = self.ports();
        // provider → account → region → agents
        let mut tree: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, Vec<&str>>>> = BTreeMap::new();
        for (id, a) in &self.agents {
            tree.entry(&a.provider)
                .or_default()
                .entry(&a.account)
                .or_default()
                .entry(&a.region)
                .or_default()
                .push(id);
        }
        let verdicts = self.verdicts(family, now_unix_ms, &ports);
        let policies = Policies::embedded();
        let mut since_updates = Vec::new();
        let mut cells_for = |path: String, agents: &[&str], doc_provider: Option<&str>| -> Cells {
            let mut cells = Cells::new();
            for &port in &ports {
                let mut cell = Self::cell(agents, port, family, &verdicts);
                let key = format!("{family:?}|{path}|{port}");
                let since = match self.since.get(&key) {
                    Some((s, at)) if *s == cell.status => *at,
                    _ => now_unix_ms,
                };
                since_updates.push((key, (cell.status, since)));
                if cell.status != Status::Unknown {
                    cell.since = Some(rfc3339(since));
                }
                if let Some(provider) = doc_provider {
                    let doc = policies.doc(provider, port);
                    cell.doc_mismatch = Some(
                        doc.as_ref()
                            .is_some_and(|d| contradicts(d.policy, cell.status.as_str())),
                    );
                    cell.doc = Some(doc);
                }
                cells.insert(port.to_string(), cell);
            }
            cells
        };
        let mut providers = Vec::new();
        for (provider, accounts) in &tree {
            let mut provider_agents = Vec::new();
            let mut account_rows = Vec::new();
            for (account, regions) in accounts {
                let mut account_agents = Vec::new();
                let mut region_rows = Vec::new();
                for (region, agents) in regions {
                    let mut agent_list = Vec::new();
                    for &agent in agents {
                        let Some(a) = self.agents.get(agent) else {
                            continue;
                        };
                        agent_list.push(AgentRow {
                            agent: agent.to_string(),
                            instance: a.instance.clone(),
                            region: a.region.clone(),
                            last_seen: rfc3339(a.last_seen_ms),
                            silent: now_unix_ms - a.last_seen_ms > self.config.silent_after_ms,
                            cells: cells_for(format!("agent|{agent}"), &[agent], None),
                        });
                    }
                    region_rows.push(RegionRow {
                        region: region.to_string(),
                        agents: agents.len() as u32,
                        cells: cells_for(
                            format!("region|{provider}|{account}|{region}"),
                            agents,
                            None,
                        ),
                        agent_list,
                    });
                    account_agents.extend_from_slice(agents);
                }
                account_rows.push(AccountRow {
                    account: account.to_string(),
                    agents: account_agents.len() as u32,
                    cells: cells_for(
                        format!("account|{provider}|{account}"),
                        &account_agents,
                        None,
                    ),
                    regions: region_rows,
                });
                provider_agents.extend(account_agents);
            }
            providers.push(ProviderRow {
                provider: provider.to_string(),
                agents: provider_agents.len() as u32,
                cells: cells_for(
                    format!("provider|{provider}"),
                    &provider_agents,
                    Some(provider),
                ),
                accounts: account_rows,
            });
        }
        for (k, v) in since_updates {
            self.since.insert(k, v);
        }
        MatrixView {
            ports,
            control_port: self.config.control_port,
            family,
            generated_at: rfc3339(now_unix_ms),
            providers,
            store: None,
        }
    }

    /// Per (agent, port, family): what the agent's fresh series in that family say. An agent
    /// is open on a port in a family when any of its targets answers there (one dead
    /// destination does not close a port); failed when every fresh target fails. The families
    /// are never pooled here: an answer over IPv6 says nothing about IPv4. `no_address` is no
    /// evidence either way.
    fn verdicts(&self, family: FamilyFilter, now: i64, ports: &[u16]) -> Verdicts {
        let mut grouped: HashMap<(String, u16, Family), Vec<&Latest>> = HashMap::new();
        for (k, l) in &self.series {
            if !family.admits(k.family)
                || !ports.contains(&k.port)
                || l.outcome == Outcome::NoAddress
                || now - l.at_ms > self.config.fresh_ms
            {
                continue;
            }
            grouped
                .entry((k.agent.clone(), k.port, k.family))
                .or_default()
                .push(l);
        }
        grouped
            .into_iter()
            .map(|(key, latest)| {
                let ok = latest.iter().any(|l| l.outcome == Outcome::Ok);
                let outcome = if ok {
                    Outcome::Ok
                } else {
                    mode(latest.iter().map(|l| l.outcome)).unwrap_or(Outcome::Timeout)
                };
                let connects = latest.iter().filter_map(|l| l.connect_ms).collect();
                (
                    key,
                    FamilyVerdict {
                        ok,
                        outcome,
                        connects,
                    },
                )
            })
            .collect()
    }

    /// One cell over a group of agents. Each family is counted on its own; an agent counts as
    /// open when it is open in every family it has fresh results in, and its outcome is then
    /// `ok`, else the most common outcome of its failing families.
    fn cell(agents: &[&str], port: u16, family: FamilyFilter, verdicts: &Verdicts) -> Cell {
        let (mut ok, mut failed) = (0u32, 0u32);
        let mut per_family: BTreeMap<Family, (u32, u32)> = BTreeMap::new();
        let mut outcomes = Vec::new();
        let mut connects = Vec::new();
        for &agent in agents {
            let seen: Vec<&FamilyVerdict> = family
                .families()
                .iter()
                .filter_map(|&f| {
                    let v = verdicts.get(&(agent.to_string(), port, f))?;
                    let counts = per_family.entry(f).or_default();
                    if v.ok {
                        counts.0 += 1;
                    } else {
                        counts.1 += 1;
                    }
                    Some(v)
                })
                .collect();
            if seen.is_empty() {
                continue;
            }
            if seen.iter().all(|v| v.ok) {
                ok += 1;
                outcomes.push(Outcome::Ok);
            } else {
                failed += 1;
                let failing = seen.iter().filter(|v| !v.ok).map(|v| v.outcome);
                outcomes.extend(mode(failing));
            }
            for v in seen {
                connects.extend_from_slice(&v.connects);
            }
        }
        let status_of = |f: Family| {
            let (ok, failed) = per_family.get(&f).copied().unwrap_or_default();
            Status::of_counts(ok, failed)
        };
        let (status, families) = if family == FamilyFilter::All {
            let each = FamilyStatuses {
                ipv4: status_of(Family::Ipv4),
                ipv6: status_of(Family::Ipv6),
            };
            // Where the families agree they both say `status`: the matrix is pushed whole on
            // every change, so the cell says nothing more.
            (each.combined(), (each.ipv4 != each.ipv6).then_some(each))
        } else {
            (Status::of_counts(ok, failed), None)
        };
        Cell {
            status,
            ok,
            failed,
            outcome: mode(outcomes.into_iter()).map(|o| o.as_str()),
            p50_connect_ms: median(&mut connects),
            since: None,
            families,
            doc: None,
            doc_mismatch: None,
        }
    }
}

/// The most common outcome; ties go to the lowest code, so the answer is stable.
fn mode(outcomes: impl Iterator<Item = Outcome>) -> Option<Outcome> {
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, c)| *c == best).map(|(o, _)| o)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let m = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((m * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::{FamilyStatuses, Status};
    use Status::{Blocked as B, Open as O, Partial as P, Unknown as U};

    #[test]
    fn both_families_are_open_or_blocked_only_when_each_family_is() {
        let both = |ipv4, ipv6| FamilyStatuses { ipv4, ipv6 }.combined();
        assert_eq!(both(O, O), O);
        assert_eq!(both(B, B), B);
        assert_eq!(both(P, P), P);
        assert_eq!(both(U, U), U);
        // A family with no fresh results is no evidence either way.
        assert_eq!(both(O, U), O);
        assert_eq!(both(U, B), B);
        // The families disagree: never open, never blocked.
        assert_eq!(both(B, O), P);
        assert_eq!(both(O, B), P);
        assert_eq!(both(P, O), P);
        assert_eq!(both(B, P), P);
    }
}
