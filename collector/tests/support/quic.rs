//! The real collector binary on loopback for the tests that speak QUIC to it through the
//! simulated agent (the `egresswatch-sim` crate): start it with extra settings, issue agent
//! credentials from its CA, revoke them, and read its store, its log and its `/metrics`.

use super::{collector_bin, issue, spawn_collector, write_collector_config};
use egresswatch_collector::store::sqlite::SqliteStore;
use egresswatch_collector::store::Inspect;
use egresswatch_sim::{self as sim, Credentials, SimAgent};
use egresswatch_wire::Labels;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A running collector, killed on drop; its data under `dir/data`, its log in `log`.
pub struct QuicCollector {
    pub child: Child,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub dir: PathBuf,
}

impl Drop for QuicCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QuicCollector {
    /// On loopback, ports picked by the kernel, default settings.
    pub fn start(dir: &Path) -> QuicCollector {
        QuicCollector::start_with(dir, 0, "", "")
    }

    /// On loopback with `quic_port` (0 picks one) and extra lines for the `[quic]` and `[http]`
    /// tables. Returns once it printed its addresses.
    pub fn start_with(
        dir: &Path,
        quic_port: u16,
        quic_extra: &str,
        http_extra: &str,
    ) -> QuicCollector {
        let quic = format!("listen = \"127.0.0.1:{quic_port}\"\n{quic_extra}");
        let http = format!("listen = \"127.0.0.1:0\"\n{http_extra}");
        let config = write_collector_config(dir, &quic, &http, "");
        let log = dir.join("collector.log");
        let (child, listening) =
            spawn_collector(&config, &log, Some("info,quinn=warn,rustls=warn"));
        QuicCollector {
            child,
            quic: listening.quic,
            http: listening.http,
            log,
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("data/ca")
    }

    /// Credentials for agent `id`, issued by `ca issue` from this collector's CA.
    pub fn issue(&self, id: &str) -> Credentials {
        let (cert, key) = issue(&self.ca_dir(), &self.dir.join("agents"), id);
        Credentials::from_files(&self.ca_dir().join("ca.pem"), &cert, &key).unwrap()
    }

    /// `ca revoke` of agent `id`.
    pub fn revoke(&self, id: &str) {
        let out = Command::new(collector_bin())
            .args(["ca", "revoke", "--dir"])
            .arg(self.ca_dir())
            .arg(id)
            .args(["--reason", "key left on a decommissioned VM"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ca revoke {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One sample of `/metrics` (`series` is the name with its labels), if present.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many results of `agent` the store holds.
    pub fn stored(&self, agent: &str) -> u64 {
        SqliteStore::open(&self.dir.join("data/egresswatch.db"))
            .unwrap()
            .count_results(agent)
            .unwrap()
    }
}

#[allow(unused_imports)] // not every test binary that builds support asks the time
pub use egresswatch_collector::clock::now_unix_ms as now_ms;

pub fn labels(provider: &str, account: &str) -> Labels {
    Labels {
        provider: provider.into(),
        account: account.into(),
        region: "lab-1".into(),
        instance: "vm".into(),
    }
}

pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A simulated agent connected with `creds` (the handshake may still be refused after).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    creds: &Credentials,
) -> anyhow::Result<SimAgent> {
    SimAgent::connect(
        endpoint,
        addr,
        sim::client_config(Some(creds), &creds.ca, sim::DEFAULT_ALPN)?,
    )
    .await
}
