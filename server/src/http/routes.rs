//! Request routing: what each path answers, on the normal lane and on the refusal lane.
//!
//! Probe paths answer from atomics only (no locks, no I/O), so a probe is never queued
//! behind other work except the declared CPU cost every request pays.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use super::AppState;

/// Which lane a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// An admitted connection.
    Admitted,
    /// A connection accepted while the registry refused it: probes and metrics are
    /// answered, everything else is told to come back later.
    Refusal,
}

/// The fixed set of routes; the metric label comes from here, never from the raw path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl Route {
    fn of(path: &str) -> Self {
        match path {
            "/_healthz" => Self::Healthz,
            "/_readyz" => Self::Readyz,
            "/metrics" => Self::Metrics,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }
}

/// Answer one request.
pub async fn serve(
    state: &AppState,
    request: Request<Incoming>,
    lane: Lane,
) -> Response<Full<Bytes>> {
    state.cpu.spend(state.config.cpu.http_request()).await;
    let route = Route::of(request.uri().path());
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    let response = match route {
        Route::Healthz | Route::Readyz | Route::Metrics if !read_only => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Route::Healthz => text(StatusCode::OK, "ok\n"),
        Route::Readyz if state.is_ready() => text(StatusCode::OK, "ready\n"),
        Route::Readyz => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        Route::Metrics => {
            let mut response = text(StatusCode::OK, state.metrics.encode(state.registry.stats()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        Route::Other if lane == Lane::Refusal => {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached, retry later\n",
            );
            response.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(state.config.server.retry_after_s),
            );
            response
        }
        Route::Other => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    state
        .metrics
        .request(route.label(), response.status().as_u16());
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
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
