//! `GET /xrpc/com.atproto.sync.subscribeRepos?cursor=N`: the consumer's WebSocket session,
//! in atproto's event-stream framing (binary messages: a DAG-CBOR header `{op, t}` then the
//! body; [`crate::atproto::frame`]).
//!
//! Cursors follow the event-stream spec: no cursor is live only, from the head; `cursor=N`
//! is every event with a seq above `N`; a cursor above the head gets a `FutureCursor` error
//! frame and a close; a cursor older than what retention kept gets an `#info`
//! `OutdatedCursor` message, then everything from the oldest kept event.
//!
//! The handshake is answered by the route (101, or a 400 naming what was wrong); the
//! upgraded socket is then driven by the connection's *owner task* (see `http::own_connection`),
//! so the task that holds the lifecycle slot is the only one that ever writes to, closes or
//! forgets the socket. The session:
//! 1. **catch-up**: pages of persisted events after `cursor`, from the store, until it is
//!    close to the head;
//! 2. **cutover**: registers with the broadcaster, which reports the head `h` at that
//!    instant; reads the rest up to `h` from the store;
//! 3. **live**: frames above `h` from its mailbox. Frames at or below the last one sent are
//!    skipped, so the cutover has no gap and no duplicate.
//!
//! Writes are batched: the session takes everything waiting in its mailbox (up to
//! [`WRITE_BATCH_BYTES`] of frames) in one go, hands each frame to the socket's write buffer
//! in order and flushes once per batch; catch-up pages are flushed every
//! `WRITE_BATCH_BYTES` likewise. A frame counts as sent once the socket has taken it.
//!
//! When the broadcaster finds the mailbox full it requests a close with reason `Kicked`; the
//! session then sends a `ConsumerTooSlow` error frame and a close frame, and waits for the
//! consumer's close reply (all bounded by `kick_flush_timeout_ms`) before it ends, so the
//! socket is never dropped with unread input (which would reset the connection and destroy
//! the farewell still in flight). Any other close request (idle reaper, shutdown) ends
//! it with a close frame. A consumer from which nothing has arrived for `pong_deadline_ms`
//! (the relay pings it every `ping_interval_ms`; a live client answers with a pong) is
//! closed with reason `pong_timeout`: only bytes from the consumer count as activity. A
//! consumer closed by the idle reaper or the pong deadline first gets a `ConsumerTooSlow`
//! error frame naming its cursor: one far behind in reading (a firehose backlog of a few
//! seconds) has not seen the pings yet, and must know where to resume. Store
//! errors end it with a `StoreUnavailable` error frame; the consumer resumes by cursor. A consumer that sends something that is not a valid WebSocket frame, or a frame
//! larger than `max_inbound_frame_bytes`, gets a close frame saying so (1002, 1007 or 1009).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use relay_lifecycle::{CloseReason, ConnOwner};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::response::{error, shed};
use super::AppState;
use crate::atproto::frame::{error_frame, info_frame, SUBSCRIBE_REPOS_PATH};
use crate::events::Frame;
use crate::rt::probe::{self, Probe};
use crate::rt::time::{interval_at, now, timeout, Duration};
use crate::store::Page;
use crate::upstream::{MIN_FRAME_LIMIT_BYTES, WS_READ_BUFFER_BYTES};

/// Consumer fan-out settings: `[fanout]` in the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Frames waiting for one consumer before it counts as too slow and is kicked.
    pub consumer_queue_max: usize,
    /// Events per catch-up page read from the store.
    pub catchup_page_events: usize,
    /// Content bytes per catch-up page (past its first event), so a consumer catching up
    /// on large events holds a bounded page.
    pub catchup_page_bytes: usize,
    /// How often the relay pings a consumer (its pong postpones the idle reaper),
    /// milliseconds.
    pub ping_interval_ms: u64,
    /// A consumer from which nothing (no pong, no frame) has arrived for this long is
    /// closed with reason `pong_timeout`, checked at each ping; milliseconds, at least two
    /// ping intervals so a pong in flight is never mistaken for silence. The idle reaper
    /// sees the same silence (only bytes from the consumer are activity), so with the
    /// default `server.idle_timeout_ms` (5 s) it closes a silent subscriber first; this
    /// deadline is the subscriber's own bound where `idle_timeout_ms` is raised for
    /// long-lived clients. The default (one minute) outlasts a consumer's pause of tens of
    /// seconds (a GC, a stuck disk), which must end in a `ConsumerTooSlow` kick carrying
    /// its resume cursor once its queue fills, not in a close that tells it nothing.
    pub pong_deadline_ms: u64,
    /// How long a kicked consumer gets to receive its `ConsumerTooSlow` frame and the close
    /// frame before the socket is dropped, milliseconds.
    pub kick_flush_timeout_ms: u64,
    /// Largest frame accepted from a consumer (they only send control frames), bytes.
    pub max_inbound_frame_bytes: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            consumer_queue_max: 1024,
            catchup_page_events: 500,
            catchup_page_bytes: 4 << 20,
            ping_interval_ms: 2_000,
            pong_deadline_ms: 60_000,
            kick_flush_timeout_ms: 10_000,
            max_inbound_frame_bytes: 64 * 1024,
        }
    }
}

