//! Probe oracles: what a Kubernetes-style prober saw of `/_healthz` (`probe_liveness`,
//! `probe_latency_max`), and what the orchestrator did about it (`relay_restarts_max`).

use serde::{Deserialize, Serialize};

use super::{needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{Problem, Scenario};
use crate::trace::{Event, Record};

/// `probe_liveness` takes its threshold from the prober.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLivenessSpec {}

impl Judge for ProbeLivenessSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::ProbeLiveness,
            scenario.prober.is_none(),
            "a [prober] table",
        )
    }

    fn judge(&self, scenario: &Scenario, records: &[Record]) -> Option<Violation> {
        probe_liveness(records, scenario.prober.as_ref()?.failure_threshold)
    }
}

/// `probe_latency_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLatencyMaxSpec {
    /// Largest acceptable latency of a successful probe, milliseconds.
    pub latency_ms_max: u64,
}

impl Judge for ProbeLatencyMaxSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::ProbeLatencyMax,
            scenario.prober.is_none(),
            "a [prober] table",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        probe_latency_max(records, self.latency_ms_max)
    }
}

/// `relay_restarts_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRestartsMaxSpec {
    /// Most liveness restarts the run may see.
    pub max: u32,
}

impl Judge for RelayRestartsMaxSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::RelayRestartsMax,
            !scenario
                .prober
                .as_ref()
                .is_some_and(|prober| prober.restart),
            "a [prober] with restart = true",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        relay_restarts_max(records, self.max)
    }
}

/// More than `max` liveness restarts: the violation is the first one past the bound.
pub fn relay_restarts_max(records: &[Record], max: u32) -> Option<Violation> {
    let mut restarts = records
        .iter()
        .enumerate()
        .filter(|(_, record)| matches!(record.event, Event::LivenessRestart { .. }));
    let (index, record) = restarts.nth(max as usize)?;
    let Event::LivenessRestart {
        restart,
        graceful,
        back_off_s,
    } = &record.event
    else {
        unreachable!("filtered to liveness restarts");
    };
    Some(violation_at(
        OracleName::RelayRestartsMax,
        index,
        record,
        format!(
            "liveness restart {restart} of the relay, past the bound of {max}: {}, back-off {back_off_s} s",
            if *graceful { "stopped gracefully" } else { "killed after the grace period" }
        ),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;

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
    fn restarts_past_the_bound_name_the_first_one_over() {
        let restart = |t_s: u64, restart: u32, graceful: bool| {
            (
                t_s * 1_000_000,
                Event::LivenessRestart {
                    restart,
                    graceful,
                    back_off_s: 10,
                },
            )
        };
        let t = trace([
            probe(10, false),
            restart(30, 1, true),
            probe(60, true),
            restart(90, 2, false),
        ]);
        assert_eq!(relay_restarts_max(t.records(), 2), None);
        let violation = relay_restarts_max(t.records(), 1).unwrap();
        assert_eq!(violation.record_index, Some(3));
        assert!(
            violation.to_string().starts_with(
                "relay_restarts_max at t=90.0s: liveness restart 2 of the relay, past the bound of 1: killed after the grace period"
            ),
            "{violation}"
        );
        assert_eq!(
            relay_restarts_max(t.records(), 0).unwrap().record_index,
            Some(1)
        );
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
}
