//! The simulated world (madsim only): one relay node running the unmodified relay, a
//! prober node, churner nodes, and a monitor that samples the relay's accounting.
//!
//! Node layout: relay `10.0.0.1:8080`; prober `10.0.1.1`; churner group `g`, node `n` at
//! `10.(g+1).(n / 250).(n % 250 + 1)` (one host per node, as in production). All randomness
//! comes from madsim's seeded RNG; all time is simulated.

mod actors;
mod client;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use relay::rt::time::{now, sleep, sleep_until, Instant};
use relay::{Observer, Relay};

use crate::oracle::{self, Verdict, Violation};
use crate::scenario::Scenario;
use crate::trace::{Event, Trace};

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
pub fn run(scenario: &Scenario, seed: u64) -> RunOutcome {
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
    let result = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            let sink = TraceSink::new();
            *world_sink_slot.lock().expect("slot lock") = Some(sink.clone());
            world(world_scenario, sink).await;
        })
    }));
    drop(runtime);
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

async fn world(scenario: Scenario, sink: TraceSink) {
    let handle = Handle::current();
    let world_start = now();
    let relay_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let relay_addr = SocketAddr::new(relay_ip, RELAY_PORT);
    let observer_slot: Arc<Mutex<Option<Observer>>> = Arc::default();

    let mut relay_config = scenario.relay.clone();
    relay_config.server.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RELAY_PORT);
    let relay_observer_slot = Arc::clone(&observer_slot);
    handle
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

async fn monitor(sink: TraceSink, observer: Observer) {
    loop {
        sleep(SAMPLE_PERIOD).await;
        sample(&sink, &observer);
    }
}

fn sample(sink: &TraceSink, observer: &Observer) {
    let stats = observer.connections();
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
        },
    );
}
