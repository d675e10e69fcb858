//! What the agent's namespace tests share: whether this machine can run them (root, the tools),
//! commands run with a bound on their time, nftables and sysctls inside a namespace, throwaway
//! network namespaces with their own resolv.conf that are removed (with /etc/netns/<name>) even
//! when an assertion fails, and child processes killed by PID when the test ends.
//!
//! Each test file includes it with `mod support;`; not every file uses every item.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `ip netns exec` finds a namespace's own /etc files (it bind-mounts them over /etc).
const NETNS_ETC: &str = "/etc/netns";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

/// Whether `test` can run here: root and every tool of `tools` (tool, Debian package). Prints
/// why not; under CI a missing tool is a failure, since CI must install what the tests need.
pub fn runnable(test: &str, tools: &[(&str, &str)]) -> bool {
    if !is_root() {
        eprintln!("{test}: SKIPPED: needs root (network namespaces, nftables)");
        return false;
    }
    let missing: Vec<&(&str, &str)> = tools.iter().filter(|(tool, _)| !on_path(tool)).collect();
    if missing.is_empty() {
        return true;
    }
    let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    let why = format!(
        "missing {} (apt-get install -y {})",
        tools.join(", "),
        packages.join(" ")
    );
    assert!(!in_ci(), "{test}: {why}; CI must install them");
    eprintln!("{test}: SKIPPED: {why}");
    false
}

/// Runs a command to completion within `limit`, killing it past that.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("wait_with_output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait_with_output");
            panic!(
                "{cmd:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `args` to completion; its stderr is the error.
pub fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Loads an nft ruleset into namespace `ns`.
pub fn nft(ns: &str, rules: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Writes `value` to each /proc/sys key inside `ns` (no dependency on procps' sysctl).
pub fn set_sysctls(ns: &str, keys: &[&str], value: &str) -> Result<(), String> {
    let script: Vec<String> = keys
        .iter()
        .map(|key| format!("echo {value} > /proc/sys/{key}"))
        .collect();
    run(&["ip", "netns", "exec", ns, "sh", "-c", &script.join(" && ")])
}

/// Network namespaces a test made, removed with their /etc/netns entries and every process it
/// started in them (by PID) when dropped, also when an assertion fails.
pub struct Namespaces {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Namespaces {
    pub fn new() -> Self {
        Namespaces {
            names: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A new namespace with loopback up and no duplicate address detection (a tentative
    /// address would lose the first packets and read as a silent drop).
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        // Leftovers of a crashed run with the same name go first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let _ = std::fs::remove_dir_all(PathBuf::from(NETNS_ETC).join(name));
        run(&["ip", "netns", "add", name])?;
        self.names.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        set_sysctls(
            name,
            &[
                "net/ipv6/conf/default/accept_dad",
                "net/ipv6/conf/all/accept_dad",
            ],
            "0",
        )
    }

    /// A veth pair from `a` (interface `a_if`, addresses `a_addrs`) to `b`.
    pub fn link(
        &self,
        (a, a_if, a_addrs): (&str, &str, &[&str]),
        (b, b_if, b_addrs): (&str, &str, &[&str]),
    ) -> Result<(), String> {
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["ip", "-n", ns, "addr", "add", addr, "dev", ifname];
                if addr.contains(':') {
                    args.push("nodad");
                }
                run(&args)?;
            }
            run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Sets the resolv.conf that processes run with `ip netns exec ns` see as /etc/resolv.conf.
    pub fn resolv_conf(&self, ns: &str, text: &str) -> Result<(), String> {
        self.etc_file(ns, "resolv.conf", text)
    }

    /// Sets the file that processes run with `ip netns exec ns` see as `/etc/<name>` (`hosts`,
    /// say: names that resolve only inside the namespace).
    pub fn etc_file(&self, ns: &str, name: &str, text: &str) -> Result<(), String> {
        let dir = PathBuf::from(NETNS_ETC).join(ns);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join(name), text).map_err(|e| format!("{}/{name}: {e}", dir.display()))
    }

    /// Starts `program args…` inside `ns`; it is killed when the namespaces go.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        self.children.push(child);
        Ok(())
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            terminate(child);
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from(NETNS_ETC).join(name));
        }
    }
}

/// Asks a child to stop (SIGTERM, so a daemon takes its workers down with it), then kills it if
/// it is still there after a bounded wait.
fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
