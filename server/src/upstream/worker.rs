//! One host's worker: wait out the startup jitter, then connect, read frames, and on
//! failure back off (exponentially, capped, jittered) until the host turns dormant.
//!
//! A session is: take a handshake permit (FIFO, bounded) → resolve the hostname once and
//! keep the addresses the egress rule allows ([`egress`]) → TCP connect to one of those
//! addresses → declare the handshake's CPU cost → WebSocket client handshake → release the
//! permit → read the host's `com.atproto.sync.subscribeRepos` stream (binary event-stream
//! frames, decoded and checked by [`frame::decode`]) until the connection ends. Any
//! failure before the handshake completes counts toward dormancy; a session that connected
//! resets the count. A host whose every address the egress rule refuses is never dialled:
//! it is quarantined with the refusal as its reason.
//!
//! What a host sends costs only that host. Within a session its sequence numbers must rise
//! strictly (those at or below the cursor are skipped as a resume's overlap); a frame that
//! breaks that, a malformed frame and one over the size limit end the session as a *bad
//! session*, and so does a session the host closes before sending any event: bad sessions
//! in a row grow the backoff like failed attempts, and so does an error frame (`op: -1`,
//! the host ending the stream) before any event. A message of a type the relay does not
//! know is skipped and an `#info` logged, both counted. A sequence number the log cannot
//! hold quarantines the host. Every host's events pass its [`EventAllowance`] (a per-host rate
//! limit): a flooding host waits, unread, while the others' events go on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::egress::{self, Refusal};
use super::hostname;
use super::schedule::{self, EventAllowance, EventLimit};
use super::{Host, HostPhase, UpstreamConfig, Upstreams, WS_READ_BUFFER_BYTES};
use crate::atproto::frame::{self, BadFrame, Incoming, Kind, Limits, SEQ_MAX};
use crate::events::Ingested;
use crate::rt::fd_limit;
use crate::rt::net::{self, TcpStream};
use crate::rt::probe::{self, Probe};
use crate::rt::time::{sleep, timeout};
use crate::store::{AccountChange, AccountUpdate, HostStatus};

/// The quarantine reason of a host that sent a sequence number the log cannot hold.
pub const QUARANTINE_SEQ_OUT_OF_RANGE: &str = "seq_out_of_range";

/// The quarantine reason of a host whose event passed the edge but the event log refused
/// for what it carries (a permanent store error).
pub const QUARANTINE_EVENT_UNSTORABLE: &str = "event_unstorable";

/// How a session ends when the host's sequence numbers stop rising within it (a replay
/// loop, a reset): a bad session.
pub const SESSION_SEQ_NOT_INCREASING: &str = "seq_not_increasing";

/// How a session ends on a frame that is not a valid event frame: a bad session.
pub const SESSION_MALFORMED_FRAME: &str = "malformed_frame";

/// How a session ends on a frame or message over `max_frame_bytes`: a bad session.
pub const SESSION_FRAME_TOO_LARGE: &str = "frame_too_large";

/// The largest upstream sequence number the event log can hold (SQLite's INTEGER).
pub const MAX_UPSTREAM_SEQ: u64 = SEQ_MAX;

/// How a session ends when the host sends an error frame (`op: -1`): the host ends the
/// stream. Counted by error name (`relay_upstream_error_frames_total`).
pub const SESSION_UPSTREAM_ERROR: &str = "upstream_error";

/// The WebSocket limits a worker dials its upstream with: frames and whole messages of at
/// most `max_frame_bytes` (public for the fuzz targets).
pub fn ws_config(config: &UpstreamConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_frame_size(Some(config.max_frame_bytes))
        .max_message_size(Some(config.max_frame_bytes))
}

