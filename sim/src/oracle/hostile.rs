//! Hostile-cast oracles: a misbehaving upstream costs only itself (`bad_hosts_isolated`,
//! `fair_share`).

use serde::{Deserialize, Serialize};

use super::delivery::log_audit;
use super::{format_seconds, needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{HostileKind, Problem, Scenario};
use crate::trace::{Event, Record};

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

/// Whether the scenario has hostile upstream hosts to judge.
fn has_hostile_hosts(scenario: &Scenario) -> bool {
    scenario
        .upstreams
        .as_ref()
        .is_some_and(|upstreams| upstreams.hostile.is_some())
}

impl Judge for BadHostsIsolatedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::BadHostsIsolated,
            !has_hostile_hosts(scenario),
            "an [upstreams.hostile] table",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        bad_hosts_isolated(records, self.ready_within_s * 1_000_000)
    }
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

impl Judge for FairShareSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let mut found = needs(
            OracleName::FairShare,
            !has_hostile_hosts(scenario),
            "an [upstreams.hostile] table",
        );
        if scenario.consumers.is_empty() || self.from_s >= scenario.duration_s {
            found.push(Problem::new(
                "oracles.fair_share",
                "expected [[consumers]] to measure delivery and from_s < duration_s".into(),
            ));
        }
        found
    }

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
                    "{consumer} received host {}'s event (rev {} of {}) {} ms after it was sent, expected at most {delay_ms_max} ms",
                    late.host, late.rev, late.did, late.delay_ms
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
                    host: 3,
                    did: "did:plc:aaadaddf6cqylvdj2kfrp5xw".into(),
                    rev: "3mgfvl4q2u22d".into(),
                    delay_ms,
                });
            }
            (t_us, event)
        };
        assert_eq!(fair_share(trace([timed(2_000)]).records(), 3_000), None);
        let late = fair_share(trace([timed(86_325)]).records(), 3_000).unwrap();
        assert!(
            late.message.contains(
                "host 3's event (rev 3mgfvl4q2u22d of did:plc:aaadaddf6cqylvdj2kfrp5xw) 86325 ms"
            ),
            "{}",
            late.message
        );
        let untimed = fair_share(
            trace([consumer_final(150, "fast-0", false, 900, 0)]).records(),
            3_000,
        );
        assert!(untimed.is_some(), "nothing timed cannot pass");
    }
}
