//! Join tokens, decided without I/O: what the CA directory keeps about each token
//! (`tokens.json`, beside `index.json`), and the rules that accept or refuse one presented by an
//! enrolling agent — unknown, revoked, expired, used up, or a secret that does not match — and
//! the per-source rate of attempts. The collector's shell (`ingest::enroll`) and the CA's file
//! transaction ([`super::enrollment`]) only carry these decisions out.
//!
//! Only the SHA-256 of a token's secret is kept; the secret is shown once, when the token is
//! made, and compared here in constant time.

use egresswatch_wire::enroll::{hex, unhex, TOKEN_SECRET_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The tokens' file, in the CA directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// The labels a token may carry: those an agent reports.
pub const LABEL_KEYS: [&str; 4] = ["provider", "account", "region", "instance"];

/// One token as `tokens.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// 16 hex digits; printed in logs and `token list`.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    /// Enrollments it allows in all.
    pub uses_allowed: u32,
    /// Enrollments it made.
    #[serde(default)]
    pub uses: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Labels given to the agents it enrolls (`provider`, `account`, `region`, `instance`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The agents it enrolled, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrolled: Vec<String>,
}

/// `tokens.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// Why an enrollment was refused. The name is the `result` label of
/// `egresswatch_enrollments_total` and what the log line says; the message goes to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request or the token could not be read.
    Malformed(String),
    /// No token has this id, or its secret does not match (the same answer for both, so the
    /// answer does not tell which ids exist).
    Unknown,
    Expired,
    UsedUp,
    Revoked,
    /// Too many attempts from this source address.
    RateLimited,
    /// The agent id asked for already has a valid certificate.
    NameTaken(String),
}

impl Refusal {
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
            Refusal::UsedUp => "used_up",
            Refusal::Revoked => "revoked",
            Refusal::RateLimited => "rate_limited",
            Refusal::NameTaken(_) => "name_taken",
        }
    }

    /// What the agent is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::Malformed(why) => format!("malformed enrollment request: {why}"),
            Refusal::Unknown => "unknown token (no such token, or a wrong secret)".into(),
            Refusal::Expired => "this token has expired".into(),
            Refusal::UsedUp => "this token has been used as many times as it allows".into(),
            Refusal::Revoked => "this token has been revoked".into(),
            Refusal::RateLimited => "too many enrollment attempts from this address; wait a minute".into(),
            Refusal::NameTaken(id) => format!(
                "agent id {id:?} already has a valid certificate; choose another --name, or `ca revoke` the old one first"
            ),
        }
    }
}

/// SHA-256 of a secret, hex.
pub fn secret_hash(secret: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret).as_ref())
}

/// Decides a presented token at `now` (Unix seconds): the index of its record in `file`, or why
/// it is refused. Checks in the order an operator would want to be told: the secret first (a
/// wrong secret learns nothing else), then revoked, expired, used up.
pub fn decide(
    file: &TokenFile,
    token_id: &str,
    secret_hex: &str,
    now: i64,
) -> Result<usize, Refusal> {
    let Some(secret) = unhex::<TOKEN_SECRET_BYTES>(secret_hex) else {
        return Err(Refusal::Malformed("the secret is not 64 hex digits".into()));
    };
    let presented = secret_hash(&secret);
    let Some(index) = file.tokens.iter().position(|t| t.id == token_id) else {
        return Err(Refusal::Unknown);
    };
    let record = &file.tokens[index];
    if !bool::from(
        presented
            .as_bytes()
            .ct_eq(record.secret_sha256.to_ascii_lowercase().as_bytes()),
    ) {
        return Err(Refusal::Unknown);
    }
    if record.revoked_at.is_some() {
        return Err(Refusal::Revoked);
    }
    if now >= record.expires_at {
        return Err(Refusal::Expired);
    }
    if record.uses >= record.uses_allowed {
        return Err(Refusal::UsedUp);
    }
    Ok(index)
}

/// A token's state for `token list` at `now`.
pub fn status(record: &TokenRecord, now: i64) -> &'static str {
    if record.revoked_at.is_some() {
        "revoked"
    } else if now >= record.expires_at {
        "expired"
    } else if record.uses >= record.uses_allowed {
        "used up"
    } else {
        "usable"
    }
}

/// Parses `KEY=VALUE` token labels; keys are those an agent reports, values the wire's rules.
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not KEY=VALUE"))?;
        let key = key.trim();
        let Some(name) = LABEL_KEYS.iter().find(|k| **k == key) else {
            return Err(format!(
                "label {key:?} is not one of {}",
                LABEL_KEYS.join(", ")
            ));
        };
        let value =
            egresswatch_wire::labels::validate_label(name, value).map_err(|e| e.to_string())?;
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// The wire's labels from a token's.
pub fn wire_labels(labels: &BTreeMap<String, String>) -> egresswatch_wire::Labels {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    egresswatch_wire::Labels {
        provider: get("provider"),
        account: get("account"),
        region: get("region"),
        instance: get("instance"),
    }
}

