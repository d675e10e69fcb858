//! One agent, several collectors: the real agent binary against two real collector processes on
//! loopback, each with its own data dir and SQLite store but the same fleet CA (made by the
//! first, copied to the second). The agent reports to the first; the first is killed (SIGKILL);
//! results go on arriving at the second within a bounded time, the agent's numbering goes on (the
//! second's first stored seq is past 1) and nothing is lost across the switch (the union of both
//! stores is gap-free from 1, and covers everything the agent saw acked). Also: a bad entry of
//! `collector.address` is a config error naming the entry, and a name with several records (here
//! `localhost`, when it has both 127.0.0.1 and ::1) is several candidates, the uplink moving past
//! the dead one to the one a collector listens on.
//!
//! The collector binary is the one built beside the agent (`cargo build -p
//! egresswatch-collector`), or `EGRESSWATCH_COLLECTOR_BIN`; without it the collector tests are
//! skipped with a message (a failure under CI). Every wait is bounded; every process started is
//! killed by its PID when the test ends, also when an assertion fails.

mod support;

use egresswatch_agent::run::config::CollectorConfig;
use egresswatch_agent::run::{uplink, Shared};
use egresswatch_wire::Labels;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENT_ID: &str = "failover-1";

/// The collector binary, or why there is none (printed when the test is skipped).
fn collector_bin() -> Result<PathBuf, String> {
    let path = std::env::var_os("EGRESSWATCH_COLLECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_egresswatch-agent"))
                .with_file_name("egresswatch-collector")
        });
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p egresswatch-collector` first (or set EGRESSWATCH_COLLECTOR_BIN)",
            path.display()
        ))
    }
}

fn collector_or_skip(test: &str) -> Option<PathBuf> {
    match collector_bin() {
        Ok(path) => Some(path),
        Err(why) => {
            assert!(!support::in_ci(), "{test}: {why}; CI must build it");
            eprintln!("{test}: SKIPPED: {why}");
            None
        }
    }
}

/// A process the test started, stopped by its PID when dropped: SIGTERM and a bounded wait
/// (the agent flushes), then SIGKILL.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("a PID fits an i32")
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `within` for the process to end; true when it has.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

/// Polls `done` every 100 ms until it holds or `within` passes.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A work directory not under /tmp (the agent refuses a spool there).
fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ew-failover-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// A collector process with its data in `dir/data`, its output in `dir/collector.log`.
struct Collector {
    proc: Proc,
    dir: PathBuf,
    quic: SocketAddr,
}

impl Collector {
    /// Starts `egresswatch-collector run` with QUIC on `quic_listen` and waits (≤ 20 s) for the
    /// `ready.json` it writes once its listeners are bound.
    fn start(bin: &Path, dir: &Path, quic_listen: &str) -> Collector {
        Collector::start_in(None, bin, dir, quic_listen)
    }

    /// [`Collector::start`] in the network namespace `ns`, if given (`ip netns exec` execs the
    /// collector, so the PID is the collector's).
    fn start_in(ns: Option<&str>, bin: &Path, dir: &Path, quic_listen: &str) -> Collector {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n[quic]\nlisten = {quic_listen:?}\n[http]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        let log = File::create(dir.join("collector.log")).unwrap();
        let child = in_namespace(ns, bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the collector starts");
        let mut proc = Proc(child);
        let pid = proc.0.id();
        let mut quic = None;
        wait_until(Duration::from_secs(20), || {
            quic = std::fs::read(data.join("ready.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|ready| ready["pid"].as_u64() == Some(u64::from(pid)))
                .and_then(|ready| ready["quic"].as_str().and_then(|q| q.parse().ok()));
            quic.is_some() || !matches!(proc.0.try_wait(), Ok(None))
        });
        let Some(quic) = quic else {
            panic!(
                "the collector in {} did not become ready; log:\n{}",
                dir.display(),
                std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default()
            );
        };
        Collector {
            proc,
            dir: dir.to_path_buf(),
            quic,
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("data/ca")
    }

    /// The sequence numbers of `agent` in this collector's SQLite store (running or dead).
    fn stored_seqs(&self, agent: &str) -> BTreeSet<u64> {
        let path = self.dir.join("data/egresswatch.db");
        let Ok(db) = rusqlite::Connection::open(&path) else {
            return BTreeSet::new();
        };
        let _ = db.busy_timeout(Duration::from_secs(2));
        let Ok(mut query) = db.prepare("SELECT seq FROM results WHERE agent = ?1") else {
            return BTreeSet::new(); // not created yet
        };
        query
            .query_map([agent], |row| row.get::<_, i64>(0))
            .map(|rows| rows.filter_map(Result::ok).map(|s| s as u64).collect())
            .unwrap_or_default()
    }
}

/// Issues `id`'s certificate from the CA in `ca_dir` into `out`; returns (cert, key).
fn issue(bin: &Path, ca_dir: &Path, out: &Path, id: &str) -> (PathBuf, PathBuf) {
    let status = Command::new(bin)
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A TCP port on 127.0.0.1 that accepts and hangs up: something for the agent to probe.
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

/// `(next_seq, acked_seq)` from the agent's spool ledger; (0, 0) before it is written.
fn ledger(spool: &Path) -> (u64, u64) {
    std::fs::read(spool.join("ledger"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| {
            (
                v["next_seq"].as_u64().unwrap_or(0),
                v["acked_seq"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// An agent config reporting to `addresses` (the TOML value as written), probing `port` on
/// 127.0.0.1 every second at connect level.
fn agent_config(
    addresses: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    port: u16,
    spool: &Path,
) -> String {
    format!(
        "[collector]\naddress = {addresses}\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
         [labels]\nprovider = \"lab\"\naccount = \"failover\"\nregion = \"r1\"\ninstance = {AGENT_ID:?}\n\n\
         [[targets]]\nhost = \"127.0.0.1\"\nports = [{port}]\nlevel = \"connect\"\ninterval = \"1s\"\n\n\
         [probe]\ntimeout = \"2s\"\nmin_interval_per_destination = \"1s\"\n\n\
         [spool]\ndir = {spool:?}\n\n[identity]\nmetadata = false\n"
    )
}

/// `program` as a command, run in the network namespace `ns` if given.
fn in_namespace(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn start_agent(config: &Path, log: &Path) -> Proc {
    start_agent_in(None, config, log)
}

fn start_agent_in(ns: Option<&str>, config: &Path, log: &Path) -> Proc {
    let log = File::create(log).unwrap();
    let child = in_namespace(ns, Path::new(env!("CARGO_BIN_EXE_egresswatch-agent")))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the agent starts");
    Proc(child)
}

#[test]
fn killing_the_collector_in_use_moves_the_results_to_the_next_and_the_numbering_goes_on() {
    let Some(bin) = collector_or_skip("failover") else {
        return;
    };
    let work = work_dir();
    let root = work.path();
    let first = Collector::start(&bin, &root.join("c1"), "127.0.0.1:0");
    let (cert, key) = issue(&bin, &first.ca_dir(), &root.join("agent"), AGENT_ID);
    // The same fleet CA (and server certificate) for the second collector.
    copy_dir(&first.ca_dir(), &root.join("c2/data/ca"));
    let second = Collector::start(&bin, &root.join("c2"), "127.0.0.1:0");
    let mut first = first;

    let spool = root.join("spool");
    let config = root.join("agent.toml");
    let addresses = format!("[\"{}\", \"{}\"]", first.quic, second.quic);
    std::fs::write(
        &config,
        agent_config(
            &addresses,
            &first.ca_dir().join("ca.pem"),
            &cert,
            &key,
            probe_target(),
            &spool,
        ),
    )
    .unwrap();
    let agent_log = root.join("agent.log");
    let mut agent = start_agent(&config, &agent_log);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    assert!(
        wait_until(Duration::from_secs(30), || first
            .stored_seqs(AGENT_ID)
            .len()
            >= 5),
        "results reach the first collector; agent log:\n{}",
        log()
    );
    assert!(
        second.stored_seqs(AGENT_ID).is_empty(),
        "the agent sticks to the first"
    );

    first.proc.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    assert!(
        first.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "the first collector is gone"
    );
    let on_first = first.stored_seqs(AGENT_ID);

    assert!(
        wait_until(Duration::from_secs(60), || !second
            .stored_seqs(AGENT_ID)
            .is_empty()),
        "results reach the second collector within 60 s of the kill; agent log:\n{}",
        log()
    );
    let moved_after = killed_at.elapsed();
    let first_on_second = *second.stored_seqs(AGENT_ID).first().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || second
            .stored_seqs(AGENT_ID)
            .last()
            .is_some_and(|&last| last >= first_on_second + 5)),
        "results keep arriving at the second; agent log:\n{}",
        log()
    );
    // The first comes back on its address: the agent stays with the second.
    let first_quic = first.quic;
    first = Collector::start(&bin, &root.join("c1"), &first_quic.to_string());
    let second_before = second.stored_seqs(AGENT_ID).len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        first.stored_seqs(AGENT_ID),
        on_first,
        "the agent sticks to the second collector; agent log:\n{}",
        log()
    );
    assert!(second.stored_seqs(AGENT_ID).len() > second_before);
    let switch = log()
        .lines()
        .find(|l| l.contains("switched collector"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("a switch is logged; agent log:\n{}", log()));
    assert!(
        switch.contains(&format!("from={}", first.quic))
            && switch.contains(&format!("to={}", second.quic))
            && switch.contains("why="),
        "{switch}"
    );

    // Stopped while the second is up: what is in flight is acked before it goes.
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_exit(Duration::from_secs(15)).is_some(),
        "the agent stops on SIGTERM"
    );
    eprintln!("agent log (shown on failure):\n{}", log());
    let (next_seq, acked_seq) = ledger(&spool);
    let on_second = second.stored_seqs(AGENT_ID);
    let union: BTreeSet<u64> = on_first.union(&on_second).copied().collect();
    let last = *union.last().unwrap();
    let replayed = on_first.intersection(&on_second).count();
    eprintln!(
        "first stored {}..={} ({}), second {}..={} ({}), {replayed} stored by both; results at the second {:.1} s after the kill; agent ledger next_seq {next_seq} acked_seq {acked_seq}",
        on_first.first().unwrap(),
        on_first.last().unwrap(),
        on_first.len(),
        on_second.first().unwrap(),
        on_second.last().unwrap(),
        on_second.len(),
        moved_after.as_secs_f64(),
    );
    assert!(
        *on_second.first().unwrap() > 1,
        "the numbering went on, it did not start over"
    );
    assert_eq!(
        union,
        (1..=last).collect::<BTreeSet<u64>>(),
        "both stores together hold every seq from 1 to {last}: nothing the first did not ack is missing"
    );
    assert!(
        acked_seq <= last && last < next_seq,
        "whatever the agent saw acked is stored (acked {acked_seq}, stored up to {last}, next {next_seq})"
    );
}

#[test]
fn a_bad_entry_in_the_address_list_is_a_config_error_naming_it() {
    let work = work_dir();
    let config = work.path().join("agent.toml");
    let spool = work.path().join("spool");
    let p = |name: &str| work.path().join(name);
    std::fs::write(
        &config,
        agent_config(
            "[\"127.0.0.1:4433\", \"c2.example\"]",
            &p("ca.pem"),
            &p("a.crt"),
            &p("a.key"),
            25,
            &spool,
        ),
    )
    .unwrap();
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_egresswatch-agent"))
            .args(["run", "--config"])
            .arg(&config),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("collector.address[1]: \"c2.example\" has no port"),
        "{stderr}"
    );
    assert!(!spool.exists(), "nothing started");
}

#[tokio::test]
async fn a_name_with_several_addresses_is_several_candidates() {
    let test = "a_name_with_several_addresses_is_several_candidates";
    let (candidates, problems) = uplink::resolve_all(&["localhost:4433".to_string()]).await;
    let addrs: Vec<SocketAddr> = candidates.iter().map(|c| c.addr).collect();
    let (v4, v6): (SocketAddr, SocketAddr) = (
        "127.0.0.1:4433".parse().unwrap(),
        "[::1]:4433".parse().unwrap(),
    );
    if !(addrs.contains(&v4) && addrs.contains(&v6)) {
        eprintln!(
            "{test}: SKIPPED: localhost resolves to {addrs:?} here ({problems:?}), not to both 127.0.0.1 and ::1"
        );
        return;
    }
    assert_eq!(addrs.len(), 2, "each address once: {addrs:?}");
    assert!(candidates.iter().all(|c| c.entry == "localhost:4433"));
    let Some(bin) = collector_or_skip(test) else {
        return;
    };
    // A collector on the address that comes second, on a port free on the first: the uplink
    // must get past the first candidate to reach it.
    let work = work_dir();
    let (dead, live) = (addrs[0], addrs[1]);
    let listen = SocketAddr::new(live.ip(), 0);
    let collector = Collector::start(&bin, &work.path().join("c"), &listen.to_string());
    let port = collector.quic.port();
    assert!(
        std::net::UdpSocket::bind(SocketAddr::new(dead.ip(), port)).is_ok(),
        "nothing listens on the first candidate"
    );
    let (cert, key) = issue(
        &bin,
        &collector.ca_dir(),
        &work.path().join("agent"),
        AGENT_ID,
    );
    let config = CollectorConfig {
        address: vec![format!("localhost:{port}")],
        server_name: "egresswatch-collector".into(),
        ca: collector.ca_dir().join("ca.pem"),
        cert,
        key,
        linger_setting: None,
        linger: Duration::from_secs(1),
    };
    let labels = Labels {
        provider: "lab".into(),
        account: "a".into(),
        region: "r".into(),
        instance: "i".into(),
    };
    let shared = Arc::new(Shared::new(labels, Vec::new(), None, String::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(uplink::run(config, shared.clone(), stop_rx));
    let expected = format!("localhost:{port} ({})", SocketAddr::new(live.ip(), port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.collector().as_deref() != Some(expected.as_str()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = shared.collector();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert_eq!(
        connected.as_deref(),
        Some(expected.as_str()),
        "connected past the dead first address; state {:?}",
        shared.uplink_state()
    );
}

#[test]
fn a_name_with_several_records_gets_past_the_dead_one() {
    let test = "a_name_with_several_records_gets_past_the_dead_one";
    if !support::runnable(test, &[("ip", "iproute2")]) {
        return;
    }
    let Some(bin) = collector_or_skip(test) else {
        return;
    };
    // A namespace whose /etc/hosts gives the collector's name two records: the first with
    // nothing behind it, the second where the collector listens.
    let ns = format!("ewfo{}", std::process::id());
    let mut namespaces = support::Namespaces::new();
    namespaces.add(&ns).expect("a network namespace");
    namespaces
        .etc_file(
            &ns,
            "hosts",
            "127.0.0.1 localhost\n127.0.0.2 collector.lab.test\n127.0.0.3 collector.lab.test\n",
        )
        .unwrap();
    let work = work_dir();
    let root = work.path();
    let collector = Collector::start_in(Some(&ns), &bin, &root.join("c"), "127.0.0.3:0");
    let port = collector.quic.port();
    let (cert, key) = issue(&bin, &collector.ca_dir(), &root.join("agent"), AGENT_ID);
    let spool = root.join("spool");
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        agent_config(
            &format!("\"collector.lab.test:{port}\""),
            &collector.ca_dir().join("ca.pem"),
            &cert,
            &key,
            25,
            &spool,
        ),
    )
    .unwrap();
    let agent_log = root.join("agent.log");
    let _agent = start_agent_in(Some(&ns), &config, &agent_log);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let connected = format!("collector=collector.lab.test:{port} (127.0.0.3:{port})");
    assert!(
        wait_until(Duration::from_secs(40), || log().lines().any(|l| l
            .contains("connected to the collector")
            && l.contains(&connected))),
        "connected to the second record; agent log:\n{}",
        log()
    );
    assert!(
        log()
            .lines()
            .any(|l| l.contains("collector connection failed")
                && l.contains(&format!("(127.0.0.2:{port})"))),
        "the first record was tried first and failed; agent log:\n{}",
        log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || !collector
            .stored_seqs(AGENT_ID)
            .is_empty()),
        "results stored; agent log:\n{}",
        log()
    );
}
