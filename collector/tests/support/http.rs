//! The collector's HTTP shell in-process for the HTTP tests: a real axum server on loopback
//! serving a `Fleet` (its background loop running beside it) over an in-memory store, which
//! the test feeds directly as ingest would (no QUIC), stopped gracefully, and the client
//! side those tests share — JSON and text bodies, reading an SSE stream up to a needle.

use egresswatch_collector::alerts::Alerts;
use egresswatch_collector::fleet::{Fleet, FleetConfig};
use egresswatch_collector::http::{self, HttpConfig};
use egresswatch_collector::limits::LimitCounters;
use egresswatch_collector::metrics::Metrics;
use egresswatch_collector::store::memory::MemoryStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A running HTTP shell; `stop` shuts it down gracefully.
pub struct Server {
    pub addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub store: Arc<MemoryStore>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// With the default detector, no alert sinks and fresh metrics.
    pub async fn start(config: HttpConfig) -> Server {
        Server::start_with(config, Alerts::none(), Arc::new(Metrics::new())).await
    }

    pub async fn start_with(config: HttpConfig, alerts: Alerts, metrics: Arc<Metrics>) -> Server {
        let store = Arc::new(MemoryStore::new());
        let limits = LimitCounters::register(&metrics);
        let fleet = Fleet::new(FleetConfig::default(), store.clone(), alerts, metrics);
        let bound = http::bind(&config).await.expect("bind");
        let addr = bound.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let (f, hub) = (fleet.clone(), fleet.clone());
        let task = tokio::spawn(async move {
            let (stop_hub, hub_stopped) = oneshot::channel::<()>();
            let hub = tokio::spawn(hub.run(async move {
                let _ = hub_stopped.await;
            }));
            bound
                .serve(f, limits, async move {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
            let _ = stop_hub.send(());
            hub.await.expect("the fleet's loop ends");
        });
        Server {
            addr,
            fleet,
            store,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.addr.port(), path)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("graceful shutdown within 5 s")
            .unwrap();
    }
}

/// Listening on 127.0.0.1, any port, no token.
pub fn loopback() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    }
}

/// Sends `request` and decodes its JSON body.
pub async fn json_of<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}

/// Sends `request` and returns its body as text.
pub async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Reads SSE chunks until `needle` shows up (bounded in time).
pub async fn read_until(resp: &mut reqwest::Response, buf: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !buf.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s; got {buf:?}"))
            .unwrap()
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}
