//! The routes, the bearer-token guard (header, or the page's sign-in cookie: see signin.rs), the
//! security headers and the SSE stream.

use super::host::HostPolicy;
use super::signin::{self, Credentials, SignInRate};
use super::HttpConfig;
use crate::clock::{now_unix_ms, rfc3339};
use crate::fleet::{Fleet, StreamMessage};
use crate::limits::LimitCounters;
use crate::matrix::FamilyFilter;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

const INDEX_HTML: &str = include_str!("../../../dashboard/index.html");
const STYLE_CSS: &str = include_str!("../../../dashboard/style.css");
const APP_JS: &str = include_str!("../../../dashboard/app.js");
const SILENCES_JS: &str = include_str!("../../../dashboard/silences.js");
const HISTORY_JS: &str = include_str!("../../../dashboard/history.js");
const MAIL_JS: &str = include_str!("../../../dashboard/mail.js");
// uPlot as pinned in dashboard/package-lock.json (scripts/vendor-dashboard --check proves it).
const UPLOT_JS: &str = include_str!("../../../dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../../dashboard/vendor/uPlot.min.css");

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) fleet: Arc<Fleet>,
    /// Present when `http.token` is set: then `/api/*` and `/metrics` need it.
    credentials: Option<Arc<Credentials>>,
    /// `http.signin_attempts_per_minute`, per client address.
    signin_rate: Arc<SignInRate>,
    sse_clients: Arc<AtomicUsize>,
    /// `egresswatch_sse_clients`: the stream clients connected.
    sse_gauge: Gauge,
    max_sse_clients: usize,
    pub(super) limits: LimitCounters,
    max_body_bytes: usize,
    /// Becomes true when the server shuts down: SSE streams end so the drain can finish.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The names a request's `Host` may carry.
    hosts: Arc<HostPolicy>,
    /// `http.max_silences`.
    pub(super) max_silences: usize,
    /// Imported feeds and the published snapshot.
    pub(super) feed: super::FeedShare,
}

/// What a 503 tells a client to wait before it asks again while the database does not answer.
const STORE_RETRY_AFTER_SECS: &str = "5";

pub fn router(
    config: &HttpConfig,
    fleet: Arc<Fleet>,
    limits: LimitCounters,
    closing: tokio::sync::watch::Receiver<bool>,
    feed: super::FeedShare,
) -> Router {
    let sse_gauge = Gauge::default();
    fleet.metrics().register(
        "egresswatch_sse_clients",
        "Connected /api/stream clients",
        sse_gauge.clone(),
    );
    let state = AppState {
        fleet,
        credentials: config
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                Arc::new(Credentials::new(
                    t,
                    Duration::from_secs(config.session_hours.saturating_mul(3600)),
                ))
            }),
        signin_rate: Arc::new(SignInRate::new(config.signin_attempts_per_minute)),
        sse_clients: Arc::new(AtomicUsize::new(0)),
        sse_gauge,
        limits,
        max_sse_clients: config.max_sse_clients.max(1),
        max_body_bytes: config.max_body_bytes,
        closing,
        hosts: Arc::new(HostPolicy::new(
            config.public_url.as_deref(),
            &config.allowed_hosts,
        )),
        max_silences: config.max_silences,
        feed: feed.clone(),
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/silences.js",
            get(|| async { asset(SILENCES_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/history.js",
            get(|| async { asset(HISTORY_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/mail.js",
            get(|| async { asset(MAIL_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async { asset(UPLOT_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async { asset(UPLOT_CSS, "text/css; charset=utf-8") }),
        )
        .route("/healthz", get(healthz))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/session",
            get(session_state).post(sign_in).delete(sign_out),
        )
        .route("/api/sessions", axum::routing::delete(end_sessions))
        .route("/api/matrix", get(matrix))
        .route("/api/mail-providers", get(mail_providers))
        .route("/api/events", get(events))
        .route("/api/collectors", get(collectors))
        .route("/api/agents/{agent_id}/results", get(agent_results))
        .route("/api/history", get(super::history::history))
        .route("/api/intervals", get(super::history::intervals))
        .route("/api/stream", get(stream_handler))
        .merge(super::silences::routes())
        .merge(super::feed_routes::routes(&feed))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        // A body no handler reads still must not be buffered: declared lengths over the cap are
        // turned away (and counted) before routing, streamed ones cut at the cap.
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(state.max_body_bytes))
        // A body trickled (or stalled) holds a connection and a handler: each chunk must come
        // within the idle timeout, else the read fails and the request is refused (400, JSON).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(config.body_idle_timeout_secs),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(middleware::from_fn(json_errors))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CSP))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .with_state(state)
}

fn header_layer(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 503 with `Retry-After`: the database does not answer (or did not in time); asking again
/// later is the remedy, not a bug report.
pub(super) fn store_unavailable(what: &str) -> Response {
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the database is unavailable: {what}"),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(STORE_RETRY_AFTER_SECS),
    );
    resp
}

/// `Some(503)` while the shared database is known to be down, so a request that needs it is
/// answered at once instead of after the pool's connection timeout.
pub(super) fn store_known_down(state: &AppState) -> Option<Response> {
    state
        .fleet
        .store_outage()
        .map(|o| store_unavailable(&format!("unreachable since {}", o.since)))
}

/// `GET /healthz`: 200 `ok` while the collector can do its work; 503 with why while the shared
/// database is down or the data dir cannot be written (the process lives on and serves the last
/// state: `/livez` says only that).
async fn healthz(State(state): State<AppState>) -> Response {
    let (status, what, o) = match (state.fleet.store_outage(), state.fleet.read_only()) {
        (Some(o), _) => ("store_down", "the database is unreachable", o),
        (None, Some(o)) => ("read_only", "the data dir cannot be written", o),
        (None, None) => return "ok".into_response(),
    };
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": status,
            "error": what,
            "since": o.since,
            "reason": o.reason,
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(STORE_RETRY_AFTER_SECS),
    );
    resp
}

/// Most of an error body that is not JSON kept as the JSON error's message.
const ERROR_TEXT_KEPT: usize = 4096;

/// Every error answered as `{ "error": "…" }`: the ones axum's extractors, the router (404,
/// 405) and the body limit make as plain text or with no body get their text (or the status's
/// reason) as the message, their other headers (`Allow`, `WWW-Authenticate`, …) kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_KEPT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut json = error(status, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json
}

/// Refuses (421) a request whose `Host` is not a name this collector is known by: a DNS
/// rebinding (see host.rs).
async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or(""));
    if !state.hosts.admits(host) {
        let shown: String = host.unwrap_or("").chars().take(100).collect();
        tracing::debug!(host = %shown, "request refused: Host not allowed");
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "Host {shown:?} is not a name of this collector (add it to http.allowed_hosts)"
            ),
        );
    }
    next.run(req).await
}

