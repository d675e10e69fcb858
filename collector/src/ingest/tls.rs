//! The ingest's mutual TLS: the QUIC server configuration built from the fleet CA, the
//! collector's certificate and the CA's revocation list, with a client-certificate verifier that
//! names why a certificate was refused (revoked, expired, wrong usage, another CA...) and counts
//! it in `/metrics`. A certificate is optional at the TLS level so that a new agent can enroll
//! (a second ALPN); the report protocol refuses any connection without one. The configuration is rebuilt whenever the revocation list changes; the
//! collector's own certificate is made once and kept.

use super::IngestCounters;
use super::QuicConfig;
use crate::ca::Authority;
use crate::error::CollectorError;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// Everything a server configuration is made of, kept to rebuild it with a new CRL.
pub struct TlsMaterial {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    transport: Arc<quinn::TransportConfig>,
    /// Where refused client certificates are counted, in every configuration built from this
    /// material.
    counters: IngestCounters,
}

impl TlsMaterial {
    /// Issues the collector's certificate and sets up the transport limits.
    pub fn new(
        config: &QuicConfig,
        authority: &Authority,
        counters: IngestCounters,
    ) -> Result<TlsMaterial, CollectorError> {
        let (cert, key) = authority.issue_server(&config.server_names)?;
        Ok(TlsMaterial {
            ca: authority.cert_der()?,
            cert,
            key,
            transport: Arc::new(transport_config(config)?),
            counters,
        })
    }

    /// A server configuration that refuses the certificates `crl` lists.
    pub fn server_config(
        &self,
        crl: Option<&CertificateRevocationListDer<'static>>,
    ) -> Result<quinn::ServerConfig, CollectorError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| CollectorError::Tls(format!("fleet CA: {e}")))?;
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        // A client may come without a certificate, but only to enroll: the ingest refuses a
        // report session (`egresswatch/1`) without a verified certificate before reading a byte
        // of it (`ingest::serve`). A certificate that is presented is verified as ever.
        builder = builder.allow_unauthenticated();
        if let Some(crl) = crl {
            // The list changes only when someone revokes; its next_update is not a deadline.
            builder = builder
                .with_crls([crl.clone()])
                .only_check_end_entity_revocation();
        }
        let webpki = builder
            .build()
            .map_err(|e| CollectorError::Tls(format!("client verifier: {e}")))?;
        let verifier = Arc::new(CountingVerifier {
            inner: webpki,
            counters: self.counters.clone(),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CollectorError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            // The CA goes with the collector's certificate so that an enrolling agent, which has
            // only the CA's fingerprint from its token, can check the chain against it.
            .with_single_cert(
                vec![self.cert.clone(), self.ca.clone()],
                self.key.clone_key(),
            )
            .map_err(|e| CollectorError::Tls(format!("server certificate: {e}")))?;
        tls.alpn_protocols = vec![
            egresswatch_wire::version::ALPN.to_vec(),
            egresswatch_wire::version::ENROLL_ALPN.to_vec(),
        ];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| CollectorError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(self.transport.clone());
        Ok(server)
    }
}

fn transport_config(config: &QuicConfig) -> Result<quinn::TransportConfig, CollectorError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs.max(1)))
        .map_err(|e| CollectorError::Config {
        path: "quic.idle_timeout_secs".into(),
        reason: e.to_string(),
    })?;
    transport.max_idle_timeout(Some(idle));
    // One report stream per agent; the session resets (and counts) any other it is offered.
    transport.max_concurrent_bidi_streams(config.max_streams_per_connection.max(1).into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window(config.stream_window_bytes.into());
    transport.receive_window((config.stream_window_bytes.saturating_mul(2)).into());
    transport.send_window(64 * 1024);
    transport.enable_segmentation_offload(config.segmentation_offload);
    Ok(transport)
}

/// The name a refused client certificate is counted under in
/// `egresswatch_ingest_refusals_by_reason_total`.
pub fn refusal_reason(error: &rustls::Error) -> &'static str {
    let rustls::Error::InvalidCertificate(e) = error else {
        return "bad_certificate";
    };
    match e {
        CertificateError::Revoked => "revoked",
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "wrong_usage"
        }
        CertificateError::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity | webpki::Error::EndEntityUsedAsCa)
            ) =>
        {
            "wrong_usage"
        }
        _ => "bad_certificate",
    }
}

/// The refusal reason of a failed handshake the verifier never saw: no client certificate at
/// all (alert certificate_required), or no common application protocol (no_application_protocol).
/// `None` for everything else — certificate refusals are counted by the verifier, and a timeout
/// or a vanished client is no refusal.
pub fn handshake_refusal(error: &quinn::ConnectionError) -> Option<&'static str> {
    const CERTIFICATE_REQUIRED: u64 = 0x100 + 116;
    const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;
    let quinn::ConnectionError::TransportError(e) = error else {
        return None;
    };
    match u64::from(e.code) {
        CERTIFICATE_REQUIRED => Some("no_certificate"),
        NO_APPLICATION_PROTOCOL => Some("bad_alpn"),
        _ => None,
    }
}

/// WebPKI takes a certificate without the extended-key-usage extension as good for any purpose
/// (RFC 5280). Every agent certificate the fleet CA issues names clientAuth, so one that does
/// not was made for something else and is refused like a wrong usage.
fn require_client_auth_eku(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let refuse = || rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose);
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.client_auth => Ok(()),
        _ => Err(refuse()),
    }
}

/// rustls' WebPKI verifier, counting each refusal under its reason. It does not log: the
/// handshake failure is logged once where the connection ends (`ingest::serve`), with the
/// remote address and rustls' own description.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    counters: IngestCounters,
}

impl ClientCertVerifier for CountingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|verified| require_client_auth_eku(end_entity).map(|()| verified))
            .inspect_err(|e| {
                self.counters.refused(refusal_reason(e));
            })
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
