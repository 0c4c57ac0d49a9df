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

mod abuser;
mod actors;
pub mod bare;
mod client;
mod consumer;
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
use crate::scenario::{Between, ConsumerKind, FaultSpec, NetworkSpec, Scenario};
use crate::trace::{Event, EventsSample, HttpSample, MemorySample, Trace, UpstreamSample};

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
    quiet_injected_panics();
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

/// The WebSocket settings the world's upstream hosts and consumers use: the relay's own
/// small read buffer (`relay::upstream::WS_READ_BUFFER_BYTES`), so the tunnel's wall
/// time goes to the relay and not to zero-filling 128 KiB buffers on the actors' side.
fn actor_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(relay::upstream::WS_READ_BUFFER_BYTES)
}

/// Keep the panics raised by the relay's `HandlerPanic` fault point off stderr: they are
/// expected, the relay contains each one (a 500 in the trace) and logs it with method and
/// path (in the run's captured logs). Every other panic still reaches the previous hook.
fn quiet_injected_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<&str>()
                == Some(&relay::rt::fault::INJECTED_HANDLER_PANIC);
            if !injected {
                previous(info);
            }
        }));
    });
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> RunOutcome {
    #[allow(clippy::disallowed_methods)] // wall time of the harness itself, never of the world
    let wall_start = std::time::Instant::now();
    relay::rt::fault::clear();
    let mut config = madsim::Config::default();
    config.net.send_latency = send_latency(scenario.network.latency_ms);
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
        let path = database_dir().join(format!("windtunnel-{}-{run}.sqlite", std::process::id()));
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

/// Where run databases go: `$WINDTUNNEL_DB_DIR` if set; else `/dev/shm` (memory-backed)
/// when it is mounted with at least [`SHM_ROOM_MIN_BYTES`] (containers often give it only
/// 64 MiB, and parallel seeds each hold a database); else the system temp dir. Every
/// commit writes WAL frames with real syscalls; on a disk filesystem those writes were a
/// tenth of the cold-start tunnel's CPU. The relay neither knows nor cares.
fn database_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WINDTUNNEL_DB_DIR") {
        return PathBuf::from(dir);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if shm_has_room(&mounts) {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// The least room `/dev/shm` must have to hold run databases.
const SHM_ROOM_MIN_BYTES: u64 = 1 << 30;

/// Whether `/proc/mounts` text shows a tmpfs on `/dev/shm` of at least
/// [`SHM_ROOM_MIN_BYTES`] (no `size=` option means the kernel's default, half the RAM).
fn shm_has_room(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "/dev/shm", "tmpfs", options, ..] = fields.as_slice() else {
            return false;
        };
        options
            .split(',')
            .find_map(|option| option.strip_prefix("size="))
            .is_none_or(|size| {
                let (digits, unit) = size.split_at(
                    size.len() - size.trim_start_matches(|c: char| c.is_ascii_digit()).len(),
                );
                let scale: u64 = match unit {
                    "" => 1,
                    "k" => 1 << 10,
                    "m" => 1 << 20,
                    "g" => 1 << 30,
                    _ => return false,
                };
                digits
                    .parse::<u64>()
                    .is_ok_and(|value| value.saturating_mul(scale) >= SHM_ROOM_MIN_BYTES)
            })
    })
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
    let control = Arc::new(RelayControl::default());

    let (upstream_nodes, plans) = match &scenario.upstreams {
        Some(spec) => start_upstreams(&handle, spec, &database, &sink, world_start),
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
    ))];
    for fault in scenario.faults.clone() {
        world_tasks.push(madsim::task::spawn(inject(
            fault,
            scenario.network.clone(),
            relay_node.id(),
            upstream_nodes.clone(),
            Arc::clone(&control),
            sink.clone(),
            world_start,
        )));
    }

    if let Some(prober) = scenario.prober.clone() {
        let node = handle
            .create_node()
            .name("prober")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        nodes.push(node.id());
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
            nodes.push(node.id());
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
    for (group, spec) in scenario.callers.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("caller-{group}-{index}");
            let ip = Ipv4Addr::new(10, 210 + group as u8, 0, index as u8 + 1);
            let node = handle.create_node().name(&name).ip(IpAddr::V4(ip)).build();
            nodes.push(node.id());
            node.spawn(actors::caller(spec.clone(), relay_addr, sink.clone(), name));
        }
    }
    for (group, spec) in scenario.abusers.iter().enumerate() {
        for index in 0..spec.nodes {
            let name = format!("abuser-{group}-{index}");
            let ip = Ipv4Addr::new(10, 180 + group as u8, 0, index as u8 + 1);
            let node = handle.create_node().name(&name).ip(IpAddr::V4(ip)).build();
            nodes.push(node.id());
            node.spawn(abuser::run(
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
            let ordinal = tallies.len();
            let ip = Ipv4Addr::new(10, 200, (ordinal / 250) as u8, (ordinal % 250) as u8 + 1);
            let node = handle.create_node().name(&name).ip(IpAddr::V4(ip)).build();
            nodes.push(node.id());
            let tally = consumer::SharedTally::default();
            node.spawn(consumer::run(
                spec.clone(),
                name.clone(),
                relay_addr,
                sink.clone(),
                Arc::clone(&tally),
                world_start,
            ));
            tallies.push((name, spec.kind == ConsumerKind::Slow, tally));
        }
    }
    if !scenario.churners.is_empty() {
        sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
        sink.phase("churn_stopped");
    }
    sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
    sample(&sink, &control);
    let lag_s = scenario
        .oracles
        .no_lost_events
        .as_ref()
        .map_or(0, |spec| spec.lag_s);
    let emitted_by = Duration::from_secs(scenario.duration_s.saturating_sub(lag_s));
    if scenario.upstreams.is_some() {
        sink.record("world", audit(&database, &plans, emitted_by));
    }
    for (name, slow, tally) in tallies {
        let tally = tally.lock().expect("tally lock").clone();
        sink.record(
            &name,
            Event::ConsumerFinal {
                consumer: name.clone(),
                slow,
                last_seq: tally.last_seq,
                frames: tally.frames,
                sessions: tally.sessions,
                too_slow: tally.too_slow,
                max_gap_ms: tally.max_gap_us / 1_000,
            },
        );
    }
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
    database: &Path,
    sink: &TraceSink,
    world_start: Instant,
) -> (Vec<NodeHandle>, Vec<Arc<upstream::HostPlan>>) {
    let plans: Vec<Arc<upstream::HostPlan>> =
        upstream::plan(spec).into_iter().map(Arc::new).collect();
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
    let nodes = plans
        .iter()
        .map(|plan| {
            let node = host_node(handle, &net, plan);
            if !plan.dead {
                node.spawn(upstream::serve(Arc::clone(plan), sink.clone(), world_start));
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

/// The world's handle on the relay node across restarts.
#[derive(Default)]
struct RelayControl {
    /// The running incarnation's observer; `None` while the relay is down.
    observer: Mutex<Option<Observer>>,
    /// Wakes the running incarnation's shutdown future.
    stop: tokio::sync::Notify,
    /// Incarnations that have finished their graceful shutdown.
    stopped: AtomicU64,
}

impl RelayControl {
    fn observer(&self) -> Option<Observer> {
        self.observer.lock().expect("observer lock").clone()
    }

    fn set_observer(&self, observer: Option<Observer>) {
        *self.observer.lock().expect("observer lock") = observer;
    }
}

/// One incarnation of the relay node: bind (retrying while the store refuses, as an
/// orchestrator would restart it), publish the observer, serve until asked to stop.
async fn run_relay(config: relay::config::Config, control: Arc<RelayControl>) {
    let relay = loop {
        match Relay::bind(config.clone()).await {
            Ok(relay) => break relay,
            Err(error) => {
                tracing::warn!(%error, "relay failed to start; retrying in 1s");
                sleep(Duration::from_secs(1)).await;
            }
        }
    };
    control.set_observer(Some(relay.observer()));
    let stop = Arc::clone(&control);
    relay.run(async move { stop.stop.notified().await }).await;
    control.set_observer(None);
    control.stopped.fetch_add(1, Ordering::SeqCst);
}

/// Read the relay's event log from its database file: holes per host, and steady hosts
/// whose log ends before what they had emitted by `emitted_by`.
fn audit(database: &Path, plans: &[Arc<upstream::HostPlan>], emitted_by: Duration) -> Event {
    let empty = Event::StoreAudit {
        events: 0,
        oldest_seq: 0,
        head_seq: 0,
        hosts_with_gaps: 0,
        hosts_behind: 0,
        first_behind: None,
    };
    let Ok(connection) = rusqlite::Connection::open(database) else {
        return empty;
    };
    let bounds = connection.query_row(
        "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events",
        [],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        },
    );
    let Ok((events, oldest, head)) = bounds else {
        return empty;
    };
    let mut per_host: std::collections::BTreeMap<String, (i64, i64, i64)> = Default::default();
    if let Ok(mut query) = connection.prepare(
        "SELECT h.hostname, COUNT(e.seq), COALESCE(MIN(e.upstream_seq), 0), COALESCE(MAX(e.upstream_seq), 0) \
         FROM hosts h LEFT JOIN events e ON e.host_id = h.id GROUP BY h.id",
    ) {
        if let Ok(rows) = query.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)))
        }) {
            per_host.extend(rows.flatten());
        }
    }
    let hosts_with_gaps = per_host
        .values()
        .filter(|(count, low, high)| *count > 0 && high - low + 1 != *count)
        .count() as u32;
    let behind: Vec<&str> = plans
        .iter()
        .filter(|plan| !plan.dead && plan.flap.is_none())
        .filter(|plan| {
            let emitted = (emitted_by.as_micros() / plan.event_interval.as_micros().max(1)) as i64;
            per_host
                .get(&plan.hostname)
                .is_none_or(|(_, _, high)| *high < emitted)
        })
        .map(|plan| plan.hostname.as_str())
        .collect();
    Event::StoreAudit {
        events: events as u64,
        oldest_seq: oldest as u64,
        head_seq: head as u64,
        hosts_with_gaps,
        hosts_behind: behind.len() as u32,
        first_behind: behind.first().map(|name| (*name).to_owned()),
    }
}

