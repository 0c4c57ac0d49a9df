//! The relay's XRPC surface (atproto's HTTP API under `/xrpc/`): `com.atproto.sync.requestCrawl`
//! (its handler is `routes`'), `com.atproto.sync.listHosts`, `com.atproto.sync.getHostStatus`
//! and `_health` here, and from the per-account state the store keeps,
//! `com.atproto.sync.listRepos`, `com.atproto.sync.getRepoStatus` and
//! `com.atproto.sync.getLatestCommit`. `com.atproto.sync.subscribeRepos` (the firehose, a
//! WebSocket subscription) is `subscribe`'s, at
//! [`crate::atproto::frame::SUBSCRIBE_REPOS_PATH`]. Shapes and error names follow the
//! lexicons as published in `@atproto/api` 0.19.19 (`dist/client/lexicons.js`:
//! `com.atproto.sync.requestCrawl`, `com.atproto.sync.listHosts`,
//! `com.atproto.sync.getHostStatus`, `com.atproto.sync.defs#hostStatus`, `listRepos`,
//! `getRepoStatus`, `getLatestCommit`); the status names of error responses without a
//! lexicon name are `@atproto/xrpc`'s (`ResponseType`).
//!
//! Errors on these routes are `{"error", "message"}` with the lexicon's names: the
//! relay's own codes (shared with the admin API, which keeps them) are translated once, for
//! every answer of an XRPC route, by [`in_lexicon_terms`], so a refusal from the request
//! boundary, the memory breaker or the refusal lane reads the same to an atproto client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::host_pages::{page, parameters, percent_decoded, PageRequest};
use super::response::{error, error_body, json};
use super::AppState;
use crate::atproto::syntax::is_did;
use crate::store::{AccountRow, StoreError};
use crate::upstream::{hostname, HostPhase, HostView, QUARANTINE_BANNED};

/// Where every XRPC method lives: `/xrpc/<method>`.
pub const XRPC_PREFIX: &str = "/xrpc/";

/// `com.atproto.sync.requestCrawl` (POST `{"hostname": …}`).
pub const REQUEST_CRAWL_PATH: &str = "/xrpc/com.atproto.sync.requestCrawl";

/// `com.atproto.sync.listHosts` (GET `?limit=&cursor=`).
pub const LIST_HOSTS_PATH: &str = "/xrpc/com.atproto.sync.listHosts";

/// `com.atproto.sync.getHostStatus` (GET `?hostname=`).
pub const GET_HOST_STATUS_PATH: &str = "/xrpc/com.atproto.sync.getHostStatus";

/// `com.atproto.sync.listRepos` (GET `?limit=&cursor=`).
pub const LIST_REPOS_PATH: &str = "/xrpc/com.atproto.sync.listRepos";

/// `com.atproto.sync.getRepoStatus` (GET `?did=`).
pub const GET_REPO_STATUS_PATH: &str = "/xrpc/com.atproto.sync.getRepoStatus";

/// `com.atproto.sync.getLatestCommit` (GET `?did=`).
pub const GET_LATEST_COMMIT_PATH: &str = "/xrpc/com.atproto.sync.getLatestCommit";

/// `_health` (GET): the version, or 503 when liveness fails.
pub const HEALTH_PATH: &str = "/xrpc/_health";

/// `listHosts` page size when the request names no `limit` (the lexicon's default).
const LIST_HOSTS_DEFAULT: usize = 200;

/// The largest `listHosts` page (the lexicon's maximum).
const LIST_HOSTS_MAX: usize = 1_000;

/// `listRepos` page size when the request names no `limit` (the lexicon's default).
const LIST_REPOS_DEFAULT: usize = 500;

/// The largest `listRepos` page (the lexicon's maximum).
const LIST_REPOS_MAX: usize = 1_000;

/// `com.atproto.sync.defs#hostStatus`: how a relay's phases read to atproto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Subscribed and reading (`connected`).
    Active,
    /// Not subscribed right now but on its way: no worker yet, the startup jitter, or
    /// dialling (`idle`, `waiting`, `connecting`).
    Idle,
    /// Failing: waiting out a backoff, dormant after failing too often, or quarantined for
    /// what it sent or where it points (`backoff`, `dormant`, `quarantined`).
    Offline,
    /// Connected, but its event rate limit is holding its events back right now.
    Throttled,
    /// Under a name an operator banned (quarantined `banned`).
    Banned,
}