/// How a session ended.
enum SessionEnd {
    /// Never got subscribed: counts toward dormancy.
    Failed(&'static str),
    /// Was subscribed, then the stream ended after `events` new events.
    Ended { reason: &'static str, events: u64 },
    /// Was subscribed, then the host broke the protocol: a bad session.
    Violated(&'static str),
    /// Could not dial because this process ran out of descriptors, socket buffers or
    /// memory: the relay's shortage, not charged to the host.
    LocalShortage(&'static str),
    /// Not dialled: the egress rule refuses every address the hostname resolved to.
    Refused(Refusal),
}

/// Decrements the running-worker count and frees the host's worker slot however the
/// worker ends (return, shutdown, or panic).
struct WorkerSlot {
    upstreams: Arc<Upstreams>,
    host: Arc<Host>,
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        if self.host.phase() != HostPhase::Dormant {
            self.host.set_phase(HostPhase::Idle);
        }
        self.host.worker_running.swap(false, SeqCst);
        self.upstreams.workers_running.fetch_sub(1, SeqCst);
    }
}

/// Counts one in-flight handshake for as long as it lives.
struct HandshakeInFlight<'a>(&'a Upstreams);

impl<'a> HandshakeInFlight<'a> {
    fn enter(upstreams: &'a Upstreams) -> Self {
        let now = upstreams.handshakes_in_flight.fetch_add(1, SeqCst) + 1;
        upstreams.handshakes_high_water.fetch_max(now, SeqCst);
        Self(upstreams)
    }
}

impl Drop for HandshakeInFlight<'_> {
    fn drop(&mut self) {
        self.0.handshakes_in_flight.fetch_sub(1, SeqCst);
    }
}

/// A dial that failed for want of local resources is the relay's shortage; any other is the
/// host's `failure`.
fn dial_error(error: &std::io::Error, failure: &'static str) -> SessionEnd {
    if fd_limit::is_local_exhaustion(error) {
        SessionEnd::LocalShortage("local_resources_exhausted")
    } else {
        SessionEnd::Failed(failure)
    }
}

/// Resolve `host` once, keep the addresses the egress rule allows, and connect to the
/// first of them that answers: the address dialled is always one that was checked, never
/// the name resolved again. Refused addresses are never dialled; if every address is
/// refused, the first refusal ends the session.
async fn dial(upstreams: &Upstreams, host: &Host) -> Result<TcpStream, SessionEnd> {
    let config = &upstreams.config;
    let (name, port) = hostname::split_port(&host.hostname);
    let resolved = net::lookup_host(name, port.unwrap_or(config.port))
        .await
        .map_err(|error| dial_error(&error, "resolve_error"))?;
    let mut refused = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(
            |address| match egress::check(address.ip(), &config.egress_allow) {
                Ok(()) => true,
                Err(refusal) => {
                    tracing::warn!(
                        host = %host.hostname,
                        %address,
                        reason = refusal.reason(),
                        "refusing to dial an address the egress rule does not allow"
                    );
                    refused.get_or_insert(refusal);
                    false
                }
            },
        )
        .collect();
    let mut last_error = None;
    for address in allowed {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(dial_error(&error, "connect_error")),
        }
    }
    Err(last_error
        .or(refused.map(SessionEnd::Refused))
        .unwrap_or(SessionEnd::Failed("resolve_error")))
}

/// The worker task body. Ends on shutdown or when the host turns dormant.
pub(super) async fn run(upstreams: Arc<Upstreams>, host: Arc<Host>, initial_delay: Duration) {
    let slot = WorkerSlot { upstreams, host };
    tokio::select! {
        biased;
        () = slot.upstreams.shutdown.stopped() => {}
        () = lifecycle(&slot.upstreams, &slot.host, initial_delay) => {}
    }
}

