//! Consumer fan-out at the system boundary: a relay on loopback subscribed to a real
//! WebSocket upstream that keeps emitting `#commit` frames, and consumers speaking WebSocket
//! to `/xrpc/com.atproto.sync.subscribeRepos?cursor=N` through tokio-tungstenite's
//! `client_async` over a tokio `TcpStream`, exactly as an external consumer would, decoding
//! the binary frames with the relay's own codec.
//!
//! What is checked, always as exact values (every event frame byte for byte): the catch-up
//! → live cutover has no gap and no duplicate while events are flowing; handshake errors are
//! 400s with a JSON body naming the problem; a cursor ahead of the head gets a `FutureCursor`
//! error frame and a close; one older than retention kept gets `#info` `OutdatedCursor`
//! then the oldest kept events; a consumer that stops reading is kicked, told why
//! (`ConsumerTooSlow` naming its cursor, then a close frame) and torn down exactly once,
//! while a fast consumer next to it misses nothing; and a consumer resumes across a relay
//! restart on the same database by its last sequence number.
//! Timeouts only bound how long a broken relay can hang a test; nothing asserts speed.

// Real tokio on loopback only, never simulated: the determinism rules' ban on
// `tokio::sync::watch` (clippy.toml) is about simulated runs; here its wake order cannot matter.
#![allow(clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relay::atproto::frame::{Incoming, SUBSCRIBE_REPOS_PATH};
use relay::store::Store;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[path = "../support/mod.rs"]
mod support;
use support::{commit_frame, decode, relayed_commit_frame, wait_until, RunningRelay, PATIENCE};

fn temp_db(name: &str) -> PathBuf {
    support::temp_db("fanout", name)
}

/// A WebSocket upstream. Every subscription gets events `cursor+1 ..= limit` (the cursor
/// taken from the request URI), then more whenever the test raises `limit`.
struct Upstream {
    port: u16,
    /// How far the upstream may emit; raising it releases more events.
    limit: watch::Sender<u64>,
    /// Request URIs of the subscriptions, in order.
    uris: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(pad: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uris = Arc::new(Mutex::new(Vec::new()));
        let (limit, _) = watch::channel(0);
        let seen = Arc::clone(&uris);
        let limits = limit.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                let limit = limits.subscribe();
                tokio::spawn(serve_upstream(stream, seen, limit, pad));
            }
        });
        Self { port, limit, uris }
    }

    /// Let the upstream emit up to `limit`.
    fn emit_to(&self, limit: u64) {
        self.limit.send_replace(limit);
    }

    /// Raise the limit by one every `pace` until `last`, in the background.
    fn pace_to(&self, last: u64, pace: Duration) -> JoinHandle<()> {
        let limit = self.limit.clone();
        tokio::spawn(async move {
            while *limit.borrow() < last {
                limit.send_modify(|limit| *limit += 1);
                tokio::time::sleep(pace).await;
            }
        })
    }

    fn uris(&self) -> Vec<String> {
        self.uris.lock().unwrap().clone()
    }
}

async fn serve_upstream(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    mut limit: watch::Receiver<u64>,
    pad: usize,
) {
    let cursor = Arc::new(Mutex::new(0u64));
    let requested = Arc::clone(&cursor);
    // The error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let record = |request: &Request, response: Response| {
        let uri = request.uri().to_string();
        let from = uri
            .split_once("cursor=")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        *requested.lock().unwrap() = from;
        seen.lock().unwrap().push(uri);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    let mut next = *cursor.lock().unwrap() + 1;
    loop {
        let upto = *limit.borrow_and_update();
        while next <= upto {
            if ws
                .send(Message::binary(commit_frame(next, pad)))
                .await
                .is_err()
            {
                return;
            }
            next += 1;
        }
        if limit.changed().await.is_err() {
            return;
        }
    }
}

