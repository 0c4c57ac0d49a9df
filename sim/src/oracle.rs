//! Oracles: pure functions from a scenario and its trace to violations.
//!
//! Oracles are separate from the workload (TigerBeetle's checkers): the world only records
//! what it observed; everything judged is judged here, after the run, from the trace alone.
//! That makes every verdict reproducible from an artifact and testable without a simulator.
//! Each violation names the first offending trace record.

use std::fmt;

use crate::scenario::{Expect, OracleName, Scenario};
use crate::trace::{Event, Record, Trace};

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

/// Run every oracle the scenario checks. Violations come in oracle order, at most one each.
pub fn check(scenario: &Scenario, trace: &Trace) -> Vec<Violation> {
    let records = trace.records();
    let mut violations = Vec::new();
    if let (Some(_), Some(prober)) = (&scenario.oracles.probe_liveness, &scenario.prober) {
        violations.extend(probe_liveness(records, prober.failure_threshold));
    }
    if let Some(spec) = &scenario.oracles.probe_latency_max {
        violations.extend(probe_latency_max(records, spec.latency_ms_max));
    }
    if let Some(spec) = &scenario.oracles.conn_accounting {
        let settle_deadline_us = (scenario.churn_end_s() + spec.settle_s) * 1_000_000;
        violations.extend(conn_accounting(
            records,
            scenario.churn_end_s() * 1_000_000,
            settle_deadline_us,
        ));
    }
    violations.extend(no_panics(records));
    violations
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
        if record.t_us >= churn_end_us && open == 0 && relay_tasks <= baseline {
            return None;
        }
        if record.t_us <= settle_deadline_us {
            last_before_deadline = Some((index, record, open, relay_tasks, baseline));
        } else {
            break;
        }
    }
    let (index, record, open, relay_tasks, baseline) = last_before_deadline?;
    Some(violation(
        index,
        record,
        format!(
            "did not return to baseline by t={}: open={open} (expected 0), relay tasks={relay_tasks} \
             (baseline {baseline})",
            format_seconds(settle_deadline_us)
        ),
    ))
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
