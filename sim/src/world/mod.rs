//! The simulated world (madsim only): one relay node running the unmodified relay, a
//! prober node, churner nodes, and a monitor that samples the relay's accounting.
//!
//! Node layout: relay `10.0.0.1:8080`; prober `10.0.1.1`; churner group `g`, node `n` at
//! `10.(g+1).(n / 250).(n % 250 + 1)`; upstream host `i` at `172.16.(i / 250).(i % 250 + 1)`
//! with a DNS name (one host per node, as in production). All randomness comes from
//! madsim's seeded RNG; all time is simulated. The relay's SQLite database is a real file in
//! the system temp dir, pre-filled with the generated host table, removed after the run.

mod actors;
mod client;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{seq::SliceRandom, thread_rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use relay::rt::time::{now, sleep, sleep_until, Instant};
use relay::store::Store;
use relay::{Observer, Relay};

use crate::oracle::{self, Verdict, Violation};
use crate::scenario::{FaultSpec, Scenario};
use crate::trace::{Event, Trace, UpstreamSample};

/// The relay's port inside the world.
const RELAY_PORT: u16 = 8080;
/// How often the monitor samples the relay's accounting.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Node name of the relay (also the key of its task count in madsim's metrics).
const RELAY_NODE: &str = "relay";

/// Everything one seed of one scenario produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The trace, in order.
    pub trace: Trace,
    /// Oracle violations, in oracle order.
    pub violations: Vec<Violation>,
    /// The verdict against the scenario's expectation.
    pub verdict: Verdict,
    /// Wall-clock time the run took.
    pub wall: Duration,
}

/// Shared, append-only trace for all actors of one run. madsim runs one task at a time on
/// one thread, so the lock is never contended; it exists to satisfy `Send`.
#[derive(Clone, Debug)]
pub struct TraceSink {
    inner: Arc<Mutex<Trace>>,
    origin: Instant,
}

impl TraceSink {
    fn new() -> Self {
        Self {
            inner: Arc::default(),
            origin: now(),
        }
    }

    /// Append `event` observed by `node`, stamped with the simulated time.
    pub fn record(&self, node: &str, event: Event) {
        let t_us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner
            .lock()
            .expect("trace lock poisoned")
            .push(t_us, node, event);
    }

    fn phase(&self, name: &str) {
        self.record(
            "world",
            Event::Phase {
                name: name.to_owned(),
            },
        );
    }
}

/// Run one seed of `scenario` to completion and judge it.
///
/// Each run gets a fresh OS thread. Thread-locals seeded once per thread from `getrandom`
/// (rand's `ThreadRng`, std's `RandomState` keys) draw from madsim's seeded RNG the first
/// time they are used; on a reused thread a later run would skip those draws and diverge
/// from the same seed's first run. A fresh thread makes every run a first run.
pub fn run(scenario: &Scenario, seed: u64) -> RunOutcome {
    let scenario = scenario.clone();
    // The caller's log subscriber (e.g. the harness's per-run capture) follows the run.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    #[allow(clippy::disallowed_methods)] // the harness's own thread, outside any simulation
    let runner = std::thread::Builder::new()
        .name(format!("windtunnel-seed-{seed}"))
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || run_on_this_thread(&scenario, seed))
        })
        .expect("cannot start a simulation thread");
    runner
        .join()
        .expect("the simulation thread catches its own panics")
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> RunOutcome {
    #[allow(clippy::disallowed_methods)] // wall time of the harness itself, never of the world
    let wall_start = std::time::Instant::now();
    let mut config = madsim::Config::default();
    let latency = scenario.network.latency_ms.map(Duration::from_millis);
    config.net.send_latency = latency.min..latency.max + Duration::from_nanos(1);
    let mut runtime = Runtime::with_seed_and_config(seed, config);
    runtime.set_time_limit(Duration::from_secs(scenario.duration_s + 120));
    let sink_slot: Arc<Mutex<Option<TraceSink>>> = Arc::default();
    let world_scenario = scenario.clone();
    let world_sink_slot = Arc::clone(&sink_slot);
    let database = RelayDatabase::new();
    let database_path = database.path.clone();
    let result = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            let sink = TraceSink::new();
            *world_sink_slot.lock().expect("slot lock") = Some(sink.clone());
            world(world_scenario, sink, database_path).await;
        })
    }));
    drop(runtime);
    drop(database);
    let sink = sink_slot.lock().expect("slot lock").take();
    let mut trace = sink.map_or_else(Trace::default, |sink| {
        std::mem::take(
            &mut *sink
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    });
    if let Err(payload) = result {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let t_us = trace.records().last().map_or(0, |r| r.t_us);
        trace.push(t_us, "world", Event::Panic { message });
    }
    let violations = oracle::check(scenario, &trace);
    let verdict = oracle::verdict(scenario.expect, &violations);
    RunOutcome {
        trace,
        violations,
        verdict,
        wall: wall_start.elapsed(),
    }
}

