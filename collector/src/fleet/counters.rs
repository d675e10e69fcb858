//! The fleet hub's event counters: the events raised by kind and scope (the cells' gauges are in
//! [`super::gauges`]).

use crate::events::Event;
use crate::metrics::{Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Default)]
pub struct FleetCounters {
    pub events: Family<Labels, Counter>,
}

impl FleetCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> FleetCounters {
        FleetCounters {
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
}
