//! TLS for probes (tokio-rustls, ring): trust roots from the system plus an optional private CA
//! file, and a handshake that reports what was negotiated. A certificate that does not verify for
//! the name asked is `tls_failed` — on a path that should be clean, that is interception.

use crate::error::AgentError;
use egresswatch_wire::result::TlsInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
        for cert in CertificateDer::pem_slice_iter(&pem) {
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

/// A client configuration for one probe, and what its verifier saw.
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    verifier: Arc<RecordingVerifier>,
}

impl TlsClient {
    /// The issuer of the certificate the server presented, whether or not it verified: when a
    /// handshake fails, this names who answered (an intercepting middlebox's CA, say).
    pub fn presented_issuer(&self) -> Option<String> {
        self.verifier.presented_issuer.lock().ok()?.clone()
    }
}

/// A client trusting `roots`, with the ring provider and safe defaults. Verification is the
/// standard WebPKI one; the wrapper only remembers the presented leaf's issuer.
pub fn client_config(roots: Arc<RootCertStore>) -> Result<TlsClient, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let verifier = Arc::new(RecordingVerifier {
        inner,
        presented_issuer: Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok(TlsClient {
        config: Arc::new(config),
        verifier,
    })
}

#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    presented_issuer: Mutex<Option<String>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.presented_issuer.lock() {
            *slot = super::issuer::issuer_text(end_entity);
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Runs a TLS handshake over `stream`, verifying the server for `host`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    client: &TlsClient,
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
    let tls = TlsConnector::from(client.config.clone())
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
