//! The trace: the ordered record of everything observable that happened in one run, and
//! its hash. Same scenario + same seed must give the same records, hence the same hash.
//!
//! Records are serialised as JSON lines (field order fixed by the structs), and the hash is
//! 64-bit FNV-1a over exactly those lines, so the hash printed by a run and the hash of the
//! artifact's `trace.jsonl` are the same thing.

use serde::{Deserialize, Serialize};

use crate::scenario::AbuseKind;

/// What happened. One variant per kind of observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The world moved to a new phase (e.g. `churn_stopped`).
    Phase {
        /// Phase name.
        name: String,
    },
    /// The generated upstream world, recorded once before the relay starts.
    UpstreamWorld {
        /// Hosts in the relay's table.
        hosts: u32,
        /// Hosts that never answer.
        dead: u32,
        /// Hosts that alternate between up and down.
        flaky: u32,
        /// Hosts of the hostile cast (counted in `hosts`); left out of the record while
        /// zero, so worlds without them keep their traces.
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        hostile: u32,
    },
    /// An upstream host accepted a subscription.
    Subscribed {
        /// The cursor the relay asked to resume from.
        cursor: u64,
    },
    /// A flaky host went down while a relay subscription was live: it cut the connection,
    /// and it accepts subscriptions again `up_after_ms` later.
    HostDown {
        /// Until the host is up again, milliseconds.
        up_after_ms: u64,
    },
    /// A fault started or ended.
    Fault {
        /// What kind of fault (`partition`, `kill_relay`, `power_loss`, `restart_relay`,
        /// `store_fault`, `store_stall`, `handler_panic`, `handler_stall`, `hosts_restart`,
        /// `hosts_dark`, …: `FaultKind::name`).
        kind: String,
        /// Which `[[faults]]` entry (0-based, in file order).
        #[serde(default)]
        index: u32,
        /// Upstream hosts affected.
        hosts: u32,
        /// Whether it is starting (`true`) or healing (`false`).
        active: bool,
        /// On the healing record, what the fault did while it lasted: hosts cut off
        /// (`partition`), failures the relay's fault points injected (`store_fault`,
        /// `store_stall`, `handler_panic`, `handler_stall`), 1 for a relay stopped while up (`kill_relay`,
        /// `power_loss`, `restart_relay`) or a network changed (`clog`, `latency`). 0 means it never took
        /// effect (the `faults_fired` oracle fails the run).
        #[serde(default)]
        effect: u64,
    },
    /// One liveness probe finished.
    Probe {
        /// Whether the orchestrator would count it as a success.
        ok: bool,
        /// HTTP status, if a response head arrived.
        status: Option<u16>,
        /// Time from connect to full response (or to giving up), microseconds.
        latency_us: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// How many events the steady polite hosts sent in each window of the run (recorded
    /// once at the end, in worlds that check `coverage_min`): what consumers' `on_time`
    /// counts are divided by.
    CoverageSent {
        /// Window length, seconds.
        window_s: u64,
        /// An event counts as covered if a consumer received it within this, seconds.
        within_s: u64,
        /// Events sent, by window.
        sent: Vec<u64>,
    },
    /// The orchestrator restarted the relay after `[prober].failure_threshold` failed
    /// liveness probes (`[prober] restart = true`); recorded once the relay is down.
    LivenessRestart {
        /// Restarts so far in the run, this one included.
        restart: u32,
        /// Whether the relay stopped within the termination grace period (else killed).
        graceful: bool,
        /// Crash-loop back-off before the relay is started again, seconds.
        back_off_s: u64,
    },
    /// One API call finished (answered, failed or given up).
    Call {
        /// HTTP status, if a complete response arrived.
        status: Option<u16>,
        /// Time from sending (or connecting) to the full response or giving up, microseconds.
        latency_us: u64,
        /// Why no response arrived, if none did.
        error: Option<String>,
    },
    /// One abuser attempt ended: what it sent and how the relay answered.
    Abuse {
        /// What was sent.
        kind: AbuseKind,
        /// An HTTP status (`"431"`), `"closed"` (closed without a response),
        /// `"ws close <code>"`, or `"no answer"` / `"error: …"` when nothing useful came back.
        answer: String,
        /// From connecting to the answer, microseconds.
        latency_us: u64,
    },
    /// One churner connection ended.
    Churn {
        /// What the loop did with the connection.
        action: ChurnAction,
        /// Responses received with a status other than 503.
        requests_ok: u32,
        /// Whether the relay answered 503 (refused at capacity).
        refused: bool,
        /// How the connection ended, if not as planned.
        error: Option<String>,
    },
    /// A periodic sample of the relay's own accounting.
    RelaySample {
        /// Connections open in the lifecycle registry.
        open: usize,
        /// Registry high-water mark.
        high_water: usize,
        /// Configured `max_connections`.
        max: usize,
        /// Admissions granted so far.
        admitted: u64,
        /// Owners released so far.
        released: u64,
        /// Admissions refused at capacity so far.
        refused: u64,
        /// Live tasks the relay spawned through its runtime seam (`relay::rt::tasks_alive`: a
        /// census kept by `rt::spawn`, independent of the lifecycle registry).
        relay_tasks: usize,
        /// Upstream side of the same sample.
        #[serde(flatten)]
        upstreams: UpstreamSample,
        /// Event pipeline side of the same sample.
        #[serde(flatten)]
        events: EventsSample,
        /// Request dispatch side of the same sample.
        #[serde(flatten)]
        http: HttpSample,
        /// The memory account at the same instant.
        #[serde(flatten)]
        memory: MemorySample,
    },
    /// A consumer's WebSocket subscription was accepted.
    ConsumerConnected {
        /// Consumer name.
        consumer: String,
        /// The cursor it resumed from.
        cursor: u64,
    },
    /// A consumer's session ended.
    ConsumerEnded {
        /// Consumer name.
        consumer: String,
        /// Why (`too_slow`, `planned_disconnect`, `eof`, `close: …`, `connect: …`).
        reason: String,
        /// Event frames received in this session.
        frames: u64,
        /// Whether the relay said `ConsumerTooSlow`.
        too_slow: bool,
    },
    /// A consumer received something out of order (first one per session).
    ConsumerAnomaly {
        /// Consumer name.
        consumer: String,
        /// The sequence number it expected next.
        expected: u64,
        /// What arrived (0 for an error frame).
        got: u64,
        /// `gap`, `duplicate_or_reordered`, or the relay's error code.
        detail: String,
    },
    /// A consumer's totals at the end of the run.
    ConsumerFinal {
        /// Consumer name.
        consumer: String,
        /// Whether it is a slow consumer (exempt from catching up).
        slow: bool,
        /// Highest sequence number received.
        last_seq: u64,
        /// Event frames received over all sessions.
        frames: u64,
        /// Sessions opened.
        sessions: u32,
        /// `ConsumerTooSlow` notices received.
        too_slow: u32,
        /// Longest wait between two consecutive frames within one session, milliseconds.
        #[serde(default)]
        max_gap_ms: u64,
        /// Whether the events it received are the ones the relay's event log holds under
        /// the same relay seqs (host and upstream seq compared, by digest); `None` when
        /// not comparable (nothing received, a range with holes, or rows the log no longer
        /// holds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log_agrees: Option<bool>,
        /// The polite host's event that took longest from being sent to reaching this
        /// consumer (only in worlds that check `fair_share`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latest_event: Option<LateEvent>,
        /// Steady polite hosts' events this consumer received within `coverage_min`'s
        /// `within_s` of being sent, by window of the send time (only in worlds that check
        /// `coverage_min`; see [`Event::CoverageSent`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        on_time: Vec<u64>,
    },
    /// What the relay's event log holds at the end of the run (read from its SQLite file).
    StoreAudit {
        /// Events in the log.
        events: u64,
        /// Lowest relay sequence number (0 when empty).
        oldest_seq: u64,
        /// Highest relay sequence number (0 when empty).
        head_seq: u64,
        /// Hosts whose persisted upstream sequence numbers have a hole.
        hosts_with_gaps: u32,
        /// Steady hosts (not flaky, not dead, not partitioned) whose log ends before the
        /// last event they emitted `lag_s` before the end of the run.
        hosts_behind: u32,
        /// The first such host, for the report.
        first_behind: Option<String>,
    },
    /// Real mode only: what the relay's processes used, read from `/proc` just before each
    /// stopped (the highest peak RSS, the CPU time summed over incarnations).
    RelayProcess {
        /// Incarnations started.
        incarnations: u32,
        /// Highest peak resident set size (`VmHWM`) of an incarnation, bytes.
        peak_rss_bytes: u64,
        /// CPU time (user + system) of all incarnations, milliseconds.
        cpu_ms: u64,
    },
    /// `conn_accounting` had not seen the relay settle by its deadline: the connections the
    /// relay still held at the first sample after it (recorded only then, so a passing
    /// run's trace has none).
    StillOpen {
        /// Each connection held open, oldest slot first.
        connections: Vec<OpenConnectionRecord>,
    },
    /// How a hostile host ended, as the relay's host table showed it at the end of the run.
    HostileOutcome {
        /// Its hostname.
        host: String,
        /// The misbehaviour it played (`seq_overflow`, `flood`, …).
        kind: String,
        /// The relay's phase for it (`quarantined`, `backoff`, `connected`, …).
        phase: String,
        /// Why it was quarantined, if it was.
        quarantined: Option<String>,
        /// Why its last attempt or session ended, if one had.
        last_error: Option<String>,
        /// Its events in the relay's event log.
        persisted: u64,
        /// Its events the relay's rate limit held back.
        rate_limited: u64,
    },
    /// How a dead host of a loaded host table ended, as the relay's host table showed it at
    /// the end of the run (one record per such host; generated tables record none).
    DeadHostOutcome {
        /// Its hostname.
        host: String,
        /// How it never answered (`refused`, `unresolved`, `black_hole`).
        dead: String,
        /// The relay's phase for it (`backoff`, `dormant`, …; `absent` if not in the table).
        phase: String,
        /// Why the relay's last attempt ended (`connect_error`, `timeout`, …), if one had.
        last_error: Option<String>,
        /// Frames the relay received from it.
        events: u64,
    },
    /// Something dialled a forbidden (internal) address of the crawl flood's world: only
    /// the relay dials upstreams, so the relay did.
    ForbiddenDial {
        /// The internal address dialled.
        address: String,
        /// Where the connection came from.
        peer: String,
    },
    /// A task panicked; the simulation stopped here.
    Panic {
        /// The panic message.
        message: String,
    },
}

