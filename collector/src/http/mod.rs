//! HTTP: the dashboard page, the JSON API, the SSE stream and `/metrics` (see
//! docs/http-api.md and docs/design.md for the contract). It only serves: the matrix, the events and
//! the stream come from the fleet hub ([`crate::fleet::Fleet`]), whose background loop runs on
//! its own.
//!
//! Safe by default: binds 127.0.0.1:8080; bound anywhere else it refuses to start without a
//! bearer token, which then guards `/api/*` and `/metrics`. Every response carries a strict CSP
//! and the usual security headers. Connections, the time to send a request's head, SSE
//! clients and silences are bounded; a request naming a `Host` the collector is not known by is
//! refused (see host.rs).

mod feed_routes;
mod history;
pub mod host;
mod routes;
mod server;
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
    /// Unset, alerts carry no link. Its host is accepted in `Host`.
    pub public_url: Option<String>,
    /// Most HTTP connections served at once; one more is closed as soon as accepted.
    pub max_connections: usize,
    /// Seconds a connection has to send a request's head (and how long a kept-alive connection
    /// may wait for its next request) before it is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a request's body may go without a byte arriving before the request is refused
    /// and its connection closed.
    pub body_idle_timeout_secs: u64,
    /// More names the collector is reached by (a proxy's, another DNS name), accepted in `Host`
    /// besides addresses, `localhost` and `public_url`'s host.
    pub allowed_hosts: Vec<String>,
    /// Most silences in force or planned at once; `POST /api/silences` beyond it is a 409.
    pub max_silences: usize,
    /// Hours a dashboard session (the sign-in cookie) lasts.
    pub session_hours: u64,
    /// Most `POST /session` attempts per client address per minute; more get 429.
    pub signin_attempts_per_minute: u32,
}

/// The documented range of each numeric `[http]` setting.
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 16..=1_000_000;
pub const HEADER_READ_TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=300;
pub const BODY_IDLE_TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=300;
pub const MAX_SSE_CLIENTS_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;
pub const MAX_BODY_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(16 << 20);
pub const MAX_SILENCES_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;
pub const SESSION_HOURS_RANGE: std::ops::RangeInclusive<u64> = 1..=8760;
pub const SIGNIN_ATTEMPTS_PER_MINUTE_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            max_sse_clients: 64,
            max_body_bytes: 64 * 1024,
            public_url: None,
            max_connections: 4096,
            header_read_timeout_secs: 10,
            body_idle_timeout_secs: 10,
            allowed_hosts: Vec::new(),
            max_silences: 1000,
            session_hours: 168,
            signin_attempts_per_minute: 10,
        }
    }
}

impl HttpConfig {
    /// Refuses an exposed listener without a token, a token too short to be one (or blank),
    /// a setting outside its range and an `allowed_hosts` entry that is not a name.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let refuse = |key: &str, reason: String| CollectorError::Config {
            path: format!("http.{key}"),
            reason,
        };
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(refuse(
                "token",
                "is blank: set a secret of at least 16 characters, or remove the key".into(),
            ));
        }
        crate::config::in_range(
            "http.max_connections",
            self.max_connections,
            MAX_CONNECTIONS_RANGE,
        )?;
        crate::config::in_range(
            "http.header_read_timeout_secs",
            self.header_read_timeout_secs,
            HEADER_READ_TIMEOUT_SECS_RANGE,
        )?;
        crate::config::in_range(
            "http.body_idle_timeout_secs",
            self.body_idle_timeout_secs,
            BODY_IDLE_TIMEOUT_SECS_RANGE,
        )?;
        crate::config::in_range(
            "http.max_sse_clients",
            self.max_sse_clients,
            MAX_SSE_CLIENTS_RANGE,
        )?;
        crate::config::in_range(
            "http.max_body_bytes",
            self.max_body_bytes,
            MAX_BODY_BYTES_RANGE,
        )?;
        crate::config::in_range("http.max_silences", self.max_silences, MAX_SILENCES_RANGE)?;
        crate::config::in_range(
            "http.session_hours",
            self.session_hours,
            SESSION_HOURS_RANGE,
        )?;
        crate::config::in_range(
            "http.signin_attempts_per_minute",
            self.signin_attempts_per_minute,
            SIGNIN_ATTEMPTS_PER_MINUTE_RANGE,
        )?;
        for name in &self.allowed_hosts {
            if let Some(why) = host::invalid_allowed_host(name) {
                return Err(refuse("allowed_hosts", why));
            }
        }
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
    feed: FeedShare,
}

/// What the feed gives the HTTP layer to serve: the imported feeds (shown in `/api/matrix`) and
/// the snapshot published at `/feed/snapshot.json` (the routes exist only when it is set).
#[derive(Clone, Default)]
pub struct FeedShare {
    pub imports: Option<Arc<crate::feed::import::FeedBook>>,
    pub published: Option<Arc<crate::feed::publish::Published>>,
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
        feed: FeedShare::default(),
    })
}

impl Bound {
    /// Serves the feed's imports and published snapshot too.
    pub fn with_feed(mut self, feed: FeedShare) -> Bound {
        self.feed = feed;
        self
    }

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
        let open: prometheus_client::metrics::gauge::Gauge = fleet.metrics().registered(
            "egresswatch_http_connections",
            "HTTP connections open (at most http.max_connections)",
        );
        let app = routes::router(&self.config, fleet, limits.clone(), closing_rx, self.feed);
        // SSE streams never end by themselves: tell them to, or the drain would wait forever.
        let shutdown = async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        };
        let bounds = server::ConnectionBounds {
            max_connections: self.config.max_connections,
            header_read_timeout: std::time::Duration::from_secs(
                self.config.header_read_timeout_secs,
            ),
        };
        server::serve(self.listener, app, bounds, limits, open, shutdown).await
    }
}
