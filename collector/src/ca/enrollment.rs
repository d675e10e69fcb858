//! The CA directory's side of enrollment by join token: `token create`, `token list` and
//! `token revoke`, and the transaction that turns a good token and a certificate request into an
//! agent certificate — under the CA directory's lock, so that two enrollments cannot both spend a
//! token's last use, and recorded in `index.json` exactly as `ca issue` records, so `ca list` and
//! `ca revoke` work on enrolled agents unchanged. The decisions are [`super::tokens`]'.

use super::registry::{lock, read_index, replace_file, write_index};
use super::tokens::{self, Refusal, TokenFile, TokenRecord, TOKENS_FILE};
use super::{ca_err, Authority, AGENT_VALIDITY_DAYS};
use crate::error::CollectorError;
use egresswatch_wire::enroll::{hex, EnrollRequest, Enrolled, JoinToken, MAX_CSR_BYTES};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use time::Duration;

/// What `token create` is asked for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub uses: u32,
    pub valid_for_secs: i64,
    pub labels: BTreeMap<String, String>,
}

/// A token's lifetime as `--expires` takes it: a number and a unit, `s`, `m`, `h` or `d`
/// (`30m`, `24h`, `7d`); at most 365 days.
pub fn parse_lifetime(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let bad = || format!("--expires {text:?}: expected a number and s, m, h or d (e.g. 24h)");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(scale).ok_or_else(bad)?;
    if secs <= 0 || secs > 365 * 86_400 {
        return Err(format!(
            "--expires {text:?}: must be more than 0 and at most 365d"
        ));
    }
    Ok(secs)
}

/// Reads `tokens.json`; none yet is an empty file.
pub fn read_tokens(dir: &Path) -> Result<TokenFile, CollectorError> {
    let path = dir.join(TOKENS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
        Err(e) => return Err(CollectorError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text).map_err(|e| ca_err(&format!("{}", path.display()), e))
}

fn write_tokens(dir: &Path, file: &TokenFile) -> Result<(), CollectorError> {
    let mut text = serde_json::to_string_pretty(file).map_err(|e| ca_err(TOKENS_FILE, e))?;
    text.push('\n');
    replace_file(dir, TOKENS_FILE, text.as_bytes())
}

/// `token create`: a new token, returned as the text shown once, and its record.
pub fn create_token(
    dir: &Path,
    request: &TokenRequest,
    now: i64,
) -> Result<(String, TokenRecord), CollectorError> {
    if !super::exists(dir) {
        return Err(CollectorError::Ca(format!(
            "{} holds no CA (ca.pem and ca.key): start the collector once (it makes one) or run `ca init`",
            dir.display()
        )));
    }
    if request.uses == 0 {
        return Err(CollectorError::Ca("--uses must be at least 1".into()));
    }
    if request.valid_for_secs <= 0 {
        return Err(CollectorError::Ca("--expires must be in the future".into()));
    }
    let authority = Authority::load(dir)?;
    let token = JoinToken {
        id: rand::random(),
        secret: rand::random(),
        ca_sha256: authority.fingerprint()?,
    };
    let record = TokenRecord {
        id: token.id_hex(),
        secret_sha256: tokens::secret_hash(&token.secret),
        created_at: now,
        expires_at: now.saturating_add(request.valid_for_secs),
        uses_allowed: request.uses,
        uses: 0,
        revoked_at: None,
        labels: request.labels.clone(),
        enrolled: Vec::new(),
    };
    let _lock = lock(dir)?;
    let mut file = read_tokens(dir)?;
    file.tokens.push(record.clone());
    write_tokens(dir, &file)?;
    Ok((token.to_text(), record))
}

/// `token revoke`: the token can no longer enroll anyone (agents it enrolled keep their
/// certificates; `ca revoke` those).
pub fn revoke_token(dir: &Path, id: &str, now: i64) -> Result<TokenRecord, CollectorError> {
    let _lock = lock(dir)?;
    let mut file = read_tokens(dir)?;
    let Some(record) = file.tokens.iter_mut().find(|t| t.id == id) else {
        return Err(CollectorError::Ca(format!(
            "no token {id:?} in {}",
            dir.join(TOKENS_FILE).display()
        )));
    };
    if record.revoked_at.is_none() {
        record.revoked_at = Some(now);
    }
    let revoked = record.clone();
    write_tokens(dir, &file)?;
    Ok(revoked)
}

/// `token list`: one line per token, oldest first; never a secret (none is kept).
pub fn list_tokens(dir: &Path, now: i64) -> Result<String, CollectorError> {
    let file = read_tokens(dir)?;
    let mut out = format!(
        "{:<16}  {:<20}  {:<20}  {:>9}  {:<8}  labels / enrolled\n",
        "token", "created", "expires", "uses", "status"
    );
    for t in &file.tokens {
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "{:<16}  {:<20}  {:<20}  {:>9}  {:<8}  {}{}{}\n",
            t.id,
            date(t.created_at),
            date(t.expires_at),
            format!("{}/{}", t.uses, t.uses_allowed),
            tokens::status(t, now),
            labels.join(","),
            if t.enrolled.is_empty() { "" } else { " / " },
            t.enrolled.join(",")
        ));
    }
    if file.tokens.is_empty() {
        out.push_str("(no tokens; make one with `token create`)\n");
    }
    Ok(out)
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// An enrollment's result: issued, or refused with the reason (an I/O failure is an `Err`).
#[derive(Debug)]
pub enum Outcome {
    Enrolled(Enrolled),
    Refused(Refusal),
}