/// A relay on loopback over `db`, subscribed to the upstream on `port` at once, with
/// `overrides` applied last.
async fn start(db: &std::path::Path, port: u16, overrides: &[&str]) -> RunningRelay {
    let settings: Vec<String> = [
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        "upstream.startup_jitter_ms=0".to_owned(),
        support::ALLOW_LOOPBACK.to_owned(),
    ]
    .into_iter()
    .chain(overrides.iter().map(|setting| (*setting).to_owned()))
    .collect();
    RunningRelay::start(&settings).await
}

/// A database holding one upstream host, `127.0.0.1` (store id 1).
fn db_with_upstream(name: &str) -> PathBuf {
    let db = temp_db(name);
    Store::open(&db).unwrap().add_hosts(["127.0.0.1"]).unwrap();
    db
}

type Consumer = WebSocketStream<TcpStream>;

/// Subscribe like an external consumer: TCP connect, then the WebSocket client handshake.
async fn subscribe(addr: SocketAddr, cursor: u64) -> Consumer {
    subscribe_to(addr, &format!("{SUBSCRIBE_REPOS_PATH}?cursor={cursor}")).await
}

/// Subscribe at `target` (a path and query).
async fn subscribe_to(addr: SocketAddr, target: &str) -> Consumer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}{target}"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// One thing a consumer observed (pings and pongs are not interesting and are skipped).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// An event frame; its bytes were checked against `relayed_commit_frame` (one upstream
    /// host whose own sequence numbers line up with the relay's).
    Event(u64),
    /// An error frame `{error, message}`.
    Error { code: String, message: String },
    /// An `#info` frame `{name, message}`.
    Info { name: String, message: String },
    /// A close frame: code and reason.
    Close(Option<(CloseCode, String)>),
    /// The stream ended (or failed) after the close.
    End,
}

async fn next_seen(ws: &mut Consumer, pad: usize) -> Seen {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a consumer waited too long for a frame");
        let bytes = match message {
            None | Some(Err(_)) => return Seen::End,
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(close))) => {
                return Seen::Close(close.map(|c| (c.code, c.reason.to_string())))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        };
        return match decode(&bytes) {
            Incoming::Event(event) => {
                assert_eq!(
                    bytes.as_ref(),
                    relayed_commit_frame(event.seq, pad, event.seq).as_slice(),
                    "event {}",
                    event.seq
                );
                Seen::Event(event.seq)
            }
            Incoming::Error(error) => Seen::Error {
                code: error.error,
                message: error.message.unwrap_or_default(),
            },
            Incoming::Info(info) => Seen::Info {
                name: info.name,
                message: info.message.unwrap_or_default(),
            },
            Incoming::Unknown(t) => panic!("a message of type {t}"),
        };
    }
}

