//! Oracles: pure functions from a scenario and its trace to violations.
//!
//! Oracles are separate from the workload (TigerBeetle's checkers): the world only records
//! what it observed; everything judged is judged here, after the run, from the trace alone.
//! That makes every verdict reproducible from an artifact and testable without a simulator.
//! Each violation names the first offending trace record.
//!
//! One module per family holds each oracle's spec (its parameters in `[oracles]`), what it
//! needs from the rest of the scenario, its judgement and its tests. The `oracles!` list
//! below is the one list of oracles: the name enum, [`OracleName::ALL`], the names,
//! [`OracleSpecs`], validation, dispatch and shrinking's "drop this oracle" all come from
//! it. Adding an oracle is one spec with its [`Judge`] in a family module and one line in
//! the list.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scenario::{Expect, Problem, Scenario};
use crate::trace::{Record, Trace};

pub mod connections;
pub mod coverage;
pub mod delivery;
pub mod handlers;
pub mod hostile;
pub mod probes;
pub mod recovery;
pub mod upstreams;

#[cfg(test)]
mod fixtures;

pub use connections::{
    conn_accounting, ConnAccountingSpec, ConsumerAccountingSpec, NoStaleDeliverySpec,
};
pub use coverage::CoverageMinSpec;
pub use delivery::{
    DeliveryGapMaxSpec, MemoryBoundedSpec, NoLostEventsSpec, SlowConsumersKickedSpec,
};
pub use handlers::{
    handler_fault_windows, BadInputRejectedSpec, CallsAnsweredSpec, HandlerFaultWindow,
    HandlersInFlightMaxSpec, PanicsContainedSpec,
};
pub use hostile::{BadHostsIsolatedSpec, FairShareSpec};
pub use probes::{ProbeLatencyMaxSpec, ProbeLivenessSpec, RelayRestartsMaxSpec};
pub use recovery::{FaultsFiredSpec, NoPanicsSpec, RecoveryWithinSpec};
pub use upstreams::{
    HandshakesBoundedSpec, HostTableMaxSpec, HostsConnectedMinSpec, NoHostForgottenSpec,
    NoInternalDialsSpec, ReconnectLatencyMaxSpec, WorkersBoundedSpec,
};

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

            /// What the listed oracles need from the rest of `scenario` that it lacks, in
            /// file order.
            pub fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
                let mut found = Vec::new();
                $(
                    if let Some(spec) = &self.$field {
                        found.extend(spec.problems(scenario));
                    }
                )*
                found
            }

            /// `oracle`'s judgement of a run, if the file lists it.
            pub fn judge(
                &self,
                oracle: OracleName,
                scenario: &Scenario,
                records: &[Record],
            ) -> Option<Violation> {
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
    /// The orchestrator restarted the relay at most `max` times for failed liveness probes.
    ///
    /// Needs a `[prober]` with `restart = true`.
    RelayRestartsMax => relay_restarts_max: RelayRestartsMaxSpec,
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
    FaultsFired => faults_fired: FaultsFiredSpec,
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
    /// Of the events the steady polite hosts sent in each window after the ramp, at least a
    /// fraction reached a consumer within a deadline (coverage, as operators measure it).
    ///
    /// Needs `[upstreams]`, a consumer that is not slow, and the madsim world.
    CoverageMin => coverage_min: CoverageMinSpec,
    /// The relay's host table never held more than a bound, whatever `requestCrawl`'s
    /// callers asked for.
    ///
    /// Needs a crawling `[[abusers]]` group.
    HostTableMax => host_table_max: HostTableMaxSpec,
    /// No internal address of the crawl flood's world was ever dialled (each records
    /// every connection it accepts).
    ///
    /// Needs a `crawl_internal` `[[abusers]]` group.
    NoInternalDials => no_internal_dials: NoInternalDialsSpec,
    /// Every time a flaky host that cut a live subscription is up again, the relay is
    /// subscribed to it again within a bound (legitimate hosts' reconnects are not queued
    /// behind what callers asked for).
    ///
    /// Needs flaky hosts (`upstreams.flaky_fraction` above 0).
    ReconnectLatencyMax => reconnect_latency_max: ReconnectLatencyMaxSpec,
}

