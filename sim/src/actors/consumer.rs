//! Consumer actors: downstream subscribers of the relay's `/subscribe` WebSocket.
//!
//! Each consumer checks what it receives as it goes (relay sequence numbers must follow
//! its cursor with no gap and no duplicate) and records only what an oracle needs: each
//! session's start and end, the first anomaly of a session, and a final tally kept in
//! shared state that the world records at the end of the run. Per-frame records would
//! swamp the trace. Kinds:
//! - `fast` reads everything as soon as it arrives;
//! - `slow` stops reading for `stall_s` every `stall_every_s` (a GC pause, a stuck disk):
//!   its socket fills, then its relay-side queue, and the relay must kick it;
//! - `reconnecting` drops its connection every `reconnect_every_s` and resumes by cursor.
//!
//! Every consumer reconnects with its last sequence number after a session ends. Error
//! frames are anomalies (events lost) except `ConsumerTooSlow` and `StoreUnavailable`,
//! which end the session with nothing skipped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use relay::rt::net::TcpStream;
use relay::rt::time::{now, sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::TraceSink;
use crate::scenario::{ConsumerKind, ConsumerSpec};
use crate::trace::{Event, LateEvent};

/// What one consumer has seen so far; read by the world when the run ends.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Highest contiguous relay sequence number received.
    pub last_seq: u64,
    /// Frames received over all sessions.
    pub frames: u64,
    /// Sessions opened.
    pub sessions: u32,
    /// `ConsumerTooSlow` notices received.
    pub too_slow: u32,
    /// Longest wait between two consecutive frames of one session, microseconds.
    pub max_gap_us: u64,
    /// The first relay sequence number received (0 before any).
    pub first_seq: u64,
    /// XOR of [`event_digest`] over every frame received: compared with the relay's event
    /// log at the end, it shows whether each relay seq carried the event the log holds.
    pub digest: u64,
    /// The polite host's event that took longest to arrive (timed only with [`SendTimes`]).
    pub latest_event: Option<LateEvent>,
    /// Steady polite hosts' events received in time, by window of their send time (counted
    /// only when [`SendTimes::coverage`] is set).
    pub on_time: Vec<u64>,
}

/// When each steady polite host sent each event (event `n` at `n · interval` after the world
/// started), by the host's id in the relay's table: what consumers time deliveries against.
#[derive(Clone, Debug)]
pub struct SendTimes {
    /// Event interval of every steady polite host, by host id.
    pub intervals: BTreeMap<i64, Duration>,
    /// `fair_share`: events sent before this point of the run are not timed (the startup
    /// ramp); `None` when the scenario does not check it.
    pub fair_share_from: Option<Duration>,
    /// `coverage_min`: the windows events are counted in, and how soon they must arrive.
    pub coverage: Option<CoverageWindows>,
}

/// How `coverage_min` counts: events by window of their send time, covered when they
/// arrive within `within` of being sent.
#[derive(Clone, Copy, Debug)]
pub struct CoverageWindows {
    /// Window length.
    pub window: Duration,
    /// Deadline after the send time.
    pub within: Duration,
}

impl SendTimes {
    /// When event `upstream_seq` of host `host_id` was sent, if the host is timed.
    fn sent(&self, host_id: i64, upstream_seq: u64) -> Option<Duration> {
        let interval = self.intervals.get(&host_id)?;
        Some(*interval * u32::try_from(upstream_seq).ok()?)
    }

    /// How long event `upstream_seq` of host `host_id` took to arrive at `arrived`, if the
    /// host is timed and the event was sent after `fair_share`'s start.
    pub fn delay(
        &self,
        host_id: i64,
        upstream_seq: u64,
        arrived: Instant,
        world_start: Instant,
    ) -> Option<Duration> {
        let sent = self.sent(host_id, upstream_seq)?;
        (sent >= self.fair_share_from?)
            .then(|| arrived.saturating_duration_since(world_start + sent))
    }

