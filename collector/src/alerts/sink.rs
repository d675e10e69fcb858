//! Delivery: one task and one bounded queue per sink. The hub's outbox hands a worker one notice
//! at a time ([`Alerts::dispatch`]) and hears whether it was delivered; [`Alerts::enqueue`] (a
//! send with no outbox behind it) never waits — it applies the sink's rule and dedupe and
//! `try_send`s; a full queue drops the event and counts it. Each worker retries with exponential backoff, logs and counts what finally fails, and for
//! Alertmanager re-sends firing alerts periodically so they do not time out there. Silences,
//! the flapping gate and account silence are decided here, at enqueue, by the pure parts
//! ([`crate::silences`], [`super::gate`]).

use super::firing::Firing;
use super::gate::{Gate, Notice};
use super::{format, Dedupe, Links, Rule, SinkConfig, SinkKind};
use crate::clock::now_unix_ms;
use crate::error::CollectorError;
use crate::events::Event;
use crate::metrics::{label, Labels, Metrics};
use crate::silences::SilenceBook;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Per-sink delivery counters (label `sink`).
#[derive(Clone, Default, Debug)]
pub struct AlertCounters {
    pub sent: Family<Labels, Counter>,
    pub failed: Family<Labels, Counter>,
    pub dropped: Family<Labels, Counter>,
    /// Events a silence kept from the sink.
    pub silenced: Family<Labels, Counter>,
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
            silenced: metrics.registered(
                "egresswatch_alerts_silenced",
                "Events a silence kept from the sink",
            ),
        }
    }
}

fn sink_label(name: &str) -> Labels {
    label("sink", name)
}

struct SinkHandle {
    name: String,
    kind: SinkKind,
    rule: Rule,
    dedupe: Dedupe,
    gate: Mutex<Gate>,
    tx: mpsc::Sender<Job>,
}

/// What a worker is handed: a notice, and who wants to hear whether it was delivered.
struct Job {
    notice: Notice,
    done: Option<oneshot::Sender<bool>>,
}

/// One sink's share of an event: the notice that sink is owed.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The sink's display name.
    pub sink: String,
    pub notice: Notice,
}

/// An event to record and the notices its sinks are owed ([`Alerts::plan`]).
#[derive(Debug, Clone)]
pub struct Planned {
    pub event: Event,
    pub notices: Vec<Routed>,
}

/// Why [`Alerts::dispatch`] could not queue a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchError {
    /// No sink has that name (the config changed since the notice was recorded).
    UnknownSink,
    /// The sink's queue is full; try again later.
    Full,
}

