//! Real mode (`windtunnel run --real`, ordinary builds): a scenario's own actors
//! (`crate::actors`) on a real tokio runtime, over real loopback TCP, against the relay
//! serving on its own multi-threaded runtime with real time, real sockets and a real
//! SQLite file, judged by the same oracles. Nothing is deterministic here; the point is
//! to show that what the tunnel predicts is what the relay does on a real network.
//!
//! Layout: the relay on `127.0.0.1:<free port>`; upstream host `i` on its own loopback
//! address (the plan's `172.16.a.b` becomes `127.16.a.b`, port [`REAL_UPSTREAM_PORT`])
//! and named by that address in the relay's host table (no DNS); every other actor dials
//! from `127.0.0.1`. The relay runs in this process (on its own runtime and threads) so the
//! monitor can read its accounting exactly as in the simulated worlds.
//!
//! What a real loopback cannot do is refused by [`unsupported`]: network faults
//! (partition, clog, latency), killing the relay without its shutdown (its tasks would
//! outlive the kill in-process), the relay's fault points (simulation builds only) and
//! turmoil's accept-queue size.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use relay::rt::time::{now, sleep, sleep_until};

use crate::actors::relay_host::{self, monitor, run_relay, sample, RelayControl, RelayDatabase};
use crate::actors::{abuser, consumer, http, rng, upstream, TraceSink, WorldClock};
use crate::engine::{Engine, SeedRun};
use crate::logs::LogSettings;
use crate::scenario::{FaultSpec, Scenario};
use crate::trace::Event;

/// The port every real upstream host listens on (each on its own loopback address).
pub const REAL_UPSTREAM_PORT: u16 = 18_081;
/// Worker threads of the relay's runtime.
const RELAY_WORKERS: usize = 2;

/// Real mode as an engine: `run` with `--real`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Real;

impl Engine for Real {
    fn name(&self) -> &'static str {
        "real"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        run(scenario, seed, logs)
    }
}

/// Why `scenario` cannot run for real, if it cannot.
pub fn unsupported(scenario: &Scenario) -> Option<String> {
    if scenario.network.tcp_capacity.is_some() {
        return Some(
            "network.tcp_capacity is turmoil's accept queue; a real listener's backlog is the \
             kernel's"
                .into(),
        );
    }
    scenario.faults.iter().find_map(|fault| match fault {
        FaultSpec::RestartRelay { .. } => None,
        FaultSpec::KillRelay { .. } => Some(
            "a kill_relay fault cannot be played for real: the relay runs in this process and \
             its tasks would outlive the kill (restart_relay, a graceful stop, can)"
                .into(),
        ),
        other => Some(format!(
            "a {} fault cannot be played on a real loopback network (no partitions, clogs or \
             latency control, and the relay's fault points exist only in simulation builds)",
            other.kind()
        )),
    })
}

/// Run `scenario` for real once, with `seed` for the actors' choices, and judge it.
pub fn run(scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
    crate::actors::on_fresh_thread("real", scenario, seed, logs, run_on_this_thread)
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> SeedRun {
    #[allow(clippy::disallowed_methods)] // wall time of the harness itself
    let wall_start = std::time::Instant::now();
    rng::seed(seed);
    let database = RelayDatabase::create();
    let relay_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RELAY_WORKERS)
        .thread_name("relay")
        .enable_all()
        .build()
        .expect("cannot build the relay's runtime");
    let actors_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build the actors' runtime");
    let sink = actors_runtime.block_on(async { TraceSink::new(WorldClock::Since(now())) });
    let outcome = actors_runtime.block_on(world(
        scenario.clone(),
        sink.clone(),
        &database,
        relay_runtime.handle().clone(),
    ));
    // Leaving: the actors' tasks first (their sockets close), then the relay's.
    drop(actors_runtime);
    relay_runtime.shutdown_timeout(Duration::from_secs(5));
    drop(database);
    let (trace, violations, verdict) = relay_host::judge(scenario, sink.take(), outcome.err());
    SeedRun {
        trace,
        violations,
        verdict,
        wall: wall_start.elapsed(),
        logs: None,
    }
}

/// A free loopback port for the relay (bound and released; the relay binds it next).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| format!("cannot find a free loopback port: {error}"))
}

