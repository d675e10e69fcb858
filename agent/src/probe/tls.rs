//! TLS for probes (tokio-rustls, ring): trust roots from the system plus an optional private CA
//! file, and a handshake that reports what was negotiated. A certificate that does not verify for
//! the name asked is `tls_failed` — on a path that should be clean, that is interception.

use super::verified::VerifiedChains;
use crate::error::AgentError;
use egresswatch_wire::result::TlsInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// What the server presented, whether or not it verified.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presented {
    /// The leaf's issuer: when a handshake fails, this names who answered (an intercepting
    /// middlebox's CA, say).
    pub issuer: Option<String>,
    /// The leaf's subject; equal to the issuer when the certificate is self-signed.
    pub subject: Option<String>,
    /// How many certificates the server sent beside its own.
    pub intermediates: usize,
}

impl Presented {
    /// Whether the leaf names itself as its issuer.
    pub fn self_signed(&self) -> bool {
        self.issuer.is_some() && self.issuer == self.subject
    }
}

impl TlsClient {
    /// The issuer of the certificate the server presented, whether or not it verified.
    pub fn presented_issuer(&self) -> Option<String> {
        self.presented()?.issuer
    }

    /// What the server presented, once its certificate arrived.
    pub fn presented(&self) -> Option<Presented> {
        self.verifier.presented.lock().ok()?.clone()
    }
}

/// A client trusting `roots`, with the ring provider and safe defaults. Verification is the
/// standard WebPKI one; the wrapper remembers the presented leaf's issuer, and skips walking a
/// chain that `recent` saw verify a moment ago (see [`VerifiedChains`]).
pub fn client_config(
    roots: Arc<RootCertStore>,
    recent: Arc<VerifiedChains>,
) -> Result<TlsClient, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let verifier = Arc::new(RecordingVerifier {
        inner,
        recent,
        presented: Mutex::new(None),
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
    recent: Arc<VerifiedChains>,
    presented: Mutex<Option<Presented>>,
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
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(Presented {
                issuer: super::issuer::issuer_text(end_entity),
                subject: super::issuer::subject_text(end_entity),
                intermediates: intermediates.len(),
            });
        }
        let name = server_name.to_str();
        if self
            .recent
            .recently_verified(&name, end_entity, intermediates, now)
        {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.recent.verified(&name, end_entity, intermediates, now);
        Ok(verified)
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

/// How many of the first bytes the server sent are kept, to say what answered when it was not
/// TLS ("220 mx ESMTP" on an implicit-TLS port).
pub const FIRST_BYTES_KEPT: usize = 64;

/// A stream that keeps a copy of the first bytes read from it.
pub struct Recorded<S> {
    inner: S,
    first: Vec<u8>,
}

impl<S> Recorded<S> {
    pub fn new(inner: S) -> Self {
        Recorded {
            inner,
            first: Vec::new(),
        }
    }

    /// The first bytes the peer sent (at most [`FIRST_BYTES_KEPT`]).
    pub fn first_bytes(&self) -> &[u8] {
        &self.first
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let room = FIRST_BYTES_KEPT.saturating_sub(this.first.len());
            let new = &buf.filled()[before..];
            this.first.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A handshake that failed, with the first bytes the server sent.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub error: std::io::Error,
    pub first_bytes: Vec<u8>,
}

/// Runs a TLS handshake over `stream`, verifying the server for `host`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    client: &TlsClient,
    host: &str,
    stream: S,
) -> Result<(TlsStream<Recorded<S>>, TlsInfo), HandshakeFailure> {
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = ServerName::try_from(name).map_err(|e| HandshakeFailure {
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a valid TLS server name: {e}"),
        ),
        first_bytes: Vec::new(),
    })?;
    let tls = TlsConnector::from(client.config.clone())
        .connect(server_name, Recorded::new(stream))
        .into_fallible()
        .await
        .map_err(|(error, stream)| HandshakeFailure {
            error,
            first_bytes: stream.first_bytes().to_vec(),
        })?;
    let (_, session) = tls.get_ref();
    let info = TlsInfo {
        version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .map(|v| v.replace('_', "."))
            .unwrap_or_default(),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(str::to_string)
            .unwrap_or_default(),
        issuer: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::issuer::issuer_text(leaf))
            .unwrap_or_default(),
    };
    Ok((tls, info))
}