/// `/api/*` and `/metrics` need the bearer token (or the page's sign-in cookie) when one is
/// configured.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let guarded = path.starts_with("/api/") || path == "/metrics";
    if let (true, Some(credentials)) = (guarded, &state.credentials) {
        let header_str = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        if !credentials.admits(
            header_str(header::AUTHORIZATION),
            header_str(header::COOKIE),
        ) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "bearer token required");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"egresswatch\""),
            );
            return resp;
        }
    }
    next.run(req).await
}

/// `GET /session`: whether the page must ask for the token before it can read the API.
async fn session_state(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    let signed_in = match &state.credentials {
        None => true,
        Some(c) => {
            let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
            c.admits(get(header::AUTHORIZATION), get(header::COOKIE))
        }
    };
    Json(json!({
        "token_required": state.credentials.is_some(),
        "signed_in": signed_in,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /session` `{"token": "…"}`: the page trades the token for a session cookie. At most
/// `http.signin_attempts_per_minute` attempts per client address (429 beyond).
async fn sign_in(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: Json<SignIn>,
) -> Response {
    let Some(credentials) = &state.credentials else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if let Err(wait) = state
        .signin_rate
        .attempt(peer.ip(), std::time::Instant::now())
    {
        state.limits.exceeded(crate::limits::Limit::SignIn, 1, || {
            format!("a sign-in from {} refused: too many attempts", peer.ip())
        });
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-in attempts from this address: wait and try again",
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    if !credentials.is_token(&body.token) {
        tracing::info!(client = %peer.ip(), "dashboard sign-in refused: wrong token");
        return error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    session_cookie_response(credentials.open_session())
}

/// `DELETE /session`: signs the browser out, ending its session on the server.
async fn sign_out(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(credentials) = &state.credentials {
        credentials.close_session(headers.get(header::COOKIE).and_then(|v| v.to_str().ok()));
    }
    session_cookie_response(signin::clear_cookie())
}

/// `DELETE /api/sessions` (token or session required, like the rest of `/api/`): signs every
/// browser out.
async fn end_sessions(State(state): State<AppState>) -> Response {
    let ended = state.credentials.as_ref().map_or(0, |c| c.close_all());
    tracing::info!(ended, "every dashboard session ended");
    Json(json!({ "ended": ended })).into_response()
}

fn session_cookie_response(cookie: String) -> Response {
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            resp.headers_mut().insert(header::SET_COOKIE, value);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot set the session cookie",
        ),
    }
}

/// Turns away a request whose declared body is over `http.max_body_bytes` (413), counted.
async fn limit_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared {
        if len > state.max_body_bytes as u64 {
            let path = req.uri().path().to_string();
            state
                .limits
                .exceeded(crate::limits::Limit::HttpBodyBytes, 1, || {
                    format!(
                        "{path}: a body of {len} bytes is over http.max_body_bytes ({})",
                        state.max_body_bytes
                    )
                });
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct MatrixQuery {
    family: Option<String>,
}

async fn matrix(State(state): State<AppState>, Query(q): Query<MatrixQuery>) -> Response {
    match FamilyFilter::parse(q.family.as_deref()) {
        Ok(family) => {
            let view = state.fleet.matrix_view(family, now_unix_ms());
            match &state.feed.imports {
                None => Json(view).into_response(),
                Some(book) => Json(super::feed_routes::with_imports(view, book)).into_response(),
            }
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// `GET /api/mail-providers`: per mail provider × account, its SMTP ports and its API.
async fn mail_providers(State(state): State<AppState>) -> Response {
    Json(state.fleet.mail_view(now_unix_ms())).into_response()
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /api/events`: the stored JSON as it is, in one array (nothing parsed again).
async fn events(State(state): State<AppState>, Query(q): Query<LimitQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if let Some(down) = store_known_down(&state) {
        return down;
    }
    let store = state.fleet.store().clone();
    match tokio::task::spawn_blocking(move || store.events(limit)).await {
        Ok(Ok(list)) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("[{}]", list.join(",")),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!("reading events: {e}");
            store_unavailable("could not read events")
        }
        Err(e) => {
            tracing::error!("reading events: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "could not read events")
        }
    }
}

/// `GET /api/collectors`: the collectors sharing this one's store and which leads (a collector
/// on its own store is a cluster of one: itself, leading).
async fn collectors(State(state): State<AppState>) -> Response {
    if let Some(down) = store_known_down(&state) {
        return down;
    }
    let store = state.fleet.store().clone();
    let now = crate::clock::now_unix_ms();
    match tokio::task::spawn_blocking(move || store.collectors(now, 10_000)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => {
            tracing::error!("reading collectors: {e}");
            store_unavailable("could not read the collectors")
        }
        Err(e) => {
            tracing::error!("reading collectors: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read collectors",
            )
        }
    }
}

async fn agent_results(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Response {
    if let Err(e) = egresswatch_wire::labels::validate_agent_id(&agent_id) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    if let Some(down) = store_known_down(&state) {
        return down;
    }
    let store = state.fleet.store().clone();
    let stored = tokio::task::spawn_blocking(move || store.recent_results(&agent_id, limit)).await;
    let results = match stored {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("reading results: {e}");
            return store_unavailable("could not read results");
        }
        Err(e) => {
            tracing::error!("reading results: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "could not read results");
        }
    };
    let ms = |us: Option<u32>| us.map(|u| f64::from(u) / 1000.0);
    let list: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq,
                "at": rfc3339(r.at_unix_ms),
                "target": r.target,
                "port": r.port,
                "family": r.family.as_str(),
                "address": r.address.map(|a| a.to_string()),
                "level": r.level.as_str(),
                "outcome": r.outcome.as_str(),
                "dns_ms": ms(r.timings.dns_us),
                "connect_ms": ms(r.timings.connect_us),
                "banner_ms": ms(r.timings.banner_us),
                "tls_ms": ms(r.timings.tls_us),
                "syn_retransmits": r.syn_retransmits,
                "detail": r.detail,
            })
        })
        .collect();
    Json(list).into_response()
}

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let m = state.fleet.metrics();
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m.render_prometheus(),
        )
            .into_response()
    }
}

