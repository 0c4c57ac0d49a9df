//! `[network]`: the simulated network's latency and (turmoil only) TCP capacity.

use serde::{Deserialize, Serialize};

use super::Between;

/// The simulated network between all nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// One-way latency range per packet, milliseconds.
    pub latency_ms: Between<u64>,
    /// turmoil only: the accept queue of every listener (a connection arriving at a full
    /// queue is refused) and the segments in flight per stream direction. turmoil's
    /// default (64) when unset; madsim has neither limit.
    pub tcp_capacity: Option<usize>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            latency_ms: Between { min: 1, max: 10 },
            tcp_capacity: None,
        }
    }
}
