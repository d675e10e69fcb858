//! Enrollment by join token, end to end: the real collector binary, the real agent binary, real
//! QUIC on loopback. A token made with `token create` enrolls an agent (its key made by the
//! agent, its config written), the agent reports and its results are on the HTTP API, `ca list`
//! shows it and `ca revoke` ends it. Each bad token is refused with its reason and counted in
//! `egresswatch_enrollments_total{result}`: expired, reused (single use), revoked, unknown, for
//! another CA (refused by the agent before the secret leaves it), garbage; attempts over the
//! per-source rate are refused too. No token secret ever appears in the collector's log.

mod support;

use egresswatch_wire::enroll::{hex, EnrollAnswer, JoinToken};
use egresswatch_wire::stream::{FrameReader, FrameWriter};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::fleet::{probe_target, Collector};
use support::{
    agent_bin, collector_bin, spawn_collector, wait_until, work_dir, write_collector_config, Proc,
};

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `token create --dir DIR ARGS…`, the token it printed.
fn token_create(ca_dir: &Path, args: &[&str]) -> String {
    let dir = ca_dir.to_str().unwrap();
    let mut all = vec!["token", "create", "--dir", dir];
    all.extend_from_slice(args);
    let out = run(collector_bin(), &all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `egresswatch-agent enroll` into `dir/agent.toml`, as `name`.
fn enroll(dir: &Path, collector: SocketAddr, token: &str, name: &str) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    run(
        agent_bin(),
        &[
            "enroll",
            "--collector",
            &collector.to_string(),
            "--token",
            token,
            "--config",
            dir.join("agent.toml").to_str().unwrap(),
            "--name",
            name,
        ],
    )
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// `egresswatch_enrollments_total{result="RESULT"}`, 0 when absent.
fn enrollments(http: SocketAddr, result: &str) -> u64 {
    let wanted = format!("egresswatch_enrollments_total{{result=\"{result}\"}} ");
    http_get(http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn assert_refused(output: &Output, says: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "expected {says:?}: {}", text(output));
}

#[test]
fn a_token_enrolls_an_agent_that_reports_and_ca_revoke_ends_it() {
    let tmp = work_dir("ew-enroll-");
    let collector = Collector::start(tmp.path(), 0);
    let token = token_create(
        &collector.ca_dir(),
        &[
            "--uses",
            "1",
            "--expires",
            "1h",
            "--label",
            "provider=lab",
            "--label",
            "account=enrolled",
        ],
    );
    let vm = tmp.path().join("vm");
    let out = enroll(&vm, collector.addr, &token, "vm-enrolled");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("enrolled as vm-enrolled"));
    let key_mode = std::fs::metadata(vm.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let config = std::fs::read_to_string(vm.join("agent.toml")).unwrap();
    assert!(
        config.contains(&format!("address = \"{}\"", collector.addr)),
        "{config}"
    );
    assert!(config.contains("provider = \"lab\"") && config.contains("account = \"enrolled\""));

    // The written config, with a loopback target (never the built-in public list) and test paths.
    let port = probe_target();
    let mut config = config;
    config.push_str(&format!(
        "region = \"loopback\"\ninstance = \"vm-enrolled\"\n\n[[targets]]\nhost = \"127.0.0.1\"\nports = [{port}]\nlevel = \"connect\"\ninterval = \"1s\"\n\n\
         [probe]\ntimeout = \"1s\"\nmin_interval_per_destination = \"1s\"\n\n[spool]\ndir = {:?}\n\n[identity]\nmetadata = false\ndmi_dir = {:?}\n",
        vm.join("spool"),
        vm.join("no-dmi")
    ));
    std::fs::write(vm.join("agent.toml"), config).unwrap();
    let log = std::fs::File::create(vm.join("agent.log")).unwrap();
    let _agent = Proc(
        Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(vm.join("agent.toml"))
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let reported = wait_until(Duration::from_secs(20), || {
        http_get(collector.http, "/api/agents/vm-enrolled/results").contains("\"seq\"")
    });
    let agent_log = || std::fs::read_to_string(vm.join("agent.log")).unwrap_or_default();
    assert!(
        reported,
        "no results on the API; agent log:\n{}",
        agent_log()
    );
    assert!(collector.log().contains("provider=lab account=enrolled"));

    let ca = collector.ca_dir();
    let dir = ca.to_str().unwrap();
    let list = run(collector_bin(), &["ca", "list", "--dir", dir]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    let line = listed
        .lines()
        .find(|l| l.starts_with("vm-enrolled "))
        .unwrap_or_else(|| panic!("not in ca list:\n{listed}"));
    assert!(line.ends_with("valid"), "{line}");
    let tokens = run(collector_bin(), &["token", "list", "--dir", dir]);
    let tokens = String::from_utf8_lossy(&tokens.stdout).to_string();
    assert!(
        tokens.contains("1/1") && tokens.contains("vm-enrolled"),
        "{tokens}"
    );

    let revoke = run(
        collector_bin(),
        &["ca", "revoke", "--dir", dir, "vm-enrolled"],
    );
    assert!(revoke.status.success(), "{}", text(&revoke));
    assert!(
        wait_until(Duration::from_secs(15), || agent_log()
            .contains("rejected by the collector")),
        "the revoked agent was not cut off; agent log:\n{}",
        agent_log()
    );
    assert_eq!(enrollments(collector.http, "issued"), 1);
    let secret = hex(&JoinToken::parse(&token).unwrap().secret);
    assert!(
        !collector.log().contains(&secret),
        "a token secret in the log"
    );
}

/// A client that speaks the enrollment protocol by hand: sends `bytes` as they are, reads the
/// answer.
async fn raw_enroll(addr: SocketAddr, ca: &Path, bytes: Vec<u8>) -> EnrollAnswer {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap();
    let config =
        egresswatch_sim::client_config(None, &ca, egresswatch_wire::version::ENROLL_ALPN).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(config, addr, "egresswatch-collector")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = connection.open_bi().await.unwrap();
    let mut send = FrameWriter::new(send, 1 << 20);
    send.send_raw(&bytes).await.unwrap();
    let _ = send.get_mut().finish();
    let mut recv = FrameReader::new(recv, 1 << 20);
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read::<EnrollAnswer>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    connection.close(0u32.into(), b"");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_token_is_refused_with_its_reason_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // Six attempts from loopback are allowed at once, the seventh is over the rate.
    let config = write_collector_config(
        tmp.path(),
        "listen = \"127.0.0.1:0\"\nenroll_attempts_per_minute = 1\nenroll_attempts_burst = 6",
        "listen = \"127.0.0.1:0\"",
        "",
    );
    let (child, listening) =
        spawn_collector(&config, &tmp.path().join("collector.log"), Some("info"));
    let _collector = Proc(child);
    let (addr, http) = (listening.quic, listening.http);
    let ca = tmp.path().join("data/ca");
    let log = || std::fs::read_to_string(tmp.path().join("collector.log")).unwrap_or_default();
    let vm = |name: &str| tmp.path().join(name);
    let mut secrets = Vec::new();
    let blocking = |f: Box<dyn FnOnce() -> Output + Send>| tokio::task::spawn_blocking(f);

    // Reused: a single-use token enrolls one agent, then is used up.
    let once = token_create(&ca, &[]);
    secrets.push(hex(&JoinToken::parse(&once).unwrap().secret));
    // The token from the environment (EGRESSWATCH_TOKEN) works like --token.
    let (t, d) = (once.clone(), vm("first"));
    let out = blocking(Box::new(move || {
        std::fs::create_dir_all(&d).unwrap();
        Command::new(agent_bin())
            .args([
                "enroll",
                "--collector",
                &addr.to_string(),
                "--name",
                "first",
                "--config",
            ])
            .arg(d.join("agent.toml"))
            .env("EGRESSWATCH_TOKEN", &t)
            .output()
            .unwrap()
    }))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (t, d) = (once.clone(), vm("second"));
    let out = blocking(Box::new(move || enroll(&d, addr, &t, "second")))
        .await
        .unwrap();
    assert_refused(&out, "used as many times as it allows");
    assert!(
        !vm("second").join("agent.key").exists(),
        "a refused key is removed"
    );

    // Expired.
    let expired = token_create(&ca, &["--expires", "1s"]);
    secrets.push(hex(&JoinToken::parse(&expired).unwrap().secret));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let d = vm("late");
    let out = blocking(Box::new(move || enroll(&d, addr, &expired, "late")))
        .await
        .unwrap();
    assert_refused(&out, "this token has expired");

    // Revoked.
    let revoked = token_create(&ca, &["--uses", "5"]);
    secrets.push(hex(&JoinToken::parse(&revoked).unwrap().secret));
    let id = JoinToken::parse(&revoked).unwrap().id_hex();
    let out = run(
        collector_bin(),
        &["token", "revoke", "--dir", ca.to_str().unwrap(), &id],
    );
    assert!(out.status.success(), "{}", text(&out));
    let d = vm("revoked");
    let out = blocking(Box::new(move || enroll(&d, addr, &revoked, "revoked")))
        .await
        .unwrap();
    assert_refused(&out, "this token has been revoked");

    // Unknown: the right CA, an id and a secret the collector never made.
    let mut forged = JoinToken::parse(&once).unwrap();
    forged.id = [0x42; 8];
    forged.secret = [0x42; 32];
    let forged = forged.to_text();
    let d = vm("forged");
    let out = blocking(Box::new(move || enroll(&d, addr, &forged, "forged")))
        .await
        .unwrap();
    assert_refused(&out, "unknown token");

    // Garbage: the agent refuses a token that does not parse without sending anything; bytes
    // that are not a request, sent by hand, are refused as malformed.
    let d = vm("garbage");
    let out = blocking(Box::new(move || {
        enroll(&d, addr, "ewt1.garbage", "garbage")
    }))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let ca_pem = ca.join("ca.pem");
    match raw_enroll(addr, &ca_pem, vec![0, 0, 0, 3, 1, 2, 3]).await {
        EnrollAnswer::Refused(r) => assert!(r.reason.contains("malformed"), "{r:?}"),
        other => panic!("{other:?}"),
    }

    // Another CA's token: the agent refuses the collector before the secret leaves it.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca");
    egresswatch_collector::ca::init(&other_ca).unwrap();
    let foreign = token_create(&other_ca, &[]);
    let foreign_id = JoinToken::parse(&foreign).unwrap().id_hex();
    secrets.push(hex(&JoinToken::parse(&foreign).unwrap().secret));
    let d = vm("foreign");
    let out = blocking(Box::new(move || enroll(&d, addr, &foreign, "foreign")))
        .await
        .unwrap();
    assert_refused(&out, "not the one the token pins");
    assert_refused(&out, "the token was not sent");

    // Over the rate: the seventh attempt from this address, however good its token.
    let good = token_create(&ca, &["--uses", "5"]);
    secrets.push(hex(&JoinToken::parse(&good).unwrap().secret));
    let d = vm("eager");
    let out = blocking(Box::new(move || enroll(&d, addr, &good, "eager")))
        .await
        .unwrap();
    assert_refused(&out, "too many enrollment attempts");

    for (result, count) in [
        ("issued", 1),
        ("used_up", 1),
        ("expired", 1),
        ("revoked", 1),
        ("unknown", 1),
        ("malformed", 1),
        ("rate_limited", 1),
    ] {
        assert_eq!(enrollments(http, result), count, "{result}");
    }
    let text = log();
    assert_eq!(text.matches("enrollment refused").count(), 5, "{text}");
    // The attempt over the rate is logged at the limits' pace, and counted there too.
    assert!(
        text.contains("over quic.enroll_attempts_per_minute"),
        "{text}"
    );
    assert!(http_get(http, "/metrics")
        .contains("egresswatch_limit_exceeded_total{limit=\"enroll_attempts\"} 1"));
    assert!(
        !text.contains(&foreign_id),
        "the foreign token reached the collector"
    );
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a token secret in the log");
    }
}

/// A labelled counter's value in `/metrics`, 0 when absent.
fn counter(http: SocketAddr, name: &str, result: &str) -> u64 {
    let wanted = format!("{name}_total{{result=\"{result}\"}} ");
    http_get(http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_short_lived_certificate_is_renewed_over_the_session_and_the_agent_reports_past_its_end() {
    use support::fleet::Agent;
    let tmp = work_dir("ew-renew-");
    let collector = Collector::start(tmp.path(), 0);
    let agent = Agent::new(tmp.path(), "vm-renew", &collector, vec![probe_target()]);
    // Replace its certificate with one that lives 24 s: renewal is due about 15 s in.
    let ca = collector.ca_dir();
    let out = run(
        collector_bin(),
        &[
            "ca",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--out",
            agent.cert.parent().unwrap().to_str().unwrap(),
            "--valid-for",
            "24s",
            "vm-renew",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let issued_at = std::time::Instant::now();
    let first = std::fs::read_to_string(&agent.cert).unwrap();
    let _running = agent.start();
    assert!(
        agent.wait_log("certificate renewed", Duration::from_secs(30)),
        "no renewal; agent log:\n{}",
        agent.log()
    );
    assert_ne!(std::fs::read_to_string(&agent.cert).unwrap(), first);
    assert!(counter(collector.http, "egresswatch_renewals", "renewed") >= 1);
    let list = run(
        collector_bin(),
        &["ca", "list", "--dir", ca.to_str().unwrap()],
    );
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        listed
            .lines()
            .filter(|l| l.starts_with("vm-renew "))
            .count()
            >= 3,
        "{listed}"
    );
    // Past the first certificate's end, results still arrive (as the same agent).
    let ended = Duration::from_secs(25).saturating_sub(issued_at.elapsed());
    std::thread::sleep(ended);
    let before = collector.results("vm-renew").len();
    assert!(
        wait_until(Duration::from_secs(15), || collector
            .results("vm-renew")
            .len()
            > before),
        "no results after the first certificate expired; agent log:\n{}",
        agent.log()
    );
    assert!(
        !agent.log().contains("rejected by the collector"),
        "{}",
        agent.log()
    );
}
