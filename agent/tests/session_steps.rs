//! Each SMTP step left without a reply, against real servers on loopback: Postfix's `smtp-sink`
//! delaying its greeting (`-W connect:N`) or its EHLO reply (`-W ehlo:N`) past the probe's
//! deadline, or hanging up on EHLO (`-q ehlo`), and small scripted servers for what smtp-sink
//! cannot do (a STARTTLS left unanswered or hung up on, a greeting cut off mid-reply). Every
//! case asserts the outcome, the step, the detail and the verdict's reading of the layer: a
//! stalled session is `no_banner` at its step, never `starttls_missing` nor `tls_failed`.
//!
//! smtp-sink comes with Postfix; without it those cases are skipped with a printed reason.

use egresswatch_agent::probe::{self, ProbeOptions, ProbeTarget};
use egresswatch_wire::{Family, Level, Outcome, ProbeResult, SessionStep};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_millis(1500);

fn smtp_sink() -> Option<PathBuf> {
    ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running smtp-sink, stopped by its PID when dropped.
struct Sink {
    child: Child,
    port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts smtp-sink with `options` on a free 127.0.0.1 port and waits until it listens.
fn start_sink(binary: &Path, options: &[&str]) -> Sink {
    for _ in 0..10 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut cmd = Command::new(binary);
        // As root smtp-sink must drop privileges after binding.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            .arg("16")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting smtp-sink");
        // Bounded wait for the listening socket (50 × 50 ms).
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Sink { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("smtp-sink never listened");
}

fn options() -> ProbeOptions {
    let mut options = ProbeOptions::new(DEADLINE, Arc::new(rustls::RootCertStore::empty()));
    options.ehlo_name = "probe.loopback.test".into();
    options
}

async fn probe_port(port: u16) -> ProbeResult {
    let target = ProbeTarget {
        host: "127.0.0.1".into(),
        port,
        family: Family::Ipv4,
        level: Level::Tls,
    };
    tokio::time::timeout(
        DEADLINE + Duration::from_secs(5),
        probe::probe(&target, &options()),
    )
    .await
    .expect("the probe hung past its deadline")
}

/// `egresswatch-agent check 127.0.0.1 --port P` (IPv4 only): exit code and table.
async fn check(port: u16) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_egresswatch-agent"))
            .args([
                "check",
                "127.0.0.1",
                "--family",
                "ipv4",
                "--timeout",
                "1500ms",
            ])
            .args(["--port", &port.to_string()])
            .output()
            .expect("running check")
    })
    .await
    .expect("joined");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn assert_step(r: &ProbeResult, outcome: Outcome, step: SessionStep, detail: &str) {
    assert_eq!(r.outcome, outcome, "{r:#?}");
    assert_eq!(r.step, Some(step), "{r:#?}");
    assert!(
        r.detail.contains(detail),
        "{detail:?} not in {:?}",
        r.detail
    );
}

/// No reading of a stalled session may accuse STARTTLS stripping or TLS.
fn assert_no_false_alarm(table: &str) {
    for alarm in [
        "starttls_missing",
        "tls_failed",
        "STARTTLS is not offered",
        "TLS intercepted",
    ] {
        assert!(!table.contains(alarm), "{alarm}: {table}");
    }
}

#[tokio::test]
async fn an_ehlo_reply_delayed_past_the_deadline_is_no_banner_at_ehlo() {
    let Some(binary) = smtp_sink() else {
        eprintln!("SKIP: smtp-sink (Postfix) is not installed");
        return;
    };
    let sink = start_sink(&binary, &["-W", "ehlo:10"]);
    let r = probe_port(sink.port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Ehlo,
        "EHLO got no reply",
    );
    assert!(r.timings.banner_us.is_some(), "the greeting did arrive");

    let (code, table) = check(sink.port).await;
    println!("{table}");
    assert_eq!(code, Some(1));
    assert!(
        table.contains("the greeting arrives but EHLO gets no reply"),
        "{table}"
    );
    assert_no_false_alarm(&table);
}

#[tokio::test]
async fn a_greeting_that_never_comes_is_no_banner_at_the_greeting() {
    let Some(binary) = smtp_sink() else {
        eprintln!("SKIP: smtp-sink (Postfix) is not installed");
        return;
    };
    let sink = start_sink(&binary, &["-W", "connect:10"]);
    let r = probe_port(sink.port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Greeting,
        "no complete greeting within",
    );
    let (code, table) = check(sink.port).await;
    assert_eq!(code, Some(1));
    assert!(table.contains("no SMTP greeting arrives"), "{table}");
    assert_no_false_alarm(&table);
}

#[tokio::test]
async fn a_server_hanging_up_on_ehlo_is_no_banner_at_ehlo() {
    let Some(binary) = smtp_sink() else {
        eprintln!("SKIP: smtp-sink (Postfix) is not installed");
        return;
    };
    let sink = start_sink(&binary, &["-q", "ehlo"]);
    let r = probe_port(sink.port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Ehlo,
        "closed the connection without answering EHLO",
    );
    let (code, table) = check(sink.port).await;
    assert_eq!(code, Some(1));
    assert!(table.contains("EHLO gets no reply"), "{table}");
    assert_no_false_alarm(&table);
}

/// What a scripted server does once a client connected.
#[derive(Clone, Copy)]
enum Stall {
    /// Greets, offers STARTTLS, and never answers STARTTLS.
    SilentAtStarttls,
    /// Greets, offers STARTTLS, and hangs up on STARTTLS.
    ClosesAtStarttls,
    /// Sends the first line of a multi-line greeting, then hangs up.
    ClosesMidGreeting,
}

/// One scripted server on 127.0.0.1, aborted with the test's runtime.
async fn serve(stall: Stall) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        // Bounded: each test connects a few times.
        for _ in 0..8 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), session(stream, stall)).await;
            });
        }
    });
    port
}

