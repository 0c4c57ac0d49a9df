//! Scenario files: the schema, loading, and validation with `file:line:col: …` errors.
//!
//! A scenario names the simulated duration, relay configuration overrides (the relay's own
//! schema, so a typo in `[relay]` is caught exactly as the binary would catch it), the
//! network, the clients, the oracles to check, and whether the run is expected to pass or
//! to fail a named oracle (to prove that oracle bites). Every table is
//! `deny_unknown_fields`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::swarm::SwarmRange;

mod problems;
pub use problems::{Located, Problem};

/// One scenario file, parsed and validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short identifier, used in reports and artifact names.
    pub name: String,
    /// What the scenario reproduces and why it should pass (or fail).
    #[serde(default)]
    pub description: String,
    /// Simulated duration of the whole run, seconds.
    pub duration_s: u64,
    /// Which engine runs the scenario: `"madsim"` (the default: thousands of hosts, run by
    /// `cargo sim …`) or `"turmoil"` (small topologies with TCP's RST, half-close and a
    /// bounded accept queue; runs in an ordinary build, `cargo run -p windtunnel -- …`).
    #[serde(default)]
    pub engine: EngineName,
    /// `"pass"`, or `{ fail = "<oracle>" }` for a scenario that proves an oracle bites.
    #[serde(default)]
    pub expect: Expect,
    /// Reachability probes (`relay::rt::probe` names) that a sweep of this scenario must
    /// reach at least once (madsim only). Before the tables, so it serialises as a top-level
    /// key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<String>,
    /// Relay configuration (the relay's own schema and defaults). `server.listen` is
    /// replaced by the world's relay address.
    #[serde(default)]
    pub relay: relay::config::Config,
    /// The simulated network.
    #[serde(default)]
    pub network: NetworkSpec,
    /// A Kubernetes-style liveness prober, if any.
    pub prober: Option<ProberSpec>,
    /// Groups of client nodes opening and closing connections.
    #[serde(default)]
    pub churners: Vec<ChurnerSpec>,
    /// Upstream hosts the relay subscribes to (its host table is generated from this).
    pub upstreams: Option<UpstreamsSpec>,
    /// Groups of downstream consumers on `/subscribe`.
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
    /// Groups of API clients calling one path periodically (what a handler fault hits).
    #[serde(default)]
    pub callers: Vec<CallerSpec>,
    /// Groups of clients sending bad input (slowloris, huge heads, garbage, bad frames).
    #[serde(default)]
    pub abusers: Vec<AbuserSpec>,
    /// Faults on a timeline.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Which oracles to check, with their bounds.
    pub oracles: OracleSpecs,
    /// Swarm ranges: dotted scenario keys whose values each seed draws (see [`crate::swarm`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub swarm: BTreeMap<String, SwarmRange>,
}

/// The engines a scenario can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineName {
    /// madsim: the relay on simulated nodes, with the CPU model and the relay's fault points.
    #[default]
    Madsim,
    /// turmoil: TCP-faithful hosts on paused tokio runtimes, for small topologies.
    Turmoil,
}

impl EngineName {
    /// The name as scenario files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Madsim => "madsim",
            Self::Turmoil => "turmoil",
        }
    }

    /// The command prefix of the build that has this engine (`<prefix> run …`).
    pub fn cargo_command(self) -> &'static str {
        match self {
            Self::Madsim => "cargo sim",
            Self::Turmoil => "cargo run --release -p windtunnel --",
        }
    }
}

/// The most hosts (relay, upstreams and actors) a turmoil world may have: its links are
/// per host pair, and it steps every host every millisecond.
pub const TURMOIL_MAX_HOSTS: u64 = 300;

/// Expected verdict of a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Every oracle holds.
    #[default]
    Pass,
    /// The named oracle reports a violation (other oracles may or may not).
    Fail(OracleName),
}

/// The oracles this build knows, each with the field of `[oracles]` that lists it and the
/// spec that field holds (which implements [`crate::oracle::Judge`]). The one list the name
/// enum, [`OracleName::ALL`], the names, [`OracleSpecs`], dispatch and shrinking's "drop this
/// oracle" come from: adding an oracle is one line here plus its spec and its judgement.
macro_rules! oracles {
    ($( $(#[doc = $doc:literal])* $variant:ident => $field:ident: $spec:ty, )*) => {
        /// The oracles this build knows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum OracleName {
            $( $(#[doc = $doc])* $variant, )*
        }

        /// Every oracle in `[oracles]` file order.
        const ORACLES_IN_FILE_ORDER: &[OracleName] = &[$(OracleName::$variant),*];

        impl OracleName {
            /// The snake_case name used in files and reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($field),)*
                }
            }
        }

        /// Oracles to check. Absent means not checked; `no_panics` is always checked, and
        /// `faults_fired` whenever there are `[[faults]]`.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct OracleSpecs {
            $(
                #[doc = concat!("See [`OracleName::", stringify!($variant), "`].")]
                pub $field: Option<$spec>,
            )*
        }

        impl OracleSpecs {
            /// Whether the file lists `oracle`.
            pub fn lists(&self, oracle: OracleName) -> bool {
                match oracle {
                    $(OracleName::$variant => self.$field.is_some(),)*
                }
            }

            /// Stop checking `oracle` (shrinking).
            pub fn drop(&mut self, oracle: OracleName) {
                match oracle {
                    $(OracleName::$variant => self.$field = None,)*
                }
            }

            /// `oracle`'s judgement of a run, if the file lists it.
            pub fn judge(
                &self,
                oracle: OracleName,
                scenario: &Scenario,
                records: &[crate::trace::Record],
            ) -> Option<crate::oracle::Violation> {
                use crate::oracle::Judge;
                match oracle {
                    $(OracleName::$variant => self.$field.as_ref()?.judge(scenario, records),)*
                }
            }
        }
    };
}

