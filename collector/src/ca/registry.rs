//! What the fleet CA issued and what it revoked. `ca issue` records every agent certificate in
//! `index.json` (serial, agent id, validity); `ca revoke` marks an agent's certificates revoked
//! there and re-signs `crl.pem`, an X.509 certificate revocation list signed by the CA key. The
//! CRL is what the running collector loads: rustls checks every client certificate against it
//! at the handshake, and the ingest closes live sessions of serials it lists (see
//! `ingest::revocation`). The index is the source of truth; the CRL is always regenerated from
//! it whole, so a failed write is repaired by running `ca revoke` again.

use super::{ca_err, Authority};
use crate::error::CollectorError;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The record of issued certificates, in the CA directory.
pub const INDEX_FILE: &str = "index.json";
/// The revocation list the collector loads, in the CA directory.
pub const CRL_FILE: &str = "crl.pem";
const LOCK_FILE: &str = ".lock";
/// Longest revocation reason kept; it is a note for people, not data.
const MAX_REASON_CHARS: usize = 200;

/// One issued certificate as `index.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    pub agent_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub not_after: i64,
    /// Unix seconds; absent while the certificate is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    /// Number of the last CRL signed (CRL numbers only ever grow).
    #[serde(default)]
    pub crl_number: u64,
    #[serde(default)]
    pub certificates: Vec<IssuedRecord>,
}

/// A loaded revocation list: DER for rustls, the revoked serials for live sessions.
#[derive(Debug, Clone)]
pub struct RevocationList {
    pub der: CertificateRevocationListDer<'static>,
    /// Normalised serials (see [`normalise_serial`]).
    pub revoked: HashSet<Vec<u8>>,
}

/// Serial bytes without leading zeros, so that DER's sign padding never makes two spellings.
pub fn normalise_serial(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

pub fn serial_hex(bytes: &[u8]) -> String {
    normalise_serial(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serial_from_hex(hex: &str) -> Result<Vec<u8>, CollectorError> {
    let bad = || CollectorError::Ca(format!("{INDEX_FILE}: serial {hex:?} is not hex"));
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => std::str::from_utf8(&[*hi, *lo])
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad),
            _ => Err(bad()),
        })
        .collect()
}

/// An exclusive lock on the CA directory for the length of one command, so that a `ca issue`
/// and a `ca revoke` running at once cannot lose each other's index entries.
pub(super) struct DirLock {
    _file: fs::File,
}

pub(super) fn lock(dir: &Path) -> Result<DirLock, CollectorError> {
    let path = dir.join(LOCK_FILE);
    // Read-only is enough for flock, and works on a lock file another user (root running
    // `ca issue`) created before the collector's own user needed it.
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CollectorError::io(format!("opening {}", path.display()), e))?,
        Err(e) => return Err(CollectorError::io(format!("opening {}", path.display()), e)),
    };
    // SAFETY: flock on a descriptor we own; released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(CollectorError::io(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(DirLock { _file: file })
}

/// Reads `index.json`; a CA made before the index existed has none (an empty index).
pub fn read_index(dir: &Path) -> Result<Index, CollectorError> {
    let path = dir.join(INDEX_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
        Err(e) => return Err(CollectorError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text).map_err(|e| ca_err(&format!("{}", path.display()), e))
}

/// Replaces `name` in `dir` atomically: a reader sees the old file or the new one, never half.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CollectorError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |what: &str, e| CollectorError::io(format!("{what} {}", tmp.display()), e);
    let mut file = fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    fs::rename(&tmp, &path)
        .map_err(|e| CollectorError::io(format!("replacing {}", path.display()), e))
}

pub(super) fn write_index(dir: &Path, index: &Index) -> Result<(), CollectorError> {
    let mut text = serde_json::to_string_pretty(index).map_err(|e| ca_err(INDEX_FILE, e))?;
    text.push('\n');
    replace_file(dir, INDEX_FILE, text.as_bytes())
}

/// Adds a freshly issued certificate to the index.
pub(super) fn record_issued(dir: &Path, record: IssuedRecord) -> Result<(), CollectorError> {
    let _lock = lock(dir)?;
    let mut index = read_index(dir)?;
    index.certificates.push(record);
    write_index(dir, &index)
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// Certificates revoked by this call.
    pub newly_revoked: Vec<IssuedRecord>,
    /// The agent's certificates that were revoked before.
    pub already_revoked: usize,
    pub crl: PathBuf,
}

