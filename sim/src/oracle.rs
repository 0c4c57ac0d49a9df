//! Oracles: pure functions from a scenario and its trace to violations.
//!
//! Oracles are separate from the workload (TigerBeetle's checkers): the world only records
//! what it observed; everything judged is judged here, after the run, from the trace alone.
//! That makes every verdict reproducible from an artifact and testable without a simulator.
//! Each violation names the first offending trace record.

use std::collections::BTreeSet;
use std::fmt;

use crate::scenario::{
    AbuseKind, BadHostsIsolatedSpec, BadInputRejectedSpec, CallsAnsweredSpec, ConnAccountingSpec,
    ConsumerAccountingSpec, DeliveryGapMaxSpec, Expect, FairShareSpec, HandlersInFlightMaxSpec,
    HandshakesBoundedSpec, HostileKind, HostsConnectedMinSpec, MemoryBoundedSpec,
    NoHostForgottenSpec, NoLostEventsSpec, NoPanicsSpec, NoStaleDeliverySpec, OracleName,
    PanicsContainedSpec, ProbeLatencyMaxSpec, ProbeLivenessSpec, RecoveryWithinSpec, Scenario,
    SlowConsumersKickedSpec, WorkersBoundedSpec,
};
use crate::trace::{Event, Record, Trace, UpstreamSample};

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
            OracleName::NoPanics => no_panics(records),
            OracleName::FaultsFired => faults_fired(records, &scenario.faults),
            listed => scenario.oracles.judge(listed, scenario, records),
        })
        .collect()
}

/// One oracle's judgement, implemented by its spec (the parameters a scenario gives it):
/// the violation `records` show, if any. The list in `crate::scenario` dispatches to it.
pub trait Judge {
    /// Judge the run of `scenario` that recorded `records`.
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation>;
}

impl Judge for ProbeLivenessSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        probe_liveness(records, scenario.prober.as_ref()?.failure_threshold)
    }
}

impl Judge for ProbeLatencyMaxSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        probe_latency_max(records, self.latency_ms_max)
    }
}

impl Judge for ConnAccountingSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let settle_deadline_us = (scenario.churn_end_s() + self.settle_s) * 1_000_000;
        conn_accounting(
            records,
            scenario.churn_end_s() * 1_000_000,
            settle_deadline_us,
        )
    }
}

/// `no_panics` and `faults_fired` are always judged by [`check`]; listing them is
/// documentation, so their spec judges nothing itself.
impl Judge for NoPanicsSpec {
    fn judge(&self, _: &Scenario, _: &[Record]) -> Option<Violation> {
        None
    }
}

impl Judge for HostsConnectedMinSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        hosts_connected_min(records, self.fraction, self.by_s * 1_000_000)
    }
}

impl Judge for HandshakesBoundedSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        handshakes_bounded(records, self.max)
    }
}

impl Judge for WorkersBoundedSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        workers_bounded(records)
    }
}

impl Judge for NoHostForgottenSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        no_host_forgotten(records)
    }
}

impl Judge for NoLostEventsSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        no_lost_events(
            records,
            scenario.duration_s.saturating_sub(self.lag_s) * 1_000_000,
        )
    }
}

impl Judge for SlowConsumersKickedSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        slow_consumers_kicked(records)
    }
}

impl Judge for MemoryBoundedSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        memory_bounded(records, self)
    }
}

impl Judge for RecoveryWithinSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let last_end_us = scenario
            .faults
            .iter()
            .map(crate::scenario::FaultSpec::end_s)
            .max()
            .unwrap_or(0)
            * 1_000_000;
        recovery_within(records, last_end_us, self.s * 1_000_000)
    }
}

impl Judge for NoStaleDeliverySpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let fast = scenario.consumer_names(crate::scenario::ConsumerKind::Fast);
        no_stale_delivery(records, &fast)
    }
}

impl Judge for ConsumerAccountingSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let end_s = scenario.consumers_end_s()?;
        consumer_accounting(records, (end_s + self.settle_s) * 1_000_000)
    }
}

impl Judge for DeliveryGapMaxSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        delivery_gap_max(records, self.gap_ms_max)
    }
}

impl Judge for PanicsContainedSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        panics_contained(
            records,
            &handler_fault_windows(scenario),
            self.settle_s * 1_000_000,
        )
    }
}

impl Judge for CallsAnsweredSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        calls_answered(records, &self.statuses)
    }
}

impl Judge for HandlersInFlightMaxSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        handlers_in_flight_max(records, self.max)
    }
}

impl Judge for BadInputRejectedSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let kinds: BTreeSet<AbuseKind> = scenario.abusers.iter().map(|a| a.kind).collect();
        bad_input_rejected(records, &kinds)
    }
}

impl Judge for BadHostsIsolatedSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        bad_hosts_isolated(records, self.ready_within_s * 1_000_000)
    }
}

impl Judge for FairShareSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        fair_share(records, self.delay_ms_max)
    }
}

/// How the relay should leave a hostile host of `kind`: quarantined for a reason (or not),
/// and, for kinds it cannot take for good, the named reason its last session or attempt
/// ended with (it is backing off, or reconnecting).
fn expected_outcome(kind: HostileKind) -> (Option<&'static str>, Option<&'static str>) {
    use relay::upstream::{
        QUARANTINE_SEQ_OUT_OF_RANGE, SESSION_FRAME_TOO_LARGE, SESSION_MALFORMED_FRAME,
        SESSION_SEQ_NOT_INCREASING,
    };
    match kind {
        HostileKind::SeqOverflow => (Some(QUARANTINE_SEQ_OUT_OF_RANGE), None),
        HostileKind::SeqBackwards | HostileKind::DuplicateLoop => {
            (None, Some(SESSION_SEQ_NOT_INCREASING))
        }
        HostileKind::Oversize => (None, Some(SESSION_FRAME_TOO_LARGE)),
        HostileKind::Malformed => (None, Some(SESSION_MALFORMED_FRAME)),
        HostileKind::Dribble | HostileKind::Silent => (None, Some("read_idle_timeout")),
        HostileKind::HandshakeStall => (None, Some("timeout")),
        HostileKind::ReconnectStorm => (None, Some("closed")),
        HostileKind::NotWebsocket => (None, Some("handshake_error")),
        HostileKind::SeqJump | HostileKind::Flood => (None, None),
    }
}

/// Every hostile host ends as its kind calls for (see [`expected_outcome`]; a host that
/// sent good events before misbehaving has them in the log), the event log is never
/// unhealthy for longer than `ready_within_us`, and the end-of-run audit finds every steady
/// polite host's events in the log, in order, once.
pub fn bad_hosts_isolated(records: &[Record], ready_within_us: u64) -> Option<Violation> {
    for (index, record) in records.iter().enumerate() {
        let Event::HostileOutcome {
            host,
            kind,
            phase,
            quarantined,
            last_error,
            persisted,
            ..
        } = &record.event
        else {
            continue;
        };
        let wrong = |why: String| {
            Some(violation_at(
                OracleName::BadHostsIsolated,
                index,
                record,
                format!(
                    "hostile host {host} ({kind}) ended {phase}, quarantined {quarantined:?}, last error \
                     {last_error:?}, {persisted} events in the log: {why}"
                ),
            ))
        };
        let Some(parsed) = HostileKind::all().into_iter().find(|k| k.as_str() == kind) else {
            return wrong("an unknown kind".into());
        };
        let (quarantine, error) = expected_outcome(parsed);
        if quarantined.as_deref() != quarantine {
            return wrong(format!("expected quarantine {quarantine:?}"));
        }
        if let Some(error) = error {
            if last_error.as_deref() != Some(error) {
                return wrong(format!("expected the last error {error}"));
            }
        }
        let good_events_kept = match parsed {
            HostileKind::SeqOverflow => *persisted == crate::actors::hostile::GOOD_PREFIX,
            HostileKind::SeqJump | HostileKind::Flood => *persisted > 0,
            _ => true,
        };
        if !good_events_kept {
            return wrong("its good events are not all in the log".into());
        }
        if phase == "idle" || phase == "absent" {
            return wrong("expected a worker, a backoff, dormancy or a quarantine".into());
        }
    }
    let mut unhealthy_since = None;
    for (index, record) in records.iter().enumerate() {
        let Event::RelaySample { events, .. } = &record.event else {
            continue;
        };
        if events.store_healthy {
            unhealthy_since = None;
            continue;
        }
        let since = *unhealthy_since.get_or_insert(record.t_us);
        if record.t_us - since > ready_within_us {
            return Some(violation_at(
                OracleName::BadHostsIsolated,
                index,
                record,
                format!(
                    "the event log has been unhealthy (readiness failing) since t={}, longer than {}",
                    format_seconds(since),
                    format_seconds(ready_within_us)
                ),
            ));
        }
    }
    log_audit(OracleName::BadHostsIsolated, records)
}

