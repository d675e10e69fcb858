//! What the collector's end-to-end tests share: where the repository, the lab and the built
//! binaries are, whether this machine can run the namespace lab, and a guard that tears a lab
//! down (and kills what the test started) even when an assertion fails.
//!
//! Each test file includes it with `mod support;`; not every file uses every item.
#![allow(dead_code)]

pub mod fleet;
pub mod quic;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

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

/// A collector the test started, with the addresses it printed.
pub struct StartedCollector {
    pub child: Child,
    /// The QUIC listener's `ip:port`.
    pub quic: std::net::SocketAddr,
    /// The HTTP listener's `ip:port`.
    pub http: String,
}

/// Starts `egresswatch-collector run --config CONFIG` (stderr to `log`) and reads the `QUIC:`
/// and `HTTP:` lines it prints at start, so configs can listen on port 0.
pub fn start_collector(config: &Path, log: &Path) -> StartedCollector {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_egresswatch-collector"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).expect("collector log"))
        .spawn()
        .expect("collector starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut quic, mut http) = (None, None);
    while quic.is_none() || http.is_none() {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!(
                "collector exited before printing its addresses: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        };
        if let Some(rest) = line.strip_prefix("QUIC:") {
            quic = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("HTTP:") {
            http = rest.split_whitespace().next().map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            });
        }
    }
    // Keep draining stdout so the collector never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    StartedCollector {
        child,
        quic: quic.expect("QUIC address"),
        http: http.expect("HTTP address"),
    }
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
