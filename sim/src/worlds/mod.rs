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
//!
//! What the worlds share is here, written once: the [`World`] trait (what a fault can do
//! to a world, and the [`Supports`] table of what it cannot), the one fault player
//! ([`faults`]) that plays every world's timeline through it, the one patch of the
//! scenario's relay configuration ([`RelayPlacement`]), the fresh thread a seed runs on,
//! and judging the trace it leaves.

pub mod faults;
#[cfg(madsim)]
pub mod madsim;
pub mod orchestrator;
pub mod power_loss;
#[cfg(not(madsim))]
pub mod real;
#[cfg(not(madsim))]
pub mod turmoil;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relay::rt::fault::Fault;
use relay::upstream::egress::Cidr;
use relay::upstream::transport::HostPattern;

use crate::actors::relay_host::{quiet_injected_panics, ConnWatch};
use crate::actors::upstream::HostPlan;
use crate::logs::{LogCapture, LogSettings};
use crate::oracle::{self, Verdict, Violation};
use crate::scenario::{Between, EngineName, Feature, Scenario, Supports};
use crate::trace::{Event, Trace};
use power_loss::DiskImage;

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

/// What a fault can do to a world: the relay's life (kill, graceful stop, start, power
/// cut), the upstream hosts' servers (stop, start) and links (latency), its network
/// (partition, clog, latency) and its fault points. The one fault player
/// ([`faults::FaultPlayer`]) plays every world's timeline through these. A world implements
/// what its [`World::SUPPORTS`] table does not refuse; the rest keep their default, which
/// panics (validation refuses a scenario that would need it).
pub trait World: Send + Sync + 'static {
    /// What this world can play.
    const SUPPORTS: &'static Supports;

    /// Whether the relay is up.
    fn relay_up(&self) -> impl Future<Output = bool> + Send;

    /// Kill the relay: no drain, in-flight work is lost (a crash, an OOM kill).
    fn kill_relay(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// Shut the relay down gracefully (stop accepting, ask every connection to close,
    /// drain); returns once it has stopped.
    fn stop_relay(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// Start the relay again, on the same database.
    fn start_relay(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// Cut the relay's power: kill it as [`World::kill_relay`] does, and return what its
    /// database files keep.
    fn cut_power(&self) -> DiskImage {
        unsupported::<Self>(Feature::PowerLoss)
    }

    /// How many upstream hosts there are (what a partition chooses from).
    fn upstream_count(&self) -> usize {
        unsupported::<Self>(Feature::Partition)
    }

    /// Cut (`cut`) or heal the links between the relay and the upstream hosts at `hosts`
    /// (indices in plan order), both directions.
    fn partition(&self, _hosts: &[usize], _cut: bool) {
        unsupported::<Self>(Feature::Partition)
    }

    /// Stop the servers of the upstream hosts at `hosts` (indices in plan order): their
    /// connections drop, and connections to them are refused until [`World::start_hosts`].
    fn stop_hosts(&self, _hosts: &[usize]) {
        unsupported::<Self>(Feature::HostRestart)
    }

    /// Start the servers of the upstream hosts at `hosts` again, each as it was planned,
    /// with its events still there.
    fn start_hosts(&self, _hosts: &[usize]) {
        unsupported::<Self>(Feature::HostRestart)
    }

    /// The upstream hosts' plans, in plan order: what a `hosts_latency` fault slows down
    /// (each plan's [`LinkDelay`](crate::actors::upstream::LinkDelay)).
    fn upstream_plans(&self) -> &[Arc<HostPlan>] {
        unsupported::<Self>(Feature::HostLatency)
    }

    /// Cut the relay off the network (`clogged`), or put it back.
    fn clog_relay(&self, _clogged: bool) {
        unsupported::<Self>(Feature::Clog)
    }

    /// Make every packet's one-way latency a draw from `latency_ms`.
    fn set_latency(&self, _latency_ms: Between<u64>) {
        unsupported::<Self>(Feature::Latency)
    }

    /// Switch the relay's fault points: each `(point, failing)`, in order.
    fn switch_fault_points(&self, _switches: &[(Fault, bool)]) {
        unsupported::<Self>(Feature::FaultPoints)
    }

    /// The failures the relay's fault points have injected so far.
    fn faults_injected(&self) -> u64 {
        unsupported::<Self>(Feature::FaultPoints)
    }
}

/// A world asked for a feature it does not implement: a harness bug either way, since
/// validation refuses a scenario that needs a feature its world's table refuses, and a
/// world implements every feature its table does not refuse.
fn unsupported<W: World + ?Sized>(feature: Feature) -> ! {
    let world = W::SUPPORTS.world;
    match W::SUPPORTS.refusal(feature) {
        Some(why) => unreachable!(
            "the world with {world} was asked for {feature:?}, which it refuses ({why}): \
             validation should have refused the scenario"
        ),
        None => unreachable!(
            "the world with {world} does not implement {feature:?}, though its table does not \
             refuse it"
        ),
    }
}

/// Where and how a world runs the relay: what it changes in the scenario's `[relay]`
/// table, the one patch every world applies.
#[derive(Clone, Copy, Debug)]
pub struct RelayPlacement<'a> {
    /// The address the relay listens on.
    pub listen: SocketAddr,
    /// The relay's database file.
    pub database: &'a Path,
    /// The port every upstream host listens on.
    pub upstream_port: u16,
    /// The addresses the world's upstream hosts live on (private or loopback ones, which
    /// the relay's egress rule refuses unless its allowlist names them).
    pub upstream_network: Cidr,
    /// Turn the relay's `Date` header off: turmoil's hosts read the machine's wall clock,
    /// which would make two runs of one seed differ.
    pub without_date_header: bool,
}

impl RelayPlacement<'_> {
    /// `scenario`'s relay configuration, placed here.
    pub fn config(&self, scenario: &Scenario) -> relay::config::Config {
        let mut config = scenario.relay.clone();
        config.server.listen = self.listen;
        if self.without_date_header {
            config.server.date_header = false;
        }
        config.store.path = self.database.to_owned();
        config.upstream.port = self.upstream_port;
        config.upstream.egress_allow.push(self.upstream_network);
        // The world's hosts speak plain WebSocket, whatever their names: TLS in a simulator
        // would cost real CPU per handshake (its cost is declared, `cpu.upstream_handshake_us`).
        config.upstream.insecure_ws_hosts.push(HostPattern::Any);
        config
    }
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The monitor's `conn_accounting` watch for `scenario`, if it has one, judging whether
/// the relay has settled with the oracle itself.
pub fn conn_watch(scenario: &Scenario) -> Option<ConnWatch> {
    ConnWatch::of(scenario, |records, churn_end_us, deadline_us| {
        oracle::conn_accounting(records, churn_end_us, deadline_us).is_some()
    })
}

/// What a world's run leaves to be judged.
#[derive(Debug)]
pub struct Unjudged {
    /// The trace, in order.
    pub trace: Trace,
    /// How the world failed, if it did (a panic or an engine error).
    pub failure: Option<String>,
    /// Log text of the world's own (real mode: the relay process's output).
    pub logs: Option<String>,
    /// The relay's reachability probes reached (see [`SeedRun::reached`]).
    pub reached: Reached,
}

/// Judge a finished run: a world that failed gets its failure recorded as a panic at the
/// last record's time, then every oracle runs. Every engine's run ends here (the product
/// tests' fake engine too).
pub fn judge(scenario: &Scenario, run: Unjudged, wall: Duration) -> SeedRun {
    let Unjudged {
        mut trace,
        failure,
        logs,
        reached,
    } = run;
    if let Some(message) = failure {
        let t_us = trace.records().last().map_or(0, |r| r.t_us);
        trace.push(t_us, "world", Event::Panic { message });
    }
    let violations = oracle::check(scenario, &trace);
    let verdict = oracle::verdict(scenario.expect, &violations);
    SeedRun {
        trace,
        violations,
        verdict,
        wall,
        logs,
        reached,
    }
}

/// Run one seed of a world (`run`) on a fresh OS thread named
/// `windtunnel-<world>-seed-<seed>` and judge it, with the caller's log subscriber, or a
/// capture of the run's logs when `logs` is given. Log text the world returns itself (real
/// mode: the relay process's output) follows the captured lines. The wall time is the
/// run's and its judging's, on that thread.
///
/// A fresh thread makes every run a first run: the actors' RNG and the relay's task census
/// are per thread, and under madsim the thread-locals seeded once per thread from
/// `getrandom` (rand's `ThreadRng`, std's `RandomState` keys) draw from madsim's seeded RNG
/// the first time they are used, so on a reused thread a later run would skip those draws
/// and diverge from the same seed's first run.
pub fn on_fresh_thread(
    world: &str,
    scenario: &Scenario,
    seed: u64,
    logs: Option<&LogSettings>,
    run: impl FnOnce(&Scenario, u64) -> Unjudged + Send + 'static,
) -> SeedRun {
    quiet_injected_panics();
    let capture = logs.map(LogCapture::new);
    let dispatch = match &capture {
        Some(capture) => capture.dispatch().clone(),
        None => tracing::dispatcher::get_default(Clone::clone),
    };
    let scenario = scenario.clone();
    #[allow(clippy::disallowed_methods)] // the harness's own thread, outside any simulation
    let runner = std::thread::Builder::new()
        .name(format!("windtunnel-{world}-seed-{seed}"))
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                #[allow(clippy::disallowed_methods)] // wall time of the harness, not of a world
                let started = std::time::Instant::now();
                let unjudged = run(&scenario, seed);
                judge(&scenario, unjudged, started.elapsed())
            })
        })
        .expect("cannot start a world's thread");
    let mut outcome = runner
        .join()
        .expect("a world's thread reports its own failures");
    if let Some(capture) = capture {
        let captured = capture.finish();
        outcome.logs = Some(match outcome.logs.take() {
            Some(own) => format!("{captured}{own}"),
            None => captured,
        });
    }
    outcome
}
