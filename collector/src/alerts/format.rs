//! The bodies each sink kind sends: the event itself with what a person needs to act on it
//! (generic webhook), a Slack message saying the same in words, and Alertmanager v2 alerts
//! (firing on a change to `blocked`/`silent`/`flapping`, resolved with `endsAt` on the way back).
//!
//! "What a person needs": what changed, since when, which agents saw it with which outcome and
//! who sent the ICMP error, what the provider documents for that port (with the page it says so
//! on), how long a resolved problem lasted, and a link to the matrix page when
//! `http.public_url` is set. Anything unknown is left out rather than guessed.

use super::gate::Notice;
use crate::clock::rfc3339;
use crate::events::{family_word, Event, EventKind, Scope, State, Witness};
use crate::providers::Policies;
use serde_json::{json, Map, Value};

/// What every body may link to.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// `http.public_url`: where people open the matrix page; `None` leaves the link out.
    pub public_url: Option<String>,
}

impl Links {
    /// The matrix page, whose events list shows the event (and any silence on it).
    pub fn page(&self) -> Option<String> {
        let base = self.public_url.as_deref()?.trim().trim_end_matches('/');
        (!base.is_empty()).then(|| format!("{base}/"))
    }
}

/// What the provider documents for the event's port, when it documents anything.
pub fn documented(e: &Event) -> Option<Value> {
    let doc = Policies::embedded().doc(e.provider.as_deref()?, e.port?)?;
    Some(json!({
        "policy": doc.policy,
        "summary": doc.summary,
        "source": doc.source,
        "unblock": doc.unblock,
    }))
}

