//! The probe engine and `check` against real servers on loopback (127.0.0.1 and ::1), started by
//! each test: a tiny SMTP server with STARTTLS and implicit TLS (certificates from an in-test CA
//! made with rcgen), a TLS-only server for the 443 control, and the misbehaving peers a probe meets
//! in the wild — silent, junk, an endless line, a greeting one byte a second, a reset, a wrong
//! certificate, a STARTTLS injection. Every test asserts the exact outcome and that the probe ended
//! within its deadline. No root needed; no traffic leaves loopback.

use egresswatch_agent::probe::{self, ProbeOptions, ProbeTarget};
use egresswatch_wire::{Family, Level, Outcome, ProbeResult};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const LOOPBACKS: [(&str, Family); 2] = [("127.0.0.1", Family::Ipv4), ("::1", Family::Ipv6)];

// ---------------------------------------------------------------------------------------------
// Certificates

struct Pki {
    ca_file: tempfile::NamedTempFile,
    /// Valid for localhost, 127.0.0.1 and ::1, issued by the test CA.
    good: Arc<ServerConfig>,
    /// Issued by the test CA, but for another name.
    wrong_name: Arc<ServerConfig>,
    /// Right names, but self-signed: an issuer nobody trusts (what an interceptor presents).
    unknown_ca: Arc<ServerConfig>,
}

const CA_NAME: &str = "egresswatch loopback CA";

