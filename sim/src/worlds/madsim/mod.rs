//! The simulated world (madsim only): one relay node running the unmodified relay, a
//! prober node, churner nodes, and a monitor that samples the relay's accounting.
//!
//! Node layout: relay `10.0.0.1:8080`; prober `10.0.1.1`; churner group `g`, node `n` at
//! `10.(g+1).(n / 250).(n % 250 + 1)`; caller group `g`, node `n` at `10.(210+g).0.(n+1)`;
//! consumer `i` (over all groups) at
//! `10.200.(i / 250).(i % 250 + 1)`; upstream host `i` at `172.16.(i / 250).(i % 250 + 1)`
//! with a DNS name (one host per node, as in production). All randomness comes from
//! madsim's seeded RNG; all time is simulated. The relay's SQLite database is a real file in
//! `/dev/shm` when it has room (else the system temp dir), pre-filled with the host table
//! (generated or loaded), removed after the run. A dead host's node has no listener, or no
//! DNS record, or accepts and never answers ([`upstream::DeadHost`]). A scenario with
//! crawling abusers also gets the crawl flood's DNS records, its black hole at
//! `172.16.250.250` and recording listeners on the internal addresses `10.99.0.1` and
//! `169.254.169.254` ([`crawl`]).
//!
//! The faults are the one fault player's ([`crate::worlds::faults`]); what they do to this
//! world is [`MadsimWorld`]'s: madsim's `kill` and `restart` of the relay's node and of
//! upstream hosts' nodes (a restarted host serves its plan again), clogged links and
//! nodes, the network's latency, the hosts' link delays, and the relay's fault points.
//!
//! [`bare`] builds the same shape of world without the relay and the harness: the baseline
//! the benchmarks compare the tunnel against.

pub mod bare;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::task::NodeId;
use relay::rt::fault::{self, Fault};
use relay::rt::time::{now, sleep, sleep_until, Instant};

use crate::actors::relay_host::{self, monitor, run_relay, sample, RelayControl, RelayDatabase};
use crate::actors::upstream::DeadHost;
use crate::actors::{cast, crawl, upstream, TraceSink};
use crate::logs::LogSettings;
use crate::scenario::{Between, Scenario, Supports, MADSIM};
use crate::trace::Trace;
use crate::worlds::faults::FaultPlayer;
use crate::worlds::orchestrator::orchestrator;
use crate::worlds::power_loss::DiskImage;
use crate::worlds::{
    conn_watch, on_fresh_thread, panic_message, Engine, RelayPlacement, SeedRun, Unjudged, World,
};

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
        on_fresh_thread(self.name(), scenario, seed, logs, run_on_this_thread)
    }
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> Unjudged {
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
    Unjudged {
        trace: sink.map_or_else(Trace::default, |sink| sink.take()),
        failure: result.err().map(|payload| panic_message(&*payload)),
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
    let crawl_nodes = if scenario
        .abusers
        .iter()
        .any(|abuser| abuser.kind.is_crawler())
    {
        start_crawl_world(&handle, &sink)
    } else {
        Vec::new()
    };
    let relay_config = RelayPlacement {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT),
        database: &database,
        upstream_port: upstream::UPSTREAM_PORT,
        upstream_network: upstream::HOST_NETWORK,
        without_date_header: false,
    }
    .config(&scenario);
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
    nodes.extend(crawl_nodes.iter().map(NodeHandle::id));
    let monitor_task = madsim::task::spawn(monitor(
        sink.clone(),
        Arc::clone(&control),
        conn_watch(&scenario),
    ));
    let madsim_world = Arc::new(MadsimWorld {
        relay: relay_node.id(),
        upstreams: upstream_nodes.iter().map(NodeHandle::id).collect(),
        plans: plans.clone(),
        sink: sink.clone(),
        world_start,
        control: Arc::clone(&control),
        database: database.clone(),
    });
    let faults = FaultPlayer::new(
        Arc::clone(&madsim_world),
        &scenario,
        sink.clone(),
        world_start,
    );
    let mut world_tasks: Vec<_> = faults
        .plays(&scenario.faults)
        .into_iter()
        .map(madsim::task::spawn)
        .collect();
    let (restart, orchestrator) = orchestrator(&madsim_world, &scenario, &sink);
    world_tasks.extend(orchestrator.map(madsim::task::spawn));

    let send_times = relay_host::send_times(&scenario, &plans);
    let (clients, tallies) = cast::clients(&scenario, send_times.clone(), restart);
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
    let hosts = control.host_endings();
    relay_host::finish(
        &scenario,
        &sink,
        Some(&database),
        &plans,
        send_times.as_deref(),
        &hosts,
        tallies,
    );
    sink.phase("end");
    // Tear the world down inside the simulation: killed nodes drop their tasks (and with
    // them sockets, SQLite connections, buffers). Tasks that wait on each other form
    // reference cycles that dropping the runtime alone does not break, so without this
    // every run would leak its whole world into the next one.
    monitor_task.abort();
    for task in world_tasks {
        task.abort();
    }
    for node in nodes {
        handle.kill(node);
    }
    sleep(Duration::from_millis(10)).await;
}

/// Plan the host table, write it to the relay's database, and start one node per host.
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
            serve_host(&node, plan, sink, world_start);
            node
        })
        .collect();
    (nodes, plans)
}

