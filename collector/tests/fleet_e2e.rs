//! The real agent binary against the real collector binary on loopback: nothing lost, nothing
//! counted twice when the collector is SIGKILLed mid-stream or when the agent is SIGKILLed in a
//! loop while writing its spool; an agent whose certificate comes from another CA, or whose
//! certificate is revoked while it reports, is told "rejected by the collector" and does not
//! hammer it, while a good agent keeps reporting.
//!
//! The agent binary is the sibling `egresswatch-agent` of the collector binary (test.sh builds
//! every binary first; `cargo build --workspace --bins` does too).

use egresswatch_collector::store::{sqlite::SqliteStore, Store};
use rand::Rng;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn collector_bin() -> &'static str {
    env!("CARGO_BIN_EXE_egresswatch-collector")
}

fn agent_bin() -> PathBuf {
    let bin = PathBuf::from(collector_bin()).with_file_name("egresswatch-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` (test.sh does) before this test",
        bin.display()
    );
    bin
}

/// A work directory that is not under /tmp: the agent refuses nothing there, but a spool on a
/// tmpfs is not what we want to exercise.
fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ew-fleet-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not stop within 15 s of SIGTERM");
    }
}

/// Starts the collector on loopback (`quic_port` 0 picks one); returns it and its QUIC address.
fn start_collector(dir: &Path, quic_port: u16) -> (Proc, SocketAddr) {
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[quic]\nlisten = \"127.0.0.1:{quic_port}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(collector_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("collector.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quic = None;
    while quic.is_none() && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("QUIC:") {
                    quic = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
            }
            _ => break,
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (
        Proc(child),
        quic.expect("collector printed its QUIC address"),
    )
}

/// Issues an agent certificate from the CA in `ca_dir`; returns (cert, key).
fn issue(ca_dir: &Path, out: &Path, id: &str) -> (PathBuf, PathBuf) {
    let status = Command::new(collector_bin())
        .args(["ca", "issue", "--dir"])
        .arg(ca_dir)
        .arg(id)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ca issue {id}");
    (out.join(format!("{id}.crt")), out.join(format!("{id}.key")))
}

/// A TCP listener on loopback that accepts and closes: the agent's probe target.
fn probe_target() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    port
}

struct AgentSetup {
    dir: PathBuf,
    collector: SocketAddr,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    target_port: u16,
    spool: PathBuf,
}

impl AgentSetup {
    fn spool(&self) -> PathBuf {
        self.spool.clone()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Writes the config (probing every `interval`) and starts the agent; its log is appended
    /// to `agent.log`.
    fn start(&self, interval: &str) -> Proc {
        let config = self.dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"[collector]
address = "{collector}"
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[labels]
provider = "lab"
account = "fleet-e2e"
region = "loopback"
instance = "vm-1"

[[targets]]
host = "127.0.0.1"
ports = [{port}]
level = "connect"
interval = "{interval}"

[probe]
timeout = "1s"
min_interval_per_destination = "1s"

[spool]
dir = {spool:?}

[identity]
metadata = false
dmi_dir = {dmi:?}
"#,
                collector = self.collector,
                ca = self.ca,
                cert = self.cert,
                key = self.key,
                port = self.target_port,
                spool = self.spool(),
                dmi = self.dir.join("no-dmi"),
            ),
        )
        .unwrap();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// (next_seq, acked_seq) from the spool's ledger.
    fn ledger(&self) -> (u64, u64) {
        let Ok(bytes) = std::fs::read(self.spool().join("ledger")) else {
            return (0, 0);
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return (0, 0);
        };
        (
            v["next_seq"].as_u64().unwrap_or(0),
            v["acked_seq"].as_u64().unwrap_or(0),
        )
    }

