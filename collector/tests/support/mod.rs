//! What the collector's tests share: where the repository, the lab and the built binaries are;
//! starting the collector binary (its config, the addresses its `ready.json` names) and killing what a test
//! started; agent certificates, spool ledgers and the store's exactly-once check; whether this
//! machine can run the namespace lab, a lab brought up for one test, and a guard that tears it
//! down even when an assertion fails. `fleet` (real agents on loopback), `quic` (simulated
//! agents) and `http` (the HTTP shell in-process) build on these.
//!
//! Each test file includes it with `mod support;`; not every file uses every item.
#![allow(dead_code)]

pub mod fleet;
pub mod http;
pub mod quic;

use egresswatch_collector::identity::AgentMeta;
use egresswatch_collector::store::Inspect;
use egresswatch_collector::store::ResultStore;
use egresswatch_wire::Labels;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An agent as the pipeline knows it: `id` in `provider`/`account`, region "r1", its instance
/// named like the agent.
pub fn agent_meta(id: &str, provider: &str, account: &str) -> AgentMeta {
    AgentMeta {
        agent_id: id.into(),
        labels: Labels {
            provider: provider.into(),
            account: account.into(),
            region: "r1".into(),
            instance: id.into(),
        },
        agent_version: "test".into(),
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

pub fn egresslab() -> PathBuf {
    repo().join("lab/egresslab")
}

/// The agent binary built beside the collector (`cargo build --workspace --bins`).
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_egresswatch-collector")).with_file_name("egresswatch-agent")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints why a test is skipped; in CI (`CI=true`), where .ci/run installs everything, only a
/// missing root is a reason to skip, anything else fails the test.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") && !reason.contains("root") {
        panic!("{test} cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Why this machine cannot run the namespace lab, if it cannot.
pub fn lab_cannot_run() -> Option<String> {
    if !is_root() {
        return Some("needs root for network namespaces".into());
    }
    for tool in ["nft", "ip", "postfix", "openssl"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !agent_bin().exists() {
        return Some(format!(
            "{} is missing: run `cargo build --workspace --bins` first",
            agent_bin().display()
        ));
    }
    None
}

/// Debian tools: present, or skip with a reason — unless CI is set, where missing is a failure.
pub fn debian_tool(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{path} missing under CI: apt-get install -y {package}");
    }
    eprintln!("SKIP: {path} not found (apt-get install -y {package})");
    false
}

/// Runs `program ARGS` with `input` on its stdin; returns its status and what it printed.
pub fn pipe_into(program: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input written");
    child.wait_with_output().expect("output")
}

/// True when `test` must be skipped here because the lab cannot run (and says why).
pub fn skip_lab_test(test: &str) -> bool {
    match lab_cannot_run() {
        Some(reason) => {
            skip(test, &reason);
            true
        }
        None => false,
    }
}

/// A lab by its prefix; dropping it kills the processes the test started and runs
/// `egresslab down`, which removes every namespace, rule and process of the lab.
pub struct Lab {
    pub name: String,
    pub processes: Vec<Child>,
}

impl Lab {
    /// A guard for `name`, after removing leftovers of an earlier run with the same prefix.
    pub fn new(name: &str) -> Lab {
        let _ = Command::new(egresslab())
            .args(["down", "--name", name])
            .output();
        Lab {
            name: name.to_owned(),
            processes: Vec::new(),
        }
    }

    /// Runs `egresslab SUBCOMMAND --name NAME ARGS...`, panics with its stderr if it fails, and
    /// returns its stdout. `--name` goes right after the subcommand: `spawn` takes everything
    /// after `--` as the command.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(egresslab())
            .arg(args[0])
            .args(["--name", &self.name])
            .args(&args[1..])
            .output()
            .expect("egresslab runs");
        assert!(
            out.status.success(),
            "egresslab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets the edge rule of `provider`/`account` for `port` over both families: `action` is
    /// `drop`, `reject`, … or `clear`.
    pub fn rule(&self, provider: &str, account: &str, port: u16, action: &str) {
        let port = port.to_string();
        self.run(&[
            "rule",
            "--provider",
            provider,
            "--account",
            account,
            "--port",
            &port,
            "--family",
            "both",
            "--action",
            action,
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.processes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(egresslab())
            .args(["down", "--name", &self.name])
            .output();
    }
}

/// The collector binary under test.
pub fn collector_bin() -> &'static str {
    env!("CARGO_BIN_EXE_egresswatch-collector")
}

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to 15 s for the process to end (a graceful stop).
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process did not stop within 15 s of SIGTERM");
    }

    /// CPU time (user + system) the process has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
        // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
        Duration::from_millis(ticks * 10)
    }
}

/// A work directory not under /tmp (the agent refuses a spool there), named `prefix…`.
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// Polls `done` every 100 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
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

/// Writes `dir/collector.toml` with its data in `dir/data` and the bodies of its `[quic]` and
/// `[http]` tables (`listen = …` and whatever else), then `rest` (more tables); returns its path.
pub fn write_collector_config(dir: &Path, quic: &str, http: &str, rest: &str) -> PathBuf {
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[quic]\n{quic}\n[http]\n{http}\n{rest}",
            dir.join("data")
        ),
    )
    .unwrap();
    config
}

