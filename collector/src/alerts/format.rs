//! The bodies each sink kind sends: the event itself (generic webhook), a Slack message, and
//! Alertmanager v2 alerts (firing on a change to `blocked`/`silent`/`flapping`, resolved with
//! `endsAt` on the way back).

use crate::events::{rfc3339, Event, EventKind, State};
use serde_json::{json, Map, Value};

/// Slack incoming-webhook body. Label-derived text is escaped for Slack's mrkdwn (`&`, `<`, `>`),
/// so a provider called `<!channel>` cannot ping anyone.
pub fn slack(e: &Event) -> Value {
    let icon = if e.to.is_problem() {
        ":red_circle:"
    } else {
        ":large_green_circle:"
    };
    json!({ "text": format!("{icon} egresswatch: {}", slack_escape(&e.summary())) })
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Whether an event starts a problem (fires) or ends one (resolves), for Alertmanager.
pub fn fires(e: &Event) -> bool {
    e.to.is_problem()
}

/// The Alertmanager alert name of an event: a resolve must carry the same labels as its firing
/// alert, so the name depends on the problem, not on the direction.
fn alert_name(e: &Event) -> &'static str {
    match e.kind {
        EventKind::DestinationOutage => "EgresswatchDestinationOutage",
        EventKind::AgentSilent | EventKind::AgentBack => "EgresswatchAgentSilent",
        EventKind::PolicyChanged if e.to == State::Flapping || e.from == State::Flapping => {
            "EgresswatchFlapping"
        }
        EventKind::PolicyChanged => "EgresswatchPortBlocked",
    }
}

/// The identifying labels of the alert an event fires or resolves.
pub fn alert_labels(e: &Event) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert("alertname".into(), alert_name(e).into());
    labels.insert("scope".into(), e.scope.as_str().into());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            labels.insert(k.into(), Value::String(v.clone()));
        }
    };
    put("provider", &e.provider);
    put("account", &e.account);
    put("agent", &e.agent);
    put("target", &e.target);
    if let Some(p) = e.port {
        labels.insert("port".into(), p.to_string().into());
    }
    if let Some(f) = e.family {
        labels.insert("family".into(), f.as_str().into());
    }
    labels
}

/// One Alertmanager v2 alert object for the event, sent at `now`.
pub fn alertmanager(e: &Event, now_unix_ms: i64) -> Value {
    let mut alert = json!({
        "labels": Value::Object(alert_labels(e)),
        "annotations": {
            "summary": e.summary(),
            "from": e.from,
            "to": e.to,
            "outcome": e.outcome.clone().unwrap_or_default(),
        },
        "startsAt": e.at,
    });
    if !fires(e) {
        alert["endsAt"] = Value::String(rfc3339(now_unix_ms));
        // A resolve must not start after it ends.
        alert["startsAt"] = Value::String(rfc3339(now_unix_ms.min(e.at_unix_ms)));
    }
    alert
}

/// Body of the generic webhook: the event exactly as `/api/events` serves it.
pub fn webhook(e: &Event) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}