oracles! {
    /// No `failure_threshold` consecutive probe failures (the orchestrator would kill the pod).
    ///
    /// Needs a `[prober]`.
    ProbeLiveness => probe_liveness: ProbeLivenessSpec,
    /// Every successful probe answered within a bound.
    ///
    /// Needs a `[prober]`.
    ProbeLatencyMax => probe_latency_max: ProbeLatencyMaxSpec,
    /// Open connections never exceed `max_connections`, every admission is released once,
    /// and the relay returns to its baseline after the churn stops.
    ConnAccounting => conn_accounting: ConnAccountingSpec,
    /// No task panicked anywhere in the simulation.
    ///
    /// Always checked; listing it is documentation.
    NoPanics => no_panics: NoPanicsSpec,
    /// Every `[[faults]]` entry started, ended within the run and took effect.
    ///
    /// Always checked when there are `[[faults]]`; listing it is documentation.
    FaultsFired => faults_fired: NoPanicsSpec,
    /// Enough live upstream hosts connected by a deadline.
    ///
    /// Needs `[upstreams]`.
    HostsConnectedMin => hosts_connected_min: HostsConnectedMinSpec,
    /// Upstream handshakes in flight never exceeded a bound.
    ///
    /// Needs `[upstreams]`.
    HandshakesBounded => handshakes_bounded: HandshakesBoundedSpec,
    /// At most one worker per host, ever; none left behind by dormant hosts.
    ///
    /// Needs `[upstreams]`.
    WorkersBounded => workers_bounded: WorkersBoundedSpec,
    /// At the end every host has a worker or is dormant: none silently dropped.
    ///
    /// Needs `[upstreams]`.
    NoHostForgotten => no_host_forgotten: NoHostForgottenSpec,
    /// Every consumer received relay sequence numbers in order with no gap and no
    /// duplicate, and every consumer that is not slow caught up with the head.
    ///
    /// Needs `[[consumers]]`.
    NoLostEvents => no_lost_events: NoLostEventsSpec,
    /// Every slow consumer was kicked and told so with a `ConsumerTooSlow` frame.
    ///
    /// Needs a slow consumer.
    SlowConsumersKicked => slow_consumers_kicked: SlowConsumersKickedSpec,
    /// Per-consumer queues never held more than a bound (memory stays bounded).
    MemoryBounded => memory_bounded: MemoryBoundedSpec,
    /// Within a bound after the last fault heals, the relay's event log accepts commits
    /// again (readiness back) and its head moves past where it stood when the fault ended.
    ///
    /// Needs `[[faults]]`.
    RecoveryWithin => recovery_within: RecoveryWithinSpec,
    /// No consumer that is not slow waited longer than a bound between two frames of one
    /// session (the relay's delivery never stalls, e.g. behind retention).
    ///
    /// Needs `[[consumers]]`.
    DeliveryGapMax => delivery_gap_max: DeliveryGapMaxSpec,
    /// Close requests reach only the connection they were meant for: a fast consumer (one
    /// that reads everything and answers pings) is never closed as idle, kicked or evicted,
    /// and never told `ConsumerTooSlow`.
    ///
    /// Needs `[[consumers]]`.
    NoStaleDelivery => no_stale_delivery: NoStaleDeliverySpec,
    /// After every consumer has left, the relay holds no subscription and no connection,
    /// and every admission was released exactly once.
    ///
    /// Needs every consumer group to have `stop_s`.
    ConsumerAccounting => consumer_accounting: ConsumerAccountingSpec,
    /// Every API call got a response; outside handler-fault windows (plus `settle_s`) it was
    /// a 200, inside them a 200 or the fault's contained answer (500 for a panic, 504 for a
    /// stall); and calls succeed again after the last handler fault.
    ///
    /// Needs `[[callers]]`.
    PanicsContained => panics_contained: PanicsContainedSpec,
    /// Every API call got a response, with one of the listed statuses, and after any 503
    /// (load shed) a later call succeeded with 200.
    ///
    /// Needs `[[callers]]`.
    CallsAnswered => calls_answered: CallsAnsweredSpec,
    /// The relay never ran more dispatched handlers at once than a bound (`1` checks that
    /// serialized dispatch is serialized).
    HandlersInFlightMax => handlers_in_flight_max: HandlersInFlightMaxSpec,
    /// Every abuser attempt got the answer its kind calls for (431 for a huge head, a 1002
    /// close for a garbage frame, …), and every abuser group got at least one answer.
    ///
    /// Needs `[[abusers]]`.
    BadInputRejected => bad_input_rejected: BadInputRejectedSpec,
    /// Every hostile upstream host ends the way its misbehaviour calls for (quarantined,
    /// or backing off with the named reason, or accepted), while the polite hosts' events
    /// are all persisted once, in order, and readiness is never lost for long.
    ///
    /// Needs `[upstreams.hostile]`.
    BadHostsIsolated => bad_hosts_isolated: BadHostsIsolatedSpec,
    /// While a host floods, the polite hosts' events still reach consumers within a bound
    /// of when they were sent: no host takes the sequencer's capacity from the others.
    ///
    /// Needs `[upstreams.hostile]` and `[[consumers]]`.
    FairShare => fair_share: FairShareSpec,
}

impl OracleName {
    /// Every oracle, in check and report order: file order, with the two always checked
    /// (`no_panics`, `faults_fired`) last.
    pub const ALL: [OracleName; ORACLES_IN_FILE_ORDER.len()] = always_checked_last();

    /// Checked whether or not the file lists it.
    const fn always_checked(self) -> bool {
        matches!(self, Self::NoPanics | Self::FaultsFired)
    }
}

const fn always_checked_last() -> [OracleName; ORACLES_IN_FILE_ORDER.len()] {
    let mut ordered = [OracleName::NoPanics; ORACLES_IN_FILE_ORDER.len()];
    let mut next = 0;
    let mut pass = 0;
    while pass < 2 {
        let mut index = 0;
        while index < ORACLES_IN_FILE_ORDER.len() {
            let oracle = ORACLES_IN_FILE_ORDER[index];
            if oracle.always_checked() == (pass == 1) {
                ordered[next] = oracle;
                next += 1;
            }
            index += 1;
        }
        pass += 1;
    }
    ordered
}