/// One connection the relay held open, named for a leak report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenConnectionRecord {
    /// The peer (`10.0.3.1:40001`).
    pub peer: String,
    /// Lifecycle phase: `accepted`, `active`, or `draining (<reason>)`.
    pub phase: String,
    /// Time since admission, ms (0 when unrecorded).
    pub age_ms: u64,
    /// Time since its last activity, ms.
    pub idle_ms: u64,
}

impl std::fmt::Display for OpenConnectionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, open {:.1}s, last activity {:.1}s ago)",
            self.peer,
            self.phase,
            self.age_ms as f64 / 1e3,
            self.idle_ms as f64 / 1e3
        )
    }
}

/// The relay's upstream accounting at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSample {
    /// Hosts in the table.
    pub hosts: usize,
    /// Hosts subscribed now.
    pub hosts_connected: usize,
    /// Dormant hosts.
    pub hosts_dormant: usize,
    /// Hosts with neither a worker nor dormancy (should be transient).
    pub hosts_idle: usize,
    /// Worker tasks alive.
    pub workers_running: usize,
    /// Most worker tasks ever alive at once.
    pub workers_high_water: usize,
    /// Handshakes in flight now.
    pub handshakes_in_flight: usize,
    /// Most handshakes ever in flight at once.
    pub handshakes_high_water: usize,
    /// Upstream frames received so far.
    pub upstream_events: u64,
}