/// Releases an SSE slot when the client's stream is dropped.
struct SlotGuard {
    clients: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// A stream's `matrix` message: the matrix as the hub serialised it, with the imported feeds'
/// observations added when there are imports.
fn matrix_event(json: &str, imports: Option<&Arc<crate::feed::import::FeedBook>>) -> SseEvent {
    let event = SseEvent::default().event("matrix");
    match imports {
        None => event.data(json),
        Some(book) => event.data(super::feed_routes::json_with_imports(json, book)),
    }
}

async fn stream_handler(State(state): State<AppState>) -> Response {
    let taken = state.sse_clients.fetch_add(1, Ordering::AcqRel);
    let guard = SlotGuard {
        clients: state.sse_clients.clone(),
        gauge: state.sse_gauge.clone(),
    };
    state.sse_gauge.inc();
    if taken >= state.max_sse_clients {
        drop(guard);
        state
            .limits
            .exceeded(crate::limits::Limit::SseClients, 1, || {
                format!(
                    "an /api/stream client turned away: max_sse_clients ({}) connected",
                    state.max_sse_clients
                )
            });
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many stream clients");
    }
    let receiver = state.fleet.subscribe();
    // With imported feeds, each matrix sent carries what they observed, as `/api/matrix` does.
    let imports = state.feed.imports.clone();
    let first = matrix_event(&state.fleet.matrix_json(now_unix_ms()), imports.as_ref());
    let fleet = state.fleet.clone();
    let initial = stream::once(async move { Ok(first) });
    let updates = stream::unfold(
        (receiver, guard, fleet, state.closing.clone()),
        move |(mut rx, guard, fleet, mut closing)| {
            let imports = imports.clone();
            async move {
                if *closing.borrow() {
                    return None;
                }
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = closing.changed() => return None,
                };
                let ev = match received {
                    Ok(StreamMessage::Matrix(json)) => {
                        matrix_event(json.as_str(), imports.as_ref())
                    }
                    Ok(StreamMessage::Event(json)) => {
                        SseEvent::default().event("event").data(json.as_str())
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too far behind: skip ahead with the whole current matrix.
                        matrix_event(&fleet.matrix_json(now_unix_ms()), imports.as_ref())
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                Some((Ok(ev), (rx, guard, fleet, closing)))
            }
        },
    );
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(initial.chain(updates));
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}
