//! `egresswatch-agent enroll`: this machine joins the fleet with a join token. It makes its key
//! here (P-256, written 0600 before anything is sent: the key never travels), asks the
//! collector's QUIC listener for a certificate on the enrollment protocol
//! (`egresswatch-enroll/1`), and writes the certificate, the fleet CA and — when there is none
//! yet, or only the package's untouched one — the agent's config with the collector's address and
//! the token's labels, where `egresswatch-agent run` (and the packaged unit) reads them.
//!
//! Trust: the token's last part is the SHA-256 of the fleet CA certificate. The collector shows
//! its CA with its certificate; the TLS handshake is refused here unless that CA has exactly the
//! pinned fingerprint and the collector's certificate chains to it for the expected name. The
//! secret is sent only after that, inside the verified connection: a collector of another CA never
//! sees it, and nothing is trusted on first use.
//!
//! The decisions (the agent id from the host name, the config text) are plain functions tested
//! without sockets; the rest is the shell.

use crate::error::AgentError;
use crate::run::config::AgentConfig;
use clap::Args;
use egresswatch_wire::enroll::{hex, EnrollAnswer, EnrollMessage, EnrollRequest, JoinToken};
use egresswatch_wire::labels::validate_agent_id;
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use egresswatch_wire::version::ENROLL_ALPN;
use egresswatch_wire::Labels;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the packaged unit reads its config.
pub const PACKAGED_CONFIG: &str = "/etc/egresswatch-agent/agent.toml";
/// The collector address of the package's config as installed (a placeholder).
pub const PACKAGED_PLACEHOLDER: &str = "collector.example.net:4433";
/// The whole exchange with the collector must fit in this.
const DEADLINE: Duration = Duration::from_secs(20);
/// The system user of the packaged unit: it must be able to read the key.
const SERVICE_USER: &str = "egresswatch-agent";

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The collector's QUIC listener, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub collector: String,
    /// The join token from `egresswatch-collector token create`; or in the environment, which
    /// keeps it out of the process list and the shell's history.
    #[arg(long, env = "EGRESSWATCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The agent's config: read for where the files go ([collector] ca, cert, key), written
    /// when absent (or still the package's untouched one).
    #[arg(long, default_value = PACKAGED_CONFIG)]
    pub config: PathBuf,
    /// The agent id to ask for; default this host's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The name the collector's certificate must carry.
    #[arg(long, default_value = "egresswatch-collector")]
    pub server_name: String,
}

/// Where the identity goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An agent id from a host name: its first label's allowed characters (`A-Z a-z 0-9 . _ -`),
/// without a leading dot or dash, at most 64; `None` when nothing usable is left.
pub fn agent_id_from_hostname(hostname: &str) -> Option<String> {
    let id: String = hostname
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .skip_while(|c| matches!(c, '.' | '-'))
        .take(64)
        .collect();
    validate_agent_id(&id).is_ok().then_some(id)
}

/// A TOML string.
fn quoted(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

fn label_lines(labels: &Labels) -> String {
    [
        ("provider", &labels.provider),
        ("account", &labels.account),
        ("region", &labels.region),
        ("instance", &labels.instance),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k} = {}\n", quoted(v)))
    .collect()
}

/// A new config: the collector, the identity's files, the token's labels.
pub fn new_config(
    agent_id: &str,
    address: &str,
    server_name: &str,
    paths: &Paths,
    labels: &Labels,
) -> String {
    format!(
        "# Written by `egresswatch-agent enroll` for agent {agent_id}. Every key, with its default and\n\
         # meaning: agent/config.example.toml (packaged: /usr/share/doc/egresswatch-agent/examples/).\n\n\
         [collector]\naddress = {}\nserver_name = {}\nca = {}\ncert = {}\nkey = {}\n\n[labels]\n{}",
        quoted(address),
        quoted(server_name),
        quoted(&paths.ca.display().to_string()),
        quoted(&paths.cert.display().to_string()),
        quoted(&paths.key.display().to_string()),
        label_lines(labels),
    )
}

/// The package's config as installed, with the collector's address in place of the placeholder
/// and the token's labels under `[labels]`; `None` when `text` is not the untouched package
/// config (an operator's edits are never rewritten).
pub fn adopt_packaged(text: &str, address: &str, labels: &Labels) -> Option<String> {
    let placeholder = format!("address = {}", quoted(PACKAGED_PLACEHOLDER));
    let mut out = String::with_capacity(text.len() + 128);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        if !replaced && line.starts_with(&placeholder) {
            out.push_str(&format!("address = {}", quoted(address)));
            out.push_str(&line[placeholder.len()..]);
            replaced = true;
        } else if line.trim_end() == "[labels]" {
            out.push_str(line);
            out.push_str(&label_lines(labels));
        } else {
            out.push_str(line);
        }
    }
    replaced.then_some(out)
}

