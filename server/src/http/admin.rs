//! The admin API: its own listener (`admin.listen`), bound only when `admin.secret` is set,
//! every request authenticated by `Authorization: Bearer <secret>` (compared in constant
//! time) before anything else is looked at. It serves `/metrics` and the operator's
//! controls: bans, the `requestCrawl` switch, and the host table page by page. Every
//! action is logged with the caller's address and what it did.
//!
//! Admin connections never touch the public listener's registry, shares or dispatch turn:
//! at most [`ADMIN_CONNECTIONS_MAX`] at once (more are closed unanswered), one request each,
//! within the public header-read and handler timeouts.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::host_pages::{page, PageRequest};
use super::response::{error, json, metrics};
use super::routes::{crawl_refusal, read_json_body};
use super::AppState;
use crate::rt::net::TcpListener;
use crate::rt::stop::StopSignal;
use crate::rt::time::{sleep, timeout, Duration};
use crate::rt::{self, HyperTimer};
use crate::upstream::{EventLimit, HostView};

/// Admin connections served at once; more are closed without an answer.
pub const ADMIN_CONNECTIONS_MAX: usize = 16;

/// Hosts per `/admin/hosts` page when the request names no `limit`.
const HOSTS_PAGE_DEFAULT: usize = 100;

/// The largest `/admin/hosts` page.
pub const HOSTS_PAGE_MAX: usize = 1_000;

/// The shortest `admin.secret` accepted.
pub const SECRET_CHARS_MIN: usize = 16;

/// The admin listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (bound only when `secret` is set).
    pub listen: SocketAddr,
    /// The bearer token every admin request must carry. Empty (the default): no admin
    /// listener. Never written out by `print-config`; set it through the environment
    /// (`RELAY__ADMIN__SECRET`) to keep it out of files.
    #[serde(skip_serializing)]
    pub secret: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            secret: String::new(),
        }
    }
}

impl AdminConfig {
    /// Whether the admin listener runs.
    pub fn enabled(&self) -> bool {
        !self.secret.is_empty()
    }

    /// Checks of the secret.
    pub fn check(&self) -> Result<(), String> {
        if self.enabled() && self.secret.chars().count() < SECRET_CHARS_MIN {
            return Err(format!(
                "admin.secret must be at least {SECRET_CHARS_MIN} characters (or empty to disable the admin listener)"
            ));
        }
        Ok(())
    }
}

/// Whether `given` equals `expected`, in time that depends only on their lengths (never on
/// where they first differ), so a caller cannot guess the secret byte by byte.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let difference = given
        .iter()
        .zip(expected)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b));
    (given.len() == expected.len()) & (difference == 0)
}

/// Serve the admin listener until `stop` is signalled.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, stop: StopSignal) {
    let connections = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        tokio::select! {
            biased;
            () = stop.stopped() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        tracing::warn!(%peer, "admin connections full: closing without an answer");
                        continue;
                    };
                    let state = Arc::clone(&state);
                    rt::spawn(async move {
                        serve_connection(&state, stream, peer).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_connection(
    state: &Arc<AppState>,
    stream: crate::rt::net::TcpStream,
    peer: SocketAddr,
) {
    let service_state = Arc::clone(state);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(respond(&state, request, peer).await) }
    });
    let server = &state.config.server;
    let mut builder = http1::Builder::new();
    builder
        .timer(HyperTimer)
        .auto_date_header(server.date_header)
        .max_header_size(server.max_header_bytes)
        .header_read_timeout(server.header_read_timeout())
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let budget = server.header_read_timeout() + server.handler_timeout();
    match timeout(budget, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, %peer, "admin connection ended with an error"),
        Err(_) => tracing::debug!(%peer, "admin connection timed out"),
    }
}

/// Whether `request` carries `Authorization: Bearer <admin.secret>`.
fn authorized(state: &AppState, request: &Request<Incoming>) -> bool {
    let expected = state.config.admin.secret.as_bytes();
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| same_secret(given, expected))
}

/// `/admin/ban` and `/admin/unban` bodies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameRequest {
    name: String,
}

/// The `/admin/host_limits` body: both limits, or neither to go back to the configured ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostLimitRequest {
    hostname: String,
    events_per_second: Option<u32>,
    events_burst: Option<u32>,
}

/// The `/admin/crawl` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrawlSwitch {
    enabled: bool,
}