/// The end-of-run audit of the event log, judged for `oracle`: relay seqs dense, no host
/// with a hole, no steady polite host missing events it had sent.
fn log_audit(oracle: OracleName, records: &[Record]) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::StoreAudit {
                events,
                oldest_seq,
                head_seq,
                hosts_with_gaps,
                hosts_behind,
                first_behind,
            } => {
                let dense = *events == 0 || head_seq - oldest_seq + 1 == *events;
                (!dense || *hosts_with_gaps > 0 || *hosts_behind > 0).then(|| {
                    violation_at(
                        oracle,
                        index,
                        record,
                        format!(
                            "event log: {events} events for seqs {oldest_seq}..={head_seq}, {hosts_with_gaps} hosts \
                             with holes, {hosts_behind} hosts missing events they had emitted{}",
                            first_behind
                                .as_ref()
                                .map(|host| format!(" (first: {host})"))
                                .unwrap_or_default()
                        ),
                    )
                })
            }
            _ => None,
        })
}

/// No consumer that is not slow received a steady polite host's event later than
/// `delay_ms_max` after the host sent it, and at least one such event was timed.
pub fn fair_share(records: &[Record], delay_ms_max: u64) -> Option<Violation> {
    let mut timed = false;
    for (index, record) in records.iter().enumerate() {
        let Event::ConsumerFinal {
            consumer,
            slow: false,
            latest_event: Some(late),
            ..
        } = &record.event
        else {
            continue;
        };
        timed = true;
        if late.delay_ms > delay_ms_max {
            return Some(violation_at(
                OracleName::FairShare,
                index,
                record,
                format!(
                    "{consumer} received host {}'s event {} {} ms after it was sent, expected at most {delay_ms_max} ms",
                    late.host_id, late.upstream_seq, late.delay_ms
                ),
            ));
        }
    }
    (!timed).then(|| Violation {
        oracle: OracleName::FairShare,
        record_index: None,
        t_us: records.last().map_or(0, |record| record.t_us),
        message: "no consumer received a polite host's event to time".into(),
    })
}

/// One handler-fault window of the timeline and the answer the relay contains it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerFaultWindow {
    /// Start, microseconds.
    pub start_us: u64,
    /// End, microseconds.
    pub end_us: u64,
    /// The status a contained fault is answered with (500 panic, 504 stall).
    pub status: u16,
}

/// The scenario's `handler_panic` / `handler_stall` faults as windows.
pub fn handler_fault_windows(scenario: &Scenario) -> Vec<HandlerFaultWindow> {
    use crate::scenario::FaultKind;
    scenario
        .faults
        .iter()
        .filter_map(|fault| {
            let status = match fault.kind {
                FaultKind::HandlerPanic => 500,
                FaultKind::HandlerStall => 504,
                _ => return None,
            };
            Some(HandlerFaultWindow {
                start_us: fault.at_s * 1_000_000,
                end_us: fault.end_s() * 1_000_000,
                status,
            })
        })
        .collect()
}

/// Every API call got a response. A call that overlapped a handler-fault window (or the
/// `settle_us` after it) got a 200 or that window's contained answer; any other call got a
/// 200. And after the last window (plus `settle_us`) some call succeeded again.
pub fn panics_contained(
    records: &[Record],
    windows: &[HandlerFaultWindow],
    settle_us: u64,
) -> Option<Violation> {
    let violation = |index: Option<usize>, t_us: u64, message: String| Violation {
        oracle: OracleName::PanicsContained,
        record_index: index,
        t_us,
        message,
    };
    let recovered_from_us = windows
        .iter()
        .map(|window| window.end_us + settle_us)
        .max()
        .unwrap_or(0);
    let mut recovered = false;
    for (index, record) in records.iter().enumerate() {
        let Event::Call {
            status,
            latency_us,
            error,
        } = &record.event
        else {
            continue;
        };
        let started_us = record.t_us.saturating_sub(*latency_us);
        let Some(status) = *status else {
            return Some(violation(
                Some(index),
                record.t_us,
                format!(
                    "{} got no response: {}",
                    record.node,
                    error.as_deref().unwrap_or("unknown error")
                ),
            ));
        };
        if status == 200 {
            recovered |= started_us >= recovered_from_us;
            continue;
        }
        let overlapping = windows.iter().filter(|window| {
            started_us <= window.end_us + settle_us && record.t_us >= window.start_us
        });
        if !overlapping.clone().any(|window| window.status == status) {
            let expected: Vec<String> = overlapping
                .map(|window| window.status.to_string())
                .chain(std::iter::once("200".to_owned()))
                .collect();
            return Some(violation(
                Some(index),
                record.t_us,
                format!(
                    "{} was answered {status}, expected {}",
                    record.node,
                    expected.join(" or ")
                ),
            ));
        }
    }
    let last_t_us = records.last().map_or(0, |record| record.t_us);
    (!recovered).then(|| {
        violation(
            None,
            last_t_us,
            format!(
                "no call succeeded after the handler faults (from t={:.1}s)",
                recovered_from_us as f64 / 1e6
            ),
        )
    })
}

/// Every API call got a response with one of `statuses`, and after the last call that
/// was not a 200 (a shed, say) some call succeeded again.
pub fn calls_answered(records: &[Record], statuses: &[u16]) -> Option<Violation> {
    let mut last_refusal: Option<(usize, u64)> = None;
    let mut succeeded_since = false;
    for (index, record) in records.iter().enumerate() {
        let Event::Call { status, error, .. } = &record.event else {
            continue;
        };
        match *status {
            None => {
                return Some(violation_at(
                    OracleName::CallsAnswered,
                    index,
                    record,
                    format!(
                        "{} got no response: {}",
                        record.node,
                        error.as_deref().unwrap_or("unknown error")
                    ),
                ))
            }
            Some(200) => succeeded_since = true,
            Some(status) if statuses.contains(&status) => {
                last_refusal = Some((index, record.t_us));
                succeeded_since = false;
            }
            Some(status) => {
                let allowed: Vec<String> = statuses.iter().map(u16::to_string).collect();
                return Some(violation_at(
                    OracleName::CallsAnswered,
                    index,
                    record,
                    format!(
                        "{} was answered {status}, expected {}",
                        record.node,
                        allowed.join(" or ")
                    ),
                ));
            }
        }
    }
    match last_refusal {
        Some((index, t_us)) if !succeeded_since => Some(Violation {
            oracle: OracleName::CallsAnswered,
            record_index: Some(index),
            t_us,
            message: "no call succeeded after the last one that was refused".into(),
        }),
        _ => None,
    }
}

