//! Coverage, as relay operators measure it (`coverage_min`): of the events the network's
//! steady hosts sent in a window of time, the fraction a consumer received within a
//! deadline of their sending. A relay in a restart loop alternates between near zero and
//! near everything; a healthy one stays near 100% once its startup ramp is over.
//!
//! The counts come from the trace: the world's [`Event::CoverageSent`] (events sent per
//! window) and each consumer's `on_time` in [`Event::ConsumerFinal`]. [`by_window`] turns
//! them into fractions once, for the oracle and for the timeline.

use serde::{Deserialize, Serialize};

use super::{needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{ConsumerKind, Problem, Scenario};
use crate::trace::{Event, Record};

/// `coverage_min` bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageMinSpec {
    /// Least fraction of events a window must have delivered in time.
    pub fraction: f64,
    /// An event is covered when a consumer received it within this many seconds of its
    /// sending.
    pub within_s: u64,
    /// Window length, seconds (events are counted by when they were sent).
    pub window_s: u64,
    /// Windows starting before this second are not judged (the startup ramp).
    pub from_s: u64,
}

impl Judge for CoverageMinSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let mut found = needs(
            OracleName::CoverageMin,
            scenario.upstreams.is_none()
                || !scenario
                    .consumers
                    .iter()
                    .any(|group| group.kind != ConsumerKind::Slow),
            "an [upstreams] table and a consumer that is not slow",
        );
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            found.push(Problem::new(
                "oracles.coverage_min.fraction",
                format!("expected 0 < fraction <= 1, found {}", self.fraction),
            ));
        }
        if self.window_s == 0 || self.from_s + self.window_s + self.within_s > scenario.duration_s {
            found.push(Problem::new(
                "oracles.coverage_min",
                format!(
                    "expected window_s >= 1 and from_s + window_s + within_s <= duration_s ({}), so at least one window is judged",
                    scenario.duration_s
                ),
            ));
        }
        found
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        coverage_min(records, self, scenario.duration_s)
    }
}

/// One window's coverage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCoverage {
    /// The window's start, seconds.
    pub start_s: u64,
    /// Events the steady hosts sent in it.
    pub sent: u64,
    /// Of those, the most any one consumer that is not slow received in time.
    pub on_time: u64,
}

impl WindowCoverage {
    /// The covered fraction (1 for a window in which nothing was sent).
    pub fn fraction(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            self.on_time as f64 / self.sent as f64
        }
    }
}

/// Every window's coverage in `records`, with the index of the record that holds the sent
/// counts, and the windows' length and deadline (s); `None` when coverage was not counted.
pub fn by_window(records: &[Record]) -> Option<(usize, u64, u64, Vec<WindowCoverage>)> {
    let (index, window_s, within_s, sent) =
        records
            .iter()
            .enumerate()
            .find_map(|(index, record)| match &record.event {
                Event::CoverageSent {
                    window_s,
                    within_s,
                    sent,
                } => Some((index, *window_s, *within_s, sent)),
                _ => None,
            })?;
    let consumers: Vec<&Vec<u64>> = records
        .iter()
        .filter_map(|record| match &record.event {
            Event::ConsumerFinal {
                slow: false,
                on_time,
                ..
            } => Some(on_time),
            _ => None,
        })
        .collect();
    let windows = sent
        .iter()
        .enumerate()
        .map(|(window, &sent)| WindowCoverage {
            start_s: window as u64 * window_s,
            sent,
            on_time: consumers
                .iter()
                .map(|on_time| on_time.get(window).copied().unwrap_or(0))
                .max()
                .unwrap_or(0),
        })
        .collect();
    Some((index, window_s, within_s, windows))
}

/// The first judged window (starting at `from_s` or later, with its deadline inside the
/// run) whose coverage is below `fraction`.
pub fn coverage_min(
    records: &[Record],
    spec: &CoverageMinSpec,
    duration_s: u64,
) -> Option<Violation> {
    let Some((index, window_s, within_s, windows)) = by_window(records) else {
        return Some(Violation {
            oracle: OracleName::CoverageMin,
            record_index: None,
            t_us: records.last().map_or(0, |record| record.t_us),
            message: "coverage was not counted (this world does not time deliveries)".into(),
        });
    };
    let low = windows.iter().find(|w| {
        w.start_s >= spec.from_s
            && w.start_s + window_s + within_s <= duration_s
            && w.fraction() < spec.fraction
    })?;
    Some(violation_at(
        OracleName::CoverageMin,
        index,
        &records[index],
        format!(
            "events sent in {}–{} s: {:.1}% ({} of {}) reached a consumer within {within_s} s, expected at least {:.1}%",
            low.start_s,
            low.start_s + window_s,
            100.0 * low.fraction(),
            low.on_time,
            low.sent,
            100.0 * spec.fraction
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

    fn sent(window_s: u64, sent: Vec<u64>) -> (u64, Event) {
        (
            600_000_000,
            Event::CoverageSent {
                window_s,
                within_s: 30,
                sent,
            },
        )
    }

    fn consumer(name: &str, slow: bool, on_time: Vec<u64>) -> (u64, Event) {
        let (t, mut event) = consumer_final(600, name, slow, 10, 0);
        if let Event::ConsumerFinal { on_time: slot, .. } = &mut event {
            *slot = on_time;
        }
        (t, event)
    }

    const SPEC: CoverageMinSpec = CoverageMinSpec {
        fraction: 0.97,
        within_s: 30,
        window_s: 60,
        from_s: 120,
    };

    #[test]
    fn the_best_fast_consumer_counts_and_the_ramp_and_the_tail_are_not_judged() {
        let t = trace([
            sent(60, vec![100, 100, 100, 100, 100, 100, 100, 100, 100, 100]),
            // The ramp (windows 0-1) and the last window (no time left to deliver) are low.
            consumer(
                "fast-0",
                false,
                vec![0, 40, 99, 98, 97, 99, 100, 100, 100, 10],
            ),
            consumer("fast-1", false, vec![0, 40, 90, 90]),
            // A slow consumer is not a measure of coverage.
            consumer("slow-0", true, vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ]);
        assert_eq!(coverage_min(t.records(), &SPEC, 600), None);
        let (index, window_s, within_s, windows) = by_window(t.records()).unwrap();
        assert_eq!((index, window_s, within_s), (0, 60, 30));
        assert_eq!(windows[3].on_time, 98);
        assert_eq!(windows[1].fraction(), 0.4);
    }

    #[test]
    fn a_window_below_the_bound_is_named_with_its_counts() {
        let t = trace([
            sent(60, vec![100, 100, 100, 200, 100, 100, 100, 100, 100, 100]),
            consumer("fast-0", false, vec![0, 0, 100, 20, 100, 100]),
        ]);
        let violation = coverage_min(t.records(), &SPEC, 600).unwrap();
        assert_eq!(violation.record_index, Some(0));
        assert!(
            violation.to_string().contains(
                "events sent in 180–240 s: 10.0% (20 of 200) reached a consumer within 30 s, expected at least 97.0%"
            ),
            "{violation}"
        );
    }

    #[test]
    fn a_world_that_does_not_count_coverage_fails_it() {
        let t = trace([consumer("fast-0", false, vec![])]);
        let violation = coverage_min(t.records(), &SPEC, 600).unwrap();
        assert!(violation.message.contains("not counted"));
    }
}
