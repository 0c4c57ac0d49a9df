//! The worlds a seed runs in, and the seam the harness runs them through. Everything above
//! the [`Engine`] seam (the harness, replay, sweep, shrink) is plain Rust over [`SeedRun`]s,
//! so it is tested with a fake engine under ordinary `cargo test`.
//!
//! Three worlds, each with its engine beside it: `madsim` (the simulation build,
//! `--cfg madsim`) for the scenarios that name `engine = "madsim"` (the default),
//! `turmoil` (ordinary builds) for those that name `engine = "turmoil"`, and `real`
//! (ordinary builds, `run --real`) for any scenario a real loopback can play.
//! [`for_scenario`] picks the simulated engine a scenario asks for, or says which build
//! has it.

#[cfg(madsim)]
pub mod madsim;
#[cfg(not(madsim))]
pub mod real;
#[cfg(not(madsim))]
pub mod turmoil;

use std::time::Duration;

use crate::logs::LogSettings;
use crate::oracle::{Verdict, Violation};
use crate::scenario::{EngineName, Scenario};
use crate::trace::Trace;

/// Everything one seed of one (resolved) scenario produced.
#[derive(Clone, Debug)]
pub struct SeedRun {
    /// The trace, in order.
    pub trace: Trace,
    /// Oracle violations, in oracle order.
    pub violations: Vec<Violation>,
    /// The verdict against the scenario's expectation.
    pub verdict: Verdict,
    /// Wall-clock time the run took.
    pub wall: Duration,
    /// Captured log text, when logs were asked for.
    pub logs: Option<String>,
    /// The relay's reachability probes this run reached, by name, with how often (madsim
    /// only; see `relay::rt::probe`). Not part of the trace, so not of its hash.
    pub reached: Reached,
}

/// Reachability probe name → times reached (only probes reached at least once).
pub type Reached = std::collections::BTreeMap<&'static str, u64>;

/// Runs seeds. `Sync` so a sweep can run seeds on several threads.
pub trait Engine: Sync {
    /// Short name, shown in reports and SCENARIOS.md.
    fn name(&self) -> &'static str;

    /// Whether a seed replays to the same trace (everything but real mode). A run that is
    /// not deterministic is never re-run behind the user's back, and its failures say how
    /// to run it again rather than how to replay it.
    fn deterministic(&self) -> bool {
        true
    }

    /// Run one seed of `scenario` (already swarm-resolved) and judge it; capture logs with
    /// `logs` if given. Capturing logs must not change the trace.
    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun;
}

/// The engine this build runs `scenario` on, or why it cannot (with the command that can).
pub fn for_scenario(scenario: &Scenario) -> Result<&'static dyn Engine, String> {
    match scenario.engine {
        #[cfg(madsim)]
        EngineName::Madsim => Ok(&madsim::Madsim),
        #[cfg(not(madsim))]
        EngineName::Turmoil => Ok(&turmoil::Turmoil),
        #[cfg(not(madsim))]
        EngineName::Madsim => Err(format!(
            "scenario {:?} runs on madsim, which this build does not have; use `cargo sim <command> …` \
             (it builds with --cfg madsim), e.g. `cargo sim run scenarios/churn_max_connections.toml --seed 1`",
            scenario.name
        )),
        #[cfg(madsim)]
        EngineName::Turmoil => Err(format!(
            "scenario {:?} runs on turmoil, which the simulation build does not have; use an ordinary \
             build: `cargo run --release -p windtunnel -- <command> …`",
            scenario.name
        )),
    }
}