/// The relay's database file for one run; removed (with its WAL files) on drop.
struct RelayDatabase {
    path: PathBuf,
}

impl RelayDatabase {
    fn new() -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("windtunnel-{}-{run}.sqlite", std::process::id()));
        let database = Self { path };
        database.remove();
        database
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl Drop for RelayDatabase {
    fn drop(&mut self) {
        self.remove();
    }
}

async fn world(scenario: Scenario, sink: TraceSink, database: PathBuf) {
    let handle = Handle::current();
    let world_start = now();
    let relay_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let relay_addr = SocketAddr::new(relay_ip, RELAY_PORT);
    let observer_slot: Arc<Mutex<Option<Observer>>> = Arc::default();

    let upstream_nodes = match &scenario.upstreams {
        Some(spec) => start_upstreams(&handle, spec, &database, &sink, world_start),
        None => Vec::new(),
    };
    let mut relay_config = scenario.relay.clone();
    relay_config.server.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT);
    relay_config.store.path = database;
    relay_config.upstream.port = upstream::UPSTREAM_PORT;
    let relay_observer_slot = Arc::clone(&observer_slot);
    let relay_node = handle
        .create_node()
        .name(RELAY_NODE)
        .ip(relay_ip)
        .init(move || {
            let config = relay_config.clone();
            let observer_slot = Arc::clone(&relay_observer_slot);
            async move {
                let relay = Relay::bind(config)
                    .await
                    .expect("the relay binds inside the world");
                *observer_slot.lock().expect("observer lock") = Some(relay.observer());
                relay.run(std::future::pending()).await;
            }
        })
        .build();
    let observer = loop {
        if let Some(observer) = observer_slot.lock().expect("observer lock").clone() {
            break observer;
        }
        sleep(Duration::from_millis(1)).await;
    };
    sink.phase("relay_ready");
    sample(&sink, &observer);
    madsim::task::spawn(monitor(sink.clone(), observer.clone()));
    for fault in scenario.faults.clone() {
        madsim::task::spawn(inject(
            fault,
            relay_node.id(),
            upstream_nodes.clone(),
            sink.clone(),
            world_start,
        ));
    }

    if let Some(prober) = scenario.prober.clone() {
        let node = handle
            .create_node()
            .name("prober")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        node.spawn(actors::prober(
            prober,
            relay_addr,
            sink.clone(),
            world_start,
        ));
    }
    for (group, spec) in scenario.churners.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("churner-{group}-{index}");
            let ip = Ipv4Addr::new(
                10,
                group as u8 + 1,
                (index / 250) as u8,
                (index % 250) as u8 + 1,
            );
            let node = handle.create_node().name(&name).ip(IpAddr::V4(ip)).build();
            for _ in 0..spec.loops_per_node {
                node.spawn(actors::churn_loop(
                    spec.clone(),
                    relay_addr,
                    sink.clone(),
                    name.clone(),
                    world_start,
                ));
            }
        }
    }
    if !scenario.churners.is_empty() {
        sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
        sink.phase("churn_stopped");
    }
    sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
    sample(&sink, &observer);
    sink.phase("end");
}

