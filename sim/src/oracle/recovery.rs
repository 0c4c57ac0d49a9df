//! Recovery oracles: faults took effect and the relay came back; nothing panicked
//! (`recovery_within`, `faults_fired`, `no_panics`).

use serde::{Deserialize, Serialize};

use super::{needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{Problem, Scenario};
use crate::trace::{Event, Record};

/// `recovery_within` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryWithinSpec {
    /// Seconds after the last fault ends.
    pub s: u64,
}

impl Judge for RecoveryWithinSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        match scenario
            .faults
            .iter()
            .map(|fault| fault.end_s(scenario))
            .max()
        {
            None => needs(
                OracleName::RecoveryWithin,
                true,
                "at least one [[faults]] entry",
            ),
            Some(end) if end + self.s > scenario.duration_s => vec![Problem::new(
                "oracles.recovery_within.s",
                format!(
                    "expected the last fault end ({end}s) + s ({}s) <= duration_s ({}s)",
                    self.s, scenario.duration_s
                ),
            )],
            Some(_) => Vec::new(),
        }
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let last_end_us = scenario
            .faults
            .iter()
            .map(|fault| fault.end_s(scenario))
            .max()
            .unwrap_or(0)
            * 1_000_000;
        recovery_within(records, last_end_us, self.s * 1_000_000)
    }
}

/// `no_panics` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoPanicsSpec {}

impl Judge for NoPanicsSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        no_panics(records)
    }
}

/// `faults_fired` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFiredSpec {}

impl Judge for FaultsFiredSpec {
    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        faults_fired(records, &scenario.faults)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
}
