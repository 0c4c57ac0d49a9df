//! The turmoil world (ordinary builds, no cfg flags): the same cast as the madsim world
//! (`crate::actors`) on turmoil's hosts, for scenarios that declare `engine = "turmoil"`.
//!
//! turmoil's TCP is what madsim's is not: a reset when a socket is dropped with unread
//! bytes, half-close (FIN on one direction, the other still open), a bounded accept queue
//! (`network.tcp_capacity`: a full queue refuses the connection) and per-stream flow
//! control. Its links are per host pair, so it is for small topologies (at most
//! [`crate::scenario::TURMOIL_MAX_HOSTS`] hosts).
//!
//! Every host (relay, each upstream, each actor) runs on its own paused current-thread
//! tokio runtime, all on this thread, stepped one tick (1 ms) at a time; the world's own
//! timeline (monitor, faults, end-of-run bookkeeping) is turmoil's one client, and the run
//! ends when it does. The faults are the one fault player's ([`crate::worlds::faults`]);
//! what they do to this world is [`TurmoilWorld`]'s, and what turmoil can only apply from
//! outside the simulation (crashing and restarting the relay, changing latency) it queues
//! for the simulation to apply between steps. Determinism: turmoil's RNG and the actors' RNG are seeded from
//! the seed, every `select!` in the relay and the actors is `biased`, the relay's `Date`
//! header is off, and nothing iterates a hash map.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use relay::rt::time::{sleep, sleep_until};
use relay::upstream::egress::Cidr;

use crate::actors::http::RestartLink;
use crate::actors::relay_host::{self, monitor, run_relay, sample, RelayControl, RelayDatabase};
use crate::actors::rng;
use crate::actors::{cast, upstream, TraceSink, WorldClock};
use crate::logs::LogSettings;
use crate::scenario::{Between, Scenario, Supports, TURMOIL};
use crate::worlds::faults::FaultPlayer;
use crate::worlds::orchestrator::{orchestrator, OrchestratorTask};
use crate::worlds::{
    conn_watch, on_fresh_thread, panic_message, Engine, Reached, RelayPlacement, SeedRun, Unjudged,
    World,
};

/// The addresses turmoil gives the hosts of an IPv4 simulation (the relay's egress rule
/// refuses this private range unless its allowlist names it).
const TURMOIL_NETWORK: Cidr = Cidr::V4(Ipv4Addr::new(192, 168, 0, 0), 16);
/// The relay's host name and port.
const RELAY_HOST: &str = "relay";
const RELAY_PORT: u16 = 8080;
/// turmoil's step: every host runs this much simulated time per step.
const TICK: Duration = Duration::from_millis(1);
/// The simulated wall clock's epoch (2026-01-01T00:00:00Z), so no run reads today's date.
const EPOCH_S: u64 = 1_767_225_600;

/// The turmoil world as an engine: the unmodified relay on turmoil's hosts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turmoil;

impl Engine for Turmoil {
    fn name(&self) -> &'static str {
        "turmoil"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        on_fresh_thread(self.name(), scenario, seed, logs, run_on_this_thread)
    }
}

/// What the timeline asks of the simulation between steps.
enum Command {
    CrashRelay,
    RestartRelay,
    SetLatency(Between<u64>),
}

type Commands = Arc<Mutex<VecDeque<Command>>>;

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> Unjudged {
    rng::seed(seed);
    let database = RelayDatabase::create();
    let sink = TraceSink::new(WorldClock::TurmoilSimulation);
    let result = catch_unwind(AssertUnwindSafe(|| {
        simulate(scenario, seed, &database, &sink)
    }));
    drop(database);
    let failure = match result {
        Ok(outcome) => outcome.err(),
        Err(payload) => Some(panic_message(&*payload)),
    };
    Unjudged {
        trace: sink.take(),
        failure,
        logs: None,
        reached: Reached::default(),
    }
}

