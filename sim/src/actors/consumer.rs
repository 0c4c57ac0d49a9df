//! Consumer actors: downstream subscribers of the relay's firehose,
//! `/xrpc/com.atproto.sync.subscribeRepos?cursor=N`.
//!
//! Each consumer decodes every frame with the codec the relay decodes its upstreams with,
//! so the relay's output is held to the checks it applies to its input: framing, body
//! shape, DID and TID syntax and limits on every frame; the CAR's hashes and root on one
//! frame in [`BLOCKS_CHECKED_ONE_IN`] (`frame::decode`; the others through
//! `frame::decode_forwarded`: the relay checked every CAR on the way in and forwards the
//! bytes, and reading every CAR again in every consumer was the tunnel's largest cost at
//! realistic volume). It checks what it receives as it goes (relay sequence numbers must follow its cursor
//! with no gap and no duplicate) and records only what an oracle needs: each
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
//! which end the session with nothing skipped; so is `#info` `OutdatedCursor` (the events
//! between the cursor and the oldest kept are never sent). A frame that does not decode
//! ends the session (`bad_frame`).
//!
//! An event names its host through its DID and its send time through its `rev` (or `time`)
//! ([`super::repo`]): that is what deliveries are timed by. Its digest is over its relay
//! seq and the frame's bytes, which the relay's log holds as the kind and the body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use relay::atproto::frame::{
    self, decode, decode_forwarded, Incoming, Limits, SUBSCRIBE_REPOS_PATH,
};
use relay::rt::net::TcpStream;
use relay::rt::time::{now, sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::repo;
use super::TraceSink;
use crate::scenario::{ConsumerKind, ConsumerSpec};
use crate::trace::{Event, LateEvent};

/// A consumer reads the CAR slice of one frame in this many (the first of each session
/// among them).
pub const BLOCKS_CHECKED_ONE_IN: u64 = 16;

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

/// Which hosts' events consumers time, and how: every steady polite host (event `n` sent
/// at its schedule's offset after the world started, which the event's `rev` or `time`
/// says), by its index, which its accounts' DIDs name.
#[derive(Clone, Debug)]
pub struct SendTimes {
    /// The schedule of every steady polite host, by host index.
    pub schedules: BTreeMap<u32, repo::Schedule>,
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
    /// The host of `event` and when it sent it (after the world's start), if the host is
    /// timed.
    fn sent(&self, event: &frame::Event) -> Option<(u32, Duration)> {
        let (host, _) = repo::host_of(&event.did)?;
        self.schedules.contains_key(&host).then_some(())?;
        Some((host, repo::sent_at(event)?))
    }

    /// How long `event` took to arrive at `arrived`, and its host, if the host is timed
    /// and the event was sent after `fair_share`'s start.
    pub fn delay(
        &self,
        event: &frame::Event,
        arrived: Instant,
        world_start: Instant,
    ) -> Option<(u32, Duration)> {
        let (host, sent) = self.sent(event)?;
        (sent >= self.fair_share_from?)
            .then(|| (host, arrived.saturating_duration_since(world_start + sent)))
    }

    /// The coverage window of `event`, if its host is timed, coverage is counted and it
    /// arrived (at `arrived`) in time.
    pub fn on_time_window(
        &self,
        event: &frame::Event,
        arrived: Instant,
        world_start: Instant,
    ) -> Option<usize> {
        let CoverageWindows { window, within } = self.coverage?;
        let (_, sent) = self.sent(event)?;
        (arrived.saturating_duration_since(world_start + sent) <= within)
            .then(|| (sent.as_micros() / window.as_micros().max(1)) as usize)
    }

    /// What the steady polite hosts sent in each coverage window of a run of `duration`
    /// (event `n` at its schedule's offset, for `n` from 1), as the trace records it; `None`
    /// when coverage is not counted.
    pub fn coverage_sent(&self, duration: Duration) -> Option<Event> {
        let CoverageWindows { window, within } = self.coverage?;
        let window_us = window.as_micros().max(1);
        let mut sent = vec![0; duration.as_micros().div_ceil(window_us) as usize];
        for schedule in self.schedules.values() {
            for n in 1..=schedule.sent_by(duration) {
                let at = schedule.offset(n);
                if at < duration {
                    sent[(at.as_micros() / window_us) as usize] += 1;
                }
            }
        }
        Some(Event::CoverageSent {
            window_s: window.as_secs(),
            within_s: within.as_secs(),
            sent,
        })
    }
}

/// One delivered event's digest: which relay seq carried which frame (the frame's bytes:
/// its header, so its kind, and its body, as the relay's log holds them). XOR-ed over a
/// range of seqs, consumers and the log audit can compare ranges without keeping frames.
/// A word-at-a-time hash in four lanes, not FNV-1a byte by byte: a realistic-volume run
/// digests about a gigabyte of frames twice (consumer and audit), and only accidental
/// differences need catching.
pub fn event_digest(seq: u64, frame: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [seq ^ K, seq.rotate_left(17), !seq, frame.len() as u64];
    let word = |bytes: &[u8]| {
        let mut padded = [0u8; 8];
        padded[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(padded)
    };
    let mut chunks = frame.chunks_exact(32);
    for chunk in &mut chunks {
        for (lane, bytes) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
            *lane = (lane.rotate_left(23) ^ word(bytes)).wrapping_mul(K);
        }
    }
    for (i, bytes) in chunks.remainder().chunks(8).enumerate() {
        lanes[i] = (lanes[i].rotate_left(23) ^ word(bytes)).wrapping_mul(K);
    }
    let mut z = lanes.iter().fold(0u64, |hash, lane| {
        (hash ^ lane).wrapping_mul(K).rotate_left(29)
    });
    // SplitMix64's finalizer, so that XOR-ing many digests keeps them apart.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A session records only its first anomaly (later ones follow from it).
#[derive(Default)]
struct FirstAnomaly {
    reported: bool,
}

impl FirstAnomaly {
    /// Record consumer `name`'s anomaly (expecting seq `expected`, got `got`, 0 for a
    /// message without one) unless this session already recorded one.
    fn report(&mut self, sink: &TraceSink, name: &str, expected: u64, got: u64, detail: String) {
        if !std::mem::replace(&mut self.reported, true) {
            sink.record(
                name,
                Event::ConsumerAnomaly {
                    consumer: name.to_owned(),
                    expected,
                    got,
                    detail,
                },
            );
        }
    }
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
        let url = format!("ws://{relay}{SUBSCRIBE_REPOS_PATH}?cursor={cursor}");
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
    let mut first_anomaly = FirstAnomaly::default();
    let mut frames_read: u64 = 0;
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
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(frame) => {
                let reason =
                    frame.map_or_else(|| "close".to_owned(), |f| format!("close: {}", f.reason));
                return end(&reason, frames, false);
            }
            _ => continue,
        };
        let decoded = if frames_read.is_multiple_of(BLOCKS_CHECKED_ONE_IN) {
            decode(&bytes, &Limits::default())
        } else {
            decode_forwarded(&bytes, &Limits::default())
        };
        frames_read += 1;
        let event = match decoded {
            Err(error) => return end(&format!("bad_frame: {error}"), frames, false),
            Ok(Incoming::Event(event)) => event,
            Ok(Incoming::Unknown(_)) => continue,
            Ok(Incoming::Error(error)) => {
                match error.error.as_str() {
                    "ConsumerTooSlow" => {
                        tally.lock().expect("tally lock").too_slow += 1;
                        return end("too_slow", frames, true);
                    }
                    // The relay could not read the catch-up page: nothing was skipped, the
                    // consumer retries with the same cursor.
                    "StoreUnavailable" => return end("store_unavailable", frames, false),
                    _ => {}
                }
                first_anomaly.report(sink, name, expected, 0, error.error);
                continue;
            }
            Ok(Incoming::Info(info)) => {
                // `OutdatedCursor`: the events up to the oldest kept are never sent.
                first_anomaly.report(sink, name, expected, 0, info.name);
                continue;
            }
        };
        let seq = event.seq;
        if seq != expected {
            let detail = if seq < expected {
                "duplicate_or_reordered"
            } else {
                "gap"
            };
            first_anomaly.report(sink, name, expected, seq, detail.to_owned());
        }
        if seq >= expected {
            expected = seq + 1;
            frames += 1;
            let arrived = now();
            let gap_us = last_frame_at.map_or(0, |last| {
                u64::try_from(arrived.duration_since(last).as_micros()).unwrap_or(u64::MAX)
            });
            last_frame_at = Some(arrived);
            let mut tally = tally.lock().expect("tally lock");
            tally.max_gap_us = tally.max_gap_us.max(gap_us);
            tally.frames += 1;
            tally.last_seq = seq;
            if tally.first_seq == 0 {
                tally.first_seq = seq;
            }
            tally.digest ^= event_digest(seq, &bytes);
            if let Some(window) =
                send_times.and_then(|times| times.on_time_window(&event, arrived, world_start))
            {
                if tally.on_time.len() <= window {
                    tally.on_time.resize(window + 1, 0);
                }
                tally.on_time[window] += 1;
            }
            if let Some((host, delay)) =
                send_times.and_then(|times| times.delay(&event, arrived, world_start))
            {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if tally
                    .latest_event
                    .as_ref()
                    .is_none_or(|latest| delay_ms > latest.delay_ms)
                {
                    tally.latest_event = Some(LateEvent {
                        host,
                        did: event.did,
                        rev: event.rev.unwrap_or_default(),
                        delay_ms,
                    });
                }
            }
        }
    }
}
