//! The matrix's cells as gauges: `egresswatch_cell_status{provider,account,port,family,status}`
//! and `egresswatch_cell_agents{provider,account,port,family,state}`, one cell per provider,
//! account, port and family (IPv4 and IPv6 each judged on its own, as `?family=` shows them).
//!
//! Status is a state set, as Prometheus' conventions (and OpenMetrics' StateSet) have it for an
//! enumeration: one series per status, 1 for the cell's current one and 0 for the others. That
//! keeps queries plain (`egresswatch_cell_status{status="blocked"} == 1`, `sum by (status)`) where
//! a number standing for a status could not be summed or averaged meaningfully.
//!
//! Cardinality is bounded: per provider at most [`MAX_ACCOUNTS`] accounts are exported by name
//! (those with the most agents, then by name); the rest are folded into one `account="_other"`
//! cell whose agents are summed and whose status follows from them. A label set no longer
//! exported (an account folded away) is removed, not left at its last value.

use crate::history::status_of;
use crate::matrix::{MatrixView, Status};
use crate::metrics::{label_value, Labels, Metrics};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// Most accounts per provider exported under their own name.
pub const MAX_ACCOUNTS: usize = 50;
/// The account label of the cell the accounts beyond [`MAX_ACCOUNTS`] are folded into.
pub const OTHER_ACCOUNTS: &str = "_other";

const STATUSES: [&str; 4] = ["open", "blocked", "partial", "unknown"];

/// One exported cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSample {
    pub provider: String,
    pub account: String,
    pub port: String,
    pub family: &'static str,
    pub status: &'static str,
    pub ok: u32,
    pub failed: u32,
}

fn status_str(s: Status) -> &'static str {
    s.as_str()
}