impl FanoutConfig {
    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.consumer_queue_max == 0
            || self.catchup_page_events == 0
            || self.catchup_page_bytes == 0
            || self.ping_interval_ms == 0
        {
            return Err("fanout.consumer_queue_max, catchup_page_events, catchup_page_bytes and ping_interval_ms must be at least 1".into());
        }
        if self.pong_deadline_ms < self.ping_interval_ms.saturating_mul(2) {
            return Err(format!(
                "fanout.pong_deadline_ms ({}) must be at least two ping intervals (fanout.ping_interval_ms = {}), or a pong in flight counts as silence",
                self.pong_deadline_ms, self.ping_interval_ms
            ));
        }
        if self.max_inbound_frame_bytes < MIN_FRAME_LIMIT_BYTES {
            return Err(format!(
                "fanout.max_inbound_frame_bytes must be at least {MIN_FRAME_LIMIT_BYTES} (a control frame's largest payload)"
            ));
        }
        Ok(())
    }
}

/// Frame text a session writes between two flushes: a live batch taken from the mailbox,
/// or a stretch of a catch-up page (a single larger frame goes alone). Bounds what a
/// consumer's batch holds outside the memory account (its frames left the mailbox) and what
/// one flush pushes. Half of tungstenite's write buffer (128 KiB), which writes to the socket
/// by itself only past that, so a batch normally leaves in its flush's one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A subscription whose handshake was answered; the owner task runs it after the upgrade.
pub struct Pending {
    upgrade: hyper::upgrade::OnUpgrade,
    /// The requested cursor; `None`: live only, from the head.
    cursor: Option<u64>,
}

/// The per-connection hand-over slot between the route and the owner task. Only this
/// connection's tasks touch it.
pub type PendingSlot = Arc<Mutex<Option<Pending>>>;

/// Whether `request` asks for a subscription (so the caller routes it here).
pub fn is_subscribe(request: &Request<Incoming>) -> bool {
    request.uri().path() == SUBSCRIBE_REPOS_PATH
}

/// Answer the handshake: 101 and a parked [`Pending`], or a 4xx saying what was wrong.
pub fn accept(
    state: &AppState,
    mut request: Request<Incoming>,
    slot: &PendingSlot,
) -> Response<Full<Bytes>> {
    if state.memory.shed() {
        return shed(state);
    }
    let cursor = match parse_cursor(request.uri().query()) {
        Ok(cursor) => cursor,
        Err(message) => return error(StatusCode::BAD_REQUEST, "InvalidCursor", &message),
    };
    let headers = request.headers();
    let upgrade_ok = headers
        .get(UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|value| value == "13");
    let Some(key) = headers.get("sec-websocket-key").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "NotWebSocket",
            "expected a WebSocket handshake (Sec-WebSocket-Key missing)",
        );
    };
    if !upgrade_ok || !version_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "NotWebSocket",
            "expected `Upgrade: websocket` and `Sec-WebSocket-Version: 13`",
        );
    }
    let upgrade = hyper::upgrade::on(&mut request);
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pending { upgrade, cursor });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("a base64 accept key is a valid header value"),
    );
    response
}