/// Decides an enrollment request and, if the token is good, issues the agent's certificate:
/// the token's use is counted, the certificate recorded in `index.json`, under the lock.
pub fn enroll(
    authority: &Authority,
    request: &EnrollRequest,
    now: i64,
) -> Result<Outcome, CollectorError> {
    if request.csr_der.len() > MAX_CSR_BYTES {
        return Ok(Outcome::Refused(Refusal::Malformed(format!(
            "a certificate request of {} bytes (at most {MAX_CSR_BYTES})",
            request.csr_der.len()
        ))));
    }
    let dir = authority.dir();
    let _lock = lock(dir)?;
    let mut file = read_tokens(dir)?;
    let index_of = match tokens::decide(&file, &request.token_id, &request.secret, now) {
        Ok(i) => i,
        Err(refusal) => return Ok(Outcome::Refused(refusal)),
    };
    let (agent_id, public_key) = match read_request(&request.csr_der) {
        Ok(read) => read,
        Err(why) => return Ok(Outcome::Refused(Refusal::Malformed(why))),
    };
    let mut index = read_index(dir)?;
    let taken = index
        .certificates
        .iter()
        .any(|c| c.agent_id == agent_id && c.revoked_at.is_none() && c.not_after > now);
    if taken {
        return Ok(Outcome::Refused(Refusal::NameTaken(agent_id)));
    }
    let (cert_pem, record) = authority.sign_agent_request(
        &agent_id,
        &public_key,
        Duration::days(AGENT_VALIDITY_DAYS),
    )?;
    // The use is spent first: should the index write then fail, the agent gets no certificate
    // and the token is one use poorer, never one richer.
    let token = &mut file.tokens[index_of];
    token.uses += 1;
    token.enrolled.push(agent_id.clone());
    let labels = tokens::wire_labels(&token.labels);
    write_tokens(dir, &file)?;
    index.certificates.push(record);
    write_index(dir, &index)?;
    Ok(Outcome::Enrolled(Enrolled {
        agent_id,
        cert_pem,
        ca_pem: authority.cert_pem().to_string(),
        labels,
    }))
}

/// Why a renewal was refused (the session goes on with the certificate it has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewRefusal {
    /// The certificate of the session is not in `index.json` (issued before the index existed).
    NotOnRecord,
    Revoked,
    /// More than half of the certificate's life is left.
    TooEarly {
        due_at: i64,
    },
    Malformed(String),
}

impl RenewRefusal {
    pub fn name(&self) -> &'static str {
        match self {
            RenewRefusal::NotOnRecord => "not_on_record",
            RenewRefusal::Revoked => "revoked",
            RenewRefusal::TooEarly { .. } => "too_early",
            RenewRefusal::Malformed(_) => "malformed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            RenewRefusal::NotOnRecord => "this certificate is not in the CA's index.json (issued before it existed): issue or enroll a new one".into(),
            RenewRefusal::Revoked => "this certificate has been revoked".into(),
            RenewRefusal::TooEarly { due_at } => format!(
                "too early: more than half of this certificate's life is left (ask from Unix time {due_at} on)"
            ),
            RenewRefusal::Malformed(why) => format!("malformed renewal request: {why}"),
        }
    }
}

/// Whether the certificate `serial` of `agent_id`, valid `not_before..not_after`, may be renewed
/// at `now` according to `index`, and for how long the new one is valid (as long as this one
/// was issued for). From half its life on: the agent asks at two thirds, and the margin is for
/// clocks that differ.
pub fn renewal_decision(
    index: &super::registry::Index,
    agent_id: &str,
    serial: &str,
    not_before: i64,
    not_after: i64,
    now: i64,
) -> Result<i64, RenewRefusal> {
    let Some(record) = index
        .certificates
        .iter()
        .find(|c| c.serial == serial && c.agent_id == agent_id)
    else {
        return Err(RenewRefusal::NotOnRecord);
    };
    if record.revoked_at.is_some() {
        return Err(RenewRefusal::Revoked);
    }
    let half = not_after - (not_after - not_before) / 2;
    if now < half {
        return Err(RenewRefusal::TooEarly { due_at: half });
    }
    Ok(
        (record.not_after - record.issued_at)
            .clamp(MIN_VALIDITY_SECS, AGENT_VALIDITY_DAYS * 86_400),
    )
}

