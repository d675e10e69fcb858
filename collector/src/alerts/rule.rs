//! Which events a sink wants: a list of matches, any of which admits an event. Each match
//! narrows by ports, kinds, scopes and transitions (`from`/`to` states); an absent field admits
//! everything. Agents going silent are the sink's `silent_agents` setting ([`SilentAgents`]):
//! by default a sink hears of a whole account going silent, not of each agent.

use crate::events::{Event, EventKind, Scope, State};
use serde::Deserialize;

/// One `[[alerts.match]]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub ports: Option<Vec<u16>>,
    pub kinds: Option<Vec<EventKind>>,
    pub scopes: Option<Vec<Scope>>,
    /// States changed from (`open`, `blocked`, `flapping`, `unknown`, `reporting`, `silent`).
    pub from: Option<Vec<State>>,
    /// States changed to.
    pub to: Option<Vec<State>>,
}

impl Match {
    pub fn admits(&self, e: &Event) -> bool {
        let port_ok = match (&self.ports, e.port) {
            (None, _) => true,
            (Some(ports), Some(p)) => ports.contains(&p),
            (Some(_), None) => false,
        };
        port_ok
            && any_or_listed(&self.kinds, &e.kind)
            && any_or_listed(&self.scopes, &e.scope)
            && any_or_listed(&self.from, &e.from)
            && any_or_listed(&self.to, &e.to)
    }
}

/// An absent list admits anything; a present one only what it lists.
fn any_or_listed<T: PartialEq>(list: &Option<Vec<T>>, value: &T) -> bool {
    match list {
        None => true,
        Some(l) => l.contains(value),
    }
}

/// Which agents going silent (and coming back) a sink hears of, besides what its matches admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SilentAgents {
    /// None.
    Off,
    /// An account with no agent left reporting (the default: one agent restarting is not news).
    #[default]
    Accounts,
    /// Every agent, and whole accounts.
    Each,
}

/// A sink's rule: any match admits; agent silence as `silent_agents` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    matches: Vec<Match>,
    silent_agents: SilentAgents,
}

impl Rule {
    pub fn new(matches: Vec<Match>) -> Rule {
        Rule {
            matches,
            silent_agents: SilentAgents::default(),
        }
    }

    pub fn with_silent_agents(self, silent_agents: SilentAgents) -> Rule {
        Rule {
            silent_agents,
            ..self
        }
    }

    /// Whether account-scope silence is wanted (so it is worth working out).
    pub fn wants_silent_accounts(&self) -> bool {
        self.silent_agents != SilentAgents::Off
    }

    pub fn admits(&self, e: &Event) -> bool {
        let by_setting = matches!(e.kind, EventKind::AgentSilent | EventKind::AgentBack)
            && match self.silent_agents {
                SilentAgents::Off => false,
                SilentAgents::Accounts => e.scope == Scope::Account,
                SilentAgents::Each => true,
            };
        by_setting || self.matches.iter().any(|m| m.admits(e))
    }
}

impl Default for Rule {
    /// Any change on 465 or 587, and any port opening or closing for a whole provider.
    fn default() -> Self {
        Rule::new(vec![
            Match {
                ports: Some(vec![465, 587]),
                ..Default::default()
            },
            Match {
                scopes: Some(vec![Scope::Provider]),
                kinds: Some(vec![EventKind::PolicyChanged]),
                ..Default::default()
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    fn silent(scope: Scope) -> Event {
        Event {
            kind: EventKind::AgentSilent,
            scope,
            provider: Some("gcp".into()),
            account: Some("a".into()),
            agent: (scope == Scope::Agent).then(|| "g1".to_string()),
            target: None,
            port: None,
            from: State::Reporting,
            to: State::Silent,
            at: rfc3339(0),
            family: None,
            id: None,
            outcome: None,
            at_unix_ms: 0,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }

    #[test]
    fn silent_agents_is_a_rule_setting_accounts_by_default() {
        let default = Rule::default();
        assert!(default.admits(&silent(Scope::Account)));
        assert!(!default.admits(&silent(Scope::Agent)));
        let each = Rule::default().with_silent_agents(SilentAgents::Each);
        assert!(each.admits(&silent(Scope::Agent)));
        let off = Rule::default().with_silent_agents(SilentAgents::Off);
        assert!(!off.admits(&silent(Scope::Account)) && !off.wants_silent_accounts());
        let asked = Rule::new(vec![Match {
            kinds: Some(vec![EventKind::AgentSilent]),
            ..Default::default()
        }])
        .with_silent_agents(SilentAgents::Off);
        assert!(asked.admits(&silent(Scope::Agent)), "a match still admits");
    }
}