/// The relay's event pipeline at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsSample {
    /// Highest persisted relay sequence number.
    #[serde(default)]
    pub head_seq: u64,
    /// Consumers subscribed now.
    #[serde(default)]
    pub consumers: usize,
    /// Consumers kicked so far.
    #[serde(default)]
    pub consumers_kicked: u64,
    /// Most frames ever waiting in one consumer's queue.
    #[serde(default)]
    pub mailbox_high_water: usize,
    /// Whether the event log accepted its last commit.
    #[serde(default)]
    pub store_healthy: bool,
}

/// The relay's request dispatch at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSample {
    /// Most dispatched handlers ever running at once.
    #[serde(default)]
    pub handlers_high_water: usize,
}

/// The relay's memory account at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Bytes queued for consumers now.
    #[serde(default)]
    pub memory_held_bytes: u64,
    /// Most bytes ever queued for consumers at once.
    #[serde(default)]
    pub memory_high_water_bytes: u64,
    /// Whether the breaker is open.
    #[serde(default)]
    pub memory_shedding: bool,
    /// Requests shed with 503 so far.
    #[serde(default)]
    pub memory_shed_total: u64,
    /// Consumers kicked to get back under the budget so far.
    #[serde(default)]
    pub memory_kicked: u64,
    /// Most content bytes of upstream events the ingest queue ever held at once. Left out
    /// of the record while zero (worlds without upstreams), so their traces are unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingest_high_water_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