    fn wait_acked(&self, at_least: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.ledger().1 >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Restarts the agent with a probe interval of an hour (so it adds nothing, almost surely)
    /// until everything it spooled is acked; returns how many results it ever produced.
    fn drain(&self) -> u64 {
        for _ in 0..4 {
            let mut agent = self.start("1h");
            let deadline = Instant::now() + Duration::from_secs(30);
            // Opening the spool writes next_seq from what is on disk; then wait for the acks.
            std::thread::sleep(Duration::from_millis(500));
            while Instant::now() < deadline {
                let (next, acked) = self.ledger();
                if next > 0 && acked + 1 == next {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            agent.terminate();
            let (next, acked) = self.ledger();
            if next > 0 && acked + 1 == next {
                return acked;
            }
        }
        panic!(
            "the agent never drained its spool: ledger {:?}; log:\n{}",
            self.ledger(),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }
}

fn stored_seqs(data: &Path, agent: &str) -> (u64, BTreeSet<u64>) {
    let store = SqliteStore::open(&data.join("egresswatch.db")).unwrap();
    let count = store.count_results(agent).unwrap();
    let seqs = store
        .recent_results(agent, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    (count, seqs)
}

fn assert_exactly_once(data: &Path, agent: &str, produced: u64) {
    let (count, seqs) = stored_seqs(data, agent);
    eprintln!("{agent}: the agent produced {produced} results, the store holds {count}");
    assert_eq!(count, produced, "stored results vs the agent's own count");
    let expected: BTreeSet<u64> = (1..=produced).collect();
    assert_eq!(seqs, expected, "every seq once");
}

fn setup(tmp: &Path, id: &str, collector: SocketAddr) -> AgentSetup {
    let ca_dir = tmp.join("data/ca");
    let dir = tmp.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = issue(&ca_dir, &tmp.join("agents"), id);
    AgentSetup {
        collector,
        ca: ca_dir.join("ca.pem"),
        cert,
        key,
        target_port: probe_target(),
        spool: dir.join("spool"),
        dir,
    }
}

#[test]
fn collector_sigkilled_and_restarted_loses_and_doubles_nothing() {
    let tmp = work_dir();
    let (mut collector, addr) = start_collector(tmp.path(), 0);
    let agent_setup = setup(tmp.path(), "e2e-a", addr);
    let mut agent = agent_setup.start("1s");
    assert!(
        agent_setup.wait_acked(3, Duration::from_secs(30)),
        "first acks; log:\n{}",
        std::fs::read_to_string(agent_setup.log()).unwrap_or_default()
    );

    // SIGKILL the collector while the agent keeps probing into its spool.
    let _ = collector.0.kill();
    let _ = collector.0.wait();
    let acked_at_kill = agent_setup.ledger().1;
    std::thread::sleep(Duration::from_secs(4));
    let (restarted, _) = start_collector(tmp.path(), addr.port());
    collector = restarted;
    // The agent reconnects (backoff ≤ a few seconds by now) and sends what piled up.
    assert!(
        agent_setup.wait_acked(acked_at_kill + 6, Duration::from_secs(40)),
        "acks resumed after the restart; ledger {:?}; log:\n{}",
        agent_setup.ledger(),
        std::fs::read_to_string(agent_setup.log()).unwrap_or_default()
    );
    agent.terminate();
    let produced = agent_setup.drain();
    drop(collector);
    assert!(produced >= acked_at_kill + 6);
    assert_exactly_once(&tmp.path().join("data"), "e2e-a", produced);
}

#[test]
fn agent_sigkilled_in_a_loop_always_restarts_and_loses_nothing_written() {
    let tmp = work_dir();
    let (collector, addr) = start_collector(tmp.path(), 0);
    let agent_setup = setup(tmp.path(), "e2e-b", addr);
    let mut rng = rand::thread_rng();
    for round in 0..10 {
        let mut agent = agent_setup.start("1s");
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2500)));
        assert!(
            matches!(agent.0.try_wait(), Ok(None)),
            "round {round}: the agent exited by itself; log:\n{}",
            std::fs::read_to_string(agent_setup.log()).unwrap_or_default()
        );
        let _ = agent.0.kill();
        let _ = agent.0.wait();
    }
    let produced = agent_setup.drain();
    drop(collector);
    let log = std::fs::read_to_string(agent_setup.log()).unwrap_or_default();
    assert!(
        log.matches("spool open").count() >= 11,
        "every start read its spool; log:\n{log}"
    );
    assert!(produced > 0, "the agent produced results; log:\n{log}");
    assert_exactly_once(&tmp.path().join("data"), "e2e-b", produced);
}

#[test]
fn a_certificate_from_another_ca_is_rejected_without_a_tight_loop() {
    let tmp = work_dir();
    let (collector, addr) = start_collector(tmp.path(), 0);
    let good = setup(tmp.path(), "e2e-good", addr);
    let mut good_agent = good.start("1s");
    assert!(
        good.wait_acked(1, Duration::from_secs(30)),
        "good agent reports"
    );

    // Another fleet CA, and an agent certificate from it.
    let other_ca = tmp.path().join("other-ca");
    let status = Command::new(collector_bin())
        .args(["ca", "init", "--dir"])
        .arg(&other_ca)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ca init");
    let (cert, key) = issue(&other_ca, &tmp.path().join("other-agents"), "e2e-stranger");
    let stranger_dir = tmp.path().join("e2e-stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = AgentSetup {
        collector: addr,
        // It trusts the real collector; the collector must not trust it.
        ca: tmp.path().join("data/ca/ca.pem"),
        cert,
        key,
        target_port: good.target_port,
        spool: stranger_dir.join("spool"),
        dir: stranger_dir,
    };
    let acked_before = good.ledger().1;
    let mut stranger_agent = stranger.start("1s");
    std::thread::sleep(Duration::from_secs(6));
    stranger_agent.terminate();
    let log = std::fs::read_to_string(stranger.log()).unwrap_or_default();
    let rejections = log.matches("rejected by the collector").count();
    eprintln!("stranger: {rejections} rejection(s) logged in 6 s");
    assert!(rejections >= 1, "the stranger was told; log:\n{log}");
    assert!(
        rejections <= 2,
        "{rejections} attempts in 6 s is a tight loop; log:\n{log}"
    );
    assert!(
        good.ledger().1 > acked_before,
        "the good agent kept reporting meanwhile"
    );
    good_agent.terminate();
    let produced = good.drain();
    drop(collector);
    assert_exactly_once(&tmp.path().join("data"), "e2e-good", produced);
    let (count, _) = stored_seqs(&tmp.path().join("data"), "e2e-stranger");
    assert_eq!(count, 0, "nothing stored for the stranger");
}

#[test]
fn a_revoked_agent_is_cut_off_mid_session_and_told_why() {
    let tmp = work_dir();
    let (collector, addr) = start_collector(tmp.path(), 0);
    let good = setup(tmp.path(), "e2e-stays", addr);
    let doomed = setup(tmp.path(), "e2e-revoked", addr);
    let mut good_agent = good.start("1s");
    let mut doomed_agent = doomed.start("1s");
    assert!(
        good.wait_acked(1, Duration::from_secs(30)),
        "good agent reports"
    );
    assert!(
        doomed.wait_acked(1, Duration::from_secs(30)),
        "doomed agent reports"
    );

    let revoked = Command::new(collector_bin())
        .args(["ca", "revoke", "--dir"])
        .arg(tmp.path().join("data/ca"))
        .arg("e2e-revoked")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(revoked.success(), "ca revoke");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(doomed.log()).unwrap_or_default();
        if log.contains("rejected by the collector") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let told = log
        .lines()
        .find(|l| l.contains("rejected by the collector"))
        .unwrap_or_else(|| panic!("the revoked agent was not told within 15 s; log:\n{log}"))
        .to_string();
    assert!(told.contains("revoked"), "{told}");
    let stored_at_rejection = stored_seqs(&tmp.path().join("data"), "e2e-revoked").0;
    let good_acked = good.ledger().1;

    std::thread::sleep(Duration::from_secs(5));
    doomed_agent.terminate();
    let log = std::fs::read_to_string(doomed.log()).unwrap_or_default();
    let rejections = log.matches("rejected by the collector").count();
    eprintln!("revoked agent: {rejections} rejection(s) logged; first: {told}");
    assert!(
        rejections <= 2,
        "{rejections} in 5 s is a tight loop; log:\n{log}"
    );
    assert_eq!(
        stored_seqs(&tmp.path().join("data"), "e2e-revoked").0,
        stored_at_rejection,
        "nothing stored for the revoked agent after it was told"
    );
    assert!(
        good.ledger().1 > good_acked,
        "the good agent kept reporting"
    );
    good_agent.terminate();
    let produced = good.drain();
    drop(collector);
    assert_exactly_once(&tmp.path().join("data"), "e2e-stays", produced);
}

#[test]
fn an_unusable_spool_is_an_error_in_the_log_and_the_hello_not_a_crash() {
    let tmp = work_dir();
    let (collector, addr) = start_collector(tmp.path(), 0);
    let mut agent_setup = setup(tmp.path(), "e2e-nospool", addr);
    // The spool's parent is a regular file: the directory can never be made.
    let blocker = agent_setup.dir.join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    agent_setup.spool = blocker.join("spool");
    let mut agent = agent_setup.start("1s");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reported = false;
    while Instant::now() < deadline && !reported {
        std::thread::sleep(Duration::from_millis(200));
        let collector_log =
            std::fs::read_to_string(tmp.path().join("collector.log")).unwrap_or_default();
        reported = collector_log
            .lines()
            .any(|l| l.contains("agent reports trouble") && l.contains("spool"));
    }
    let agent_log = std::fs::read_to_string(agent_setup.log()).unwrap_or_default();
    assert!(
        reported,
        "the collector heard of the spool trouble; agent log:\n{agent_log}"
    );
    assert!(
        agent_log.contains("spool unusable"),
        "the agent logged it; log:\n{agent_log}"
    );
    assert!(
        matches!(agent.0.try_wait(), Ok(None)),
        "the agent kept running; log:\n{agent_log}"
    );
    agent.terminate();
    drop(collector);
}
