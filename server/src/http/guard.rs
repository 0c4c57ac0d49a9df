//! The request boundary every HTTP handler runs inside.
//!
//! A handler that panics must cost one request, not the connection, the listener or shared
//! state (the panic-isolation report: a panicked handler poisoned shared state while the
//! listener stayed up, leaving a half-broken service). A handler that never finishes must
//! not hold its connection forever. So each handler future is polled under
//! `catch_unwind` and a deadline (`server.handler_timeout_ms`): a panic becomes a 500, a
//! timeout a 504, both counted (`relay_handler_failures_total{route,kind}`) and logged with
//! the method, the path and a request id. Request ids come from a per-instance counter, so
//! for a given wind-tunnel seed the same request has the same id in every run.
//!
//! Containment is sound because handlers share no lock: probes answer from atomics and the
//! other routes touch the store and the registry only through calls that leave them
//! consistent if the caller unwinds.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

use super::response::error;
use super::AppState;
use crate::metrics::Metrics;
use crate::rt::probe::{self, Probe};
use crate::rt::time::{timeout, Duration};

/// What the boundary knows of the request it guards, for the log line and the metric.
/// Taken before the handler consumes the request.
#[derive(Debug)]
pub struct RequestContext {
    /// The route's fixed metric label.
    route: &'static str,
    /// The request method.
    method: Method,
    /// The request path (as sent; logged, never used as a label).
    path: String,
    /// Per-instance request number (seed-stable in the wind tunnel).
    request_id: u64,
}

impl RequestContext {
    /// The context of `request`, served by `route`, numbered `request_id`.
    pub fn new<B>(route: &'static str, request: &Request<B>, request_id: u64) -> Self {
        Self {
            route,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            request_id,
        }
    }
}

/// Run `handler` inside the boundary: its response, or a 500 if it panicked, or a 504 if it
/// took longer than `handler_timeout`.
async fn contain(
    metrics: &Metrics,
    handler_timeout: Duration,
    request: RequestContext,
    handler: impl Future<Output = Response<Full<Bytes>>>,
) -> Response<Full<Bytes>> {
    let RequestContext {
        route,
        method,
        path,
        request_id,
    } = request;
    match timeout(handler_timeout, AssertUnwindSafe(handler).catch_unwind()).await {
        Ok(Ok(response)) => response,
        Ok(Err(payload)) => {
            let panic = panic_message(payload.as_ref());
            probe::reached(Probe::HandlerPanic);
            tracing::error!(request_id, %method, path, route, panic, "handler panicked; answered 500");
            metrics.handler_failed(route, "panic");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                &format!("request {request_id} failed inside the relay; it is still serving"),
            )
        }
        Err(_) => {
            let timeout_ms = u64::try_from(handler_timeout.as_millis()).unwrap_or(u64::MAX);
            probe::reached(Probe::HandlerTimeout);
            tracing::warn!(request_id, %method, path, route, timeout_ms, "handler timed out; answered 504");
            metrics.handler_failed(route, "timeout");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "handler_timeout",
                &format!("request {request_id} took longer than {timeout_ms} ms"),
            )
        }
    }
}

/// [`contain`] with the relay's own metrics and handler deadline; the request is then
/// counted under its route with the status it was answered.
pub async fn guarded(
    state: &AppState,
    request: RequestContext,
    handler: impl Future<Output = Response<Full<Bytes>>>,
) -> Response<Full<Bytes>> {
    let route = request.route;
    let response = contain(
        &state.metrics,
        state.config.server.handler_timeout(),
        request,
        handler,
    )
    .await;
    state.metrics.request(route, response.status().as_u16());
    response
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tracing_test::traced_test;

    fn hosts_request(request_id: u64) -> RequestContext {
        let request = Request::get("/hosts?verbose=1").body(()).unwrap();
        RequestContext::new("hosts", &request, request_id)
    }

    /// A handler that answers 200 unless told to panic.
    async fn handler(panics: bool) -> Response<Full<Bytes>> {
        if panics {
            panic!("the host table view broke");
        }
        Response::new(Full::new(Bytes::from_static(b"fine")))
    }

    async fn body_text(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The exposition of `metrics` alone (no registry, upstream or event state).
    fn metrics_text(metrics: &Metrics) -> String {
        metrics.encode(
            Default::default(),
            Default::default(),
            Default::default(),
            Default::default(),
            Default::default(),
        )
    }

    #[tokio::test]
    #[traced_test]
    async fn a_panicking_handler_is_answered_500_logged_with_method_and_path_and_counted() {
        let metrics = Metrics::new();
        let response = contain(
            &metrics,
            Duration::from_secs(5),
            hosts_request(7),
            handler(true),
        )
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_text(response).await;
        assert!(body.contains(r#""error":"internal_error""#), "{body}");
        assert!(body.contains("request 7"), "{body}");
        assert!(logs_contain("ERROR"));
        assert!(logs_contain("handler panicked; answered 500"));
        assert!(logs_contain("request_id=7"));
        assert!(logs_contain("method=GET"));
        assert!(logs_contain(r#"path="/hosts""#));
        assert!(logs_contain("the host table view broke"));
        let text = metrics_text(&metrics);
        assert!(
            text.contains(r#"relay_handler_failures_total{route="hosts",kind="panic"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    #[traced_test]
    async fn a_stuck_handler_is_answered_504_after_the_timeout() {
        let metrics = Metrics::new();
        let stuck = async {
            std::future::pending::<()>().await;
            handler(false).await
        };
        let response = contain(&metrics, Duration::from_millis(20), hosts_request(8), stuck).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = body_text(response).await;
        assert!(body.contains(r#""error":"handler_timeout""#), "{body}");
        assert!(logs_contain("handler timed out; answered 504"));
        assert!(logs_contain("timeout_ms=20"));
        let text = metrics_text(&metrics);
        assert!(
            text.contains(r#"relay_handler_failures_total{route="hosts",kind="timeout"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    #[traced_test]
    async fn a_healthy_handler_passes_through_untouched() {
        let metrics = Metrics::new();
        let response = contain(
            &metrics,
            Duration::from_secs(5),
            hosts_request(9),
            handler(false),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, "fine");
        assert!(!logs_contain("handler"));
    }
}
