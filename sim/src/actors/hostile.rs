//! The hostile cast: upstream hosts that misbehave, one way each ([`HostileKind`]).
//!
//! Each serves the same address and URL as a polite host and, where its misbehaviour
//! allows, the same events (event `n` due `n · interval` after the world started: a regular schedule), so
//! the good events it sends before misbehaving must reach the relay's log like any other.
//! What the relay should make of each kind is the `bad_hosts_isolated` oracle's table.
//! Frames are atproto's (binary, DAG-CBOR), so each misbehaviour is one a real host could
//! commit on the real protocol: a `#commit` whose `seq` is past SQLite's integers, a frame
//! cut short, a commit whose CAR makes the frame one byte longer than the relay's limit
//! allows, sequence numbers that go backwards or jump.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use relay::rt::net::TcpStream;
use relay::rt::time::{sleep, sleep_until, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::repo::{Message as RepoMessage, Repos};
use super::upstream::{accept, hold_unanswered, HostPlan};
use super::TraceSink;
use crate::scenario::HostileKind;
use crate::trace::Event;

/// The sequence number of the historical poison frame: past SQLite's integers.
pub const POISON_SEQ: u64 = 9_223_372_036_854_775_813;
const _: () = assert!(POISON_SEQ > relay::atproto::frame::SEQ_MAX);

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
                    HostileKind::SeqOverflow if n == GOOD_PREFIX + 1 => poison_frame(&plan, n),
                    HostileKind::SeqBackwards if n == cursor + GOOD_PREFIX + 1 => {
                        plan.frame(cursor + 1, n)
                    }
                    _ => plan.frame(n, n),
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
                if !send(&mut ws, plan.frame(n * SEQ_JUMP, n)).await {
                    return;
                }
                n += 1;
            }
        }
        HostileKind::DuplicateLoop => {
            // Ignores the cursor: its first events, again and again.
            for n in (1..=GOOD_PREFIX).cycle() {
                sleep_until(plan.due(n, world_start)).await;
                if !send(&mut ws, plan.frame(n, n)).await {
                    return;
                }
                sleep(LOOP_PAUSE).await;
            }
        }
        HostileKind::Oversize | HostileKind::Malformed => {
            for n in cursor + 1..cursor + GOOD_PREFIX {
                sleep_until(plan.due(n, world_start)).await;
                if !send(&mut ws, plan.frame(n, n)).await {
                    return;
                }
            }
            let n = cursor + GOOD_PREFIX;
            sleep_until(plan.due(n, world_start)).await;
            let frame = if kind == HostileKind::Oversize {
                oversize_frame(&plan, n)
            } else {
                // A good frame cut in the middle of its CAR.
                let mut frame = plan.frame(n, n);
                frame.truncate(frame.len() / 2);
                frame
            };
            let _ = send(&mut ws, frame).await;
            // Hold the connection until the relay ends it.
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
        }
        HostileKind::Dribble => {
            let n = cursor + 1;
            sleep_until(plan.due(n, world_start)).await;
            // One binary frame, written to the socket a byte a second.
            let stream = ws.get_mut();
            for byte in binary_frame(&plan.frame(n, n)) {
                if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                sleep(Duration::from_secs(1)).await;
            }
            std::future::pending().await
        }
    }
}

/// Event `n` as a `#commit` under the historical poison sequence number, `i64::MAX + 6`
/// (a `#commit` whatever event `n` is, so that its `seq` is the only thing wrong with it).
fn poison_frame(plan: &HostPlan, n: u64) -> Vec<u8> {
    let message = commit_from(plan.repos(), n);
    let mut body = message.body_map();
    body.insert(
        "seq".to_owned(),
        ipld_core::ipld::Ipld::Integer(i128::from(POISON_SEQ)),
    );
    relay::atproto::frame::encode(message.tag(), &body)
}

/// Event `n` as a `#commit` whose frame is longer than the relay's frame limit: its CAR
/// carries one more block, as large as the limit.
fn oversize_frame(plan: &HostPlan, n: u64) -> Vec<u8> {
    let RepoMessage::Commit(mut commit) = commit_from(plan.repos(), n) else {
        unreachable!("commit_from gives a commit")
    };
    Repos::pad_commit(&mut commit, plan.frame_limit_bytes);
    RepoMessage::Commit(commit).frame()
}

/// Event `n` if it is a `#commit`, else the next event that is one, under seq `n`.
fn commit_from(repos: &Repos, n: u64) -> RepoMessage {
    (n..)
        .map(|k| repos.message(n, k))
        .find(|message| matches!(message, RepoMessage::Commit(_)))
        .expect("one event in 200 or so is not a commit")
}

/// Send one binary frame; whether the connection took it.
async fn send(ws: &mut WebSocketStream<TcpStream>, frame: Vec<u8>) -> bool {
    ws.send(Message::binary(frame)).await.is_ok()
}

/// `payload` as one unmasked WebSocket binary frame (server to client).
fn binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x82];
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
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    use relay::atproto::frame::{decode, BadFrame, Incoming, Limits};

    #[test]
    fn a_dribbled_frame_is_a_websocket_binary_frame() {
        let short = binary_frame(b"hi");
        assert_eq!(short, [0x82, 2, b'h', b'i']);
        let long = binary_frame(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x82, 126, 1, 44]);
        assert_eq!(long.len(), 4 + 300);
    }

    fn plan() -> HostPlan {
        HostPlan {
            index: 7,
            hostname: "pds.example.social".into(),
            ip: std::net::Ipv4Addr::new(172, 16, 0, 8),
            dead: None,
            handshake_latency: Duration::ZERO,
            schedule: crate::actors::repo::Schedule::regular(Duration::from_secs(1)),
            flap: None,
            body_pad_bytes: 0,
            hostile: Some(HostileKind::Oversize),
            frame_limit_bytes: 64 * 1024,
            link_delay: Arc::default(),
            repos: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn each_bad_frame_is_refused_for_its_own_reason() {
        let plan = plan();
        let limits = Limits::default();
        for n in 1..=40 {
            assert!(matches!(
                decode(&poison_frame(&plan, n), &limits),
                Err(BadFrame::SeqOutOfRange(seq)) if seq == i128::from(POISON_SEQ)
            ));
            let oversize = oversize_frame(&plan, n);
            assert!(oversize.len() > plan.frame_limit_bytes);
            assert!(
                matches!(decode(&oversize, &limits), Ok(Incoming::Event(_))),
                "only its size is wrong"
            );
            let good = plan.frame(n, n);
            assert!(matches!(decode(&good, &limits), Ok(Incoming::Event(_))));
            assert!(decode(&good[..good.len() / 2], &limits).is_err());
        }
    }
}
