//! Abuser actors: clients that send the relay bad input — the slowloris, the oversized
//! head, bytes that are not HTTP, a head split between CR and LF, a request body that never
//! ends, and WebSocket frames that break the protocol or its size limit; and hostile
//! callers — crawlers of junk, internal and black-hole names and re-activation spam (names
//! from [`super::crawl`]), a one-address connection hog that floods the refusal lane, and a
//! silent subscriber. Each attempt runs on a fresh connection (the hog's on many) and
//! records only what came back (a status, a close code, or that
//! the relay closed without a word); whether that was the right answer is the
//! `bad_input_rejected` oracle's call.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use relay::rt::net::TcpStream;
use relay::rt::time::{now, sleep, sleep_until, timeout, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::client::write_flushed;
use super::crawl::{crawl_request, CrawlTarget};
use super::TraceSink;
use crate::scenario::{AbuseKind, AbuserSpec};
use crate::trace::Event;

/// Longest an attempt waits for the relay's answer; longer is recorded as `no answer`.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// How often the slowloris sends one more header line.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);

/// How often the endless body sends one more chunk.
const CHUNK_EVERY: Duration = Duration::from_millis(200);

/// Connections the hog opens and never uses, before its one request.
const HOG_CONNECTIONS: usize = 24;

/// How long the hog holds its connections (those the relay has not closed), in all.
const HOG_HOLD: Duration = Duration::from_secs(25);

/// Run abuser `node` forever (the world ends the simulation).
pub async fn run(
    spec: AbuserSpec,
    relay: SocketAddr,
    sink: TraceSink,
    node: String,
    world_start: Instant,
) {
    sleep_until(world_start + Duration::from_secs(spec.start_s)).await;
    loop {
        let started = now();
        let answer = match timeout(ANSWER_DEADLINE, attempt(spec.kind, relay)).await {
            Ok(answer) => answer,
            Err(_) => "no answer".to_owned(),
        };
        sink.record(
            node.as_str(),
            Event::Abuse {
                kind: spec.kind,
                answer,
                latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            },
        );
        sleep(Duration::from_millis(spec.period_ms)).await;
    }
}

async fn attempt(kind: AbuseKind, relay: SocketAddr) -> String {
    let mut stream = match TcpStream::connect(relay).await {
        Ok(stream) => stream,
        Err(error) => return format!("error: connect: {error}"),
    };
    match kind {
        AbuseKind::Slowloris => {
            let head = b"GET /hosts HTTP/1.1\r\nHost: relay\r\n";
            trickle(&mut stream, head, b"X-Slow: 1\r\n", TRICKLE_EVERY).await
        }
        AbuseKind::HugeHeaders => {
            let filler = "a".repeat(64 * 1024);
            let head = format!("GET /hosts HTTP/1.1\r\nHost: relay\r\nX-Big: {filler}\r\n\r\n");
            send_then_read(&mut stream, head.as_bytes()).await
        }
        AbuseKind::Garbage => {
            let noise = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n";
            send_then_read(&mut stream, noise).await
        }
        AbuseKind::SplitCrlf => {
            let pieces: [&[u8]; 5] = [
                b"GET /_healthz HTTP/1.1\r",
                b"\nHost: relay\r",
                b"\nConnection: close\r",
                b"\n\r",
                b"\n",
            ];
            for piece in pieces {
                if let Err(error) = write_flushed(&mut stream, piece).await {
                    return format!("error: write: {error}");
                }
                sleep(Duration::from_millis(10)).await;
            }
            read_answer(&mut stream).await
        }
        AbuseKind::EndlessBody => {
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: relay\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                relay::http::xrpc::REQUEST_CRAWL_PATH
            );
            trickle(&mut stream, head.as_bytes(), b"1\r\n{\r\n", CHUNK_EVERY).await
        }
        AbuseKind::GarbageFrame => {
            // FIN + reserved opcode 0xB, masked, empty payload.
            bad_frame(stream, relay, &[0x8B, 0x80, 1, 2, 3, 4]).await
        }
        AbuseKind::OversizedFrame => {
            // A masked binary frame announcing 16 MiB (64-bit length), no payload sent.
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&(16u64 << 20).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            bad_frame(stream, relay, &header).await
        }
        AbuseKind::CrawlJunk => crawl(&mut stream, CrawlTarget::Junk).await,
        AbuseKind::CrawlInternal => crawl(&mut stream, CrawlTarget::Internal).await,
        AbuseKind::CrawlBlackHole => crawl(&mut stream, CrawlTarget::BlackHole).await,
        AbuseKind::CrawlReactivation => crawl(&mut stream, CrawlTarget::Reactivation).await,
        AbuseKind::ConnectionHog => hog(stream, relay).await,
        AbuseKind::SilentSubscriber => silent_subscriber(stream, relay).await,
    }
}