/// Generate the host table, write it to the relay's database, and start one node per host.
fn start_upstreams(
    handle: &Handle,
    spec: &crate::scenario::UpstreamsSpec,
    database: &Path,
    sink: &TraceSink,
    world_start: Instant,
) -> Vec<NodeHandle> {
    let plans = upstream::plan(spec);
    Store::open(database)
        .and_then(|store| store.add_hosts(plans.iter().map(|plan| plan.hostname.as_str())))
        .expect("the world writes the relay's host table");
    sink.record(
        "world",
        Event::UpstreamWorld {
            hosts: spec.hosts,
            dead: plans.iter().filter(|plan| plan.dead).count() as u32,
            flaky: plans.iter().filter(|plan| plan.flap.is_some()).count() as u32,
        },
    );
    let net = NetSim::current();
    plans
        .into_iter()
        .map(|plan| {
            net.add_dns_record(&plan.hostname, IpAddr::V4(plan.ip));
            let node = handle
                .create_node()
                .name(&plan.hostname)
                .ip(IpAddr::V4(plan.ip))
                .build();
            if !plan.dead {
                node.spawn(upstream::serve(Arc::new(plan), sink.clone(), world_start));
            }
            node
        })
        .collect()
}

/// Play one fault of the timeline.
async fn inject(
    fault: FaultSpec,
    relay: madsim::task::NodeId,
    upstreams: Vec<NodeHandle>,
    sink: TraceSink,
    world_start: Instant,
) {
    let FaultSpec::Partition {
        at_s,
        duration_s,
        hosts_fraction,
    } = fault;
    sleep_until(world_start + Duration::from_secs(at_s)).await;
    let count = (hosts_fraction * upstreams.len() as f64).round() as usize;
    let cut: Vec<&NodeHandle> = upstreams
        .choose_multiple(&mut thread_rng(), count)
        .collect();
    let net = NetSim::current();
    for node in &cut {
        net.clog_link(relay, node.id());
        net.clog_link(node.id(), relay);
    }
    let record = |active| Event::Fault {
        kind: "partition".to_owned(),
        hosts: count as u32,
        active,
    };
    sink.record("world", record(true));
    sleep(Duration::from_secs(duration_s)).await;
    for node in &cut {
        net.unclog_link(relay, node.id());
        net.unclog_link(node.id(), relay);
    }
    sink.record("world", record(false));
}

async fn monitor(sink: TraceSink, observer: Observer) {
    loop {
        sleep(SAMPLE_PERIOD).await;
        sample(&sink, &observer);
    }
}

fn sample(sink: &TraceSink, observer: &Observer) {
    use relay::upstream::HostPhase;
    let stats = observer.connections();
    let up = observer.upstreams();
    let upstreams = UpstreamSample {
        hosts: up.hosts,
        hosts_connected: up.in_phase(HostPhase::Connected),
        hosts_dormant: up.in_phase(HostPhase::Dormant),
        hosts_idle: up.in_phase(HostPhase::Idle),
        workers_running: up.workers_running,
        workers_high_water: up.workers_high_water,
        handshakes_in_flight: up.handshakes_in_flight,
        handshakes_high_water: up.handshakes_high_water,
        upstream_events: up.events_total,
    };
    let relay_tasks = Handle::current()
        .metrics()
        .num_tasks_by_node()
        .get(RELAY_NODE)
        .copied()
        .unwrap_or(0);
    sink.record(
        "monitor",
        Event::RelaySample {
            open: stats.open,
            high_water: stats.high_water,
            max: stats.max,
            admitted: stats.admitted_total,
            released: stats.released_total,
            refused: stats.refused_at_capacity_total,
            relay_tasks,
            upstreams,
        },
    );
}
