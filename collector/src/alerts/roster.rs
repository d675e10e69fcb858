//! Whole accounts going silent. The detector says when one agent stops reporting; an operator
//! usually cares when an account has no agent left reporting (its network, its credentials, its
//! bill). [`Roster`] follows agents' silence and return and raises one account-scope
//! `agent_silent` when the last reporting agent of an account falls silent, and one
//! `agent_back` when the first comes back. Which of these a sink hears of is its
//! `silent_agents` setting ([`super::rule::SilentAgents`]).

use crate::events::{Event, EventKind, Scope, State};
use crate::identity::label_or_unlabelled;
use crate::matrix::policies::provider_key;
use std::collections::HashSet;

/// (provider key, account) as the matrix groups them.
pub fn account_key(provider: &str, account: &str) -> (String, String) {
    (provider_key(provider), label_or_unlabelled(account))
}

#[derive(Debug, Default)]
pub struct Roster {
    silent: HashSet<String>,
    silent_accounts: HashSet<(String, String)>,
}

impl Roster {
    /// Feeds an agent event; `account_agents` are every agent known in its account. Returns the
    /// account-scope event it completes, if any.
    pub fn observe(&mut self, e: &Event, account_agents: &[String]) -> Option<Event> {
        if e.scope != Scope::Agent {
            return None;
        }
        let agent = e.agent.as_ref()?;
        let account = account_key(e.provider.as_deref()?, e.account.as_deref()?);
        match e.kind {
            EventKind::AgentSilent => {
                self.silent.insert(agent.clone());
                let all_silent = !account_agents.is_empty()
                    && account_agents.iter().all(|a| self.silent.contains(a));
                if all_silent && self.silent_accounts.insert(account) {
                    return Some(account_event(e, State::Reporting, State::Silent));
                }
                None
            }
            EventKind::AgentBack => {
                self.silent.remove(agent);
                if self.silent_accounts.remove(&account) {
                    return Some(account_event(e, State::Silent, State::Reporting));
                }
                None
            }
            _ => None,
        }
    }
}

fn account_event(e: &Event, from: State, to: State) -> Event {
    Event {
        scope: Scope::Account,
        agent: None,
        from,
        to,
        id: None,
        silenced_by: None,
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::rfc3339;

    fn agent(kind: EventKind, agent: &str) -> Event {
        let (from, to) = match kind {
            EventKind::AgentSilent => (State::Reporting, State::Silent),
            _ => (State::Silent, State::Reporting),
        };
        Event {
            kind,
            scope: Scope::Agent,
            provider: Some("gcp".into()),
            account: Some("a".into()),
            agent: Some(agent.into()),
            target: None,
            port: None,
            from,
            to,
            at: rfc3339(0),
            family: None,
            id: Some(3),
            outcome: None,
            at_unix_ms: 0,
            since: None,
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }

    #[test]
    fn the_account_is_silent_when_its_last_agent_is_and_back_with_its_first() {
        let mut r = Roster::default();
        let both = ["g1".to_string(), "g2".to_string()];
        assert_eq!(r.observe(&agent(EventKind::AgentSilent, "g1"), &both), None);
        let silent = r
            .observe(&agent(EventKind::AgentSilent, "g2"), &both)
            .unwrap();
        assert_eq!(
            (silent.scope, silent.agent.clone(), silent.to),
            (Scope::Account, None, State::Silent)
        );
        assert_eq!(silent.id, None);
        assert_eq!(
            r.observe(&agent(EventKind::AgentSilent, "g2"), &both),
            None,
            "once"
        );
        let back = r
            .observe(&agent(EventKind::AgentBack, "g1"), &both)
            .unwrap();
        assert_eq!(
            (back.kind, back.to),
            (EventKind::AgentBack, State::Reporting)
        );
        assert_eq!(r.observe(&agent(EventKind::AgentBack, "g2"), &both), None);
    }
}