/// `requestCrawl` of a name of `target`'s kind.
async fn crawl(stream: &mut TcpStream, target: CrawlTarget) -> String {
    send_then_read(stream, crawl_request(&target.draw()).as_bytes()).await
}

/// Hold `first` and [`HOG_CONNECTIONS`] more connections without a byte, then ask for
/// `/hosts` on one further connection and keep the others until [`HOG_HOLD`] is over: the
/// answer is that request's.
async fn hog(first: TcpStream, relay: SocketAddr) -> String {
    let started = now();
    let mut held = vec![first];
    for _ in 0..HOG_CONNECTIONS {
        match TcpStream::connect(relay).await {
            Ok(stream) => held.push(stream),
            Err(error) => return format!("error: connect: {error}"),
        }
    }
    let answer = match TcpStream::connect(relay).await {
        Ok(mut stream) => {
            let request = b"GET /hosts HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n";
            send_then_read(&mut stream, request).await
        }
        Err(error) => format!("error: connect: {error}"),
    };
    sleep_until(started + HOG_HOLD).await;
    drop(held);
    answer
}

/// Subscribe, then read the raw socket (so nothing, not even a pong, is ever sent) until
/// the relay closes it: `closed`.
async fn silent_subscriber(stream: TcpStream, relay: SocketAddr) -> String {
    // Live only (no cursor): a catch-up of the whole log is not what this abuse is about,
    // and with frames of a few KB it outlasts a short idle timeout.
    let url = format!(
        "ws://{relay}{}",
        relay::atproto::frame::SUBSCRIBE_REPOS_PATH
    );
    let mut socket = match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _)) => socket,
        Err(error) => return format!("error: handshake: {error}"),
    };
    let raw = socket.get_mut();
    let mut chunk = [0u8; 4096];
    loop {
        match raw.read(&mut chunk).await {
            Ok(0) | Err(_) => return "closed".to_owned(),
            Ok(_) => {}
        }
    }
}

/// Send `head`, then `more` every `every` until the relay answers or closes.
async fn trickle(stream: &mut TcpStream, head: &[u8], more: &[u8], every: Duration) -> String {
    if let Err(error) = write_flushed(stream, head).await {
        return format!("error: write: {error}");
    }
    let mut received = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        tokio::select! {
            biased;
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return answer_of(&received),
                Ok(n) => {
                    received.extend_from_slice(&chunk[..n]);
                    if head_complete(&received) {
                        return answer_of(&received);
                    }
                }
            },
            () = sleep(every) => {
                // A failed write means the relay closed; the read side reports how.
                let _ = write_flushed(stream, more).await;
            }
        }
    }
}

async fn send_then_read(stream: &mut TcpStream, bytes: &[u8]) -> String {
    // The relay may answer and close before it has read everything; that is an answer too.
    let _ = write_flushed(stream, bytes).await;
    read_answer(stream).await
}

/// Read until a response head is complete or the relay closes.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return answer_of(&received),
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                if head_complete(&received) {
                    return answer_of(&received);
                }
            }
        }
    }
}

fn head_complete(received: &[u8]) -> bool {
    received.windows(4).any(|window| window == b"\r\n\r\n")
}

/// `"431"` for a response head, `"closed"` for nothing at all, else what arrived.
fn answer_of(received: &[u8]) -> String {
    if received.is_empty() {
        return "closed".to_owned();
    }
    let text = String::from_utf8_lossy(received);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
    {
        Some(status) if status.bytes().all(|b| b.is_ascii_digit()) => status.to_owned(),
        _ => format!(
            "error: not an HTTP response: {:?}",
            text.chars().take(40).collect::<String>()
        ),
    }
}

/// Subscribe, send `frame` raw, and report the relay's close frame.
async fn bad_frame(stream: TcpStream, relay: SocketAddr, frame: &[u8]) -> String {
    // Live only (no cursor): a catch-up of the whole log is not what this abuse is about,
    // and with frames of a few KB it outlasts a short idle timeout.
    let url = format!(
        "ws://{relay}{}",
        relay::atproto::frame::SUBSCRIBE_REPOS_PATH
    );
    let mut socket = match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _)) => socket,
        Err(error) => return format!("error: handshake: {error}"),
    };
    let raw = socket.get_mut();
    if let Err(error) = raw.write_all(frame).await.and(raw.flush().await) {
        return format!("error: write: {error}");
    }
    loop {
        match socket.next().await {
            Some(Ok(Message::Close(Some(close)))) => {
                return format!("ws close {}", u16::from(close.code))
            }
            Some(Ok(Message::Close(None))) => return "ws close without a code".to_owned(),
            // Catch-up frames and pings may come first.
            Some(Ok(_)) => {}
            Some(Err(error)) => return format!("error: {error}"),
            None => return "closed".to_owned(),
        }
    }
}
