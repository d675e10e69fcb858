//! Who reported and which series: an agent's identity as its certificate and hello gave it
//! ([`AgentMeta`]), the one normalised shape the matrix and the detector keep of it
//! ([`KnownAgent`], labels normalised in [`label_or_unlabelled`]), the key of one of its series
//! ([`SeriesKey`]); how far its clock is trusted is [`crate::clock`]'s. Ingest, the store, the
//! matrix and the detector all speak of agents through these types.

use egresswatch_wire::{Family, Labels, ProbeResult};

/// Who sent results: the identity from the certificate and the labels from its hello.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMeta {
    pub agent_id: String,
    pub labels: Labels,
    pub agent_version: String,
}

/// One agent as the matrix and the detector keep it: its labels normalised once (the provider
/// through the policy table's aliases, empty labels `unlabelled`) and when it was last heard.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownAgent {
    pub provider: String,
    pub account: String,
    pub region: String,
    pub instance: String,
    pub last_seen_ms: i64,
    /// Set by the detector once it raised `agent_silent`; the matrix judges silence by time.
    pub silent: bool,
}

impl KnownAgent {
    /// `agent` heard at `now_unix_ms`.
    pub fn new(agent: &AgentMeta, now_unix_ms: i64) -> KnownAgent {
        KnownAgent {
            provider: crate::providers::provider_key(&agent.labels.provider),
            account: label_or_unlabelled(&agent.labels.account),
            region: label_or_unlabelled(&agent.labels.region),
            instance: agent.labels.instance.clone(),
            last_seen_ms: now_unix_ms,
            silent: false,
        }
    }
}

/// A label as grouped by: trimmed, and `unlabelled` when empty.
pub fn label_or_unlabelled(label: &str) -> String {
    let t = label.trim();
    if t.is_empty() {
        "unlabelled".to_string()
    } else {
        t.to_string()
    }
}

/// One series' identity: an agent's probes of one target and port over one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub agent: String,
    pub target: String,
    pub port: u16,
    pub family: Family,
}

impl SeriesKey {
    /// The series `result` of `agent_id` belongs to.
    pub fn of(agent_id: &str, result: &ProbeResult) -> SeriesKey {
        SeriesKey {
            agent: agent_id.to_string(),
            target: result.target.clone(),
            port: result.port,
            family: result.family,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_normalised_once() {
        let meta = AgentMeta {
            agent_id: "a".into(),
            labels: Labels {
                provider: " ".into(),
                account: " acct ".into(),
                region: String::new(),
                instance: "vm".into(),
            },
            agent_version: "t".into(),
        };
        let known = KnownAgent::new(&meta, 7);
        assert_eq!(
            (
                known.provider.as_str(),
                known.account.as_str(),
                known.region.as_str()
            ),
            ("unlabelled", "acct", "unlabelled")
        );
        assert_eq!((known.last_seen_ms, known.silent), (7, false));
    }
}