/// Where a started collector listens (from its `ready.json`) and what it printed up to then.
pub struct Listening {
    /// The QUIC listener's `ip:port`.
    pub quic: SocketAddr,
    /// The HTTP listener's `ip:port`.
    pub http: SocketAddr,
    /// Every line it printed on stdout by the time it was ready.
    pub printed: String,
}

/// Starts `egresswatch-collector run --config CONFIG` with its stderr appended to `log`, its
/// stdout to `log` with the extension `stdout` (and `RUST_LOG` set when given), and waits for
/// the `ready.json` it writes in its data dir once both listeners are bound, so configs can
/// listen on port 0. Panics with the log if it exits, or is not ready within 20 s.
pub fn spawn_collector(config: &Path, log: &Path, rust_log: Option<&str>) -> (Child, Listening) {
    use egresswatch_collector::{config::Config, ready::Ready};
    let text = std::fs::read_to_string(config).expect("collector config");
    let data_dir = Config::parse(&text)
        .expect("collector config parses")
        .data_dir;
    let _ = std::fs::remove_file(data_dir.join(egresswatch_collector::ready::READY_FILE));
    let mut command = Command::new(collector_bin());
    command.args(["run", "--config"]).arg(config);
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let append = |path: &Path| {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .expect("collector output file")
    };
    let stdout = log.with_extension("stdout");
    let mut child = command
        .stdout(append(&stdout))
        .stderr(append(log))
        .spawn()
        .expect("collector starts");
    let pid = child.id();
    let mut ready = None;
    let started = wait_until(Duration::from_secs(20), || {
        ready = Ready::read(&data_dir).filter(|r| r.pid == pid);
        ready.is_some() || !matches!(child.try_wait(), Ok(None))
    });
    let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
    let Some(ready) = ready.filter(|_| started) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the collector did not become ready; it printed:\n{printed}\nlog:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let listening = Listening {
        quic: ready.quic,
        http: ready.http,
        printed,
    };
    (child, listening)
}

