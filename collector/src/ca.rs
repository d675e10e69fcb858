//! The fleet's certificate authority: a small CA on the collector's disk that issues one
//! certificate per agent (its identity) and the collector's own server certificate. Agents
//! trust the collector through the same CA, so no public PKI is involved.
//!
//! Layout of a CA directory: `ca.pem` (the CA certificate, given to agents), `ca.key` (0600, never
//! leaves the collector), and by default `agents/<id>.crt` + `agents/<id>.key` for issued agents.
//! `index.json` records every issued certificate and `crl.pem` lists the revoked ones
//! ([`registry`]). `tokens.json` keeps the join tokens agents enroll with ([`tokens`],
//! [`enrollment`]): an enrolled agent's certificate is recorded in `index.json` like an issued
//! one.

pub mod enrollment;
pub mod listing;
pub mod registry;
pub mod tokens;

use crate::error::CollectorError;
use egresswatch_wire::labels::validate_agent_id;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The DNS name every collector certificate carries; agents verify it by default.
pub const COLLECTOR_NAME: &str = "egresswatch-collector";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// Agent certificates live this long; re-issue to rotate.
pub const AGENT_VALIDITY_DAYS: i64 = 825;

fn ca_err(context: &str, e: impl std::fmt::Display) -> CollectorError {
    CollectorError::Ca(format!("{context}: {e}"))
}

/// A loaded CA, ready to sign.
pub struct Authority {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
    dir: PathBuf,
}

/// A newly issued agent certificate, its key, and its line in the CA's index.
pub struct AgentCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub record: registry::IssuedRecord,
}

/// Paths of an issued certificate and key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new CA in `dir`; refuses to overwrite one.
pub fn init(dir: &Path) -> Result<PathBuf, CollectorError> {
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() || dir.join(CA_KEY).exists() {
        return Err(CollectorError::Ca(format!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        )));
    }
    create_private_dir(dir)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ca_err("generating the CA key", e))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| ca_err("CA parameters", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "egresswatch fleet CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "egresswatch");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .map_err(|e| ca_err("self-signing the CA", e))?;
    write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem())
        .map_err(|e| CollectorError::io(format!("writing {}", cert_path.display()), e))?;
    Ok(cert_path)
}

/// Whether `dir` holds a CA.
pub fn exists(dir: &Path) -> bool {
    dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists()
}

impl Authority {
    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Authority, CollectorError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path)
                .map_err(|e| CollectorError::io(format!("reading {}", path.display()), e))
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| ca_err("CA key", e))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| ca_err("CA certificate", e))?;
        // Re-signing the same parameters with the same key reproduces an issuer that verifies
        // the certificates it signs exactly like the original on disk.
        let cert = params
            .self_signed(&key)
            .map_err(|e| ca_err("loading the CA", e))?;
        Ok(Authority {
            cert,
            key,
            cert_pem,
            dir: dir.to_path_buf(),
        })
    }

    /// The CA directory it was loaded from (where `crl.pem` lives).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate as PEM (what agents trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER, read from the PEM on disk.
    pub fn cert_der(&self) -> Result<rustls_pki_types::CertificateDer<'static>, CollectorError> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| ca_err("CA certificate PEM", e))
    }

    /// Issues an agent's certificate: CN and DNS SAN are the agent id, EKU clientAuth.
    pub fn issue_agent(&self, agent_id: &str) -> Result<(String, String), CollectorError> {
        self.issue_agent_recorded(agent_id)
            .map(|issued| (issued.cert_pem, issued.key_pem))
    }

    /// [`Authority::issue_agent`], with what the CA's index keeps about the certificate.
    pub fn issue_agent_recorded(&self, agent_id: &str) -> Result<AgentCertificate, CollectorError> {
        self.issue_agent_valid_for(agent_id, Duration::days(AGENT_VALIDITY_DAYS))
    }

    /// [`Authority::issue_agent_recorded`] for a certificate valid for `validity`.
    pub fn issue_agent_valid_for(
        &self,
        agent_id: &str,
        validity: Duration,
    ) -> Result<AgentCertificate, CollectorError> {
        validate_agent_id(agent_id).map_err(|e| CollectorError::Ca(e.to_string()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err("generating the agent key", e))?;
        let (cert_pem, record) = self.sign_agent(agent_id, &key, validity)?;
        Ok(AgentCertificate {
            cert_pem,
            key_pem: key.serialize_pem(),
            record,
        })
    }

    /// Signs an agent certificate for a key the agent made itself (an enrollment's or a
    /// renewal's request), valid for `validity`. Only the request's public key is used: the
    /// identity and every extension are the CA's own choice, as for [`Authority::issue_agent`].
    pub fn sign_agent_request(
        &self,
        agent_id: &str,
        public_key: &rcgen::PublicKey,
        validity: Duration,
    ) -> Result<(String, registry::IssuedRecord), CollectorError> {
        validate_agent_id(agent_id).map_err(|e| CollectorError::Ca(e.to_string()))?;
        self.sign_agent(agent_id, public_key, validity)
    }

    fn sign_agent(
        &self,
        agent_id: &str,
        public_key: &impl rcgen::PublicKeyData,
        validity: Duration,
    ) -> Result<(String, registry::IssuedRecord), CollectorError> {
        let mut params = CertificateParams::new(vec![agent_id.to_string()])
            .map_err(|e| ca_err("agent parameters", e))?;
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        // Back-dated for clocks a little behind ours, by at most a tenth of the validity, so
        // that a short-lived certificate's life is what was asked for (renewal is due two
        // thirds into it).
        params.not_before = now - Duration::hours(1).min(validity / 10);
        let not_after = now + validity;
        params.not_after = not_after;
        // A random serial (not rcgen's default, a hash of the public key): revocation names
        // certificates by serial, and two certificates must never share one.
        let mut serial: [u8; 16] = rand::random();
        serial[0] = serial[0].clamp(1, 0x7f);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(public_key, &self.cert, &self.key)
            .map_err(|e| ca_err("signing the agent certificate", e))?;
        Ok((
            cert.pem(),
            registry::IssuedRecord {
                serial: registry::serial_hex(&serial),
                agent_id: agent_id.to_string(),
                issued_at: now.unix_timestamp(),
                not_after: not_after.unix_timestamp(),
                revoked_at: None,
                reason: String::new(),
            },
        ))
    }

    /// SHA-256 of the CA certificate's DER: what join tokens pin.
    pub fn fingerprint(&self) -> Result<[u8; 32], CollectorError> {
        let der = self.cert_der()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Ok(out)
    }

    /// Issues the collector's server certificate for `egresswatch-collector`, `localhost` and
    /// the extra names and addresses given. Returned as DER for rustls.
    pub fn issue_server(
        &self,
        extra_names: &[String],
    ) -> Result<
        (
            rustls_pki_types::CertificateDer<'static>,
            rustls_pki_types::PrivateKeyDer<'static>,
        ),
        CollectorError,
    > {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err("generating the server key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| ca_err("server parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, COLLECTOR_NAME);
        let mut names = vec![COLLECTOR_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| ca_err(&format!("server name {name:?}"), e))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(90);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| ca_err("signing the server certificate", e))?;
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((cert.der().clone(), key_der))
    }
}