/// How much of an oracle can be judged from outside a relay (`run --real --relay-cmd`, a
/// black box known only through the protocol): the cast's own observations (probes, calls,
/// frames received, subscriptions and cuts at the upstream hosts) are there; the relay's
/// metrics, database and host table are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromOutside {
    /// Judged as in every other world.
    Whole,
    /// Judged on what the cast saw; what it does not judge (said here) needs the relay's
    /// insides.
    Partly(&'static str),
    /// Not judged: it reads (said here) from inside the relay.
    Not(&'static str),
}

impl OracleName {
    /// How much of this oracle a black-box run judges.
    pub fn from_outside(self) -> FromOutside {
        use FromOutside::{Not, Partly, Whole};
        const METRICS: &str = "the relay's /metrics";
        match self {
            Self::ProbeLiveness
            | Self::ProbeLatencyMax
            | Self::RelayRestartsMax
            | Self::NoPanics
            | Self::FaultsFired
            | Self::SlowConsumersKicked
            | Self::DeliveryGapMax
            | Self::NoStaleDelivery
            | Self::PanicsContained
            | Self::CallsAnswered
            | Self::BadInputRejected
            | Self::FairShare
            | Self::CoverageMin
            | Self::ReconnectLatencyMax
            | Self::NoInternalDials => Whole,
            Self::NoLostEvents => Partly(
                "whether consumers caught up with the head the relay had persisted lag_s \
                 before the end (its /metrics) nor whether what they received is what its log \
                 holds under the same seqs (its database); the log itself is audited, read \
                 back from cursor 0",
            ),
            Self::ConnAccounting
            | Self::HostsConnectedMin
            | Self::HandshakesBounded
            | Self::WorkersBounded
            | Self::MemoryBounded
            | Self::RecoveryWithin
            | Self::ConsumerAccounting
            | Self::HandlersInFlightMax => Not(METRICS),
            Self::NoHostForgotten | Self::HostTableMax => Not("the relay's host table (/hosts)"),
            Self::BadHostsIsolated => Not("the relay's host table and database"),
        }
    }
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

/// One oracle's complaint, pointing at the record that broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which oracle.
    pub oracle: OracleName,
    /// Index of the first offending record in the trace, if one record is to blame.
    pub record_index: Option<usize>,
    /// Simulated time of the violation, microseconds.
    pub t_us: u64,
    /// What was observed and what was expected.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at t={}: {}",
            self.oracle,
            format_seconds(self.t_us),
            self.message
        )?;
        if let Some(index) = self.record_index {
            write!(f, " (trace record #{index})")?;
        }
        Ok(())
    }
}

/// Simulated microseconds as seconds with one decimal, e.g. `12.4s`.
pub fn format_seconds(t_us: u64) -> String {
    format!("{:.1}s", t_us as f64 / 1e6)
}

/// Run every oracle the scenario checks, in [`OracleName::ALL`] order. Violations come in
/// that order, at most one each.
pub fn check(scenario: &Scenario, trace: &Trace) -> Vec<Violation> {
    let records = trace.records();
    OracleName::ALL
        .into_iter()
        .filter(|oracle| scenario.checks(*oracle))
        .filter_map(|oracle| match oracle {
            OracleName::NoPanics => NoPanicsSpec {}.judge(scenario, records),
            OracleName::FaultsFired => FaultsFiredSpec {}.judge(scenario, records),
            listed => scenario.oracles.judge(listed, scenario, records),
        })
        .collect()
}

/// One oracle, implemented by its spec (the parameters a scenario gives it): what it needs
/// from the rest of the scenario, and its judgement of a run. The `oracles!` list
/// dispatches to it.
pub trait Judge {
    /// What `scenario` lacks for this oracle to judge it (validation; none by default).
    fn problems(&self, _scenario: &Scenario) -> Vec<Problem> {
        Vec::new()
    }

    /// Judge the run of `scenario` that recorded `records`.
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation>;
}

/// `oracle`'s problem when the scenario lacks what it needs (`missing`): `what`, e.g.
/// "an [upstreams] table".
fn needs(oracle: OracleName, missing: bool, what: &str) -> Vec<Problem> {
    if !missing {
        return Vec::new();
    }
    vec![Problem::new(
        &format!("oracles.{oracle}"),
        format!("{oracle} needs {what}"),
    )]
}

fn violation_at(oracle: OracleName, index: usize, record: &Record, message: String) -> Violation {
    Violation {
        oracle,
        record_index: Some(index),
        t_us: record.t_us,
        message,
    }
}

/// A run's verdict against its scenario's expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Expected to pass, and every oracle held.
    Passed,
    /// Expected `oracle` to fail, and it did.
    FailedAsExpected(Violation),
    /// Expected to pass, but this oracle (the first in oracle order) failed.
    Failed(Violation),
    /// Expected `oracle` to fail, but it held.
    UnexpectedPass(OracleName),
}

impl Verdict {
    /// Whether the run matched its expectation.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Passed | Self::FailedAsExpected(_))
    }
}

/// Compare violations with the scenario's expectation.
pub fn verdict(expect: Expect, violations: &[Violation]) -> Verdict {
    match expect {
        Expect::Pass => violations
            .first()
            .cloned()
            .map_or(Verdict::Passed, Verdict::Failed),
        Expect::Fail(oracle) => violations
            .iter()
            .find(|v| v.oracle == oracle)
            .cloned()
            .map_or(Verdict::UnexpectedPass(oracle), Verdict::FailedAsExpected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;
    use crate::oracle::recovery::no_panics;
    use crate::trace::Event;

    #[test]
    fn verdict_matches_expectations() {
        let violation = no_panics(
            trace([(
                5,
                Event::Panic {
                    message: "boom".into(),
                },
            )])
            .records(),
        )
        .unwrap();
        assert_eq!(verdict(Expect::Pass, &[]), Verdict::Passed);
        assert_eq!(
            verdict(Expect::Pass, std::slice::from_ref(&violation)),
            Verdict::Failed(violation.clone())
        );
        assert_eq!(
            verdict(
                Expect::Fail(OracleName::NoPanics),
                std::slice::from_ref(&violation)
            ),
            Verdict::FailedAsExpected(violation)
        );
        assert_eq!(
            verdict(Expect::Fail(OracleName::ConnAccounting), &[]),
            Verdict::UnexpectedPass(OracleName::ConnAccounting)
        );
    }
}