/// Runs `enroll`; the exit code says how it went (0 enrolled, 1 refused or failed, 2 bad use).
pub fn main(args: EnrollArgs) -> ExitCode {
    let token = match JoinToken::parse(&args.token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("egresswatch-agent enroll: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresswatch-agent enroll: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(enroll(&args, &token)) {
        Ok(done) => {
            println!("enrolled as {}", done.agent_id);
            println!("certificate: {}", done.paths.cert.display());
            println!("key:         {}", done.paths.key.display());
            println!("fleet CA:    {}", done.paths.ca.display());
            println!("config:      {} ({})", args.config.display(), done.config);
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(e)) => {
            eprintln!("egresswatch-agent enroll: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(reason)) => {
            eprintln!("egresswatch-agent enroll: refused by the collector: {reason}");
            ExitCode::from(1)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("egresswatch-agent enroll: {e}");
            ExitCode::from(1)
        }
    }
}

/// What an enrollment did.
pub struct Enrolled {
    pub agent_id: String,
    pub paths: Paths,
    /// What happened to the config: written, adopted, kept.
    pub config: String,
}

/// Why an enrollment did not happen.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or an existing identity: nothing was sent.
    Usage(String),
    /// The collector said no, with its reason.
    Refused(String),
    /// Anything else (network, files, TLS), with its cause.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(e) | Failure::Failed(e) => f.write_str(e),
            Failure::Refused(reason) => write!(f, "refused by the collector: {reason}"),
        }
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Failure {
        Failure::Failed(e.to_string())
    }
}