/// The shortest certificate life the CA issues (`ca issue --valid-for`, renewals).
pub const MIN_VALIDITY_SECS: i64 = 10;

/// What a renewal did.
#[derive(Debug)]
pub enum Renewal {
    Renewed { cert_pem: String, not_after: i64 },
    Refused(RenewRefusal),
}

/// Renews the session's certificate (`agent_id`, `serial` hex, its validity) for the public key
/// of `csr_der`, recorded in `index.json` under the lock; the old certificate stays valid until
/// it expires.
pub fn renew(
    authority: &Authority,
    agent_id: &str,
    serial: &str,
    validity: (i64, i64),
    csr_der: &[u8],
    now: i64,
) -> Result<Renewal, CollectorError> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Ok(Renewal::Refused(RenewRefusal::Malformed(format!(
            "a certificate request of {} bytes",
            csr_der.len()
        ))));
    }
    let public_key = match read_request_key(csr_der) {
        Ok(key) => key,
        Err(why) => return Ok(Renewal::Refused(RenewRefusal::Malformed(why))),
    };
    let dir = authority.dir();
    let _lock = lock(dir)?;
    let mut index = read_index(dir)?;
    let secs = match renewal_decision(&index, agent_id, serial, validity.0, validity.1, now) {
        Ok(secs) => secs,
        Err(refusal) => return Ok(Renewal::Refused(refusal)),
    };
    let (cert_pem, record) =
        authority.sign_agent_request(agent_id, &public_key, Duration::seconds(secs))?;
    let not_after = record.not_after;
    index.certificates.push(record);
    write_index(dir, &index)?;
    Ok(Renewal::Renewed {
        cert_pem,
        not_after,
    })
}

/// The public key of a certificate request whose signature holds.
fn read_request_key(csr_der: &[u8]) -> Result<rcgen::PublicKey, String> {
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    rcgen::CertificateSigningRequestParams::from_der(&der)
        .map(|params| params.public_key)
        .map_err(|e| format!("certificate request (its signature does not verify?): {e}"))
}

/// The agent id (subject CN) and public key of a certificate request whose signature holds.
pub fn read_request(csr_der: &[u8]) -> Result<(String, rcgen::PublicKey), String> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| format!("certificate request: {e}"))?;
    let cn = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate request names no agent id (subject CN)")?
        .to_string();
    egresswatch_wire::labels::validate_agent_id(&cn).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let params = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| format!("certificate request (its signature does not verify?): {e}"))?;
    Ok((cn, params.public_key))
}