/// One delivered event and how long it took, from when its host sent it to when a consumer
/// received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvent {
    /// The host's index in the world (its accounts' DIDs name it).
    pub host: u32,
    /// The account it is about.
    pub did: String,
    /// Its `rev` (empty for a message without one).
    pub rev: String,
    /// Sent to received, milliseconds.
    pub delay_ms: u64,
}

/// What a churner loop does with one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChurnAction {
    /// Connect, then drop.
    AbruptClose,
    /// Half a request head, then drop.
    MidRequestClose,
    /// Several requests on one connection.
    Keepalive,
    /// One request, then silence.
    IdleHold,
    /// One request, the write half shut, the response read to the end.
    HalfClose,
}

/// One trace record: when, where, what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Simulated time since the world started, microseconds.
    pub t_us: u64,
    /// The node (or world component) that observed it.
    pub node: String,
    /// The observation.
    #[serde(flatten)]
    pub event: Event,
}

/// The ordered records of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    records: Vec<Record>,
}

impl Trace {
    /// Append a record.
    pub fn push(&mut self, t_us: u64, node: impl Into<String>, event: Event) {
        self.records.push(Record {
            t_us,
            node: node.into(),
            event,
        });
    }

    /// All records, in order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// One JSON object per line.
    pub fn to_jsonl(&self) -> String {
        let mut text = String::new();
        for record in &self.records {
            text.push_str(&serde_json::to_string(record).expect("records always serialise"));
            text.push('\n');
        }
        text
    }

    /// Parse JSON lines back into a trace (for replay comparison and tools).
    pub fn from_jsonl(text: &str) -> Result<Self, serde_json::Error> {
        let records = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok(Self { records })
    }

    /// FNV-1a (64-bit) over [`Trace::to_jsonl`].
    pub fn hash(&self) -> u64 {
        fnv1a(self.to_jsonl().as_bytes())
    }

    /// Index of the first record where `self` and `other` differ, if any.
    pub fn first_divergence(&self, other: &Trace) -> Option<usize> {
        let common = self.records.len().min(other.records.len());
        (0..common)
            .find(|&i| self.records[i] != other.records[i])
            .or((self.records.len() != other.records.len()).then_some(common))
    }
}

/// 64-bit FNV-1a: the trace hash, and the tunnel's other seed-stable digests.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        let mut trace = Trace::default();
        trace.push(
            0,
            "world",
            Event::Phase {
                name: "start".into(),
            },
        );
        trace.push(
            1_500,
            "prober",
            Event::Probe {
                ok: true,
                status: Some(200),
                latency_us: 1_200,
                error: None,
            },
        );
        trace
    }

    #[test]
    fn jsonl_round_trips_and_hash_is_stable() {
        let trace = sample();
        let text = trace.to_jsonl();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"t_us":0,"node":"world","event":"phase","name":"start"}"#
        );
        assert_eq!(Trace::from_jsonl(&text).unwrap(), trace);
        assert_eq!(trace.hash(), fnv1a(text.as_bytes()));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn first_divergence_names_the_record() {
        let a = sample();
        let mut b = sample();
        assert_eq!(a.first_divergence(&b), None);
        b.push(
            2,
            "x",
            Event::Phase {
                name: "extra".into(),
            },
        );
        assert_eq!(a.first_divergence(&b), Some(2));
        let mut c = Trace::default();
        c.push(
            0,
            "world",
            Event::Phase {
                name: "start".into(),
            },
        );
        c.push(
            1_501,
            "prober",
            Event::Phase {
                name: "other".into(),
            },
        );
        assert_eq!(a.first_divergence(&c), Some(1));
    }
}