/// madsim's per-packet latency range for an inclusive `[min, max]` in milliseconds.
fn send_latency(range_ms: Between<u64>) -> std::ops::Range<Duration> {
    let range = range_ms.map(Duration::from_millis);
    range.min..range.max + Duration::from_nanos(1)
}

/// Play one fault of the timeline.
async fn inject(
    fault: FaultSpec,
    network: NetworkSpec,
    relay: madsim::task::NodeId,
    upstreams: Vec<NodeHandle>,
    control: Arc<RelayControl>,
    sink: TraceSink,
    world_start: Instant,
) {
    let record = |kind: &str, hosts: usize, active: bool| {
        sink.record(
            "world",
            Event::Fault {
                kind: kind.to_owned(),
                hosts: hosts as u32,
                active,
            },
        );
    };
    let handle = Handle::current();
    match fault {
        FaultSpec::Partition {
            at_s,
            duration_s,
            hosts_fraction,
        } => {
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
            record("partition", count, true);
            sleep(Duration::from_secs(duration_s)).await;
            for node in &cut {
                net.unclog_link(relay, node.id());
                net.unclog_link(node.id(), relay);
            }
            record("partition", count, false);
        }
        FaultSpec::Clog { at_s, duration_s } => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let net = NetSim::current();
            net.clog_node(relay);
            record("clog", 0, true);
            sleep(Duration::from_secs(duration_s)).await;
            net.unclog_node(relay);
            record("clog", 0, false);
        }
        FaultSpec::Latency {
            at_s,
            duration_s,
            latency_ms,
        } => {
            let set_latency = |range_ms: Between<u64>| {
                NetSim::current()
                    .update_config(|config| config.send_latency = send_latency(range_ms));
            };
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            set_latency(latency_ms);
            record("latency", 0, true);
            sleep(Duration::from_secs(duration_s)).await;
            set_latency(network.latency_ms);
            record("latency", 0, false);
        }
        FaultSpec::KillRelay { at_s, down_s } => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            control.set_observer(None);
            handle.kill(relay);
            record("kill_relay", 0, true);
            sleep(Duration::from_secs(down_s)).await;
            handle.restart(relay);
            record("kill_relay", 0, false);
        }
        FaultSpec::RestartRelay { at_s, down_s } => {
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            let stopped_before = control.stopped.load(Ordering::SeqCst);
            record("restart_relay", 0, true);
            control.stop.notify_waiters();
            while control.stopped.load(Ordering::SeqCst) == stopped_before {
                sleep(Duration::from_millis(10)).await;
            }
            // Stopped cleanly; madsim needs the node killed before it can be restarted.
            handle.kill(relay);
            sleep(Duration::from_secs(down_s)).await;
            handle.restart(relay);
            record("restart_relay", 0, false);
        }
        FaultSpec::HandlerPanic { at_s, duration_s }
        | FaultSpec::HandlerStall { at_s, duration_s } => {
            use relay::rt::fault::{self, Fault};
            let kind = fault.kind();
            let point = match fault {
                FaultSpec::HandlerPanic { .. } => Fault::HandlerPanic,
                _ => Fault::HandlerStall,
            };
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            fault::set(point, true);
            record(kind, 0, true);
            sleep(Duration::from_secs(duration_s)).await;
            fault::set(point, false);
            record(kind, 0, false);
        }
        FaultSpec::StoreFault {
            at_s,
            duration_s,
            reads,
        } => {
            use relay::rt::fault::{self, Fault};
            sleep_until(world_start + Duration::from_secs(at_s)).await;
            fault::set(Fault::StoreWrite, true);
            fault::set(Fault::StoreRead, reads);
            record("store_fault", 0, true);
            sleep(Duration::from_secs(duration_s)).await;
            fault::set(Fault::StoreWrite, false);
            fault::set(Fault::StoreRead, false);
            record("store_fault", 0, false);
        }
    }
}

