//! Which layer a change belongs to, as a plain function of what every agent on the path has
//! said since the change began — not of which answer happened to arrive first.
//!
//! Each live agent that probes the path is a [`Voice`]: it has decided the change too
//! (`Changed`), has answered since the change began with the old state (`Unchanged`), was in
//! the new state before the change began (`Before`: GCP's 25, always blocked, says nothing
//! about a new block), or has not said yet: its own test leans to the change but not far
//! enough (`Leaning`), or nothing since the change began (`Unheard`). [`layers`] names the widest layer every
//! voice supports: the destination when nobody still has the old state and the change spans
//! providers (or the changed agents still reach another target on the port); a provider when
//! every agent of each of its accounts changed; an account when every agent of it changed; else
//! each agent that changed.
//!
//! [`settled`] is the rule that keeps a page from being contradicted moments later: the layers
//! are final only when the voices still unknown cannot change them — the answer is the same
//! whether they turn out changed or unchanged. Until then the caller waits for them, up to
//! their deadline; after it, what was seen is named: a leaning voice counts as changed, an
//! unheard one as unchanged.

use std::collections::{BTreeMap, BTreeSet};

/// What one agent has said about the change under way on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It decided the same change.
    Changed,
    /// It answered since the change began, with the old state.
    Unchanged,
    /// It was in the new state before the change began.
    Before,
    /// Its own test leans to the change, not far enough yet to say.
    Leaning,
    /// No result since the change began.
    Unheard,
}

impl Answer {
    /// Not said yet: what it turns out to be could still change the layer.
    fn open(self) -> bool {
        matches!(self, Answer::Leaning | Answer::Unheard)
    }
}

/// One agent on the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voice<K> {
    pub key: K,
    pub provider: String,
    pub account: String,
    pub agent: String,
    pub answer: Answer,
}

/// A layer named for a change, with the voices it stands on (those that changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    Destination,
    Provider {
        provider: String,
    },
    Account {
        provider: String,
        account: String,
    },
    Agent {
        provider: String,
        account: String,
        agent: String,
    },
}

/// How the layers are told apart (from `[detector]`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Fewest agents that can make a destination outage.
    pub min_agents_for_outage: usize,
    /// Fewest accounts that can make a provider-wide change.
    pub min_accounts_for_provider: usize,
}

/// The layers the voices support, widest first, each with the keys of the voices it covers.
/// `reaches_other_targets`: an agent that changed still reaches another target on the same
/// port (so the port is not blocked for it: the destination changed).
pub fn layers<K: Clone + Ord>(
    voices: &[Voice<K>],
    reaches_other_targets: bool,
    bounds: Bounds,
) -> Vec<(Layer, Vec<K>)> {
    let changed: Vec<&Voice<K>> = voices
        .iter()
        .filter(|v| v.answer == Answer::Changed)
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let agents: BTreeSet<&str> = voices.iter().map(|v| v.agent.as_str()).collect();
    let changed_providers: BTreeSet<&str> = changed.iter().map(|v| v.provider.as_str()).collect();
    let nobody_unchanged = voices.iter().all(|v| v.answer != Answer::Unchanged);
    if nobody_unchanged
        && agents.len() >= bounds.min_agents_for_outage
        && (changed_providers.len() >= 2 || reaches_other_targets)
    {
        let keys = voices
            .iter()
            .filter(|v| v.answer != Answer::Unchanged)
            .map(|v| v.key.clone())
            .collect();
        return vec![(Layer::Destination, keys)];
    }
    let mut out = Vec::new();
    for provider in changed_providers {
        let mut accounts: BTreeMap<&str, Vec<&Voice<K>>> = BTreeMap::new();
        for v in voices.iter().filter(|v| v.provider == provider) {
            accounts.entry(v.account.as_str()).or_default().push(v);
        }
        let all_changed = |vs: &[&Voice<K>]| vs.iter().all(|v| v.answer == Answer::Changed);
        if accounts.len() >= bounds.min_accounts_for_provider
            && accounts.values().all(|vs| all_changed(vs))
        {
            let keys = accounts.values().flatten().map(|v| v.key.clone()).collect();
            out.push((
                Layer::Provider {
                    provider: provider.to_string(),
                },
                keys,
            ));
            continue;
        }
        for (account, vs) in accounts {
            if !vs.iter().any(|v| v.answer == Answer::Changed) {
                continue;
            }
            if all_changed(&vs) {
                out.push((
                    Layer::Account {
                        provider: provider.to_string(),
                        account: account.to_string(),
                    },
                    vs.iter().map(|v| v.key.clone()).collect(),
                ));
                continue;
            }
            for v in vs.iter().filter(|v| v.answer == Answer::Changed) {
                out.push((
                    Layer::Agent {
                        provider: provider.to_string(),
                        account: account.to_string(),
                        agent: v.agent.clone(),
                    },
                    vec![v.key.clone()],
                ));
            }
        }
    }
    out
}