/// One `/admin/hosts` page.
#[derive(Debug, Serialize)]
struct HostsPage {
    hosts: Vec<HostView>,
    /// The `cursor` of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

async fn respond(
    state: &AppState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let client = peer.ip();
    if !authorized(state, &request) {
        tracing::warn!(%client, path = request.uri().path(), "admin request refused: no or wrong bearer token");
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs Authorization: Bearer <admin.secret>",
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::GET, "/metrics") => metrics(state),
        (Method::GET, "/admin/hosts") => hosts_page(state, &request),
        (Method::GET, "/admin/bans") => json(StatusCode::OK, &state.upstreams.bans()),
        (Method::POST, "/admin/ban") => {
            let name = match read_name(state, request).await {
                Ok(name) => name,
                Err(response) => return response,
            };
            match state.upstreams.ban(&name).await {
                Ok(outcome) => {
                    tracing::info!(%client, name = %outcome.name, hosts_stopped = outcome.hosts_stopped, "admin: ban");
                    json(StatusCode::OK, &outcome)
                }
                Err(refused) => crawl_refusal(state, refused),
            }
        }
        (Method::POST, "/admin/unban") => {
            let name = match read_name(state, request).await {
                Ok(name) => name,
                Err(response) => return response,
            };
            match state.upstreams.unban(&name).await {
                Ok(lifted) => {
                    tracing::info!(%client, %name, lifted, "admin: unban");
                    json(StatusCode::OK, &serde_json::json!({ "lifted": lifted }))
                }
                Err(refused) => crawl_refusal(state, refused),
            }
        }
        (Method::POST, "/admin/host_limits") => host_limits(state, request, client).await,
        (Method::POST, "/admin/crawl") => {
            let switch =
                match read_json_body::<CrawlSwitch>(state, request, r#"{"enabled": true|false}"#)
                    .await
                {
                    Ok(switch) => switch,
                    Err(response) => return response,
                };
            state.crawl_enabled.store(switch.enabled, Ordering::SeqCst);
            tracing::info!(%client, enabled = switch.enabled, "admin: requestCrawl switched");
            json(
                StatusCode::OK,
                &serde_json::json!({ "enabled": switch.enabled }),
            )
        }
        (_, path) => {
            tracing::info!(%client, path, "admin: unknown route");
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "admin routes: GET /metrics, GET /admin/hosts?limit=N&cursor=<hostname>, \
                 GET /admin/bans, POST /admin/ban, POST /admin/unban, POST /admin/host_limits, \
                 POST /admin/crawl",
            )
        }
    }
}

/// The name a `/admin/ban` or `/admin/unban` body (`{"name": …}`) names, or the error
/// response that says why there is none.
async fn read_name(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<String, Response<Full<Bytes>>> {
    read_json_body::<NameRequest>(state, request, r#"{"name": "<dns name>"}"#)
        .await
        .map(|body| body.name)
}

/// `POST /admin/host_limits`: one host's own event limit, or back to the configured one.
async fn host_limits(
    state: &AppState,
    request: Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    let body: HostLimitRequest = match read_json_body(
        state,
        request,
        r#"{"hostname": "<dns name>", "events_per_second": N, "events_burst": N} (or neither limit)"#,
    )
    .await
    {
        Ok(body) => body,
        Err(response) => return response,
    };
    let limit = match (body.events_per_second, body.events_burst) {
        (None, None) => None,
        (Some(events_per_second), Some(events_burst)) => match (EventLimit {
            events_per_second,
            events_burst,
        })
        .check()
        {
            Ok(limit) => Some(limit),
            Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_limit", &message),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                "give both events_per_second and events_burst, or neither to go back to the configured limit",
            )
        }
    };
    match state.upstreams.set_event_limit(&body.hostname, limit).await {
        Ok(Some(view)) => {
            tracing::info!(%client, hostname = %body.hostname, ?limit, "admin: host event limit");
            json(StatusCode::OK, &view)
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_host",
            &format!("{} is not in the host table", body.hostname),
        ),
        Err(cause) => crawl_refusal(state, cause.into()),
    }
}

/// One page of hosts: `?limit=N` (1 to [`HOSTS_PAGE_MAX`], default
/// [`HOSTS_PAGE_DEFAULT`]) after `?cursor=<hostname>`, in hostname order.
fn hosts_page(state: &AppState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match PageRequest::of(request.uri().query(), HOSTS_PAGE_DEFAULT, HOSTS_PAGE_MAX) {
        Ok(page_request) => {
            let (hosts, cursor) = page(&state.upstreams, &page_request);
            json(StatusCode::OK, &HostsPage { hosts, cursor })
        }
        Err((status, code, message)) => error(status, code, &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_when_every_byte_and_the_length_match() {
        let secret = b"correct horse battery";
        assert!(same_secret(secret, secret));
        assert!(!same_secret(b"correct horse batterz", secret));
        assert!(!same_secret(b"Correct horse battery", secret));
        assert!(!same_secret(b"correct horse", secret), "a prefix");
        assert!(!same_secret(b"correct horse battery!", secret), "longer");
        assert!(!same_secret(b"", secret));
    }

    #[test]
    fn a_short_secret_is_refused_and_an_empty_one_disables_admin() {
        let config = AdminConfig {
            secret: "short".to_owned(),
            ..AdminConfig::default()
        };
        assert_eq!(
            config.check().unwrap_err(),
            "admin.secret must be at least 16 characters (or empty to disable the admin listener)"
        );
        assert!(!AdminConfig::default().enabled());
        assert!(AdminConfig::default().check().is_ok());
    }
}