async fn monitor(sink: TraceSink, control: Arc<RelayControl>) {
    loop {
        sleep(SAMPLE_PERIOD).await;
        sample(&sink, &control);
    }
}

/// Record one sample of the running relay's accounting (nothing while it is down).
fn sample(sink: &TraceSink, control: &RelayControl) {
    use relay::upstream::HostPhase;
    let Some(observer) = control.observer() else {
        return;
    };
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
    let memory = observer.memory();
    let pipeline = observer.events();
    let events = EventsSample {
        head_seq: pipeline.head_seq,
        consumers: pipeline.consumers,
        consumers_kicked: pipeline.consumers_kicked_total,
        mailbox_high_water: pipeline.mailbox_high_water,
        store_healthy: pipeline.store_healthy,
    };
    let relay_tasks = relay::rt::tasks_alive();
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
            events,
            http: HttpSample {
                handlers_high_water: observer.dispatch().high_water,
            },
            memory: MemorySample {
                memory_held_bytes: memory.held_bytes,
                memory_high_water_bytes: memory.high_water_bytes,
                memory_shedding: memory.shedding,
                memory_shed_total: memory.shed_total,
                memory_kicked: memory.kicked_total,
            },
        },
    );
}

#[cfg(test)]
mod tests {
    use super::shm_has_room;

    #[test]
    fn shm_is_used_only_when_mounted_with_room() {
        let mounts = |line: &str| format!("proc /proc proc rw 0 0\n{line}\n");
        assert!(shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,relatime,size=24683652k 0 0"
        )));
        assert!(shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0"
        )));
        assert!(shm_has_room(&mounts("shm /dev/shm tmpfs rw,size=2g 0 0")));
        assert!(!shm_has_room(&mounts(
            "shm /dev/shm tmpfs rw,nosuid,size=65536k 0 0"
        )));
        assert!(!shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,size=50% 0 0"
        )));
        assert!(!shm_has_room(&mounts("/dev/vda /dev/shm ext4 rw 0 0")));
        assert!(!shm_has_room("tmpfs /run tmpfs rw 0 0\n"));
    }
}
