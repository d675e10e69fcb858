//! Which events a sink wants: a list of matches, any of which admits an event. Each match
//! narrows by ports, kinds, scopes and transitions (`from`/`to` states); an absent field admits
//! everything.

use crate::events::{Event, EventKind, Scope};
use serde::Deserialize;

/// One `[[alerts.match]]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub ports: Option<Vec<u16>>,
    pub kinds: Option<Vec<EventKind>>,
    pub scopes: Option<Vec<Scope>>,
    /// States changed from (`open`, `blocked`, `flapping`, `reporting`, `silent`).
    pub from: Option<Vec<String>>,
    /// States changed to.
    pub to: Option<Vec<String>>,
}

impl Match {
    pub fn admits(&self, e: &Event) -> bool {
        let port_ok = match (&self.ports, e.port) {
            (None, _) => true,
            (Some(ports), Some(p)) => ports.contains(&p),
            (Some(_), None) => false,
        };
        port_ok
            && self.kinds.as_ref().map_or(true, |k| k.contains(&e.kind))
            && self.scopes.as_ref().map_or(true, |s| s.contains(&e.scope))
            && self.from.as_ref().map_or(true, |f| f.contains(&e.from))
            && self.to.as_ref().map_or(true, |t| t.contains(&e.to))
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