/// The crawl flood's world ([`crawl`]): its DNS records, the black hole its names resolve
/// to, and a recording listener on each forbidden address.
fn start_crawl_world(handle: &Handle, sink: &TraceSink) -> Vec<NodeHandle> {
    let net = NetSim::current();
    for (name, ip) in crawl::dns_records() {
        net.add_dns_record(&name, ip);
    }
    let black_hole = handle
        .create_node()
        .name("crawl-black-hole")
        .ip(IpAddr::V4(crawl::BLACK_HOLE_IP))
        .build();
    black_hole.spawn(upstream::black_hole(
        "crawl-black-hole".to_owned(),
        upstream::simulated_listen(),
    ));
    let mut nodes = vec![black_hole];
    for ip in crawl::FORBIDDEN_IPS {
        let node = handle
            .create_node()
            .name(format!("forbidden-{ip}"))
            .ip(IpAddr::V4(ip))
            .build();
        node.spawn(crawl::forbidden_listener(
            upstream::simulated_listen(),
            IpAddr::V4(ip),
            sink.clone(),
        ));
        nodes.push(node);
    }
    nodes
}

/// Start what host `plan` runs on its `node`: its server, a black hole, or nothing (a dead
/// host nothing listens on).
fn serve_host(
    node: &NodeHandle,
    plan: &Arc<upstream::HostPlan>,
    sink: &TraceSink,
    world_start: Instant,
) {
    match plan.dead {
        None => {
            node.spawn(upstream::serve(
                Arc::clone(plan),
                upstream::simulated_listen(),
                sink.clone(),
                world_start,
            ));
        }
        Some(DeadHost::BlackHole) => {
            node.spawn(upstream::black_hole(
                plan.hostname.clone(),
                upstream::simulated_listen(),
            ));
        }
        // Nothing listens (or nobody finds the node).
        Some(DeadHost::Refused | DeadHost::Unresolved) => {}
    }
}

/// One upstream host's node: its DNS record (none for a host whose name does not resolve),
/// name and IP (the tunnel's world and the bare program lay hosts out alike).
fn host_node(handle: &Handle, net: &NetSim, plan: &upstream::HostPlan) -> NodeHandle {
    if plan.dead != Some(DeadHost::Unresolved) {
        net.add_dns_record(&plan.hostname, IpAddr::V4(plan.ip));
    }
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

/// What the madsim world's faults change: the relay's node (and its control and database)
/// and the upstream hosts' nodes (with what they run, to start it again).
struct MadsimWorld {
    relay: NodeId,
    /// The upstream hosts' nodes, in plan order.
    upstreams: Vec<NodeId>,
    /// The upstream hosts' plans, in plan order.
    plans: Vec<Arc<upstream::HostPlan>>,
    /// Where a restarted host records its subscriptions.
    sink: TraceSink,
    /// The world's start (a host's event log is a function of the time since).
    world_start: Instant,
    control: Arc<RelayControl>,
    database: PathBuf,
}

impl MadsimWorld {
    /// Withdraw the relay's observer and kill its node.
    fn kill(&self) {
        self.control.set_observer(None);
        Handle::current().kill(self.relay);
    }
}

impl World for MadsimWorld {
    const SUPPORTS: &'static Supports = &MADSIM;

    async fn relay_up(&self) -> bool {
        self.control.observer().is_some()
    }

    async fn kill_relay(&self) -> Result<(), String> {
        self.kill();
        Ok(())
    }

    async fn stop_relay(&self) -> Result<(), String> {
        self.control.stop_gracefully().await;
        // Stopped cleanly; madsim needs the node killed before it can be restarted.
        Handle::current().kill(self.relay);
        Ok(())
    }

    async fn start_relay(&self) -> Result<(), String> {
        Handle::current().restart(self.relay);
        Ok(())
    }

    fn cut_power(&self) -> DiskImage {
        // A relay that is down has no commit in flight: its files are what it left.
        let durable = self
            .control
            .observer()
            .is_none_or(|observer| observer.events().commits_durable);
        let image = DiskImage::capture(&self.database, durable)
            .unwrap_or_else(|error| panic!("power_loss: cannot read the database: {error}"));
        self.kill();
        image
    }

    fn upstream_count(&self) -> usize {
        self.upstreams.len()
    }

    fn partition(&self, hosts: &[usize], cut: bool) {
        let net = NetSim::current();
        for &host in hosts {
            let node = self.upstreams[host];
            if cut {
                net.clog_link(self.relay, node);
                net.clog_link(node, self.relay);
            } else {
                net.unclog_link(self.relay, node);
                net.unclog_link(node, self.relay);
            }
        }
    }

    fn upstream_plans(&self) -> &[Arc<upstream::HostPlan>] {
        &self.plans
    }

    fn stop_hosts(&self, hosts: &[usize]) {
        let handle = Handle::current();
        for &host in hosts {
            // Its tasks are dropped and its sockets closed: live connections drop, new ones
            // are refused.
            handle.kill(self.upstreams[host]);
        }
    }

    fn start_hosts(&self, hosts: &[usize]) {
        let handle = Handle::current();
        for &host in hosts {
            let id = self.upstreams[host];
            // A node built without an initial task comes back empty; its server is started
            // on it again, over the same plan (its events are a function of time).
            handle.restart(id);
            let node = handle
                .get_node(id)
                .expect("an upstream host's node outlives the world's faults");
            serve_host(&node, &self.plans[host], &self.sink, self.world_start);
        }
    }

    fn clog_relay(&self, clogged: bool) {
        let net = NetSim::current();
        if clogged {
            net.clog_node(self.relay);
        } else {
            net.unclog_node(self.relay);
        }
    }

    fn set_latency(&self, latency_ms: Between<u64>) {
        NetSim::current().update_config(|config| config.send_latency = send_latency(latency_ms));
    }

    fn switch_fault_points(&self, switches: &[(Fault, bool)]) {
        for &(point, failing) in switches {
            fault::set(point, failing);
        }
    }

    fn faults_injected(&self) -> u64 {
        fault::injected()
    }
}
