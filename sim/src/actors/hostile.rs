//! The hostile cast: upstream hosts that misbehave, one way each ([`HostileKind`]).
//!
//! Each serves the same address and URL as a polite host and, where its misbehaviour
//! allows, the same events (event `n` due `n · event_interval` after the world started), so
//! the good events it sends before misbehaving must reach the relay's log like any other.
//! What the relay should make of each kind is the `bad_hosts_isolated` oracle's table.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use relay::rt::net::TcpStream;
use relay::rt::time::{sleep, sleep_until, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::upstream::{accept, hold_unanswered, HostPlan};
use super::TraceSink;
use crate::scenario::HostileKind;
use crate::trace::Event;

/// The sequence number of the historical poison frame: past SQLite's integers.
pub const POISON_SEQ: u64 = 9_223_372_036_854_775_813;
const _: () = assert!(POISON_SEQ > relay::upstream::MAX_UPSTREAM_SEQ);

/// How many good events a host sends before it misbehaves (per connection).
pub const GOOD_PREFIX: u64 = 3;

/// A `seq_jump` host's step between sequence numbers.
const SEQ_JUMP: u64 = 1 << 40;

/// Pause between the frames of a replay loop (so a relay that never ends the session
/// does not spin the simulation).
const LOOP_PAUSE: Duration = Duration::from_millis(10);

/// Serve one connection to a host playing `kind`.
pub async fn session(
    kind: HostileKind,
    plan: Arc<HostPlan>,
    mut stream: TcpStream,
    sink: TraceSink,
    world_start: Instant,
) {
    match kind {
        HostileKind::HandshakeStall => return hold_unanswered(stream).await,
        HostileKind::NotWebsocket => {
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let page = "<html><body>Welcome to nginx!</body></html>";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => {}
    }
    let Some((mut ws, cursor)) = accept(&plan, stream).await else {
        return;
    };
    sink.record(&plan.hostname, Event::Subscribed { cursor });
    match kind {
        HostileKind::HandshakeStall | HostileKind::NotWebsocket => {
            unreachable!("answered before the handshake")
        }
        HostileKind::ReconnectStorm => {
            let _ = ws.close(None).await;
        }
        HostileKind::Silent => std::future::pending().await,
        HostileKind::Flood | HostileKind::SeqOverflow | HostileKind::SeqBackwards => {
            let mut n = cursor + 1;
            loop {
                sleep_until(plan.due(n, world_start)).await;
                let frame = match kind {
                    HostileKind::SeqOverflow if n == GOOD_PREFIX + 1 => {
                        format!(r#"{{"seq": {POISON_SEQ}, "kind": "commit", "body": {{}}}}"#)
                    }
                    HostileKind::SeqBackwards if n == cursor + GOOD_PREFIX + 1 => {
                        plan.frame(cursor + 1, n, 0)
                    }
                    _ => plan.frame(n, n, 0),
                };
                if !send(&mut ws, frame).await {
                    return;
                }
                n += 1;
            }
        }
        HostileKind::SeqJump => {
            let mut n = cursor / SEQ_JUMP + 1;
            loop {
                sleep_until(plan.due(n, world_start)).await;
                if !send(&mut ws, plan.frame(n * SEQ_JUMP, n, 0)).await {
                    return;
                }
                n += 1;
            }
        }
        HostileKind::DuplicateLoop => {
            // Ignores the cursor: its first events, again and again.
            for n in (1..=GOOD_PREFIX).cycle() {
                sleep_until(plan.due(n, world_start)).await;
                if !send(&mut ws, plan.frame(n, n, 0)).await {
                    return;
                }
                sleep(LOOP_PAUSE).await;
            }
        }
        HostileKind::Oversize | HostileKind::Malformed => {
            for n in cursor + 1..cursor + GOOD_PREFIX {
                sleep_until(plan.due(n, world_start)).await;
                if !send(&mut ws, plan.frame(n, n, 0)).await {
                    return;
                }
            }
            let n = cursor + GOOD_PREFIX;
            sleep_until(plan.due(n, world_start)).await;
            let frame = if kind == HostileKind::Oversize {
                plan.frame(n, n, plan.frame_limit_bytes + 1)
            } else {
                format!(r#"{{"seq":{n},"kind":"commit","body":{{"n":"#)
            };
            let _ = send(&mut ws, frame).await;
            // Hold the connection until the relay ends it.
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
        }
        HostileKind::Dribble => {
            let n = cursor + 1;
            sleep_until(plan.due(n, world_start)).await;
            // One text frame, written to the socket a byte a second.
            let stream = ws.get_mut();
            for byte in text_frame(&plan.frame(n, n, 0)) {
                if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                sleep(Duration::from_secs(1)).await;
            }
            std::future::pending().await
        }
    }
}

/// Send one text frame; whether the connection took it.
async fn send(ws: &mut WebSocketStream<TcpStream>, frame: String) -> bool {
    ws.send(Message::text(frame)).await.is_ok()
}

/// `payload` as one unmasked WebSocket text frame (server to client).
fn text_frame(payload: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dribbled_frame_is_a_websocket_text_frame() {
        let short = text_frame("hi");
        assert_eq!(short, [0x81, 2, b'h', b'i']);
        let long = text_frame(&"x".repeat(300));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 4 + 300);
    }
}
