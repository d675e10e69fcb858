//! The fleet hub's metrics: per-cell status gauges of the matrix's provider rows, the agents each
//! cell counts ok or failed, and the events raised by kind and scope.

use crate::events::Event;
use crate::matrix::{MatrixView, Status};
use crate::metrics::{label_value, Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Default)]
pub struct FleetCounters {
    /// 1 for the current status of each (provider, port, status), 0 for the others.
    pub cell_status: Family<Labels, Gauge>,
    /// Agents counted ok / failed per provider cell.
    pub cell_agents: Family<Labels, Gauge>,
    pub events: Family<Labels, Counter>,
}

impl FleetCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> FleetCounters {
        FleetCounters {
            cell_status: metrics.registered(
                "egresswatch_cell_status",
                "Provider x port matrix: 1 for the cell's current status",
            ),
            cell_agents: metrics.registered(
                "egresswatch_cell_agents",
                "Provider x port matrix: agents whose path is ok or failed",
            ),
            events: metrics.registered("egresswatch_events", "Events raised by the detector"),
        }
    }

    pub fn count_event(&self, e: &Event) {
        self.events
            .get_or_create(&vec![
                ("kind".to_string(), e.kind.as_str().to_string()),
                ("scope".to_string(), e.scope.as_str().to_string()),
            ])
            .inc();
    }

    /// Sets the per-cell gauges from a matrix view of the provider rows.
    pub fn set_cells(&self, view: &MatrixView) {
        let family = format!("{:?}", view.family).to_lowercase();
        for p in &view.providers {
            for (port, cell) in &p.cells {
                let base = |extra: (&str, &str)| -> Labels {
                    vec![
                        ("provider".to_string(), label_value(&p.provider)),
                        ("port".to_string(), port.clone()),
                        ("family".to_string(), family.clone()),
                        (extra.0.to_string(), extra.1.to_string()),
                    ]
                };
                for s in [
                    Status::Open,
                    Status::Blocked,
                    Status::Partial,
                    Status::Unknown,
                ] {
                    self.cell_status
                        .get_or_create(&base(("status", s.as_str())))
                        .set(i64::from(s == cell.status));
                }
                self.cell_agents
                    .get_or_create(&base(("state", "ok")))
                    .set(i64::from(cell.ok));
                self.cell_agents
                    .get_or_create(&base(("state", "failed")))
                    .set(i64::from(cell.failed));
            }
        }
    }
}