/// The dispatcher: hand it events, it routes them to the sinks' queues.
pub struct Alerts {
    sinks: Vec<SinkHandle>,
    counters: AlertCounters,
    silences: Arc<SilenceBook>,
    links: Arc<Mutex<Links>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alerts {
    /// Validates the sink configs and starts one worker per sink on the current tokio runtime.
    pub fn start(
        configs: &[SinkConfig],
        counters: AlertCounters,
    ) -> Result<Alerts, CollectorError> {
        let mut sinks = Vec::new();
        let links: Arc<Mutex<Links>> = Arc::default();
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
            let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
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
                links: links.clone(),
            };
            // Touch the counters so every sink shows up in /metrics from the start.
            let _ = counters.sent.get_or_create(&sink_label(&name));
            let _ = counters.failed.get_or_create(&sink_label(&name));
            let _ = counters.dropped.get_or_create(&sink_label(&name));
            let _ = counters.silenced.get_or_create(&sink_label(&name));
            let span = tracing::info_span!("alert_sink", sink = %name, kind = cfg.kind.as_str());
            tokio::spawn(tracing::Instrument::instrument(worker.run(rx), span));
            sinks.push(SinkHandle {
                name,
                kind: cfg.kind,
                rule: cfg.rule(),
                dedupe: Dedupe::default(),
                gate: Mutex::new(Gate::new((cfg.flap_hold_secs as i64).saturating_mul(1000))),
                tx,
            });
        }
        Ok(Alerts {
            sinks,
            counters,
            silences: Arc::default(),
            links,
        })
    }

    /// A dispatcher with no sinks.
    pub fn none() -> Alerts {
        Alerts {
            sinks: Vec::new(),
            counters: AlertCounters::default(),
            silences: Arc::default(),
            links: Arc::default(),
        }
    }

    /// Silences to honour (the API changes the same book).
    pub fn with_silences(mut self, silences: Arc<SilenceBook>) -> Alerts {
        self.silences = silences;
        self
    }

    /// Where bodies link to (`http.public_url`).
    pub fn with_links(self, links: Links) -> Alerts {
        *lock(&self.links) = links;
        self
    }

    pub fn silences(&self) -> &Arc<SilenceBook> {
        &self.silences
    }

    /// The silence covering `e` when it happened, for `Event::silenced_by`.
    pub fn silenced_by(&self, e: &Event) -> Option<String> {
        self.silences.silenced_by(e, e.at_unix_ms)
    }

    /// Routes one event to every sink whose rule admits it. Never waits on a sink.
    pub fn enqueue(&self, event: &Event) {
        for routed in self.route(event) {
            let sink = routed.sink.clone();
            if let Err(e) = self.dispatch(&routed.sink, routed.notice, None) {
                self.counters
                    .dropped
                    .get_or_create(&sink_label(&sink))
                    .inc();
                tracing::warn!(sink = %sink, "alert queue full, event dropped: {e:?}");
            }
        }
    }

    /// What `event` means for the sinks, without sending anything: the notices its sinks are
    /// owed after rules, silences, dedupe and the flapping gate. Those decisions keep state: plan
    /// each event once. A collector that records deliveries in an outbox sends them later with
    /// [`Alerts::dispatch`]; [`Alerts::enqueue`] sends at once.
    pub fn plan(&self, event: Event) -> Planned {
        let notices = self.route(&event);
        Planned { event, notices }
    }

    /// Queues `notice` for the sink named `sink`, never waiting; `done` hears whether it was
    /// delivered (false: every attempt failed, or the sink had nothing to send).
    pub fn dispatch(
        &self,
        sink: &str,
        notice: Notice,
        done: Option<oneshot::Sender<bool>>,
    ) -> Result<(), DispatchError> {
        let Some(handle) = self.sinks.iter().find(|s| s.name == sink) else {
            return Err(DispatchError::UnknownSink);
        };
        handle
            .tx
            .try_send(Job { notice, done })
            .map_err(|_| DispatchError::Full)
    }

    fn route(&self, event: &Event) -> Vec<Routed> {
        let mut routed = Vec::new();
        for sink in &self.sinks {
            if !sink.rule.admits(event) {
                continue;
            }
            // A silenced resolve still ends what Alertmanager has firing.
            let ends_firing = sink.kind == SinkKind::Alertmanager && !format::fires(event);
            if event.silenced_by.is_some() && !ends_firing {
                self.counters
                    .silenced
                    .get_or_create(&sink_label(&sink.name))
                    .inc();
                continue;
            }
            if !sink.dedupe.admit(event) {
                continue;
            }
            let Some(notice) = lock(&sink.gate).pass(event) else {
                continue;
            };
            routed.push(Routed {
                sink: sink.name.clone(),
                notice,
            });
        }
        routed
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
    links: Arc<Mutex<Links>>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        // Alertmanager: firing alerts, re-sent so they stay firing.
        let mut firing = Firing::default();
        let mut resend = tokio::time::interval(self.resend);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resend.tick().await;
        loop {
            tokio::select! {
                received = rx.recv() => {
                    let Some(Job { notice, done }) = received else { break };
                    let links = lock(&self.links).clone();
                    let body = match self.kind {
                        SinkKind::Webhook => format::webhook(&notice, &links),
                        SinkKind::Slack => format::slack(&notice, &links),
                        SinkKind::Alertmanager => {
                            let alerts = firing.apply(&notice, &links, now_unix_ms());
                            if alerts.is_empty() {
                                // Nothing to tell Alertmanager: done, as far as anyone waits.
                                if let Some(done) = done {
                                    let _ = done.send(true);
                                }
                                continue;
                            }
                            Value::Array(alerts)
                        }
                    };
                    let delivered = self.deliver(&body).await;
                    if let Some(done) = done {
                        let _ = done.send(delivered);
                    }
                }
                _ = resend.tick(), if self.kind == SinkKind::Alertmanager && !firing.is_empty() => {
                    let body = Value::Array(firing.all());
                    self.deliver(&body).await;
                }
            }
        }
    }

    async fn deliver(&self, body: &Value) -> bool {
        let label = sink_label(&self.name);
        let mut delay = self.backoff;
        for attempt in 0..=self.retries {
            let outcome = self.client.post(self.url.clone()).json(body).send().await;
            match outcome {
                Ok(resp) if resp.status().is_success() => {
                    self.counters.sent.get_or_create(&label).inc();
                    return true;
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
        false
    }
}