/// `ca issue`: writes `<out>/<id>.crt` and `<out>/<id>.key` (0600); `out` defaults to `dir/agents`.
pub fn issue_to_files(
    dir: &Path,
    agent_id: &str,
    out: Option<&Path>,
) -> Result<Issued, CollectorError> {
    issue_to_files_valid_for(dir, agent_id, out, Duration::days(AGENT_VALIDITY_DAYS))
}

/// [`issue_to_files`] for a certificate valid for `validity` (`ca issue --valid-for`).
pub fn issue_to_files_valid_for(
    dir: &Path,
    agent_id: &str,
    out: Option<&Path>,
    validity: Duration,
) -> Result<Issued, CollectorError> {
    let authority = Authority::load(dir)?;
    let AgentCertificate {
        cert_pem,
        key_pem,
        record,
    } = authority.issue_agent_valid_for(agent_id, validity)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("agents"));
    create_private_dir(&out)?;
    let issued = Issued {
        cert: out.join(format!("{agent_id}.crt")),
        key: out.join(format!("{agent_id}.key")),
    };
    write_private(&issued.key, key_pem.as_bytes())?;
    fs::write(&issued.cert, cert_pem)
        .map_err(|e| CollectorError::io(format!("writing {}", issued.cert.display()), e))?;
    // Recorded once the files exist: an index line always names a certificate someone holds.
    registry::record_issued(dir, record)?;
    Ok(issued)
}

fn create_private_dir(dir: &Path) -> Result<(), CollectorError> {
    if !dir.exists() {
        fs::create_dir_all(dir)
            .map_err(|e| CollectorError::io(format!("creating {}", dir.display()), e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| CollectorError::io(format!("restricting {}", dir.display()), e))?;
    }
    Ok(())
}

/// Writes a secret: created 0600 (never briefly world-readable), replaced if present.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CollectorError> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CollectorError::io(format!("creating {}", path.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CollectorError::io(format!("writing {}", path.display()), e))
}

/// Reads the agent id from a client certificate: its subject CN.
pub fn agent_id_from_cert(der: &[u8]) -> Result<String, CollectorError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| ca_err("client certificate", e))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| CollectorError::Ca("client certificate has no subject CN".into()))?;
    validate_agent_id(cn).map_err(|e| CollectorError::Ca(e.to_string()))?;
    Ok(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_and_read_back_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init(&ca_dir).unwrap();
        assert!(init(&ca_dir)
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite"));
        let mode = fs::metadata(ca_dir.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let issued = issue_to_files(&ca_dir, "gcp-vm-1", None).unwrap();
        assert_eq!(
            fs::metadata(&issued.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_file(&issued.cert).unwrap();
        assert_eq!(agent_id_from_cert(&der).unwrap(), "gcp-vm-1");
        assert!(issue_to_files(&ca_dir, "../evil", None).is_err());
        let authority = Authority::load(&ca_dir).unwrap();
        authority
            .issue_server(&["198.18.0.1".into(), "collector.lab.test".into()])
            .unwrap();
    }
}
