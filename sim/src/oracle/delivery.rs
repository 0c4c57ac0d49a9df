//! Delivery oracles: what consumers received and what the event log holds — nothing lost,
//! slow consumers kicked, memory bounded, no stall (`no_lost_events`, `slow_consumers_kicked`,
//! `memory_bounded`, `delivery_gap_max`).

use serde::{Deserialize, Serialize};

use super::{format_seconds, needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{ConsumerKind, Problem, Scenario};
use crate::trace::{Event, Record};

/// `no_lost_events` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoLostEventsSpec {
    /// At the end, every fast or reconnecting consumer must have received at least the
    /// head the relay had persisted this many seconds earlier.
    pub lag_s: u64,
}

impl Judge for NoLostEventsSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::NoLostEvents,
            scenario.consumers.is_empty(),
            "at least one [[consumers]] group",
        )
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        no_lost_events(
            records,
            scenario.duration_s.saturating_sub(self.lag_s) * 1_000_000,
        )
    }
}

/// `slow_consumers_kicked` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumersKickedSpec {}

impl Judge for SlowConsumersKickedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let slow = scenario
            .consumers
            .iter()
            .any(|c| c.kind == ConsumerKind::Slow);
        needs(
            OracleName::SlowConsumersKicked,
            !slow,
            "a [[consumers]] group with kind = \"slow\"",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        slow_consumers_kicked(records)
    }
}

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

impl Judge for MemoryBoundedSpec {
    fn problems(&self, _: &Scenario) -> Vec<Problem> {
        if self.mailbox_max.is_some()
            || self.held_bytes_max.is_some()
            || self.ingest_bytes_max.is_some()
        {
            return Vec::new();
        }
        vec![Problem::new(
            "oracles.memory_bounded",
            "expected at least one of mailbox_max, held_bytes_max, ingest_bytes_max".into(),
        )]
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        memory_bounded(records, self)
    }
}

/// `delivery_gap_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryGapMaxSpec {
    /// Longest acceptable wait between two frames, milliseconds.
    pub gap_ms_max: u64,
}

impl Judge for DeliveryGapMaxSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::DeliveryGapMax,
            scenario.consumers.is_empty(),
            "at least one [[consumers]] group",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        delivery_gap_max(records, self.gap_ms_max)
    }
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

/// The end-of-run audit of the event log, judged for `oracle`: relay seqs dense, no host
/// with a hole, no steady polite host missing events it had sent.
pub(super) fn log_audit(oracle: OracleName, records: &[Record]) -> Option<Violation> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
}
