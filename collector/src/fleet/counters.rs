//! The fleet hub's counters: the events raised by kind and scope, and how the outbox's alert
//! deliveries ended (the cells' gauges are in [`super::gauges`]).

use crate::events::Event;
use crate::metrics::{label, Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Default)]
pub struct FleetCounters {
    pub events: Family<Labels, Counter>,
    /// Outbox deliveries by how they ended (`delivered`, `failed`: given up).
    pub deliveries: Family<Labels, Counter>,
}

impl FleetCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> FleetCounters {
        let counters = FleetCounters {
            events: metrics.registered("egresswatch_events", "Events raised by the detector"),
            deliveries: metrics.registered(
                "egresswatch_outbox_deliveries",
                "Alert deliveries from the outbox, by outcome",
            ),
        };
        for outcome in ["delivered", "failed"] {
            let _ = counters
                .deliveries
                .get_or_create(&label("outcome", outcome));
        }
        counters
    }

    pub fn delivery(&self, outcome: &str) {
        self.deliveries
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// `n` deliveries given up at once (too old under the retry policy).
    pub fn deliveries_failed(&self, n: u64) {
        self.deliveries
            .get_or_create(&label("outcome", "failed"))
            .inc_by(n);
    }

    pub fn count_event(&self, e: &Event) {
        self.events
            .get_or_create(&vec![
                ("kind".to_string(), e.kind.as_str().to_string()),
                ("scope".to_string(), e.scope.as_str().to_string()),
            ])
            .inc();
    }
}