fn server_config(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    Arc::new(config)
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "egresswatch tests");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let names = || vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let good_key = rcgen::KeyPair::generate().unwrap();
    let good = rcgen::CertificateParams::new(names())
        .unwrap()
        .signed_by(&good_key, &ca_cert, &ca_key)
        .unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::CertificateParams::new(vec!["other.example".to_string()])
        .unwrap()
        .signed_by(&other_key, &ca_cert, &ca_key)
        .unwrap();
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let rogue = rcgen::CertificateParams::new(names())
        .unwrap()
        .self_signed(&rogue_key)
        .unwrap();

    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(ca_cert.pem().as_bytes()).unwrap();
    ca_file.flush().unwrap();
    Pki {
        ca_file,
        good: server_config(&good, &good_key),
        wrong_name: server_config(&other, &other_key),
        unknown_ca: server_config(&rogue, &rogue_key),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

const GREETING: &str = "220 mx.loopback.test ESMTP egresswatch-test\r\n";
const EHLO_WITH_STARTTLS: &str =
    "250-mx.loopback.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n";
const EHLO_WITHOUT_STARTTLS: &str = "250-mx.loopback.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

/// What a test server does with each connection.
#[derive(Clone)]
enum Script {
    /// An SMTP server: waits a moment to catch clients that talk first, greets, answers EHLO,
    /// STARTTLS (when given a TLS config) and QUIT.
    Smtp {
        greeting: &'static str,
        ehlo: &'static str,
        starttls: Option<Arc<ServerConfig>>,
        /// Sends a plaintext line right after "220 ready" (the STARTTLS injection pattern).
        inject_after_starttls: bool,
    },
    /// TLS first, then the SMTP greeting inside it (465).
    ImplicitTls(Arc<ServerConfig>),
    /// A TLS handshake and nothing else (the 443 control).
    TlsOnly(Arc<ServerConfig>),
    /// Accepts and says nothing.
    Silent,
    /// Sends these bytes, then stays silent.
    Send(&'static [u8]),
    /// "220 " and then an endless line.
    EndlessLine,
    /// The greeting one byte a second.
    Slow,
    /// Accepts, then resets the connection.
    Reset,
}

/// A server on loopback; aborted when dropped. `log` collects what clients did.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Server {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Starts `script` on one loopback address.
async fn serve(ip: &str, script: Script) -> Server {
    let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks = vec![tokio::spawn(accept_loop(listener, script, log.clone()))];
    Server { port, log, tasks }
}

/// Starts `script` on 127.0.0.1 and ::1 with the same port (for `check` with both families).
async fn serve_both(script: Script) -> Server {
    for _ in 0..20 {
        let v6 = TcpListener::bind("[::1]:0").await.unwrap();
        let port = v6.local_addr().unwrap().port();
        let Ok(v4) = TcpListener::bind(("127.0.0.1", port)).await else {
            continue;
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = vec![
            tokio::spawn(accept_loop(v4, script.clone(), log.clone())),
            tokio::spawn(accept_loop(v6, script, log.clone())),
        ];
        return Server { port, log, tasks };
    }
    panic!("no port free on both loopbacks after 20 tries");
}

async fn accept_loop(listener: TcpListener, script: Script, log: Arc<Mutex<Vec<String>>>) {
    // Bounded: no test makes more than a handful of connections.
    for _ in 0..64 {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (script, log) = (script.clone(), log.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(30), handle(stream, script, log)).await;
        });
    }
}

fn note(log: &Mutex<Vec<String>>, what: impl Into<String>) {
    log.lock().unwrap().push(what.into());
}

async fn handle(mut stream: TcpStream, script: Script, log: Arc<Mutex<Vec<String>>>) {
    match script {
        Script::Smtp {
            greeting,
            ehlo,
            starttls,
            inject_after_starttls,
        } => {
            // Like postscreen: a client that speaks before the greeting is rejected.
            let mut first = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(
                Duration::from_millis(150),
                tokio::io::AsyncReadExt::read(&mut stream, &mut first),
            )
            .await
            {
                if n > 0 {
                    note(&log, "client talked first");
                    let _ = stream.write_all(b"554 5.5.1 talked first\r\n").await;
                    return;
                }
            }
            if stream.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut reader = BufReader::new(stream);
            match commands(&mut reader, ehlo, starttls.is_some(), &log).await {
                Next::StartTls => {
                    let mut stream = reader.into_inner();
                    let mut ready = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
                    if inject_after_starttls {
                        ready.extend_from_slice(b"250 injected\r\n");
                    }
                    if stream.write_all(&ready).await.is_err() {
                        return;
                    }
                    let Some(config) = starttls else { return };
                    let Ok(tls) = TlsAcceptor::from(config).accept(stream).await else {
                        note(&log, "TLS handshake failed");
                        return;
                    };
                    note(&log, "TLS up");
                    let mut reader = BufReader::new(tls);
                    let _ = commands(&mut reader, ehlo, false, &log).await;
                }
                Next::Done => {}
            }
        }
        Script::ImplicitTls(config) => {
            let Ok(mut tls) = TlsAcceptor::from(config).accept(stream).await else {
                note(&log, "TLS handshake failed");
                return;
            };
            note(&log, "TLS up");
            if tls.write_all(GREETING.as_bytes()).await.is_err() {
                return;
            }
            let mut reader = BufReader::new(tls);
            let _ = commands(&mut reader, EHLO_WITHOUT_STARTTLS, false, &log).await;
        }
        Script::TlsOnly(config) => match TlsAcceptor::from(config).accept(stream).await {
            Ok(mut tls) => {
                note(&log, "TLS up");
                let mut buf = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
            }
            Err(_) => note(&log, "TLS handshake failed"),
        },
        Script::Silent => hold(stream).await,
        Script::Send(bytes) => {
            let _ = stream.write_all(bytes).await;
            hold(stream).await;
        }
        Script::EndlessLine => {
            if stream.write_all(b"220 ").await.is_err() {
                return;
            }
            let chunk = [b'a'; 4096];
            // Bounded at 16 MiB; the client gives up long before.
            for _ in 0..4096 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Script::Slow => {
            for byte in GREETING.as_bytes() {
                if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Script::Reset => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // SO_LINGER 0: close() sends a RST instead of a FIN.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    }
}

/// Keeps a connection open without saying anything, until the client leaves.
async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
        if n == 0 {
            return;
        }
    }
}

enum Next {
    StartTls,
    Done,
}

async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    ehlo: &str,
    offer_starttls: bool,
    log: &Mutex<Vec<String>>,
) -> Next {
    for _ in 0..20 {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return Next::Done,
            Ok(_) => {}
        }
        let command = line.trim_end().to_ascii_uppercase();
        note(log, command.clone());
        let verb = command.split_whitespace().next().unwrap_or("").to_string();
        let reply: &str = match verb.as_str() {
            "EHLO" => ehlo,
            "STARTTLS" if offer_starttls => return Next::StartTls,
            "QUIT" => {
                let _ = reader.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                let _ = reader.get_mut().shutdown().await;
                return Next::Done;
            }
            _ => "502 5.5.2 not here\r\n",
        };
        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return Next::Done;
        }
    }
    Next::Done
}

