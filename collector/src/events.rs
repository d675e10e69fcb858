//! The events the detector raises, in the exact shape of the `/api/events` contract (docs/http-api.md),
//! and the small clock helpers (RFC 3339 from Unix milliseconds) every JSON output shares.

use egresswatch_wire::{Family, ProbeCause};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A confirmed change of a port's state (or a series that started flapping: `to` = `flapping`).
    PolicyChanged,
    /// Every agent of every provider changed together on one target and port.
    DestinationOutage,
    /// An agent stopped reporting for longer than the grace.
    AgentSilent,
    /// A silent agent reported again.
    AgentBack,
    /// A mail provider's HTTPS API became unreachable where its SMTP was blocked already: the
    /// way out is gone (`to` = `blocked`; its return is a `policy_changed` to `open`).
    WayOutLost,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PolicyChanged => "policy_changed",
            EventKind::DestinationOutage => "destination_outage",
            EventKind::AgentSilent => "agent_silent",
            EventKind::AgentBack => "agent_back",
            EventKind::WayOutLost => "way_out_lost",
        }
    }
}

/// Which layer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Agent,
    Account,
    Provider,
    Destination,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Account => "account",
            Scope::Provider => "provider",
            Scope::Destination => "destination",
        }
    }
}

/// A state an event changes from or to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Blocked,
    Flapping,
    /// Before a series had a confirmed state (a series flapping from its start).
    Unknown,
    /// An agent heard from.
    Reporting,
    /// An agent unheard of for longer than the grace.
    Silent,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Blocked => "blocked",
            State::Flapping => "flapping",
            State::Unknown => "unknown",
            State::Reporting => "reporting",
            State::Silent => "silent",
        }
    }

    /// Whether a change to this state starts a problem (an alert fires) rather than ends one.
    pub fn is_problem(self) -> bool {
        matches!(self, State::Blocked | State::Silent | State::Flapping)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, serialised exactly as `/api/events` serves it. Fields that do not apply to the
/// scope (the agent of a provider-wide change, the port of a silent agent) are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub scope: Scope,
    pub provider: Option<String>,
    pub account: Option<String>,
    pub agent: Option<String>,
    pub target: Option<String>,
    pub port: Option<u16>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// RFC 3339, UTC.
    pub at: String,
    /// The one family that changed (`ipv4`, `ipv6`); `null` when both changed together, and
    /// for an agent going silent or coming back.
    #[serde(default)]
    pub family: Option<Family>,
    /// Set once the event is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The dominant outcome behind a change to `blocked` (e.g. `timeout`), for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// When it happened, Unix milliseconds (not serialised: `at` is the contract).
    #[serde(skip)]
    pub at_unix_ms: i64,
    /// When the evidence for a change began (the first departing probe), RFC 3339 UTC; absent
    /// for agent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The agents whose results decided the change, each with what it saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<Witness>,
    /// The id of the silence that matched when the event was raised: the event is recorded and
    /// shown, but no sink notifies anyone of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
}

/// One agent's evidence behind an event: its latest result on the changed path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Witness {
    pub agent: String,
    pub family: Family,
    /// The outcome name (`timeout`, `refused`, `ok`, ...).
    pub outcome: String,
    /// Who sent the ICMP error, when one came back: a provider's edge and the destination's own
    /// firewall differ here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_from: Option<String>,
    /// Why that probe ran: `scheduled`, `confirmation` or `requested`.
    pub cause: ProbeCause,
    /// When it was measured, RFC 3339 UTC.
    pub at: String,
}

impl Event {
    /// A short human line: "policy_changed account gcp/acct-a mx:587 open → blocked over IPv4
    /// only (timeout)"; without the family when both changed.
    pub fn summary(&self) -> String {
        let mut who = Vec::new();
        for p in [&self.provider, &self.account, &self.agent]
            .into_iter()
            .flatten()
        {
            who.push(p.as_str());
        }
        let mut text = format!("{} {}", self.kind.as_str(), self.scope.as_str());
        if !who.is_empty() {
            text.push(' ');
            text.push_str(&who.join("/"));
        }
        if let Some(t) = &self.target {
            text.push_str(&format!(" {t}"));
        }
        if let Some(p) = self.port {
            text.push_str(&format!(":{p}"));
        }
        text.push_str(&format!(" {} → {}", self.from, self.to));
        if let Some(f) = self.family {
            text.push_str(&format!(" over {} only", family_word(f)));
        }
        if let Some(o) = &self.outcome {
            text.push_str(&format!(" ({o})"));
        }
        text
    }
}

/// How a family is written for people.
pub fn family_word(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    #[test]
    fn event_json_has_the_contract_fields() {
        let e = Event {
            kind: EventKind::PolicyChanged,
            scope: Scope::Account,
            provider: Some("gcp".into()),
            account: Some("a".into()),
            agent: None,
            target: Some("mx.example".into()),
            port: Some(587),
            from: State::Open,
            to: State::Blocked,
            at: rfc3339(0),
            family: Some(Family::Ipv4),
            id: None,
            outcome: None,
            at_unix_ms: 0,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        for k in [
            "kind", "scope", "provider", "account", "agent", "target", "port", "from", "to", "at",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["kind"], "policy_changed");
        assert_eq!(v["scope"], "account");
        assert_eq!(v["agent"], serde_json::Value::Null);
        assert_eq!(v["family"], "ipv4");
        assert_eq!(
            (v["from"].as_str(), v["to"].as_str()),
            (Some("open"), Some("blocked"))
        );
        for state in [
            State::Open,
            State::Blocked,
            State::Flapping,
            State::Unknown,
            State::Reporting,
            State::Silent,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(
            e.summary(),
            "policy_changed account gcp/a mx.example:587 open → blocked over IPv4 only"
        );
        // Both families together: `family` is there, and null; the line names no family.
        let both = Event {
            family: None,
            outcome: Some("timeout".into()),
            ..e
        };
        let v = serde_json::to_value(&both).unwrap();
        assert_eq!(v.get("family"), Some(&serde_json::Value::Null));
        assert_eq!(
            both.summary(),
            "policy_changed account gcp/a mx.example:587 open → blocked (timeout)"
        );
        // Events stored before the field existed still read.
        let old: Event = serde_json::from_str(
            r#"{"kind":"agent_silent","scope":"agent","provider":"p","account":"a","agent":"g",
                "target":null,"port":null,"from":"reporting","to":"silent","at":"x"}"#,
        )
        .unwrap();
        assert_eq!(old.family, None);
    }
}
