//! The one metrics registry behind `/metrics`, and the label helpers every counter shares.
//!
//! Each module owns its counters and registers them here when it is built (ingest's in
//! [`crate::ingest::IngestCounters`], the fleet hub's, the alert sinks', the limits', the HTTP
//! stream's gauge); `http/` only renders the registry. Registration takes `&self`, so the
//! registry can be shared (`Arc<Metrics>`) before every module has registered.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};
use std::sync::Mutex;

/// A metric's label set, as the families here are keyed.
pub type Labels = Vec<(String, String)>;

/// One label `name="value"`, the value escaped with [`label_value`].
pub fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), label_value(value))]
}

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

/// The registry every module registers its counters in.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds `metric` as `name` (counters get `_total` in the exposition) with its help text.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .register(name, help, metric);
    }

    /// A new metric (counter, gauge or labelled family) registered as `name` with its help
    /// text; the returned handle shares its values with the registered one.
    pub fn registered<M: Metric + Clone + Default>(&self, name: &str, help: &str) -> M {
        let metric = M::default();
        self.register(name, help, metric.clone());
        metric
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
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn label_values_cannot_end_early() {
        assert_eq!(label_value("a\"b\\c\nd\u{7}"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            label("sink", "x\"y"),
            vec![("sink".into(), "x\\\"y".into())]
        );
    }

    #[test]
    fn counters_render_with_total_in_both_formats() {
        let metrics = Metrics::new();
        let c = Counter::<u64>::default();
        metrics.register("egresswatch_things", "Things", c.clone());
        c.inc_by(3);
        assert!(metrics.render().contains("egresswatch_things_total 3"));
        assert!(metrics.render().ends_with("# EOF\n"));
        let text = metrics.render_prometheus();
        assert!(
            text.contains("# TYPE egresswatch_things_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