/// Issues an agent certificate from the CA in `ca_dir` into `out`; returns (cert, key).
pub fn issue(ca_dir: &Path, out: &Path, id: &str) -> (PathBuf, PathBuf) {
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

/// (next_seq, acked_seq) from the agent's spool ledger in `spool`; (0, 0) before it exists.
pub fn read_ledger(spool: &Path) -> (u64, u64) {
    let Ok(bytes) = std::fs::read(spool.join("ledger")) else {
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

/// Restarts an agent with `start` (configured to probe once an hour, so it adds nothing, almost
/// surely) until `ledger` says everything it spooled is acked, waiting up to `per_try` each
/// time; returns how many results it ever produced, or None after four tries.
pub fn drain(
    mut start: impl FnMut() -> Proc,
    ledger: impl Fn() -> (u64, u64),
    per_try: Duration,
) -> Option<u64> {
    let drained = || {
        let (next, acked) = ledger();
        next > 0 && acked + 1 == next
    };
    for _ in 0..4 {
        let mut agent = start();
        // Opening the spool writes next_seq from what is on disk; then wait for the acks.
        std::thread::sleep(Duration::from_millis(500));
        wait_until(per_try, drained);
        agent.terminate();
        if drained() {
            return Some(ledger().1);
        }
    }
    None
}

/// Asserts the store in the data dir `data` holds results 1..=produced of `agent`, each once.
pub fn assert_stored_exactly_once(data: &Path, agent: &str, produced: u64) {
    use egresswatch_collector::store::sqlite::SqliteStore;
    let store = SqliteStore::open(&data.join("egresswatch.db")).unwrap();
    let count = store.count_results(agent).unwrap();
    let seqs: BTreeSet<u64> = store
        .recent_results(agent, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    eprintln!("{agent}: the agent produced {produced} results, the store holds {count}");
    assert_eq!(count, produced, "stored results vs the agent's own count");
    assert_eq!(seqs, (1..=produced).collect(), "every seq once");
}

/// Brings up `scenario` under `lab`'s prefix with a root link and its state in `state_dir`;
/// returns the lab's JSON description.
pub fn lab_up(lab: &Lab, scenario: &Path, state_dir: &Path) -> serde_json::Value {
    let up = Command::new(egresslab())
        .arg("up")
        .arg(scenario)
        .args(["--name", &lab.name, "--root-link", "--state"])
        .arg(state_dir)
        .output()
        .expect("egresslab runs");
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    serde_json::from_slice(&up.stdout).expect("lab JSON")
}

/// An agent's config as the tests write it: what they vary, and `text()` for the whole TOML.
/// Targets are probed at connect level; cloud metadata is off.
pub struct AgentToml<'a> {
    /// The collector's `host:port`.
    pub collector: &'a str,
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub provider: &'a str,
    pub account: &'a str,
    pub region: &'a str,
    pub instance: &'a str,
    /// The probe target and its ports.
    pub host: &'a str,
    pub ports: &'a [u16],
    pub interval: &'a str,
    pub timeout: &'a str,
    pub spool: &'a Path,
    /// More lines for the `[identity]` table, then more tables, at the end.
    pub rest: &'a str,
}

impl AgentToml<'_> {
    pub fn text(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        format!(
            "[collector]\naddress = {collector:?}\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
             [labels]\nprovider = {provider:?}\naccount = {account:?}\nregion = {region:?}\ninstance = {instance:?}\n\n\
             [[targets]]\nhost = {host:?}\nports = [{ports}]\nlevel = \"connect\"\ninterval = {interval:?}\n\n\
             [probe]\ntimeout = {timeout:?}\nmin_interval_per_destination = \"1s\"\n\n\
             [spool]\ndir = {spool:?}\n\n[identity]\nmetadata = false\n{rest}",
            collector = self.collector,
            ca = self.ca,
            cert = self.cert,
            key = self.key,
            provider = self.provider,
            account = self.account,
            region = self.region,
            instance = self.instance,
            host = self.host,
            ports = ports.join(", "),
            interval = self.interval,
            timeout = self.timeout,
            spool = self.spool,
            rest = self.rest,
        )
    }
}

/// A lab brought up for one test: the guard, a work directory beside it (not under /tmp: the
/// agent refuses a spool there) and the lab's JSON description. Fields drop in order: the lab
/// and its processes go before the files they use.
pub struct LabRun {
    pub lab: Lab,
    pub work: tempfile::TempDir,
    pub state: serde_json::Value,
}

/// One agent of a lab host, as `LabRun::agent_config` writes it: it reports to the collector on
/// the root link and probes `mx.lab.test` on `ports` at connect level.
pub struct LabAgent<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub account: &'a str,
    pub ports: &'a [u16],
    pub interval: &'a str,
    pub timeout: &'a str,
    pub spool: &'a Path,
}

impl LabRun {
    /// Brings up `scenario` (the lab's TOML) under the prefix `short` and this process's id,
    /// with a root link.
    pub fn up(short: &str, scenario: &str) -> LabRun {
        let work = work_dir(&format!("ew-{short}"));
        let file = work.path().join("scenario.toml");
        std::fs::write(&file, scenario).unwrap();
        let lab = Lab::new(&format!("{short}{}", std::process::id() % 100_000));
        let state = lab_up(&lab, &file, &work.path().join("lab"));
        LabRun { lab, work, state }
    }

    /// The root namespace's address on the root link, where the collector listens.
    pub fn root_ipv4(&self) -> String {
        self.state["root_link"]["root_ipv4"]
            .as_str()
            .expect("root_link.root_ipv4 in the lab JSON")
            .to_string()
    }

    /// The collector's data directory (its CA under `ca/`, its store).
    pub fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }

    /// Where agent certificates and configs go.
    pub fn agents_dir(&self) -> PathBuf {
        self.work.path().join("agents")
    }

    /// Starts the collector in the root namespace, QUIC on the root link and HTTP on loopback,
    /// with `rest` (more config tables) after; the lab guard kills it.
    pub fn start_collector(&mut self, rest: &str) -> Listening {
        let quic = format!("listen = \"{}:0\"", self.root_ipv4());
        let config =
            write_collector_config(self.work.path(), &quic, "listen = \"127.0.0.1:0\"", rest);
        let log = self.work.path().join("collector.log");
        let (child, listening) = spawn_collector(&config, &log, None);
        self.lab.processes.push(child);
        listening
    }

    /// Issues `agent.id`'s certificate from the collector's CA and returns its config, for a
    /// collector whose QUIC listener is on `quic_port`.
    pub fn agent_config(&self, quic_port: u16, agent: &LabAgent) -> String {
        let (cert, key) = issue(&self.data().join("ca"), &self.agents_dir(), agent.id);
        AgentToml {
            collector: &format!("collector.lab.test:{quic_port}"),
            ca: &self.data().join("ca/ca.pem"),
            cert: &cert,
            key: &key,
            provider: agent.provider,
            account: agent.account,
            region: "lab-1",
            instance: agent.id,
            host: "mx.lab.test",
            ports: agent.ports,
            interval: agent.interval,
            timeout: agent.timeout,
            spool: agent.spool,
            rest: "",
        }
        .text()
    }
}
