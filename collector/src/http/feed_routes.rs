//! The feed's routes: `/feed/snapshot.json` and its `.minisig` — public by design (outside
//! `/api/`, so no token), and present only when `[feed.publish]` is on — and `/api/matrix` with
//! what imported feeds observed (additive fields, docs/http-api.md). Merged into the main
//! router before its layers, so the `Host` check and the security headers cover them.

use super::routes::{error, AppState};
use super::FeedShare;
use crate::feed::import::{annotate, FeedBook};
use crate::matrix::MatrixView;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub(super) fn routes(feed: &FeedShare) -> Router<AppState> {
    if feed.published.is_none() {
        return Router::new();
    }
    Router::new()
        .route("/feed/snapshot.json", get(snapshot))
        .route("/feed/snapshot.json.minisig", get(signature))
}

async fn snapshot(State(state): State<AppState>) -> Response {
    match state.feed.published.as_ref().and_then(|p| p.latest()) {
        Some(s) => ([(header::CONTENT_TYPE, "application/json")], s.bytes).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot made yet"),
    }
}

async fn signature(State(state): State<AppState>) -> Response {
    match state.feed.published.as_ref().and_then(|p| p.latest()) {
        Some(s) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            s.signature,
        )
            .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot made yet"),
    }
}

/// The matrix view with the imported feeds' observations added.
pub(super) fn with_imports(view: MatrixView, book: &FeedBook) -> serde_json::Value {
    let mut value = serde_json::to_value(view).unwrap_or_default();
    annotate(&mut value, book);
    value
}

/// A serialised matrix (the stream's) with the imported feeds' observations added; a text
/// that does not parse is passed on as it is.
pub(super) fn json_with_imports(json: &str, book: &FeedBook) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            annotate(&mut value, book);
            value.to_string()
        }
        Err(_) => json.to_string(),
    }
}
