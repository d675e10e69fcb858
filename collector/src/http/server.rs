//! The HTTP listener's accept loop: hyper's HTTP/1 server with the bounds a hostile client
//! must not get around. At most `http.max_connections` connections are served at once (one
//! more is accepted and closed at once, counted as `http_connections`, so the kernel's queue
//! never fills with them); a request's head must arrive within `http.header_read_timeout_secs`
//! of the connection asking for it, which hyper also applies to a kept-alive connection waiting
//! for its next request, so an idle or half-sent connection is closed after that long. Each
//! request is handed its peer's address (`ConnectInfo`) for the sign-in rate limit. On shutdown
//! no new connection is accepted and the open ones finish their requests (hyper-util's graceful
//! shutdown).

use crate::error::CollectorError;
use crate::limits::{Limit, LimitCounters};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// After `accept` fails (out of descriptors, say), how long the loop waits before the next
/// one, so it does not spin while nothing can be accepted.
const ACCEPT_RETRY_AFTER: Duration = Duration::from_millis(50);

/// The bounds on the connections themselves, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionBounds {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the open connections end.
/// `open` is the gauge of connections served now.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: ConnectionBounds,
    limits: LimitCounters,
    open: Gauge,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(ACCEPT_RETRY_AFTER).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.exceeded(Limit::HttpConnections, 1, || {
                format!(
                    "an HTTP connection from {peer} closed at once: http.max_connections ({}) \
                     are open",
                    bounds.max_connections
                )
            });
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        open.inc();
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("HTTP connection from {peer}: {e}");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