impl fmt::Display for OracleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive `[min, max]` range drawn from by the seeded RNG; written `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Between<T> {
    /// Smallest value.
    pub min: T,
    /// Largest value.
    pub max: T,
}

impl<T> Between<T> {
    /// Convert both bounds.
    pub fn map<U>(self, convert: impl Fn(T) -> U) -> Between<U> {
        Between {
            min: convert(self.min),
            max: convert(self.max),
        }
    }
}

impl<T: Serialize> Serialize for Between<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        [&self.min, &self.max].serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de> + PartialOrd + fmt::Display + Copy> Deserialize<'de> for Between<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [min, max] = <[T; 2]>::deserialize(deserializer)?;
        if min > max {
            return Err(serde::de::Error::custom(format!(
                "expected [min, max] with min <= max, got [{min}, {max}]"
            )));
        }
        Ok(Self { min, max })
    }
}

/// The simulated network between all nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way latency range per packet, milliseconds.
    pub latency_ms: Between<u64>,
    /// turmoil only: the accept queue of every listener (a connection arriving at a full
    /// queue is refused) and the segments in flight per stream direction. turmoil's
    /// default (64) when unset; madsim has neither limit.
    pub tcp_capacity: Option<usize>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            latency_ms: Between { min: 1, max: 10 },
            tcp_capacity: None,
        }
    }
}

/// A Kubernetes-style HTTP prober: a new connection per probe, `Connection: close`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProberSpec {
    /// Path probed with GET.
    pub path: String,
    /// Seconds before the first probe.
    pub initial_delay_s: u64,
    /// Seconds between probe starts.
    pub period_s: u64,
    /// A probe slower than this fails, seconds.
    pub timeout_s: u64,
    /// Consecutive failures after which the orchestrator would restart the pod.
    pub failure_threshold: u32,
}

impl Default for ProberSpec {
    fn default() -> Self {
        Self {
            path: "/_healthz".to_owned(),
            initial_delay_s: 0,
            period_s: 10,
            timeout_s: 1,
            failure_threshold: 3,
        }
    }
}

/// A group of API clients, one per node, each calling `GET path` every `period_ms` for the
/// whole run and recording every answer (or the lack of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerSpec {
    /// Client nodes in this group.
    pub nodes: u32,
    /// Path called with GET.
    pub path: String,
    /// Milliseconds between call starts.
    pub period_ms: u64,
    /// A call without a complete response after this long is given up, milliseconds.
    pub timeout_ms: u64,
    /// Reuse one connection for every call (reconnecting only when it dies) instead of a
    /// fresh connection per call.
    pub keep_alive: bool,
}

impl Default for CallerSpec {
    fn default() -> Self {
        Self {
            nodes: 1,
            path: "/hosts".to_owned(),
            period_ms: 1_000,
            timeout_ms: 5_000,
            keep_alive: false,
        }
    }
}

/// What an abuser sends. Each kind has one answer the relay must give (see
/// [`AbuseKind::expected_answers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbuseKind {
    /// A request head trickled one header line per second, never finished.
    Slowloris,
    /// A request head of 64 KiB of headers.
    HugeHeaders,
    /// Bytes that are not HTTP (a TLS ClientHello prefix and noise).
    Garbage,
    /// A valid `GET /_healthz`, sent in pieces that end between a CR and its LF.
    SplitCrlf,
    /// `POST /requestCrawl` with a chunked body that gets a chunk every 200 ms, forever.
    EndlessBody,
    /// A WebSocket subscription that then sends a frame with a reserved opcode.
    GarbageFrame,
    /// A WebSocket subscription that then announces a 16 MiB frame.
    OversizedFrame,
}

impl AbuseKind {
    /// Every kind, in report order.
    pub const ALL: [AbuseKind; 7] = [
        Self::Slowloris,
        Self::HugeHeaders,
        Self::Garbage,
        Self::SplitCrlf,
        Self::EndlessBody,
        Self::GarbageFrame,
        Self::OversizedFrame,
    ];

    /// The snake_case name used in files, traces and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slowloris => "slowloris",
            Self::HugeHeaders => "huge_headers",
            Self::Garbage => "garbage",
            Self::SplitCrlf => "split_crlf",
            Self::EndlessBody => "endless_body",
            Self::GarbageFrame => "garbage_frame",
            Self::OversizedFrame => "oversized_frame",
        }
    }

    /// The answers (as abusers record them) that count as the relay handling this input:
    /// an HTTP status, `closed` (the relay closed without a response) or `ws close <code>`.
    pub fn expected_answers(self) -> &'static [&'static str] {
        match self {
            // hyper closes a connection whose head missed the header-read deadline.
            Self::Slowloris => &["408", "closed"],
            Self::HugeHeaders => &["431"],
            Self::Garbage => &["400"],
            Self::SplitCrlf => &["200"],
            Self::EndlessBody => &["408"],
            Self::GarbageFrame => &["ws close 1002"],
            Self::OversizedFrame => &["ws close 1009"],
        }
    }
}

/// A group of abusers, one per node, each sending `kind` of bad input every `period_ms`
/// (one attempt at a time, each on a fresh connection) and recording the relay's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuserSpec {
    /// What to send.
    pub kind: AbuseKind,
    /// Abuser nodes in this group.
    #[serde(default = "default_one")]
    pub nodes: u32,
    /// Milliseconds between the end of one attempt and the start of the next.
    #[serde(default = "default_abuse_period_ms")]
    pub period_ms: u64,
    /// When the first attempt starts, seconds.
    #[serde(default)]
    pub start_s: u64,
}

fn default_one() -> u32 {
    1
}

fn default_abuse_period_ms() -> u64 {
    1_000
}

/// A group of client nodes, each running `loops_per_node` concurrent connection loops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnerSpec {
    /// Client nodes in this group (each its own simulated host and IP).
    pub nodes: u32,
    /// Concurrent connection loops per node.
    pub loops_per_node: u32,
    /// When the loops start, seconds.
    #[serde(default)]
    pub start_s: u64,
    /// When the loops stop starting new connections, seconds.
    pub stop_s: u64,
    /// Pause between a loop's connections, milliseconds.
    #[serde(default = "default_think_ms")]
    pub think_ms: Between<u64>,
    /// Relative weights of what a loop does with each connection.
    #[serde(default)]
    pub mix: ChurnMix,
    /// Requests per keep-alive connection.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: Between<u32>,
    /// How long an idle holder keeps its connection silent, seconds.
    #[serde(default = "default_idle_hold_s")]
    pub idle_hold_s: Between<u64>,
    /// Paths requested (drawn uniformly).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
}

fn default_think_ms() -> Between<u64> {
    Between { min: 0, max: 200 }
}

fn default_keepalive_requests() -> Between<u32> {
    Between { min: 1, max: 5 }
}

fn default_idle_hold_s() -> Between<u64> {
    Between { min: 1, max: 30 }
}

fn default_paths() -> Vec<String> {
    ["/_healthz", "/_readyz", "/metrics", "/not-a-route"]
        .map(str::to_owned)
        .to_vec()
}

/// Relative weights of churn actions (0 disables an action).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnMix {
    /// Connect, then drop the socket without sending anything.
    pub abrupt_close: u32,
    /// Send half a request head, then drop the socket.
    pub mid_request_close: u32,
    /// Send several requests on one keep-alive connection, then close.
    pub keepalive: u32,
    /// Send one request, then hold the connection silent (the idle reaper's business).
    pub idle_hold: u32,
    /// Send one request with `Connection: close`, shut the write half (FIN) and read the
    /// response to the end: the relay must answer a half-closed connection. turmoil only
    /// (madsim's TCP has no half-close).
    pub half_close: u32,
}

impl Default for ChurnMix {
    fn default() -> Self {
        Self {
            abrupt_close: 2,
            mid_request_close: 2,
            keepalive: 5,
            idle_hold: 1,
            half_close: 0,
        }
    }
}

impl ChurnMix {
    /// Sum of all weights.
    pub fn total(&self) -> u32 {
        self.abrupt_close
            + self.mid_request_close
            + self.keepalive
            + self.idle_hold
            + self.half_close
    }
}

