//! Fuzz target: raw bytes on a WebSocket connection, read by `tokio-tungstenite` exactly as
//! the relay reads them, over an in-memory stream.
//!
//! Input layout: byte 0 picks the side, byte 1 the size limit, the rest is what the peer
//! sent after the HTTP upgrade.
//! - byte 0 even: the upstream worker's side (`Role::Client`, limits from
//!   `relay::upstream::ws_config`, frames from the upstream unmasked); the binary messages
//!   then go through `relay::atproto::frame::decode` as the worker would (a text message
//!   is refused unread).
//! - byte 0 odd: the `subscribeRepos` consumer session's side (`Role::Server`, limits of
//!   `FanoutConfig::max_inbound_frame_bytes` built as `http/subscribe.rs` builds them;
//!   frames from the consumer masked).
//! - byte 1 zero: the configuration's default limit; otherwise a limit of `byte × 16`
//!   bytes, so inputs of a few KiB reach the limit checks.
//!
//! Invariants: nothing panics; the stream never asks to wait (the input is all there); every
//! text or binary message is at most the configured `max_message_size`; control payloads
//! are at most 125 bytes and close reasons at most 123; data and control payload bytes
//! never exceed input bytes; reading always ends (the stream is fused after an error or
//! the close).

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use relay::atproto::frame::{self, Limits};
use relay::config::{FanoutConfig, UpstreamConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The peer: reads come from the fuzz input, writes (pongs, close replies) are counted.
struct Peer<'a> {
    input: &'a [u8],
    written: usize,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        let (now, rest) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Poll once: with an always-ready peer every step completes without waiting.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the WebSocket stream waited on an always-ready peer"),
    }
}

/// The worker's limits (`upstream::ws_config`) or the `/subscribe` session's.
fn side(selector: u8, limit: u8) -> (Role, WebSocketConfig) {
    let limit = (limit != 0).then(|| usize::from(limit) * 16);
    if selector.is_multiple_of(2) {
        let mut upstream = UpstreamConfig::default();
        if let Some(limit) = limit {
            upstream.max_frame_bytes = limit;
        }
        (Role::Client, relay::upstream::ws_config(&upstream))
    } else {
        let mut fanout = FanoutConfig::default();
        if let Some(limit) = limit {
            fanout.max_inbound_frame_bytes = limit;
        }
        // As `http::subscribe::run` builds it (that function is not public).
        let config = WebSocketConfig::default()
            .max_frame_size(Some(fanout.max_inbound_frame_bytes))
            .max_message_size(Some(fanout.max_inbound_frame_bytes));
        (Role::Server, config)
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, limit, input @ ..] = data else {
        return;
    };
    let (role, config) = side(*selector, *limit);
    let max_message = config
        .max_message_size
        .expect("the relay always sets a limit");
    let peer = Peer { input, written: 0 };
    let mut socket = ready(WebSocketStream::from_raw_socket(peer, role, Some(config)));
    let mut message_bytes = 0usize;
    // Every frame takes at least two bytes, so this bounds a stream that never ends.
    for _ in 0..=input.len() / 2 + 2 {
        let Some(result) = ready(socket.next()) else {
            return;
        };
        let Ok(message) = result else {
            continue; // the stream is fused: the next read is `None`
        };
        let len = match &message {
            Message::Text(text) => {
                assert!(
                    text.len() <= max_message,
                    "text of {} > {max_message}",
                    text.len()
                );
                text.len()
            }
            Message::Binary(bytes) => {
                assert!(
                    bytes.len() <= max_message,
                    "binary of {} > {max_message}",
                    bytes.len()
                );
                if role == Role::Client {
                    let _ = frame::decode(bytes, &Limits::default());
                }
                bytes.len()
            }
            Message::Ping(payload) | Message::Pong(payload) => {
                assert!(payload.len() <= 125, "control payload of {}", payload.len());
                payload.len()
            }
            Message::Close(close) => {
                // Not counted: for a close code the peer may not send, tungstenite reports
                // (and replies with) its own `1002 Protocol violation`.
                let reason = close.as_ref().map_or(0, |frame| frame.reason.len());
                assert!(reason <= 123, "close reason of {reason}");
                0
            }
            Message::Frame(_) => panic!("a raw frame came out of a read"),
        };
        message_bytes += len;
        assert!(
            message_bytes <= input.len(),
            "{message_bytes} message bytes from {} input bytes",
            input.len()
        );
    }
    panic!("the stream did not end after {} input bytes", input.len());
});