/// Every abuser attempt got one of its kind's expected answers, and every kind in `kinds`
/// was answered at least once.
pub fn bad_input_rejected(records: &[Record], kinds: &BTreeSet<AbuseKind>) -> Option<Violation> {
    let mut answered = BTreeSet::new();
    for (index, record) in records.iter().enumerate() {
        let Event::Abuse { kind, answer, .. } = &record.event else {
            continue;
        };
        let expected = kind.expected_answers();
        if !expected.contains(&answer.as_str()) {
            return Some(violation_at(
                OracleName::BadInputRejected,
                index,
                record,
                format!(
                    "{} ({}) got `{answer}`, expected {}",
                    record.node,
                    kind.as_str(),
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        answered.insert(*kind);
    }
    let last_t_us = records.last().map_or(0, |record| record.t_us);
    kinds.difference(&answered).next().map(|kind| Violation {
        oracle: OracleName::BadInputRejected,
        record_index: None,
        t_us: last_t_us,
        message: format!("no {} attempt was ever answered", kind.as_str()),
    })
}

/// The relay never ran more than `max` dispatched handlers at once.
pub fn handlers_in_flight_max(records: &[Record], max: usize) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match record.event {
            Event::RelaySample { http, .. } if http.handlers_high_water > max => {
                Some(violation_at(
                    OracleName::HandlersInFlightMax,
                    index,
                    record,
                    format!(
                        "{} handlers ran at once, bound {max}",
                        http.handlers_high_water
                    ),
                ))
            }
            _ => None,
        })
}

/// None of the `fast` consumers was ever closed for a reason that belongs to another
/// connection (idle, kicked, evicted) or told it was too slow.
pub fn no_stale_delivery(records: &[Record], fast: &[String]) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ConsumerEnded {
                consumer,
                reason,
                too_slow,
                ..
            } if fast.contains(consumer)
                && (*too_slow
                    || ["close: idle", "close: kicked", "close: evicted"]
                        .iter()
                        .any(|stale| reason.starts_with(stale))) =>
            {
                Some(violation_at(
                    OracleName::NoStaleDelivery,
                    index,
                    record,
                    format!(
                        "fast consumer {consumer} was closed with {reason:?}: a close request reached a connection it was not meant for"
                    ),
                ))
            }
            _ => None,
        })
}

/// Every sample balances (admitted = released + open), and from `settled_us` on the relay
/// holds no subscription and no connection.
pub fn consumer_accounting(records: &[Record], settled_us: u64) -> Option<Violation> {
    let mut saw_settled_sample = false;
    for (index, record) in records.iter().enumerate() {
        let Event::RelaySample {
            open,
            admitted,
            released,
            events,
            ..
        } = &record.event
        else {
            continue;
        };
        if *admitted != released + *open as u64 {
            return Some(violation_at(
                OracleName::ConsumerAccounting,
                index,
                record,
                format!("admitted {admitted} != released {released} + open {open}"),
            ));
        }
        if record.t_us >= settled_us {
            saw_settled_sample = true;
            if *open != 0 || events.consumers != 0 {
                return Some(violation_at(
                    OracleName::ConsumerAccounting,
                    index,
                    record,
                    format!(
                        "after every consumer left: {open} connections open, {} subscriptions held",
                        events.consumers
                    ),
                ));
            }
        }
    }
    (!saw_settled_sample).then(|| Violation {
        oracle: OracleName::ConsumerAccounting,
        record_index: None,
        t_us: settled_us,
        message: "no relay sample after the consumers left (was the relay down?)".into(),
    })
}

/// No consumer that is not slow waited more than `gap_ms_max` between two frames.
pub fn delivery_gap_max(records: &[Record], gap_ms_max: u64) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ConsumerFinal {
                consumer,
                slow: false,
                max_gap_ms,
                ..
            } if *max_gap_ms > gap_ms_max => Some(violation_at(
                OracleName::DeliveryGapMax,
                index,
                record,
                format!(
                    "{consumer} waited {max_gap_ms}ms between two frames, bound {gap_ms_max}ms"
                ),
            )),
            _ => None,
        })
}

/// The first relay sample at or after `healed_us + within_us` shows the event log healthy
/// and a head beyond the last one sampled before `healed_us`.
pub fn recovery_within(records: &[Record], healed_us: u64, within_us: u64) -> Option<Violation> {
    let samples = || {
        records
            .iter()
            .enumerate()
            .filter_map(|(index, record)| match record.event {
                Event::RelaySample { events, .. } => Some((index, record, events)),
                _ => None,
            })
    };
    let head_at_heal = samples()
        .filter(|(_, record, _)| record.t_us <= healed_us)
        .map(|(_, _, events)| events.head_seq)
        .max()
        .unwrap_or(0);
    let deadline_us = healed_us + within_us;
    let Some((index, record, events)) = samples().find(|(_, record, _)| record.t_us >= deadline_us)
    else {
        return Some(Violation {
            oracle: OracleName::RecoveryWithin,
            record_index: None,
            t_us: deadline_us,
            message: "no relay sample after the recovery deadline (was the relay down?)".into(),
        });
    };
    (!events.store_healthy || events.head_seq <= head_at_heal).then(|| {
        violation_at(
            OracleName::RecoveryWithin,
            index,
            record,
            format!(
                "{}s after the faults healed: event log {}, head {} (was {head_at_heal} when they healed)",
                within_us / 1_000_000,
                if events.store_healthy { "healthy" } else { "still failing" },
                events.head_seq
            ),
        )
    })
}

/// Consumers see relay sequence numbers in order, without gap or duplicate (any
/// `ConsumerAnomaly` is a violation), and every consumer that is not slow ends at or
/// beyond the head the relay had persisted at `caught_up_by_us`.
pub fn no_lost_events(records: &[Record], caught_up_by_us: u64) -> Option<Violation> {
    if let Some((index, record)) = records
        .iter()
        .enumerate()
        .find(|(_, record)| matches!(record.event, Event::ConsumerAnomaly { .. }))
    {
        let Event::ConsumerAnomaly {
            consumer,
            expected,
            got,
            detail,
        } = &record.event
        else {
            unreachable!("matched above");
        };
        return Some(violation_at(
            OracleName::NoLostEvents,
            index,
            record,
            format!("{consumer} expected seq {expected} next but got {got} ({detail})"),
        ));
    }
    if let Some(violation) = log_audit(OracleName::NoLostEvents, records) {
        return Some(violation);
    }
    // What a consumer received must be what the log holds under the same relay seqs: a
    // batch published before its commit and lost to a crash has its seqs handed to other
    // events after the restart.
    let reassigned = records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ConsumerFinal {
                consumer,
                last_seq,
                log_agrees: Some(false),
                ..
            } => Some(violation_at(
                OracleName::NoLostEvents,
                index,
                record,
                format!(
                    "{consumer} received events (up to seq {last_seq}) that the event log holds differently \
                     under the same relay seqs: seqs were delivered, then reassigned"
                ),
            )),
            _ => None,
        });
    if reassigned.is_some() {
        return reassigned;
    }
    let head_then = records
        .iter()
        .rev()
        .filter(|record| record.t_us <= caught_up_by_us)
        .find_map(|record| match record.event {
            Event::RelaySample { events, .. } => Some(events.head_seq),
            _ => None,
        })
        .unwrap_or(0);
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ConsumerFinal {
                consumer,
                slow: false,
                last_seq,
                ..
            } if *last_seq < head_then => Some(violation_at(
                OracleName::NoLostEvents,
                index,
                record,
                format!(
                    "{consumer} ended at seq {last_seq}, behind the head {head_then} persisted at t={}",
                    format_seconds(caught_up_by_us)
                ),
            )),
            _ => None,
        })
}

/// Every slow consumer received at least one `ConsumerTooSlow` notice.
pub fn slow_consumers_kicked(records: &[Record]) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ConsumerFinal {
                consumer,
                slow: true,
                too_slow: 0,
                frames,
                ..
            } => Some(violation_at(
                OracleName::SlowConsumersKicked,
                index,
                record,
                format!("slow consumer {consumer} was never kicked ({frames} frames received); its queue must have grown instead"),
            )),
            _ => None,
        })
}

