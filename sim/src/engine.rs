//! Engines: what actually runs one seed of a scenario. Everything above this seam (the
//! harness, replay, sweep, shrink) is plain Rust over [`SeedRun`]s, so it is tested with a
//! fake engine under ordinary `cargo test`; only [`Madsim`] needs the simulation build.
//!
//! Today every scenario runs on madsim. The seam is where a second engine (turmoil, for
//! TCP-faithful small topologies; see DESIGN.md) would plug in.

use std::time::Duration;

use crate::logs::LogSettings;
use crate::oracle::{Verdict, Violation};
use crate::scenario::Scenario;
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
}

/// Runs seeds. `Sync` so a sweep can run seeds on several threads.
pub trait Engine: Sync {
    /// Short name, shown in reports and SCENARIOS.md.
    fn name(&self) -> &'static str;

    /// Run one seed of `scenario` (already swarm-resolved) and judge it; capture logs with
    /// `logs` if given. Capturing logs must not change the trace.
    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun;
}

/// The madsim world (`crate::world`): the unmodified relay on simulated nodes.
#[cfg(madsim)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Madsim;

#[cfg(madsim)]
impl Engine for Madsim {
    fn name(&self) -> &'static str {
        "madsim"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        let capture = logs.map(crate::logs::LogCapture::new);
        let outcome = match &capture {
            // `world::run` carries the caller's dispatcher onto its simulation thread.
            Some(capture) => tracing::dispatcher::with_default(capture.dispatch(), || {
                crate::world::run(scenario, seed)
            }),
            None => crate::world::run(scenario, seed),
        };
        SeedRun {
            trace: outcome.trace,
            violations: outcome.violations,
            verdict: outcome.verdict,
            wall: outcome.wall,
            logs: capture.map(crate::logs::LogCapture::finish),
        }
    }
}
