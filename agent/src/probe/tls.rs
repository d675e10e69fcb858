//! TLS for probes (tokio-rustls, ring): trust roots from the system plus an optional private CA
//! file, and a handshake that reports what was negotiated. A certificate that does not verify for
//! the name asked is `tls_failed` — on a path that should be clean, that is interception.

use crate::error::AgentError;
use egresswatch_wire::result::TlsInfo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The system's trust roots, plus every certificate in `ca_file` (PEM) when given.
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, AgentError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is skipped; the rest still count.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| AgentError::io(format!("reading CA file {}", path.display()), e))?;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| AgentError::Tls(format!("CA file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| AgentError::Tls(format!("CA file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(AgentError::Tls(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    Ok(roots)
}

/// A client configuration trusting `roots`, with the ring provider and safe defaults.
pub fn client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, AgentError> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| AgentError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs a TLS handshake over `stream`, verifying the server for `host`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ClientConfig>,
    host: &str,
    stream: S,
) -> Result<(TlsStream<S>, TlsInfo), std::io::Error> {
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = ServerName::try_from(name).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a valid TLS server name: {e}"),
        )
    })?;
    let tls = TlsConnector::from(config)
        .connect(server_name, stream)
        .await?;
    let (_, session) = tls.get_ref();
    let info = TlsInfo {
        version: session
            .protocol_version()
            .map(|v| format!("{v:?}").replace('_', "."))
            .unwrap_or_default(),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        issuer: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::issuer::issuer_text(leaf))
            .unwrap_or_default(),
    };
    Ok((tls, info))
}