/// `ca revoke`: revokes every certificate issued to `agent_id` and re-signs the CRL.
///
/// A certificate issued before the index existed is found at `DIR/agents/<id>.crt` (where
/// `ca issue` writes by default) and recorded first. An agent re-issued after a revocation gets
/// a new serial and is valid again.
pub fn revoke(dir: &Path, agent_id: &str, reason: &str) -> Result<Revocation, CollectorError> {
    let authority = Authority::load(dir)?;
    let _lock = lock(dir)?;
    let mut index = read_index(dir)?;
    if !index.certificates.iter().any(|c| c.agent_id == agent_id) {
        if let Some(record) = legacy_record(dir, agent_id)? {
            index.certificates.push(record);
        }
    }
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut newly_revoked = Vec::new();
    let mut already_revoked = 0;
    for record in index
        .certificates
        .iter_mut()
        .filter(|c| c.agent_id == agent_id)
    {
        if record.revoked_at.is_some() {
            already_revoked += 1;
        } else {
            record.revoked_at = Some(now);
            record.reason = reason.clone();
            newly_revoked.push(record.clone());
        }
    }
    if newly_revoked.is_empty() && already_revoked == 0 {
        return Err(CollectorError::Ca(format!(
            "no certificate issued to {agent_id:?} is on record in {} (nor at {}): nothing to revoke",
            dir.join(INDEX_FILE).display(),
            dir.join("agents").join(format!("{agent_id}.crt")).display()
        )));
    }
    index.crl_number += 1;
    // The index first: if the CRL write then fails, running `ca revoke` again rewrites it.
    write_index(dir, &index)?;
    let crl = authority.sign_crl(&index)?;
    replace_file(dir, CRL_FILE, crl.as_bytes())?;
    Ok(Revocation {
        newly_revoked,
        already_revoked,
        crl: dir.join(CRL_FILE),
    })
}

/// The record of `DIR/agents/<id>.crt`, for certificates issued before the index existed.
fn legacy_record(dir: &Path, agent_id: &str) -> Result<Option<IssuedRecord>, CollectorError> {
    use rustls_pki_types::pem::PemObject;
    // Only a valid agent id may become a path.
    if egresswatch_wire::labels::validate_agent_id(agent_id).is_err() {
        return Ok(None);
    }
    let path = dir.join("agents").join(format!("{agent_id}.crt"));
    if !path.exists() {
        return Ok(None);
    }
    let der = rustls_pki_types::CertificateDer::from_pem_file(&path)
        .map_err(|e| ca_err(&format!("{}", path.display()), e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| ca_err(&format!("{}", path.display()), e))?;
    Ok(Some(IssuedRecord {
        serial: serial_hex(cert.raw_serial()),
        agent_id: agent_id.to_string(),
        issued_at: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        revoked_at: None,
        reason: String::new(),
    }))
}

impl Authority {
    /// Signs a CRL listing every revoked certificate of `index`, as PEM.
    fn sign_crl(&self, index: &Index) -> Result<String, CollectorError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for record in &index.certificates {
            let Some(at) = record.revoked_at else {
                continue;
            };
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_from_hex(&record.serial)?),
                revocation_time: OffsetDateTime::from_unix_timestamp(at)
                    .map_err(|e| ca_err("revocation time", e))?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            // The collector does not enforce next_update (the list only changes when someone
            // revokes); far enough out that other tools reading it do not call it stale.
            next_update: now + Duration::days(3650),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.cert, &self.key)
            .map_err(|e| ca_err("signing the revocation list", e))?;
        crl.pem().map_err(|e| ca_err("revocation list PEM", e))
    }
}

/// Loads `DIR/crl.pem`; `Ok(None)` when there is none (nothing was ever revoked).
pub fn load_crl(dir: &Path) -> Result<Option<RevocationList>, CollectorError> {
    use rustls_pki_types::pem::PemObject;
    let path = dir.join(CRL_FILE);
    let pem = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CollectorError::io(format!("reading {}", path.display()), e)),
    };
    let der = CertificateRevocationListDer::from_pem_slice(&pem)
        .map_err(|e| ca_err(&format!("{}", path.display()), e))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| ca_err(&format!("{}", path.display()), e))?;
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| normalise_serial(r.raw_serial()))
        .collect();
    Ok(Some(RevocationList { der, revoked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalise_and_round_trip_through_hex() {
        assert_eq!(normalise_serial(&[0, 0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(serial_hex(&[0, 0x0a, 0xff]), "0aff");
        assert_eq!(serial_from_hex("0aff").unwrap(), vec![0x0a, 0xff]);
        assert!(serial_from_hex("0g").is_err());
        assert!(serial_from_hex("abc").is_err());
    }

    #[test]
    fn revoke_lists_the_serial_in_a_signed_crl_and_reissue_is_valid_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        super::super::init(&dir).unwrap();
        assert!(load_crl(&dir).unwrap().is_none());
        assert!(revoke(&dir, "nobody", "").is_err());
        super::super::issue_to_files(&dir, "vm-1", None).unwrap();
        super::super::issue_to_files(&dir, "vm-2", None).unwrap();
        let first = revoke(&dir, "vm-1", "key leaked\n\x1b[31m").unwrap();
        assert_eq!(first.newly_revoked.len(), 1);
        assert_eq!(first.newly_revoked[0].reason, "key leaked[31m");
        let crl = load_crl(&dir).unwrap().unwrap();
        let serial = serial_from_hex(&first.newly_revoked[0].serial).unwrap();
        assert_eq!(crl.revoked, HashSet::from([serial]));
        let again = revoke(&dir, "vm-1", "").unwrap();
        assert_eq!((again.newly_revoked.len(), again.already_revoked), (0, 1));
        super::super::issue_to_files(&dir, "vm-1", None).unwrap();
        let index = read_index(&dir).unwrap();
        assert_eq!(index.certificates.len(), 3);
        assert_eq!(index.crl_number, 2);
        assert_eq!(
            index
                .certificates
                .iter()
                .filter(|c| c.revoked_at.is_none())
                .count(),
            2
        );
    }
}