/// The real world: host table, relay, upstreams, actors, timeline.
async fn world(
    scenario: Scenario,
    sink: TraceSink,
    database: &RelayDatabase,
    relay_runtime: tokio::runtime::Handle,
) -> Result<(), String> {
    let world_start = now();
    let relay_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let plans: Vec<Arc<upstream::HostPlan>> = match &scenario.upstreams {
        Some(spec) => upstream::plan(spec)
            .into_iter()
            .map(|plan| {
                let [_, _, a, b] = plan.ip.octets();
                let ip = Ipv4Addr::new(127, 16, a, b);
                Arc::new(upstream::HostPlan {
                    hostname: ip.to_string(),
                    ip,
                    ..plan
                })
            })
            .collect(),
        None => Vec::new(),
    };
    if let Some(spec) = &scenario.upstreams {
        relay_host::publish_host_table(&database.path, spec, &plans, &sink)
            .map_err(|error| format!("cannot write the relay's host table: {error}"))?;
    }
    for plan in plans.iter().filter(|plan| !plan.dead) {
        let listen = SocketAddr::from((plan.ip, REAL_UPSTREAM_PORT));
        tokio::spawn(upstream::serve(
            Arc::clone(plan),
            listen,
            sink.clone(),
            world_start,
        ));
    }

    let mut relay_config = scenario.relay.clone();
    relay_config.server.listen = relay_addr;
    relay_config.store.path = database.path.clone();
    relay_config.upstream.port = REAL_UPSTREAM_PORT;
    let control = Arc::new(RelayControl::default());
    let start_relay = {
        let control = Arc::clone(&control);
        move || {
            relay_runtime.spawn(run_relay(relay_config.clone(), Arc::clone(&control)));
        }
    };
    start_relay();
    while control.observer().is_none() {
        sleep(Duration::from_millis(1)).await;
    }
    sink.phase("relay_ready");
    sample(&sink, &control);
    let monitor_task = tokio::spawn(monitor(sink.clone(), Arc::clone(&control)));

    if let Some(prober) = scenario.prober.clone() {
        tokio::spawn(http::prober(prober, relay_addr, sink.clone(), world_start));
    }
    for (group, spec) in scenario.churners.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("churner-{group}-{index}");
            for _ in 0..spec.loops_per_node {
                tokio::spawn(http::churn_loop(
                    spec.clone(),
                    relay_addr,
                    sink.clone(),
                    name.clone(),
                    world_start,
                ));
            }
        }
    }
    for (group, spec) in scenario.callers.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("caller-{group}-{index}");
            tokio::spawn(http::caller(spec.clone(), relay_addr, sink.clone(), name));
        }
    }
    for (group, spec) in scenario.abusers.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("abuser-{group}-{index}");
            tokio::spawn(abuser::run(
                spec.clone(),
                relay_addr,
                sink.clone(),
                name,
                world_start,
            ));
        }
    }
    let mut tallies = Vec::new();
    for spec in &scenario.consumers {
        for index in 0..spec.count {
            let name = format!("{}-{index}", spec.name);
            let tally = consumer::SharedTally::default();
            tokio::spawn(consumer::run(
                spec.clone(),
                name.clone(),
                relay_addr,
                sink.clone(),
                Arc::clone(&tally),
                world_start,
            ));
            tallies.push(relay_host::ConsumerTally::new(name, spec, tally));
        }
    }

    let mut restarts: Vec<(u64, u64)> = scenario
        .faults
        .iter()
        .filter_map(|fault| match fault {
            FaultSpec::RestartRelay { at_s, down_s } => Some((*at_s, *down_s)),
            _ => None,
        })
        .collect();
    restarts.sort_unstable();
    let record = |active: bool| {
        sink.record(
            "world",
            Event::Fault {
                kind: "restart_relay".into(),
                hosts: 0,
                active,
            },
        );
    };
    let mut churn_stop_recorded = scenario.churners.is_empty();
    for (at_s, down_s) in restarts {
        if !churn_stop_recorded && scenario.churn_end_s() <= at_s {
            sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
            sink.phase("churn_stopped");
            churn_stop_recorded = true;
        }
        sleep_until(world_start + Duration::from_secs(at_s)).await;
        let stopped_before = control.stopped.load(Ordering::SeqCst);
        record(true);
        control.stop.notify_waiters();
        while control.stopped.load(Ordering::SeqCst) == stopped_before {
            sleep(Duration::from_millis(10)).await;
        }
        sleep(Duration::from_secs(down_s)).await;
        start_relay();
        record(false);
    }
    if !churn_stop_recorded {
        sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
        sink.phase("churn_stopped");
    }
    sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
    sample(&sink, &control);
    relay_host::finish(&scenario, &sink, &database.path, &plans, tallies);
    sink.phase("end");
    monitor_task.abort();
    control.stop.notify_waiters();
    Ok(())
}