/// `bad_hosts_isolated` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadHostsIsolatedSpec {
    /// Longest the event log may stay unhealthy (`/_readyz` failing for it), seconds.
    pub ready_within_s: u64,
    /// Every steady polite host's events sent up to this long before the end must be in
    /// the log, in order and once (the end-of-run audit; `no_lost_events`'s `lag_s` wins
    /// when both are set).
    pub lag_s: u64,
}

/// `fair_share` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairShareSpec {
    /// Longest a polite host's event may take from when it was sent to when a fast consumer
    /// receives it, milliseconds.
    pub delay_ms_max: u64,
    /// Only events sent from this second on count (the startup ramp comes first).
    pub from_s: u64,
}

/// `bad_input_rejected` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadInputRejectedSpec {}

/// `calls_answered` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsAnsweredSpec {
    /// The statuses a call may be answered with.
    #[serde(default = "default_calls_statuses")]
    pub statuses: Vec<u16>,
}

fn default_calls_statuses() -> Vec<u16> {
    vec![200]
}

/// `handlers_in_flight_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlersInFlightMaxSpec {
    /// Most dispatched handlers allowed to run at once.
    pub max: usize,
}

/// `panics_contained` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicsContainedSpec {
    /// Seconds after a handler fault ends during which calls may still see its answer.
    #[serde(default = "default_panics_settle_s")]
    pub settle_s: u64,
}

fn default_panics_settle_s() -> u64 {
    1
}

/// `no_stale_delivery` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoStaleDeliverySpec {}

/// `consumer_accounting` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerAccountingSpec {
    /// Seconds after the last consumer leaves by which the relay must be back to zero.
    pub settle_s: u64,
}

/// `delivery_gap_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryGapMaxSpec {
    /// Longest acceptable wait between two frames, milliseconds.
    pub gap_ms_max: u64,
}

/// `recovery_within` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryWithinSpec {
    /// Seconds after the last fault ends.
    pub s: u64,
}

/// `no_lost_events` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoLostEventsSpec {
    /// At the end, every fast or reconnecting consumer must have received at least the
    /// head the relay had persisted this many seconds earlier.
    pub lag_s: u64,
}

/// `slow_consumers_kicked` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumersKickedSpec {}

/// `memory_bounded` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBoundedSpec {
    /// Most frames one consumer's queue may ever hold.
    pub mailbox_max: Option<usize>,
    /// Most bytes the relay's memory account may ever hold (frames queued for consumers).
    pub held_bytes_max: Option<u64>,
    /// Most content bytes of upstream events the relay's ingest queue may ever hold.
    pub ingest_bytes_max: Option<u64>,
}

/// How a consumer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    /// Reads everything as soon as it arrives.
    Fast,
    /// Stops reading for `stall_s` every `stall_every_s`.
    Slow,
    /// Drops its connection every `reconnect_every_s` and resumes by cursor.
    Reconnecting,
}

/// A group of consumers, each on its own node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Group name; consumers are named `<name>-<index>`.
    pub name: String,
    /// How many consumers.
    pub count: u32,
    /// How they read.
    pub kind: ConsumerKind,
    /// When they first connect, seconds (cursor 0: everything from the start).
    #[serde(default)]
    pub start_s: u64,
    /// When they leave for good (dropping their connection), seconds; absent: never.
    pub stop_s: Option<u64>,
    /// Slow consumers: seconds between stalls.
    #[serde(default = "default_stall_every_s")]
    pub stall_every_s: u64,
    /// Slow consumers: length of a stall, seconds.
    #[serde(default = "default_stall_s")]
    pub stall_s: u64,
    /// Reconnecting consumers: seconds between planned disconnects.
    #[serde(default = "default_reconnect_every_s")]
    pub reconnect_every_s: u64,
}

fn default_stall_every_s() -> u64 {
    60
}

fn default_stall_s() -> u64 {
    20
}

fn default_reconnect_every_s() -> u64 {
    20
}

/// `hosts_connected_min` bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsConnectedMinSpec {
    /// Fraction of live (not dead) hosts that must be connected, 0..=1.
    pub fraction: f64,
    /// By this simulated second.
    pub by_s: u64,
}

/// `handshakes_bounded` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakesBoundedSpec {
    /// Most handshakes allowed in flight at once.
    pub max: usize,
}

/// `workers_bounded` takes its bound from the host table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersBoundedSpec {}

/// `no_host_forgotten` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoHostForgottenSpec {}

/// The upstream hosts of the world. Each is its own simulated node with its own IP and DNS
/// name, serving `ws://<name>:<port>/subscribe?cursor=N`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsSpec {
    /// How many hosts.
    pub hosts: u32,
    /// Server-side delay before a host completes the WebSocket handshake, per host, ms.
    #[serde(default = "default_handshake_latency_ms")]
    pub handshake_latency_ms: Between<u64>,
    /// Each host emits one event per this many seconds (drawn per host).
    #[serde(default = "default_event_interval_s")]
    pub event_interval_s: Between<u64>,
    /// Fraction of hosts that alternate between up and down windows.
    #[serde(default)]
    pub flaky_fraction: f64,
    /// Length of a flaky host's down windows, seconds.
    #[serde(default = "default_flaky_down_s")]
    pub flaky_down_s: Between<u64>,
    /// Length of a flaky host's up windows, seconds.
    #[serde(default = "default_flaky_up_s")]
    pub flaky_up_s: Between<u64>,
    /// Flaky hosts stop flapping (stay up) from this second on; absent: they flap throughout.
    pub flaky_until_s: Option<u64>,
    /// Fraction of hosts that never answer (no listener).
    #[serde(default)]
    pub dead_fraction: f64,
    /// Filler bytes in every event body (a `"pad"` field), for large frames; 0 = none.
    #[serde(default)]
    pub body_pad_bytes: u32,
    /// Hosts that misbehave, on top of the `hosts` polite ones.
    pub hostile: Option<HostileSpec>,
}

/// The hostile cast: upstream hosts that each misbehave in one way, numbered after the
/// polite hosts (so adding them leaves the polite hosts' draws unchanged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    /// How many hostile hosts.
    pub hosts: u32,
    /// The misbehaviours they play; all of them when absent.
    #[serde(default = "HostileKind::all")]
    pub kinds: Vec<HostileKind>,
    /// Each host's kind drawn from `kinds` by the seed; otherwise host `i` plays
    /// `kinds[i % len]`, so every kind is played once `hosts >= kinds.len()`.
    #[serde(default)]
    pub draw: bool,
    /// A flooding host sends this many times as often as the quickest polite host.
    #[serde(default = "default_flood_factor")]
    pub flood_factor: u32,
}

fn default_flood_factor() -> u32 {
    100
}

