//! `GET /api/history` and `GET /api/intervals`: the history of a cell, an agent or a series,
//! served from the store's long-kept tiers (hourly rollups, state intervals), never by scanning
//! raw results. The parameters are parsed and bounded in [`crate::history::query`]; this shell
//! only reads the store and writes JSON or CSV.

use super::routes::{error, store_known_down, store_unavailable, AppState};
use crate::clock::now_unix_ms;
use crate::history::query::{self, HistoryRequest, IntervalsRequest};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn accepts_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"))
}

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, String> {
    q.map(|Query(p)| p).map_err(|e| format!("query: {e}"))
}

fn csv(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!("reading {what}: {e}");
    store_unavailable(&format!("could not read {what}"))
}

/// Reads the store off the runtime's threads (its client may block); a failure is answered
/// as one (503), naming `what`, and at once while the database is known to be down.
async fn read_store<T: Send + 'static>(
    state: &AppState,
    what: &str,
    read: impl FnOnce() -> Result<T, crate::error::CollectorError> + Send + 'static,
) -> Result<T, Response> {
    if let Some(down) = store_known_down(state) {
        return Err(down);
    }
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(e) => Err(unavailable(what, e)),
    }
}

pub(super) async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Pairs,
) -> Response {
    let request: HistoryRequest = match pairs(q)
        .and_then(|p| query::parse_history(&p, accepts_csv(&headers), now_unix_ms()))
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let store = state.fleet.store().clone();
    let (selector, from, to) = (
        request.selector.clone(),
        request.first_bucket_ms(),
        request.end_ms(),
    );
    let hours = match read_store(&state, "history", move || {
        store.history_hours(&selector, from, to)
    })
    .await
    {
        Ok(h) => h,
        Err(response) => return response,
    };
    let buckets = query::bucketize(&request, &hours);
    if request.csv {
        csv(query::history_csv(&buckets))
    } else {
        Json(query::history_json(&request, &buckets)).into_response()
    }
}

pub(super) async fn intervals(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Pairs,
) -> Response {
    let request: IntervalsRequest = match pairs(q)
        .and_then(|p| query::parse_intervals(&p, accepts_csv(&headers), now_unix_ms()))
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let store = state.fleet.store().clone();
    let (selector, from, to, limit) = (
        request.selector.clone(),
        request.from_ms,
        request.to_ms,
        request.limit,
    );
    let list = match read_store(&state, "intervals", move || {
        store.intervals(&selector, from, to, limit)
    })
    .await
    {
        Ok(l) => l,
        Err(response) => return response,
    };
    if request.csv {
        csv(query::intervals_csv(&list))
    } else {
        Json(query::intervals_json(&list)).into_response()
    }
}