/// No consumer's relay-side queue ever held more than `mailbox_max` frames, the relay's
/// memory account never held more than `held_bytes_max` bytes and its ingest queue never
/// more than `ingest_bytes_max` bytes (each bound only if given).
pub fn memory_bounded(records: &[Record], spec: &MemoryBoundedSpec) -> Option<Violation> {
    let mailbox_max = spec.mailbox_max.unwrap_or(usize::MAX);
    let held_bytes_max = spec.held_bytes_max.unwrap_or(u64::MAX);
    let ingest_bytes_max = spec.ingest_bytes_max.unwrap_or(u64::MAX);
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match record.event {
            Event::RelaySample { events, .. } if events.mailbox_high_water > mailbox_max => {
                Some(violation_at(
                    OracleName::MemoryBounded,
                    index,
                    record,
                    format!(
                        "a consumer queue held {} frames, bound {mailbox_max}",
                        events.mailbox_high_water
                    ),
                ))
            }
            Event::RelaySample { memory, .. }
                if memory.memory_high_water_bytes > held_bytes_max =>
            {
                Some(violation_at(
                    OracleName::MemoryBounded,
                    index,
                    record,
                    format!(
                        "the relay held {} bytes for consumers, bound {held_bytes_max}",
                        memory.memory_high_water_bytes
                    ),
                ))
            }
            Event::RelaySample { memory, .. }
                if memory.ingest_high_water_bytes > ingest_bytes_max =>
            {
                Some(violation_at(
                    OracleName::MemoryBounded,
                    index,
                    record,
                    format!(
                        "the ingest queue held {} bytes of upstream events, bound {ingest_bytes_max}",
                        memory.ingest_high_water_bytes
                    ),
                ))
            }
            _ => None,
        })
}

/// The upstream part of every relay sample, with its record index.
fn upstream_samples(records: &[Record]) -> impl Iterator<Item = (usize, &Record, UpstreamSample)> {
    records
        .iter()
        .enumerate()
        .filter_map(|(index, record)| match record.event {
            Event::RelaySample { upstreams, .. } => Some((index, record, upstreams)),
            _ => None,
        })
}

fn violation_at(oracle: OracleName, index: usize, record: &Record, message: String) -> Violation {
    Violation {
        oracle,
        record_index: Some(index),
        t_us: record.t_us,
        message,
    }
}

/// At the last sample no later than `by_us`, at least `fraction` of the live (not dead,
/// not hostile) hosts are connected.
pub fn hosts_connected_min(records: &[Record], fraction: f64, by_us: u64) -> Option<Violation> {
    let live = records.iter().find_map(|record| match record.event {
        Event::UpstreamWorld {
            hosts,
            dead,
            hostile,
            ..
        } => Some(hosts - dead - hostile),
        _ => None,
    })?;
    let required = (fraction * f64::from(live)).ceil() as usize;
    let (index, record, sample) = upstream_samples(records)
        .take_while(|(_, record, _)| record.t_us <= by_us)
        .last()?;
    (sample.hosts_connected < required).then(|| {
        violation_at(
            OracleName::HostsConnectedMin,
            index,
            record,
            format!(
                "{} of {live} live hosts connected, expected at least {required} ({:.0}%) by t={}",
                sample.hosts_connected,
                fraction * 100.0,
                format_seconds(by_us)
            ),
        )
    })
}

/// Handshakes in flight never exceeded `max` (the relay tracks an exact high-water mark).
pub fn handshakes_bounded(records: &[Record], max: usize) -> Option<Violation> {
    upstream_samples(records)
        .find(|(_, _, sample)| sample.handshakes_high_water > max)
        .map(|(index, record, sample)| {
            violation_at(
                OracleName::HandshakesBounded,
                index,
                record,
                format!(
                    "{} handshakes were in flight at once, expected at most {max}",
                    sample.handshakes_high_water
                ),
            )
        })
}

/// Never more than one worker per host, and dormant hosts hold no worker.
pub fn workers_bounded(records: &[Record]) -> Option<Violation> {
    upstream_samples(records)
        .find(|(_, _, s)| s.workers_high_water > s.hosts || s.workers_running + s.hosts_dormant > s.hosts)
        .map(|(index, record, s)| {
            violation_at(
                OracleName::WorkersBounded,
                index,
                record,
                format!(
                    "workers: {} running (high water {}), {} dormant hosts, {} hosts; expected at most \
                     one worker per non-dormant host",
                    s.workers_running, s.workers_high_water, s.hosts_dormant, s.hosts
                ),
            )
        })
}

/// At the end, every host has a worker or is dormant, and the table lost none.
pub fn no_host_forgotten(records: &[Record]) -> Option<Violation> {
    let hosts = records.iter().find_map(|record| match record.event {
        Event::UpstreamWorld { hosts, .. } => Some(hosts as usize),
        _ => None,
    })?;
    let (index, record, sample) = upstream_samples(records).last()?;
    (sample.hosts_idle > 0 || sample.hosts != hosts).then(|| {
        violation_at(
            OracleName::NoHostForgotten,
            index,
            record,
            format!(
                "at the end {} of {} hosts had no worker and were not dormant (table holds {} of {hosts})",
                sample.hosts_idle, sample.hosts, sample.hosts
            ),
        )
    })
}

/// `failure_threshold` consecutive failed probes: the orchestrator would kill the pod.
pub fn probe_liveness(records: &[Record], failure_threshold: u32) -> Option<Violation> {
    let mut consecutive = 0;
    for (index, record) in records.iter().enumerate() {
        let Event::Probe { ok, error, .. } = &record.event else {
            continue;
        };
        if *ok {
            consecutive = 0;
            continue;
        }
        consecutive += 1;
        if consecutive >= failure_threshold {
            return Some(Violation {
                oracle: OracleName::ProbeLiveness,
                record_index: Some(index),
                t_us: record.t_us,
                message: format!(
                    "{consecutive} consecutive probe failures (threshold {failure_threshold}); \
                     the orchestrator would restart the relay; last failure: {}",
                    error.as_deref().unwrap_or("unknown")
                ),
            });
        }
    }
    None
}

/// A successful probe slower than the bound.
pub fn probe_latency_max(records: &[Record], latency_ms_max: u64) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::Probe {
                ok: true,
                latency_us,
                ..
            } if *latency_us > latency_ms_max * 1_000 => Some(Violation {
                oracle: OracleName::ProbeLatencyMax,
                record_index: Some(index),
                t_us: record.t_us,
                message: format!(
                    "probe answered in {:.1}ms, expected at most {latency_ms_max}ms",
                    *latency_us as f64 / 1e3
                ),
            }),
            _ => None,
        })
}

/// Open connections within `max`, every admission released exactly once, and a return to
/// the pre-churn baseline (0 open, the baseline relay task count) after the churn ends.
pub fn conn_accounting(
    records: &[Record],
    churn_end_us: u64,
    settle_deadline_us: u64,
) -> Option<Violation> {
    let violation = |index: usize, record: &Record, message: String| Violation {
        oracle: OracleName::ConnAccounting,
        record_index: Some(index),
        t_us: record.t_us,
        message,
    };
    let mut baseline_tasks = None;
    let mut last_before_deadline = None;
    let mut settled = false;
    for (index, record) in records.iter().enumerate() {
        let Event::RelaySample {
            open,
            high_water,
            max,
            admitted,
            released,
            relay_tasks,
            ..
        } = record.event
        else {
            continue;
        };
        let baseline = *baseline_tasks.get_or_insert(relay_tasks);
        if open > max || high_water > max {
            return Some(violation(
                index,
                record,
                format!("open={open} high_water={high_water} exceed max_connections={max}"),
            ));
        }
        if admitted != released + open as u64 {
            return Some(violation(
                index,
                record,
                format!(
                    "admitted={admitted} but released={released} + open={open} = {}: \
                     an admission was released twice or never",
                    released + open as u64
                ),
            ));
        }
        // Only samples up to the deadline can show the relay settling in time; the bounds
        // above are still checked on every later sample.
        if !settled && record.t_us <= settle_deadline_us {
            if record.t_us >= churn_end_us && open == 0 && relay_tasks <= baseline {
                settled = true;
            } else {
                last_before_deadline = Some((index, record, open, relay_tasks, baseline));
            }
        }
    }
    if settled {
        return None;
    }
    let (index, record, open, relay_tasks, baseline) = last_before_deadline?;
    let still_open = records
        .iter()
        .find_map(|record| match &record.event {
            Event::StillOpen { connections } if !connections.is_empty() => Some(format!(
                "; still open after the deadline: {}",
                list_some(connections, STILL_OPEN_NAMED_MAX)
            )),
            _ => None,
        })
        .unwrap_or_default();
    // The violation is the deadline passing; the record is the last sample before it.
    Some(Violation {
        t_us: settle_deadline_us,
        ..violation(
            index,
            record,
            format!(
                "did not return to baseline by t={}: open={open} (expected 0), relay tasks={relay_tasks} \
                 (baseline {baseline}) at t={}{still_open}",
                format_seconds(settle_deadline_us),
                format_seconds(record.t_us)
            ),
        )
    })
}