fn parse_cursor(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut cursor = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("cursor", value)) => {
                cursor = Some(value.parse().map_err(|_| {
                    format!("cursor must be a non-negative integer, got {value:?}")
                })?);
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}; expected cursor=N"
                ))
            }
        }
    }
    Ok(cursor)
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Run a subscription on the owner task until the consumer leaves or a close is requested.
/// Returns the connection-closed metric reason.
pub async fn run(state: &Arc<AppState>, pending: Pending, owner: &ConnOwner) -> &'static str {
    let Ok(upgraded) = pending.upgrade.await else {
        return "upgrade_failed";
    };
    let config = &state.config.fanout;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_frame_size(Some(config.max_inbound_frame_bytes))
        .max_message_size(Some(config.max_inbound_frame_bytes));
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await;
    let head = state.events.broadcaster().head();
    let sent = match pending.cursor {
        None => head,
        Some(cursor) if cursor > head => {
            let notice = error_frame(
                "FutureCursor",
                &format!("cursor {cursor} is ahead of the newest event {head}"),
            );
            goodbye(
                &mut socket,
                Some(notice),
                CloseCode::Normal,
                "future cursor",
                state.config.server.drain_timeout(),
            )
            .await;
            return "future_cursor";
        }
        Some(cursor) => cursor,
    };
    state.metrics.consumer_session(1);
    let mut session = Session { state, owner, sent };
    let reason = match session.serve(&mut socket).await {
        End::Ended(reason) => reason,
        End::Requested(reason) => {
            session.farewell(&mut socket, reason).await;
            reason.as_str()
        }
    };
    state.metrics.consumer_session(-1);
    reason
}

/// How a session ends.
enum End {
    /// The consumer left, the socket failed, or the store failed: nothing more to send.
    Ended(&'static str),
    /// Someone requested a close: say goodbye (and why) before closing.
    Requested(CloseReason),
}

struct Session<'a> {
    state: &'a Arc<AppState>,
    owner: &'a ConnOwner,
    /// Highest sequence number delivered so far (starts at the requested cursor, or at the
    /// head when none was given).
    sent: u64,
}