async fn session(mut stream: tokio::net::TcpStream, stall: Stall) {
    if let Stall::ClosesMidGreeting = stall {
        let _ = stream.write_all(b"220-mx.loopback.test ESMTP\r\n").await;
        return;
    }
    if stream
        .write_all(b"220 mx.loopback.test ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut reader = BufReader::new(stream);
    for _ in 0..10 {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = line.trim().to_ascii_uppercase();
        if verb.starts_with("EHLO") {
            let reply = b"250-mx.loopback.test\r\n250 STARTTLS\r\n";
            if reader.get_mut().write_all(reply).await.is_err() {
                return;
            }
        } else if verb == "STARTTLS" {
            match stall {
                Stall::ClosesAtStarttls => return,
                _ => {
                    // Holds the session open and says nothing until the client leaves.
                    let mut rest = String::new();
                    let _ = reader.read_line(&mut rest).await;
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_starttls_left_unanswered_is_no_banner_at_starttls_not_tls_failed() {
    let port = serve(Stall::SilentAtStarttls).await;
    let r = probe_port(port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Starttls,
        "STARTTLS got no reply within",
    );
    let (code, table) = check(port).await;
    println!("{table}");
    assert_eq!(code, Some(1));
    assert!(
        table.contains("EHLO offers STARTTLS but STARTTLS gets no reply"),
        "{table}"
    );
    assert_no_false_alarm(&table);
}

#[tokio::test]
async fn a_server_hanging_up_on_starttls_is_no_banner_at_starttls() {
    let port = serve(Stall::ClosesAtStarttls).await;
    let r = probe_port(port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Starttls,
        "closed the connection without answering STARTTLS",
    );
}

#[tokio::test]
async fn a_greeting_cut_off_mid_reply_is_no_banner_at_the_greeting() {
    let port = serve(Stall::ClosesMidGreeting).await;
    let r = probe_port(port).await;
    assert_step(
        &r,
        Outcome::NoBanner,
        SessionStep::Greeting,
        "closed the connection before its greeting was complete",
    );
    let (_, table) = check(port).await;
    assert!(table.contains("no SMTP greeting arrives"), "{table}");
    assert_no_false_alarm(&table);
}
