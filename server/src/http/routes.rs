//! Request routing: what each path answers, on the normal lane and on the refusal lane.
//! The connection service (`http::serve_route`) runs `respond` inside the request boundary
//! (`guard`); this module knows only its routes and the shared response builders.
//!
//! Probe paths answer from atomics only (no locks, no I/O), so a probe is never queued
//! behind other work except the declared CPU cost every request pays. Request bodies are
//! read only by `requestCrawl` (`/xrpc/com.atproto.sync.requestCrawl`; and the admin API's routes, through the same reader),
//! bounded in size and time.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::dispatch::ConnectionTurn;
use super::response::{error, json, metrics, retry_later, shed, text};
use super::xrpc;
use super::AppState;
use crate::atproto::frame::SUBSCRIBE_REPOS_PATH;
use crate::rt::fault::{self, Fault};
use crate::rt::time::timeout;
use crate::upstream::{CrawlError, CrawlWindow};

/// Largest accepted `requestCrawl` (or admin) body.
const CRAWL_BODY_BYTES_MAX: usize = 4 * 1024;

/// The `requestCrawl` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrawlRequest {
    hostname: String,
}

/// Which lane a request arrived on.
#[derive(Clone, Copy, Debug)]
pub enum Lane<'a> {
    /// An admitted connection, with its dispatch turn.
    Admitted(&'a ConnectionTurn),
    /// A connection the relay refused (for `Refused`'s reason): probes and metrics are
    /// answered, everything else is told to come back later.
    Refusal(Refused),
    /// A connection accepted when the refusal lane had no room for it, on the small budget
    /// reserved for probes: `/_healthz` and `/_readyz` are answered, nothing else.
    ProbeReserve,
}

/// Why a connection was sent to the refusal lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The registry is full (or shutting down): `503` with `Retry-After`.
    Capacity,
    /// Its address already holds `server.max_connections_per_ip`: `429` with `Retry-After`.
    PerAddress,
}

/// The fixed set of routes; the metric label comes from here, never from the raw path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Healthz,
    Readyz,
    Metrics,
    Hosts,
    RequestCrawl,
    ListHosts,
    GetHostStatus,
    /// `subscribeRepos`: its handshake is answered by `subscribe` on an admitted
    /// connection; here only on the refusal lanes (or without an upgrade).
    SubscribeRepos,
    XrpcHealth,
    XrpcUnknown,
    Other,
}

impl Route {
    /// The route that answers `path`.
    pub(super) fn of(path: &str) -> Self {
        match path {
            "/_healthz" => Self::Healthz,
            "/_readyz" => Self::Readyz,
            "/metrics" => Self::Metrics,
            "/hosts" => Self::Hosts,
            xrpc::REQUEST_CRAWL_PATH => Self::RequestCrawl,
            xrpc::LIST_HOSTS_PATH => Self::ListHosts,
            xrpc::GET_HOST_STATUS_PATH => Self::GetHostStatus,
            xrpc::HEALTH_PATH => Self::XrpcHealth,
            SUBSCRIBE_REPOS_PATH => Self::SubscribeRepos,
            _ if path.starts_with(xrpc::XRPC_PREFIX) => Self::XrpcUnknown,
            _ => Self::Other,
        }
    }

    /// The route's metric label (and the request boundary's).
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Hosts => "hosts",
            Self::RequestCrawl => "request_crawl",
            Self::ListHosts => "list_hosts",
            Self::GetHostStatus => "get_host_status",
            Self::SubscribeRepos => "subscribe_repos",
            Self::XrpcHealth => "xrpc_health",
            Self::XrpcUnknown => "xrpc_unknown",
            Self::Other => "other",
        }
    }

    /// Methods the route accepts (for 405 + `Allow`).
    fn allows(self, method: &Method) -> Result<(), &'static str> {
        match self {
            Self::RequestCrawl if method == Method::POST => Ok(()),
            Self::RequestCrawl => Err("POST"),
            Self::Other | Self::XrpcUnknown => Ok(()),
            _ if matches!(*method, Method::GET | Method::HEAD) => Ok(()),
            _ => Err("GET, HEAD"),
        }
    }

    /// Answered even when the relay is at its connection limit, and never queued for the
    /// dispatch turn: these answer from atomics.
    pub(super) fn served_at_capacity(self) -> bool {
        self.is_probe() || self == Self::Metrics
    }

    /// A liveness or readiness probe: answered even on the reserved probe budget.
    pub(super) fn is_probe(self) -> bool {
        matches!(self, Self::Healthz | Self::Readyz | Self::XrpcHealth)
    }

    /// An XRPC method's route: its errors are answered in lexicon terms.
    pub(super) fn is_xrpc(self) -> bool {
        matches!(
            self,
            Self::RequestCrawl
                | Self::ListHosts
                | Self::GetHostStatus
                | Self::SubscribeRepos
                | Self::XrpcHealth
                | Self::XrpcUnknown
        )
    }
}