/// Build the world, step it until the timeline ends, apply its commands between steps.
fn simulate(
    scenario: &Scenario,
    seed: u64,
    database: &RelayDatabase,
    sink: &TraceSink,
) -> Result<(), String> {
    let latency = scenario.network.latency_ms;
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(scenario.duration_s + 120))
        .min_message_latency(Duration::from_millis(latency.min))
        .max_message_latency(Duration::from_millis(latency.max));
    if let Some(capacity) = scenario.network.tcp_capacity {
        builder.tcp_capacity(capacity);
    }
    let mut sim = builder.build();
    let control = Arc::new(RelayControl::default());
    let commands: Commands = Arc::default();

    let plans = match &scenario.upstreams {
        Some(spec) => start_upstreams(
            &mut sim,
            spec,
            scenario.relay.upstream.max_frame_bytes,
            &database.path,
            sink,
        ),
        None => Vec::new(),
    };
    let relay_config = RelayPlacement {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT),
        database: &database.path,
        upstream_port: upstream::UPSTREAM_PORT,
        upstream_network: TURMOIL_NETWORK,
        without_date_header: true,
    }
    .config(scenario);
    let relay_control = Arc::clone(&control);
    sim.host(RELAY_HOST, move || {
        let config = relay_config.clone();
        let control = Arc::clone(&relay_control);
        async move {
            run_relay(config, control).await;
            Ok(())
        }
    });
    let relay_addr = SocketAddr::new(sim.lookup(RELAY_HOST), RELAY_PORT);
    let upstreams: Vec<String> = plans.iter().map(|plan| plan.hostname.clone()).collect();
    let world = Arc::new(TurmoilWorld {
        control: Arc::clone(&control),
        commands: Arc::clone(&commands),
        others: others(scenario, &upstreams),
        upstreams,
        plans: plans.clone(),
    });
    let (restart, orchestrator) = orchestrator(&world, scenario, sink);
    let tallies = start_actors(&mut sim, scenario, relay_addr, sink, restart);

    let timeline = Timeline {
        scenario: scenario.clone(),
        sink: sink.clone(),
        world,
        orchestrator,
        control,
        database: database.path.clone(),
        plans,
        tallies,
    };
    sim.client("world", async move {
        timeline.play().await;
        Ok(())
    });
    loop {
        let finished = sim.step().map_err(|error| error.to_string())?;
        let pending: Vec<Command> = commands.lock().expect("commands lock").drain(..).collect();
        for command in pending {
            match command {
                Command::CrashRelay => sim.crash(RELAY_HOST),
                Command::RestartRelay => sim.bounce(RELAY_HOST),
                Command::SetLatency(range) => {
                    sim.set_max_message_latency(Duration::from_millis(range.max));
                }
            }
        }
        if finished {
            return Ok(());
        }
    }
}