/// A duration for people: `45s`, `12m`, `3h 5m`, `2d 4h`.
pub fn duration_words(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// One witness in words: `g1 (IPv4, timeout, ICMP from 198.18.0.1, confirmation probe)`.
fn witness_words(w: &Witness) -> String {
    let mut parts = vec![family_word(w.family).to_string(), w.outcome.clone()];
    if let Some(icmp) = &w.icmp_from {
        parts.push(format!("ICMP from {icmp}"));
    }
    let cause = serde_json::to_value(w.cause)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if !cause.is_empty() && cause != "scheduled" {
        parts.push(format!("{cause} probe"));
    }
    format!("{} ({})", w.agent, parts.join(", "))
}

/// The headline: "gcp/acct-a mx.example:587 blocked over IPv4 only (timeout)".
fn headline(n: &Notice) -> String {
    let e = &n.event;
    let who: Vec<&str> = [&e.provider, &e.account, &e.agent]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let mut text = who.join("/");
    if who.is_empty() {
        text.push_str("every provider");
    }
    if let Some(t) = &e.target {
        text.push_str(&format!(" → {t}"));
    }
    if let Some(p) = e.port {
        text.push_str(&format!(":{p}"));
    }
    let change = match (e.kind, e.scope) {
        (EventKind::AgentSilent, Scope::Account) => "every agent of the account went silent".into(),
        (EventKind::AgentBack, Scope::Account) => "the account reports again".into(),
        (EventKind::AgentSilent, _) => "agent went silent".into(),
        (EventKind::AgentBack, _) => "agent reports again".into(),
        (EventKind::DestinationOutage, _) => {
            format!("destination outage: every provider {} → {}", e.from, e.to)
        }
        (EventKind::PolicyChanged, _) if e.to == State::Flapping => {
            "is flapping (open and blocked in turn); further changes are held back until it settles"
                .into()
        }
        (EventKind::PolicyChanged, _) if e.from == State::Flapping => {
            format!("stopped flapping, now {}", e.to)
        }
        (EventKind::PolicyChanged, _) => format!("{} → {}", e.from, e.to),
        (EventKind::WayOutLost, _) => format!(
            "{} → {}: the mail provider's HTTPS API is unreachable too, and its SMTP was blocked \
             already: no way out is left",
            e.from, e.to
        ),
    };
    text.push_str(&format!(" {change}"));
    if let Some(f) = e.family {
        text.push_str(&format!(" over {} only", family_word(f)));
    }
    if let Some(o) = &e.outcome {
        text.push_str(&format!(" ({o})"));
    }
    text
}

/// Slack incoming-webhook body. Label-derived text is escaped for Slack's mrkdwn (`&`, `<`, `>`),
/// so a provider called `<!channel>` cannot ping anyone.
pub fn slack(n: &Notice, links: &Links) -> Value {
    let e = &n.event;
    let icon = if e.to.is_problem() {
        ":red_circle:"
    } else {
        ":large_green_circle:"
    };
    let mut lines = vec![format!(
        "{icon} egresswatch: {}",
        slack_escape(&headline(n))
    )];
    if let Some(since) = &e.since {
        lines.push(format!(
            "Since {} (first probe that saw it)",
            slack_escape(since)
        ));
    }
    if let Some(ms) = n.lasted_ms {
        lines.push(format!(
            "Lasted {} ({} → {})",
            duration_words(ms),
            rfc3339(e.at_unix_ms - ms),
            slack_escape(&e.at)
        ));
    }
    if !e.witnesses.is_empty() {
        let seen: Vec<String> = e.witnesses.iter().map(witness_words).collect();
        lines.push(format!("Seen by {}", slack_escape(&seen.join("; "))));
    }
    if let Some(doc) = documented(e) {
        let (policy, summary, source) = (
            doc["policy"].as_str().unwrap_or_default(),
            doc["summary"].as_str().unwrap_or_default(),
            doc["source"].as_str().unwrap_or_default(),
        );
        let port = e.port.map(|p| p.to_string()).unwrap_or_default();
        let mut line = format!(
            "Documented for {port}: {policy} — {}",
            slack_escape(summary)
        );
        if !source.is_empty() {
            line.push_str(&format!(" (<{}|source>)", slack_link(source)));
        }
        lines.push(line);
    }
    if let Some(page) = links.page() {
        lines.push(format!("<{}|Open the matrix>", slack_link(&page)));
    }
    json!({ "text": lines.join("\n") })
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A URL inside `<url|label>`: `|` and `>` would end it early.
fn slack_link(url: &str) -> String {
    slack_escape(url).replace('|', "%7C")
}

/// Whether an event starts a problem (fires) or ends one (resolves), for Alertmanager.
pub fn fires(e: &Event) -> bool {
    e.to.is_problem()
}

/// The Alertmanager alert name of an event: a resolve must carry the same labels as its firing
/// alert, so the name depends on the problem, not on the direction.
pub fn alert_name(e: &Event) -> &'static str {
    match e.kind {
        EventKind::DestinationOutage => "EgresswatchDestinationOutage",
        EventKind::AgentSilent | EventKind::AgentBack => "EgresswatchAgentSilent",
        EventKind::PolicyChanged if e.to == State::Flapping || e.from == State::Flapping => {
            "EgresswatchFlapping"
        }
        EventKind::PolicyChanged => "EgresswatchPortBlocked",
        EventKind::WayOutLost => "EgresswatchWayOutLost",
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

/// One Alertmanager v2 alert object for a firing event (a resolve is made from the firing
/// alert it ends: see [`super::firing`]).
pub fn alertmanager(n: &Notice, links: &Links) -> Value {
    let e = &n.event;
    let mut annotations = json!({
        "summary": headline(n),
        "from": e.from,
        "to": e.to,
        "outcome": e.outcome.clone().unwrap_or_default(),
    });
    if let Some(since) = &e.since {
        annotations["since"] = since.clone().into();
    }
    if !e.witnesses.is_empty() {
        let seen: Vec<String> = e.witnesses.iter().map(witness_words).collect();
        annotations["witnesses"] = seen.join("; ").into();
    }
    if let Some(doc) = documented(e) {
        annotations["documented"] = format!(
            "{}: {}",
            doc["policy"].as_str().unwrap_or_default(),
            doc["summary"].as_str().unwrap_or_default()
        )
        .into();
        annotations["documented_source"] = doc["source"].clone();
    }
    let mut alert = json!({
        "labels": Value::Object(alert_labels(e)),
        "annotations": annotations,
        "startsAt": e.at,
    });
    if let Some(page) = links.page() {
        alert["generatorURL"] = page.into();
    }
    alert
}

/// Body of the generic webhook: the event exactly as `/api/events` serves it, plus `documented`
/// (the provider's policy for the port, with its source), `lasted_secs` on a resolve, `notice`
/// (`flapping` for the one notice a flapping series gets) and `page` — each only when known.
pub fn webhook(n: &Notice, links: &Links) -> Value {
    let e = &n.event;
    let mut body = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("summary".into(), headline(n).into());
        if let Some(doc) = documented(e) {
            map.insert("documented".into(), doc);
        }
        if let Some(ms) = n.lasted_ms {
            map.insert("lasted_secs".into(), (ms / 1000).into());
            map.insert("lasted".into(), duration_words(ms).into());
        }
        if e.to == State::Flapping {
            map.insert("notice".into(), "flapping".into());
        }
        if let Some(page) = links.page() {
            map.insert("page".into(), page.into());
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::{Family, ProbeCause};

    fn blocked() -> Event {
        Event {
            kind: EventKind::PolicyChanged,
            scope: Scope::Account,
            provider: Some("gcp".into()),
            account: Some("acct-a".into()),
            agent: None,
            target: Some("mx.example".into()),
            port: Some(25),
            from: State::Open,
            to: State::Blocked,
            at: rfc3339(7_200_000),
            family: Some(Family::Ipv4),
            id: Some(42),
            outcome: Some("timeout".into()),
            at_unix_ms: 7_200_000,
            since: Some(rfc3339(7_000_000)),
            witnesses: vec![Witness {
                agent: "g1".into(),
                family: Family::Ipv4,
                outcome: "refused".into(),
                icmp_from: Some("198.18.0.1".into()),
                cause: ProbeCause::Confirmation,
                at: rfc3339(7_100_000),
            }],
            silenced_by: None,
        }
    }

    fn links() -> Links {
        Links {
            public_url: Some("https://watch.example/".into()),
        }
    }

    #[test]
    fn slack_says_what_since_who_saw_it_the_docs_and_the_page() {
        let text = slack(&Notice::of(blocked()), &links())["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            text.contains("gcp/acct-a → mx.example:25 open → blocked over IPv4 only"),
            "{text}"
        );
        assert!(
            text.contains(&format!("Since {}", rfc3339(7_000_000))),
            "{text}"
        );
        assert!(
            text.contains("g1 (IPv4, refused, ICMP from 198.18.0.1, confirmation probe)"),
            "{text}"
        );
        assert!(text.contains("Documented for 25: blocked"), "{text}");
        assert!(text.contains("|source>)"), "{text}");
        assert!(
            text.contains("<https://watch.example/|Open the matrix>"),
            "{text}"
        );
    }

    #[test]
    fn without_witnesses_docs_or_a_public_url_the_parts_are_left_out() {
        let mut e = blocked();
        e.witnesses.clear();
        e.since = None;
        e.provider = Some("some-unknown-cloud".into());
        let n = Notice::of(e);
        let text = slack(&n, &Links::default())["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !text.contains("Seen by") && !text.contains("Documented") && !text.contains("Open")
        );
        let body = webhook(&n, &Links::default());
        assert!(body.get("documented").is_none() && body.get("page").is_none());
        assert!(body.get("witnesses").is_none());
    }

    #[test]
    fn the_way_out_lost_says_so_and_is_the_same_subject_as_its_return() {
        let lost = Event {
            kind: EventKind::WayOutLost,
            target: Some("api.zeptomail.com".into()),
            port: Some(443),
            family: None,
            ..blocked()
        };
        let am = alertmanager(&Notice::of(lost.clone()), &links());
        assert_eq!(am["labels"]["alertname"], "EgresswatchWayOutLost");
        let summary = am["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("gcp/acct-a → api.zeptomail.com:443 open → blocked: the mail provider's HTTPS API is unreachable too, and its SMTP was blocked already: no way out is left"),
            "{summary}"
        );
        let back = Event {
            kind: EventKind::PolicyChanged,
            from: State::Blocked,
            to: State::Open,
            ..lost.clone()
        };
        assert!(fires(&lost) && !fires(&back));
        assert_eq!(
            super::super::gate::subject(&lost),
            super::super::gate::subject(&back)
        );
    }

    #[test]
    fn a_resolve_says_how_long_it_lasted() {
        let mut e = blocked();
        (e.from, e.to, e.outcome) = (State::Blocked, State::Open, None);
        let n = Notice {
            event: e,
            lasted_ms: Some(3_900_000),
        };
        let text = slack(&n, &links())["text"].as_str().unwrap().to_string();
        assert!(text.starts_with(":large_green_circle:"), "{text}");
        assert!(text.contains("Lasted 1h 5m"), "{text}");
        let body = webhook(&n, &links());
        assert_eq!(body["lasted_secs"], 3900);
        assert_eq!(body["lasted"], "1h 5m");
        assert_eq!(body["page"], "https://watch.example/");
        assert_eq!(body["documented"]["policy"], "blocked");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_words(45_000), "45s");
        assert_eq!(duration_words(720_000), "12m");
        assert_eq!(duration_words(7_200_000), "2h");
        assert_eq!(duration_words(187_200_000), "2d 4h");
    }
}
