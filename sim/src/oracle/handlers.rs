//! Handler oracles: what API callers and abusers got back (`panics_contained`,
//! `calls_answered`, `handlers_in_flight_max`, `bad_input_rejected`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{AbuseKind, Problem, Scenario};
use crate::trace::{Event, Record};

/// `panics_contained` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicsContainedSpec {
    /// Seconds after a handler fault ends during which calls may still see its answer.
    #[serde(default = "default_panics_settle_s")]
    pub settle_s: u64,
}

impl Judge for PanicsContainedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::PanicsContained,
            scenario.callers.is_empty(),
            "[[callers]]",
        )
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        panics_contained(
            records,
            &handler_fault_windows(scenario),
            self.settle_s * 1_000_000,
        )
    }
}

fn default_panics_settle_s() -> u64 {
    1
}

/// `calls_answered` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsAnsweredSpec {
    /// The statuses a call may be answered with.
    #[serde(default = "default_calls_statuses")]
    pub statuses: Vec<u16>,
}

impl Judge for CallsAnsweredSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let mut found = needs(
            OracleName::CallsAnswered,
            scenario.callers.is_empty(),
            "[[callers]]",
        );
        if !self.statuses.contains(&200) {
            found.push(Problem::new(
                "oracles.calls_answered.statuses",
                "expected a list of statuses that includes 200".into(),
            ));
        }
        found
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        calls_answered(records, &self.statuses)
    }
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

impl Judge for HandlersInFlightMaxSpec {
    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        handlers_in_flight_max(records, self.max)
    }
}

/// `bad_input_rejected` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadInputRejectedSpec {}

impl Judge for BadInputRejectedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::BadInputRejected,
            scenario.abusers.is_empty(),
            "[[abusers]]",
        )
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let kinds: BTreeSet<AbuseKind> = scenario.abusers.iter().map(|a| a.kind).collect();
        bad_input_rejected(records, &kinds)
    }
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
                end_us: fault.end_s(scenario) * 1_000_000,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
}
