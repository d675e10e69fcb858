//! The cloud providers egresswatch knows, and how a label names one: what each documents about
//! outbound SMTP (`collector/policies.toml`, embedded at compile time), provider-label matching
//! (case-insensitive, with aliases) and the key a label is grouped under everywhere
//! ([`provider_key`]: the matrix, the detector's accounts, silences, alerts), and the
//! comparison of a documented policy with an observed cell status.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

const EMBEDDED: &str = include_str!("../policies.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    provider: Vec<ProviderDoc>,
}

/// One provider's documented policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDoc {
    /// The canonical key, used as the provider name in the matrix.
    pub id: String,
    pub name: String,
    pub aliases: Vec<String>,
    #[serde(default)]
    pub port: Vec<PortDoc>,
}

/// What one provider documents for one port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDoc {
    pub port: u16,
    pub policy: DocPolicy,
    pub summary: String,
    pub for_whom: String,
    pub unblock: String,
    pub source: String,
    /// YYYY-MM-DD, or empty when nobody re-read the page for this file.
    pub read: String,
    pub basis: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocPolicy {
    Blocked,
    Open,
    Restricted,
    Unknown,
}

/// The `doc` object of a provider cell in `/api/matrix`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellDoc {
    pub policy: DocPolicy,
    pub summary: String,
    pub source: String,
    /// `null` when the page was not re-read for the data file (see `basis`).
    pub read: Option<String>,
    pub for_whom: String,
    pub unblock: String,
    pub basis: String,
}

/// All documented policies.
#[derive(Debug, Clone)]
pub struct Policies {
    providers: Vec<ProviderDoc>,
}

impl Policies {
    /// Parses a policies file (the embedded one is checked by a test).
    pub fn parse(text: &str) -> Result<Policies, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Policies {
            providers: file.provider,
        })
    }

    /// The policies embedded in the binary, parsed once.
    pub fn embedded() -> &'static Policies {
        static CELL: OnceLock<Policies> = OnceLock::new();
        CELL.get_or_init(|| {
            Policies::parse(EMBEDDED).unwrap_or_else(|e| {
                tracing::error!("embedded policies.toml does not parse: {e}");
                Policies {
                    providers: Vec::new(),
                }
            })
        })
    }

    pub fn providers(&self) -> &[ProviderDoc] {
        &self.providers
    }

    /// The provider a free-form label names, if it is a known one.
    pub fn find(&self, label: &str) -> Option<&ProviderDoc> {
        // Every matrix view asks, per cell: ASCII names (all of the embedded ones) are compared
        // without lowercased copies.
        let wanted = label.trim();
        let same = |name: &str| {
            if name.is_ascii() && wanted.is_ascii() {
                name.eq_ignore_ascii_case(wanted)
            } else {
                name.to_lowercase() == wanted.to_lowercase()
            }
        };
        self.providers
            .iter()
            .find(|p| same(&p.id) || p.aliases.iter().any(|a| same(a)))
    }

    /// The documented policy of a provider (by canonical id or alias) for one port.
    pub fn doc(&self, provider: &str, port: u16) -> Option<CellDoc> {
        let p = self.find(provider)?;
        let d = p.port.iter().find(|d| d.port == port)?;
        Some(CellDoc {
            policy: d.policy,
            summary: d.summary.clone(),
            source: d.source.clone(),
            read: (!d.read.is_empty()).then(|| d.read.clone()),
            for_whom: d.for_whom.clone(),
            unblock: d.unblock.clone(),
            basis: d.basis.clone(),
        })
    }
}

/// The key a provider label is grouped under: the canonical id of a known provider (so `GCP`,
/// `google` and `gcp` are one row), else the trimmed label; `unlabelled` when empty.
pub fn provider_key(label: &str) -> String {
    if let Some(p) = Policies::embedded().find(label) {
        return p.id.clone();
    }
    crate::identity::label_or_unlabelled(label)
}

/// Whether what we see contradicts what the provider documents. Only definite statements can be
/// contradicted: a documented block seen open, or a documented open port seen blocked.
/// "restricted" (per account, until asked) is consistent with anything.
pub fn contradicts(doc: DocPolicy, observed: &str) -> bool {
    matches!(
        (doc, observed),
        (DocPolicy::Blocked, "open") | (DocPolicy::Open, "blocked")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_parses_and_covers_the_providers() {
        let p = Policies::parse(EMBEDDED).unwrap();
        for id in [
            "gcp",
            "aws",
            "azure",
            "digitalocean",
            "hetzner",
            "linode",
            "scaleway",
            "ovhcloud",
            "vultr",
            "oracle",
        ] {
            assert!(p.find(id).is_some(), "{id}");
        }
        for d in p.providers().iter().flat_map(|p| &p.port) {
            assert!(
                ["provider_page", "unverified", "second_hand_only"].contains(&d.basis.as_str()),
                "{}",
                d.basis
            );
            assert!(d.source.starts_with("https://"));
            assert!(d.read.is_empty() || d.read.len() == 10);
        }
    }

    #[test]
    fn aliases_are_case_insensitive() {
        assert_eq!(provider_key("Google"), "gcp");
        assert_eq!(provider_key(" AMAZON "), "aws");
        assert_eq!(provider_key("Akamai"), "linode");
        assert_eq!(provider_key("DO"), "digitalocean");
        assert_eq!(provider_key("my-colo"), "my-colo");
        assert_eq!(provider_key(""), "unlabelled");
        // Not ASCII: never an embedded provider, and no panic on the way.
        assert_eq!(provider_key("Ünited"), "Ünited");
    }

    #[test]
    fn mismatch_only_on_definite_contradiction() {
        assert!(contradicts(DocPolicy::Blocked, "open"));
        assert!(contradicts(DocPolicy::Open, "blocked"));
        assert!(!contradicts(DocPolicy::Restricted, "open"));
        assert!(!contradicts(DocPolicy::Blocked, "partial"));
        assert!(!contradicts(DocPolicy::Blocked, "unknown"));
    }
}
