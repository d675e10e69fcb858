//! Which events a sink wants: a list of matches, any of which admits an event. Each match
//! narrows by ports, kinds, scopes and transitions (`from`/`to` states); an absent field admits
//! everything.

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

/// A sink's rule: any match admits.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    matches: Vec<Match>,
}

impl Rule {
    pub fn new(matches: Vec<Match>) -> Rule {
        Rule { matches }
    }

    pub fn admits(&self, e: &Event) -> bool {
        self.matches.iter().any(|m| m.admits(e))
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