/// What `route` answers `request` from `client` on `lane`: the handler the request
/// boundary runs.
pub(super) async fn respond(
    state: &AppState,
    request: Request<Incoming>,
    route: Route,
    lane: Lane<'_>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    match route.allows(request.method()) {
        Err(allowed) => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            response
        }
        Ok(())
            if matches!(lane, Lane::Refusal(Refused::PerAddress))
                && !route.served_at_capacity() =>
        {
            retry_later(
                state,
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "per_ip_limit",
                    "too many connections from your address; retry later",
                ),
            )
        }
        Ok(())
            if matches!(lane, Lane::Refusal(_)) && !route.served_at_capacity()
                || matches!(lane, Lane::ProbeReserve) && !route.is_probe() =>
        {
            retry_later(
                state,
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection limit reached, retry later\n",
                ),
            )
        }
        Ok(()) => match route {
            Route::Healthz => match liveness(state) {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            Route::XrpcHealth => xrpc::health(liveness(state)),
            Route::Readyz if state.is_ready() => text(StatusCode::OK, "ready\n"),
            Route::Readyz if state.is_shutting_down() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting_down\n",
            ),
            Route::Readyz => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            // With an admin listener, the metrics live there only: the public listener
            // does not tell anonymous callers what the relay is doing.
            Route::Metrics if state.config.admin.enabled() => text(
                StatusCode::NOT_FOUND,
                "metrics are served on the admin listener\n",
            ),
            Route::Metrics => metrics(state),
            Route::Hosts | Route::RequestCrawl | Route::ListHosts | Route::GetHostStatus
                if state.memory.shed() =>
            {
                shed(state)
            }
            Route::Hosts => {
                injected_handler_faults().await;
                let views = state.upstreams.views();
                state
                    .cpu
                    .spend(state.config.cpu.host_listing(views.len()))
                    .await;
                json(StatusCode::OK, &views)
            }
            Route::RequestCrawl => {
                injected_handler_faults().await;
                request_crawl(state, request, client).await
            }
            Route::ListHosts => {
                injected_handler_faults().await;
                let (response, listed) = xrpc::list_hosts(state, &request);
                state.cpu.spend(state.config.cpu.host_listing(listed)).await;
                response
            }
            Route::GetHostStatus => {
                injected_handler_faults().await;
                state.cpu.spend(state.config.cpu.host_listing(1)).await;
                xrpc::get_host_status(state, &request)
            }
            Route::SubscribeRepos => error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "com.atproto.sync.subscribeRepos is a WebSocket subscription: send an upgrade",
            ),
            Route::XrpcUnknown => xrpc::method_not_implemented(request.uri().path()),
            Route::Other => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// Liveness (`/_healthz`, `_health`): fine, or why the relay should be restarted. Answered
/// from atomics.
fn liveness(state: &AppState) -> Result<(), String> {
    match (state.vitals.lost(), state.events.stalled_for_ms()) {
        (None, None) => Ok(()),
        // Half broken (e.g. nothing is persisted any more): ask to be restarted.
        (Some(task), _) => Err(format!("vital task lost: {task}")),
        // Alive but stuck: events wait and the log does not move.
        (None, Some(waited_ms)) => Err(format!(
            "event log stalled: a batch has waited {} s for its commit",
            waited_ms / 1_000
        )),
    }
}

