//! The simulated world (madsim only): one relay node running the unmodified relay, a
//! prober node, churner nodes, and a monitor that samples the relay's accounting.
//!
//! Node layout: relay `10.0.0.1:8080`; prober `10.0.1.1`; churner group `g`, node `n` at
//! `10.(g+1).(n / 250).(n % 250 + 1)`; caller group `g`, node `n` at `10.(210+g).0.(n+1)`;
//! consumer `i` (over all groups) at
//! `10.200.(i / 250).(i % 250 + 1)`; upstream host `i` at `172.16.(i / 250).(i % 250 + 1)`
//! with a DNS name (one host per node, as in production). All randomness comes from
//! madsim's seeded RNG; all time is simulated. The relay's SQLite database is a real file in
//! `/dev/shm` when it has room (else the system temp dir), pre-filled with the generated
//! host table, removed after the run.
//!
//! [`bare`] builds the same shape of world without the relay and the harness: the baseline
//! the benchmarks compare the tunnel against.

pub mod bare;
mod power_loss;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{seq::SliceRandom, thread_rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use relay::rt::time::{now, sleep, sleep_until, Instant};

use crate::actors::relay_host::{self, monitor, run_relay, sample, RelayControl, RelayDatabase};
use crate::actors::{cast, upstream, TraceSink};
use crate::logs::LogSettings;
use crate::scenario::{Between, FaultKind, FaultSpec, NetworkSpec, Scenario};
use crate::trace::{Event, Trace};
use crate::worlds::{conn_watch, judge, on_fresh_thread, panic_message, Engine, SeedRun};

/// The relay's port inside the world.
pub const RELAY_PORT: u16 = 8080;
/// Node name of the relay (also the key of its task count in madsim's metrics).
const RELAY_NODE: &str = "relay";

/// The madsim world as an engine: the unmodified relay on simulated nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Madsim;

impl Engine for Madsim {
    fn name(&self) -> &'static str {
        "madsim"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        run(scenario, seed, logs)
    }
}

/// Run one seed of `scenario` to completion on a fresh thread and judge it, capturing logs
/// with `logs` if given.
pub fn run(scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
    on_fresh_thread("madsim", scenario, seed, logs, run_on_this_thread)
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> SeedRun {
    #[allow(clippy::disallowed_methods)] // wall time of the harness itself, never of the world
    let wall_start = std::time::Instant::now();
    let leftovers = relay::rt::leftovers();
    assert!(
        leftovers.is_empty(),
        "a new world found state left by a previous one on its thread: {}",
        leftovers.join(", ")
    );
    let mut config = madsim::Config::default();
    config.net.send_latency = send_latency(scenario.network.latency_ms);
    let mut runtime = Runtime::with_seed_and_config(seed, config);
    runtime.set_time_limit(Duration::from_secs(scenario.duration_s + 120));
    let sink_slot: Arc<Mutex<Option<TraceSink>>> = Arc::default();
    let world_scenario = scenario.clone();
    let world_sink_slot = Arc::clone(&sink_slot);
    let database = RelayDatabase::create();
    let database_path = database.path.clone();
    let result = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            let sink = TraceSink::starting_now();
            *world_sink_slot.lock().expect("slot lock") = Some(sink.clone());
            world(world_scenario, sink, database_path).await;
        })
    }));
    drop(runtime);
    drop(database);
    let reached = relay::rt::probe::Probe::ALL
        .into_iter()
        .zip(relay::rt::probe::counts())
        .filter(|&(_, count)| count > 0)
        .map(|(probe, count)| (probe.name(), count))
        .collect();
    let sink = sink_slot.lock().expect("slot lock").take();
    let trace = sink.map_or_else(Trace::default, |sink| sink.take());
    let failure = result.err().map(|payload| panic_message(&*payload));
    let (trace, violations, verdict) = judge(scenario, trace, failure);
    SeedRun {
        trace,
        violations,
        verdict,
        wall: wall_start.elapsed(),
        logs: None,
        reached,
    }
}