impl HostStatus {
    /// The status of the host `view` shows.
    pub fn of(view: &HostView) -> Self {
        match view.phase {
            HostPhase::Quarantined if view.quarantined == Some(QUARANTINE_BANNED) => Self::Banned,
            HostPhase::Connected if view.throttled => Self::Throttled,
            HostPhase::Connected => Self::Active,
            HostPhase::Idle | HostPhase::Waiting | HostPhase::Connecting => Self::Idle,
            HostPhase::Backoff | HostPhase::Dormant | HostPhase::Quarantined => Self::Offline,
        }
    }
}

/// `com.atproto.sync.listHosts#host`, also `getHostStatus`'s output. `accountCount` is
/// never given: the relay does not count accounts.
#[derive(Debug, Serialize)]
struct Host {
    hostname: String,
    /// The host's upstream seq the relay has read up to (absent before its first event).
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    status: HostStatus,
}

impl From<HostView> for Host {
    fn from(view: HostView) -> Self {
        Self {
            status: HostStatus::of(&view),
            seq: (view.cursor > 0).then_some(view.cursor),
            hostname: view.hostname,
        }
    }
}

/// `com.atproto.sync.listHosts`' output.
#[derive(Debug, Serialize)]
struct HostList {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    hosts: Vec<Host>,
}

/// The hosts page `request` asks for (in hostname order; the cursor is the last
/// hostname of the page), and the number of hosts on it (for the CPU model).
pub(super) fn list_hosts(
    state: &AppState,
    request: &Request<Incoming>,
) -> (Response<Full<Bytes>>, usize) {
    match PageRequest::of(request.uri().query(), LIST_HOSTS_DEFAULT, LIST_HOSTS_MAX) {
        Ok(page_request) => {
            let (hosts, cursor) = page(&state.upstreams, &page_request);
            let listed = hosts.len();
            let hosts = hosts.into_iter().map(Host::from).collect();
            (json(StatusCode::OK, &HostList { cursor, hosts }), listed)
        }
        Err((status, code, message)) => (error(status, code, &message), 0),
    }
}

/// The host `?hostname=` names, or `HostNotFound`.
pub(super) fn get_host_status(
    state: &AppState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let requested = match parameters(request.uri().query(), ["hostname"]) {
        Ok([Some(hostname)]) => hostname,
        Ok([None]) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "the hostname parameter is required",
            )
        }
        Err((status, code, message)) => return error(status, code, &message),
    };
    // One label, and a port, will do: a development host (`localhost`, `localhost:2583`)
    // may be in the table.
    let hostname = match hostname::validate_name_with_port(requested) {
        Ok((entry, _)) => entry,
        Err(cause) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &cause.to_string(),
            )
        }
    };
    match state.upstreams.view_of(&hostname) {
        Some(view) => json(StatusCode::OK, &Host::from(view)),
        None => error(
            StatusCode::BAD_REQUEST,
            "HostNotFound",
            &format!("{hostname} is not in this relay's host table"),
        ),
    }
}

