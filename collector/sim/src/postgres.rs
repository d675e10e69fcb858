//! A throwaway PostgreSQL cluster for the collector's tests and benchmarks: Debian's own server
//! (`initdb`, `pg_ctl`), initialised in a temporary directory, listening on a free loopback port
//! with trust authentication, stopped and removed when the value is dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then every server tool runs as the
//! `postgres` user (its uid and gid set before exec) and the directory is handed to it.

use std::ffi::CString;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The database user the cluster is initialised with (trust authentication on loopback).
pub const USER: &str = "egresswatch";

/// One running (or stopped) cluster of its own.
pub struct PgCluster {
    /// Owns the directory: removed after the server is stopped.
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    /// The uid and gid the server tools run as when this process is root.
    run_as: Option<(u32, u32)>,
    /// Server settings beyond the port and the socket, `-c` each.
    settings: Vec<String>,
    running: bool,
}

impl PgCluster {
    /// Initialises and starts a new cluster. `Err` says why it could not (the tools missing,
    /// initdb or the start failing, with their output).
    pub fn start() -> Result<PgCluster, String> {
        PgCluster::init()?.first_start()
    }

    /// Like [`PgCluster::start`], serving TLS with this certificate chain and key (PEM): every
    /// TCP session may then use TLS, none has to.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<PgCluster, String> {
        let mut cluster = PgCluster::init()?;
        let data = cluster.data_dir();
        for (name, contents) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, contents).map_err(|e| format!("writing {name}: {e}"))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| format!("restricting {name}: {e}"))?;
            if let Some((uid, gid)) = cluster.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("handing {name} to postgres: {e}"))?;
            }
        }
        cluster.settings.extend([
            "ssl=on".to_string(),
            "ssl_cert_file=server.crt".to_string(),
            "ssl_key_file=server.key".to_string(),
        ]);
        cluster.first_start()
    }

    /// A new cluster's directory, initialised, not started.
    fn init() -> Result<PgCluster, String> {
        let bin = find_bin()?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(user_ids("postgres")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("egresswatch-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        std::fs::create_dir(dir.path().join("sock"))
            .map_err(|e| format!("creating the socket directory: {e}"))?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("handing {} to postgres: {e}", path.display()))?;
            }
        }
        let cluster = PgCluster {
            dir: Some(dir),
            bin,
            port: 0,
            run_as,
            settings: Vec::new(),
            running: false,
        };
        let data = cluster.data_dir();
        let out = cluster
            .tool("initdb")
            .arg("--auth=trust")
            .arg(format!("--username={USER}"))
            .arg("--encoding=UTF8")
            .arg("--no-instructions")
            .arg("-D")
            .arg(&data)
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        check("initdb", &out)?;
        Ok(cluster)
    }

    fn first_start(mut self) -> Result<PgCluster, String> {
        // A free port now; the server takes it a moment later (and keeps it across restarts).
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port()?;
            match self.start_again() {
                Ok(()) => return Ok(self),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `postgres://` URL of database `postgres` on 127.0.0.1.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// `postgres://` URL of database `db` on 127.0.0.1.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base().join("data")
    }

    /// The postmaster's pid, read from `postmaster.pid` (None when it is not running).
    pub fn pid(&self) -> Option<u32> {
        if !self.running {
            return None;
        }
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server (fast shutdown: sessions are ended), keeping its data.
    pub fn stop(&mut self) -> Result<(), String> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the stopped server again: same data, same port.
    pub fn start_again(&mut self) -> Result<(), String> {
        let base = self.base().to_path_buf();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port,
            base.join("sock").display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let out = self
            .tool("pg_ctl")
            .arg("-w")
            .arg("-t")
            .arg("60")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(base.join("server.log"))
            .arg("-o")
            .arg(options)
            .arg("start")
            .output()
            .map_err(|e| format!("running pg_ctl start: {e}"))?;
        match check("pg_ctl start", &out) {
            Ok(()) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                let log = std::fs::read_to_string(base.join("server.log")).unwrap_or_default();
                Err(format!("{e}\nserver log:\n{log}"))
            }
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        let out = self
            .tool("pg_ctl")
            .arg("-w")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-m")
            .arg(mode)
            .arg("stop")
            .output()
            .map_err(|e| format!("running pg_ctl stop: {e}"))?;
        check("pg_ctl stop", &out)?;
        self.running = false;
        Ok(())
    }

    fn base(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// A server tool, run as `postgres` when this process is root.
    fn tool(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.env_remove("PGDATA").current_dir(self.base());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.pg_ctl_stop("immediate") {
            eprintln!("stopping the test PostgreSQL: {e}");
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Where `initdb` and `pg_ctl` are: on PATH, else Debian's `/usr/lib/postgresql/*/bin`.
fn find_bin() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            // Debian links only some tools onto PATH; use the directory they really live in.
            let real = std::fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir);
            return Ok(real);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file());
    versions.sort();
    versions.pop().ok_or_else(|| {
        "PostgreSQL is not installed (no initdb and pg_ctl on PATH or in \
         /usr/lib/postgresql/*/bin; Debian's package is `postgresql`)"
            .to_string()
    })
}

fn user_ids(name: &str) -> Result<(u32, u32), String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return Err(format!(
            "running as root, and there is no `{name}` user to run PostgreSQL as"
        ));
    }
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((uid, gid))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn check(what: &str, out: &Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