/// Generate the host table, write it to the relay's database, and start one host per
/// upstream (dead ones never listen).
fn start_upstreams(
    sim: &mut turmoil::Sim<'_>,
    spec: &crate::scenario::UpstreamsSpec,
    frame_limit_bytes: usize,
    database: &std::path::Path,
    sink: &TraceSink,
) -> Vec<Arc<upstream::HostPlan>> {
    let plans: Vec<Arc<upstream::HostPlan>> = upstream::plan(spec, frame_limit_bytes)
        .into_iter()
        .map(Arc::new)
        .collect();
    relay_host::publish_host_table(database, spec, &plans, sink)
        .expect("the world writes the relay's host table");
    for plan in &plans {
        let name = plan.hostname.clone();
        let plan = Arc::clone(plan);
        let sink = sink.clone();
        sim.host(name.as_str(), move || {
            let plan = Arc::clone(&plan);
            let sink = sink.clone();
            async move {
                if plan.dead.is_none() {
                    upstream::serve(
                        plan,
                        upstream::simulated_listen(),
                        sink,
                        WorldClock::TurmoilSimulation.start(),
                    )
                    .await;
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    plans
}

/// Start the relay's clients (`actors::cast`), one host each, the prober linked to the
/// orchestrator when it restarts the relay; a host's program is created afresh whenever
/// turmoil starts it.
fn start_actors(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    relay: SocketAddr,
    sink: &TraceSink,
    restart: Option<RestartLink>,
) -> Vec<relay_host::ConsumerTally> {
    let (clients, tallies) = cast::clients(scenario, None, restart);
    for client in clients {
        let (name, sink) = (client.name.clone(), sink.clone());
        sim.host(name.as_str(), move || {
            let (client, sink) = (client.clone(), sink.clone());
            async move {
                let world_start = WorldClock::TurmoilSimulation.start();
                for _ in 1..client.loops {
                    tokio::spawn(client.run(relay, sink.clone(), world_start));
                }
                client.run(relay, sink, world_start).await;
                Ok(())
            }
        });
    }
    tallies
}

/// The world's own timeline: wait for the relay, sample it, start the monitor and the
/// faults, and do the end-of-run bookkeeping.
struct Timeline {
    scenario: Scenario,
    sink: TraceSink,
    world: Arc<TurmoilWorld>,
    /// Liveness restarts (`[prober] restart`), started with the faults.
    orchestrator: Option<OrchestratorTask>,
    control: Arc<RelayControl>,
    database: std::path::PathBuf,
    plans: Vec<Arc<upstream::HostPlan>>,
    tallies: Vec<relay_host::ConsumerTally>,
}

impl Timeline {
    async fn play(self) {
        let world_start = WorldClock::TurmoilSimulation.start();
        while self.control.observer().is_none() {
            sleep(Duration::from_millis(1)).await;
        }
        self.sink.phase("relay_ready");
        sample(&self.sink, &self.control);
        let monitor_task = tokio::spawn(monitor(
            self.sink.clone(),
            Arc::clone(&self.control),
            conn_watch(&self.scenario),
        ));
        let faults = FaultPlayer::new(
            Arc::clone(&self.world),
            &self.scenario,
            self.sink.clone(),
            world_start,
        );
        let mut world_tasks: Vec<_> = faults
            .plays(&self.scenario.faults)
            .into_iter()
            .map(tokio::spawn)
            .collect();
        world_tasks.extend(self.orchestrator.map(tokio::spawn));
        let scenario = &self.scenario;
        if !scenario.churners.is_empty() {
            sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
            self.sink.phase("churn_stopped");
        }
        sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
        sample(&self.sink, &self.control);
        let hosts = self.control.host_endings();
        relay_host::finish(
            scenario,
            &self.sink,
            Some(&self.database),
            &self.plans,
            None,
            &hosts,
            self.tallies,
        );
        self.sink.phase("end");
        monitor_task.abort();
        for task in world_tasks {
            task.abort();
        }
    }
}

/// Every host but the relay and the world: what a clogged relay stops hearing.
fn others(scenario: &Scenario, upstreams: &[String]) -> Vec<String> {
    let mut names = upstreams.to_vec();
    if scenario.prober.is_some() {
        names.push("prober".to_owned());
    }
    for (group, spec) in scenario.churners.iter().enumerate() {
        names.extend((0..spec.nodes).map(|index| format!("churner-{group}-{index}")));
    }
    for (group, spec) in scenario.callers.iter().enumerate() {
        names.extend((0..spec.nodes).map(|index| format!("caller-{group}-{index}")));
    }
    for (group, spec) in scenario.abusers.iter().enumerate() {
        names.extend((0..spec.nodes).map(|index| format!("abuser-{group}-{index}")));
    }
    for spec in &scenario.consumers {
        names.extend((0..spec.count).map(|index| format!("{}-{index}", spec.name)));
    }
    names
}

/// What the turmoil world's faults change: the links between the relay's host and the
/// others, and, queued for the simulation to apply between steps, the relay host's crashes
/// and restarts and the network's latency.
struct TurmoilWorld {
    control: Arc<RelayControl>,
    commands: Commands,
    /// The upstream hosts' names, in plan order.
    upstreams: Vec<String>,
    /// Every host but the relay and the world ([`others`]).
    others: Vec<String>,
    /// The upstream hosts' plans, in plan order.
    plans: Vec<Arc<upstream::HostPlan>>,
}

impl TurmoilWorld {
    fn command(&self, command: Command) {
        self.commands
            .lock()
            .expect("commands lock")
            .push_back(command);
    }
}

impl World for TurmoilWorld {
    const SUPPORTS: &'static Supports = &TURMOIL;

    async fn relay_up(&self) -> bool {
        self.control.observer().is_some()
    }

    async fn kill_relay(&self) -> Result<(), String> {
        self.control.set_observer(None);
        self.command(Command::CrashRelay);
        Ok(())
    }

    async fn stop_relay(&self) -> Result<(), String> {
        self.control.stop_gracefully().await;
        self.command(Command::CrashRelay);
        Ok(())
    }

    async fn start_relay(&self) -> Result<(), String> {
        self.command(Command::RestartRelay);
        Ok(())
    }

    fn upstream_count(&self) -> usize {
        self.upstreams.len()
    }

    fn upstream_plans(&self) -> &[Arc<upstream::HostPlan>] {
        &self.plans
    }

    fn partition(&self, hosts: &[usize], cut: bool) {
        for &host in hosts {
            let host = self.upstreams[host].as_str();
            if cut {
                turmoil::partition(RELAY_HOST, host);
            } else {
                turmoil::repair(RELAY_HOST, host);
            }
        }
    }

    fn clog_relay(&self, clogged: bool) {
        for host in &self.others {
            if clogged {
                turmoil::hold(RELAY_HOST, host.as_str());
            } else {
                turmoil::release(RELAY_HOST, host.as_str());
            }
        }
    }

    fn set_latency(&self, latency_ms: Between<u64>) {
        self.command(Command::SetLatency(latency_ms));
    }
}