/// The usual SMTP server: our greeting, an EHLO reply offering STARTTLS, and STARTTLS itself when
/// given a TLS config.
fn smtp(starttls: Option<Arc<ServerConfig>>) -> Script {
    smtp_saying(GREETING, EHLO_WITH_STARTTLS, starttls)
}

/// An SMTP server with its own greeting and EHLO reply.
fn smtp_saying(
    greeting: &'static str,
    ehlo: &'static str,
    starttls: Option<Arc<ServerConfig>>,
) -> Script {
    Script::Smtp {
        greeting,
        ehlo,
        starttls,
        inject_after_starttls: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Probing

fn options(pki: &Pki, timeout: Duration) -> ProbeOptions {
    let roots = probe::tls::load_roots(Some(pki.ca_file.path())).unwrap();
    let mut options = ProbeOptions::new(timeout, Arc::new(roots));
    options.ehlo_name = "probe.loopback.test".into();
    options
}

/// A fresh test CA and probe options that trust it, with this deadline.
fn setup(timeout: Duration) -> (Pki, ProbeOptions) {
    let pki = pki();
    let opts = options(&pki, timeout);
    (pki, opts)
}

async fn run(
    host: &str,
    family: Family,
    port: u16,
    level: Level,
    options: &ProbeOptions,
) -> (ProbeResult, Duration) {
    let target = ProbeTarget {
        host: host.to_string(),
        port,
        family,
        level,
    };
    let started = Instant::now();
    // A hang is a failure, not a stuck test run.
    let result = tokio::time::timeout(
        options.timeout + options.dns_timeout + Duration::from_secs(5),
        probe::probe(&target, options),
    )
    .await
    .expect("the probe hung past its deadline");
    (result, started.elapsed())
}

/// The probe must end within its deadline (plus the short polite QUIT and scheduling slack).
fn assert_within(elapsed: Duration, options: &ProbeOptions, result: &ProbeResult) {
    assert!(
        elapsed <= options.timeout + Duration::from_millis(900),
        "took {elapsed:?} with a {:?} deadline: {result:?}",
        options.timeout
    );
}

fn assert_outcome(result: &ProbeResult, outcome: Outcome) {
    assert_eq!(result.outcome, outcome, "{result:#?}");
}

/// The detail names what happened; `fragment` must stand in it ("" asks nothing).
fn assert_detail(result: &ProbeResult, fragment: &str) {
    assert!(
        result.detail.contains(fragment),
        "{fragment:?} not in the detail: {}",
        result.detail
    );
}

/// A server answers QUIT after the probe returns: give it a moment to log it.
async fn let_servers_log() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One probe of a scenario, on one loopback family.
struct Probed {
    ip: &'static str,
    family: Family,
    r: ProbeResult,
    elapsed: Duration,
    /// Kept for its log of what the client did; aborted when dropped.
    server: Server,
}

/// The shape most tests share: serve `script` on 127.0.0.1 and then on ::1, probe each at
/// `level` with `opts`, and assert the `outcome` and that the detail contains `detail`. Returns
/// each probe for what else the test checks.
async fn scenario(
    script: Script,
    level: Level,
    opts: &ProbeOptions,
    outcome: Outcome,
    detail: &str,
) -> Vec<Probed> {
    let mut probed = Vec::new();
    for (ip, family) in LOOPBACKS {
        let server = serve(ip, script.clone()).await;
        let (r, elapsed) = run(ip, family, server.port, level, opts).await;
        assert_outcome(&r, outcome);
        assert_detail(&r, detail);
        probed.push(Probed {
            ip,
            family,
            r,
            elapsed,
            server,
        });
    }
    probed
}

/// The three ways a TLS port is served with one certificate: STARTTLS, implicit TLS (465) and
/// the TLS-only control (443), with options that know which port is which.
struct TlsPorts {
    starttls: Server,
    smtps: Server,
    https: Server,
    opts: ProbeOptions,
}

async fn serve_tls_ports(ip: &str, config: Arc<ServerConfig>, opts: &ProbeOptions) -> TlsPorts {
    let starttls = serve(ip, smtp(Some(config.clone()))).await;
    let smtps = serve(ip, Script::ImplicitTls(config.clone())).await;
    let https = serve(ip, Script::TlsOnly(config)).await;
    let mut opts = opts.clone();
    opts.implicit_tls_ports = vec![smtps.port];
    opts.tls_only_ports = vec![https.port];
    TlsPorts {
        starttls,
        smtps,
        https,
        opts,
    }
}

// ---------------------------------------------------------------------------------------------
// ok at each level

#[tokio::test]
async fn ok_at_connect_level() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    for p in scenario(Script::Silent, Level::Connect, &opts, Outcome::Ok, "").await {
        assert_eq!(p.r.address, Some(p.ip.parse().unwrap()));
        assert_eq!(p.r.family, p.family);
        assert!(p.r.timings.connect_us.is_some());
        assert_eq!(p.r.timings.banner_us, None);
        assert_eq!(p.r.syn_retransmits, Some(0));
        assert!(p.elapsed < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn ok_at_banner_level_waits_for_the_greeting_and_says_quit() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    let probed = scenario(smtp(None), Level::Banner, &opts, Outcome::Ok, "").await;
    let_servers_log().await;
    for p in probed {
        assert!(
            p.r.detail.starts_with("220 mx.loopback.test"),
            "{}",
            p.r.detail
        );
        assert!(p.r.timings.banner_us.is_some());
        assert_eq!(p.r.timings.tls_us, None);
        let log = p.server.log();
        assert!(!log.contains(&"client talked first".to_string()), "{log:?}");
        assert_eq!(log, vec!["QUIT"], "a banner probe says nothing but QUIT");
    }
}

#[tokio::test]
async fn ok_at_tls_level_with_starttls() {
    let (pki, opts) = setup(Duration::from_secs(3));
    let script = smtp(Some(pki.good.clone()));
    let probed = scenario(script, Level::Tls, &opts, Outcome::Ok, "STARTTLS").await;
    let_servers_log().await;
    for p in probed {
        let tls = p.r.tls.as_ref().expect("TLS info");
        assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
        assert!(!tls.cipher.is_empty());
        assert!(tls.issuer.contains(&format!("CN={CA_NAME}")), "{tls:?}");
        assert!(p.r.timings.banner_us.is_some() && p.r.timings.tls_us.is_some());
        assert_eq!(
            p.server.log(),
            vec!["EHLO PROBE.LOOPBACK.TEST", "STARTTLS", "TLS up", "QUIT"],
            "EHLO, STARTTLS, then QUIT inside TLS; never mail"
        );
    }
}

#[tokio::test]
async fn ok_with_implicit_tls_and_with_the_tls_only_control() {
    let (pki, opts) = setup(Duration::from_secs(3));
    for (ip, family) in LOOPBACKS {
        let ports = serve_tls_ports(ip, pki.good.clone(), &opts).await;
        let opts = &ports.opts;

        let (r, _) = run(ip, family, ports.smtps.port, Level::Tls, opts).await;
        assert_outcome(&r, Outcome::Ok);
        assert!(r.detail.starts_with("220 "), "{}", r.detail);
        assert!(r.tls.is_some());
        let_servers_log().await;
        assert_eq!(ports.smtps.log(), vec!["TLS up", "QUIT"]);

        let (r, _) = run(ip, family, ports.https.port, Level::Tls, opts).await;
        assert_outcome(&r, Outcome::Ok);
        let tls = r.tls.as_ref().expect("TLS info");
        assert!(tls.issuer.contains(CA_NAME), "{tls:?}");
        assert_eq!(r.timings.banner_us, None);
    }
}

#[tokio::test]
async fn multi_line_greeting_is_read_to_its_last_line() {
    let (pki, opts) = setup(Duration::from_secs(3));
    let script = smtp_saying(
        "220-mx.loopback.test ESMTP\r\n220-postscreen says hello\r\n220 ready\r\n",
        EHLO_WITH_STARTTLS,
        Some(pki.good.clone()),
    );
    for p in scenario(script, Level::Tls, &opts, Outcome::Ok, "").await {
        assert!(
            p.r.detail.starts_with("220 mx.loopback.test ESMTP"),
            "{}",
            p.r.detail
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Each failure outcome

#[tokio::test]
async fn closed_port_is_refused() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    for (ip, family) in LOOPBACKS {
        let port = {
            let l = std::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let (r, elapsed) = run(ip, family, port, Level::Tls, &opts).await;
        assert_outcome(&r, Outcome::Refused);
        assert_eq!(r.errno, Some(libc::ECONNREFUSED));
        assert_eq!(r.timings.connect_us, None);
        assert!(elapsed < Duration::from_secs(1));
    }
}

/// A full accept queue drops SYNs: a real, unprivileged silent drop on loopback.
#[tokio::test]
async fn dropped_syn_is_timeout_at_our_deadline_with_retransmissions_counted() {
    let (_pki, opts) = setup(Duration::from_millis(1500));
    for (ip, family) in LOOPBACKS {
        let addr = SocketAddr::new(ip.parse().unwrap(), 0);
        let listener = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        listener.bind(&addr.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Fill the accept queue (never accepted) until a connect goes unanswered.
        let mut fillers = Vec::new();
        let mut full = false;
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the accept queue never filled");
        let (r, elapsed) = run(ip, family, addr.port(), Level::Tls, &opts).await;
        assert_outcome(&r, Outcome::Timeout);
        assert!(
            elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(2200),
            "our deadline, not the kernel's: {elapsed:?}"
        );
        assert_eq!(r.errno, None);
        assert!(
            r.syn_retransmits.unwrap_or(0) >= 1,
            "a 1.5 s wait sees the 1 s SYN retransmission: {r:?}"
        );
        assert_detail(&r, "no answer to the SYN");
    }
}

#[tokio::test]
async fn silent_server_is_no_banner_within_the_deadline() {
    let (_pki, opts) = setup(Duration::from_millis(1200));
    for p in scenario(Script::Silent, Level::Banner, &opts, Outcome::NoBanner, "").await {
        assert!(p.r.timings.connect_us.is_some());
        assert_within(p.elapsed, &opts, &p.r);
    }
}

#[tokio::test]
async fn refusal_greeting_is_bad_banner() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    let script = smtp_saying(
        "554 5.7.1 mx.loopback.test: no SMTP service for you\r\n",
        EHLO_WITH_STARTTLS,
        None,
    );
    scenario(script, Level::Tls, &opts, Outcome::BadBanner, "554 5.7.1").await;
}

#[tokio::test]
async fn ehlo_without_starttls_is_starttls_missing() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    let script = smtp_saying(GREETING, EHLO_WITHOUT_STARTTLS, None);
    let probed = scenario(script, Level::Tls, &opts, Outcome::StarttlsMissing, "").await;
    let_servers_log().await;
    for p in probed {
        assert_eq!(p.server.log(), vec!["EHLO PROBE.LOOPBACK.TEST", "QUIT"]);
    }
}

#[tokio::test]
async fn ehlo_unknown_command_is_starttls_missing_not_bad_banner() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    // A server that speaks only RFC 821 SMTP: a fine greeting, and EHLO is an unknown command.
    let script = smtp_saying(GREETING, "500 5.5.1 Error: unknown command\r\n", None);
    let probed = scenario(
        script,
        Level::Tls,
        &opts,
        Outcome::StarttlsMissing,
        "EHLO not recognised (500 5.5.1 Error: unknown command)",
    )
    .await;
    let_servers_log().await;
    for p in probed {
        assert_eq!(p.r.step, Some(egresswatch_wire::SessionStep::Ehlo));
        assert_eq!(p.server.log(), vec!["EHLO PROBE.LOOPBACK.TEST", "QUIT"]);
    }
}

#[tokio::test]
async fn starttls_masked_on_the_path_is_named() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    // What an SMTP-inspecting firewall leaves of "250 STARTTLS".
    let masked = "250-mx.loopback.test\r\n250-PIPELINING\r\n250 XXXXXXXA\r\n";
    let script = smtp_saying(GREETING, masked, None);
    let outcome = Outcome::StarttlsMissing;
    scenario(
        script,
        Level::Tls,
        &opts,
        outcome,
        "rewritten by a middlebox",
    )
    .await;
}

#[tokio::test]
async fn wrong_certificates_are_tls_failed() {
    let (pki, opts) = setup(Duration::from_secs(3));
    for (ip, family) in LOOPBACKS {
        for (config, words, issuer) in [
            (
                pki.wrong_name.clone(),
                "the certificate is for other.example, not for",
                CA_NAME,
            ),
            (
                pki.unknown_ca.clone(),
                "the certificate is self-signed",
                "rcgen self signed cert",
            ),
        ] {
            // STARTTLS, implicit TLS and the TLS-only control all fail the same way.
            let ports = serve_tls_ports(ip, config, &opts).await;
            for port in [ports.starttls.port, ports.smtps.port, ports.https.port] {
                let (r, elapsed) = run(ip, family, port, Level::Tls, &ports.opts).await;
                assert_outcome(&r, Outcome::TlsFailed);
                assert_detail(&r, words);
                // Who answered is named: an interceptor's CA shows here.
                assert_detail(&r, "issued by");
                assert_detail(&r, issuer);
                assert!(r.tls.is_none());
                assert_within(elapsed, &ports.opts, &r);
            }
        }
    }
}

#[tokio::test]
async fn starttls_injection_is_refused() {
    let (pki, opts) = setup(Duration::from_secs(3));
    let script = Script::Smtp {
        greeting: GREETING,
        ehlo: EHLO_WITH_STARTTLS,
        starttls: Some(pki.good.clone()),
        inject_after_starttls: true,
    };
    scenario(script, Level::Tls, &opts, Outcome::TlsFailed, "injection").await;
}

#[tokio::test]
async fn reset_after_connect_is_reset() {
    let (_pki, opts) = setup(Duration::from_secs(3));
    for p in scenario(Script::Reset, Level::Banner, &opts, Outcome::Reset, "").await {
        assert_eq!(p.r.errno, Some(libc::ECONNRESET));
        assert!(p.r.timings.connect_us.is_some());
        assert!(p.elapsed < Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: its outcome, a short detail, within the deadline

#[tokio::test]
async fn junk_is_bad_banner() {
    let (_pki, opts) = setup(Duration::from_secs(2));
    for junk in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\x05hello\n"[..],
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
    ] {
        let junk: &'static [u8] = junk;
        let script = Script::Send(junk);
        let outcome = Outcome::BadBanner;
        for p in scenario(script, Level::Banner, &opts, outcome, "not an SMTP reply").await {
            assert!(p.r.detail.len() <= 200, "short detail: {}", p.r.detail);
            assert!(p.elapsed < Duration::from_secs(1));
        }
    }
}

#[tokio::test]
async fn endless_line_is_cut_off() {
    let (_pki, opts) = setup(Duration::from_secs(2));
    let outcome = Outcome::BadBanner;
    for p in scenario(
        Script::EndlessLine,
        Level::Banner,
        &opts,
        outcome,
        "longer than",
    )
    .await
    {
        assert!(p.elapsed < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn greeting_one_byte_a_second_ends_at_the_deadline() {
    let (_pki, opts) = setup(Duration::from_millis(2500));
    let (outcome, detail) = (Outcome::NoBanner, "no complete greeting");
    for p in scenario(Script::Slow, Level::Banner, &opts, outcome, detail).await {
        assert!(p.elapsed >= Duration::from_millis(2400), "{:?}", p.elapsed);
        assert_within(p.elapsed, &opts, &p.r);
    }
}

#[tokio::test]
async fn literal_of_the_other_family_is_no_address() {
    let (_pki, opts) = setup(Duration::from_secs(1));
    let (r, _) = run("127.0.0.1", Family::Ipv6, 25, Level::Tls, &opts).await;
    assert_outcome(&r, Outcome::NoAddress);
    assert!(!r.outcome.is_failure());
    let (r, _) = run("::1", Family::Ipv4, 25, Level::Tls, &opts).await;
    assert_outcome(&r, Outcome::NoAddress);
}

#[tokio::test]
async fn hosts_file_names_resolve_with_a_dns_phase() {
    let (pki, opts) = setup(Duration::from_secs(2));
    // localhost is in /etc/hosts for IPv4 on every Debian system: no DNS query leaves the host.
    let server = serve("127.0.0.1", smtp(Some(pki.good.clone()))).await;
    let (r, _) = run("localhost", Family::Ipv4, server.port, Level::Tls, &opts).await;
    assert_outcome(&r, Outcome::Ok);
    assert_eq!(r.address, Some("127.0.0.1".parse().unwrap()));
    assert!(r.timings.dns_us.is_some());
}

#[tokio::test]
async fn unusable_names_are_dns_failed_not_a_panic() {
    let (_pki, opts) = setup(Duration::from_secs(1));
    let (r, elapsed) = run("bad\0name", Family::Ipv4, 25, Level::Tls, &opts).await;
    assert_outcome(&r, Outcome::DnsFailed);
    assert!(elapsed < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// The `check` command: exit codes, table, JSON

fn agent() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_egresswatch-agent"))
}

async fn check(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || agent().arg("check").args(args).output().unwrap())
        .await
        .unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn check_exits_0_when_every_probe_is_ok_and_prints_the_table() {
    let pki = pki();
    let server = serve_both(smtp(Some(pki.good.clone()))).await;
    let port = server.port.to_string();
    let ca = pki.ca_file.path().to_str().unwrap();
    let out = check(strings(&[
        "127.0.0.1",
        "::1",
        "--port",
        &port,
        "--ca-file",
        ca,
        "--timeout",
        "3s",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HOST"), "{stdout}");
    assert!(stdout.contains("no_address"), "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(stdout.contains("Verdict:"), "{stdout}");
}

#[tokio::test]
async fn check_exits_1_and_names_the_layer_on_failures() {
    let pki = pki();
    let good = serve_both(smtp(Some(pki.good.clone()))).await;
    let stripped = serve_both(smtp_saying(GREETING, EHLO_WITHOUT_STARTTLS, None)).await;
    let silent = serve_both(Script::Silent).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ca = pki.ca_file.path().to_str().unwrap().to_string();
    let ports = [good.port, stripped.port, silent.port, closed];
    let mut args = strings(&["127.0.0.1", "::1", "--timeout", "1500ms", "--ca-file", &ca]);
    for p in ports {
        args.push("--port".into());
        args.push(p.to_string());
    }
    let started = Instant::now();
    let out = check(args).await;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // Concurrent: about one deadline, not the sum of them.
    assert!(elapsed < Duration::from_millis(3000), "{elapsed:?}");
    for words in [
        "starttls_missing",
        "no_banner",
        "refused",
        "STARTTLS is not offered",
        "the destination refuses",
    ] {
        assert!(stdout.contains(words), "{words}: {stdout}");
    }
}

#[tokio::test]
async fn check_exits_1_when_a_name_has_no_address_in_any_family_probed() {
    // An IPv4 literal asked over IPv6 only: nothing to probe, which is a failure of the host.
    let out = check(strings(&["127.0.0.1", "--family", "ipv6", "--port", "25"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("Verdict: 127.0.0.1 has no IPv6 address: nothing could be probed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_binds_to_the_source_address_and_interface_given() {
    let server = serve("127.0.0.1", Script::Silent).await;
    let port = server.port.to_string();
    let out = check(strings(&[
        "127.0.0.1",
        "--port",
        &port,
        "--level",
        "connect",
        "--family",
        "ipv4",
        "--source",
        "127.0.0.1",
        "--interface",
        "lo",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" ok "), "{stdout}");
}

#[tokio::test]
async fn check_json_carries_the_contract_fields() {
    let pki = pki();
    let server = serve_both(smtp(Some(pki.good.clone()))).await;
    let ca = pki.ca_file.path().to_str().unwrap().to_string();
    let port = server.port.to_string();
    let out = check(strings(&[
        "127.0.0.1",
        "::1",
        "--port",
        &port,
        "--ca-file",
        &ca,
        "--json",
        "--level",
        "tls",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 4, "2 hosts x 1 port x 2 families");
    for row in rows {
        for field in [
            "host",
            "port",
            "family",
            "address",
            "outcome",
            "connect_ms",
            "detail",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        let family = row["family"].as_str().unwrap();
        assert!(family == "ipv4" || family == "ipv6");
        match row["outcome"].as_str().unwrap() {
            "ok" => {
                assert!(row["connect_ms"].is_number());
                assert_eq!(row["port"].as_u64(), Some(u64::from(server.port)));
                assert!(row["tls"]["issuer"].as_str().unwrap().contains(CA_NAME));
            }
            "no_address" => {
                assert!(row["connect_ms"].is_null());
                assert!(row["address"].is_null());
            }
            other => panic!("unexpected outcome {other}: {row}"),
        }
    }
}

#[tokio::test]
async fn check_usage_errors_exit_2_with_a_message() {
    for args in [
        vec![],
        strings(&["127.0.0.1", "--port", "0"]),
        strings(&["127.0.0.1", "--port", "70000"]),
        strings(&["127.0.0.1", "--port", "smtp"]),
        strings(&["127.0.0.1", "--timeout", "5 parsecs"]),
        strings(&["127.0.0.1", "--level", "mail"]),
        strings(&["127.0.0.1", "--ca-file", "/nonexistent/ca.pem"]),
        strings(&["127.0.0.1", "--source", "not-an-address"]),
        // TEST-NET-1: not an address of this host (binding sends nothing).
        strings(&["127.0.0.1", "--source", "192.0.2.77"]),
        strings(&[
            "127.0.0.1",
            "--source",
            "127.0.0.1",
            "--source",
            "127.0.0.2",
        ]),
        strings(&["127.0.0.1", "--interface", "no-such-if0"]),
        strings(&["127.0.0.1", "--interface", "../lo"]),
    ] {
        let out = check(args.clone()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?}: a message on stderr");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