async fn lifecycle(upstreams: &Arc<Upstreams>, host: &Arc<Host>, initial_delay: Duration) {
    let config = &upstreams.config;
    if !initial_delay.is_zero() {
        host.set_phase(HostPhase::Waiting);
        sleep(initial_delay).await;
    }
    let mut allowance = EventAllowance::new(config);
    while host.quarantine_reason().is_none() {
        host.set_phase(HostPhase::Connecting);
        host.last_attempt_ms
            .fetch_max(upstreams.clock.now_ms(), SeqCst);
        let (retry, reason) = match session(upstreams, host, &mut allowance).await {
            SessionEnd::Ended { reason, events } => {
                upstreams.metrics.upstream_disconnect(reason);
                // Closed before a single event: reconnecting at once would let the host
                // make the relay handshake in a loop.
                let retry = if events == 0 && matches!(reason, "closed" | SESSION_UPSTREAM_ERROR) {
                    host.consecutive_bad_sessions.fetch_add(1, SeqCst) + 1
                } else {
                    // It was healthy: retry soon, as after a first failure.
                    host.consecutive_bad_sessions.swap(0, SeqCst);
                    1
                };
                (retry, reason)
            }
            SessionEnd::Violated(reason) => {
                upstreams.metrics.upstream_disconnect(reason);
                (
                    host.consecutive_bad_sessions.fetch_add(1, SeqCst) + 1,
                    reason,
                )
            }
            SessionEnd::LocalShortage(reason) => {
                upstreams.metrics.upstream_attempt(reason);
                tracing::warn!(
                    host = %host.hostname,
                    "cannot dial: this relay is out of file descriptors or socket buffers \
                     (see the open-file limit at startup); the host is not charged"
                );
                (1, reason)
            }
            SessionEnd::Refused(refusal) => {
                upstreams.metrics.upstream_attempt("egress_refused");
                upstreams.quarantine(host.id, refusal.reason());
                return;
            }
            SessionEnd::Failed(reason) => {
                upstreams.metrics.upstream_attempt(reason);
                host.set_last_error(reason);
                let failures = host.consecutive_failures.fetch_add(1, SeqCst) + 1;
                if failures >= config.dormant_after_failures {
                    probe::reached(Probe::UpstreamDormant);
                    host.set_phase(HostPhase::Dormant);
                    tracing::warn!(host = %host.hostname, failures, last = reason, "host turned dormant");
                    let persisted = upstreams
                        .store
                        .call(|store| store.set_status(host.id, HostStatus::Dormant, failures))
                        .await;
                    if let Err(error) = persisted {
                        tracing::warn!(%error, host = %host.hostname, "cannot persist dormancy");
                    }
                    return;
                }
                (failures, reason)
            }
        };
        host.set_last_error(reason);
        host.set_phase(HostPhase::Backoff);
        sleep(schedule::backoff(config, &host.hostname, retry)).await;
    }
}

