//! Alert sinks: which events go where ([`rule`]), in which format ([`format`]), and the delivery
//! workers ([`sink`]) — one task per sink, so a slow or dead sink never slows ingest. The hub
//! plans each event's notices ([`Alerts::plan`]) and records them in the store's outbox with the
//! event; [`crate::fleet::outbox`] then hands each sink its notices one at a time
//! ([`Alerts::dispatch`]) and marks what was delivered (the retry policy is documented there).
//!
//! Configuration (collector TOML), e.g. Slack for everything the default rule admits and
//! Alertmanager for account- and provider-wide changes on 587:
//!
//! ```toml
//! [[alerts]]
//! kind = "slack"
//! url = "https://hooks.slack.com/services/T000/B000/XXXX"
//!
//! [[alerts]]
//! name = "am"
//! kind = "alertmanager"              # POSTs to {url}/api/v2/alerts
//! url = "http://127.0.0.1:9093"
//! [[alerts.match]]
//! ports = [587]
//! scopes = ["account", "provider"]   # agent | account | provider | destination
//! to = ["blocked", "open"]           # open | blocked | flapping | unknown | silent | reporting
//! ```
//!
//! Without `[[alerts.match]]` a sink gets the default rule: any change on 465 or 587, and any
//! port opening or closing for a whole provider. Whole accounts going silent are news too
//! (`silent_agents = "accounts"`, the default; `"each"` adds every single agent, `"off"` none):
//! the detector raises those ([`crate::detector`]). Alertmanager alerts fire on a change to `blocked`/`silent`/`flapping` and
//! resolve (`endsAt`) on the change back, ending every firing alert of the subject in the
//! families the resolve names ([`firing`]); firing alerts are re-sent every `resend_secs` so
//! Alertmanager does not time them out. A flapping series gets one notice ([`gate`]). An event a
//! silence covers ([`crate::silences`]) reaches no sink — except that an Alertmanager sink still
//! ends what it has firing, so a silence never leaves an alert stuck.

pub mod firing;
pub mod format;
pub mod gate;
pub mod rule;
pub mod sink;

use crate::events::{Event, State};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use format::Links;
pub use rule::{Match, Rule, SilentAgents};
pub use sink::{AlertCounters, Alerts, DispatchError, Planned, Routed};

/// The wire format of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// `POST` of the event object as JSON.
    #[default]
    Webhook,
    /// Slack incoming webhook (`{"text": ...}`).
    Slack,
    /// Prometheus Alertmanager v2 (`POST {url}/api/v2/alerts`), resolved with `endsAt`.
    Alertmanager,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Alertmanager => "alertmanager",
        }
    }
}

/// One `[[alerts]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A name for logs and metrics; defaults to the kind.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: SinkKind,
    /// For `alertmanager`, the base URL (`http://127.0.0.1:9093`); otherwise the full URL.
    pub url: String,
    /// Which events go to this sink; absent means the default rule (any change on 465 or 587,
    /// and any port opening or closing for a whole provider).
    #[serde(default, rename = "match")]
    pub matches: Option<Vec<Match>>,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts after the first, with exponential backoff.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff; doubles each retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Notices waiting for this sink's worker; beyond it new ones are dropped and counted. The
    /// outbox hands a sink one notice at a time, so only [`Alerts::enqueue`]'s callers fill it.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Alertmanager: how often firing alerts are re-sent so they do not time out.
    #[serde(default = "default_resend_secs")]
    pub resend_secs: u64,
    /// Which agents going silent this sink hears of: `accounts` (an account with no agent left
    /// reporting), `each` (every agent too) or `off`.
    #[serde(default)]
    pub silent_agents: SilentAgents,
    /// A series that starts flapping again within this long of its last swing is not news again.
    #[serde(default = "default_flap_hold_secs")]
    pub flap_hold_secs: u64,
}

fn default_timeout_secs() -> u64 {
    10
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_queue() -> usize {
    256
}
fn default_resend_secs() -> u64 {
    60
}
fn default_flap_hold_secs() -> u64 {
    3600
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            name: String::new(),
            kind: SinkKind::Webhook,
            url: String::new(),
            matches: None,
            timeout_secs: default_timeout_secs(),
            retries: default_retries(),
            backoff_ms: default_backoff_ms(),
            queue: default_queue(),
            resend_secs: default_resend_secs(),
            silent_agents: SilentAgents::default(),
            flap_hold_secs: default_flap_hold_secs(),
        }
    }
}

impl SinkConfig {
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            self.kind.as_str().to_string()
        } else {
            self.name.clone()
        }
    }

    pub fn rule(&self) -> Rule {
        let rule = match &self.matches {
            Some(m) => Rule::new(m.clone()),
            None => Rule::default(),
        };
        rule.with_silent_agents(self.silent_agents)
    }
}

/// Drops an event identical in effect to the last one sent for the same subject (same kind,
/// scope, who, path — and the same destination state), so a re-raised event is not re-sent.
#[derive(Debug, Default)]
pub struct Dedupe {
    last_to: Mutex<HashMap<String, State>>,
}

impl Dedupe {
    /// True when the event is new news and should be sent.
    pub fn admit(&self, e: &Event) -> bool {
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            e.kind, e.scope, e.provider, e.account, e.agent, e.target, e.port, e.family
        );
        let mut map = match self.last_to.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.get(&key) == Some(&e.to) {
            return false;
        }
        map.insert(key, e.to);
        true
    }
}

/// Shared handle type for the dispatcher.
pub type SharedAlerts = Arc<Alerts>;