/// The fingerprint a token for this CA pins, hex (for logs and tests).
pub fn fingerprint_hex(authority: &Authority) -> Result<String, CollectorError> {
    Ok(hex(&authority.fingerprint()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

    fn csr(name: &str) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn request(token: &str, csr_der: Vec<u8>) -> EnrollRequest {
        let token = JoinToken::parse(token).unwrap();
        EnrollRequest {
            token_id: token.id_hex(),
            secret: hex(&token.secret),
            csr_der,
        }
    }

    #[test]
    fn a_token_enrolls_as_many_agents_as_it_allows_and_they_are_on_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        super::super::init(&dir).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let labels = tokens::parse_labels(&["provider=aws".into()]).unwrap();
        let (text, record) = create_token(
            &dir,
            &TokenRequest {
                uses: 2,
                valid_for_secs: 3600,
                labels,
            },
            now,
        )
        .unwrap();
        let on_disk = fs::read_to_string(dir.join(TOKENS_FILE)).unwrap();
        let secret = hex(&JoinToken::parse(&text).unwrap().secret);
        assert!(!on_disk.contains(&secret), "the secret is never stored");
        let authority = Authority::load(&dir).unwrap();
        assert_eq!(
            JoinToken::parse(&text).unwrap().ca_sha256,
            authority.fingerprint().unwrap()
        );
        let Outcome::Enrolled(first) =
            enroll(&authority, &request(&text, csr("vm-1")), now).unwrap()
        else {
            panic!("refused")
        };
        assert_eq!(first.agent_id, "vm-1");
        assert_eq!(first.labels.provider, "aws");
        // The same name again is taken while its certificate is valid.
        assert!(matches!(
            enroll(&authority, &request(&text, csr("vm-1")), now).unwrap(),
            Outcome::Refused(Refusal::NameTaken(_))
        ));
        assert!(matches!(
            enroll(&authority, &request(&text, csr("vm-2")), now).unwrap(),
            Outcome::Enrolled(_)
        ));
        assert!(matches!(
            enroll(&authority, &request(&text, csr("vm-3")), now).unwrap(),
            Outcome::Refused(Refusal::UsedUp)
        ));
        assert!(matches!(
            enroll(&authority, &request(&text, b"garbage".to_vec()), now).unwrap(),
            Outcome::Refused(Refusal::UsedUp)
        ));
        let ids: Vec<String> = read_index(&dir)
            .unwrap()
            .certificates
            .into_iter()
            .map(|c| c.agent_id)
            .collect();
        assert_eq!(ids, ["vm-1", "vm-2"]);
        let listing = list_tokens(&dir, now).unwrap();
        assert!(
            listing.contains(&record.id) && listing.contains("2/2") && listing.contains("used up")
        );
        assert!(listing.contains("vm-1,vm-2"), "{listing}");
        // `ca revoke` works on an enrolled agent.
        super::super::registry::revoke(&dir, "vm-1", "gone").unwrap();
    }

    #[test]
    fn renewal_is_for_a_recorded_unrevoked_certificate_from_half_its_life() {
        use super::super::registry::{Index, IssuedRecord};
        let record = |serial: &str, revoked_at| IssuedRecord {
            serial: serial.into(),
            agent_id: "vm-1".into(),
            issued_at: 1_000,
            not_after: 1_300,
            revoked_at,
            reason: String::new(),
        };
        let index = Index {
            crl_number: 0,
            certificates: vec![record("aa", None), record("bb", Some(1_100))],
        };
        assert_eq!(
            renewal_decision(&index, "vm-1", "aa", 970, 1_300, 1_100),
            Err(RenewRefusal::TooEarly { due_at: 1_135 })
        );
        assert_eq!(
            renewal_decision(&index, "vm-1", "aa", 970, 1_300, 1_135),
            Ok(300)
        );
        assert_eq!(
            renewal_decision(&index, "vm-1", "bb", 970, 1_300, 1_200),
            Err(RenewRefusal::Revoked)
        );
        assert_eq!(
            renewal_decision(&index, "vm-2", "aa", 970, 1_300, 1_200),
            Err(RenewRefusal::NotOnRecord)
        );
        assert_eq!(
            renewal_decision(&index, "vm-1", "cc", 970, 1_300, 1_200),
            Err(RenewRefusal::NotOnRecord)
        );
    }

    #[test]
    fn lifetimes_have_a_unit_and_a_bound() {
        assert_eq!(parse_lifetime("90s"), Ok(90));
        assert_eq!(parse_lifetime("30m"), Ok(1800));
        assert_eq!(parse_lifetime("24h"), Ok(86_400));
        assert_eq!(parse_lifetime("7d"), Ok(604_800));
        for bad in [
            "",
            "h",
            "24",
            "0h",
            "-1h",
            "366d",
            "1w",
            "99999999999999999d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_request_is_malformed_and_spends_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let asked = |uses, valid_for_secs| TokenRequest {
            uses,
            valid_for_secs,
            labels: BTreeMap::new(),
        };
        let no_ca = create_token(&dir, &asked(1, 60), 0)
            .unwrap_err()
            .to_string();
        assert!(no_ca.contains("holds no CA"), "{no_ca}");
        super::super::init(&dir).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(create_token(&dir, &asked(0, 60), now).is_err());
        assert!(create_token(&dir, &asked(1, 0), now).is_err());
        let (text, record) = create_token(&dir, &asked(1, 60), now).unwrap();
        let authority = Authority::load(&dir).unwrap();
        for der in [b"garbage".to_vec(), csr("../evil"), csr("")] {
            assert!(matches!(
                enroll(&authority, &request(&text, der), now).unwrap(),
                Outcome::Refused(Refusal::Malformed(_))
            ));
        }
        assert_eq!(read_tokens(&dir).unwrap().tokens[0].uses, 0);
        revoke_token(&dir, &record.id, now).unwrap();
        assert!(matches!(
            enroll(&authority, &request(&text, csr("vm-1")), now).unwrap(),
            Outcome::Refused(Refusal::Revoked)
        ));
        assert!(matches!(
            enroll(&authority, &request(&text, csr("vm-1")), now + 61).unwrap(),
            Outcome::Refused(Refusal::Revoked)
        ));
        assert!(revoke_token(&dir, "0000000000000000", now).is_err());
    }
}