/// How many still-open connections a `conn_accounting` violation names.
const STILL_OPEN_NAMED_MAX: usize = 5;

/// The first `max` items, comma-separated, and how many more there are.
fn list_some<T: std::fmt::Display>(items: &[T], max: usize) -> String {
    let named: Vec<String> = items.iter().take(max).map(ToString::to_string).collect();
    match items.len().saturating_sub(max) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

/// The first `[[faults]]` entry that never started, never ended before the run did, or
/// ended without taking effect (its healing record's `effect` is 0: no host cut, no failure
/// injected, no relay stopped). A fault that does nothing would let a scenario pass for
/// the wrong reason.
pub fn faults_fired(
    records: &[Record],
    faults: &[crate::scenario::FaultSpec],
) -> Option<Violation> {
    let fault_record = |index: usize, started: bool| {
        records.iter().enumerate().find(|(_, record)| {
            matches!(&record.event, Event::Fault { index: i, active, .. }
                if *i as usize == index && *active == started)
        })
    };
    let end_us = records.last().map_or(0, |record| record.t_us);
    faults.iter().enumerate().find_map(|(index, fault)| {
        let name = format!(
            "fault #{} ({} at {} s)",
            index + 1,
            fault.kind.name(),
            fault.at_s
        );
        let violation = |record_index: Option<usize>, t_us: u64, message: String| Violation {
            oracle: OracleName::FaultsFired,
            record_index,
            t_us,
            message,
        };
        let Some(_) = fault_record(index, true) else {
            return Some(violation(
                None,
                end_us,
                format!("{name} never started before the run ended"),
            ));
        };
        let Some((at, ended)) = fault_record(index, false) else {
            return Some(violation(
                None,
                end_us,
                format!("{name} never ended before the run did"),
            ));
        };
        match &ended.event {
            Event::Fault { effect: 0, .. } => Some(violation(
                Some(at),
                ended.t_us,
                format!("{name} never took effect: {}", fault.kind.no_effect()),
            )),
            _ => None,
        }
    })
}

/// Any panic anywhere.
pub fn no_panics(records: &[Record]) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::Panic { message } => Some(Violation {
                oracle: OracleName::NoPanics,
                record_index: Some(index),
                t_us: record.t_us,
                message: format!("a task panicked: {message}"),
            }),
            _ => None,
        })
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
    use crate::trace::{EventsSample, HttpSample, MemorySample};

    fn probe(t_s: u64, ok: bool) -> (u64, Event) {
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
    struct Sample {
        t_s: u64,
        open: usize,
        high_water: usize,
        admitted: u64,
        released: u64,
        relay_tasks: usize,
    }

    fn sample(s: Sample) -> (u64, Event) {
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
                upstreams: UpstreamSample::default(),
                events: EventsSample::default(),
                http: HttpSample::default(),
                memory: MemorySample::default(),
            },
        )
    }

    fn trace(events: impl IntoIterator<Item = (u64, Event)>) -> Trace {
        let mut trace = Trace::default();
        for (t_us, event) in events {
            trace.push(t_us, "test", event);
        }
        trace
    }

    /// A call that ended at `end_ms` after `latency_ms`, answered `status` (or not at all).
    fn call(end_ms: u64, latency_ms: u64, status: Option<u16>) -> (u64, Event) {
        (
            end_ms * 1_000,
            Event::Call {
                status,
                latency_us: latency_ms * 1_000,
                error: status.is_none().then(|| "timeout after 5000ms".to_owned()),
            },
        )
    }

    #[test]
    fn panics_contained_accepts_contained_answers_only_inside_their_window() {
        let panic_window = [HandlerFaultWindow {
            start_us: 10_000_000,
            end_us: 20_000_000,
            status: 500,
        }];
        let fine = trace([
            call(5_000, 10, Some(200)),
            call(12_000, 10, Some(500)),
            // Started before the window ended, answered after: still the window's answer.
            call(21_000, 1_500, Some(500)),
            call(25_000, 10, Some(200)),
        ]);
        assert_eq!(
            panics_contained(fine.records(), &panic_window, 1_000_000),
            None
        );

        let stray = trace([call(5_000, 10, Some(500)), call(25_000, 10, Some(200))]);
        let violation = panics_contained(stray.records(), &panic_window, 1_000_000).unwrap();
        assert_eq!(violation.record_index, Some(0));
        assert!(
            violation.message.contains("answered 500, expected 200"),
            "{violation}"
        );

        let wrong_kind = trace([call(12_000, 10, Some(504)), call(25_000, 10, Some(200))]);
        let violation = panics_contained(wrong_kind.records(), &panic_window, 1_000_000).unwrap();
        assert!(
            violation.message.contains("expected 500 or 200"),
            "{violation}"
        );
    }

    #[test]
    fn calls_answered_allows_listed_statuses_then_needs_a_success() {
        let shed_then_served = trace([
            call(1_000, 10, Some(200)),
            call(2_000, 10, Some(503)),
            call(3_000, 10, Some(200)),
        ]);
        assert_eq!(
            calls_answered(shed_then_served.records(), &[200, 503]),
            None
        );
        let violation = calls_answered(shed_then_served.records(), &[200]).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.contains("answered 503, expected 200"),
            "{violation}"
        );

        let never_served_again = trace([call(1_000, 10, Some(200)), call(2_000, 10, Some(503))]);
        let violation = calls_answered(never_served_again.records(), &[200, 503]).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.contains("no call succeeded after"),
            "{violation}"
        );

        let unanswered = trace([call(1_000, 5_000, None)]);
        let violation = calls_answered(unanswered.records(), &[200]).unwrap();
        assert!(violation.message.contains("got no response"), "{violation}");
    }

    #[test]
    fn bad_input_rejected_wants_each_kinds_answer_and_every_kind_answered() {
        use crate::scenario::AbuseKind;
        let abuse = |t_s: u64, kind: AbuseKind, answer: &str| {
            (
                t_s * 1_000_000,
                Event::Abuse {
                    kind,
                    answer: answer.to_owned(),
                    latency_us: 1_000,
                },
            )
        };
        let kinds: BTreeSet<AbuseKind> = [AbuseKind::HugeHeaders, AbuseKind::Slowloris].into();
        let fine = trace([
            abuse(1, AbuseKind::HugeHeaders, "431"),
            abuse(2, AbuseKind::Slowloris, "closed"),
            abuse(3, AbuseKind::Slowloris, "408"),
        ]);
        assert_eq!(bad_input_rejected(fine.records(), &kinds), None);

        let accepted = trace([
            abuse(1, AbuseKind::HugeHeaders, "200"),
            abuse(2, AbuseKind::Slowloris, "closed"),
        ]);
        let violation = bad_input_rejected(accepted.records(), &kinds).unwrap();
        assert_eq!(violation.record_index, Some(0));
        assert!(
            violation.message.contains("got `200`, expected `431`"),
            "{violation}"
        );

        let never_answered = trace([
            abuse(1, AbuseKind::HugeHeaders, "431"),
            abuse(31, AbuseKind::Slowloris, "no answer"),
        ]);
        let violation = bad_input_rejected(never_answered.records(), &kinds).unwrap();
        assert!(violation.message.contains("got `no answer`"), "{violation}");

        let missing = trace([abuse(1, AbuseKind::HugeHeaders, "431")]);
        let violation = bad_input_rejected(missing.records(), &kinds).unwrap();
        assert_eq!(violation.record_index, None);
        assert!(
            violation.message.contains("no slowloris attempt"),
            "{violation}"
        );
    }

    #[test]
    fn handlers_in_flight_max_reports_the_first_sample_over_the_bound() {
        let with_high_water = |t_s: u64, handlers_high_water: usize| {
            let (t_us, mut event) = sample(Sample {
                t_s,
                ..Sample::default()
            });
            if let Event::RelaySample { http, .. } = &mut event {
                http.handlers_high_water = handlers_high_water;
            }
            (t_us, event)
        };
        let serialized = trace([with_high_water(1, 1), with_high_water(2, 1)]);
        assert_eq!(handlers_in_flight_max(serialized.records(), 1), None);
        let overlapped = trace([with_high_water(1, 1), with_high_water(2, 2)]);
        let violation = handlers_in_flight_max(overlapped.records(), 1).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.contains("2 handlers ran at once"),
            "{violation}"
        );
    }

    #[test]
    fn panics_contained_needs_an_answer_and_a_recovery() {
        let stall_window = [HandlerFaultWindow {
            start_us: 10_000_000,
            end_us: 20_000_000,
            status: 504,
        }];
        let unanswered = trace([call(15_000, 5_000, None), call(25_000, 10, Some(200))]);
        let violation = panics_contained(unanswered.records(), &stall_window, 1_000_000).unwrap();
        assert_eq!(violation.record_index, Some(0));
        assert!(
            violation.message.contains("got no response: timeout"),
            "{violation}"
        );

        let never_recovers = trace([
            call(15_000, 2_000, Some(504)),
            call(21_500, 2_000, Some(504)),
        ]);
        let violation =
            panics_contained(never_recovers.records(), &stall_window, 1_000_000).unwrap();
        assert_eq!(violation.record_index, None);
        assert!(
            violation
                .message
                .contains("no call succeeded after the handler faults"),
            "{violation}"
        );
    }

    #[test]
    fn liveness_fires_on_the_threshold_th_consecutive_failure() {
        let t = trace([
            probe(10, false),
            probe(20, false),
            probe(30, true),
            probe(40, false),
            probe(50, false),
        ]);
        assert_eq!(probe_liveness(t.records(), 3), None);
        let t = trace([
            probe(10, true),
            probe(20, false),
            probe(30, false),
            probe(40, false),
        ]);
        let violation = probe_liveness(t.records(), 3).unwrap();
        assert_eq!(violation.record_index, Some(3));
        assert_eq!(violation.t_us, 40_000_000);
        assert!(violation
            .to_string()
            .starts_with("probe_liveness at t=40.0s: 3 consecutive"));
    }

    #[test]
    fn latency_bound_names_the_slow_probe() {
        let t = trace([probe(10, true)]);
        assert_eq!(probe_latency_max(t.records(), 2), None);
        assert_eq!(
            probe_latency_max(t.records(), 1).unwrap().record_index,
            Some(0)
        );
    }

    /// The unit-level fake of a registry whose owner never releases: admissions pile up, the
    /// open count never returns to 0, and the oracle must say so.
    #[test]
    fn accounting_catches_a_registry_that_never_releases() {
        let leaky = trace([
            sample(Sample {
                t_s: 0,
                open: 0,
                high_water: 0,
                admitted: 0,
                released: 0,
                relay_tasks: 3,
            }),
            sample(Sample {
                t_s: 10,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
            }),
            sample(Sample {
                t_s: 30,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
            }),
            sample(Sample {
                t_s: 50,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
            }),
        ]);
        let violation = conn_accounting(leaky.records(), 20_000_000, 40_000_000).unwrap();
        assert_eq!(violation.record_index, Some(2));
        assert!(
            violation
                .message
                .contains("did not return to baseline by t=40.0s"),
            "{violation}"
        );
    }

    #[test]
    fn accounting_catches_over_admission_and_double_release() {
        let over = trace([sample(Sample {
            t_s: 1,
            open: 5,
            high_water: 5,
            admitted: 5,
            released: 0,
            relay_tasks: 8,
        })]);
        assert!(conn_accounting(over.records(), 0, 0)
            .unwrap()
            .message
            .contains("exceed max_connections=4"));
        let double = trace([sample(Sample {
            t_s: 1,
            open: 0,
            high_water: 2,
            admitted: 2,
            released: 3,
            relay_tasks: 3,
        })]);
        assert!(conn_accounting(double.records(), 0, 0)
            .unwrap()
            .message
            .contains("released twice or never"));
    }

    #[test]
    fn accounting_accepts_a_clean_return_to_baseline() {
        let clean = trace([
            sample(Sample {
                t_s: 0,
                open: 0,
                high_water: 0,
                admitted: 0,
                released: 0,
                relay_tasks: 3,
            }),
            sample(Sample {
                t_s: 10,
                open: 4,
                high_water: 4,
                admitted: 9,
                released: 5,
                relay_tasks: 7,
            }),
            sample(Sample {
                t_s: 25,
                open: 0,
                high_water: 4,
                admitted: 9,
                released: 9,
                relay_tasks: 3,
            }),
        ]);
        assert_eq!(
            conn_accounting(clean.records(), 20_000_000, 40_000_000),
            None
        );
    }

    #[test]
    fn accounting_rejects_a_relay_that_settles_only_after_the_deadline() {
        let late = trace([
            sample(Sample {
                t_s: 30,
                open: 2,
                high_water: 4,
                admitted: 9,
                released: 7,
                relay_tasks: 5,
            }),
            sample(Sample {
                t_s: 45,
                open: 0,
                high_water: 4,
                admitted: 9,
                released: 9,
                relay_tasks: 3,
            }),
        ]);
        let violation = conn_accounting(late.records(), 20_000_000, 40_000_000).unwrap();
        assert_eq!(violation.record_index, Some(0));
    }

    fn upstream(t_s: u64, sample: UpstreamSample) -> (u64, Event) {
        (
            t_s * 1_000_000,
            Event::RelaySample {
                open: 0,
                high_water: 0,
                max: 4,
                admitted: 0,
                released: 0,
                refused: 0,
                relay_tasks: 1,
                upstreams: sample,
                events: EventsSample::default(),
                http: HttpSample::default(),
                memory: MemorySample::default(),
            },
        )
    }

    fn head(t_s: u64, head_seq: u64, mailbox_high_water: usize) -> (u64, Event) {
        let (t_us, mut event) = upstream(t_s, UpstreamSample::default());
        if let Event::RelaySample { events, .. } = &mut event {
            events.head_seq = head_seq;
            events.mailbox_high_water = mailbox_high_water;
        }
        (t_us, event)
    }

    fn consumer_final(
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
            },
        )
    }

    fn hostile(
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

    #[test]
    fn bad_hosts_isolated_wants_each_kind_s_outcome() {
        let good = [
            hostile(
                "seq_overflow",
                Some("seq_out_of_range"),
                Some("quarantined"),
                3,
            ),
            hostile("seq_backwards", None, Some("seq_not_increasing"), 12),
            hostile("flood", None, None, 900),
            hostile("not_websocket", None, Some("handshake_error"), 0),
        ];
        assert_eq!(
            bad_hosts_isolated(trace(good.clone()).records(), 10_000_000),
            None
        );
        for (wrong, why) in [
            (
                hostile("seq_overflow", Some("event_unstorable"), None, 3),
                "expected quarantine",
            ),
            (
                hostile("seq_overflow", Some("seq_out_of_range"), None, 2),
                "good events",
            ),
            (
                hostile("oversize", None, Some("protocol_error"), 2),
                "frame_too_large",
            ),
            (
                hostile("flood", Some("seq_out_of_range"), None, 5),
                "expected quarantine",
            ),
            (hostile("seq_jump", None, None, 0), "good events"),
        ] {
            let violation = bad_hosts_isolated(trace([wrong]).records(), 10_000_000).unwrap();
            assert!(violation.message.contains(why), "{}", violation.message);
        }
    }

    #[test]
    fn bad_hosts_isolated_bounds_how_long_the_log_stays_unhealthy() {
        let sample = |t_s: u64, healthy: bool| {
            let (t_us, mut event) = head(t_s, t_s, 0);
            if let Event::RelaySample { events, .. } = &mut event {
                events.store_healthy = healthy;
            }
            (t_us, event)
        };
        let brief = (0..30).map(|t| sample(t, !(10..15).contains(&t)));
        assert_eq!(bad_hosts_isolated(trace(brief).records(), 10_000_000), None);
        let long = (0..30).map(|t| sample(t, t < 10));
        let violation = bad_hosts_isolated(trace(long).records(), 10_000_000).unwrap();
        assert!(
            violation.message.contains("since t=10"),
            "{}",
            violation.message
        );
    }

    #[test]
    fn fair_share_bounds_the_latest_polite_event_and_needs_one_timed() {
        let timed = |delay_ms: u64| {
            let (t_us, mut event) = consumer_final(150, "fast-0", false, 900, 0);
            if let Event::ConsumerFinal { latest_event, .. } = &mut event {
                *latest_event = Some(crate::trace::LateEvent {
                    host_id: 3,
                    upstream_seq: 62,
                    delay_ms,
                });
            }
            (t_us, event)
        };
        assert_eq!(fair_share(trace([timed(2_000)]).records(), 3_000), None);
        let late = fair_share(trace([timed(86_325)]).records(), 3_000).unwrap();
        assert!(
            late.message.contains("host 3's event 62 86325 ms"),
            "{}",
            late.message
        );
        let untimed = fair_share(
            trace([consumer_final(150, "fast-0", false, 900, 0)]).records(),
            3_000,
        );
        assert!(untimed.is_some(), "nothing timed cannot pass");
    }

    #[test]
    fn no_lost_events_flags_deliveries_the_log_holds_differently() {
        let with_log = |agrees: Option<bool>| {
            let (t_us, mut event) = consumer_final(30, "fast-0", false, 95, 0);
            if let Event::ConsumerFinal { log_agrees, .. } = &mut event {
                *log_agrees = agrees;
            }
            trace([head(10, 95, 3), (t_us, event)])
        };
        assert_eq!(
            no_lost_events(with_log(Some(true)).records(), 20_000_000),
            None
        );
        assert_eq!(no_lost_events(with_log(None).records(), 20_000_000), None);
        let violation = no_lost_events(with_log(Some(false)).records(), 20_000_000).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.starts_with(
                "fast-0 received events (up to seq 95) that the event log holds differently"
            ),
            "{violation}"
        );
    }

    #[test]
    fn no_lost_events_flags_the_first_anomaly_and_consumers_left_behind() {
        let clean = trace([
            head(10, 50, 3),
            head(20, 90, 3),
            consumer_final(30, "fast-0", false, 95, 0),
            consumer_final(30, "slow-0", true, 10, 2),
        ]);
        assert_eq!(no_lost_events(clean.records(), 20_000_000), None);
        let behind = no_lost_events(clean.records(), 30_000_000);
        assert_eq!(
            behind, None,
            "no sample after 20 s: the head then is still 90"
        );
        let lagging = trace([head(10, 50, 0), consumer_final(30, "fast-0", false, 49, 0)]);
        let violation = no_lost_events(lagging.records(), 20_000_000).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation
                .message
                .starts_with("fast-0 ended at seq 49, behind the head 50"),
            "{violation}"
        );
        let gap = trace([
            head(10, 50, 0),
            (
                12_000_000,
                Event::ConsumerAnomaly {
                    consumer: "fast-1".to_owned(),
                    expected: 7,
                    got: 9,
                    detail: "gap".to_owned(),
                },
            ),
            consumer_final(30, "fast-1", false, 60, 0),
        ]);
        let violation = no_lost_events(gap.records(), 20_000_000).unwrap();
        assert_eq!(
            (violation.record_index, violation.message.as_str()),
            (Some(1), "fast-1 expected seq 7 next but got 9 (gap)")
        );
    }

    #[test]
    fn recovery_within_needs_a_healthy_log_whose_head_moved() {
        let sample = |t_s: u64, head_seq: u64, store_healthy: bool| {
            let (t_us, mut event) = head(t_s, head_seq, 0);
            if let Event::RelaySample { events, .. } = &mut event {
                events.store_healthy = store_healthy;
            }
            (t_us, event)
        };
        let recovered = trace([
            sample(10, 100, false),
            sample(20, 100, false),
            sample(30, 180, true),
        ]);
        assert_eq!(
            recovery_within(recovered.records(), 20_000_000, 10_000_000),
            None
        );
        let stuck = trace([
            sample(10, 100, false),
            sample(20, 100, false),
            sample(30, 100, true),
        ]);
        let violation = recovery_within(stuck.records(), 20_000_000, 10_000_000).unwrap();
        assert_eq!(violation.record_index, Some(2));
        assert_eq!(
            violation.message,
            "10s after the faults healed: event log healthy, head 100 (was 100 when they healed)"
        );
        let failing = trace([sample(20, 100, false), sample(30, 150, false)]);
        assert!(recovery_within(failing.records(), 20_000_000, 10_000_000)
            .unwrap()
            .message
            .contains("still failing"));
        let down = trace([sample(20, 100, true)]);
        assert_eq!(
            recovery_within(down.records(), 20_000_000, 10_000_000)
                .unwrap()
                .record_index,
            None
        );
    }

    fn ended(t_s: u64, consumer: &str, reason: &str, too_slow: bool) -> (u64, Event) {
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

    #[test]
    fn no_stale_delivery_flags_a_fast_consumer_closed_for_someone_else() {
        let fast = ["fast-0".to_owned()];
        let fine = trace([
            ended(10, "fast-0", "close: shutdown", false),
            ended(11, "slow-0", "close: idle", false),
            ended(12, "slow-1", "too_slow", true),
        ]);
        assert_eq!(no_stale_delivery(fine.records(), &fast), None);
        for (reason, too_slow) in [
            ("close: idle", false),
            ("too_slow", true),
            ("close: kicked", false),
        ] {
            let stale = trace([
                ended(10, "slow-0", "too_slow", true),
                ended(20, "fast-0", reason, too_slow),
            ]);
            let violation = no_stale_delivery(stale.records(), &fast).unwrap();
            assert_eq!(violation.record_index, Some(1), "{reason}");
        }
    }

    #[test]
    fn consumer_accounting_balances_and_returns_to_zero() {
        let balanced = |t_s: u64, open: usize, admitted: u64, released: u64, consumers: usize| {
            let (t_us, mut event) = head(t_s, 1, 0);
            if let Event::RelaySample {
                open: o,
                admitted: a,
                released: r,
                events,
                ..
            } = &mut event
            {
                (*o, *a, *r) = (open, admitted, released);
                events.consumers = consumers;
            }
            (t_us, event)
        };
        let clean = trace([balanced(10, 3, 5, 2, 3), balanced(30, 0, 5, 5, 0)]);
        assert_eq!(consumer_accounting(clean.records(), 20_000_000), None);
        let leaked = trace([balanced(10, 3, 5, 2, 3), balanced(30, 1, 5, 4, 1)]);
        assert_eq!(
            consumer_accounting(leaked.records(), 20_000_000)
                .unwrap()
                .message,
            "after every consumer left: 1 connections open, 1 subscriptions held"
        );
        let double = trace([balanced(10, 1, 5, 5, 1)]);
        assert_eq!(
            consumer_accounting(double.records(), 20_000_000)
                .unwrap()
                .message,
            "admitted 5 != released 5 + open 1"
        );
        assert_eq!(
            consumer_accounting(clean.records(), 40_000_000)
                .unwrap()
                .record_index,
            None
        );
    }

    #[test]
    fn delivery_gap_max_ignores_slow_consumers() {
        // `consumer_final` reuses `last_seq` as the gap: 900 ms and 5 s.
        let t = trace([
            consumer_final(30, "fast-0", false, 900, 0),
            consumer_final(30, "slow-0", true, 5_000, 1),
        ]);
        assert_eq!(delivery_gap_max(t.records(), 1_000), None);
        let violation = delivery_gap_max(t.records(), 800).unwrap();
        assert_eq!(
            (violation.record_index, violation.message.as_str()),
            (
                Some(0),
                "fast-0 waited 900ms between two frames, bound 800ms"
            )
        );
    }

    #[test]
    fn no_lost_events_audits_the_event_log() {
        let audit = |events, oldest_seq, head_seq, hosts_with_gaps, hosts_behind: u32| {
            trace([(
                60_000_000,
                Event::StoreAudit {
                    events,
                    oldest_seq,
                    head_seq,
                    hosts_with_gaps,
                    hosts_behind,
                    first_behind: (hosts_behind > 0).then(|| "h1.example".to_owned()),
                },
            )])
        };
        assert_eq!(no_lost_events(audit(100, 1, 100, 0, 0).records(), 0), None);
        assert_eq!(no_lost_events(audit(0, 0, 0, 0, 0).records(), 0), None);
        let hole = no_lost_events(audit(99, 1, 100, 0, 0).records(), 0).unwrap();
        assert!(
            hole.message
                .starts_with("event log: 99 events for seqs 1..=100"),
            "{hole}"
        );
        assert!(no_lost_events(audit(100, 1, 100, 1, 0).records(), 0).is_some());
        let behind = no_lost_events(audit(100, 1, 100, 0, 2).records(), 0).unwrap();
        assert!(
            behind
                .message
                .ends_with("2 hosts missing events they had emitted (first: h1.example)"),
            "{behind}"
        );
    }

    #[test]
    fn slow_consumers_must_be_kicked_and_queues_bounded() {
        let kicked = trace([consumer_final(30, "slow-0", true, 10, 1)]);
        assert_eq!(slow_consumers_kicked(kicked.records()), None);
        let never = trace([
            consumer_final(30, "fast-0", false, 10, 0),
            consumer_final(30, "slow-0", true, 10, 0),
        ]);
        assert_eq!(
            slow_consumers_kicked(never.records()).unwrap().record_index,
            Some(1)
        );
        let bounds = |mailbox_max, held_bytes_max, ingest_bytes_max| MemoryBoundedSpec {
            mailbox_max: Some(mailbox_max),
            held_bytes_max: Some(held_bytes_max),
            ingest_bytes_max: Some(ingest_bytes_max),
        };
        let queues = trace([head(1, 5, 10), head(2, 9, 300), head(3, 12, 400)]);
        assert_eq!(
            memory_bounded(queues.records(), &bounds(400, u64::MAX, u64::MAX)),
            None
        );
        let violation = memory_bounded(queues.records(), &bounds(256, u64::MAX, u64::MAX)).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert_eq!(
            violation.message,
            "a consumer queue held 300 frames, bound 256"
        );
        let held = |t_s: u64, bytes: u64, ingest: u64| {
            let (t_us, mut event) = head(t_s, 1, 1);
            if let Event::RelaySample { memory, .. } = &mut event {
                memory.memory_high_water_bytes = bytes;
                memory.ingest_high_water_bytes = ingest;
            }
            (t_us, event)
        };
        let account = trace([held(1, 1_000, 10), held(2, 5_000, 20), held(3, 5_000, 90)]);
        assert_eq!(
            memory_bounded(account.records(), &bounds(usize::MAX, 5_000, 90)),
            None
        );
        let violation = memory_bounded(account.records(), &bounds(usize::MAX, 4_096, 90)).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert_eq!(
            violation.message,
            "the relay held 5000 bytes for consumers, bound 4096"
        );
        let violation = memory_bounded(account.records(), &bounds(usize::MAX, 5_000, 64)).unwrap();
        assert_eq!(violation.record_index, Some(2));
        assert_eq!(
            violation.message,
            "the ingest queue held 90 bytes of upstream events, bound 64"
        );
    }

    fn world(hosts: u32, dead: u32) -> (u64, Event) {
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

    #[test]
    fn hosts_connected_min_judges_the_last_sample_before_the_deadline() {
        let connected = |n| UpstreamSample {
            hosts: 100,
            hosts_connected: n,
            ..UpstreamSample::default()
        };
        let t = trace([
            world(100, 10),
            upstream(10, connected(50)),
            upstream(20, connected(85)),
            upstream(30, connected(20)),
        ]);
        assert_eq!(
            hosts_connected_min(t.records(), 0.94, 20_000_000),
            None,
            "85 >= ceil(0.94 * 90)"
        );
        let violation = hosts_connected_min(t.records(), 0.95, 20_000_000).unwrap();
        assert_eq!(violation.record_index, Some(2));
        assert!(
            violation
                .message
                .starts_with("85 of 90 live hosts connected, expected at least 86"),
            "{violation}"
        );
    }

    #[test]
    fn handshake_and_worker_bounds_name_the_first_excess() {
        let ok = UpstreamSample {
            hosts: 10,
            workers_running: 8,
            workers_high_water: 10,
            hosts_dormant: 2,
            handshakes_high_water: 4,
            ..UpstreamSample::default()
        };
        let doubled = UpstreamSample {
            workers_high_water: 11,
            ..ok
        };
        let zombie = UpstreamSample {
            workers_running: 9,
            ..ok
        };
        let t = trace([upstream(1, ok), upstream(2, doubled)]);
        assert_eq!(handshakes_bounded(t.records(), 4), None);
        assert_eq!(
            handshakes_bounded(t.records(), 3).unwrap().record_index,
            Some(0)
        );
        assert_eq!(workers_bounded(t.records()).unwrap().record_index, Some(1));
        assert_eq!(
            workers_bounded(trace([upstream(1, ok), upstream(2, zombie)]).records())
                .unwrap()
                .record_index,
            Some(1)
        );
    }

    #[test]
    fn a_host_without_worker_or_dormancy_at_the_end_is_forgotten() {
        let fine = UpstreamSample {
            hosts: 3,
            workers_running: 2,
            hosts_dormant: 1,
            ..UpstreamSample::default()
        };
        let forgotten = UpstreamSample {
            hosts_idle: 1,
            workers_running: 1,
            ..fine
        };
        assert_eq!(
            no_host_forgotten(
                trace([world(3, 0), upstream(1, forgotten), upstream(2, fine)]).records()
            ),
            None
        );
        let violation = no_host_forgotten(
            trace([world(3, 0), upstream(1, fine), upstream(2, forgotten)]).records(),
        )
        .unwrap();
        assert!(
            violation
                .message
                .starts_with("at the end 1 of 3 hosts had no worker"),
            "{violation}"
        );
        let lost = UpstreamSample { hosts: 2, ..fine };
        assert!(no_host_forgotten(trace([world(3, 0), upstream(1, lost)]).records()).is_some());
    }

    #[test]
    fn a_fault_must_start_end_and_take_effect() {
        let faults = [
            crate::scenario::FaultSpec {
                at_s: 10,
                duration_s: 5,
                kind: crate::scenario::FaultKind::HandlerPanic,
            },
            crate::scenario::FaultSpec {
                at_s: 20,
                duration_s: 5,
                kind: crate::scenario::FaultKind::Partition {
                    hosts_fraction: 0.5,
                },
            },
        ];
        let fault = |index: u32, active: bool, effect: u64| Event::Fault {
            kind: faults[index as usize].kind.name().to_owned(),
            index,
            hosts: 0,
            active,
            effect,
        };
        let fired = [
            (10_000_000, fault(0, true, 0)),
            (15_000_000, fault(0, false, 3)),
            (20_000_000, fault(1, true, 0)),
            (25_000_000, fault(1, false, 4)),
        ];
        assert_eq!(faults_fired(trace(fired.clone()).records(), &faults), None);

        let mut idle = fired.clone();
        idle[1].1 = fault(0, false, 0);
        let violation = faults_fired(trace(idle).records(), &faults).unwrap();
        assert_eq!(violation.oracle, OracleName::FaultsFired);
        assert_eq!(
            (violation.record_index, violation.t_us),
            (Some(1), 15_000_000)
        );
        assert_eq!(
            violation.message,
            "fault #1 (handler_panic at 10 s) never took effect: no work-route handler ran in its window"
        );

        let unfinished = trace(fired[..3].to_vec());
        assert_eq!(
            faults_fired(unfinished.records(), &faults).unwrap().message,
            "fault #2 (partition at 20 s) never ended before the run did"
        );
        let unstarted = trace(fired[..2].to_vec());
        assert_eq!(
            faults_fired(unstarted.records(), &faults).unwrap().message,
            "fault #2 (partition at 20 s) never started before the run ended"
        );
    }

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