/// The voices with every one not said yet taken as `as_if(its answer)`.
fn resolved<K: Clone>(voices: &[Voice<K>], as_if: impl Fn(Answer) -> Answer) -> Vec<Voice<K>> {
    voices
        .iter()
        .map(|v| Voice {
            answer: if v.answer.open() {
                as_if(v.answer)
            } else {
                v.answer
            },
            ..v.clone()
        })
        .collect()
}

/// The layers once they are final: `Some` when the voices not said yet cannot change them, or
/// `deadline_passed` — then what was seen is named: a voice whose every result since the change
/// began departed (leaning) counts as changed, an unheard one as unchanged. `None` while waiting
/// is worth it.
pub fn settled<K: Clone + Ord>(
    voices: &[Voice<K>],
    reaches_other_targets: bool,
    bounds: Bounds,
    deadline_passed: bool,
) -> Option<Vec<(Layer, Vec<K>)>> {
    if deadline_passed || !voices.iter().any(|v| v.answer.open()) {
        let seen = resolved(voices, |a| match a {
            Answer::Leaning => Answer::Changed,
            _ => Answer::Unchanged,
        });
        return Some(layers(&seen, reaches_other_targets, bounds));
    }
    let cautious = layers(
        &resolved(voices, |_| Answer::Unchanged),
        reaches_other_targets,
        bounds,
    );
    let hopeful = layers(
        &resolved(voices, |_| Answer::Changed),
        reaches_other_targets,
        bounds,
    );
    // Final when every voice that changed is named in the same layer either way; the layers
    // the unknown alone would make are their own changes, decided when they are.
    let layer_of = |ls: &[(Layer, Vec<K>)], key: &K| {
        ls.iter()
            .find(|(_, keys)| keys.contains(key))
            .map(|(l, _)| l.clone())
    };
    voices
        .iter()
        .filter(|v| v.answer == Answer::Changed)
        .all(|v| layer_of(&cautious, &v.key) == layer_of(&hopeful, &v.key))
        .then_some(cautious)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Answer::{Before as B, Changed as C, Leaning as L, Unchanged as U, Unheard as N};

    const BOUNDS: Bounds = Bounds {
        min_agents_for_outage: 2,
        min_accounts_for_provider: 2,
    };

    /// gcp: acct-a (g1, g2), acct-b (g3); hetzner: h-acct (h1), h-acct2 (h2).
    fn fleet(answers: [Answer; 5]) -> Vec<Voice<&'static str>> {
        let who = [
            ("g1", "gcp", "acct-a"),
            ("g2", "gcp", "acct-a"),
            ("g3", "gcp", "acct-b"),
            ("h1", "hetzner", "h-acct"),
            ("h2", "hetzner", "h-acct2"),
        ];
        who.iter()
            .zip(answers)
            .map(|((agent, provider, account), answer)| Voice {
                key: *agent,
                provider: provider.to_string(),
                account: account.to_string(),
                agent: agent.to_string(),
                answer,
            })
            .collect()
    }

    fn named(ls: &[(Layer, Vec<&str>)]) -> Vec<String> {
        ls.iter()
            .map(|(l, _)| match l {
                Layer::Destination => "destination".to_string(),
                Layer::Provider { provider } => format!("provider {provider}"),
                Layer::Account { account, .. } => format!("account {account}"),
                Layer::Agent { agent, .. } => format!("agent {agent}"),
            })
            .collect()
    }

    #[test]
    fn each_layer_from_what_everyone_said() {
        let l = |a| named(&layers(&fleet(a), false, BOUNDS));
        assert_eq!(l([C, U, U, U, U]), ["agent g1"]);
        assert_eq!(l([C, C, U, U, U]), ["account acct-a"]);
        assert_eq!(l([C, C, C, U, U]), ["provider gcp"]);
        assert_eq!(l([C, C, C, C, C]), ["destination"]);
        assert_eq!(l([C, C, C, C, U]), ["provider gcp", "account h-acct"]);
        // A provider that always blocked the port is no sign of an outage, nor part of a
        // provider's change.
        assert_eq!(l([B, B, B, C, C]), ["provider hetzner"]);
        assert_eq!(l([B, B, C, U, U]), ["account acct-b"]);
        assert_eq!(l([U, U, U, U, U]), Vec::<String>::new());
    }

    #[test]
    fn one_provider_is_the_destination_only_when_its_agents_reach_other_targets() {
        let v = fleet([C, C, C, N, N]);
        let gcp_only: Vec<_> = v.into_iter().take(3).collect();
        assert_eq!(named(&layers(&gcp_only, false, BOUNDS)), ["provider gcp"]);
        assert_eq!(named(&layers(&gcp_only, true, BOUNDS)), ["destination"]);
    }

    #[test]
    fn a_layer_an_unknown_voice_could_still_widen_waits() {
        // g1 and g2 changed; g3 not heard yet: it could make it the provider.
        assert!(settled(&fleet([C, C, N, U, U]), false, BOUNDS, false).is_none());
        // g3 still reaches the old path: the account, whatever the rest say.
        let s = settled(&fleet([C, C, U, N, N]), false, BOUNDS, false).unwrap();
        assert_eq!(named(&s), ["account acct-a"]);
        // The three gcp agents changed and hetzner is unknown: it could be the destination.
        assert!(settled(&fleet([C, C, C, N, N]), false, BOUNDS, false).is_none());
        // One hetzner agent answered the old state: gcp's own change, final.
        let s = settled(&fleet([C, C, C, U, N]), false, BOUNDS, false).unwrap();
        assert_eq!(named(&s), ["provider gcp"]);
        // Past the deadline what was seen is named: an unheard sibling as unchanged, one whose
        // results since all departed as changed.
        let s = settled(&fleet([C, N, U, U, U]), false, BOUNDS, true).unwrap();
        assert_eq!(named(&s), ["agent g1"]);
        let s = settled(&fleet([C, L, U, U, U]), false, BOUNDS, true).unwrap();
        assert_eq!(named(&s), ["account acct-a"]);
        assert!(settled(&fleet([C, L, U, U, U]), false, BOUNDS, false).is_none());
        // A sibling still unknown could turn one agent into its account: wait.
        assert!(settled(&fleet([C, N, U, U, U]), false, BOUNDS, false).is_none());
    }

    #[test]
    fn every_order_of_the_same_answers_names_the_same_layers() {
        // Whatever order the answers of a destination outage arrive in, no narrower layer is
        // ever final on the way.
        let all = [C, C, C, C, C];
        for order in permutations(5) {
            let mut answers = [N; 5];
            for &i in &order {
                answers[i] = all[i];
                if let Some(s) = settled(&fleet(answers), false, BOUNDS, false) {
                    assert_eq!(named(&s), ["destination"], "{answers:?}");
                }
            }
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
}
