//! Probe oracles: what a Kubernetes-style prober saw of `/_healthz` (`probe_liveness`,
//! `probe_latency_max`).

use serde::{Deserialize, Serialize};

use super::{needs, Judge, OracleName, Violation};
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
    fn latency_bound_names_the_slow_probe() {
        let t = trace([probe(10, true)]);
        assert_eq!(probe_latency_max(t.records(), 2), None);
        assert_eq!(
            probe_latency_max(t.records(), 1).unwrap().record_index,
            Some(0)
        );
    }
}
