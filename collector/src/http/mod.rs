//! HTTP: the dashboard page, the JSON API, the SSE stream and `/metrics` (see
//! README "HTTP API" and DESIGN.md for the contract). It only serves: the matrix, the events and
//! the stream come from the fleet hub ([`crate::fleet::Fleet`]), whose background loop runs on
//! its own.
//!
//! Safe by default: binds 127.0.0.1:8080; bound anywhere else it refuses to start without a
//! bearer token, which then guards `/api/*` and `/metrics`. Every response carries a strict CSP
//! and the usual security headers. SSE clients are bounded.

mod history;
mod routes;
mod signin;
mod silences;

use crate::error::CollectorError;
use crate::fleet::Fleet;
use crate::limits::LimitCounters;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// `[http]` in the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Bearer token for `/api/*` and `/metrics`. Required when `listen` is not loopback.
    pub token: Option<String>,
    /// Most simultaneous `/api/stream` clients.
    pub max_sse_clients: usize,
    /// Largest request body accepted, bytes (the API only reads; bodies get 413 above this).
    pub max_body_bytes: usize,
    /// Where people open the matrix page (`https://watch.example.net/`): alerts link to it.
    /// Unset, alerts carry no link.
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            max_sse_clients: 64,
            max_body_bytes: 64 * 1024,
            public_url: None,
        }
    }
}

impl HttpConfig {
    /// Refuses an exposed listener without a token, and a token too short to be one.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if !self.listen.ip().is_loopback() && token.is_none() {
            return Err(CollectorError::Config {
                path: "http.token".into(),
                reason: format!(
                    "http.listen = {} is not a loopback address: set http.token to a secret \
                     bearer token (clients send `Authorization: Bearer <token>`), or listen on \
                     127.0.0.1",
                    self.listen
                ),
            });
        }
        if let Some(url) = &self.public_url {
            let scheme_ok =
                reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !scheme_ok {
                return Err(CollectorError::Config {
                    path: "http.public_url".into(),
                    reason: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        if let Some(t) = token {
            if t.len() < 16 {
                return Err(CollectorError::Config {
                    path: "http.token".into(),
                    reason: "must be at least 16 characters".into(),
                });
            }
        }
        Ok(())
    }
}

/// A bound listener, so the caller learns the address (port 0 in tests) before serving.
pub struct Bound {
    listener: tokio::net::TcpListener,
    config: HttpConfig,
}

/// Validates the config and binds.
pub async fn bind(config: &HttpConfig) -> Result<Bound, CollectorError> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CollectorError::io(format!("binding HTTP on {}", config.listen), e))?;
    Ok(Bound {
        listener,
        config: config.clone(),
    })
}

impl Bound {
    pub fn local_addr(&self) -> Result<SocketAddr, CollectorError> {
        self.listener
            .local_addr()
            .map_err(|e| CollectorError::io("HTTP listener address", e))
    }

    /// Serves until `shutdown` completes, then drains open requests. Request bodies and stream
    /// clients over their bounds are counted in `limits`.
    pub async fn serve(
        self,
        fleet: Arc<Fleet>,
        limits: LimitCounters,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CollectorError> {
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        let app = routes::router(&self.config, fleet, limits, closing_rx);
        // SSE streams never end by themselves: tell them to, or the drain would wait forever.
        let shutdown = async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        };
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| CollectorError::io("serving HTTP", e))
    }
}