async fn world(scenario: Scenario, sink: TraceSink, database: PathBuf) {
    let handle = Handle::current();
    let world_start = now();
    let relay_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let relay_addr = SocketAddr::new(relay_ip, RELAY_PORT);
    let control = Arc::new(RelayControl::default());

    let (upstream_nodes, plans) = match &scenario.upstreams {
        Some(spec) => start_upstreams(
            &handle,
            spec,
            scenario.relay.upstream.max_frame_bytes,
            &database,
            &sink,
            world_start,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut relay_config = scenario.relay.clone();
    relay_config.server.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT);
    relay_config.store.path = database.clone();
    relay_config.upstream.port = upstream::UPSTREAM_PORT;
    let relay_control = Arc::clone(&control);
    let relay_node = handle
        .create_node()
        .name(RELAY_NODE)
        .ip(relay_ip)
        .init(move || run_relay(relay_config.clone(), Arc::clone(&relay_control)))
        .build();
    while control.observer().is_none() {
        sleep(Duration::from_millis(1)).await;
    }
    sink.phase("relay_ready");
    sample(&sink, &control);
    // Everything this world starts, so it can all be torn down when the run ends.
    let mut nodes = vec![relay_node.id()];
    nodes.extend(upstream_nodes.iter().map(NodeHandle::id));
    let mut world_tasks = vec![madsim::task::spawn(monitor(
        sink.clone(),
        Arc::clone(&control),
        conn_watch(&scenario),
    ))];
    for (index, fault) in scenario.faults.clone().into_iter().enumerate() {
        world_tasks.push(madsim::task::spawn(inject(
            index,
            fault,
            scenario.network.clone(),
            relay_node.id(),
            upstream_nodes.clone(),
            Arc::clone(&control),
            sink.clone(),
            world_start,
            database.clone(),
        )));
    }

    let send_times = relay_host::send_times(&scenario, &database, &plans);
    let (clients, tallies) = cast::clients(&scenario, send_times);
    for client in &clients {
        let node = handle
            .create_node()
            .name(&client.name)
            .ip(IpAddr::V4(client.ip))
            .build();
        nodes.push(node.id());
        for _ in 0..client.loops {
            node.spawn(client.run(relay_addr, sink.clone(), world_start));
        }
    }
    if !scenario.churners.is_empty() {
        sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
        sink.phase("churn_stopped");
    }
    sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
    sample(&sink, &control);
    let hosts = control
        .observer()
        .map(|observer| observer.hosts())
        .unwrap_or_default();
    relay_host::finish(&scenario, &sink, &database, &plans, &hosts, tallies);
    sink.phase("end");
    // Tear the world down inside the simulation: killed nodes drop their tasks (and with
    // them sockets, SQLite connections, buffers). Tasks that wait on each other form
    // reference cycles that dropping the runtime alone does not break, so without this
    // every run would leak its whole world into the next one.
    for task in world_tasks {
        task.abort();
    }
    for node in nodes {
        handle.kill(node);
    }
    sleep(Duration::from_millis(10)).await;
}

/// Generate the host table, write it to the relay's database, and start one node per host.
fn start_upstreams(
    handle: &Handle,
    spec: &crate::scenario::UpstreamsSpec,
    frame_limit_bytes: usize,
    database: &Path,
    sink: &TraceSink,
    world_start: Instant,
) -> (Vec<NodeHandle>, Vec<Arc<upstream::HostPlan>>) {
    let plans: Vec<Arc<upstream::HostPlan>> = upstream::plan(spec, frame_limit_bytes)
        .into_iter()
        .map(Arc::new)
        .collect();
    relay_host::publish_host_table(database, spec, &plans, sink)
        .expect("the world writes the relay's host table");
    let net = NetSim::current();
    let nodes = plans
        .iter()
        .map(|plan| {
            let node = host_node(handle, &net, plan);
            if !plan.dead {
                node.spawn(upstream::serve(
                    Arc::clone(plan),
                    upstream::simulated_listen(),
                    sink.clone(),
                    world_start,
                ));
            }
            node
        })
        .collect();
    (nodes, plans)
}

/// One upstream host's node: its DNS record, name and IP (the tunnel's world and the bare
/// program lay hosts out alike).
fn host_node(handle: &Handle, net: &NetSim, plan: &upstream::HostPlan) -> NodeHandle {
    net.add_dns_record(&plan.hostname, IpAddr::V4(plan.ip));
    handle
        .create_node()
        .name(&plan.hostname)
        .ip(IpAddr::V4(plan.ip))
        .build()
}

/// madsim's per-packet latency range for an inclusive `[min, max]` in milliseconds.
fn send_latency(range_ms: Between<u64>) -> std::ops::Range<Duration> {
    let range = range_ms.map(Duration::from_millis);
    range.min..range.max + Duration::from_nanos(1)
}

/// Play one fault of the timeline (entry `index` of `[[faults]]`): record when it took
/// hold and, when it ends, what it did (hosts cut, failures injected, a relay stopped).
#[allow(clippy::too_many_arguments)] // one fault's whole context, passed once
async fn inject(
    index: usize,
    fault: FaultSpec,
    network: NetworkSpec,
    relay: madsim::task::NodeId,
    upstreams: Vec<NodeHandle>,
    control: Arc<RelayControl>,
    sink: TraceSink,
    world_start: Instant,
    database: PathBuf,
) {
    let FaultSpec {
        at_s,
        duration_s,
        kind: what,
    } = fault;
    let kind = what.name();
    let record = |hosts: usize, active: bool, effect: u64| {
        sink.record(
            "world",
            Event::Fault {
                kind: kind.to_owned(),
                index: index as u32,
                hosts: hosts as u32,
                active,
                effect,
            },
        );
    };
    let handle = Handle::current();
    match what {
        FaultKind::Partition { hosts_fraction } => {
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
            record(count, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            for node in &cut {
                net.unclog_link(relay, node.id());
                net.unclog_link(node.id(), relay);
            }
            record(count, false, count as u64);
        }
        FaultKind::Clog => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let net = NetSim::current();
            net.clog_node(relay);
            record(0, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            net.unclog_node(relay);
            record(0, false, 1);
        }
        FaultKind::Latency { latency_ms } => {
            let set_latency = |range_ms: Between<u64>| {
                NetSim::current()
                    .update_config(|config| config.send_latency = send_latency(range_ms));
            };
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            set_latency(latency_ms);
            record(0, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            set_latency(network.latency_ms);
            record(0, false, 1);
        }
        FaultKind::KillRelay => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let was_up = control.observer().is_some();
            control.set_observer(None);
            handle.kill(relay);
            record(0, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            handle.restart(relay);
            record(0, false, u64::from(was_up));
        }
        FaultKind::PowerLoss => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let observer = control.observer();
            let was_up = observer.is_some();
            // A relay that is down has no commit in flight: its files are what it left.
            let durable = observer.is_none_or(|observer| observer.events().commits_durable);
            let image = power_loss::DiskImage::capture(&database, durable)
                .unwrap_or_else(|error| panic!("power_loss: cannot read the database: {error}"));
            control.set_observer(None);
            handle.kill(relay);
            record(0, true, 0);
            let back_at = now() + Duration::from_secs(duration_s);
            while image.still_open() && now() < back_at {
                sleep(Duration::from_millis(10)).await;
            }
            assert!(
                !image.still_open(),
                "power_loss: the killed relay still held its database open after {duration_s} s"
            );
            image
                .restore()
                .unwrap_or_else(|error| panic!("power_loss: cannot restore the database: {error}"));
            sleep_until(back_at).await;
            handle.restart(relay);
            record(0, false, u64::from(was_up));
        }
        FaultKind::RestartRelay => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let stopped_before = control.stopped.load(Ordering::SeqCst);
            record(0, true, 0);
            control.stop.notify_waiters();
            while control.stopped.load(Ordering::SeqCst) == stopped_before {
                sleep(Duration::from_millis(10)).await;
            }
            // Stopped cleanly; madsim needs the node killed before it can be restarted.
            handle.kill(relay);
            sleep(Duration::from_secs(duration_s)).await;
            handle.restart(relay);
            record(0, false, 1);
        }
        FaultKind::HandlerPanic | FaultKind::HandlerStall | FaultKind::StoreStall => {
            use relay::rt::fault::{self, Fault};
            let point = match what {
                FaultKind::HandlerPanic => Fault::HandlerPanic,
                FaultKind::StoreStall => Fault::StoreStall,
                _ => Fault::HandlerStall,
            };
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            fault::set(point, true);
            let injected_before = fault::injected();
            record(0, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            fault::set(point, false);
            record(0, false, fault::injected() - injected_before);
        }
        FaultKind::StoreFault { reads } => {
            use relay::rt::fault::{self, Fault};
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            fault::set(Fault::StoreWrite, true);
            fault::set(Fault::StoreRead, reads);
            let injected_before = fault::injected();
            record(0, true, 0);
            sleep(Duration::from_secs(duration_s)).await;
            fault::set(Fault::StoreWrite, false);
            fault::set(Fault::StoreRead, false);
            record(0, false, fault::injected() - injected_before);
        }
    }
}