/// The existing config, if there is one, and where the identity goes.
fn plan(config: &Path) -> Result<(Option<String>, Paths), Failure> {
    match std::fs::read_to_string(config) {
        Ok(text) => {
            let parsed = AgentConfig::parse(&text, config).map_err(|e| {
                Failure::Usage(format!("{e} (fix it, or enroll with another --config)"))
            })?;
            let c = parsed.collector;
            Ok((
                Some(text),
                Paths {
                    ca: c.ca,
                    cert: c.cert,
                    key: c.key,
                },
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = config.parent().unwrap_or(Path::new("."));
            Ok((
                None,
                Paths {
                    ca: dir.join("ca.pem"),
                    cert: dir.join("agent.crt"),
                    key: dir.join("agent.key"),
                },
            ))
        }
        Err(e) => Err(Failure::Usage(format!("reading {}: {e}", config.display()))),
    }
}

async fn enroll(args: &EnrollArgs, token: &JoinToken) -> Result<Enrolled, Failure> {
    let (existing, paths) = plan(&args.config)?;
    if paths.cert.exists() {
        return Err(Failure::Usage(format!(
            "{} exists: this machine is enrolled already (remove it, and `ca revoke` the old identity, to enroll again)",
            paths.cert.display()
        )));
    }
    let agent_id = match &args.name {
        Some(name) => {
            validate_agent_id(name).map_err(|e| Failure::Usage(format!("--name: {e}")))?;
            name.clone()
        }
        None => {
            let host = hostname();
            agent_id_from_hostname(&host).ok_or_else(|| {
                Failure::Usage(format!(
                    "the host name {host:?} makes no agent id: give --name"
                ))
            })?
        }
    };
    if let Some(dir) = paths.key.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Failed(format!("creating {}: {e}", dir.display())))?;
    }
    // The key first, on disk and private, before a byte leaves the machine.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Failure::Failed(format!("making the key: {e}")))?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    give_to_service_user(&paths.key);
    let csr = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| Failure::Failed(format!("certificate request: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, agent_id.as_str());
        params
            .serialize_request(&key)
            .map_err(|e| Failure::Failed(format!("certificate request: {e}")))?
    };
    let request = EnrollRequest {
        token_id: token.id_hex(),
        secret: hex(&token.secret),
        csr_der: csr.der().to_vec(),
    };
    let answer = tokio::time::timeout(
        DEADLINE,
        exchange(&args.collector, &args.server_name, token.ca_sha256, request),
    )
    .await
    .map_err(|_| Failure::Failed(format!("no answer from {} within 20 s", args.collector)))?;
    let enrolled = match answer {
        Ok(enrolled) => enrolled,
        Err(failure) => {
            // The key belongs to no certificate: leave nothing half made.
            let _ = std::fs::remove_file(&paths.key);
            return Err(failure);
        }
    };
    let ca_der = CertificateDer::from_pem_slice(enrolled.ca_pem.as_bytes())
        .map_err(|e| Failure::Failed(format!("the collector's CA: {e}")))?;
    if sha256(&ca_der) != token.ca_sha256 {
        return Err(Failure::Failed(
            "the collector sent a CA other than the one the token pins".into(),
        ));
    }
    write_file(&paths.ca, enrolled.ca_pem.as_bytes(), 0o644)?;
    write_file(&paths.cert, enrolled.cert_pem.as_bytes(), 0o644)?;
    let config = match existing {
        None => {
            let text = new_config(
                &enrolled.agent_id,
                &args.collector,
                &args.server_name,
                &paths,
                &enrolled.labels,
            );
            write_file(&args.config, text.as_bytes(), 0o644)?;
            "written".to_string()
        }
        Some(text) => match adopt_packaged(&text, &args.collector, &enrolled.labels) {
            Some(adopted) => {
                AgentConfig::parse(&adopted, &args.config)?;
                write_file(&args.config, adopted.as_bytes(), 0o644)?;
                "the package's config, given the collector's address and the token's labels"
                    .to_string()
            }
            None => "kept as it was: check its [collector] address and [labels]".to_string(),
        },
    };
    Ok(Enrolled {
        agent_id: enrolled.agent_id,
        paths,
        config,
    })
}

/// Connects with the pinned CA, sends the request, reads the answer.
async fn exchange(
    collector: &str,
    server_name: &str,
    pin: [u8; 32],
    request: EnrollRequest,
) -> Result<egresswatch_wire::enroll::Enrolled, Failure> {
    let address = tokio::net::lookup_host(collector)
        .await
        .map_err(|e| Failure::Usage(format!("--collector {collector:?}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("--collector {collector:?} resolves to nothing")))?;
    let verifier = Arc::new(PinnedCa::new(pin));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Failure::Failed(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Failure::Failed(format!("QUIC TLS: {e}")))?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let bind: std::net::SocketAddr = if address.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint =
        quinn::Endpoint::client(bind).map_err(|e| Failure::Failed(format!("QUIC socket: {e}")))?;
    let connecting = endpoint
        .connect_with(client, address, server_name)
        .map_err(|e| Failure::Failed(format!("connecting to {address}: {e}")))?;
    let connection = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            return Err(match verifier.refused() {
                Some(why) => Failure::Failed(format!(
                    "{why}; the token was not sent (is it for this collector?)"
                )),
                None => Failure::Failed(format!("connecting to {address}: {e}")),
            })
        }
    };
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| Failure::Failed(format!("opening the enrollment stream: {e}")))?;
    let mut send = FrameWriter::new(send, egresswatch_wire::limits::MAX_FRAME_BYTES);
    let mut recv = FrameReader::new(recv, 64 * 1024);
    send.send(&EnrollMessage::Request(request))
        .await
        .map_err(|e| Failure::Failed(format!("sending the request: {e}")))?;
    let _ = send.get_mut().finish();
    let answer = recv.read::<EnrollAnswer>().await;
    connection.close(
        quinn::VarInt::from_u32(egresswatch_wire::close::NORMAL),
        b"done",
    );
    endpoint.wait_idle().await;
    match answer {
        Ok(Some(EnrollAnswer::Enrolled(enrolled))) => Ok(enrolled),
        Ok(Some(EnrollAnswer::Refused(refusal))) => {
            Err(Failure::Refused(if refusal.retry_after_s > 0 {
                format!(
                    "{} (retry after {} s)",
                    refusal.reason, refusal.retry_after_s
                )
            } else {
                refusal.reason
            }))
        }
        Ok(Some(EnrollAnswer::Unknown(kind))) => Err(Failure::Failed(format!(
            "the collector answered with a message of unknown kind {kind} (a newer collector?)"
        ))),
        Ok(None) => Err(Failure::Failed(
            "the collector closed without an answer".into(),
        )),
        Err(e) => Err(Failure::Failed(format!("reading the answer: {e}"))),
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Trusts exactly the CA whose SHA-256 the token pins: it must be in the chain the collector
/// shows, and the collector's certificate must chain to it (WebPKI, with that CA as the only
/// root) for the expected name.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Why the last handshake was refused here, for the message the operator sees.
    refused: Mutex<Option<String>>,
}

impl PinnedCa {
    fn new(pin: [u8; 32]) -> PinnedCa {
        PinnedCa {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refused: Mutex::new(None),
        }
    }

    fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn refuse(&self, why: String) -> rustls::Error {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        rustls::Error::General(why)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256(c) == self.pin) else {
            return Err(self.refuse(format!(
                "the collector's CA is not the one the token pins (SHA-256 {}…)",
                &hex(&self.pin)[..16]
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| self.refuse(format!("the pinned CA certificate: {e}")))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| self.refuse(format!("the pinned CA certificate: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| sha256(c) != self.pin)
            .cloned()
            .collect();
        webpki
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
            .map_err(|e| {
                self.refuse(format!(
                    "the collector's certificate does not verify against the pinned CA: {e}"
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Writes `bytes` to `path` with `mode`, atomically (a temporary file renamed over it), created
/// with its final mode (a key is never briefly readable by others).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let failed =
        |what: &str, e: std::io::Error| Failure::Failed(format!("{what} {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| failed("creating", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| failed("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| failed("replacing", e))
}

/// When run as root and the packaged unit's user exists, the key becomes that user's (the unit
/// runs as it and reads the key; nobody else may).
fn give_to_service_user(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(name) = std::ffi::CString::new(SERVICE_USER) else {
        return;
    };
    // SAFETY: a NUL-terminated name; the result is read at once, before any other getpw* call.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        if entry.is_null() {
            return;
        }
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_id_comes_from_the_host_name() {
        assert_eq!(agent_id_from_hostname("web-1\n").as_deref(), Some("web-1"));
        assert_eq!(
            agent_id_from_hostname("ip-10-0-0-7.eu-west-1.compute.internal").as_deref(),
            Some("ip-10-0-0-7.eu-west-1.compute.internal")
        );
        assert_eq!(agent_id_from_hostname("-.vm 7").as_deref(), Some("vm7"));
        assert_eq!(agent_id_from_hostname(""), None);
        assert_eq!(agent_id_from_hostname("---"), None);
        assert_eq!(
            agent_id_from_hostname(&"a".repeat(80)).map(|s| s.len()),
            Some(64)
        );
    }

    fn labels() -> Labels {
        Labels {
            provider: "aws".into(),
            account: "prod \"eu\"".into(),
            ..Default::default()
        }
    }

    fn paths() -> Paths {
        Paths {
            ca: "/etc/ew/ca.pem".into(),
            cert: "/etc/ew/agent.crt".into(),
            key: "/etc/ew/agent.key".into(),
        }
    }

    #[test]
    fn a_new_config_parses_with_the_collector_and_the_labels() {
        let text = new_config(
            "vm-1",
            "198.18.0.1:4433",
            "egresswatch-collector",
            &paths(),
            &labels(),
        );
        let config = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap();
        assert_eq!(config.collector.address, ["198.18.0.1:4433"]);
        assert_eq!(config.collector.key, PathBuf::from("/etc/ew/agent.key"));
        assert_eq!(config.labels.account, "prod \"eu\"");
    }

    #[test]
    fn the_packaged_config_is_adopted_and_an_edited_one_is_left_alone() {
        let packaged = include_str!("../../packaging/agent/agent.toml");
        let adopted = adopt_packaged(packaged, "[2001:db8::1]:4433", &labels()).unwrap();
        let config = AgentConfig::parse(&adopted, Path::new("agent.toml")).unwrap();
        assert_eq!(config.collector.address, ["[2001:db8::1]:4433"]);
        assert_eq!(config.labels.provider, "aws");
        // The comments and every other line stay.
        assert_eq!(
            adopted.lines().count(),
            packaged.lines().count() + 2,
            "{adopted}"
        );
        let edited = packaged.replace(PACKAGED_PLACEHOLDER, "c1.example.org:4433");
        assert_eq!(adopt_packaged(&edited, "x:1", &labels()), None);
    }
}
