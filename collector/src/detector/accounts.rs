//! Whole accounts going silent. The detector says when one agent stops reporting; an operator
//! usually cares when an account has no agent left reporting (its network, its credentials, its
//! bill). The detector knows every agent it has heard and its account, so it raises one
//! account-scope `agent_silent` when the last reporting agent of an account falls silent, and
//! one `agent_back` when the first comes back. They are events like any other (recorded,
//! streamed, keyed); which of them a sink hears of is its `silent_agents` setting
//! ([`crate::alerts::rule::SilentAgents`]).

use crate::events::{Event, EventKind, Scope, State};
use crate::identity::{label_or_unlabelled, KnownAgent};
use crate::providers::provider_key;
use std::collections::{BTreeMap, BTreeSet};

/// (provider key, account) as the matrix groups them.
pub fn account_key(provider: &str, account: &str) -> (String, String) {
    (provider_key(provider), label_or_unlabelled(account))
}

/// The accounts whose agents are all silent.
#[derive(Debug, Default)]
pub(super) struct SilentAccounts {
    silent: BTreeSet<(String, String)>,
}

impl SilentAccounts {
    /// The account-scope events that the agent events among `events` complete, given every
    /// agent known (their `silent` flags already updated).
    pub(super) fn follow(
        &mut self,
        events: &[Event],
        agents: &BTreeMap<String, KnownAgent>,
    ) -> Vec<Event> {
        let mut more = Vec::new();
        for e in events {
            if e.scope != Scope::Agent {
                continue;
            }
            let (Some(provider), Some(account)) = (e.provider.as_deref(), e.account.as_deref())
            else {
                continue;
            };
            let key = account_key(provider, account);
            match e.kind {
                EventKind::AgentSilent => {
                    let all_silent = agents
                        .values()
                        .filter(|a| account_key(&a.provider, &a.account) == key)
                        .all(|a| a.silent);
                    if all_silent && self.silent.insert(key) {
                        more.push(account_event(e, State::Reporting, State::Silent));
                    }
                }
                EventKind::AgentBack if self.silent.remove(&key) => {
                    more.push(account_event(e, State::Silent, State::Reporting));
                }
                _ => {}
            }
        }
        more
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
    use crate::clock::rfc3339;

    fn known(account: &str, silent: bool) -> KnownAgent {
        KnownAgent {
            provider: "gcp".into(),
            account: account.into(),
            region: String::new(),
            instance: String::new(),
            last_seen_ms: 0,
            silent,
        }
    }

    fn agent_event(kind: EventKind, agent: &str) -> Event {
        let (from, to) = match kind {
            EventKind::AgentSilent => (State::Reporting, State::Silent),
            _ => (State::Silent, State::Reporting),
        };
        Event {
            kind,
            scope: Scope::Agent,
            provider: Some("GCP".into()),
            account: Some("a".into()),
            agent: Some(agent.into()),
            target: None,
            port: None,
            from,
            to,
            at: rfc3339(0),
            family: None,
            id: None,
            outcome: None,
            at_unix_ms: 0,
            since: Some(rfc3339(0)),
            witnesses: Vec::new(),
            silenced_by: None,
        }
    }

    #[test]
    fn the_account_is_silent_when_its_last_agent_is_and_back_with_its_first() {
        let mut accounts = SilentAccounts::default();
        let mut agents = BTreeMap::from([
            ("g1".to_string(), known("a", true)),
            ("g2".to_string(), known("a", false)),
            ("other".to_string(), known("b", false)),
        ]);
        let g1 = [agent_event(EventKind::AgentSilent, "g1")];
        assert!(accounts.follow(&g1, &agents).is_empty(), "g2 still reports");
        agents.get_mut("g2").unwrap().silent = true;
        let g2 = [agent_event(EventKind::AgentSilent, "g2")];
        let silent = accounts.follow(&g2, &agents);
        assert_eq!(silent.len(), 1);
        assert_eq!(
            (silent[0].scope, silent[0].agent.clone(), silent[0].to),
            (Scope::Account, None, State::Silent)
        );
        assert!(accounts.follow(&g2, &agents).is_empty(), "once");
        agents.get_mut("g1").unwrap().silent = false;
        let back = accounts.follow(&[agent_event(EventKind::AgentBack, "g1")], &agents);
        assert_eq!(
            (back[0].kind, back[0].scope, back[0].to),
            (EventKind::AgentBack, Scope::Account, State::Reporting)
        );
        assert!(accounts
            .follow(&[agent_event(EventKind::AgentBack, "g2")], &agents)
            .is_empty());
    }
}
