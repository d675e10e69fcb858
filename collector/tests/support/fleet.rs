//! Runs the real agent binary against the real collector binary on loopback, for the fleet
//! end-to-end and agent resilience tests: a collector that can be stopped and restarted on the same port, agent
//! certificates from its CA, loopback probe targets, an agent config written per test and
//! rewritten for reloads, the spool's ledger, and what the store holds.
//!
//! The agent binary is the sibling `egresswatch-agent` of the collector binary (test.sh builds
//! every binary first; `cargo build --workspace --bins` does too).

use super::{
    assert_stored_exactly_once, drain, issue, read_ledger, spawn_collector, wait_until,
    write_collector_config, AgentToml, Proc,
};
use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::ProbeResult;
use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The collector on loopback with its data in `dir/data` and its log in `dir/collector.log`.
pub struct Collector {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    /// Its HTTP listener (on a port of its own choosing, new at each start).
    pub http: SocketAddr,
    proc: Option<Proc>,
}

impl Collector {
    /// Starts it (`quic_port` 0 picks one).
    pub fn start(dir: &Path, quic_port: u16) -> Collector {
        let quic = format!("listen = \"127.0.0.1:{quic_port}\"");
        let config = write_collector_config(dir, &quic, "listen = \"127.0.0.1:0\"", "");
        let (child, listening) = spawn_collector(&config, &dir.join("collector.log"), Some("info"));
        Collector {
            dir: dir.to_path_buf(),
            addr: listening.quic,
            http: listening.http,
            proc: Some(Proc(child)),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// SIGKILL: no drain, no flush, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// Starts it again on the same QUIC port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let Collector { proc, http, .. } = Collector::start(&self.dir, self.addr.port());
        self.proc = proc;
        self.http = http;
    }

    /// The body of `GET path` on its HTTP listener.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http).unwrap();
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
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_string(),
            None => text,
        }
    }

    /// A metric's value in its `/metrics`, 0 when absent.
    pub fn gauge(&self, name: &str) -> f64 {
        let wanted = format!("{name} ");
        self.get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&wanted))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A counter's value in its `/metrics` (`name` without the `_total`), 0 when absent.
    pub fn counter(&self, name: &str) -> f64 {
        self.gauge(&format!("{name}_total"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("data/ca")
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.dir.join("data/egresswatch.db")).unwrap()
    }

    /// Every result stored for `agent`, in sequence order.
    pub fn results(&self, agent: &str) -> Vec<ProbeResult> {
        let mut all = self.store().recent_results(agent, 1_000_000).unwrap();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Asserts the store holds results 1..=produced of `agent`, each once.
    pub fn assert_exactly_once(&self, agent: &str, produced: u64) {
        assert_stored_exactly_once(&self.dir.join("data"), agent, produced);
    }
}

/// A TCP listener on loopback that accepts and closes: a probe target. Returns its port.
pub fn probe_target() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    port
}

/// What a test varies in the agent's config.
#[derive(Clone)]
pub struct AgentSettings {
    pub ports: Vec<u16>,
    pub interval: String,
    pub account: String,
    pub spool: PathBuf,
    /// Extra TOML appended at the end (e.g. a `[log]` table).
    pub extra: String,
}

/// One agent: its certificate, config file, log (`agent.log`, appended by every start).
pub struct Agent {
    pub id: String,
    pub dir: PathBuf,
    pub collector: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub settings: AgentSettings,
    /// Runs the agent through this command (e.g. `nsenter …`), if any.
    pub wrapper: Vec<OsString>,
    pub env: Vec<(String, String)>,
}

impl Agent {
    pub fn new(tmp: &Path, id: &str, collector: &Collector, ports: Vec<u16>) -> Agent {
        let dir = tmp.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = issue(&collector.ca_dir(), &tmp.join("agents"), id);
        Agent {
            id: id.to_string(),
            collector: collector.addr,
            ca: collector.ca_dir().join("ca.pem"),
            cert,
            key,
            settings: AgentSettings {
                ports,
                interval: "1s".into(),
                account: "resilience".into(),
                spool: dir.join("spool"),
                extra: String::new(),
            },
            wrapper: Vec::new(),
            env: Vec::new(),
            dir,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The config text for `settings`.
    pub fn config_text(&self, s: &AgentSettings) -> String {
        let rest = format!("dmi_dir = {:?}\n{}", self.dir.join("no-dmi"), s.extra);
        AgentToml {
            collector: &self.collector.to_string(),
            ca: &self.ca,
            cert: &self.cert,
            key: &self.key,
            provider: "lab",
            account: &s.account,
            region: "loopback",
            instance: &self.id,
            host: "127.0.0.1",
            ports: &s.ports,
            interval: &s.interval,
            timeout: "1s",
            spool: &s.spool,
            rest: &rest,
        }
        .text()
    }

    /// Writes the config from `self.settings`.
    pub fn write_config(&self) {
        std::fs::write(self.config_path(), self.config_text(&self.settings)).unwrap();
    }

    /// Writes the config and starts the agent, without RUST_LOG (the config's log level rules).
    pub fn start(&self) -> Proc {
        let agent_bin = super::agent_bin();
        assert!(
            agent_bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` (test.sh does) before this test",
            agent_bin.display()
        );
        self.write_config();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&agent_bin);
                c
            }
            None => Command::new(&agent_bin),
        };
        command
            .args(["run", "--config"])
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map(Proc)
            .unwrap()
    }

    /// Where the test reads the spool (differs from the agent's view in another mount namespace).
    pub fn spool_seen_at(&self, root: &Path) -> PathBuf {
        root.join(self.settings.spool.strip_prefix("/").unwrap())
    }

    /// (next_seq, acked_seq) from the ledger under `root` ("/" unless the spool is in another
    /// mount namespace).
    pub fn ledger(&self, root: &Path) -> (u64, u64) {
        read_ledger(&self.spool_seen_at(root))
    }

    /// Waits for `text` in the log; false after `within`.
    pub fn wait_log(&self, text: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(text))
    }

    pub fn wait_acked(&self, root: &Path, at_least: u64, within: Duration) -> bool {
        wait_until(within, || self.ledger(root).1 >= at_least)
    }

    /// Restarts the agent probing once an hour (so it adds nothing, almost surely) until
    /// everything it spooled is acked; returns how many results it ever produced.
    pub fn drain(&mut self, root: &Path) -> u64 {
        self.settings.interval = "1h".into();
        let this = &*self;
        let produced = drain(
            || this.start(),
            || this.ledger(root),
            Duration::from_secs(30),
        );
        produced.unwrap_or_else(|| {
            panic!(
                "the agent never drained its spool: ledger {:?}; log:\n{}",
                self.ledger(root),
                self.log()
            )
        })
    }
}