async fn session(upstreams: &Upstreams, host: &Host, allowance: &mut EventAllowance) -> SessionEnd {
    let config = &upstreams.config;
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let stream = {
        let _permit = upstreams
            .handshake_permits
            .acquire()
            .await
            .expect("the handshake semaphore is never closed");
        let _in_flight = HandshakeInFlight::enter(upstreams);
        let handshake = async {
            let tcp = dial(upstreams, host).await?;
            // DNS + TLS + WebSocket upgrade: the CPU a cold start spends per host.
            upstreams
                .cpu
                .spend(upstreams.cpu_costs.upstream_handshake())
                .await;
            let cursor = host.cursor.load(SeqCst);
            if cursor > 0 {
                probe::reached(Probe::ResumeFromCursor);
            }
            upstreams
                .transport
                .subscribe(tcp, &host.hostname, cursor, ws_config(config))
                .await
                .map_err(|failure| SessionEnd::Failed(failure.reason()))
        };
        match timeout(connect_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(end)) => return end,
            Err(_) => return SessionEnd::Failed("timeout"),
        }
    };
    upstreams.metrics.upstream_attempt("connected");
    host.set_phase(HostPhase::Connected);
    if host.consecutive_failures.swap(0, SeqCst) > 0 {
        let persisted = upstreams
            .store
            .call(|store| store.set_status(host.id, HostStatus::Active, 0))
            .await;
        if let Err(error) = persisted {
            tracing::warn!(%error, host = %host.hostname, "cannot persist recovery");
        }
    }
    let Some(ingest) = upstreams.ingest.get() else {
        return SessionEnd::Ended {
            reason: "not_started",
            events: 0,
        };
    };
    let (_sink, mut frames) = stream.split();
    let idle = Duration::from_millis(config.read_idle_timeout_ms);
    let mut events = 0;
    let mut last_seq_this_session = 0;
    let limits = Limits::default();
    while host.quarantine_reason().is_none() {
        let ended = |reason| SessionEnd::Ended { reason, events };
        let message = match timeout(idle, frames.next()).await {
            Err(_) => return ended("read_idle_timeout"),
            Ok(None) => return ended("closed"),
            Ok(Some(Err(tungstenite::Error::Capacity(_)))) => {
                upstreams.metrics.upstream_bad_frame();
                return SessionEnd::Violated(SESSION_FRAME_TOO_LARGE);
            }
            Ok(Some(Err(_))) => return ended("protocol_error"),
            Ok(Some(Ok(message))) => message,
        };
        let payload = match message {
            Message::Binary(bytes) => bytes,
            // The event stream is binary: a text message is not a frame.
            Message::Text(_) => {
                upstreams.metrics.upstream_bad_frame();
                return SessionEnd::Violated(SESSION_MALFORMED_FRAME);
            }
            Message::Close(_) => return ended("closed"),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        // DAG-CBOR header and body, the syntax checks and the CAR's hashes and root.
        upstreams
            .cpu
            .spend(upstreams.cpu_costs.frame_decode())
            .await;
        let event = match frame::decode(&payload, &limits) {
            Ok(Incoming::Event(event)) => event,
            Ok(Incoming::Unknown(t)) => {
                upstreams.metrics.upstream_unknown_message();
                tracing::debug!(host = %host.hostname, t, "skipping a message of an unknown type");
                continue;
            }
            Ok(Incoming::Info(info)) => {
                upstreams.metrics.upstream_info(&info.name);
                tracing::info!(
                    host = %host.hostname,
                    name = info.name,
                    message = info.message.as_deref().unwrap_or(""),
                    "the host sent #info"
                );
                continue;
            }
            Ok(Incoming::Error(error)) => {
                upstreams.metrics.upstream_error_frame(&error.error);
                tracing::warn!(
                    host = %host.hostname,
                    error = error.error,
                    message = error.message.as_deref().unwrap_or(""),
                    "the host ended the stream with an error frame"
                );
                return ended(SESSION_UPSTREAM_ERROR);
            }
            Err(error) => {
                upstreams.metrics.upstream_bad_frame();
                if let BadFrame::SeqOutOfRange(_) = error {
                    upstreams.quarantine(host.id, QUARANTINE_SEQ_OUT_OF_RANGE);
                    return ended("quarantined");
                }
                tracing::debug!(host = %host.hostname, %error, "malformed frame");
                return SessionEnd::Violated(SESSION_MALFORMED_FRAME);
            }
        };
        if event.seq <= last_seq_this_session {
            upstreams.metrics.upstream_bad_frame();
            return SessionEnd::Violated(SESSION_SEQ_NOT_INCREASING);
        }
        last_seq_this_session = event.seq;
        if event.seq <= host.cursor.load(SeqCst) {
            upstreams.metrics.upstream_duplicate();
            continue;
        }
        allowance.retune(
            host.own_event_limit()
                .unwrap_or_else(|| EventLimit::of(&upstreams.config)),
        );
        let wait = allowance.take(upstreams.clock.now_us());
        if !wait.is_zero() {
            upstreams.metrics.upstream_rate_limited();
            host.rate_limited_total.fetch_add(1, SeqCst);
            host.throttled.store(true, SeqCst);
            sleep(wait).await;
            host.throttled.store(false, SeqCst);
        }
        let upstream_seq = event.seq;
        let change = match (event.rev, event.commit) {
            (Some(rev), Some(cid)) => AccountChange::Commit {
                rev,
                cid: cid.to_string(),
            },
            _ if event.kind == Kind::Account => AccountChange::Status {
                active: event.inactive_status.is_none(),
                status: event.inactive_status,
            },
            _ => AccountChange::Seen,
        };
        let ingested = Ingested {
            host_id: host.id,
            upstream_seq,
            kind: event.kind,
            account: AccountUpdate {
                did: event.did,
                change,
            },
            body: event.body,
            content_bytes: payload.len(),
        };
        // Waits while the sequencer is behind: backpressure to the upstream.
        if ingest.send(ingested).await.is_err() {
            return ended("shutdown");
        }
        host.cursor.fetch_max(upstream_seq, SeqCst);
        host.events_total.fetch_add(1, SeqCst);
        events += 1;
    }
    SessionEnd::Ended {
        reason: "quarantined",
        events,
    }
}
