//! Every TLS and certificate fault a probe meets, against real servers on 127.0.0.1: rustls
//! servers presenting certificates made with rcgen (expired, not yet valid, wrong name,
//! self-signed, unknown issuer, missing intermediate), a plain-text SMTP server on an
//! implicit-TLS port, and OpenSSL's `s_server` limited to TLS 1.0 or to a cipher the probe does
//! not offer. Each asserts `tls_failed` at the TLS step, the detail's plain words, the presented
//! issuer where there is one, and that no debug text reaches the detail.
//!
//! The OpenSSL cases are skipped with a printed reason when `openssl` is not installed.

use egresswatch_agent::probe::{self, ProbeOptions, ProbeTarget};
use egresswatch_wire::{Family, Level, Outcome, ProbeResult, SessionStep};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DEADLINE: Duration = Duration::from_secs(3);

/// An authority: its certificate and key.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(name: &str, issuer: Option<&Authority>) -> Authority {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = match issuer {
        Some(by) => params.signed_by(&key, &by.cert, &by.key),
        None => params.self_signed(&key),
    }
    .expect("certificate");
    Authority { cert, key }
}

/// A leaf for `names`, issued by `by`, shaped by `adjust`.
fn leaf(
    names: &[&str],
    by: &Authority,
    adjust: impl FnOnce(&mut CertificateParams),
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    adjust(&mut params);
    let cert = params
        .signed_by(&key, &by.cert, &by.key)
        .expect("certificate");
    (cert, key)
}

fn server_config(chain: &[&rcgen::Certificate], key: &KeyPair) -> Arc<ServerConfig> {
    let chain = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .expect("server config");
    Arc::new(config)
}

/// What a test server on 127.0.0.1 does with each connection.
#[derive(Clone)]
enum Serve {
    /// A TLS handshake with this configuration.
    Tls(Arc<ServerConfig>),
    /// A plain-text SMTP greeting, as a server without implicit TLS sends it.
    PlainGreeting,
}

async fn serve(what: Serve) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        // Bounded: one test connects once or twice.
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let what = what.clone();
            tokio::spawn(async move {
                match what {
                    Serve::Tls(config) => {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            TlsAcceptor::from(config).accept(stream),
                        )
                        .await;
                    }
                    Serve::PlainGreeting => {
                        let _ = stream
                            .write_all(b"220 mx.loopback.test ESMTP Postfix\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            });
        }
    });
    port
}

/// Probes `port` as an implicit-TLS port, trusting `roots`.
async fn probe_implicit_tls(port: u16, roots: &[&Authority]) -> ProbeResult {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.cert.der().to_vec()))
            .expect("root");
    }
    let mut options = ProbeOptions::new(DEADLINE, Arc::new(store));
    options.implicit_tls_ports = vec![port];
    let target = ProbeTarget {
        host: "localhost".into(),
        port,
        family: Family::Ipv4,
        level: Level::Tls,
    };
    tokio::time::timeout(
        DEADLINE + Duration::from_secs(8),
        probe::probe(&target, &options),
    )
    .await
    .expect("the probe hung past its deadline")
}

fn assert_tls_failed(r: &ProbeResult, words: &str) {
    assert_eq!(r.outcome, Outcome::TlsFailed, "{r:#?}");
    assert_eq!(r.step, Some(SessionStep::TlsHandshake), "{r:#?}");
    assert!(r.detail.contains(words), "{words:?} not in {:?}", r.detail);
    // Rust debug text never reaches a reader.
    for debug in [
        "Other(",
        "Error(",
        "Context {",
        "InvalidContentType",
        "DnsName(",
    ] {
        assert!(!r.detail.contains(debug), "{debug} in {:?}", r.detail);
    }
}

