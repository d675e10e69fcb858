//! The HTTP API's secrets against the real collector binary: an exposed listener without a
//! token does not start, and the token (right or wrong), the CA key and an agent's key never
//! appear in the collector's log (or what it prints), even with RUST_LOG=trace — everything
//! debug shows and more, rustls and quinn included — while an agent and HTTP clients talk to it.

use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::{CollectorMessage, Labels};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{collector_bin, issue, spawn_collector, write_collector_config, Proc};

/// A collector config on loopback QUIC with `http` as the body of its `[http]` table.
fn write_config(dir: &Path, http: &str) -> std::path::PathBuf {
    write_collector_config(dir, "listen = \"127.0.0.1:0\"", http, "")
}

#[test]
fn an_exposed_listener_without_a_good_token_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (http, expect) in [
        ("listen = \"0.0.0.0:0\"", "http.token"),
        ("listen = \"0.0.0.0:0\"\ntoken = \"   \"", "http.token"),
        ("listen = \"0.0.0.0:0\"\ntoken = \"short\"", "http.token"),
    ] {
        let config = write_config(tmp.path(), http);
        let mut child = Command::new(collector_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the collector started with [http] {http}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{http}: {stderr}");
        assert!(stderr.contains(expect), "{http}: {stderr}");
        assert!(
            !stderr.contains("short\""),
            "the refused token is echoed: {stderr}"
        );
    }
}

/// The base64 lines of a PEM file: what would show if the key were ever printed.
fn pem_body_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "Tk-9f2c61d0e8a54b7f93c0-never-log-me";
    let wrong = "Wr-3b8e0c1a77d24f2e8e51-nor-this-one";
    let config = write_config(
        tmp.path(),
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{token}\""),
    );
    let log_path = tmp.path().join("collector.log");
    let (child, listening) = spawn_collector(&config, &log_path, Some("trace"));
    let mut collector = Proc(child);
    let (quic, http, printed) = (listening.quic, listening.http, listening.printed);

    // An agent reports over QUIC (TLS with the CA-issued certificate and key).
    let ca_dir = tmp.path().join("data/ca");
    let agents = tmp.path().join("agents");
    let (cert, key) = issue(&ca_dir, &agents, "quiet-agent");
    let creds = Credentials::from_files(&ca_dir.join("ca.pem"), &cert, &key).unwrap();
    let endpoint = support::quic::client_endpoint();
    let mut agent = SimAgent::connect(
        &endpoint,
        quic,
        sim::client_config(Some(&creds), &creds.ca, sim::DEFAULT_ALPN).unwrap(),
    )
    .await
    .unwrap();
    let labels = Labels {
        provider: "aws".into(),
        account: "a".into(),
        region: "r".into(),
        instance: "i".into(),
    };
    assert!(matches!(
        agent.hello(labels).await.unwrap(),
        CollectorMessage::Welcome(_)
    ));
    agent
        .report(&[sim::result(1, 1_700_000_000_000)])
        .await
        .unwrap();
    agent.finish().await;

    // HTTP clients with the right token, a wrong one, a malformed header, and none.
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{http}{p}");
    for path in [
        "/api/matrix",
        "/api/events",
        "/metrics",
        "/api/agents/quiet-agent/results",
    ] {
        let ok = c.get(url(path)).bearer_auth(token).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{path}");
        let bad = c.get(url(path)).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(bad.status(), 401, "{path}");
        let odd = c
            .get(url(path))
            .header("authorization", format!("Token {wrong}"))
            .send()
            .await
            .unwrap();
        assert_eq!(odd.status(), 401, "{path}");
        assert_eq!(c.get(url(path)).send().await.unwrap().status(), 401);
    }
    let stream = c
        .get(url("/api/stream"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    // A graceful stop, so that everything the collector would log is in the file.
    collector.terminate();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("DEBUG") && log.contains("TRACE"),
        "RUST_LOG=trace took effect; log:\n{log}"
    );
    let everything = format!("{printed}{log}");
    for (what, secret) in [("the token", token), ("a wrong token", wrong)] {
        assert!(!everything.contains(secret), "{what} is in the log");
    }
    let mut keys = pem_body_lines(&ca_dir.join("ca.key"));
    keys.extend(pem_body_lines(&agents.join("quiet-agent.key")));
    assert!(!keys.is_empty());
    for line in keys {
        assert!(
            !everything.contains(&line),
            "a private key line is in the log"
        );
    }
    eprintln!("checked {} log lines at trace level", log.lines().count());
}