/// Read events until `last` has arrived; returns every sequence number seen, in order.
async fn read_events_to(ws: &mut Consumer, last: u64, pad: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        match next_seen(ws, pad).await {
            Seen::Event(seq) => seqs.push(seq),
            other => panic!("after {:?} expected an event, got {other:?}", seqs.last()),
        }
    }
    seqs
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[tokio::test]
async fn consumers_get_every_event_in_order_across_the_catch_up_to_live_cutover() {
    const LAST: u64 = 800;
    let db = db_with_upstream("cutover");
    let upstream = Upstream::start(0).await;
    // Small catch-up pages, so a consumer a few pages behind reads several of them (first
    // without a mailbox, then up to its registration head) while events keep arriving.
    let relay = start(
        &db,
        upstream.port,
        &["fanout.catchup_page_events=16", "events.commit_batch_max=4"],
    )
    .await;
    let observer = relay.observer.clone();
    let pacer = upstream.pace_to(LAST, Duration::from_millis(2));

    wait_until("100 events are persisted", || {
        observer.events().head_seq >= 100
    })
    .await;
    // From the beginning: catch-up pages from the store, then live.
    let mut consumers = vec![(0, subscribe(relay.addr, 0).await)];
    // Mid-stream, at lags around the page size: exactly at the head, one behind, one page,
    // one page and one event, several pages.
    for (i, lag) in [0u64, 1, 16, 17, 100].into_iter().enumerate() {
        let at = 200 + 50 * i as u64;
        wait_until("the stream moves on", || observer.events().head_seq >= at).await;
        let cursor = observer.events().head_seq - lag;
        consumers.push((cursor, subscribe(relay.addr, cursor).await));
    }
    let head_when_all_subscribed = observer.events().head_seq;
    assert!(
        head_when_all_subscribed < LAST,
        "the upstream was still emitting while consumers subscribed (head {head_when_all_subscribed})"
    );
    wait_until("all six consumers are registered", || {
        observer.events().consumers == 6
    })
    .await;

    let readers: Vec<_> = consumers
        .into_iter()
        .map(|(cursor, mut ws)| {
            tokio::spawn(async move { (cursor, read_events_to(&mut ws, LAST, 0).await, ws) })
        })
        .collect();
    for reader in readers {
        let (cursor, seqs, mut ws) = reader.await.unwrap();
        assert_eq!(
            seqs,
            range(cursor + 1, LAST),
            "consumer from cursor {cursor}"
        );
        // A consumer that leaves gets the closing handshake answered.
        ws.close(None).await.unwrap();
        assert_eq!(next_seen(&mut ws, 0).await, Seen::Close(None));
        assert_eq!(next_seen(&mut ws, 0).await, Seen::End);
    }
    pacer.await.unwrap();
    wait_until("every consumer has left", || {
        observer.events().consumers == 0 && observer.connections().open == 0
    })
    .await;
    assert_eq!(observer.events().head_seq, LAST);
    assert_eq!(observer.events().consumers_kicked_total, 0);
    relay.stop().await;
}

/// Send a raw request and read one response: status, headers (lowercased) and body.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    let status = head[9..12].parse().unwrap();
                    return (status, head.to_ascii_lowercase(), body.to_owned());
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {text}");
            received.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read).await.unwrap()
}

