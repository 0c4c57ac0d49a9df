//! `engine`: which simulator runs a scenario, and what each engine cannot play.

use serde::{Deserialize, Serialize};

use super::{FaultKind, Problem, Scenario};

/// The engines a scenario can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineName {
    /// madsim: the relay on simulated nodes, with the CPU model and the relay's fault points.
    #[default]
    Madsim,
    /// turmoil: TCP-faithful hosts on paused tokio runtimes, for small topologies.
    Turmoil,
}

impl EngineName {
    /// The name as scenario files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Madsim => "madsim",
            Self::Turmoil => "turmoil",
        }
    }

    /// The command prefix of the build that has this engine (`<prefix> run …`).
    pub fn cargo_command(self) -> &'static str {
        match self {
            Self::Madsim => "cargo sim",
            Self::Turmoil => "cargo run --release -p windtunnel --",
        }
    }
}

/// The most hosts (relay, upstreams and actors) a turmoil world may have: its links are
/// per host pair, and it steps every host every millisecond.
pub const TURMOIL_MAX_HOSTS: u64 = 300;

/// What the chosen engine cannot play.
pub(super) fn problems(scenario: &Scenario) -> Vec<Problem> {
    let mut found = Vec::new();
    match scenario.engine {
        EngineName::Madsim => {
            if scenario.network.tcp_capacity.is_some() {
                found.push(Problem::new(
                    "network.tcp_capacity",
                    "expected no tcp_capacity with engine = \"madsim\" (madsim's TCP has \
                     no accept queue or window limit; use engine = \"turmoil\")"
                        .into(),
                ));
            }
            if let Some(index) = scenario.churners.iter().position(|c| c.mix.half_close > 0) {
                found.push(Problem::new(
                    &format!("churners[{index}].mix.half_close"),
                    "expected half_close = 0 with engine = \"madsim\" (madsim's TCP has no \
                     half-close; use engine = \"turmoil\")"
                        .into(),
                ));
            }
        }
        EngineName::Turmoil => {
            if scenario.network.tcp_capacity == Some(0) {
                found.push(Problem::new(
                    "network.tcp_capacity",
                    "expected a capacity of at least 1".into(),
                ));
            }
            if let Some(fault) = scenario.faults.iter().find(|fault| {
                matches!(
                    fault.kind,
                    FaultKind::HandlerPanic
                        | FaultKind::HandlerStall
                        | FaultKind::StoreFault { .. }
                        | FaultKind::StoreStall
                        | FaultKind::PowerLoss
                )
            }) {
                found.push(Problem::new(
                    "faults",
                    format!(
                        "expected no {} fault with engine = \"turmoil\" (the relay's fault \
                         points and its database's power loss exist only in the madsim build)",
                        fault.kind.name()
                    ),
                ));
            }
            if scenario
                .upstreams
                .as_ref()
                .is_some_and(|upstreams| upstreams.hostile.is_some())
            {
                found.push(Problem::new(
                    "upstreams.hostile",
                    "expected no hostile cast with engine = \"turmoil\" (its outcomes are read \
                     from the madsim world's relay; use engine = \"madsim\")"
                        .into(),
                ));
            }
            let hosts = scenario.host_count();
            if hosts > TURMOIL_MAX_HOSTS {
                found.push(Problem::new(
                    "engine",
                    format!(
                        "expected at most {TURMOIL_MAX_HOSTS} hosts with engine = \"turmoil\" \
                         (its links are per host pair), found {hosts}; use engine = \"madsim\""
                    ),
                ));
            }
        }
    }
    found
}