#[tokio::test]
async fn each_bad_certificate_is_named_in_plain_words() {
    let root = authority("egresswatch test root", None);
    let names = ["localhost"];

    let (expired, key) = leaf(&names, &root, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let port = serve(Serve::Tls(server_config(&[&expired], &key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(&r, "the certificate expired on 2021-01-01");
    assert_tls_failed(&r, "issued by CN=egresswatch test root");

    let (early, key) = leaf(&names, &root, |p| {
        p.not_before = rcgen::date_time_ymd(2099, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    });
    let port = serve(Serve::Tls(server_config(&[&early], &key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(&r, "not valid yet: it starts on 2099-01-01");

    let (other, key) = leaf(&["other.example"], &root, |_| {});
    let port = serve(Serve::Tls(server_config(&[&other], &key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(
        &r,
        "the certificate is for other.example, not for localhost",
    );

    let own_key = KeyPair::generate().expect("key");
    let own = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&own_key)
        .expect("certificate");
    let port = serve(Serve::Tls(server_config(&[&own], &own_key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(&r, "the certificate is self-signed");

    // A whole chain up to a root this host does not trust: an interceptor's, say.
    let stranger = authority("unknown root", None);
    let stranger_mid = authority("unknown intermediate", Some(&stranger));
    let (foreign, key) = leaf(&names, &stranger_mid, |_| {});
    let port = serve(Serve::Tls(server_config(
        &[&foreign, &stranger_mid.cert],
        &key,
    )))
    .await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(&r, "not an authority this host trusts");
    assert_tls_failed(&r, "issued by CN=unknown intermediate");

    // A trusted root, but the server leaves out the intermediate between it and the leaf.
    let mid = authority("egresswatch test intermediate", Some(&root));
    let (chained, key) = leaf(&names, &mid, |_| {});
    let port = serve(Serve::Tls(server_config(&[&chained], &key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_tls_failed(&r, "without the intermediate certificate");
    // With the intermediate sent, the same chain is fine.
    let port = serve(Serve::Tls(server_config(&[&chained, &mid.cert], &key))).await;
    let r = probe_implicit_tls(port, &[&root]).await;
    assert_eq!(r.outcome, Outcome::NoBanner, "TLS up, no greeting: {r:#?}");
}

#[tokio::test]
async fn plain_text_on_an_implicit_tls_port_is_quoted() {
    let port = serve(Serve::PlainGreeting).await;
    let r = probe_implicit_tls(port, &[&authority("unused root", None)]).await;
    assert_tls_failed(
        &r,
        "the server answered in plain text (\"220 mx.loopback.test ESMTP Postfix\") on an implicit-TLS port",
    );
}

/// `openssl s_server` on a free port with `options`, stopped by its PID when dropped.
struct OpenSsl {
    child: Child,
    port: u16,
    _files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

impl Drop for OpenSsl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl_server(options: &[&str]) -> Option<OpenSsl> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: openssl is not installed");
        return None;
    }
    let root = authority("egresswatch test root", None);
    let (cert, key) = leaf(&["localhost"], &root, |_| {});
    let mut cert_file = tempfile::NamedTempFile::new().expect("temp file");
    cert_file.write_all(cert.pem().as_bytes()).expect("write");
    let mut key_file = tempfile::NamedTempFile::new().expect("temp file");
    key_file
        .write_all(key.serialize_pem().as_bytes())
        .expect("write");
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert_file.path())
            .arg("-key")
            .arg(key_file.path())
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting openssl s_server");
        // Bounded wait for the listening socket (50 × 50 ms), without connecting to it.
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Some(OpenSsl {
                    child,
                    port,
                    _files: (cert_file, key_file),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("openssl s_server never listened");
}

#[tokio::test]
async fn a_server_speaking_only_tls_1_0_is_named_too_old() {
    let Some(server) = openssl_server(&["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]) else {
        return;
    };
    let r = probe_implicit_tls(server.port, &[&authority("unused root", None)]).await;
    assert_tls_failed(&r, "older than 1.2");
}

#[tokio::test]
async fn a_handshake_alert_is_named_in_words() {
    // TLS 1.2 with only a static-RSA cipher, which the probe never offers: the server alerts.
    let Some(server) = openssl_server(&["-tls1_2", "-cipher", "AES128-SHA"]) else {
        return;
    };
    let r = probe_implicit_tls(server.port, &[&authority("unused root", None)]).await;
    assert_tls_failed(
        &r,
        "the server ended the handshake with the alert \"handshake failure\"",
    );
}