fn handshake(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn bad_subscriptions_get_a_400_naming_the_problem() {
    let db = db_with_upstream("handshake");
    let upstream = Upstream::start(0).await;
    upstream.emit_to(3);
    let relay = start(&db, upstream.port, &[]).await;
    let observer = relay.observer.clone();
    wait_until("3 events are persisted", || observer.events().head_seq == 3).await;

    let cases = [
        (
            handshake(&format!("{SUBSCRIBE_REPOS_PATH}?cursor=abc")),
            "InvalidCursor",
            r#"cursor must be a non-negative integer, got "abc""#,
        ),
        (
            handshake(&format!("{SUBSCRIBE_REPOS_PATH}?cursor=-1")),
            "InvalidCursor",
            r#"cursor must be a non-negative integer, got "-1""#,
        ),
        (
            handshake(&format!("{SUBSCRIBE_REPOS_PATH}?cursor=1&since=2")),
            "InvalidCursor",
            r#"unknown query parameter "since=2"; expected cursor=N"#,
        ),
        (
            handshake(&format!("{SUBSCRIBE_REPOS_PATH}?verbose")),
            "InvalidCursor",
            r#"unknown query parameter "verbose"; expected cursor=N"#,
        ),
        (
            format!("GET {SUBSCRIBE_REPOS_PATH} HTTP/1.1\r\nHost: relay\r\n\r\n"),
            "NotWebSocket",
            "expected a WebSocket handshake (Sec-WebSocket-Key missing)",
        ),
        (
            format!("GET {SUBSCRIBE_REPOS_PATH}?cursor=1 HTTP/1.1\r\nHost: relay\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            "NotWebSocket",
            "expected `Upgrade: websocket` and `Sec-WebSocket-Version: 13`",
        ),
    ];
    for (request, code, message) in &cases {
        let (status, head, body) = raw_exchange(relay.addr, request).await;
        assert_eq!(status, 400, "{request}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": code, "message": message }),
            "{request}"
        );
    }

    // A real client sees the refusal as an HTTP error, not as a WebSocket.
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(
        format!("ws://{}{SUBSCRIBE_REPOS_PATH}?cursor=x", relay.addr),
        stream,
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // A cursor ahead of the head is accepted as a WebSocket, then refused in the stream's
    // terms: a `FutureCursor` error frame, then a close.
    let mut ahead = subscribe(relay.addr, 4).await;
    assert_eq!(
        next_seen(&mut ahead, 0).await,
        Seen::Error {
            code: "FutureCursor".to_owned(),
            message: "cursor 4 is ahead of the newest event 3".to_owned(),
        }
    );
    assert_eq!(
        next_seen(&mut ahead, 0).await,
        Seen::Close(Some((CloseCode::Normal, "future cursor".to_owned())))
    );
    // The head itself is a valid cursor: nothing to catch up, straight to live.
    let mut at_head = subscribe(relay.addr, 3).await;
    // No cursor at all: live only, from the head (nothing of the log is replayed).
    let mut live = subscribe_to(relay.addr, SUBSCRIBE_REPOS_PATH).await;
    wait_until("both are registered", || observer.events().consumers == 2).await;
    upstream.emit_to(4);
    assert_eq!(next_seen(&mut at_head, 0).await, Seen::Event(4));
    assert_eq!(next_seen(&mut live, 0).await, Seen::Event(4));
    at_head.close(None).await.unwrap();
    live.close(None).await.unwrap();

    let metrics = observer.metrics_text();
    assert!(
        metrics.contains("relay_http_requests_total{route=\"subscribe\",status=\"400\"} 7\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_http_requests_total{route=\"subscribe\",status=\"101\"} 3\n"),
        "{metrics}"
    );

    wait_until("every connection is released", || {
        observer.connections().open == 0 && observer.events().consumers == 0
    })
    .await;
    let metrics = observer.metrics_text();
    assert!(
        metrics.contains("relay_connections_closed_total{reason=\"future_cursor\"} 1\n"),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_outdated_cursor_then_the_oldest_kept_events() {
    let db = db_with_upstream("outdated");
    let upstream = Upstream::start(0).await;
    let relay = start(
        &db,
        upstream.port,
        &[
            "events.retention_events_max=10",
            "events.retention_interval_ms=20",
        ],
    )
    .await;
    let observer = relay.observer.clone();
    upstream.emit_to(30);
    wait_until("30 events are in and retention kept the newest 10", || {
        let events = observer.events();
        events.head_seq == 30 && events.oldest_seq == 21
    })
    .await;
    for cursor in [0, 5] {
        let mut consumer = subscribe(relay.addr, cursor).await;
        assert_eq!(
            next_seen(&mut consumer, 0).await,
            Seen::Info {
                name: "OutdatedCursor".to_owned(),
                message: format!("events {}..=20 were removed by retention", cursor + 1),
            }
        );
        assert_eq!(
            read_events_to(&mut consumer, 30, 0).await,
            range(21, 30),
            "cursor {cursor}"
        );
        consumer.close(None).await.unwrap();
    }
    // A cursor within what was kept gets no notice.
    let mut current = subscribe(relay.addr, 25).await;
    assert_eq!(read_events_to(&mut current, 30, 0).await, range(26, 30));
    current.close(None).await.unwrap();
    wait_until("every consumer has left", || {
        observer.connections().open == 0
    })
    .await;
    relay.stop().await;
}

/// The byte rule deletes the oldest events but never the newest, even when the budget is
/// smaller than one event: the log's highest seq is where a restarted relay sequences on
/// from, and an emptied log made it start again at 1, handing out seqs consumers held.
#[tokio::test]
async fn retention_keeps_the_newest_event_so_a_restart_sequences_on() {
    let db = db_with_upstream("retention-head");
    let upstream = Upstream::start(0).await;
    let relay = start(
        &db,
        upstream.port,
        &[
            "events.retention_bytes_max=1",
            "events.retention_interval_ms=20",
        ],
    )
    .await;
    let observer = relay.observer.clone();
    upstream.emit_to(30);
    wait_until("retention has passed over all 30 events", || {
        let events = observer.events();
        events.head_seq == 30 && events.oldest_seq >= 30
    })
    .await;
    relay.stop().await;
    let (oldest, head) = Store::open(&db).unwrap().event_bounds().unwrap().unzip();
    assert_eq!(
        (oldest, head),
        (Some(30), Some(30)),
        "only the newest is left"
    );

    let relay = start(&db, upstream.port, &[]).await;
    let observer = relay.observer.clone();
    assert_eq!(observer.events().head_seq, 30, "sequencing continues");
    upstream.emit_to(32);
    let mut consumer = subscribe(relay.addr, 30).await;
    assert_eq!(read_events_to(&mut consumer, 32, 0).await, range(31, 32));
    consumer.close(None).await.unwrap();
    wait_until("every consumer has left", || {
        observer.connections().open == 0
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn invalid_consumer_frames_get_a_close_frame_naming_why() {
    let db = temp_db("bad-frames");
    let relay = start(&db, 1, &["fanout.max_inbound_frame_bytes=1024"]).await;
    // A reserved opcode (0xB), masked as a client frame must be: a protocol error.
    let reserved_opcode = [0x8B, 0x80, 1, 2, 3, 4];
    // A binary frame whose header announces 1 MiB, far above the 1 KiB limit.
    let mut too_large = vec![0x82, 0x80 | 127];
    too_large.extend_from_slice(&(1u64 << 20).to_be_bytes());
    too_large.extend_from_slice(&[1, 2, 3, 4]);
    // An unmasked client frame: also a protocol error.
    let unmasked = [0x81, 0x02, b'h', b'i'];
    for (bytes, code, reason) in [
        (&reserved_opcode[..], CloseCode::Protocol, "protocol error"),
        (&too_large[..], CloseCode::Size, "frame too large"),
        (&unmasked[..], CloseCode::Protocol, "protocol error"),
    ] {
        let mut ws = subscribe(relay.addr, 0).await;
        ws.get_mut().write_all(bytes).await.unwrap();
        assert_eq!(
            next_seen(&mut ws, 0).await,
            Seen::Close(Some((code, reason.to_owned())))
        );
        drop(ws);
    }
    let observer = relay.observer.clone();
    wait_until("every rejected consumer's slot is back", || {
        observer.connections().open == 0
    })
    .await;
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains(r#"reason="consumer_protocol_error"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reason="consumer_frame_too_large"} 1"#),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_kicked_once_and_told_why() {
    // Big enough that a few hundred events fill the loopback socket buffers; each write
    // batch holds one frame.
    kicked_once_and_told_why(32 * 1024).await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_while_written_in_batches_is_kicked_once_and_told_why() {
    // Small enough that a write batch (64 KiB) holds over a dozen frames: the kick
    // interrupts a batch, and the cursor in `ConsumerTooSlow` must still be the last frame
    // the consumer gets.
    kicked_once_and_told_why(4 * 1024).await;
}

/// A slow consumer next to a fast one, with events padded by `pad` bytes: the slow one is
/// kicked once, gets a contiguous prefix, `ConsumerTooSlow` naming its last event and a
/// close frame; the fast one misses nothing.
async fn kicked_once_and_told_why(pad: usize) {
    /// Events released at a time; the fast consumer reads each burst before the next.
    const BURST: u64 = 16;
    const QUEUE: u64 = 32;
    let db = db_with_upstream(&format!("slow-{pad}"));
    let upstream = Upstream::start(pad).await;
    let relay = start(
        &db,
        upstream.port,
        &[
            &format!("fanout.consumer_queue_max={QUEUE}"),
            // A publish offers a whole commit batch at once; keep batches below the queue.
            "events.commit_batch_max=8",
            // The stalled consumer must be kicked, not reaped as idle nor closed at the pong
            // deadline (it answers no ping while stalled), and must get time to read its
            // farewell after the test lets it resume.
            "server.idle_timeout_ms=120000",
            "fanout.pong_deadline_ms=120000",
            "fanout.kick_flush_timeout_ms=60000",
            // Pings pile up behind the stall; the resumed consumer answers each with a pong
            // the relay must not leave unread when it closes (unread input turns the close
            // into a reset that destroys the farewell still in flight).
            "fanout.ping_interval_ms=20",
        ],
    )
    .await;
    let observer = relay.observer.clone();
    let baseline = (observer.connections().open, observer.events().consumers);
    assert_eq!(baseline, (0, 0));

    let mut slow = subscribe(relay.addr, 0).await;
    let fast = subscribe(relay.addr, 0).await;
    wait_until("both consumers are registered", || {
        observer.events().consumers == 2
    })
    .await;
    // The fast consumer reads everything, reporting its progress, until told to stop.
    let (progress, mut fast_progress) = watch::channel(0u64);
    let (stop_fast, mut fast_stopped) = oneshot::channel::<()>();
    let fast_reader = tokio::spawn(async move {
        let mut fast = fast;
        let mut seqs = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut fast_stopped => return (seqs, fast),
                seen = next_seen(&mut fast, pad) => match seen {
                    Seen::Event(seq) => {
                        seqs.push(seq);
                        progress.send_replace(seq);
                    }
                    other => panic!("the fast consumer got {other:?} after {:?}", seqs.last()),
                },
            }
        }
    });

    // The slow consumer reads the first burst, then stops reading.
    upstream.emit_to(BURST);
    assert_eq!(read_events_to(&mut slow, BURST, pad).await, range(1, BURST));
    let mut released = BURST;
    while observer.events().consumers_kicked_total == 0 {
        assert!(
            released < 4_000,
            "{released} events of {pad} bytes never filled the slow consumer's buffers"
        );
        released += BURST;
        upstream.emit_to(released);
        tokio::time::timeout(PATIENCE, fast_progress.wait_for(|seq| *seq == released))
            .await
            .expect("the fast consumer keeps up")
            .unwrap();
    }
    // Life goes on for the fast consumer after the kick.
    released += BURST;
    upstream.emit_to(released);
    tokio::time::timeout(PATIENCE, fast_progress.wait_for(|seq| *seq == released))
        .await
        .unwrap()
        .unwrap();

    // The slow consumer resumes, still slowly, after pinging the relay (as client
    // libraries do to keep a connection alive): a contiguous prefix, then why, then the
    // close frame. The relay stops reading requests once kicked, so the ping (and the pongs
    // answering the relay's own pings) are still unread when it closes the socket.
    slow.send(Message::Ping("still here".into())).await.unwrap();
    let mut seqs = range(1, BURST);
    let farewell = loop {
        match next_seen(&mut slow, pad).await {
            Seen::Event(seq) => seqs.push(seq),
            other => break other,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        range(1, last),
        "the slow consumer's events are a prefix"
    );
    assert!(
        last < released,
        "the kick came before the end of the stream"
    );
    assert_eq!(
        farewell,
        Seen::Error {
            code: "ConsumerTooSlow".to_owned(),
            message: format!("your queue was full; reconnect with cursor={last}"),
        }
    );
    assert_eq!(
        next_seen(&mut slow, pad).await,
        Seen::Close(Some((CloseCode::Policy, "kicked".to_owned())))
    );
    assert_eq!(next_seen(&mut slow, pad).await, Seen::End);

    // Exactly-once teardown: one kick, one closed connection, one unsubscription.
    wait_until(
        "the kicked consumer's slot and subscription are gone",
        || observer.connections().open == 1 && observer.events().consumers == 1,
    )
    .await;
    let stats = observer.events();
    assert_eq!(stats.consumers_kicked_total, 1);
    assert!(stats.mailbox_high_water <= QUEUE as usize);
    let metrics = observer.metrics_text();
    for line in [
        "relay_consumers_kicked 1\n",
        "relay_connections_closed_total{reason=\"kicked\"} 1\n",
        "relay_consumer_sessions 1\n",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }

    // Following the advice resumes exactly where the slow consumer left off.
    let mut resumed = subscribe(relay.addr, last).await;
    assert_eq!(
        read_events_to(&mut resumed, released, pad).await,
        range(last + 1, released)
    );
    resumed.close(None).await.unwrap();

    // The fast consumer got everything, in order, and was never kicked.
    assert_eq!(observer.events().head_seq, released);
    assert_eq!(observer.events().consumers_kicked_total, 1);
    stop_fast.send(()).unwrap();
    let (fast_seqs, mut fast) = fast_reader.await.unwrap();
    assert_eq!(fast_seqs, range(1, released));
    fast.close(None).await.unwrap();
    wait_until("every connection is back to the baseline", || {
        (observer.connections().open, observer.events().consumers) == baseline
    })
    .await;
    let connections = observer.connections();
    assert_eq!(connections.admitted_total, 3);
    assert_eq!(connections.released_total, 3);
    relay.stop().await;
}

#[tokio::test]
async fn a_consumer_resumes_by_cursor_across_a_relay_restart() {
    const LAST: u64 = 600;
    let db = db_with_upstream("restart");
    let upstream = Upstream::start(0).await;
    // No shutdown drain: the relay must stop mid-stream, not ingest on while it drains.
    let relay = start(
        &db,
        upstream.port,
        &["events.commit_batch_max=4", "server.shutdown_drain_ms=0"],
    )
    .await;
    let observer = relay.observer.clone();
    // The upstream keeps emitting, across the restart, until LAST.
    let pacer = upstream.pace_to(LAST, Duration::from_millis(2));
    let mut consumer = subscribe(relay.addr, 0).await;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match next_seen(&mut consumer, 0).await {
                Seen::Event(seq) => seqs.push(seq),
                other => {
                    let after = next_seen(&mut consumer, 0).await;
                    return (seqs, other, after);
                }
            }
        }
    });
    wait_until("150 events are persisted", || {
        observer.events().head_seq >= 150
    })
    .await;
    relay.stop().await;
    let (seqs, close, after) = reader.await.unwrap();
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, range(1, last), "before the restart");
    assert_eq!(
        close,
        Seen::Close(Some((CloseCode::Away, "shutdown".to_owned())))
    );
    assert_eq!(after, Seen::End);
    let persisted = Store::open(&db).unwrap();
    let (_, head) = persisted.event_bounds().unwrap().unwrap();
    assert!(head < LAST, "the relay stopped mid-stream (head {head})");
    assert!(last <= head, "a consumer only ever sees persisted events");
    assert_eq!(persisted.hosts().unwrap()[0].cursor, head);
    drop(persisted);

    let relay = start(&db, upstream.port, &["events.commit_batch_max=4"]).await;
    let observer = relay.observer.clone();
    assert_eq!(observer.events().head_seq, head, "sequencing continues");
    // Reconnect with the last sequence number seen: exactly what follows, nothing twice.
    let mut resumed = subscribe(relay.addr, last).await;
    // And a newcomer from the beginning sees the whole log, old and new.
    let mut newcomer = subscribe(relay.addr, 0).await;
    assert_eq!(
        read_events_to(&mut resumed, LAST, 0).await,
        range(last + 1, LAST)
    );
    assert_eq!(read_events_to(&mut newcomer, LAST, 0).await, range(1, LAST));
    pacer.await.unwrap();
    assert_eq!(
        upstream.uris(),
        [
            format!("{SUBSCRIBE_REPOS_PATH}?cursor=0"),
            format!("{SUBSCRIBE_REPOS_PATH}?cursor={head}")
        ]
    );
    let stats = observer.events();
    assert_eq!((stats.head_seq, stats.duplicates_total), (LAST, 0));
    resumed.close(None).await.unwrap();
    newcomer.close(None).await.unwrap();
    wait_until("every consumer has left", || {
        observer.connections().open == 0 && observer.events().consumers == 0
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_subscriber_is_closed_at_the_pong_deadline_while_one_that_answers_stays() {
    let db = temp_db("pong-deadline");
    let relay = start(
        &db,
        1,
        &[
            "fanout.ping_interval_ms=100",
            "fanout.pong_deadline_ms=300",
            // The idle reaper must not be what closes the silent one.
            "server.idle_timeout_ms=60000",
        ],
    )
    .await;
    // tungstenite answers every ping with a pong while the consumer reads.
    let mut answering = subscribe(relay.addr, 0).await;
    let (stop_reading, mut stopped) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return Some(answering),
                message = answering.next() => if !matches!(message, Some(Ok(_))) {
                    return None;
                },
            }
        }
    });
    let received = silent_subscriber_until_closed(relay.addr).await;
    assert!(received.starts_with("HTTP/1.1 101 "), "{received}");
    assert!(received.contains("pong timeout"), "{received}");
    assert!(
        received.contains("ConsumerTooSlow")
            && received.contains("fanout.pong_deadline_ms")
            && received.contains("reconnect with cursor="),
        "told where to resume: {received}"
    );
    let observer = relay.observer.clone();
    wait_until("the silent subscriber's slot is back", || {
        observer.connections().open == 1
    })
    .await;

    // Many deadlines later, the consumer that answers pings is still subscribed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop_reading.send(()).unwrap();
    let answering = reader
        .await
        .unwrap()
        .expect("the consumer that answers pings is still subscribed");
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_connections_closed_total{reason="pong_timeout"} 1"#),
        "{metrics}"
    );
    assert_eq!(observer.connections().open, 1);
    drop(answering);
    relay.stop().await;
}

/// A subscriber that completes the handshake by hand and never sends another byte: what
/// it received until the relay closed it.
async fn silent_subscriber_until_closed(relay: SocketAddr) -> String {
    let mut silent = TcpStream::connect(relay).await.unwrap();
    silent
        .write_all(handshake(&format!("{SUBSCRIBE_REPOS_PATH}?cursor=0")).as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut received))
        .await
        .expect("the silent subscriber is closed")
        .unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

/// The relay's own pings are not activity: a subscriber that sends nothing is reaped as
/// idle even when the pong deadline is far away (the ping flush used to stamp the slot).
#[tokio::test]
async fn a_silent_subscriber_is_reaped_as_idle_despite_the_relays_pings() {
    let db = temp_db("silent-idle");
    let relay = start(
        &db,
        1,
        &[
            "fanout.ping_interval_ms=50",
            "fanout.pong_deadline_ms=60000",
            "server.idle_timeout_ms=300",
            "server.idle_check_interval_ms=20",
        ],
    )
    .await;
    let received = silent_subscriber_until_closed(relay.addr).await;
    assert!(
        received.contains("ConsumerTooSlow")
            && received.contains("server.idle_timeout_ms")
            && received.contains("reconnect with cursor="),
        "told where to resume: {received}"
    );
    let observer = relay.observer.clone();
    wait_until("the silent subscriber's slot is back", || {
        observer.connections().open == 0
    })
    .await;
    let metrics = relay.observer.metrics_text();
    assert!(
        metrics.contains(r#"relay_connections_closed_total{reason="idle"} 1"#),
        "{metrics}"
    );
    relay.stop().await;
}
