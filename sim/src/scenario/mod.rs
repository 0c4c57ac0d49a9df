//! Scenario files: the schema, loading, and validation with `file:line:col: …` errors.
//!
//! A scenario names the simulated duration, relay configuration overrides (the relay's own
//! schema, so a typo in `[relay]` is caught exactly as the binary would catch it), the
//! network, the clients, the oracles to check, and whether the run is expected to pass or
//! to fail a named oracle (to prove that oracle bites). Every table is
//! `deny_unknown_fields`. Each section lives in its own module with its types and the
//! problems it can have on its own; this module holds the file as a whole, the checks that
//! span sections, and loading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::swarm::SwarmRange;

mod clients;
mod engine;
mod faults;
mod network;
mod problems;
mod upstreams;

pub use clients::{
    AbuseKind, AbuserSpec, CallerSpec, ChurnMix, ChurnerSpec, ConsumerKind, ConsumerSpec,
    ProberSpec,
};
pub use engine::{EngineName, TURMOIL_MAX_HOSTS};
pub use faults::{FaultKind, FaultSpec};
pub use network::NetworkSpec;
pub use problems::{Located, Problem};
pub use upstreams::{HostileKind, HostileSpec, UpstreamsSpec};

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
        found.extend(engine::problems(self));
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
        found.extend(upstreams::problems(self));
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
        found.extend(faults::problems(self));
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
        found.extend(clients::problems(self));
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
