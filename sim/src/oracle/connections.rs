//! Connection oracles: admissions and releases balance, and close requests reach only the
//! connection they were meant for (`conn_accounting`, `consumer_accounting`,
//! `no_stale_delivery`).

use serde::{Deserialize, Serialize};

use super::{format_seconds, needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{Problem, Scenario};
use crate::trace::{Event, Record};

/// `conn_accounting` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnAccountingSpec {
    /// After the last churner stops, open connections must be back to 0, and the relay's
    /// task count back to its pre-churn baseline, within this many seconds.
    pub settle_s: u64,
}

impl Judge for ConnAccountingSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let churn_end_s = scenario.churn_end_s();
        if churn_end_s + self.settle_s <= scenario.duration_s {
            return Vec::new();
        }
        vec![Problem::new(
            "oracles.conn_accounting.settle_s",
            format!(
                "expected the last churner stop ({churn_end_s}s) + settle_s ({}s) <= duration_s ({}s)",
                self.settle_s, scenario.duration_s
            ),
        )]
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let settle_deadline_us = (scenario.churn_end_s() + self.settle_s) * 1_000_000;
        conn_accounting(
            records,
            scenario.churn_end_s() * 1_000_000,
            settle_deadline_us,
        )
    }
}

/// `consumer_accounting` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerAccountingSpec {
    /// Seconds after the last consumer leaves by which the relay must be back to zero.
    pub settle_s: u64,
}

impl Judge for ConsumerAccountingSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        match scenario.consumers_end_s() {
            Some(end) if end + self.settle_s <= scenario.duration_s => Vec::new(),
            _ => vec![Problem::new(
                "oracles.consumer_accounting",
                "needs consumers that all have stop_s, with the last stop_s + settle_s <= duration_s"
                    .into(),
            )],
        }
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let end_s = scenario.consumers_end_s()?;
        consumer_accounting(records, (end_s + self.settle_s) * 1_000_000)
    }
}

/// `no_stale_delivery` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoStaleDeliverySpec {}

impl Judge for NoStaleDeliverySpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::NoStaleDelivery,
            scenario.consumers.is_empty(),
            "at least one [[consumers]] group",
        )
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        let fast = scenario.consumer_names(crate::scenario::ConsumerKind::Fast);
        no_stale_delivery(records, &fast)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 10,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 30,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 50,
                open: 4,
                high_water: 4,
                admitted: 4,
                released: 0,
                relay_tasks: 7,
                ..Sample::default()
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
            ..Sample::default()
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
            ..Sample::default()
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
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 10,
                open: 4,
                high_water: 4,
                admitted: 9,
                released: 5,
                relay_tasks: 7,
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 25,
                open: 0,
                high_water: 4,
                admitted: 9,
                released: 9,
                relay_tasks: 3,
                ..Sample::default()
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
                ..Sample::default()
            }),
            sample(Sample {
                t_s: 45,
                open: 0,
                high_water: 4,
                admitted: 9,
                released: 9,
                relay_tasks: 3,
                ..Sample::default()
            }),
        ]);
        let violation = conn_accounting(late.records(), 20_000_000, 40_000_000).unwrap();
        assert_eq!(violation.record_index, Some(0));
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
}