impl Session<'_> {
    async fn serve(&mut self, socket: &mut Socket) -> End {
        let events = &self.state.events;
        let config = &self.state.config.fanout;
        // Catch up from the store while far behind, without holding a mailbox.
        while events.broadcaster().head().saturating_sub(self.sent)
            > config.catchup_page_events as u64
        {
            if let Err(end) = self.send_page(socket, u64::MAX).await {
                return end;
            }
        }
        // Registered here; dropped (unsubscribed, mailbox closed) when this returns.
        let (subscription, registered_head) = events.broadcaster().subscribe(
            self.owner.registry(),
            self.owner.id(),
            config.consumer_queue_max,
        );
        if self.sent < registered_head {
            probe::reached(Probe::CutoverCatchUp);
        }
        while self.sent < registered_head {
            if let Err(end) = self.send_page(socket, registered_head).await {
                return end;
            }
        }
        let ping_every = Duration::from_millis(config.ping_interval_ms);
        let mut pings = interval_at(now() + ping_every, ping_every);
        // When the consumer was last heard from: any frame (a pong, a close) counts, and the
        // live phase starts the count (nothing is asked of a consumer during catch-up).
        let mut heard_ms = self.state.clock.now_ms();
        // Reused for every batch; emptied by each send.
        let mut batch = Vec::new();
        loop {
            // Inbound is polled before the ping timer, so a pong that arrived while a write
            // was blocked is read before the timer judges silence; the timer comes before
            // the mailbox, so a consumer whose mailbox is never empty is still pinged.
            let step = tokio::select! {
                biased;
                reason = self.owner.close_request() => Err(End::Requested(reason)),
                inbound = socket.next() => match inbound {
                    None => Err(End::Ended("consumer_closed")),
                    Some(Ok(Message::Close(_))) => {
                        // Reading the close queued tungstenite's reply; send it (RFC 6455
                        // §5.5.1) before the socket goes, within the drain timeout.
                        let _ = timeout(self.state.config.server.drain_timeout(), socket.flush()).await;
                        Err(End::Ended("consumer_closed"))
                    }
                    Some(Err(error)) => Err(End::Ended(self.reject(socket, &error).await)),
                    Some(Ok(_)) => {
                        heard_ms = self.state.clock.now_ms();
                        Ok(())
                    }
                },
                _ = pings.tick() => {
                    if self.state.clock.now_ms().saturating_sub(heard_ms) >= config.pong_deadline_ms {
                        Err(End::Ended(self.pong_timeout(socket).await))
                    } else {
                        self.write(socket, Message::Ping(Bytes::new())).await
                    }
                }
                open = subscription.recv_batch(&mut batch, WRITE_BATCH_BYTES) => if open {
                    self.send_frames(socket, batch.drain(..)).await
                } else {
                    Err(End::Ended("mailbox_closed"))
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Send one page of persisted events above `sent` and at most `up_to`.
    async fn send_page(&mut self, socket: &mut Socket, up_to: u64) -> Result<(), End> {
        let fanout = &self.state.config.fanout;
        let page = Page {
            events: fanout.catchup_page_events,
            bytes: fanout.catchup_page_bytes,
        };
        let frames = match self.state.events.read_after(self.sent, page).await {
            Ok(frames) => frames,
            Err(error) => {
                tracing::warn!(%error, cursor = self.sent, "catch-up read failed");
                let notice = error_frame(
                    "StoreUnavailable",
                    &format!("catch-up failed; reconnect with cursor={}", self.sent),
                );
                let _ = self.write(socket, Message::Binary(notice.into())).await;
                return Err(End::Ended("store_error"));
            }
        };
        let Some(first) = frames.first() else {
            // The head says there is more, but the store has nothing: never spin on it.
            return Err(End::Ended("catchup_stalled"));
        };
        if first.seq > self.sent + 1 {
            // Retention removed events this consumer had not seen: say so, then go on from
            // the oldest kept event (the consumer decides whether that is acceptable).
            probe::reached(Probe::OutdatedCursor);
            let message = format!(
                "events {}..={} were removed by retention",
                self.sent + 1,
                first.seq - 1
            );
            self.write(
                socket,
                Message::Binary(info_frame("OutdatedCursor", &message).into()),
            )
            .await?;
        }
        self.send_frames(
            socket,
            frames.into_iter().filter(|frame| frame.seq <= up_to),
        )
        .await
    }

    /// Send `frames` (ascending; those at or below the last one sent are skipped) in order,
    /// flushing whenever [`WRITE_BATCH_BYTES`] are waiting in the socket's buffer and once
    /// at the end: a batch taken from the mailbox is flushed once.
    async fn send_frames(
        &mut self,
        socket: &mut Socket,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), End> {
        let mut unflushed = 0;
        for frame in frames {
            if frame.seq <= self.sent {
                continue;
            }
            unflushed += frame.bytes.len();
            self.queue(socket, Message::Binary(frame.bytes)).await?;
            // The socket has taken the frame: it reaches the consumer before anything
            // written later (the farewell included) even if a close request interrupts the
            // flush, so it counts as sent — the `ConsumerTooSlow` cursor must not make the
            // consumer fetch it twice.
            self.sent = frame.seq;
            if unflushed >= WRITE_BATCH_BYTES {
                self.flush(socket).await?;
                unflushed = 0;
            }
        }
        if unflushed > 0 {
            self.flush(socket).await?;
        }
        Ok(())
    }

    /// Write one message; a close request interrupts a write the socket is not taking.
    async fn write(&self, socket: &mut Socket, message: Message) -> Result<(), End> {
        self.queue(socket, message).await?;
        self.flush(socket).await
    }

    /// Hand one message to the socket's write buffer (waiting while an earlier write is
    /// blocked). Interrupted by a close request, the message is dropped, never half-taken.
    async fn queue(&self, socket: &mut Socket, message: Message) -> Result<(), End> {
        tokio::select! {
            biased;
            queued = socket.feed(message) => queued.map_err(|_| End::Ended("consumer_write_error")),
            reason = self.owner.close_request() => Err(End::Requested(reason)),
        }
    }

    /// Push buffered messages to the consumer; a close request interrupts a flush the
    /// socket is not taking (what was buffered still goes out first during the farewell).
    async fn flush(&self, socket: &mut Socket) -> Result<(), End> {
        tokio::select! {
            biased;
            flushed = socket.flush() => flushed.map_err(|_| End::Ended("consumer_write_error"))?,
            reason = self.owner.close_request() => return Err(End::Requested(reason)),
        }
        // No activity stamp here: activity means bytes *from* the consumer (stamped as they
        // are read), or the relay's own pings would keep a silent consumer open forever.
        Ok(())
    }

    /// Tell the consumer why it is being closed, within a bounded time.
    async fn farewell(&self, socket: &mut Socket, reason: CloseReason) {
        let config = &self.state.config;
        let (notice, code, budget_ms) = match reason {
            CloseReason::Kicked => (
                Some(error_frame(
                    "ConsumerTooSlow",
                    &format!("your queue was full; reconnect with cursor={}", self.sent),
                )),
                CloseCode::Policy,
                config.fanout.kick_flush_timeout_ms,
            ),
            // Nothing came from the consumer for the idle timeout, pongs included: a
            // consumer that far behind in reading has not seen our pings yet, so it is told
            // where to resume, as a kicked one is (a silent one reads nothing either way).
            CloseReason::Idle => (
                Some(self.silent_consumer_notice("server.idle_timeout_ms")),
                CloseCode::Normal,
                config.server.drain_timeout_ms,
            ),
            CloseReason::Shutdown => (None, CloseCode::Away, config.server.drain_timeout_ms),
            CloseReason::Evicted => (None, CloseCode::Normal, config.server.drain_timeout_ms),
        };
        goodbye(
            socket,
            notice,
            code,
            reason.as_str(),
            Duration::from_millis(budget_ms),
        )
        .await;
    }
}

/// Send `notice` (an error frame), then a close frame with `code` and `reason`, and finish
/// the closing handshake, all within `budget`.
async fn goodbye(
    socket: &mut Socket,
    notice: Option<Vec<u8>>,
    code: CloseCode,
    reason: &'static str,
    budget: Duration,
) {
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let closing_handshake = async {
        if let Some(notice) = notice {
            socket.send(Message::Binary(notice.into())).await?;
        }
        socket.send(Message::Close(Some(close))).await?;
        // Finish the closing handshake: read (and drop) whatever the consumer sent until
        // its close reply or EOF. Dropping a socket with unread input makes the kernel
        // answer with a reset and discard everything still queued for the consumer —
        // the notice and the close frame above included.
        while let Some(Ok(_)) = socket.next().await {}
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    let _ = timeout(budget, closing_handshake).await;
}

impl Session<'_> {
    /// Nothing came from the consumer for `pong_deadline_ms`: send a close frame saying so
    /// (without waiting for a reply that a silent peer will not send), then end the session.
    async fn pong_timeout(&self, socket: &mut Socket) -> &'static str {
        probe::reached(Probe::PongTimeout);
        tracing::debug!(conn = ?self.owner.id(), "consumer silent past the pong deadline");
        let notice = self.silent_consumer_notice("fanout.pong_deadline_ms");
        let close = CloseFrame {
            code: CloseCode::Policy,
            reason: Utf8Bytes::from_static("pong timeout"),
        };
        let farewell = async {
            socket.feed(Message::Binary(notice.into())).await?;
            socket.send(Message::Close(Some(close))).await
        };
        let _ = timeout(self.state.config.server.drain_timeout(), farewell).await;
        "pong_timeout"
    }

    /// The `ConsumerTooSlow` error frame for a consumer closed because nothing came from
    /// it for `limit` (a configuration key): the cursor to resume from. A consumer far
    /// behind in reading has not yet seen the pings it would answer.
    fn silent_consumer_notice(&self, limit: &str) -> Vec<u8> {
        error_frame(
            "ConsumerTooSlow",
            &format!(
                "nothing came from you within {limit} (not even a pong: are you behind in \
                 reading?); reconnect with cursor={}",
                self.sent
            ),
        )
    }

    /// The consumer sent something that is not a valid WebSocket frame (or one larger than
    /// `max_inbound_frame_bytes`): tell it why with a close frame (RFC 6455 §7.4.1: 1002
    /// protocol error, 1007 invalid UTF-8, 1009 too big), then end the session. Returns
    /// the session's end reason.
    async fn reject(&self, socket: &mut Socket, error: &WsError) -> &'static str {
        let (code, reason, ended) = match error {
            WsError::Capacity(_) => (
                CloseCode::Size,
                "frame too large",
                "consumer_frame_too_large",
            ),
            WsError::Utf8(_) => (
                CloseCode::Invalid,
                "invalid UTF-8",
                "consumer_protocol_error",
            ),
            WsError::Protocol(_) => (
                CloseCode::Protocol,
                "protocol error",
                "consumer_protocol_error",
            ),
            // The socket itself failed or was closed: nobody left to tell.
            _ => return "consumer_io_error",
        };
        tracing::debug!(%error, conn = ?self.owner.id(), "consumer sent an invalid frame");
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let farewell = async {
            socket.send(Message::Close(Some(close))).await?;
            // What follows the bad frame cannot be parsed; read it raw and drop it until the
            // consumer closes, so unread input does not turn our close into a reset.
            let mut discard = [0u8; 4096];
            while socket.get_mut().read(&mut discard).await? > 0 {}
            Ok::<(), WsError>(())
        };
        let _ = timeout(self.state.config.server.drain_timeout(), farewell).await;
        ended
    }
}
