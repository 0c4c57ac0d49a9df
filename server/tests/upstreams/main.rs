//! Upstream subscriptions at the system boundary: real WebSocket upstreams on loopback, a
//! real SQLite file, the relay restarted on the same database.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ipld_core::ipld::Ipld;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use relay::atproto::frame::{self, Incoming, Kind, SUBSCRIBE_REPOS_PATH};
use relay::atproto::message::{Account, Commit, Identity, Info};
use relay::atproto::syntax::tid;
use relay::http::xrpc::REQUEST_CRAWL_PATH;
use relay::store::{HostStatus, Page, Store};
use relay::upstream::{HostPhase, HostView};
use relay::Observer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[path = "../support/mod.rs"]
mod support;
use support::{
    body_map, commit, commit_frame, commit_of, decode, relayed_commit_frame, stored_commit_bytes,
    wait_until, RunningRelay, ALLOW_LOOPBACK, NO_CRAWL_DNS,
};

fn temp_db(name: &str) -> PathBuf {
    support::temp_db("upstreams", name)
}

/// A WebSocket upstream that records each subscription's request URI and sends frames
/// `from..=to` on every connection, then stays open.
async fn upstream(from: u64, to: u64) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let uris = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&uris);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                // The error type is tungstenite's, not ours.
                #[allow(clippy::result_large_err)]
                let record = |request: &Request, response: Response| {
                    seen.lock().unwrap().push(request.uri().to_string());
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                for seq in from..=to {
                    if ws
                        .send(Message::binary(commit_frame(seq, 0)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    (port, uris)
}

/// What `/hosts` shows for `hostname`.
fn host_view(observer: &Observer, hostname: &str) -> HostView {
    observer
        .hosts()
        .into_iter()
        .find(|host| host.hostname == hostname)
        .unwrap_or_else(|| panic!("{hostname} is in the host table"))
}

/// Send one HTTP/1.1 request on a fresh connection; the whole response as text.
async fn exchange(addr: SocketAddr, request: String) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn crawl_request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn post_crawl(addr: SocketAddr, body: &str) -> String {
    post_crawl_at(addr, REQUEST_CRAWL_PATH, body).await
}

/// `body` POSTed to `path` (the crawl route, or where it used to be).
async fn post_crawl_at(addr: SocketAddr, path: &str, body: &str) -> String {
    exchange(addr, crawl_request(path, body)).await
}

/// Assert that `response` is a `429` with JSON error `code` and a `Retry-After` of at most
/// `window_s` seconds (and at least 1).
fn assert_too_many(response: &str, code: &str, window_s: u64) {
    assert!(
        response.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{response}"
    );
    assert!(
        response.contains(&format!(r#""error":"{code}""#)),
        "{response}"
    );
    let retry_after_s: u64 = response
        .lines()
        .find_map(|line| line.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After: {response}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..=window_s).contains(&retry_after_s), "{response}");
}

async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn events_are_persisted_with_their_cursor_which_a_restart_resumes_from() {
    let db = temp_db("resume");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    let (port, uris) = upstream(1, 5).await;
    let overrides = vec![
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
    ];
    let relay = RunningRelay::start(&overrides).await;
    let observer = relay.observer.clone();
    wait_until("the host's cursor reaches 5", || {
        observer
            .hosts()
            .first()
            .is_some_and(|h| h.cursor == 5 && h.phase == HostPhase::Connected)
    })
    .await;
    let persisted = Store::open(&db).unwrap();
    wait_until("the events and the cursor are persisted", || {
        persisted.hosts().unwrap()[0].cursor == 5
    })
    .await;
    let events = persisted.events_after(0, Page::events(100)).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|event| (event.seq, event.upstream_seq))
            .collect::<Vec<_>>(),
        (1..=5).map(|seq| (seq, seq)).collect::<Vec<_>>()
    );
    assert_eq!(
        frame::event_frame(events[2].kind, &events[2].body),
        relayed_commit_frame(3, 0, 3),
        "the body as sent, with the relay's seq"
    );
    assert_eq!(relay.observer.events().head_seq, 5);
    let stats = relay.observer.upstreams();
    assert_eq!((stats.workers_running, stats.events_total), (1, 5));
    assert!(relay
        .observer
        .metrics_text()
        .contains("relay_upstream_hosts{phase=\"connected\"} 1"));
    relay.stop().await;
    assert_eq!(
        uris.lock().unwrap().as_slice(),
        [format!("{SUBSCRIBE_REPOS_PATH}?cursor=0")]
    );

    // Restart on the same database: the subscription resumes from the persisted cursor, and
    // the replayed frames at or below it are skipped, not double-counted.
    let relay = RunningRelay::start(&overrides).await;
    let observer = relay.observer.clone();
    wait_until("the restarted relay resubscribes", || {
        uris.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        uris.lock().unwrap()[1],
        format!("{SUBSCRIBE_REPOS_PATH}?cursor=5")
    );
    wait_until("the replayed frames are read", || {
        observer
            .metrics_text()
            .contains("relay_upstream_duplicate_frames_total 5")
    })
    .await;
    assert_eq!(observer.hosts()[0].cursor, 5);
    assert_eq!(observer.events().head_seq, 5, "nothing persisted twice");
    relay.stop().await;
}

#[tokio::test]
async fn request_crawl_validates_input_and_failing_hosts_turn_dormant() {
    let db = temp_db("crawl");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        NO_CRAWL_DNS.to_owned(),
        "upstream.port=9".to_owned(),
        "upstream.dormant_after_failures=2".to_owned(),
        "upstream.backoff_base_ms=10".to_owned(),
        "upstream.backoff_cap_ms=20".to_owned(),
        "upstream.connect_timeout_ms=500".to_owned(),
    ])
    .await;
    for (body, status, code) in [
        ("{not json", "400 Bad Request", "InvalidRequest"),
        (
            r#"{"host":"a.example"}"#,
            "400 Bad Request",
            "InvalidRequest",
        ),
        (
            r#"{"hostname":"10.0.0.1"}"#,
            "400 Bad Request",
            "InvalidRequest",
        ),
        (
            r#"{"hostname":"a.example:443"}"#,
            "400 Bad Request",
            "InvalidRequest",
        ),
    ] {
        let response = post_crawl(relay.addr, body).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{body}: {response}"
        );
        assert!(
            response.contains(&format!(r#""error":"{code}""#)),
            "{body}: {response}"
        );
    }
    let huge = format!(r#"{{"hostname":"{}"}}"#, "a".repeat(5_000));
    assert!(post_crawl(relay.addr, &huge)
        .await
        .starts_with("HTTP/1.1 413 Payload Too Large\r\n"));

    // `.invalid` never resolves (RFC 6761), so every attempt fails.
    let accepted = post_crawl(relay.addr, r#"{"hostname":"Nothing-Here.invalid"}"#).await;
    assert!(accepted.starts_with("HTTP/1.1 200 OK\r\n"), "{accepted}");
    assert!(
        accepted.ends_with(
            r#"{"hostname":"nothing-here.invalid","id":1,"created":true,"worker_started":true}"#
        ),
        "{accepted}"
    );
    let observer = relay.observer.clone();
    wait_until("the host turns dormant and its worker exits", || {
        observer.hosts()[0].phase == HostPhase::Dormant && !observer.hosts()[0].worker_running
    })
    .await;
    assert_eq!(observer.upstreams().workers_running, 0);
    let row = Store::open(&db)
        .unwrap()
        .host("nothing-here.invalid")
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.status, row.consecutive_failures),
        (HostStatus::Dormant, 2)
    );

    // Asking again re-activates it with a fresh worker.
    let again = post_crawl(relay.addr, r#"{"hostname":"nothing-here.invalid"}"#).await;
    assert!(
        again.ends_with(r#""created":false,"worker_started":true}"#),
        "{again}"
    );
    // Once per window: when it is dormant again, asking does not wake it.
    wait_until("the host turns dormant again", || {
        observer.hosts()[0].phase == HostPhase::Dormant && !observer.hosts()[0].worker_running
    })
    .await;
    let third = post_crawl(relay.addr, r#"{"hostname":"nothing-here.invalid"}"#).await;
    assert_too_many(&third, "RateLimitExceeded", 3_600);
    assert_eq!(observer.hosts()[0].phase, HostPhase::Dormant);
    assert!(!observer.hosts()[0].worker_running, "no worker was started");
    relay.stop().await;
}

#[tokio::test]
async fn request_crawl_refuses_internal_names_with_the_reason() {
    let db = temp_db("crawl_internal");
    let relay = RunningRelay::start(&[format!("store.path={}", db.display())]).await;
    for (hostname, domain) in [
        ("api.localhost", ".localhost"),
        ("metadata.google.internal", ".internal"),
        ("kube-dns.kube-system.svc.cluster.local", ".local"),
        ("Printer.Local.", ".local"),
    ] {
        let response = post_crawl(relay.addr, &format!(r#"{{"hostname":"{hostname}"}}"#)).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{hostname}: {response}"
        );
        assert!(
            response.contains(r#""error":"InvalidRequest""#)
                && response.contains(&format!("names under {domain} are internal hosts")),
            "{hostname}: {response}"
        );
    }
    assert!(relay.observer.hosts().is_empty(), "nothing was added");
    relay.stop().await;
}

#[tokio::test]
async fn a_development_host_named_in_the_ws_allowlist_may_be_crawled() {
    // The support relay lists 127.0.0.1 and localhost in upstream.insecure_ws_hosts: a
    // reference PDS on this machine is `localhost`, one label under an internal domain.
    // Its addresses must pass the egress rule as any host's do.
    let db = temp_db("crawl_dev_host");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.port=9".to_owned(),
        r#"upstream.egress_allow=["127.0.0.0/8", "::1/128"]"#.to_owned(),
    ])
    .await;
    let response = post_crawl(relay.addr, r#"{"hostname":"localhost"}"#).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    // Only a name listed exactly: a name under it is still internal.
    let response = post_crawl(relay.addr, r#"{"hostname":"api.localhost"}"#).await;
    assert!(
        response.contains("names under .localhost are internal hosts"),
        "{response}"
    );
    let hosts: Vec<String> = relay
        .observer
        .hosts()
        .into_iter()
        .map(|h| h.hostname)
        .collect();
    assert_eq!(hosts, ["localhost"]);
    relay.stop().await;

    let db = temp_db("crawl_dev_host_unlisted");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.insecure_ws_hosts=[]".to_owned(),
    ])
    .await;
    let response = post_crawl(relay.addr, r#"{"hostname":"localhost"}"#).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(relay.observer.hosts().is_empty(), "nothing was added");
    relay.stop().await;
}

/// A development host serving on a port of its own (a reference PDS at `localhost:2583`)
/// is crawled as `localhost:<port>`: subscribed on that port, not `upstream.port`, and
/// found by that name in `getHostStatus`. A port after any other name is refused.
#[tokio::test]
async fn a_development_host_may_be_crawled_with_its_own_port() {
    let db = temp_db("crawl_dev_host_port");
    let (port, uris) = upstream(1, 3).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.port=9".to_owned(),
        ALLOW_LOOPBACK.to_owned(),
    ])
    .await;
    let entry = format!("localhost:{port}");
    let response = post_crawl(relay.addr, &format!(r#"{{"hostname":"{entry}"}}"#)).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let observer = relay.observer.clone();
    wait_until("the host's three events are persisted", || {
        observer.events().head_seq == 3
    })
    .await;
    assert_eq!(
        uris.lock().unwrap().first(),
        Some(&format!("{SUBSCRIBE_REPOS_PATH}?cursor=0"))
    );
    let status = get(
        relay.addr,
        &format!("/xrpc/com.atproto.sync.getHostStatus?hostname={entry}"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200 OK\r\n"), "{status}");
    assert!(
        status.contains(&format!(r#""hostname":"{entry}""#)),
        "{status}"
    );
    let response = post_crawl(relay.addr, r#"{"hostname":"pds.example.com:2583"}"#).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && response.contains("expected a hostname without a port"),
        "{response}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn request_crawl_past_the_callers_limit_gets_429_before_its_body_is_read() {
    let db = temp_db("crawl_per_client");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.port=9".to_owned(),
        "upstream.crawl_per_client_max=3".to_owned(),
    ])
    .await;
    // (Other addresses keep their own count: `shares`' unit tests. This suite's clients all
    // come from 127.0.0.1, as tokio's TcpSocket, which could bind another, is not in madsim.)
    // The existence check: `.invalid` never resolves, so no junk name is stored, and each
    // still counts against its caller.
    for n in 0..3 {
        let response = post_crawl(relay.addr, &format!(r#"{{"hostname":"h{n}.invalid"}}"#)).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && response.contains(r#""error":"InvalidRequest""#)
                && response.contains(&format!(r#"hostname \"h{n}.invalid\" does not resolve"#)),
            "{response}"
        );
    }
    let refused = post_crawl(relay.addr, r#"{"hostname":"h3.invalid"}"#).await;
    assert_too_many(&refused, "RateLimitExceeded", 3_600);
    assert!(
        refused.contains("at most 3 requestCrawl requests per address every 3600 s"),
        "{refused}"
    );
    // Refused before its body is read: even a malformed request is counted and refused.
    assert_too_many(
        &post_crawl(relay.addr, "{not json").await,
        "RateLimitExceeded",
        3_600,
    );
    assert!(relay.observer.hosts().is_empty(), "no junk name was stored");
    let metrics = relay.observer.metrics_text();
    for counted in [
        r#"relay_crawl_refused_total{reason="host_not_found"} 3"#,
        r#"relay_crawl_refused_total{reason="crawl_rate_limit"} 2"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn request_crawl_adds_at_most_the_new_hosts_a_window_and_the_table_allow() {
    let db = temp_db("crawl_new_hosts");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        NO_CRAWL_DNS.to_owned(),
        "upstream.port=9".to_owned(),
        "upstream.crawl_new_hosts_max=2".to_owned(),
    ])
    .await;
    for hostname in ["a.invalid", "b.invalid"] {
        let response = post_crawl(relay.addr, &format!(r#"{{"hostname":"{hostname}"}}"#)).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }
    let refused = post_crawl(relay.addr, r#"{"hostname":"c.invalid"}"#).await;
    assert_too_many(&refused, "RateLimitExceeded", 3_600);
    let known = post_crawl(relay.addr, r#"{"hostname":"a.invalid"}"#).await;
    assert!(
        known.starts_with("HTTP/1.1 200 OK\r\n") && known.contains(r#""created":false"#),
        "a known host is not a new one: {known}"
    );
    assert_eq!(relay.observer.hosts().len(), 2);
    relay.stop().await;

    // The same table under a cap of two hosts: full, whatever the window allows.
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        NO_CRAWL_DNS.to_owned(),
        "upstream.port=9".to_owned(),
        "upstream.hosts_max=2".to_owned(),
    ])
    .await;
    let full = post_crawl(relay.addr, r#"{"hostname":"c.invalid"}"#).await;
    assert!(full.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{full}");
    assert!(
        full.contains(r#""error":"Forbidden""#)
            && full.contains("the host table is full (2 hosts)"),
        "{full}"
    );
    let known = post_crawl(relay.addr, r#"{"hostname":"b.invalid"}"#).await;
    assert!(known.starts_with("HTTP/1.1 200 OK\r\n"), "{known}");
    assert_eq!(relay.observer.hosts().len(), 2);
    relay.stop().await;
}

/// A TCP listener on loopback that only counts the connections it accepts.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn loopback_upstreams_are_refused_unless_the_allowlist_names_them() {
    let db = temp_db("egress_loopback");
    Store::open(&db)
        .unwrap()
        .add_hosts(["127.0.0.1", "localhost"])
        .unwrap();
    let (port, accepted) = counting_listener().await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        "upstream.startup_jitter_ms=0".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("both hosts are quarantined and their workers gone", || {
        observer
            .hosts()
            .iter()
            .all(|host| host.phase == HostPhase::Quarantined && !host.worker_running)
    })
    .await;
    for host in observer.hosts() {
        assert_eq!(
            host.quarantined,
            Some("egress_loopback"),
            "{}",
            host.hostname
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was dialled");
    let hosts = get(relay.addr, "/hosts").await;
    assert_eq!(
        hosts.matches(r#""quarantined":"egress_loopback""#).count(),
        2,
        "{hosts}"
    );
    let metrics = observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_upstream_quarantined_total{reason="egress_loopback"} 2"#)
            && metrics.contains(r#"relay_upstream_attempts_total{reason="egress_refused"} 2"#),
        "{metrics}"
    );
    relay.stop().await;

    // The same table with loopback allowed: the host is dialled and subscribed.
    let (port, uris) = upstream(1, 3).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        "upstream.startup_jitter_ms=0".to_owned(),
        ALLOW_LOOPBACK.to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("127.0.0.1 is subscribed and read", || {
        let host = host_view(&observer, "127.0.0.1");
        host.phase == HostPhase::Connected && host.cursor == 3
    })
    .await;
    assert_eq!(host_view(&observer, "127.0.0.1").quarantined, None);
    assert_eq!(
        uris.lock().unwrap()[0],
        format!("{SUBSCRIBE_REPOS_PATH}?cursor=0")
    );
    relay.stop().await;
}

/// A WebSocket upstream serving two hosts by the `Host` header the relay dials with:
/// `127.0.0.1` gets `good`, `localhost` gets `bad` (each message as given, in order), and
/// both connections then stay open.
async fn two_host_upstream(good: Vec<Message>, bad: Vec<Message>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (good, bad) = (good.clone(), bad.clone());
            tokio::spawn(async move {
                let host = Arc::new(Mutex::new(String::new()));
                let seen = Arc::clone(&host);
                // The error type is tungstenite's, not ours.
                #[allow(clippy::result_large_err)]
                let record = move |request: &Request, response: Response| {
                    let header = request.headers().get("host").and_then(|h| h.to_str().ok());
                    *seen.lock().unwrap() = header.unwrap_or_default().to_owned();
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                let host = host.lock().unwrap().clone();
                let frames = if host.starts_with("localhost") {
                    bad
                } else {
                    good
                };
                for frame in frames {
                    if ws.send(frame).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    port
}

/// Commit frames of `support::DID` for `seqs`, as binary messages.
fn frames(seqs: impl IntoIterator<Item = u64>) -> Vec<Message> {
    seqs.into_iter()
        .map(|seq| Message::binary(commit_frame(seq, 0)))
        .collect()
}

/// The second host's account in the two-host tests.
const OTHER_DID: &str = "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz";

/// Commit frames of [`OTHER_DID`] for `seqs` (the second host's own account).
fn other_frames(seqs: impl IntoIterator<Item = u64>) -> Vec<Message> {
    seqs.into_iter()
        .map(|seq| Message::binary(frame::encode("#commit", &commit_of(OTHER_DID, seq, 0))))
        .collect()
}

#[tokio::test]
async fn the_historical_poison_frame_costs_only_its_host() {
    let db = temp_db("poison");
    Store::open(&db)
        .unwrap()
        .add_hosts(["127.0.0.1", "localhost"])
        .unwrap();
    // Host B sends two good events, then the frame that once halted the relay for every
    // host (its seq overflows SQLite's integers), then more.
    let mut bad = other_frames(1..=2);
    let mut poison = body_map(&commit(3, 0));
    poison.insert("seq".into(), Ipld::Integer(9_223_372_036_854_775_813));
    bad.push(Message::binary(frame::encode("#commit", &poison)));
    bad.extend(other_frames(4..=5));
    let port = two_host_upstream(frames(1..=20), bad).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "upstream.backoff_base_ms=10".to_owned(),
        "upstream.backoff_cap_ms=20".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    let host = |name: &str| host_view(&observer, name);
    wait_until(
        "the bad host is quarantined and the good one fully read",
        || {
            host("localhost").phase == HostPhase::Quarantined
                && !host("localhost").worker_running
                && observer.events().head_seq == 22
        },
    )
    .await;
    assert_eq!(host("localhost").quarantined, Some("seq_out_of_range"));
    assert_eq!(host("localhost").cursor, 2);
    assert_eq!(host("127.0.0.1").cursor, 20);
    let persisted = Store::open(&db).unwrap();
    wait_until("every good event is persisted", || {
        persisted.events_after(0, Page::events(100)).unwrap().len() == 22
    })
    .await;
    let events = persisted.events_after(0, Page::events(100)).unwrap();
    assert_eq!(
        events.iter().map(|event| event.seq).collect::<Vec<_>>(),
        (1..=22).collect::<Vec<_>>(),
        "the log stays dense"
    );
    assert!(get(relay.addr, "/_readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(get(relay.addr, "/hosts")
        .await
        .contains(r#""quarantined":"seq_out_of_range""#));
    let metrics = observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_upstream_quarantined_total{reason="seq_out_of_range"} 1"#),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn unknown_types_are_skipped_info_is_counted_and_error_frames_and_text_end_sessions() {
    let db = temp_db("message_types");
    Store::open(&db)
        .unwrap()
        .add_hosts(["127.0.0.1", "localhost"])
        .unwrap();
    // Host A: two events, a message type this relay does not know, an #info, two more
    // events, then an error frame (the host ends the stream; it does so on every
    // connection, after resending the same events).
    let mut good = frames(1..=2);
    good.push(Message::binary(frame::encode(
        "#labels",
        &body_map(&Info {
            name: "not a label".into(),
            message: None,
        }),
    )));
    good.push(Message::binary(frame::info_frame(
        "OutdatedCursor",
        "events before 1 are gone",
    )));
    good.extend(frames(3..=4));
    good.push(Message::binary(frame::error_frame(
        "FutureCursor",
        "cursor ahead of the stream",
    )));
    // Host B speaks the old protocol: a JSON text message is not a frame.
    let bad = vec![Message::text(r#"{"seq":1,"kind":"commit","body":{}}"#)];
    let port = two_host_upstream(good, bad).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "upstream.backoff_base_ms=10".to_owned(),
        "upstream.backoff_cap_ms=20".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    let host = |name: &str| host_view(&observer, name);
    wait_until(
        "host A's four events are in and its error frame ended a session",
        || {
            observer.events().head_seq == 4
                && observer
                    .metrics_text()
                    .contains(r#"relay_upstream_disconnects_total{reason="upstream_error"}"#)
                && host("localhost").consecutive_bad_sessions >= 2
        },
    )
    .await;
    assert_eq!(host("127.0.0.1").cursor, 4);
    assert_eq!(host("localhost").last_error, Some("malformed_frame"));
    assert_eq!(host("localhost").cursor, 0);
    let metrics = observer.metrics_text();
    for counted in [
        "relay_upstream_unknown_messages_total ",
        r#"relay_upstream_info_total{name="OutdatedCursor"} "#,
        r#"relay_upstream_error_frames_total{error="FutureCursor"} "#,
    ] {
        let count: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(counted))
            .unwrap_or_else(|| panic!("no {counted}in {metrics}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{counted}{count}");
    }
    let persisted = Store::open(&db)
        .unwrap()
        .events_after(0, Page::events(100))
        .unwrap();
    assert_eq!(
        persisted
            .iter()
            .map(|event| (event.host_id, event.upstream_seq))
            .collect::<Vec<_>>(),
        [(1, 1), (1, 2), (1, 3), (1, 4)]
    );
    relay.stop().await;
}

#[tokio::test]
async fn consumers_get_the_relays_seq_in_the_body_with_unknown_fields_kept() {
    let db = temp_db("rewrite");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    // The host numbers its events 101..=103 and adds a field no lexicon has yet.
    let sent: Vec<BTreeMap<String, Ipld>> = (101..=103)
        .map(|seq| {
            let mut body = body_map(&commit(seq, 0));
            body.insert("futureField".into(), Ipld::String(format!("kept {seq}")));
            body
        })
        .collect();
    let messages = sent
        .iter()
        .map(|body| Message::binary(frame::encode("#commit", body)))
        .collect();
    let port = two_host_upstream(messages, Vec::new()).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("the three events are in", || {
        observer.events().head_seq == 3
    })
    .await;
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut consumer, _) = tokio_tungstenite::client_async(
        format!("ws://{}{SUBSCRIBE_REPOS_PATH}?cursor=0", relay.addr),
        stream,
    )
    .await
    .unwrap();
    for (relay_seq, body) in (1..).zip(&sent) {
        let Some(Ok(Message::Binary(bytes))) = consumer.next().await else {
            panic!("no frame for {relay_seq}")
        };
        assert_eq!(
            bytes.as_ref(),
            frame::event_frame(
                Kind::Commit,
                &frame::Body::Decoded(body.clone()).with_seq(relay_seq)
            )
            .as_slice(),
            "the host's body, canonical, with the relay's seq"
        );
        let Incoming::Event(event) = decode(&bytes) else {
            panic!("not an event")
        };
        assert_eq!((event.seq, event.kind), (relay_seq, Kind::Commit));
        assert_eq!(
            event.body.fields().get("futureField"),
            Some(&Ipld::String(format!("kept {}", relay_seq + 100)))
        );
    }
    consumer.close(None).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn accounts_are_tracked_stale_commits_dropped_and_served_over_xrpc() {
    const ALICE: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const BOB: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
    const CAROL: &str = "did:plc:cccccccccccccccccccccccc";
    const TIME: &str = "2026-06-01T00:00:00.000Z";
    let db = temp_db("accounts");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    let rev = |micros: u64| tid(1_780_000_000_000_000 + micros, 0);
    let post = |seq: i128, did: &str, micros: u64| {
        Commit::with_post(seq, did, &rev(micros), "hello", TIME)
    };
    let alice_latest = post(2, ALICE, 20);
    let messages = vec![
        Message::binary(frame::encode("#commit", &post(1, ALICE, 10))),
        Message::binary(frame::encode("#commit", &alice_latest)),
        // A replay of Alice's first commit under a new seq: its rev is not newer.
        Message::binary(frame::encode("#commit", &post(3, ALICE, 10))),
        Message::binary(frame::encode("#commit", &post(4, BOB, 5))),
        Message::binary(frame::encode(
            "#account",
            &Account {
                seq: 5,
                did: BOB.into(),
                time: TIME.into(),
                active: false,
                status: Some("deactivated".into()),
            },
        )),
        Message::binary(frame::encode(
            "#identity",
            &Identity {
                seq: 6,
                did: CAROL.into(),
                time: TIME.into(),
                handle: Some("carol.test".into()),
            },
        )),
    ];
    let port = two_host_upstream(messages, Vec::new()).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("every message is read", || observer.hosts()[0].cursor == 6).await;
    wait_until("the five fresh events are persisted", || {
        Store::open(&db).unwrap().hosts().unwrap()[0].cursor == 6
    })
    .await;
    let events = observer.events();
    assert_eq!((events.head_seq, events.stale_revs_total), (5, 1));
    assert!(observer
        .metrics_text()
        .contains("relay_events_stale_revs 1\n"));

    let xrpc = |path: String| async move {
        let response = get(relay.addr, &path).await;
        let status: u16 = response[9..12].parse().unwrap();
        (status, body_json(&response))
    };
    let base = "/xrpc/com.atproto.sync";
    // listRepos: accounts with a commit, in DID order, one page at a time.
    let (status, first) = xrpc(format!("{base}.listRepos?limit=1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        first,
        serde_json::json!({
            "cursor": ALICE,
            "repos": [{"did": ALICE, "head": alice_latest.commit.to_string(), "rev": rev(20), "active": true}]
        })
    );
    let (_, second) = xrpc(format!("{base}.listRepos?limit=1&cursor={ALICE}")).await;
    // Clients escape the DID's colons.
    let escaped = ALICE.replace(':', "%3A");
    assert_eq!(
        xrpc(format!("{base}.listRepos?limit=1&cursor={escaped}")).await,
        (200, second.clone())
    );
    assert_eq!(
        xrpc(format!("{base}.getRepoStatus?did={escaped}")).await.0,
        200
    );
    assert_eq!(second["repos"][0]["did"], BOB);
    assert_eq!(second["repos"][0]["active"], false);
    assert_eq!(second["repos"][0]["status"], "deactivated");
    let (_, last) = xrpc(format!("{base}.listRepos?cursor={BOB}")).await;
    assert_eq!(last, serde_json::json!({ "repos": [] }));

    // getRepoStatus
    assert_eq!(
        xrpc(format!("{base}.getRepoStatus?did={ALICE}")).await,
        (
            200,
            serde_json::json!({"did": ALICE, "active": true, "rev": rev(20)})
        )
    );
    assert_eq!(
        xrpc(format!("{base}.getRepoStatus?did={BOB}")).await,
        (
            200,
            serde_json::json!({"did": BOB, "active": false, "status": "deactivated", "rev": rev(5)})
        )
    );
    assert_eq!(
        xrpc(format!("{base}.getRepoStatus?did={CAROL}")).await,
        (200, serde_json::json!({"did": CAROL, "active": true}))
    );
    let (status, unknown) = xrpc(format!("{base}.getRepoStatus?did=did:plc:nobody")).await;
    assert_eq!(
        (status, &unknown["error"]),
        (400, &serde_json::json!("RepoNotFound"))
    );
    let (status, bad) = xrpc(format!("{base}.getRepoStatus?did=alice")).await;
    assert_eq!(
        (status, &bad["error"]),
        (400, &serde_json::json!("InvalidRequest"))
    );

    // getLatestCommit
    assert_eq!(
        xrpc(format!("{base}.getLatestCommit?did={ALICE}")).await,
        (
            200,
            serde_json::json!({"cid": alice_latest.commit.to_string(), "rev": rev(20)})
        )
    );
    for (did, error) in [(BOB, "RepoDeactivated"), (CAROL, "RepoNotFound")] {
        let (status, body) = xrpc(format!("{base}.getLatestCommit?did={did}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{did}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn an_event_the_log_refuses_is_rejected_and_the_rest_commit() {
    let db = temp_db("refused");
    Store::open(&db)
        .unwrap()
        .add_hosts(["127.0.0.1", "localhost"])
        .unwrap();
    // A database that refuses host B's event 1 (a trigger: a hand edit, another tool's
    // rule) with a constraint error, on every commit that carries it. Before the fix the
    // sequencer retried that batch forever and no host's events were persisted again.
    {
        let connection = rusqlite::Connection::open(&db).unwrap();
        connection
            .execute_batch(
                "CREATE TRIGGER refuse_b_1 BEFORE INSERT ON events
                 WHEN NEW.upstream_seq = 1
                  AND NEW.host_id = (SELECT id FROM hosts WHERE hostname = 'localhost')
                 BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END;",
            )
            .unwrap();
    }
    let port = two_host_upstream(frames(1..=20), other_frames(1..=3)).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "events.commit_retry_base_ms=10".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("the good host's 20 events are persisted", || {
        host_view(&observer, "localhost").phase == HostPhase::Quarantined
            && Store::open(&db).unwrap().hosts().unwrap()[0].cursor == 20
    })
    .await;
    let localhost = host_view(&observer, "localhost");
    assert_eq!(localhost.quarantined, Some("event_unstorable"));
    let events = Store::open(&db)
        .unwrap()
        .events_after(0, Page::events(100))
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    let good: Vec<u64> = events
        .iter()
        .filter(|event| event.host_id == 1)
        .map(|event| event.upstream_seq)
        .collect();
    assert_eq!(good, (1..=20).collect::<Vec<_>>(), "nothing lost, in order");
    assert!(observer.events().store_healthy);
    assert!(observer
        .metrics_text()
        .contains("relay_events_rejected_total 1"));
    relay.stop().await;
}

#[tokio::test]
async fn a_host_whose_seqs_go_backwards_gets_bad_sessions_and_a_named_reason() {
    let db = temp_db("backwards");
    Store::open(&db)
        .unwrap()
        .add_hosts(["127.0.0.1", "localhost"])
        .unwrap();
    // Host B replays its events in a loop on every connection: 1, 2, 3, 1, 2, 3, …
    let bad: Vec<Message> = other_frames(1..=3).into_iter().cycle().take(9).collect();
    let port = two_host_upstream(frames(1..=20), bad).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "upstream.backoff_base_ms=10".to_owned(),
        "upstream.backoff_cap_ms=40".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    let host = |name: &str| host_view(&observer, name);
    wait_until("the looping host has three bad sessions in a row", || {
        host("localhost").consecutive_bad_sessions >= 3 && observer.events().head_seq == 23
    })
    .await;
    let looping = host("localhost");
    assert_eq!(looping.last_error, Some("seq_not_increasing"));
    assert_eq!(looping.cursor, 3, "its first three events were kept, once");
    assert_eq!(
        looping.quarantined, None,
        "a replay loop is not a quarantine"
    );
    assert_eq!(host("127.0.0.1").consecutive_bad_sessions, 0);
    let persisted = Store::open(&db)
        .unwrap()
        .events_after(0, Page::events(100))
        .unwrap();
    let from_b: Vec<u64> = persisted
        .iter()
        .filter(|event| event.host_id == 2)
        .map(|event| event.upstream_seq)
        .collect();
    assert_eq!(from_b, [1, 2, 3], "no duplicate reached the log");
    assert!(get(relay.addr, "/hosts")
        .await
        .contains(r#""last_error":"seq_not_increasing""#));
    let metrics = observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_upstream_disconnects_total{reason="seq_not_increasing"}"#),
        "{metrics}"
    );
    relay.stop().await;
}

/// 60 events arriving at once under a limit of 100 a second with a burst of 10: ten go
/// through on the bucket, and the other 50 cannot all be admitted in less than 500 ms
/// (`elapsed` runs from before the relay started to the 60th event persisted). How many of
/// them wait depends on the machine's speed, as a slow step earns its own token: at least
/// one (a burst of 500 would hold none back) and at most 50.
fn assert_paced_at_100_a_second_burst_10(host: &HostView, elapsed: Duration) {
    assert!(
        (1..=50).contains(&host.rate_limited),
        "{} events waited",
        host.rate_limited
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "60 events admitted in {elapsed:?}"
    );
}

#[tokio::test]
async fn a_host_over_its_event_rate_waits_and_loses_nothing() {
    let db = temp_db("rate");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    let port = two_host_upstream(frames(1..=60), Vec::new()).await;
    let started = relay::rt::time::now();
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "upstream.host_events_per_second=100".to_owned(),
        "upstream.host_events_burst=10".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("all 60 events are persisted", || {
        observer.events().head_seq == 60
    })
    .await;
    let host = observer.hosts().remove(0);
    assert_paced_at_100_a_second_burst_10(&host, started.elapsed());
    let metrics = observer.metrics_text();
    let counted = format!("relay_upstream_rate_limited_total {}", host.rate_limited);
    assert!(metrics.contains(&counted), "{metrics}");
    let persisted = Store::open(&db)
        .unwrap()
        .events_after(0, Page::events(100))
        .unwrap();
    let upstream_seqs: Vec<u64> = persisted.iter().map(|event| event.upstream_seq).collect();
    assert_eq!(
        upstream_seqs,
        (1..=60).collect::<Vec<_>>(),
        "in order, none lost"
    );
    relay.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_log_within_its_byte_bound() {
    let db = temp_db("retention_bytes");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    let large: Vec<Message> = (1..=60)
        .map(|seq| Message::binary(commit_frame(seq, 1000)))
        .collect();
    // What each event holds in the log: its kind tag and its body with the relay's seq.
    let stored = |seq: u64| stored_commit_bytes(seq, 1000, seq);
    let port = two_host_upstream(large, Vec::new()).await;
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "events.retention_bytes_max=20000".to_owned(),
        "events.retention_interval_ms=50".to_owned(),
        "events.retention_batch_rows=4".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("all 60 events are in and retention is done", || {
        let events = observer.events();
        events.head_seq == 60 && events.log_bytes <= 20_000
    })
    .await;
    let events = observer.events();
    // Each event holds about 1.3 KB: retention deletes whole batches of 4 oldest first, so
    // between the most that fit and 3 fewer remain, the newest ones.
    let kept = Store::open(&db)
        .unwrap()
        .events_after(0, Page::events(100))
        .unwrap();
    let seqs: Vec<u64> = kept.iter().map(|event| event.seq).collect();
    let fit = (1..=60u64)
        .rev()
        .scan(0, |total, seq| {
            *total += stored(seq);
            Some(*total)
        })
        .take_while(|total| *total <= 20_000)
        .count();
    assert!((fit - 3..=fit).contains(&seqs.len()), "{fit}: {seqs:?}");
    assert_eq!(seqs.last(), Some(&60));
    assert_eq!(events.oldest_seq, seqs[0]);
    let held: usize = seqs.iter().map(|&seq| stored(seq)).sum();
    assert_eq!(events.log_bytes, held as u64);
    let metrics = observer.metrics_text();
    let gauge = format!("relay_events_log_bytes {}", events.log_bytes);
    assert!(metrics.contains(&gauge), "{metrics}");
    relay.stop().await;
}

/// The admin secret of the admin tests.
const SECRET: &str = "test-admin-secret-0123456789";

/// A relay on `db` with its admin API on an ephemeral loopback port, and `settings`.
async fn relay_with_admin(db: &std::path::Path, settings: &[&str]) -> RunningRelay {
    let mut all = vec![
        format!("store.path={}", db.display()),
        format!("admin.secret={SECRET}"),
        "admin.listen=127.0.0.1:0".to_owned(),
    ];
    all.extend(settings.iter().map(|setting| (*setting).to_owned()));
    RunningRelay::start(&all).await
}

/// One admin request with `token` as the bearer token (none without), and a JSON `body`
/// for a POST; the whole response.
async fn admin(
    relay: &RunningRelay,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> String {
    let authorization = token.map_or(String::new(), |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(relay.admin_addr.expect("the admin API is bound"), request).await
}

/// The JSON body of `response`.
fn body_json(response: &str) -> serde_json::Value {
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {response}"))
}

#[tokio::test]
async fn the_admin_api_needs_its_secret_and_serves_metrics() {
    let db = temp_db("admin_auth");
    let without = RunningRelay::start(&[format!("store.path={}", db.display())]).await;
    assert!(without.admin_addr.is_none(), "no secret, no admin listener");
    without.stop().await;

    let relay = relay_with_admin(&db, &[]).await;
    for token in [None, Some("test-admin-secret-012345678"), Some("wrong")] {
        let refused = admin(&relay, token, "GET", "/metrics", "").await;
        assert!(
            refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{token:?}: {refused}"
        );
        assert_eq!(body_json(&refused)["error"], "unauthorized");
    }
    let refused = admin(
        &relay,
        None,
        "POST",
        "/admin/ban",
        r#"{"name":"x.example"}"#,
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{refused}"
    );
    assert!(admin(&relay, Some(SECRET), "GET", "/admin/bans", "")
        .await
        .ends_with("[]"));
    let metrics = admin(&relay, Some(SECRET), "GET", "/metrics", "").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(
        metrics.contains("relay_upstream_hosts{phase=\"connected\"} 0"),
        "{metrics}"
    );
    // The public listener has no admin routes, and with the admin API on, no metrics.
    assert!(get(relay.addr, "/admin/bans")
        .await
        .starts_with("HTTP/1.1 404 Not Found\r\n"));
    let public_metrics = get(relay.addr, "/metrics").await;
    assert!(
        public_metrics.starts_with("HTTP/1.1 404 Not Found\r\n")
            && public_metrics.ends_with("metrics are served on the admin listener\n"),
        "{public_metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_ban_refuses_crawls_under_the_name_and_stops_only_the_hosts_it_covers() {
    let db = temp_db("admin_ban");
    // `.invalid` never resolves: the workers stay in backoff, alive, until stopped.
    let settings = [
        NO_CRAWL_DNS,
        "upstream.port=9",
        "upstream.backoff_base_ms=10",
        "upstream.backoff_cap_ms=20",
        "upstream.dormant_after_failures=1000000",
    ];
    let relay = relay_with_admin(&db, &settings).await;
    for hostname in ["a.spam.invalid", "b.spam.invalid", "notspam.invalid"] {
        let response = post_crawl(relay.addr, &format!(r#"{{"hostname":"{hostname}"}}"#)).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }
    let banned = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/ban",
        r#"{"name":"Spam.invalid"}"#,
    )
    .await;
    assert!(banned.starts_with("HTTP/1.1 200 OK\r\n"), "{banned}");
    assert_eq!(
        body_json(&banned),
        serde_json::json!({"name": "spam.invalid", "created": true, "hosts_stopped": 2})
    );
    let observer = relay.observer.clone();
    wait_until("the banned hosts' workers end", || {
        ["a.spam.invalid", "b.spam.invalid"].iter().all(|hostname| {
            let host = host_view(&observer, hostname);
            host.quarantined == Some("banned") && !host.worker_running
        })
    })
    .await;
    let spared = host_view(&observer, "notspam.invalid");
    assert!(
        spared.worker_running && spared.quarantined.is_none(),
        "{spared:?}"
    );
    for hostname in ["c.spam.invalid", "spam.invalid"] {
        let refused = post_crawl(relay.addr, &format!(r#"{{"hostname":"{hostname}"}}"#)).await;
        assert!(
            refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{refused}"
        );
        assert_eq!(body_json(&refused)["error"], "HostBanned");
        assert!(
            refused.contains("under the banned name spam.invalid"),
            "{refused}"
        );
    }
    let bad_name = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/ban",
        r#"{"name":"invalid"}"#,
    )
    .await;
    assert!(
        bad_name.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{bad_name}"
    );
    relay.stop().await;

    // Bans are kept: after a restart the hosts under the name are stopped before dialling.
    let relay = relay_with_admin(&db, &settings).await;
    assert_eq!(
        host_view(&relay.observer, "a.spam.invalid").quarantined,
        Some("banned")
    );
    assert!(admin(&relay, Some(SECRET), "GET", "/admin/bans", "")
        .await
        .ends_with(r#"["spam.invalid"]"#));
    let lifted = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/unban",
        r#"{"name":"spam.invalid"}"#,
    )
    .await;
    assert_eq!(body_json(&lifted), serde_json::json!({"lifted": true}));
    let accepted = post_crawl(relay.addr, r#"{"hostname":"c.spam.invalid"}"#).await;
    assert!(accepted.starts_with("HTTP/1.1 200 OK\r\n"), "{accepted}");
    relay.stop().await;
}

#[tokio::test]
async fn the_admin_switch_turns_request_crawl_off_and_on() {
    let db = temp_db("admin_switch");
    let relay = relay_with_admin(&db, &[NO_CRAWL_DNS, "upstream.port=9"]).await;
    let off = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/crawl",
        r#"{"enabled":false}"#,
    )
    .await;
    assert_eq!(body_json(&off), serde_json::json!({"enabled": false}));
    let refused = post_crawl(relay.addr, r#"{"hostname":"a.invalid"}"#).await;
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{refused}"
    );
    assert_eq!(body_json(&refused)["error"], "Forbidden");
    assert!(relay.observer.hosts().is_empty());
    admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/crawl",
        r#"{"enabled":true}"#,
    )
    .await;
    let accepted = post_crawl(relay.addr, r#"{"hostname":"a.invalid"}"#).await;
    assert!(accepted.starts_with("HTTP/1.1 200 OK\r\n"), "{accepted}");
    relay.stop().await;
}

/// A fresh database `name` holding 23 hosts, and their names in order.
fn table_of_23_hosts(name: &str) -> (PathBuf, Vec<String>) {
    let db = temp_db(name);
    let mut hostnames: Vec<String> = (0..23).map(|n| format!("h{n:02}.invalid")).collect();
    Store::open(&db)
        .unwrap()
        .add_hosts(hostnames.iter().rev().map(String::as_str))
        .unwrap();
    hostnames.sort();
    (db, hostnames)
}

#[tokio::test]
async fn admin_host_pages_walk_every_host_exactly_once() {
    let (db, hostnames) = table_of_23_hosts("admin_pages");
    let relay = relay_with_admin(&db, &["upstream.port=9"]).await;
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/admin/hosts?limit=7&cursor={cursor}"),
            None => "/admin/hosts?limit=7".to_owned(),
        };
        let page = body_json(&admin(&relay, Some(SECRET), "GET", &path, "").await);
        pages += 1;
        let hosts = page["hosts"].as_array().unwrap();
        assert!(hosts.len() <= 7);
        walked.extend(
            hosts
                .iter()
                .map(|host| host["hostname"].as_str().unwrap().to_owned()),
        );
        match page.get("cursor") {
            Some(next) => cursor = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, hostnames);
    assert_eq!(pages, 4, "7 + 7 + 7 + 2");
    for bad in [
        "/admin/hosts?limit=0",
        "/admin/hosts?limit=1001",
        "/admin/hosts?page=2",
    ] {
        let refused = admin(&relay, Some(SECRET), "GET", bad, "").await;
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad}: {refused}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn an_admin_event_limit_paces_its_host_and_is_kept() {
    let db = temp_db("admin_limit");
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    // First set through the admin API (nothing listens on port 9, so no event arrives).
    let relay = relay_with_admin(&db, &["upstream.port=9"]).await;
    for (body, status, code) in [
        (
            r#"{"hostname":"127.0.0.1","events_per_second":100}"#,
            "400 Bad Request",
            "invalid_limit",
        ),
        (
            r#"{"hostname":"127.0.0.1","events_per_second":100,"events_burst":0}"#,
            "400 Bad Request",
            "invalid_limit",
        ),
        (
            r#"{"hostname":"nowhere.invalid","events_per_second":1,"events_burst":1}"#,
            "404 Not Found",
            "unknown_host",
        ),
    ] {
        let refused = admin(&relay, Some(SECRET), "POST", "/admin/host_limits", body).await;
        assert!(
            refused.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{body}: {refused}"
        );
        assert_eq!(body_json(&refused)["error"], code, "{body}");
    }
    let set = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/host_limits",
        r#"{"hostname":"127.0.0.1","events_per_second":100,"events_burst":10}"#,
    )
    .await;
    assert_eq!(
        body_json(&set)["event_limit"],
        serde_json::json!({"events_per_second": 100, "events_burst": 10})
    );
    relay.stop().await;

    // After a restart the host's own limit (not the configured 50 a second, burst 500,
    // which would let all 60 through at once) paces it, as in the configured-limit test.
    let port = two_host_upstream(frames(1..=60), Vec::new()).await;
    let started = relay::rt::time::now();
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
    ])
    .await;
    let observer = relay.observer.clone();
    wait_until("all 60 events are persisted", || {
        observer.events().head_seq == 60
    })
    .await;
    let host = observer.hosts().remove(0);
    assert_paced_at_100_a_second_burst_10(&host, started.elapsed());
    relay.stop().await;

    // Without limits the host goes back to the configured one.
    let relay = relay_with_admin(&db, &["upstream.port=9"]).await;
    let reset = admin(
        &relay,
        Some(SECRET),
        "POST",
        "/admin/host_limits",
        r#"{"hostname":"127.0.0.1"}"#,
    )
    .await;
    assert!(body_json(&reset).get("event_limit").is_none(), "{reset}");
    relay.stop().await;
    assert!(Store::open(&db).unwrap().host_limits().unwrap().is_empty());
}

#[tokio::test]
async fn xrpc_list_hosts_pages_through_every_host_in_the_lexicons_shape() {
    let (db, hostnames) = table_of_23_hosts("xrpc_list_hosts");
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.port=9".to_owned(),
    ])
    .await;
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/xrpc/com.atproto.sync.listHosts?limit=10&cursor={cursor}"),
            None => "/xrpc/com.atproto.sync.listHosts?limit=10".to_owned(),
        };
        let response = get(relay.addr, &path).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        let page = body_json(&response);
        pages += 1;
        for host in page["hosts"].as_array().unwrap() {
            let fields: Vec<&String> = host.as_object().unwrap().keys().collect();
            assert_eq!(
                fields,
                ["hostname", "status"],
                "no seq before an event: {host}"
            );
            assert!(
                ["idle", "offline"].contains(&host["status"].as_str().unwrap()),
                "{host}"
            );
            walked.push(host["hostname"].as_str().unwrap().to_owned());
        }
        match page.get("cursor") {
            Some(next) => cursor = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, hostnames);
    assert_eq!(pages, 3, "10 + 10 + 3");
    let all = body_json(&get(relay.addr, "/xrpc/com.atproto.sync.listHosts").await);
    assert_eq!(
        all["hosts"].as_array().unwrap().len(),
        23,
        "default limit 200"
    );
    assert!(all.get("cursor").is_none());
    for bad in ["limit=0", "limit=1001", "page=2"] {
        let refused = get(
            relay.addr,
            &format!("/xrpc/com.atproto.sync.listHosts?{bad}"),
        )
        .await;
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad}: {refused}"
        );
        assert_eq!(body_json(&refused)["error"], "InvalidRequest", "{bad}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn xrpc_get_host_status_health_and_unknown_methods() {
    let db = temp_db("xrpc_host_status");
    Store::open(&db).unwrap().add_hosts(["a.invalid"]).unwrap();
    let relay = RunningRelay::start(&[
        format!("store.path={}", db.display()),
        "upstream.port=9".to_owned(),
    ])
    .await;
    let found = get(
        relay.addr,
        "/xrpc/com.atproto.sync.getHostStatus?hostname=A.invalid",
    )
    .await;
    assert!(found.starts_with("HTTP/1.1 200 OK\r\n"), "{found}");
    assert_eq!(body_json(&found)["hostname"], "a.invalid");
    assert!(body_json(&found)["status"].is_string(), "{found}");
    for (query, status, name) in [
        ("hostname=b.invalid", "400 Bad Request", "HostNotFound"),
        ("", "400 Bad Request", "InvalidRequest"),
        ("hostname=10.0.0.1", "400 Bad Request", "InvalidRequest"),
        ("host=a.invalid", "400 Bad Request", "InvalidRequest"),
    ] {
        let refused = get(
            relay.addr,
            &format!("/xrpc/com.atproto.sync.getHostStatus?{query}"),
        )
        .await;
        assert!(
            refused.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{query}: {refused}"
        );
        assert_eq!(body_json(&refused)["error"], name, "{query}");
    }
    let health = get(relay.addr, "/xrpc/_health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert_eq!(
        body_json(&health),
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })
    );
    let unknown = get(relay.addr, "/xrpc/com.atproto.sync.getRepo?did=x").await;
    assert!(
        unknown.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
        "{unknown}"
    );
    assert_eq!(body_json(&unknown)["error"], "MethodNotImplemented");
    let wrong_method = get(relay.addr, REQUEST_CRAWL_PATH).await;
    assert!(
        wrong_method.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{wrong_method}"
    );
    assert_eq!(body_json(&wrong_method)["error"], "InvalidRequest");
    let old = post_crawl_at(relay.addr, "/requestCrawl", r#"{"hostname":"c.invalid"}"#).await;
    assert!(old.starts_with("HTTP/1.1 404 Not Found\r\n"), "{old}");
    relay.stop().await;
}

/// A certificate authority made for one test, as the PEM text `upstream.tls_ca_file` takes,
/// and a TLS server configuration with a certificate it issued for `localhost` alone.
fn test_ca() -> (String, Arc<ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "relay test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    // The relay's own provider (see `upstream::transport`).
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        )
        .unwrap();
    (ca.pem(), Arc::new(server))
}

/// TLS in front of a plain upstream (the [`upstream`] helper's) on `upstream_port`: each
/// connection's TLS handshake is answered with `server`, the server name the client asked
/// for (SNI) recorded, and the bytes copied both ways.
async fn tls_front(
    upstream_port: u16,
    server: Arc<ServerConfig>,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(server);
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let name = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                seen.lock().unwrap().push(name);
                let mut plain = TcpStream::connect(("127.0.0.1", upstream_port))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, names)
}

/// Settings for a relay on `db` whose hosts are all dialled with TLS on `port`.
fn tls_settings(db: &std::path::Path, port: u16) -> Vec<String> {
    vec![
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        ALLOW_LOOPBACK.to_owned(),
        "upstream.startup_jitter_ms=0".to_owned(),
        "upstream.insecure_ws_hosts=[]".to_owned(),
    ]
}

#[tokio::test]
async fn a_host_is_subscribed_over_tls_once_its_certificate_verifies_for_its_name() {
    let db = temp_db("tls");
    Store::open(&db)
        .unwrap()
        .add_hosts(["localhost", "127.0.0.1"])
        .unwrap();
    let (upstream_port, uris) = upstream(1, 3).await;
    let (ca_pem, server) = test_ca();
    let (port, names) = tls_front(upstream_port, server).await;
    let ca_file =
        std::env::temp_dir().join(format!("relay-upstreams-{}-ca.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let both_fail_tls = |observer: &Observer| {
        ["localhost", "127.0.0.1"]
            .iter()
            .all(|name| host_view(observer, name).last_error == Some("tls_handshake_error"))
    };

    // webpki's roots alone do not know the test CA: no host is subscribed.
    let relay = RunningRelay::start(&tls_settings(&db, port)).await;
    let observer = relay.observer.clone();
    wait_until("both hosts fail their TLS handshake", || {
        both_fail_tls(&observer)
    })
    .await;
    relay.stop().await;
    assert!(
        uris.lock().unwrap().is_empty(),
        "no WebSocket upgrade was asked for"
    );

    // With the CA as a trust anchor, `localhost` (the name its certificate carries, sent as
    // SNI) is subscribed; `127.0.0.1`, which the certificate does not name, still fails.
    let mut settings = tls_settings(&db, port);
    settings.push(format!("upstream.tls_ca_file={}", ca_file.display()));
    let relay = RunningRelay::start(&settings).await;
    let observer = relay.observer.clone();
    wait_until("localhost is subscribed over TLS and read", || {
        let host = host_view(&observer, "localhost");
        host.phase == HostPhase::Connected && host.cursor == 3
    })
    .await;
    wait_until("127.0.0.1 fails its TLS handshake", || {
        host_view(&observer, "127.0.0.1").last_error == Some("tls_handshake_error")
    })
    .await;
    assert_eq!(
        uris.lock().unwrap().as_slice(),
        [format!("{SUBSCRIBE_REPOS_PATH}?cursor=0")]
    );
    assert!(names.lock().unwrap().contains(&"localhost".to_owned()));
    let metrics = observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_upstream_attempts_total{reason="tls_handshake_error"}"#)
            && metrics.contains(r#"relay_upstream_attempts_total{reason="connected"} 1"#),
        "{metrics}"
    );
    relay.stop().await;
    let _ = std::fs::remove_file(&ca_file);
}

#[tokio::test]
async fn only_hosts_the_allowlist_names_are_dialled_without_tls() {
    let db = temp_db("insecure_ws");
    Store::open(&db)
        .unwrap()
        .add_hosts(["localhost", "127.0.0.1"])
        .unwrap();
    // A plain WebSocket upstream: a TLS client hello is no HTTP request to it.
    let (port, uris) = upstream(1, 3).await;
    let mut settings = tls_settings(&db, port);
    settings.push(r#"upstream.insecure_ws_hosts=["127.0.0.1"]"#.to_owned());
    let relay = RunningRelay::start(&settings).await;
    let observer = relay.observer.clone();
    wait_until("127.0.0.1 is subscribed over ws:// and read", || {
        let host = host_view(&observer, "127.0.0.1");
        host.phase == HostPhase::Connected && host.cursor == 3
    })
    .await;
    wait_until("localhost, dialled with TLS, fails its handshake", || {
        host_view(&observer, "localhost").last_error == Some("tls_handshake_error")
    })
    .await;
    assert_eq!(host_view(&observer, "localhost").cursor, 0);
    assert_eq!(
        uris.lock().unwrap().as_slice(),
        [format!("{SUBSCRIBE_REPOS_PATH}?cursor=0")]
    );
    relay.stop().await;

    // A bad pattern or an unreadable CA file stops the relay before it starts, naming them.
    let bad = relay::config::ConfigBuilder::new()
        .with_set(r#"upstream.insecure_ws_hosts=["*.*"]"#)
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains(r#""*.*" in upstream.insecure_ws_hosts is not a host pattern"#),
        "{bad}"
    );
    let missing = std::env::temp_dir().join("relay-upstreams-no-such-ca.pem");
    let config = relay::config::ConfigBuilder::new()
        .with_set(&format!("upstream.tls_ca_file={}", missing.display()))
        .unwrap()
        .build()
        .unwrap();
    let error = relay::Relay::bind(config).await.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "cannot read upstream.tls_ca_file {}:",
            missing.display()
        )),
        "{error}"
    );
}
