//! The response builders the HTTP modules share: plain text, JSON, the JSON error body
//! `{"error", "message"}`, `Retry-After` for every 503 that asks the client back, the
//! memory breaker's `503 memory_pressure`, and `/metrics` (public and admin alike). The routes, the request boundary (`guard`) and
//! `subscribeRepos` (its handshake refusals) all answer through these, so an error
//! looks the same whichever of them gives it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::AppState;

/// A `text/plain` response (unless the caller sets another content type afterwards).
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if !response.headers().contains_key(CONTENT_TYPE) {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// An `application/json` response with `value` as its body.
pub(super) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("response types always serialise");
    let mut response = text(status, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON error response: [`error_body`] with `status`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(status, &error_body(code, message))
}

/// The JSON error body `{"error": code, "message": message}` of error responses (a
/// subscription's error frames carry the same two fields in DAG-CBOR: `atproto::frame`).
pub(super) fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": code, "message": message })
}

/// `response` with the configured `Retry-After` (every 503 that asks the client back).
pub(super) fn retry_later(
    state: &AppState,
    mut response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(state.config.server.retry_after_s),
    );
    response
}

/// `/metrics`: the OpenMetrics text as of now.
pub(super) fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, state.metrics_text());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The memory breaker is open: `503 memory_pressure`, come back after `Retry-After`.
pub(super) fn shed(state: &AppState) -> Response<Full<Bytes>> {
    retry_later(
        state,
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_pressure",
            "the relay is shedding load to stay within its memory budget; retry later",
        ),
    )
}