/// One way an upstream host misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileKind {
    /// Three good events, then a sequence number past what the log can hold (the
    /// historical poison frame).
    SeqOverflow,
    /// Each connection: three good events, then a sequence number below the last.
    SeqBackwards,
    /// Valid events whose sequence numbers jump by 2^40 each time.
    SeqJump,
    /// Its first three events, replayed in a loop on every connection.
    DuplicateLoop,
    /// Two good events, then a frame over the relay's frame limit.
    Oversize,
    /// Two good events, then a frame that is not JSON.
    Malformed,
    /// A valid frame sent one byte a second.
    Dribble,
    /// Accepts the TCP connection, never answers the WebSocket handshake.
    HandshakeStall,
    /// Completes the handshake, then never sends a byte.
    Silent,
    /// Valid events `flood_factor` times as often as the quickest polite host.
    Flood,
    /// Completes the handshake and closes at once, every time.
    ReconnectStorm,
    /// Answers the upgrade with a plain HTTP page.
    NotWebsocket,
}

impl HostileKind {
    /// Every kind, in file order.
    pub fn all() -> Vec<HostileKind> {
        vec![
            Self::SeqOverflow,
            Self::SeqBackwards,
            Self::SeqJump,
            Self::DuplicateLoop,
            Self::Oversize,
            Self::Malformed,
            Self::Dribble,
            Self::HandshakeStall,
            Self::Silent,
            Self::Flood,
            Self::ReconnectStorm,
            Self::NotWebsocket,
        ]
    }

    /// The snake_case name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeqOverflow => "seq_overflow",
            Self::SeqBackwards => "seq_backwards",
            Self::SeqJump => "seq_jump",
            Self::DuplicateLoop => "duplicate_loop",
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::Dribble => "dribble",
            Self::HandshakeStall => "handshake_stall",
            Self::Silent => "silent",
            Self::Flood => "flood",
            Self::ReconnectStorm => "reconnect_storm",
            Self::NotWebsocket => "not_websocket",
        }
    }
}

fn default_handshake_latency_ms() -> Between<u64> {
    Between { min: 20, max: 200 }
}

fn default_event_interval_s() -> Between<u64> {
    Between { min: 5, max: 60 }
}

fn default_flaky_down_s() -> Between<u64> {
    Between { min: 20, max: 120 }
}

fn default_flaky_up_s() -> Between<u64> {
    Between { min: 60, max: 300 }
}

/// One fault on the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum FaultSpec {
    /// Cut the network between the relay and a fraction of the upstream hosts (both
    /// directions) from `at_s` for `duration_s`.
    Partition {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Fraction of upstream hosts cut off (chosen by the seed).
        hosts_fraction: f64,
    },
    /// Cut the relay's node off the network entirely (every link, both directions) from
    /// `at_s` for `duration_s`: new connections are refused, bytes of live ones are held
    /// until it heals (madsim's clog).
    Clog {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Change the one-way latency of every packet to `latency_ms` from `at_s` for
    /// `duration_s`, then restore `[network].latency_ms`.
    Latency {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// One-way latency range during the window, milliseconds.
        latency_ms: Between<u64>,
    },
    /// Kill the relay's node at `at_s` (no drain: in-flight work is lost, as in a crash or
    /// an OOM kill) and start it again `down_s` later on the same database.
    KillRelay {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down, seconds.
        down_s: u64,
    },
    /// Cut the relay's power at `at_s`: its node dies as in `kill_relay`, and its database
    /// files lose what the relay's commits did not make durable (the WAL's unsynced tail:
    /// everything not yet checkpointed, unless the store syncs the WAL at every commit);
    /// it starts again `down_s` later on what survived.
    PowerLoss {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down, seconds.
        down_s: u64,
    },
    /// Ask the relay to shut down gracefully at `at_s` (stop accepting, request every
    /// connection to close, drain), then start it again `down_s` after it stopped.
    RestartRelay {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down after it stopped, seconds.
        down_s: u64,
    },
    /// Make the relay's event-log writes (and reads, if `reads`) fail from `at_s` for
    /// `duration_s`, through the relay's store fault points.
    StoreFault {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Fail reads too (catch-up pages).
        #[serde(default)]
        reads: bool,
    },
    /// Make every store call the relay makes from async code hang from `at_s` for
    /// `duration_s` (a full disk, a checkpoint's fsync, a lock held by another process),
    /// through the relay's `StoreStall` fault point.
    StoreStall {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Make the relay's work-route handlers (`/hosts`, `/requestCrawl`) panic from `at_s`
    /// for `duration_s`, through the relay's `HandlerPanic` fault point.
    HandlerPanic {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Make the relay's work-route handlers never finish from `at_s` for `duration_s`,
    /// through the relay's `HandlerStall` fault point.
    HandlerStall {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
}

impl FaultSpec {
    /// The fault's `kind` as written in scenario files and trace records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Partition { .. } => "partition",
            Self::Clog { .. } => "clog",
            Self::Latency { .. } => "latency",
            Self::KillRelay { .. } => "kill_relay",
            Self::PowerLoss { .. } => "power_loss",
            Self::RestartRelay { .. } => "restart_relay",
            Self::StoreFault { .. } => "store_fault",
            Self::StoreStall { .. } => "store_stall",
            Self::HandlerPanic { .. } => "handler_panic",
            Self::HandlerStall { .. } => "handler_stall",
        }
    }

    /// When the fault is over, seconds.
    pub fn end_s(&self) -> u64 {
        match self {
            Self::Partition {
                at_s, duration_s, ..
            }
            | Self::StoreFault {
                at_s, duration_s, ..
            }
            | Self::Latency {
                at_s, duration_s, ..
            }
            | Self::Clog { at_s, duration_s }
            | Self::StoreStall { at_s, duration_s }
            | Self::HandlerPanic { at_s, duration_s }
            | Self::HandlerStall { at_s, duration_s } => at_s + duration_s,
            Self::KillRelay { at_s, down_s }
            | Self::PowerLoss { at_s, down_s }
            | Self::RestartRelay { at_s, down_s } => at_s + down_s,
        }
    }

    /// The key that sets the fault's length: `duration_s`, or `down_s` for the relay's
    /// kill and restart.
    pub fn length_key(&self) -> &'static str {
        match self {
            Self::KillRelay { .. } | Self::PowerLoss { .. } | Self::RestartRelay { .. } => "down_s",
            _ => "duration_s",
        }
    }

    /// When the fault starts, seconds.
    pub fn at_s(&self) -> u64 {
        match self {
            Self::Partition { at_s, .. }
            | Self::StoreFault { at_s, .. }
            | Self::Latency { at_s, .. }
            | Self::Clog { at_s, .. }
            | Self::StoreStall { at_s, .. }
            | Self::HandlerPanic { at_s, .. }
            | Self::HandlerStall { at_s, .. }
            | Self::KillRelay { at_s, .. }
            | Self::PowerLoss { at_s, .. }
            | Self::RestartRelay { at_s, .. } => *at_s,
        }
    }

    /// What "no effect" means for this kind (the `faults_fired` oracle's explanation).
    pub fn no_effect(&self) -> &'static str {
        match self {
            Self::Partition { .. } => "it cut off no upstream host",
            Self::StoreFault { .. } => "no store call reached a failing fault point in its window",
            Self::StoreStall { .. } => "no store call was made in its window",
            Self::HandlerPanic { .. } | Self::HandlerStall { .. } => {
                "no work-route handler ran in its window"
            }
            Self::KillRelay { .. } | Self::PowerLoss { .. } | Self::RestartRelay { .. } => {
                "the relay was not up to stop"
            }
            Self::Clog { .. } | Self::Latency { .. } => "the network was not changed",
        }
    }
}