/// `com.atproto.sync.listRepos#repo`.
#[derive(Debug, Serialize)]
struct Repo {
    did: String,
    /// The latest commit's CID.
    head: String,
    rev: String,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

/// `com.atproto.sync.listRepos`' output.
#[derive(Debug, Serialize)]
struct RepoList {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    repos: Vec<Repo>,
}

/// `com.atproto.sync.getRepoStatus`' output.
#[derive(Debug, Serialize)]
struct RepoStatus {
    did: String,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rev: Option<String>,
}

/// `com.atproto.sync.getLatestCommit`' output.
#[derive(Debug, Serialize)]
struct LatestCommit {
    cid: String,
    rev: String,
}

/// The answer to a store call that failed (the relay's code; `NotEnoughResources` in
/// lexicon terms).
fn store_unavailable(cause: &StoreError) -> Response<Full<Bytes>> {
    tracing::warn!(error = %cause, "account read failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the account table cannot be read right now; retry later",
    )
}

/// The accounts page `request` asks for (accounts with a commit, in DID order; the cursor
/// is the last DID of the page).
pub(super) async fn list_repos(
    state: &AppState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let page_request =
        match PageRequest::of(request.uri().query(), LIST_REPOS_DEFAULT, LIST_REPOS_MAX) {
            Ok(page_request) => page_request,
            Err((status, code, message)) => return error(status, code, &message),
        };
    let mut accounts = match state
        .events
        .accounts_after(page_request.cursor.as_deref(), page_request.limit + 1)
        .await
    {
        Ok(accounts) => accounts,
        Err(cause) => return store_unavailable(&cause),
    };
    let more = accounts.len() > page_request.limit;
    accounts.truncate(page_request.limit);
    let cursor = more
        .then(|| accounts.last().map(|account| account.did.clone()))
        .flatten();
    let repos = accounts
        .into_iter()
        .filter_map(|account| {
            Some(Repo {
                head: account.commit_cid?,
                rev: account.rev?,
                did: account.did,
                active: account.active,
                status: account.status,
            })
        })
        .collect();
    json(StatusCode::OK, &RepoList { cursor, repos })
}

/// The account `?did=` names, or the answer that ends the request (bad parameter,
/// `RepoNotFound`, store unavailable).
async fn requested_account(
    state: &AppState,
    request: &Request<Incoming>,
) -> Result<AccountRow, Response<Full<Bytes>>> {
    let did = match parameters(request.uri().query(), ["did"]) {
        Ok([Some(did)]) => match percent_decoded(did) {
            Some(did) if is_did(&did) => did,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    &format!("{did:?} is not a DID"),
                ))
            }
        },
        Ok([None]) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "the did parameter is required",
            ))
        }
        Err((status, code, message)) => return Err(error(status, code, &message)),
    };
    match state.events.account(&did).await {
        Ok(Some(account)) => Ok(account),
        Ok(None) => Err(error(
            StatusCode::BAD_REQUEST,
            "RepoNotFound",
            &format!("no event about {did} has reached this relay"),
        )),
        Err(cause) => Err(store_unavailable(&cause)),
    }
}

/// `getRepoStatus`: the account's hosting status and latest revision, or `RepoNotFound`.
pub(super) async fn get_repo_status(
    state: &AppState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    match requested_account(state, request).await {
        Ok(account) => json(
            StatusCode::OK,
            &RepoStatus {
                did: account.did,
                active: account.active,
                status: account.status,
                rev: account.rev,
            },
        ),
        Err(response) => response,
    }
}

/// `getLatestCommit`: the account's latest commit `{cid, rev}`; `RepoNotFound` when the
/// relay has none (or the account is deleted), `RepoTakendown`, `RepoSuspended` or
/// `RepoDeactivated` when its status says so.
pub(super) async fn get_latest_commit(
    state: &AppState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let account = match requested_account(state, request).await {
        Ok(account) => account,
        Err(response) => return response,
    };
    let refused = |code: &str, why: &str| {
        error(
            StatusCode::BAD_REQUEST,
            code,
            &format!("{} {why}", account.did),
        )
    };
    match (account.active, account.status.as_deref()) {
        (false, Some("takendown")) => return refused("RepoTakendown", "is taken down"),
        (false, Some("suspended")) => return refused("RepoSuspended", "is suspended"),
        (false, Some("deactivated")) => return refused("RepoDeactivated", "is deactivated"),
        (false, Some("deleted")) => return refused("RepoNotFound", "is deleted"),
        _ => {}
    }
    match (account.commit_cid, account.rev) {
        (Some(cid), Some(rev)) => json(StatusCode::OK, &LatestCommit { cid, rev }),
        _ => refused("RepoNotFound", "has no commit on this relay yet"),
    }
}