    /// The coverage window of event `upstream_seq` of host `host_id`, if it is timed,
    /// coverage is counted and it arrived (at `arrived`) in time.
    pub fn on_time_window(
        &self,
        host_id: i64,
        upstream_seq: u64,
        arrived: Instant,
        world_start: Instant,
    ) -> Option<usize> {
        let CoverageWindows { window, within } = self.coverage?;
        let sent = self.sent(host_id, upstream_seq)?;
        (arrived.saturating_duration_since(world_start + sent) <= within)
            .then(|| (sent.as_micros() / window.as_micros().max(1)) as usize)
    }

    /// What the steady polite hosts sent in each coverage window of a run of `duration`
    /// (event `n` at `n · interval`, for `n` from 1), as the trace records it; `None` when
    /// coverage is not counted.
    pub fn coverage_sent(&self, duration: Duration) -> Option<Event> {
        let CoverageWindows { window, within } = self.coverage?;
        let window_us = window.as_micros().max(1);
        let mut sent = vec![0; duration.as_micros().div_ceil(window_us) as usize];
        for interval in self.intervals.values().filter(|i| !i.is_zero()) {
            let mut at = *interval;
            while at < duration {
                sent[(at.as_micros() / window_us) as usize] += 1;
                at += *interval;
            }
        }
        Some(Event::CoverageSent {
            window_s: window.as_secs(),
            within_s: within.as_secs(),
            sent,
        })
    }
}