/// The cells to export from per-family views of the matrix (`family` names the view).
pub fn cell_samples(views: &[(&'static str, &MatrixView)], max_accounts: usize) -> Vec<CellSample> {
    let mut out = Vec::new();
    for (family, view) in views {
        for p in &view.providers {
            let mut accounts: Vec<_> = p.accounts.iter().collect();
            accounts.sort_by(|a, b| b.agents.cmp(&a.agents).then(a.account.cmp(&b.account)));
            let (named, folded) = accounts.split_at(accounts.len().min(max_accounts));
            for a in named {
                for (port, cell) in &a.cells {
                    out.push(CellSample {
                        provider: p.provider.clone(),
                        account: a.account.clone(),
                        port: port.clone(),
                        family,
                        status: status_str(cell.status),
                        ok: cell.ok,
                        failed: cell.failed,
                    });
                }
            }
            let mut other: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
            for a in folded {
                for (port, cell) in &a.cells {
                    let sum = other.entry(port).or_default();
                    sum.0 += cell.ok;
                    sum.1 += cell.failed;
                }
            }
            for (port, (ok, failed)) in other {
                out.push(CellSample {
                    provider: p.provider.clone(),
                    account: OTHER_ACCOUNTS.to_string(),
                    port: port.to_string(),
                    family,
                    status: status_of(u64::from(ok), u64::from(failed)),
                    ok,
                    failed,
                });
            }
        }
    }
    out
}

#[derive(Clone, Debug, Default)]
pub struct CellGauges {
    status: Family<Labels, Gauge>,
    agents: Family<Labels, Gauge>,
    exported: Arc<Mutex<HashSet<Labels>>>,
}

impl CellGauges {
    pub fn register(metrics: &Metrics) -> CellGauges {
        CellGauges {
            status: metrics.registered(
                "egresswatch_cell_status",
                "Provider/account x port x family cell: 1 for its current status (open, blocked, partial, unknown), 0 for the others",
            ),
            agents: metrics.registered(
                "egresswatch_cell_agents",
                "Provider/account x port x family cell: agents whose path is ok or failed",
            ),
            exported: Arc::default(),
        }
    }

    /// Sets every gauge from `samples` and removes the label sets no longer among them.
    pub fn set(&self, samples: &[CellSample]) {
        let mut now: HashSet<Labels> = HashSet::new();
        for s in samples {
            let base = |name: &str, value: &str| -> Labels {
                vec![
                    ("provider".to_string(), label_value(&s.provider)),
                    ("account".to_string(), label_value(&s.account)),
                    ("port".to_string(), s.port.clone()),
                    ("family".to_string(), s.family.to_string()),
                    (name.to_string(), value.to_string()),
                ]
            };
            for status in STATUSES {
                let labels = base("status", status);
                self.status
                    .get_or_create(&labels)
                    .set(i64::from(status == s.status));
                now.insert(labels);
            }
            for (state, n) in [("ok", s.ok), ("failed", s.failed)] {
                let labels = base("state", state);
                self.agents.get_or_create(&labels).set(i64::from(n));
                now.insert(labels);
            }
        }
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        for gone in exported.difference(&now) {
            if gone.iter().any(|(k, _)| k == "status") {
                self.status.remove(gone);
            } else {
                self.agents.remove(gone);
            }
        }
        *exported = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgentMeta;
    use crate::matrix::{FamilyFilter, Matrix, MatrixConfig};
    use egresswatch_wire::{Family as WireFamily, Labels as WireLabels, Outcome, ProbeResult};

    fn matrix_with(accounts: usize) -> Matrix {
        let mut m = Matrix::new(MatrixConfig::default());
        for a in 0..accounts {
            let agent = AgentMeta {
                agent_id: format!("g{a}"),
                labels: WireLabels {
                    provider: "gcp".into(),
                    account: format!("acct-{a:02}"),
                    ..Default::default()
                },
                agent_version: "t".into(),
            };
            m.agent_seen(&agent, 1_000);
            for (seq, family) in [(1, WireFamily::Ipv4), (2, WireFamily::Ipv6)] {
                let r = ProbeResult {
                    seq,
                    at_unix_ms: 1_000,
                    target: "mx".into(),
                    port: 25,
                    family,
                    // Even accounts blocked over IPv4; IPv6 open everywhere.
                    outcome: if a % 2 == 0 && family == WireFamily::Ipv4 {
                        Outcome::Timeout
                    } else {
                        Outcome::Ok
                    },
                    ..Default::default()
                };
                m.record(&agent.agent_id, &r, 1_000);
            }
        }
        m
    }

    #[test]
    fn cells_per_account_and_family_with_the_accounts_beyond_the_cap_folded() {
        let mut m = matrix_with(5);
        let v4 = m.view(FamilyFilter::Ipv4, 2_000);
        let v6 = m.view(FamilyFilter::Ipv6, 2_000);
        let samples = cell_samples(&[("ipv4", &v4), ("ipv6", &v6)], 3);
        let port25: Vec<_> = samples
            .iter()
            .filter(|s| s.port == "25")
            .map(|s| (s.family, s.account.as_str(), s.status, s.ok, s.failed))
            .collect();
        assert_eq!(
            port25,
            vec![
                ("ipv4", "acct-00", "blocked", 0, 1),
                ("ipv4", "acct-01", "open", 1, 0),
                ("ipv4", "acct-02", "blocked", 0, 1),
                ("ipv4", "_other", "partial", 1, 1),
                ("ipv6", "acct-00", "open", 1, 0),
                ("ipv6", "acct-01", "open", 1, 0),
                ("ipv6", "acct-02", "open", 1, 0),
                ("ipv6", "_other", "open", 2, 0),
            ]
        );
    }

    #[test]
    fn label_sets_no_longer_exported_are_removed() {
        let metrics = Metrics::new();
        let gauges = CellGauges::register(&metrics);
        let mut m = matrix_with(4);
        let v4 = m.view(FamilyFilter::Ipv4, 2_000);
        gauges.set(&cell_samples(&[("ipv4", &v4)], 10));
        let text = metrics.render();
        assert!(text.contains(
            "egresswatch_cell_status{provider=\"gcp\",account=\"acct-03\",port=\"25\",family=\"ipv4\",status=\"open\"} 1"
        ), "{text}");
        gauges.set(&cell_samples(&[("ipv4", &v4)], 2));
        let text = metrics.render();
        assert!(!text.contains("acct-03"), "{text}");
        assert!(text.contains(
            "egresswatch_cell_agents{provider=\"gcp\",account=\"_other\",port=\"25\",family=\"ipv4\",state=\"failed\"} 1"
        ), "{text}");
    }
}