/// The wind tunnel's handler faults, at the top of the routes that do real work (probes
/// answer from atomics and have no handler code to fail): a panic, or a stall that never
/// ends. Both are no-ops outside simulation.
async fn injected_handler_faults() {
    if fault::active(Fault::HandlerPanic) {
        std::panic::panic_any(fault::INJECTED_HANDLER_PANIC);
    }
    if fault::active(Fault::HandlerStall) {
        std::future::pending::<()>().await;
    }
}

/// `requestCrawl`: refused while the operator has switched it off; counted against
/// `client`'s limit before its body is read (a refused caller costs no body read); then
/// validated and handed to the host table.
async fn request_crawl(
    state: &AppState,
    request: Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    if !state.crawl_enabled.load(Ordering::SeqCst) {
        state.metrics.crawl_refused("crawl_disabled");
        return error(
            StatusCode::FORBIDDEN,
            "crawl_disabled",
            "requestCrawl is switched off on this relay",
        );
    }
    let window = state.upstreams.crawl_window();
    if !state.crawl_requests.try_count(client, window.index) {
        tracing::debug!(%client, "requestCrawl refused: the caller's limit for this window");
        state.metrics.crawl_refused("crawl_rate_limit");
        return retry_at_window_end(
            window,
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "crawl_rate_limit",
                &format!(
                    "at most {} requestCrawl requests per address every {} s; retry later",
                    state.config.upstream.crawl_per_client_max,
                    state.config.upstream.crawl_window_s
                ),
            ),
        );
    }
    let crawl: CrawlRequest =
        match read_json_body(state, request, r#"{"hostname": "<dns name>"}"#).await {
            Ok(crawl) => crawl,
            Err(response) => {
                state.metrics.crawl_refused("invalid_body");
                return response;
            }
        };
    match state.upstreams.request_crawl(&crawl.hostname).await {
        Ok(accepted) => json(StatusCode::OK, &accepted),
        Err(refused) => {
            state.metrics.crawl_refused(refused.code());
            crawl_refusal(state, refused)
        }
    }
}

/// A small JSON body (at most [`CRAWL_BODY_BYTES_MAX`], within the header-read timeout)
/// read as a `T`, or the error response that says why not (naming the `expected` shape).
pub(super) async fn read_json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request<Incoming>,
    expected: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = Limited::new(request.into_body(), CRAWL_BODY_BYTES_MAX);
    let bytes = match timeout(state.config.server.header_read_timeout(), body.collect()).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time",
            ))
        }
        Ok(Err(cause)) if cause.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("expected a JSON body of at most {CRAWL_BODY_BYTES_MAX} bytes"),
            ))
        }
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "body_error",
                "the request body could not be read",
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    serde_json::from_slice(&bytes).map_err(|cause| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("expected {expected}: {cause}"),
        )
    })
}

/// The answer to a refused `requestCrawl` (or admin ban) for `refused`.
pub(super) fn crawl_refusal(state: &AppState, refused: CrawlError) -> Response<Full<Bytes>> {
    let code = refused.code();
    match refused {
        CrawlError::InvalidHostname(_)
        | CrawlError::InternalName(_)
        | CrawlError::HostNotFound(_) => error(StatusCode::BAD_REQUEST, code, &refused.to_string()),
        CrawlError::Banned { .. } | CrawlError::HostTableFull { .. } => {
            error(StatusCode::FORBIDDEN, code, &refused.to_string())
        }
        CrawlError::NewHostLimit { window, .. } | CrawlError::ReactivationLimit { window } => {
            retry_at_window_end(
                window,
                error(StatusCode::TOO_MANY_REQUESTS, code, &refused.to_string()),
            )
        }
        CrawlError::Store(cause) => {
            tracing::warn!(error = %cause, "the host table could not be written");
            retry_later(
                state,
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the host table is unavailable; retry",
                ),
            )
        }
    }
}

/// `response` with `Retry-After` at the end of `window`, when its limits start afresh.
fn retry_at_window_end(
    window: CrawlWindow,
    mut response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(window.retry_after_s));
    response
}
