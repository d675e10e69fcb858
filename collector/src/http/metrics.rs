//! `/metrics`: one prometheus-client registry holding the ingest counters (incremented by the
//! ingest side through [`IngestCounters`]), per-cell status gauges of the provider rows, an event
//! counter and the alert sinks' delivery counters.

use crate::alerts::AlertCounters;
use crate::events::Event;
use crate::limits::LimitCounters;
use crate::matrix::{MatrixView, Status};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Escapes a label value for the text exposition. prometheus-client writes label values as they
/// are, and provider names come from agents (untrusted): a `"` must not end the value early.
pub fn label_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Counters the QUIC ingest increments. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct IngestCounters {
    /// Sessions accepted (hello welcomed).
    pub sessions: Counter,
    /// Sessions refused (bad certificate, version, labels...).
    pub refusals: Counter,
    /// Batches received.
    pub batches: Counter,
    /// Results newly stored.
    pub results: Counter,
    /// Results received again and dropped as duplicates.
    pub duplicates: Counter,
    /// Frames that failed to decode (the connection was closed).
    pub decode_errors: Counter,
    /// Refusals by reason (`revoked`, `expired`, `bad_version`, ...); see [`IngestCounters::refused`].
    pub refusal_reasons: Family<Labels, Counter>,
    /// The QUIC socket's receive buffer as the kernel granted it (bytes).
    pub udp_receive_buffer_bytes: Gauge,
}

impl IngestCounters {
    /// Counts one refused agent or connection, in the total and under its reason.
    pub fn refused(&self, reason: &str) {
        self.refusals.inc();
        self.refusal_reasons
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub ingest: IngestCounters,
    /// 1 for the current status of each (provider, port, status), 0 for the others.
    pub cell_status: Family<Labels, Gauge>,
    /// Agents counted ok / failed per provider cell.
    pub cell_agents: Family<Labels, Gauge>,
    pub events: Family<Labels, Counter>,
    pub alerts: AlertCounters,
    pub sse_clients: Gauge,
    /// `egresswatch_limit_exceeded_total{limit}`: every bound hit (see [`crate::limits`]).
    pub limits: LimitCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let ingest = IngestCounters::default();
        registry.register(
            "egresswatch_ingest_sessions",
            "Agent sessions welcomed",
            ingest.sessions.clone(),
        );
        registry.register(
            "egresswatch_ingest_refusals",
            "Agent sessions refused",
            ingest.refusals.clone(),
        );
        registry.register(
            "egresswatch_ingest_refusals_by_reason",
            "Agents and connections refused, by reason",
            ingest.refusal_reasons.clone(),
        );
        registry.register(
            "egresswatch_ingest_udp_receive_buffer_bytes",
            "The QUIC socket's receive buffer as the kernel granted it",
            ingest.udp_receive_buffer_bytes.clone(),
        );
        registry.register(
            "egresswatch_ingest_batches",
            "Result batches received",
            ingest.batches.clone(),
        );
        registry.register(
            "egresswatch_ingest_results",
            "Probe results newly stored",
            ingest.results.clone(),
        );
        registry.register(
            "egresswatch_ingest_duplicates",
            "Probe results received again and dropped",
            ingest.duplicates.clone(),
        );
        registry.register(
            "egresswatch_ingest_decode_errors",
            "Frames that failed to decode",
            ingest.decode_errors.clone(),
        );
        let cell_status = Family::<Labels, Gauge>::default();
        registry.register(
            "egresswatch_cell_status",
            "Provider x port matrix: 1 for the cell's current status",
            cell_status.clone(),
        );
        let cell_agents = Family::<Labels, Gauge>::default();
        registry.register(
            "egresswatch_cell_agents",
            "Provider x port matrix: agents whose path is ok or failed",
            cell_agents.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "egresswatch_events",
            "Events raised by the detector",
            events.clone(),
        );
        let alerts = AlertCounters::default();
        registry.register(
            "egresswatch_alerts_sent",
            "Alerts delivered per sink",
            alerts.sent.clone(),
        );
        registry.register(
            "egresswatch_alert_failures",
            "Alerts that failed after every retry, per sink",
            alerts.failed.clone(),
        );
        registry.register(
            "egresswatch_alerts_dropped",
            "Alerts dropped because the sink's queue was full",
            alerts.dropped.clone(),
        );
        let sse_clients = Gauge::default();
        registry.register(
            "egresswatch_sse_clients",
            "Connected /api/stream clients",
            sse_clients.clone(),
        );
        let limits = LimitCounters::default();
        registry.register(
            "egresswatch_limit_exceeded",
            "Times a configured or wire limit was exceeded, per limit",
            limits.family.clone(),
        );
        Metrics {
            limits,
            registry,
            ingest,
            cell_status,
            cell_agents,
            events,
            alerts,
            sse_clients,
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

    /// The Prometheus text format 0.0.4 (for scrapers and tools that do not ask for
    /// OpenMetrics, promtool among them): counters' HELP/TYPE name the `_total` series and
    /// there is no `# EOF`.
    pub fn render_prometheus(&self) -> String {
        let open = self.render();
        let counters: Vec<String> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .map(str::to_string)
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let mut rewritten = None;
            for prefix in ["# HELP ", "# TYPE "] {
                if let Some(rest) = line.strip_prefix(prefix) {
                    let name = rest.split(' ').next().unwrap_or("");
                    if counters.iter().any(|c| c == name) {
                        rewritten = Some(format!("{prefix}{name}_total{}", &rest[name.len()..]));
                    }
                }
            }
            out.push_str(rewritten.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}
