//! `/api/silences`: list, create and end silences (see [`crate::silences`] for what they do).
//!
//! The mutating routes are guarded like the rest of `/api/*` (the bearer token, or the page's
//! sign-in cookie, when `http.token` is set) and are also refused when they come from another
//! site: a `POST` must be `application/json` (a cross-site form cannot send that without a
//! preflight this server never answers), and a browser's `Sec-Fetch-Site` or `Origin` naming
//! another site is turned away, which matters most on a loopback collector without a token.

use super::routes::{store_known_down, store_unavailable, AppState};
use crate::clock::now_unix_ms;
use crate::matrix::FamilyFilter;
use crate::silences::{new_id, NewSilence, Origin, Silence};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/silences", get(list).post(create))
        .route("/api/silences/{id}", delete(end))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Why a request from a browser on another site is refused, if it is. `Sec-Fetch-Site` decides
/// where the browser sends it (every current one does); else an `Origin` must name this host as
/// the client addressed it (`X-Forwarded-Host` behind a proxy, else `Host`). Clients that are not
/// browsers send neither and are judged by the token alone.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if matches!(site, "same-origin" | "none") {
            return None;
        }
        return Some(format!("refused: a {site} request may not change silences"));
    }
    let origin = get("origin")?;
    let host = get("x-forwarded-host").or(get("host"))?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if origin_host
        .trim_end_matches('/')
        .eq_ignore_ascii_case(host.trim())
    {
        return None;
    }
    Some(format!(
        "refused: origin {origin} is not this collector ({host})"
    ))
}

/// The current matrix's cells (one agent, one port) as the matchers see them, each provider by
/// its key: the view is built once per request, not once per silence.
struct Cells(Vec<(String, String, String, u16)>);

impl Cells {
    fn of(fleet: &crate::fleet::Fleet, now: i64) -> Cells {
        let view = fleet.matrix_view(FamilyFilter::All, now);
        let mut cells = Vec::new();
        for p in &view.providers {
            let provider = crate::providers::provider_key(&p.provider);
            for a in &p.accounts {
                for r in &a.regions {
                    for agent in &r.agent_list {
                        for port in agent.cells.keys().filter_map(|k| k.parse::<u16>().ok()) {
                            cells.push((
                                provider.clone(),
                                a.account.clone(),
                                agent.agent.clone(),
                                port,
                            ));
                        }
                    }
                }
            }
        }
        Cells(cells)
    }

    /// How many of them `silence` covers.
    fn matching(&self, silence: &Silence) -> usize {
        if silence.all {
            return self.0.len();
        }
        let matches = silence.matcher.cell_matcher();
        self.0
            .iter()
            .filter(|(provider, account, agent, port)| matches(provider, account, agent, *port))
            .count()
    }
}

/// The silences as the API shows them, each with its `matching_cells`; built off the runtime's
/// threads (a thousand silences over a large matrix is real work).
async fn views(state: &AppState, silences: Vec<Silence>, now: i64) -> Result<Vec<Value>, Response> {
    let fleet = state.fleet.clone();
    tokio::task::spawn_blocking(move || {
        let cells = Cells::of(&fleet, now);
        silences
            .iter()
            .map(|s| s.view(now, cells.matching(s)))
            .collect()
    })
    .await
    .map_err(|e| {
        tracing::error!("listing silences: {e}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not list the silences",
        )
    })
}

async fn view(state: &AppState, silence: Silence, now: i64) -> Response {
    match views(state, vec![silence], now).await {
        Ok(mut one) => Json(one.pop().unwrap_or(Value::Null)).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
}

/// `GET /api/silences`: active and planned ones; `?all=1` with those over, newest first.
async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let expired = matches!(q.all.as_deref(), Some("1" | "true" | "yes"));
    let now = now_unix_ms();
    let listed = state.fleet.alerts().silences().list(expired, now);
    match views(&state, listed, now).await {
        Ok(list) => Json(list).into_response(),
        Err(resp) => resp,
    }
}

async fn store_silence(state: &AppState, silence: &Silence) -> Result<(), Response> {
    if let Some(down) = store_known_down(state) {
        return Err(down);
    }
    let store = state.fleet.store().clone();
    let record = silence.clone();
    let stored = tokio::task::spawn_blocking(move || {
        store.put_silence(&record)?;
        // Every collector on the store (the leader among them) rereads its silences.
        if let Err(e) = store.notify_silences() {
            tracing::warn!("telling the other collectors of a silence: {e}");
        }
        Ok::<(), crate::CollectorError>(())
    });
    match stored.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!("storing a silence: {e}");
            Err(store_unavailable("could not store the silence"))
        }
        Err(e) => {
            tracing::error!("storing a silence: {e}");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the silence",
            ))
        }
    }
}

/// `POST /api/silences`: validates, stores durably, then honours it.
async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(why) = cross_site(&headers) {
        return error(StatusCode::FORBIDDEN, &why);
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the silence as Content-Type: application/json",
        );
    }
    let request: NewSilence = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad silence: {e}")),
    };
    let now = now_unix_ms();
    let silence = match request.validate(new_id(), Origin::Api, now) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let held = state.fleet.alerts().silences().list(false, now).len();
    if held >= state.max_silences {
        let max = state.max_silences;
        state
            .limits
            .exceeded(crate::limits::Limit::Silences, 1, || {
                format!("a silence refused: http.max_silences ({max}) are in force or planned")
            });
        return error(
            StatusCode::CONFLICT,
            &format!(
                "the collector holds http.max_silences ({max}) silences in force or planned: \
                 end some first (or raise the setting)"
            ),
        );
    }
    if let Err(resp) = store_silence(&state, &silence).await {
        return resp;
    }
    tracing::info!(id = %silence.id, by = %silence.created_by, reason = %silence.reason, "silence created");
    state.fleet.alerts().silences().put(silence.clone());
    let mut resp = view(&state, silence, now).await;
    if resp.status() == StatusCode::OK {
        *resp.status_mut() = StatusCode::CREATED;
    }
    resp
}

/// `DELETE /api/silences/{id}`: ends it now; the record stays (`?all=1` lists it).
async fn end(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(why) = cross_site(&headers) {
        return error(StatusCode::FORBIDDEN, &why);
    }
    let book = state.fleet.alerts().silences();
    let Some(mut silence) = book.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such silence");
    };
    if silence.origin == Origin::Config {
        return error(
            StatusCode::CONFLICT,
            "this silence is a [[silence]] table in the collector's config: remove it there",
        );
    }
    let now = now_unix_ms();
    silence.end(now);
    if let Err(resp) = store_silence(&state, &silence).await {
        return resp;
    }
    tracing::info!(id = %silence.id, "silence ended");
    book.put(silence.clone());
    view(&state, silence, now).await
}

#[cfg(test)]
mod tests {
    use super::cross_site;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_same_site_browsers_and_non_browsers_may_change_silences() {
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:8080")])), None);
        assert_eq!(
            cross_site(&headers(&[("sec-fetch-site", "same-origin")])),
            None
        );
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])).is_some());
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])).is_some());
        let own = [
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ];
        assert_eq!(cross_site(&headers(&own)), None);
        let evil = [
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080"),
        ];
        assert!(cross_site(&headers(&evil))
            .unwrap()
            .contains("evil.example"));
        // Behind a TLS proxy that rewrites Host, the forwarded host is what the browser used.
        let proxied = [
            ("origin", "https://watch.example.net"),
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "watch.example.net"),
        ];
        assert_eq!(cross_site(&headers(&proxied)), None);
    }
}