/// `_health`: `{"version"}`, or 503 with the reason liveness fails (`liveness`, the
/// `/_healthz` check).
pub(super) fn health(liveness: Result<(), String>) -> Response<Full<Bytes>> {
    let version = env!("CARGO_PKG_VERSION");
    match liveness {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "version": version })),
        Err(reason) => {
            let mut body = error_body("NotEnoughResources", &reason);
            body["version"] = version.into();
            json(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// An `/xrpc/` method this relay does not implement.
pub(super) fn method_not_implemented(path: &str) -> Response<Full<Bytes>> {
    let method = path.strip_prefix(XRPC_PREFIX).unwrap_or(path);
    error(
        StatusCode::NOT_IMPLEMENTED,
        "MethodNotImplemented",
        &format!(
            "{method} is not implemented here; this relay implements com.atproto.sync.requestCrawl, \
             com.atproto.sync.listHosts, com.atproto.sync.getHostStatus, \
             com.atproto.sync.subscribeRepos, com.atproto.sync.listRepos, \
             com.atproto.sync.getRepoStatus, com.atproto.sync.getLatestCommit and _health"
        ),
    )
}

/// The lexicon's name for an error the relay calls `code`, answered with `status`: the
/// requestCrawl lexicon's `HostBanned` for a ban, otherwise `@atproto/xrpc`'s name of the
/// status (what an atproto client would call it without a name). A name already in
/// lexicon terms (capitalised) is kept.
fn lexicon_name(status: StatusCode, code: Option<&str>) -> String {
    match code {
        Some(code) if code.starts_with(|first: char| first.is_ascii_uppercase()) => {
            return code.to_owned()
        }
        Some("banned") => return "HostBanned".to_owned(),
        _ => {}
    }
    match status.as_u16() {
        401 => "AuthenticationRequired",
        403 => "Forbidden",
        413 => "PayloadTooLarge",
        429 => "RateLimitExceeded",
        501 => "MethodNotImplemented",
        502 => "UpstreamFailure",
        503 => "NotEnoughResources",
        504 => "UpstreamTimeout",
        400..=499 => "InvalidRequest",
        _ => "InternalServerError",
    }
    .to_owned()
}

/// `response` (an XRPC route's answer) with its error in lexicon terms: a JSON error body
/// gets the lexicon's name for its code (its other fields and every header kept), a plain
/// text one becomes `{"error", "message"}` with the text as the message. Successes pass.
pub(super) async fn in_lexicon_terms(response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let status = response.status();
    if status.is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut body) if body.get("error").is_some() => {
            body["error"] = lexicon_name(status, body["error"].as_str()).into();
            body
        }
        _ => error_body(
            &lexicon_name(status, None),
            String::from_utf8_lossy(&bytes).trim_end(),
        ),
    };
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = serde_json::to_vec(&body).expect("a JSON value always serialises");
    Response::from_parts(parts, Full::new(Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_codes_read_as_the_lexicons_names() {
        for (status, code, name) in [
            (400, "invalid_hostname", "InvalidRequest"),
            (400, "invalid_json", "InvalidRequest"),
            (408, "body_timeout", "InvalidRequest"),
            (413, "body_too_large", "PayloadTooLarge"),
            (403, "banned", "HostBanned"),
            (403, "crawl_disabled", "Forbidden"),
            (429, "crawl_rate_limit", "RateLimitExceeded"),
            (500, "internal_error", "InternalServerError"),
            (503, "memory_pressure", "NotEnoughResources"),
            (504, "handler_timeout", "UpstreamTimeout"),
            (400, "HostNotFound", "HostNotFound"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(lexicon_name(status, Some(code)), name, "{code}");
        }
    }

    #[tokio::test]
    async fn a_text_refusal_becomes_an_xrpc_error_with_its_headers() {
        let mut refused = super::super::response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached, retry later\n",
        );
        refused
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(5));
        let translated = in_lexicon_terms(refused).await;
        assert_eq!(translated.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(translated.headers()[hyper::header::RETRY_AFTER], "5");
        assert_eq!(translated.headers()[CONTENT_TYPE], "application/json");
        let body = translated.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            r#"{"error":"NotEnoughResources","message":"connection limit reached, retry later"}"#
        );
    }
}
