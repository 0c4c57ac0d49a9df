//! The relay at its system boundary: a real listener on loopback, real sockets, real tokio.
//! Timeouts are configured small so behaviour shows quickly; nothing here asserts speed.

use relay::http::xrpc::REQUEST_CRAWL_PATH;
use std::net::SocketAddr;
use std::time::Duration;

#[path = "../support/mod.rs"]
mod support;
use support::{wait_until, RunningRelay, NO_CRAWL_DNS};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A relay on loopback with an in-memory store and `settings` applied after that.
async fn start(settings: &[&str]) -> RunningRelay {
    RunningRelay::start(&[&["store.path=:memory:"], settings].concat()).await
}

/// Send raw bytes and read until the server closes (or 5 s pass).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

const GET_HEALTHZ: &[u8] = b"GET /_healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn probes_and_metrics_answer() {
    let relay = start(&[]).await;
    let health = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let ready = exchange(
        relay.addr,
        b"GET /_readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
    let metrics = exchange(
        relay.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // The scrape's own connection is admitted and still open: 3 = 2 released + 1 open.
    for line in [
        "relay_connections_admitted_total 3",
        "relay_connections_released_total 2",
        "relay_connections_open 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("relay_http_requests_total{route=\"healthz\",status=\"200\"} 1"),
        "{metrics}"
    );
    let missing = exchange(
        relay.addr,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{missing}"
    );
    let post = exchange(
        relay.addr,
        b"POST /_healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post}"
    );
    assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
    assert_eq!(relay.shutdown().await.connections_left, 0);
}

#[tokio::test]
async fn at_capacity_others_get_503_with_retry_after_and_probes_still_pass() {
    let relay = start(&["server.max_connections=2", "server.retry_after_s=7"]).await;
    let _held_a = TcpStream::connect(relay.addr).await.unwrap();
    let _held_b = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("both connections are admitted", || {
        observer.connections().open == 2
    })
    .await;

    let refused = exchange(relay.addr, b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{refused}"
    );
    assert!(refused.contains("retry-after: 7\r\n"), "{refused}");
    assert!(refused.contains("connection: close\r\n"), "{refused}");

    let probe = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(
        probe.starts_with("HTTP/1.1 200 OK\r\n"),
        "probe at capacity: {probe}"
    );

    let stats = relay.observer.connections();
    assert_eq!(
        (
            stats.open,
            stats.high_water,
            stats.refused_at_capacity_total
        ),
        (2, 2, 2)
    );
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains("relay_connections_refused_total{reason=\"at_capacity\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_connections_are_reaped_and_their_slots_returned() {
    let relay = start(&[
        "server.idle_timeout_ms=100",
        "server.idle_check_interval_ms=20",
    ])
    .await;
    let mut idle = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("the connection is admitted", || {
        observer.connections().open == 1
    })
    .await;
    assert_eq!(
        read_to_close(&mut idle).await,
        "",
        "an idle connection is closed without a response"
    );
    wait_until("the slot is released", || observer.connections().open == 0).await;
    assert!(relay
        .observer
        .metrics_text()
        .contains("relay_connections_closed_total{reason=\"idle\"} 1"));
}

#[tokio::test]
async fn slowloris_hits_the_header_read_timeout() {
    let relay = start(&["server.header_read_timeout_ms=200"]).await;
    let mut slow = TcpStream::connect(relay.addr).await.unwrap();
    slow.write_all(b"GET /_healthz HTTP/1.1\r\n").await.unwrap();
    // Trickle header bytes: activity keeps the idle reaper away, but the head never completes.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
    }
    let response = read_to_close(&mut slow).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
    let observer = relay.observer.clone();
    wait_until("the slot is released", || observer.connections().open == 0).await;
    assert!(relay
        .observer
        .metrics_text()
        .contains("reason=\"header_timeout\""));
}

#[tokio::test]
async fn oversized_and_malformed_heads_get_clear_errors() {
    let relay = start(&["server.max_header_bytes=2048"]).await;
    let huge = format!(
        "GET /_healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let response = exchange(relay.addr, huge.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
    let garbage = exchange(relay.addr, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(
        garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{garbage}"
    );
    let health = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(
        health.starts_with("HTTP/1.1 200 OK\r\n"),
        "the relay keeps serving: {health}"
    );
}

#[tokio::test]
async fn a_head_split_mid_crlf_is_reassembled() {
    let relay = start(&[]).await;
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // Each piece ends between a CR and its LF, as a TCP segment boundary may fall.
    for piece in [
        &b"GET /_healthz HTTP/1.1\r"[..],
        b"\nHost: x\r",
        b"\nConnection: close\r",
        b"\n\r",
        b"\n",
    ] {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = read_to_close(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

#[tokio::test]
async fn a_post_body_that_never_ends_gets_408_and_the_slot_back() {
    let relay = start(&["server.header_read_timeout_ms=300"]).await;
    let mut endless = TcpStream::connect(relay.addr).await.unwrap();
    endless
        .write_all(format!("POST {REQUEST_CRAWL_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A chunk every 50 ms: the connection is never idle, the body never ends.
    let trickle = async {
        for _ in 0..40 {
            if endless.write_all(b"1\r\n{\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut reader = TcpStream::connect(relay.addr).await.unwrap();
    reader.write_all(GET_HEALTHZ).await.unwrap();
    let (_, health) = tokio::join!(trickle, read_to_close(&mut reader));
    assert!(
        health.starts_with("HTTP/1.1 200 OK\r\n"),
        "probes are answered meanwhile: {health}"
    );
    let response = read_to_close(&mut endless).await;
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(
        response.contains(
            r#""error":"InvalidRequest","message":"the request body did not arrive in time""#
        ),
        "{response}"
    );
    let observer = relay.observer.clone();
    wait_until("the slot is released", || observer.connections().open == 0).await;
}

#[tokio::test]
async fn keep_alive_reuses_one_admitted_connection() {
    let relay = start(&[]).await;
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(b"GET /_healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /_readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let both = read_to_close(&mut stream).await;
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    assert_eq!(relay.observer.connections().admitted_total, 1);
}

#[tokio::test]
async fn serialized_dispatch_answers_one_request_per_connection() {
    let relay = start(&["server.dispatch=serialized"]).await;
    // Two keep-alive requests pipelined on one connection: the first answer closes it.
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(b"GET /hosts HTTP/1.1\r\nHost: x\r\n\r\nGET /hosts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_to_close(&mut stream).await;
    assert_eq!(
        answered.matches("HTTP/1.1 200 OK\r\n").count(),
        1,
        "{answered}"
    );
    assert!(answered.contains("connection: close\r\n"), "{answered}");
    // The turn came back with the connection: the next connection is served at once.
    let next = exchange(relay.addr, b"GET /hosts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{next}");
    assert_eq!(relay.observer.dispatch().high_water, 1);
    assert_eq!(relay.observer.dispatch().in_flight, 0);
}

#[tokio::test]
async fn shutdown_drains_open_connections_and_refuses_new_ones() {
    let relay = start(&["server.shutdown_grace_ms=2000"]).await;
    let mut open = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("the connection is admitted", || {
        observer.connections().open == 1
    })
    .await;
    let report = relay.shutdown().await;
    assert_eq!(report.connections_left, 0);
    assert_eq!(
        read_to_close(&mut open).await,
        "",
        "the idle connection was closed by shutdown"
    );
    assert!(!observer.is_ready());
    assert_eq!(observer.connections().released_total, 1);
    assert!(observer
        .metrics_text()
        .contains("relay_connections_closed_total{reason=\"shutdown\"} 1"));
}

/// The real binary: `relay serve` on loopback answers a probe, and stops cleanly on SIGINT.
#[tokio::test]
async fn the_binary_serves_on_loopback_and_stops_on_sigint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--set",
            "log.format=json",
            "--set",
            "store.path=:memory:",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut answer = String::new();
    for _ in 0..500 {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            stream.write_all(GET_HEALTHZ).await.unwrap();
            answer = read_to_close(&mut stream).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    // Blocking here is fine: the relay under test is another process.
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let output = (status, stderr);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(output.0.success(), "exit {:?}: {}", output.0, output.1);
    assert!(
        output.1.contains(r#""message":"relay stopped""#),
        "{}",
        output.1
    );
}

#[test]
fn the_binary_rejects_unknown_config_keys_with_the_source() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--set", "server.max_conections=5"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(
            "error: --set server.max_conections=5: unknown field `max_conections`, expected one of"
        ),
        "{stderr}"
    );
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["config", "--set", "server.max_connections=7"])
        .env("RELAY__SERVER__IDLE_TIMEOUT_MS", "1234")
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&printed.stdout);
    assert!(
        toml.contains("max_connections = 7\n") && toml.contains("idle_timeout_ms = 1234\n"),
        "{toml}"
    );
}

/// A store call that hangs must not take the runtime's workers with it. Another process's
/// write lock makes every store write wait in SQLite's busy handler (up to the store's 5 s
/// busy timeout); with more `requestCrawl` calls stuck behind it than the runtime has
/// workers, `/_healthz` is still answered while all of them are still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_call_does_not_hold_up_the_probes() {
    let path = std::env::temp_dir().join(format!("relay-hang-{}.sqlite", std::process::id()));
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    };
    remove();
    let relay = start(&[&format!("store.path={}", path.display()), NO_CRAWL_DNS]).await;
    let foreign = rusqlite::Connection::open(&path).unwrap();
    foreign.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let addr = relay.addr;
    let crawls: Vec<_> = (0..4)
        .map(|index| {
            let body = format!(r#"{{"hostname": "pds{index}.example.com"}}"#);
            let request = format!(
                "POST {REQUEST_CRAWL_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tokio::spawn(async move { exchange(addr, request.as_bytes()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(
        crawls.iter().all(|crawl| !crawl.is_finished()),
        "the probe was answered only after the store calls gave up"
    );
    drop(foreign);
    for crawl in crawls {
        let answer = crawl.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 20"), "{answer}");
    }
    relay.shutdown().await;
    remove();
}

/// A connection to `relay` from the loopback address `source` (any of 127.0.0.0/8 reaches
/// a listener on 127.0.0.1 on Linux): a second client address for per-address limits.
/// Ordinary build only: the simulation's sockets cannot choose their source address.
#[cfg(not(madsim))]
async fn connect_from(source: [u8; 4], relay: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(relay).await.unwrap()
}

/// Send `request` on `stream` and read until the server closes (or 5 s pass).
#[cfg(not(madsim))]
async fn exchange_on(mut stream: TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

const GET_OTHER: &[u8] = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[cfg(not(madsim))]
#[tokio::test]
async fn one_address_over_its_connection_limit_gets_429_while_another_is_admitted() {
    let relay = start(&["server.max_connections_per_ip=2", "server.retry_after_s=3"]).await;
    let held_a = TcpStream::connect(relay.addr).await.unwrap();
    let _held_b = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("both connections are admitted", || {
        observer.connections().open == 2
    })
    .await;

    let refused = exchange(relay.addr, GET_OTHER).await;
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refused}"
    );
    assert!(refused.contains("retry-after: 3\r\n"), "{refused}");
    assert!(refused.contains(r#""error":"per_ip_limit""#), "{refused}");
    let probe = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(
        probe.starts_with("HTTP/1.1 200 OK\r\n"),
        "a probe over the per-address limit is still answered: {probe}"
    );

    let other = exchange_on(connect_from([127, 0, 0, 2], relay.addr).await, GET_OTHER).await;
    assert!(
        other.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "another address is admitted: {other}"
    );

    drop(held_a);
    wait_until("the first connection is released", || {
        observer.connections().open == 1
    })
    .await;
    let again = exchange(relay.addr, GET_OTHER).await;
    assert!(
        again.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "a released place is the address's again: {again}"
    );
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains("relay_connections_refused_total{reason=\"per_ip_limit\"} 2"),
        "{metrics}"
    );
    assert_eq!(observer.connections().refused_at_capacity_total, 0);
}

#[cfg(not(madsim))]
#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_the_refusal_lane() {
    let relay = start(&[
        "server.max_connections=1",
        "server.refusal_lane_max=4",
        "server.refusal_lane_per_ip_max=1",
        "server.probe_reserve_max=0",
        "server.refusal_read_timeout_ms=30000",
    ])
    .await;
    let _held = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("the one slot is taken", || observer.connections().open == 1).await;
    // A slow caller from 127.0.0.1 holds that address's one place in the lane.
    let _slow = TcpStream::connect(relay.addr).await.unwrap();
    wait_until("the slow caller is on the refusal lane", || {
        observer
            .metrics_text()
            .contains("relay_refusal_lane_open 1\n")
    })
    .await;

    let same_address = exchange(relay.addr, GET_OTHER).await;
    assert_eq!(
        same_address, "",
        "past its share, the address is closed without a response"
    );
    let other = exchange_on(connect_from([127, 0, 0, 3], relay.addr).await, GET_OTHER).await;
    assert!(
        other.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "another address still gets the lane's answer: {other}"
    );
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains("relay_connections_refused_total{reason=\"refusal_lane_per_ip\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_connections_refused_total{reason=\"probe_reserve_full\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_the_refusal_lane_full_of_slow_callers_probes_are_still_answered() {
    let relay = start(&[
        "server.max_connections=1",
        "server.refusal_lane_max=2",
        "server.refusal_lane_per_ip_max=0",
        "server.probe_reserve_max=2",
        "server.refusal_read_timeout_ms=30000",
    ])
    .await;
    let _held = TcpStream::connect(relay.addr).await.unwrap();
    let observer = relay.observer.clone();
    wait_until("the one slot is taken", || observer.connections().open == 1).await;
    let _slow: Vec<TcpStream> = vec![
        TcpStream::connect(relay.addr).await.unwrap(),
        TcpStream::connect(relay.addr).await.unwrap(),
    ];
    wait_until("the slow callers fill the refusal lane", || {
        observer
            .metrics_text()
            .contains("relay_refusal_lane_open 2\n")
    })
    .await;

    let health = exchange(relay.addr, GET_HEALTHZ).await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    let ready = exchange(
        relay.addr,
        b"GET /_readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
    let other = exchange(relay.addr, GET_OTHER).await;
    assert!(
        other.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "the probe reserve answers nothing but probes: {other}"
    );
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains("relay_connections_refused_total{reason=\"refusal_lane_full\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn during_the_shutdown_drain_readiness_fails_and_connections_are_still_accepted() {
    let relay = start(&["server.shutdown_drain_ms=5000"]).await;
    let addr = relay.addr;
    let observer = relay.observer.clone();
    let ready = exchange(
        addr,
        b"GET /_readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");

    let stopped = relay.begin_shutdown();
    wait_until("readiness fails", || !observer.is_ready()).await;
    let draining = exchange(
        addr,
        b"GET /_readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        draining.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{draining}"
    );
    assert!(
        draining.ends_with("\r\n\r\nnot ready: shutting_down\n"),
        "{draining}"
    );
    let served = exchange(addr, GET_OTHER).await;
    assert!(
        served.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "a new connection is still admitted and served during the drain: {served}"
    );

    assert_eq!(stopped.await.unwrap().connections_left, 0);
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "after the drain the listener is closed: {refused:?}"
    );
}
