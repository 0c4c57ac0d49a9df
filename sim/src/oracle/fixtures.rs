//! Trace records for the oracles' unit tests, built once: probes, relay samples, calls,
//! consumer ends and hostile outcomes at given simulated times.

use crate::trace::{Event, EventsSample, HttpSample, MemorySample, Trace, UpstreamSample};

pub(crate) fn probe(t_s: u64, ok: bool) -> (u64, Event) {
    (
        t_s * 1_000_000,
        Event::Probe {
            ok,
            status: ok.then_some(200),
            latency_us: 2_000,
            error: (!ok).then(|| "timeout after 1000ms".to_owned()),
        },
    )
}

#[derive(Default)]
pub(crate) struct Sample {
    pub(crate) t_s: u64,
    pub(crate) open: usize,
    pub(crate) high_water: usize,
    pub(crate) admitted: u64,
    pub(crate) released: u64,
    pub(crate) relay_tasks: usize,
    pub(crate) upstreams: UpstreamSample,
}

pub(crate) fn sample(s: Sample) -> (u64, Event) {
    (
        s.t_s * 1_000_000,
        Event::RelaySample {
            open: s.open,
            high_water: s.high_water,
            max: 4,
            admitted: s.admitted,
            released: s.released,
            refused: 0,
            relay_tasks: s.relay_tasks,
            upstreams: s.upstreams,
            events: EventsSample::default(),
            http: HttpSample::default(),
            memory: MemorySample::default(),
        },
    )
}

pub(crate) fn trace(events: impl IntoIterator<Item = (u64, Event)>) -> Trace {
    let mut trace = Trace::default();
    for (t_us, event) in events {
        trace.push(t_us, "test", event);
    }
    trace
}

/// A call that ended at `end_ms` after `latency_ms`, answered `status` (or not at all).
pub(crate) fn call(end_ms: u64, latency_ms: u64, status: Option<u16>) -> (u64, Event) {
    (
        end_ms * 1_000,
        Event::Call {
            status,
            latency_us: latency_ms * 1_000,
            error: status.is_none().then(|| "timeout after 5000ms".to_owned()),
        },
    )
}

pub(crate) fn upstream(t_s: u64, upstreams: UpstreamSample) -> (u64, Event) {
    sample(Sample {
        t_s,
        relay_tasks: 1,
        upstreams,
        ..Sample::default()
    })
}

pub(crate) fn head(t_s: u64, head_seq: u64, mailbox_high_water: usize) -> (u64, Event) {
    let (t_us, mut event) = upstream(t_s, UpstreamSample::default());
    if let Event::RelaySample { events, .. } = &mut event {
        events.head_seq = head_seq;
        events.mailbox_high_water = mailbox_high_water;
    }
    (t_us, event)
}

pub(crate) fn consumer_final(
    t_s: u64,
    name: &str,
    slow: bool,
    last_seq: u64,
    too_slow: u32,
) -> (u64, Event) {
    (
        t_s * 1_000_000,
        Event::ConsumerFinal {
            consumer: name.to_owned(),
            slow,
            last_seq,
            frames: last_seq,
            sessions: 1,
            too_slow,
            max_gap_ms: last_seq,
            log_agrees: None,
            latest_event: None,
            on_time: Vec::new(),
        },
    )
}

pub(crate) fn hostile(
    kind: &str,
    quarantined: Option<&str>,
    last_error: Option<&str>,
    persisted: u64,
) -> (u64, Event) {
    (
        150_000_000,
        Event::HostileOutcome {
            host: format!("{kind}.example"),
            kind: kind.to_owned(),
            phase: if quarantined.is_some() {
                "quarantined"
            } else {
                "backoff"
            }
            .to_owned(),
            quarantined: quarantined.map(str::to_owned),
            last_error: last_error.map(str::to_owned),
            persisted,
            rate_limited: 0,
        },
    )
}

pub(crate) fn ended(t_s: u64, consumer: &str, reason: &str, too_slow: bool) -> (u64, Event) {
    (
        t_s * 1_000_000,
        Event::ConsumerEnded {
            consumer: consumer.to_owned(),
            reason: reason.to_owned(),
            frames: 1,
            too_slow,
        },
    )
}

pub(crate) fn world(hosts: u32, dead: u32) -> (u64, Event) {
    (
        0,
        Event::UpstreamWorld {
            hosts,
            dead,
            flaky: 0,
            hostile: 0,
        },
    )
}