/// One delivered event's digest: which relay seq carried which host's event. XOR-ed over a
/// range of seqs, consumers and the log audit can compare ranges without keeping frames.
pub fn event_digest(seq: u64, host_id: i64, upstream_seq: u64) -> u64 {
    let mut bytes = [0; 24];
    for (chunk, word) in bytes
        .chunks_exact_mut(8)
        .zip([seq, host_id as u64, upstream_seq])
    {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    crate::trace::fnv1a(&bytes)
}

/// Shared handle on a consumer's tally.
pub type SharedTally = Arc<Mutex<Tally>>;

/// Run consumer `name` forever (the world ends the simulation).
pub async fn run(
    spec: ConsumerSpec,
    name: String,
    relay: SocketAddr,
    sink: TraceSink,
    tally: SharedTally,
    send_times: Option<Arc<SendTimes>>,
    world_start: Instant,
) {
    sleep_until(world_start + Duration::from_secs(spec.start_s)).await;
    let stop_at = spec
        .stop_s
        .map(|stop| world_start + Duration::from_secs(stop));
    let mut next_stall = now() + Duration::from_secs(spec.stall_every_s.max(1));
    loop {
        let cursor = tally.lock().expect("tally lock").last_seq;
        let session = session(
            &spec,
            &name,
            relay,
            cursor,
            &sink,
            &tally,
            &mut next_stall,
            (send_times.as_deref(), world_start),
        );
        let ended = match stop_at {
            Some(stop_at) => tokio::select! {
                biased;
                ended = session => ended,
                () = sleep_until(stop_at) => {
                    // Leave for good: the connection is dropped with the session future.
                    sink.record(&name, Event::ConsumerEnded { consumer: name.clone(), reason: "stopped".into(), frames: 0, too_slow: false });
                    return;
                }
            },
            None => session.await,
        };
        sink.record(&name, ended);
        sleep(Duration::from_secs(1)).await;
    }
}

#[allow(clippy::too_many_arguments)] // one session's whole context, passed once
async fn session(
    spec: &ConsumerSpec,
    name: &str,
    relay: SocketAddr,
    cursor: u64,
    sink: &TraceSink,
    tally: &SharedTally,
    next_stall: &mut Instant,
    (send_times, world_start): (Option<&SendTimes>, Instant),
) -> Event {
    let end = |reason: &str, frames: u64, too_slow: bool| Event::ConsumerEnded {
        consumer: name.to_owned(),
        reason: reason.to_owned(),
        frames,
        too_slow,
    };
    let connect = async {
        let stream = TcpStream::connect(relay).await.map_err(|e| e.to_string())?;
        let url = format!("ws://{relay}/subscribe?cursor={cursor}");
        tokio_tungstenite::client_async_with_config(url, stream, Some(super::actor_ws_config()))
            .await
            .map(|(socket, _)| socket)
            .map_err(|e| e.to_string())
    };
    let mut socket = match timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return end(&format!("connect: {error}"), 0, false),
        Err(_) => return end("connect: timeout", 0, false),
    };
    tally.lock().expect("tally lock").sessions += 1;
    sink.record(
        name,
        Event::ConsumerConnected {
            consumer: name.to_owned(),
            cursor,
        },
    );
    let session_end = match spec.kind {
        ConsumerKind::Reconnecting => Some(now() + Duration::from_secs(spec.reconnect_every_s)),
        _ => None,
    };
    let mut expected = cursor + 1;
    let mut frames = 0;
    let mut last_frame_at: Option<Instant> = None;
    let mut anomaly_reported = false;
    loop {
        if spec.kind == ConsumerKind::Slow && now() >= *next_stall {
            sleep(Duration::from_secs(spec.stall_s)).await;
            *next_stall = now() + Duration::from_secs(spec.stall_every_s);
        }
        if session_end.is_some_and(|end| now() >= end) {
            return end("planned_disconnect", frames, false);
        }
        let message = match timeout(Duration::from_secs(1), socket.next()).await {
            Err(_) => continue,
            Ok(None) => return end("eof", frames, false),
            Ok(Some(Err(error))) => return end(&format!("error: {error}"), frames, false),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let reason =
                    frame.map_or_else(|| "close".to_owned(), |f| format!("close: {}", f.reason));
                return end(&reason, frames, false);
            }
            _ => continue,
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return end("bad_json", frames, false);
        };
        if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
            if error == "ConsumerTooSlow" {
                tally.lock().expect("tally lock").too_slow += 1;
                return end("too_slow", frames, true);
            }
            if error == "StoreUnavailable" {
                // The relay could not read the catch-up page: nothing was skipped, the
                // consumer retries with the same cursor.
                return end("store_unavailable", frames, false);
            }
            if !anomaly_reported {
                anomaly_reported = true;
                sink.record(
                    name,
                    Event::ConsumerAnomaly {
                        consumer: name.to_owned(),
                        expected,
                        got: 0,
                        detail: error.to_owned(),
                    },
                );
            }
            continue;
        }
        let seq = value.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
        if seq != expected && !anomaly_reported {
            anomaly_reported = true;
            sink.record(
                name,
                Event::ConsumerAnomaly {
                    consumer: name.to_owned(),
                    expected,
                    got: seq,
                    detail: if seq < expected {
                        "duplicate_or_reordered"
                    } else {
                        "gap"
                    }
                    .to_owned(),
                },
            );
        }
        if seq >= expected {
            expected = seq + 1;
            frames += 1;
            let arrived = now();
            let gap_us = last_frame_at.map_or(0, |last| {
                u64::try_from(arrived.duration_since(last).as_micros()).unwrap_or(u64::MAX)
            });
            last_frame_at = Some(arrived);
            let host_id = value.get("host_id").and_then(|h| h.as_i64()).unwrap_or(0);
            let upstream_seq = value
                .get("upstream_seq")
                .and_then(|u| u.as_u64())
                .unwrap_or(0);
            let mut tally = tally.lock().expect("tally lock");
            tally.max_gap_us = tally.max_gap_us.max(gap_us);
            tally.frames += 1;
            tally.last_seq = seq;
            if tally.first_seq == 0 {
                tally.first_seq = seq;
            }
            tally.digest ^= event_digest(seq, host_id, upstream_seq);
            if let Some(window) = send_times
                .and_then(|times| times.on_time_window(host_id, upstream_seq, arrived, world_start))
            {
                if tally.on_time.len() <= window {
                    tally.on_time.resize(window + 1, 0);
                }
                tally.on_time[window] += 1;
            }
            if let Some(delay) = send_times
                .and_then(|times| times.delay(host_id, upstream_seq, arrived, world_start))
            {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if tally
                    .latest_event
                    .as_ref()
                    .is_none_or(|latest| delay_ms > latest.delay_ms)
                {
                    tally.latest_event = Some(LateEvent {
                        host_id,
                        upstream_seq,
                        delay_ms,
                    });
                }
            }
        }
    }
}