/// `probe_liveness` takes its threshold from the prober.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLivenessSpec {}

/// `probe_latency_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLatencyMaxSpec {
    /// Largest acceptable latency of a successful probe, milliseconds.
    pub latency_ms_max: u64,
}

/// `conn_accounting` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnAccountingSpec {
    /// After the last churner stops, open connections must be back to 0, and the relay's
    /// task count back to its pre-churn baseline, within this many seconds.
    pub settle_s: u64,
}

/// `no_panics` and `faults_fired` take no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoPanicsSpec {}

/// A scenario that could not be loaded: where, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Not valid TOML, not the scenario schema, or inconsistent (e.g. a churner outliving
    /// the scenario): every problem found, one `file:line:col: message` per line.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Located>,
    },
}

fn render_problems(path: &Path, problems: &[Located]) -> String {
    problems
        .iter()
        .map(|problem| {
            format!(
                "{}:{}:{}: {}",
                path.display(),
                problem.line,
                problem.column,
                problem.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Scenario {
    /// Read, parse and validate a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate scenario text, reporting every problem; `path` is only used in
    /// errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ScenarioError> {
        problems::parse(text).map_err(|problems| ScenarioError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// When the last churner stops starting connections, seconds (0 without churners).
    pub fn churn_end_s(&self) -> u64 {
        self.churners.iter().map(|c| c.stop_s).max().unwrap_or(0)
    }

    /// What the chosen engine cannot play.
    fn engine_problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        match self.engine {
            EngineName::Madsim => {
                if self.network.tcp_capacity.is_some() {
                    found.push(problem(
                        "network.tcp_capacity",
                        "expected no tcp_capacity with engine = \"madsim\" (madsim's TCP has \
                         no accept queue or window limit; use engine = \"turmoil\")"
                            .into(),
                    ));
                }
                if let Some(index) = self.churners.iter().position(|c| c.mix.half_close > 0) {
                    found.push(problem(
                        &format!("churners[{index}].mix.half_close"),
                        "expected half_close = 0 with engine = \"madsim\" (madsim's TCP has no \
                         half-close; use engine = \"turmoil\")"
                            .into(),
                    ));
                }
            }
            EngineName::Turmoil => {
                if self.network.tcp_capacity == Some(0) {
                    found.push(problem(
                        "network.tcp_capacity",
                        "expected a capacity of at least 1".into(),
                    ));
                }
                if let Some(fault) = self.faults.iter().find(|fault| {
                    matches!(
                        fault,
                        FaultSpec::HandlerPanic { .. }
                            | FaultSpec::HandlerStall { .. }
                            | FaultSpec::StoreFault { .. }
                            | FaultSpec::StoreStall { .. }
                            | FaultSpec::PowerLoss { .. }
                    )
                }) {
                    found.push(problem(
                        "faults",
                        format!(
                            "expected no {} fault with engine = \"turmoil\" (the relay's fault \
                             points and its database's power loss exist only in the madsim build)",
                            fault.kind()
                        ),
                    ));
                }
                if self
                    .upstreams
                    .as_ref()
                    .is_some_and(|upstreams| upstreams.hostile.is_some())
                {
                    found.push(problem(
                        "upstreams.hostile",
                        "expected no hostile cast with engine = \"turmoil\" (its outcomes are read \
                         from the madsim world's relay; use engine = \"madsim\")"
                            .into(),
                    ));
                }
                let hosts = self.host_count();
                if hosts > TURMOIL_MAX_HOSTS {
                    found.push(problem(
                        "engine",
                        format!(
                            "expected at most {TURMOIL_MAX_HOSTS} hosts with engine = \"turmoil\" \
                             (its links are per host pair), found {hosts}; use engine = \"madsim\""
                        ),
                    ));
                }
            }
        }
        found
    }

    /// Hosts in the world: the relay, upstreams, prober, churner, caller and abuser nodes,
    /// and consumers.
    pub fn host_count(&self) -> u64 {
        1 + self.upstreams.as_ref().map_or(0, |spec| {
            u64::from(spec.hosts) + spec.hostile.as_ref().map_or(0, |h| u64::from(h.hosts))
        }) + u64::from(self.prober.is_some())
            + self.churners.iter().map(|c| c.nodes as u64).sum::<u64>()
            + self.callers.iter().map(|c| c.nodes as u64).sum::<u64>()
            + self.abusers.iter().map(|a| a.nodes as u64).sum::<u64>()
            + self.consumers.iter().map(|c| c.count as u64).sum::<u64>()
    }

    /// Semantic checks beyond the schema: every problem, each naming its dotted key (empty
    /// when the scenario is consistent).
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        if self.duration_s == 0 {
            found.push(problem(
                "duration_s",
                "expected a duration of at least 1 second".into(),
            ));
        }
        if let Err(error) = self.relay.check() {
            found.push(problem(&relay_key(&error), error.to_string()));
        }
        found.extend(self.engine_problems());
        for name in &self.reach {
            if relay::rt::probe::Probe::named(name).is_none() {
                let known: Vec<&str> = relay::rt::probe::Probe::ALL
                    .iter()
                    .map(|probe| probe.name())
                    .collect();
                found.push(problem(
                    "reach",
                    format!(
                        "unknown probe {name:?}; expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        if !self.reach.is_empty() && self.engine != EngineName::Madsim {
            found.push(problem(
                "reach",
                "expected no reach on this engine: the relay's probes are counted only under madsim"
                    .into(),
            ));
        }
        if let Some(prober) = &self.prober {
            if prober.period_s == 0 || prober.timeout_s == 0 || prober.failure_threshold == 0 {
                found.push(problem(
                    "prober",
                    "expected period_s, timeout_s and failure_threshold of at least 1".into(),
                ));
            }
            if prober.timeout_s > prober.period_s {
                found.push(problem(
                    "prober.timeout_s",
                    "expected timeout_s <= period_s".into(),
                ));
            }
        }
        for (index, churner) in self.churners.iter().enumerate() {
            let key = |field: &str| format!("churners[{index}].{field}");
            if churner.nodes == 0 || churner.loops_per_node == 0 {
                found.push(problem(
                    &key("nodes"),
                    "expected nodes and loops_per_node of at least 1".into(),
                ));
            }
            if churner.start_s >= churner.stop_s || churner.stop_s > self.duration_s {
                found.push(problem(
                    &key("stop_s"),
                    format!(
                        "expected start_s ({}) < stop_s ({}) <= duration_s ({})",
                        churner.start_s, churner.stop_s, self.duration_s
                    ),
                ));
            }
            if churner.mix.total() == 0 {
                found.push(problem(
                    &key("mix"),
                    "expected at least one non-zero weight".into(),
                ));
            }
            if churner.paths.is_empty() || churner.paths.iter().any(|p| !p.starts_with('/')) {
                found.push(problem(
                    &key("paths"),
                    "expected a non-empty list of paths starting with '/'".into(),
                ));
            }
        }
        for (index, caller) in self.callers.iter().enumerate() {
            let key = |field: &str| format!("callers[{index}].{field}");
            if index >= 40 {
                found.push(problem(
                    "callers",
                    "expected at most 40 caller groups".into(),
                ));
            }
            if caller.nodes == 0 || caller.nodes > 250 {
                found.push(problem(&key("nodes"), "expected 1 to 250 nodes".into()));
            }
            if caller.period_ms == 0 || caller.timeout_ms == 0 {
                found.push(problem(
                    &key("period_ms"),
                    "expected period_ms and timeout_ms of at least 1".into(),
                ));
            }
            if !caller.path.starts_with('/') {
                found.push(problem(
                    &key("path"),
                    "expected a path starting with '/'".into(),
                ));
            }
        }
        for (index, abuser) in self.abusers.iter().enumerate() {
            let key = |field: &str| format!("abusers[{index}].{field}");
            if index >= 20 {
                found.push(problem(
                    "abusers",
                    "expected at most 20 abuser groups".into(),
                ));
            }
            if abuser.nodes == 0 || abuser.nodes > 250 {
                found.push(problem(&key("nodes"), "expected 1 to 250 nodes".into()));
            }
            if abuser.period_ms == 0 {
                found.push(problem(&key("period_ms"), "expected at least 1".into()));
            }
            if abuser.start_s >= self.duration_s {
                found.push(problem(
                    &key("start_s"),
                    "expected start_s < duration_s".into(),
                ));
            }
        }
        if let Some(upstreams) = &self.upstreams {
            let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
            if upstreams.hosts == 0 || upstreams.hosts > 60_000 {
                found.push(problem(
                    "upstreams.hosts",
                    "expected 1 to 60000 hosts".into(),
                ));
            }
            for (name, fraction) in [
                ("flaky_fraction", upstreams.flaky_fraction),
                ("dead_fraction", upstreams.dead_fraction),
            ] {
                if !fraction_ok(fraction) {
                    found.push(problem(
                        &format!("upstreams.{name}"),
                        "expected a fraction within 0..=1".into(),
                    ));
                }
            }
            if upstreams.event_interval_s.min == 0
                || upstreams.flaky_down_s.min == 0
                || upstreams.flaky_up_s.min == 0
            {
                found.push(problem(
                    "upstreams",
                    "expected event_interval_s, flaky_down_s and flaky_up_s of at least 1".into(),
                ));
            }
            if let Some(hostile) = &upstreams.hostile {
                if hostile.hosts == 0 || hostile.hosts > 1_000 {
                    found.push(problem(
                        "upstreams.hostile.hosts",
                        "expected 1 to 1000 hostile hosts".into(),
                    ));
                }
                if hostile.kinds.is_empty() {
                    found.push(problem(
                        "upstreams.hostile.kinds",
                        "expected at least one kind".into(),
                    ));
                }
                if hostile.flood_factor == 0 || hostile.flood_factor > 10_000 {
                    found.push(problem(
                        "upstreams.hostile.flood_factor",
                        "expected 1 to 10000".into(),
                    ));
                }
            }
        }
        let hostile = self
            .upstreams
            .as_ref()
            .is_some_and(|upstreams| upstreams.hostile.is_some());
        for (name, checked) in [
            (
                "bad_hosts_isolated",
                self.oracles.bad_hosts_isolated.is_some(),
            ),
            ("fair_share", self.oracles.fair_share.is_some()),
        ] {
            if checked && !hostile {
                found.push(problem(
                    &format!("oracles.{name}"),
                    format!("{name} needs an [upstreams.hostile] table"),
                ));
            }
        }
        if let Some(spec) = &self.oracles.fair_share {
            if self.consumers.is_empty() || spec.from_s >= self.duration_s {
                found.push(problem(
                    "oracles.fair_share",
                    "expected [[consumers]] to measure delivery and from_s < duration_s".into(),
                ));
            }
        }
        for (index, fault) in self.faults.iter().enumerate() {
            let key = |field: &str| format!("faults[{index}].{field}");
            if let FaultSpec::Partition { hosts_fraction, .. } = fault {
                if self.upstreams.is_none() {
                    found.push(problem(
                        &key("kind"),
                        "a partition needs [upstreams]".into(),
                    ));
                }
                if !(0.0..=1.0).contains(hosts_fraction) {
                    found.push(problem(
                        &key("hosts_fraction"),
                        "expected hosts_fraction within 0..=1".into(),
                    ));
                }
            }
            let length = fault.length_key();
            if fault.end_s() == fault.at_s() {
                found.push(problem(&key(length), format!("expected {length} >= 1")));
            }
            if fault.end_s() > self.duration_s {
                found.push(problem(
                    &key(length),
                    format!(
                        "expected the fault to end by duration_s ({}s), it ends at {}s",
                        self.duration_s,
                        fault.end_s()
                    ),
                ));
            }
        }
        let upstream_oracles = [
            (
                "hosts_connected_min",
                self.oracles.hosts_connected_min.is_some(),
            ),
            (
                "handshakes_bounded",
                self.oracles.handshakes_bounded.is_some(),
            ),
            ("workers_bounded", self.oracles.workers_bounded.is_some()),
            (
                "no_host_forgotten",
                self.oracles.no_host_forgotten.is_some(),
            ),
        ];
        for (name, checked) in upstream_oracles {
            if checked && self.upstreams.is_none() {
                found.push(problem(
                    &format!("oracles.{name}"),
                    format!("{name} needs an [upstreams] table"),
                ));
            }
        }
        if let Some(spec) = &self.oracles.hosts_connected_min {
            if !(0.0..=1.0).contains(&spec.fraction) || spec.by_s > self.duration_s {
                found.push(problem(
                    "oracles.hosts_connected_min",
                    "expected fraction within 0..=1 and by_s <= duration_s".into(),
                ));
            }
        }
        if self.oracles.panics_contained.is_some() && self.callers.is_empty() {
            found.push(problem(
                "oracles.panics_contained",
                "panics_contained needs [[callers]]".into(),
            ));
        }
        if self.oracles.bad_input_rejected.is_some() && self.abusers.is_empty() {
            found.push(problem(
                "oracles.bad_input_rejected",
                "bad_input_rejected needs [[abusers]]".into(),
            ));
        }
        if let Some(spec) = &self.oracles.memory_bounded {
            if spec.mailbox_max.is_none()
                && spec.held_bytes_max.is_none()
                && spec.ingest_bytes_max.is_none()
            {
                found.push(problem(
                    "oracles.memory_bounded",
                    "expected at least one of mailbox_max, held_bytes_max, ingest_bytes_max".into(),
                ));
            }
        }
        if let Some(spec) = &self.oracles.calls_answered {
            if self.callers.is_empty() {
                found.push(problem(
                    "oracles.calls_answered",
                    "calls_answered needs [[callers]]".into(),
                ));
            }
            if !spec.statuses.contains(&200) {
                found.push(problem(
                    "oracles.calls_answered.statuses",
                    "expected a list of statuses that includes 200".into(),
                ));
            }
        }
        let prober_oracles = [
            ("probe_liveness", self.oracles.probe_liveness.is_some()),
            (
                "probe_latency_max",
                self.oracles.probe_latency_max.is_some(),
            ),
        ];
        for (name, checked) in prober_oracles {
            if checked && self.prober.is_none() {
                found.push(problem(
                    &format!("oracles.{name}"),
                    format!("{name} needs a [prober] table"),
                ));
            }
        }
        if let Some(accounting) = &self.oracles.conn_accounting {
            if self.churn_end_s() + accounting.settle_s > self.duration_s {
                found.push(problem(
                    "oracles.conn_accounting.settle_s",
                    format!(
                        "expected the last churner stop ({}s) + settle_s ({}s) <= duration_s ({}s)",
                        self.churn_end_s(),
                        accounting.settle_s,
                        self.duration_s
                    ),
                ));
            }
        }
        for (index, consumer) in self.consumers.iter().enumerate() {
            if consumer.count == 0
                || consumer.stall_every_s == 0
                || consumer.reconnect_every_s == 0
                || consumer.start_s >= self.duration_s
                || consumer
                    .stop_s
                    .is_some_and(|stop| stop <= consumer.start_s || stop > self.duration_s)
            {
                found.push(problem(
                    &format!("consumers[{index}]"),
                    "expected count, stall_every_s and reconnect_every_s of at least 1 and start_s < stop_s <= duration_s".into(),
                ));
            }
        }
        if let Some(spec) = &self.oracles.recovery_within {
            let last_end = self.faults.iter().map(FaultSpec::end_s).max();
            match last_end {
                None => found.push(problem(
                    "oracles.recovery_within",
                    "needs at least one [[faults]] entry".into(),
                )),
                Some(end) if end + spec.s > self.duration_s => found.push(problem(
                    "oracles.recovery_within.s",
                    format!(
                        "expected the last fault end ({end}s) + s ({}s) <= duration_s ({}s)",
                        spec.s, self.duration_s
                    ),
                )),
                Some(_) => {}
            }
        }
        if let Some(spec) = &self.oracles.consumer_accounting {
            match self.consumers_end_s() {
                Some(end) if end + spec.settle_s <= self.duration_s => {}
                _ => {
                    found.push(problem(
                        "oracles.consumer_accounting",
                        "needs consumers that all have stop_s, with the last stop_s + settle_s <= duration_s".into(),
                    ))
                }
            }
        }
        if self.oracles.no_stale_delivery.is_some() && self.consumers.is_empty() {
            found.push(problem(
                "oracles.no_stale_delivery",
                "needs at least one [[consumers]] group".into(),
            ));
        }
        if self.oracles.delivery_gap_max.is_some() && self.consumers.is_empty() {
            found.push(problem(
                "oracles.delivery_gap_max",
                "needs at least one [[consumers]] group".into(),
            ));
        }
        if self.oracles.no_lost_events.is_some() && self.consumers.is_empty() {
            found.push(problem(
                "oracles.no_lost_events",
                "needs at least one [[consumers]] group".into(),
            ));
        }
        if self.oracles.slow_consumers_kicked.is_some()
            && !self.consumers.iter().any(|c| c.kind == ConsumerKind::Slow)
        {
            found.push(problem(
                "oracles.slow_consumers_kicked",
                "needs a [[consumers]] group with kind = \"slow\"".into(),
            ));
        }
        if let Expect::Fail(oracle) = self.expect {
            if !self.checks(oracle) {
                found.push(problem(
                    "expect",
                    format!("expects {oracle} to fail, but [oracles] does not check it"),
                ));
            }
        }
        if found.is_empty() {
            found.extend(crate::swarm::check(self));
        }
        found
    }

    /// When the last consumer leaves, if every group has a `stop_s` (and there is one).
    pub fn consumers_end_s(&self) -> Option<u64> {
        let stops: Option<Vec<u64>> = self.consumers.iter().map(|c| c.stop_s).collect();
        stops?.into_iter().max()
    }

    /// Names of the consumers of `kind`, as the world names them.
    pub fn consumer_names(&self, kind: ConsumerKind) -> Vec<String> {
        self.consumers
            .iter()
            .filter(|group| group.kind == kind)
            .flat_map(|group| (0..group.count).map(move |index| format!("{}-{index}", group.name)))
            .collect()
    }

    /// Whether `oracle` is checked in this scenario.
    pub fn checks(&self, oracle: OracleName) -> bool {
        match oracle {
            OracleName::NoPanics => true,
            OracleName::FaultsFired => !self.faults.is_empty(),
            listed => self.oracles.lists(listed),
        }
    }
}

/// A problem at `key`.
fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: key.to_owned(),
        message,
    }
}

/// The scenario key a relay configuration error is about: `relay.` and the dotted key its
/// message starts with (`server.max_connections must be …`), else `relay`.
fn relay_key(error: &relay::config::ConfigError) -> String {
    let relay::config::ConfigError::Inconsistent(message) = error else {
        return "relay".to_owned();
    };
    message
        .split_whitespace()
        .next()
        .filter(|word| {
            word.contains('.')
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        })
        .map_or_else(|| "relay".to_owned(), |word| format!("relay.{word}"))
}
