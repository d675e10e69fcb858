//! Delivery: one task and one bounded queue per sink. [`Alerts::enqueue`] never waits — it
//! applies the sink's rule and dedupe and `try_send`s; a full queue drops the event and counts
//! it. Each worker retries with exponential backoff, logs and counts what finally fails, and for
//! Alertmanager re-sends firing alerts periodically so they do not time out there.

use super::{format, Dedupe, Rule, SinkConfig, SinkKind};
use crate::error::CollectorError;
use crate::events::{now_unix_ms, Event};
use crate::metrics::{label, Labels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// Per-sink delivery counters (label `sink`).
#[derive(Clone, Default, Debug)]
pub struct AlertCounters {
    pub sent: Family<Labels, Counter>,
    pub failed: Family<Labels, Counter>,
    pub dropped: Family<Labels, Counter>,
}

impl AlertCounters {
    /// New counters, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> AlertCounters {
        AlertCounters {
            sent: metrics.registered("egresswatch_alerts_sent", "Alerts delivered per sink"),
            failed: metrics.registered(
                "egresswatch_alert_failures",
                "Alerts that failed after every retry, per sink",
            ),
            dropped: metrics.registered(
                "egresswatch_alerts_dropped",
                "Alerts dropped because the sink's queue was full",
            ),
        }
    }
}

fn sink_label(name: &str) -> Labels {
    label("sink", name)
}

struct SinkHandle {
    name: String,
    rule: Rule,
    dedupe: Dedupe,
    tx: mpsc::Sender<Event>,
}

/// The dispatcher: hand it events, it routes them to the sinks' queues.
pub struct Alerts {
    sinks: Vec<SinkHandle>,
    counters: AlertCounters,
}

impl Alerts {
    /// Validates the sink configs and starts one worker per sink on the current tokio runtime.
    pub fn start(
        configs: &[SinkConfig],
        counters: AlertCounters,
    ) -> Result<Alerts, CollectorError> {
        let mut sinks = Vec::new();
        for (i, cfg) in configs.iter().enumerate() {
            let url = reqwest::Url::parse(&cfg.url).map_err(|e| CollectorError::Config {
                path: format!("alerts[{i}].url"),
                reason: format!("{:?} is not a URL: {e}", cfg.url),
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(CollectorError::Config {
                    path: format!("alerts[{i}].url"),
                    reason: "must be http:// or https://".into(),
                });
            }
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
                .connect_timeout(Duration::from_secs(cfg.timeout_secs.clamp(1, 10)))
                .build()
                .map_err(|e| CollectorError::Config {
                    path: format!("alerts[{i}]"),
                    reason: format!("HTTP client: {e}"),
                })?;
            let target = match cfg.kind {
                SinkKind::Alertmanager => {
                    let base = cfg.url.trim_end_matches('/');
                    let url = format!("{base}/api/v2/alerts");
                    reqwest::Url::parse(&url).map_err(|e| CollectorError::Config {
                        path: format!("alerts[{i}].url"),
                        reason: e.to_string(),
                    })?
                }
                _ => url,
            };
            let (tx, rx) = mpsc::channel(cfg.queue.max(1));
            let name = cfg.display_name();
            let worker = Worker {
                name: name.clone(),
                kind: cfg.kind,
                url: target,
                client,
                retries: cfg.retries,
                backoff: Duration::from_millis(cfg.backoff_ms.max(1)),
                resend: Duration::from_secs(cfg.resend_secs.max(1)),
                counters: counters.clone(),
            };
            // Touch the counters so every sink shows up in /metrics from the start.
            let _ = counters.sent.get_or_create(&sink_label(&name));
            let _ = counters.failed.get_or_create(&sink_label(&name));
            let _ = counters.dropped.get_or_create(&sink_label(&name));
            let span = tracing::info_span!("alert_sink", sink = %name, kind = cfg.kind.as_str());
            tokio::spawn(tracing::Instrument::instrument(worker.run(rx), span));
            sinks.push(SinkHandle {
                name,
                rule: cfg.rule(),
                dedupe: Dedupe::default(),
                tx,
            });
        }
        Ok(Alerts { sinks, counters })
    }

    /// A dispatcher with no sinks.
    pub fn none() -> Alerts {
        Alerts {
            sinks: Vec::new(),
            counters: AlertCounters::default(),
        }
    }

    /// Routes one event to every sink whose rule admits it. Never waits.
    pub fn enqueue(&self, event: &Event) {
        for sink in &self.sinks {
            if !sink.rule.admits(event) || !sink.dedupe.admit(event) {
                continue;
            }
            if let Err(e) = sink.tx.try_send(event.clone()) {
                self.counters
                    .dropped
                    .get_or_create(&sink_label(&sink.name))
                    .inc();
                tracing::warn!(sink = %sink.name, "alert queue full or closed, event dropped: {e}");
            }
        }
    }
}

struct Worker {
    name: String,
    kind: SinkKind,
    url: reqwest::Url,
    client: reqwest::Client,
    retries: u32,
    backoff: Duration,
    resend: Duration,
    counters: AlertCounters,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        // Alertmanager: firing alerts by identity, re-sent so they stay firing.
        let mut firing: HashMap<String, Value> = HashMap::new();
        let mut resend = tokio::time::interval(self.resend);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resend.tick().await;
        loop {
            tokio::select! {
                received = rx.recv() => {
                    let Some(event) = received else { break };
                    let body = match self.kind {
                        SinkKind::Webhook => format::webhook(&event),
                        SinkKind::Slack => format::slack(&event),
                        SinkKind::Alertmanager => {
                            let alert = format::alertmanager(&event, now_unix_ms());
                            let id = Value::Object(format::alert_labels(&event)).to_string();
                            if format::fires(&event) {
                                firing.insert(id, alert.clone());
                            } else {
                                firing.remove(&id);
                            }
                            Value::Array(vec![alert])
                        }
                    };
                    self.deliver(&body).await;
                }
                _ = resend.tick(), if self.kind == SinkKind::Alertmanager && !firing.is_empty() => {
                    let body = Value::Array(firing.values().cloned().collect());
                    self.deliver(&body).await;
                }
            }
        }
    }

    async fn deliver(&self, body: &Value) {
        let label = sink_label(&self.name);
        let mut delay = self.backoff;
        for attempt in 0..=self.retries {
            let outcome = self.client.post(self.url.clone()).json(body).send().await;
            match outcome {
                Ok(resp) if resp.status().is_success() => {
                    self.counters.sent.get_or_create(&label).inc();
                    return;
                }
                Ok(resp) => {
                    tracing::warn!(sink = %self.name, attempt, status = %resp.status(), "alert sink answered with an error");
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, attempt, "alert sink unreachable: {e}");
                }
            }
            if attempt < self.retries {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(Duration::from_secs(60));
            }
        }
        self.counters.failed.get_or_create(&label).inc();
        tracing::error!(sink = %self.name, url = %self.url, "alert delivery failed after {} attempts", self.retries + 1);
    }
}