/// Enrollment attempts per source address: a bucket of `burst` attempts refilled at `per_minute`,
/// refused (not delayed) when empty. Attempts are cheap to make and each costs the collector a
/// signature check and a file transaction, so a guesser is held to a trickle.
#[derive(Debug)]
pub struct AttemptLimiter {
    per_minute: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Above this many sources, full buckets are forgotten.
    prune_above: usize,
}

impl AttemptLimiter {
    pub fn new(per_minute: u32, burst: u32) -> AttemptLimiter {
        AttemptLimiter {
            per_minute: f64::from(per_minute.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            prune_above: 4096,
        }
    }

    /// Whether `source` may make one more attempt at `now` (and takes it).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let refill = |tokens: f64, at: Instant, rate: f64, burst: f64| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * rate / 60.0).min(burst)
        };
        let (rate, burst) = (self.per_minute, self.burst);
        if self.buckets.len() > self.prune_above {
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, rate, burst) < burst);
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((burst, now));
        let available = refill(*tokens, *at, rate, burst);
        *at = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }

    /// How long until a refused source may try again.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(60.0 / self.per_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(record: TokenRecord) -> TokenFile {
        TokenFile {
            tokens: vec![record],
        }
    }

    fn record(secret: &[u8; 32]) -> TokenRecord {
        TokenRecord {
            id: "0102030405060708".into(),
            secret_sha256: secret_hash(secret),
            created_at: 0,
            expires_at: 1_000,
            uses_allowed: 2,
            uses: 0,
            revoked_at: None,
            labels: BTreeMap::new(),
            enrolled: Vec::new(),
        }
    }

    #[test]
    fn a_good_token_is_accepted_until_its_uses_are_spent() {
        let secret = [7u8; 32];
        let mut file = file_with(record(&secret));
        let id = "0102030405060708";
        assert_eq!(decide(&file, id, &hex(&secret), 10), Ok(0));
        file.tokens[0].uses = 2;
        assert_eq!(decide(&file, id, &hex(&secret), 10), Err(Refusal::UsedUp));
        assert_eq!(status(&file.tokens[0], 10), "used up");
    }

    #[test]
    fn each_bad_token_is_refused_with_its_reason() {
        let secret = [7u8; 32];
        let id = "0102030405060708";
        let file = file_with(record(&secret));
        assert_eq!(
            decide(&file, id, &hex(&secret), 1_000),
            Err(Refusal::Expired)
        );
        assert_eq!(
            decide(&file, "ffffffffffffffff", &hex(&secret), 10),
            Err(Refusal::Unknown)
        );
        // A wrong secret for a real id is the same answer as an unknown id.
        assert_eq!(
            decide(&file, id, &hex(&[8u8; 32]), 10),
            Err(Refusal::Unknown)
        );
        assert!(matches!(
            decide(&file, id, "not hex", 10),
            Err(Refusal::Malformed(_))
        ));
        let mut revoked = file.clone();
        revoked.tokens[0].revoked_at = Some(5);
        // Revoked wins over expired: it is what the operator did.
        assert_eq!(
            decide(&revoked, id, &hex(&secret), 2_000),
            Err(Refusal::Revoked)
        );
        // A wrong secret never learns that the token was revoked.
        assert_eq!(
            decide(&revoked, id, &hex(&[8u8; 32]), 10),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn labels_are_the_agents_keys_with_the_wires_rules() {
        let ok = parse_labels(&["provider=aws".into(), "account= prod ".into()]).unwrap();
        assert_eq!(ok.get("account").map(String::as_str), Some("prod"));
        assert_eq!(wire_labels(&ok).provider, "aws");
        assert!(parse_labels(&["colour=red".into()]).is_err());
        assert!(parse_labels(&["provider".into()]).is_err());
        assert!(parse_labels(&["provider=a".into(), "provider=b".into()]).is_err());
        assert!(parse_labels(&["region=a\u{7}".into()]).is_err());
    }

    #[test]
    fn attempts_are_limited_per_source_and_refill() {
        let mut limiter = AttemptLimiter::new(6, 3);
        let start = Instant::now();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allow(a, start));
        }
        assert!(!limiter.allow(a, start));
        assert!(limiter.allow(b, start), "another source is not affected");
        // Six a minute: one more after ten seconds.
        assert!(limiter.allow(a, start + Duration::from_secs(10)));
        assert!(!limiter.allow(a, start + Duration::from_secs(11)));
        assert_eq!(limiter.retry_after(), Duration::from_secs(10));
    }
}
