//! Real mode (`windtunnel run --real`, ordinary builds): a scenario's own actors
//! (`crate::actors`) on a real tokio runtime, over real loopback TCP, against the relay as
//! a separate process (the relay's own command line, [`process::RelayProgram`]) with real
//! time, real sockets and a real SQLite file, judged by the same oracles. Nothing is
//! deterministic here; the point is to show that what the tunnel predicts is what the relay
//! does on a real network.
//!
//! Layout: the relay on `127.0.0.1:<free port>`, configured by the scenario's `[relay]`
//! table written to a file beside its database; upstream host `i` on its own loopback
//! address (the plan's `172.16.a.b` becomes `127.16.a.b`, all on one port found free for the
//! run, so real runs side by side — parallel tests — do not collide)
//! and named by that address in the relay's host table (no DNS); every other actor dials
//! from `127.0.0.1`. A loaded host table is laid out the same way, in file order: its
//! dead hosts refuse (nothing listens), or have a name that never resolves (under
//! `.invalid`), or are black holes ([`on_loopback`]). The monitor reads the relay's
//! accounting from `/metrics` once a second ([`scrape`]), the same numbers an observer
//! gives in the simulated worlds, and the end of the run its host table from `/hosts`.
//! Consumers time deliveries against when each host sent them, as in the madsim world. A
//! graceful restart is SIGTERM (the relay drains) and a new process; `kill_relay` is
//! SIGKILL.
//!
//! A black box (`run --real --relay-cmd '<command>'`, [`RelayProgram::BlackBox`]) is any
//! relay that speaks atproto, started by the user's command and known only through the
//! protocol: each upstream host listens on 127.0.0.1 at a port of its own and is named
//! `localhost:<port>` (the form relays accept for a development host), the host table is
//! seeded with a `requestCrawl` per host once the relay answers `/xrpc/_health` (which the
//! prober asks too), the consumers read `subscribeRepos`, and nothing is read from the
//! relay's `/metrics`, `/hosts` or database: its log is audited by reading it back from
//! cursor 0, the oracles that need its insides are not judged, and `no_lost_events` only
//! in part ([`black_box`]).
//!
//! What a real loopback cannot do, its table ([`crate::scenario::REAL`]) refuses: network
//! faults (partition, clog, latency), the relay's fault points and power loss (simulation
//! builds only), turmoil's accept-queue size and the hostile cast. The faults it plays,
//! stopping and starting the relay process, are the one fault player's
//! ([`crate::worlds::faults`]), through [`RealWorld`].

pub mod black_box;
pub mod process;
pub mod scrape;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relay::rt::time::{now, sleep, sleep_until};
use relay::upstream::egress::Cidr;
use tokio::sync::{Mutex, Notify};
use tokio::task::{JoinError, JoinSet};

use crate::actors::relay_host::{self, RelayDatabase, SAMPLE_PERIOD};
use crate::actors::upstream::DeadHost;
use crate::actors::{cast, rng, upstream, TraceSink, WorldClock};
use crate::logs::LogSettings;
use crate::scenario::{Scenario, Supports, REAL};
use crate::trace::Event;
use crate::worlds::faults::FaultPlayer;
use crate::worlds::orchestrator::orchestrator;
use crate::worlds::{on_fresh_thread, Engine, Reached, RelayPlacement, SeedRun, Unjudged, World};
use black_box::{
    audit_from_outside, black_box_scenario, free_ports, on_loopback_port, request_crawls,
};
use process::{Placement, ProcessUsage, RelayProcess, RelayProgram};

/// How long the relay gets to release the connections of the clients stopped at the end.
const CLIENTS_GONE_PAUSE: Duration = Duration::from_millis(100);
/// Time a stopping relay gets beyond its own shutdown drain, shutdown grace and drain timeout.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Real mode as an engine: `run --real`, with the program that runs the relay.
#[derive(Clone, Debug)]
pub struct Real {
    /// The relay's program.
    pub relay: RelayProgram,
}

impl Engine for Real {
    fn name(&self) -> &'static str {
        "real"
    }

    fn deterministic(&self) -> bool {
        false
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        run(scenario, seed, logs, &self.relay)
    }
}

/// Run `scenario` for real once, with `seed` for the actors' choices and the relay run by
/// `relay`, and judge it (a black box: as [`black_box_scenario`] adapts it). The relay
/// process's output is appended to the run's logs.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    logs: Option<&LogSettings>,
    relay: &RelayProgram,
) -> SeedRun {
    let relay = relay.clone();
    let mut scenario = scenario.clone();
    if relay.is_black_box() {
        black_box_scenario(&mut scenario);
    }
    on_fresh_thread("real", &scenario, seed, logs, move |scenario, seed| {
        run_on_this_thread(scenario, seed, &relay)
    })
}

fn run_on_this_thread(scenario: &Scenario, seed: u64, program: &RelayProgram) -> Unjudged {
    rng::seed(seed);
    let files = RunFiles::create();
    let actors_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build the actors' runtime");
    let sink = actors_runtime.block_on(async { TraceSink::new(WorldClock::Since(now())) });
    let outcome = actors_runtime.block_on(world(scenario.clone(), sink.clone(), &files, program));
    // The actors' tasks end (their sockets close) before the files go.
    drop(actors_runtime);
    let relay_output = std::fs::read_to_string(&files.relay_output).unwrap_or_default();
    Unjudged {
        trace: sink.take(),
        failure: outcome.err(),
        logs: Some(format!("# relay process output\n{relay_output}")),
        reached: Reached::default(),
    }
}

/// The files of one real run: the relay's database, its configuration, its output and a
/// black box's own directory; all removed on drop.
struct RunFiles {
    database: RelayDatabase,
    relay_config: PathBuf,
    relay_output: PathBuf,
    relay_dir: PathBuf,
}

impl RunFiles {
    fn create() -> Self {
        let database = RelayDatabase::create();
        let beside = |suffix: &str| PathBuf::from(format!("{}{suffix}", database.path.display()));
        let files = Self {
            relay_config: beside(".relay.toml"),
            relay_output: beside(".relay.log"),
            relay_dir: beside(".relay"),
            database,
        };
        files.remove_own();
        let _ = std::fs::create_dir_all(&files.relay_dir);
        files
    }

    fn remove_own(&self) {
        let _ = std::fs::remove_file(&self.relay_config);
        let _ = std::fs::remove_file(&self.relay_output);
        let _ = std::fs::remove_dir_all(&self.relay_dir);
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        self.remove_own();
    }
}

/// Open files this process holds per upstream host that listens: its listener and the
/// relay's connection to it.
const FILES_PER_LISTENING_HOST: u64 = 2;
/// Open files this process holds besides the upstream hosts': the clients' sockets, the
/// runtime's, the relay's database and output files, standard streams.
const FILES_BESIDES_HOSTS: u64 = 1_024;

/// Raise this process's soft open-file limit (`RLIMIT_NOFILE`) to its hard limit (the relay
/// process inherits it, and raises its own as far as it needs): a 3,208-host table holds
/// ~6,000 loopback sockets here and ~3,000 in the relay, and the usual soft limit is 1,024.
/// A hard limit below what `listening_hosts` upstream hosts need fails the run, saying so,
/// rather than leaving hosts that cannot bind.
fn raise_open_file_limit(listening_hosts: usize) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = (listening_hosts as u64)
        .saturating_mul(FILES_PER_LISTENING_HOST)
        .saturating_add(FILES_BESIDES_HOSTS);
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|current| current < target) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    match getrlimit(Resource::Nofile).current {
        Some(allowed) if allowed < needed => Err(format!(
            "real mode needs about {needed} open files for {listening_hosts} listening upstream \
             hosts, and this process may open only {allowed} (RLIMIT_NOFILE, hard limit {}): \
             raise the hard limit (`ulimit -Hn`) or play fewer hosts",
            limit
                .maximum
                .map_or_else(|| "unlimited".to_owned(), |hard| hard.to_string())
        )),
        _ => Ok(()),
    }
}

/// Host `plan` on loopback: the plan's `172.16.a.b` becomes `127.16.a.b`, and the host is
/// named by that address (the relay resolves an IP literal without asking DNS), except a
/// host whose name must not resolve: it keeps its name under `.invalid`, which never
/// resolves (RFC 6761). The mapping follows the plan, so a loaded table's hosts get their
/// addresses in file order.
fn on_loopback(plan: upstream::HostPlan) -> upstream::HostPlan {
    let [_, _, a, b] = plan.ip.octets();
    let ip = Ipv4Addr::new(127, 16, a, b);
    let hostname = match plan.dead {
        Some(DeadHost::Unresolved) => format!("{}.invalid", plan.hostname),
        _ => ip.to_string(),
    };
    upstream::HostPlan {
        hostname,
        ip,
        ..plan
    }
}

/// The loopback block every upstream host listens in, each on its own address (the relay's
/// egress rule refuses loopback unless its allowlist names it).
const HOST_NETWORK: Cidr = Cidr::V4(Ipv4Addr::new(127, 16, 0, 0), 16);

/// A port free on loopback address `ip` (bound and released; the run binds it next). Another
/// run holding a port on `ip` is never given the same one.
pub(super) fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| format!("cannot find a free port on {ip}: {error}"))
}

/// The relay's incarnations, one process at a time.
struct RelayNode {
    program: RelayProgram,
    config: PathBuf,
    dir: PathBuf,
    output: PathBuf,
    addr: SocketAddr,
    stop_grace: Duration,
    running: Option<RelayProcess>,
    /// Processes started.
    incarnations: u32,
    /// What the incarnations used, each read just before it stopped: the highest peak RSS
    /// and the sum of CPU times.
    usage: ProcessUsage,
}

impl RelayNode {
    /// Start an incarnation and wait until it serves.
    async fn start(&mut self) -> Result<(), String> {
        let placement = Placement {
            addr: self.addr,
            config: &self.config,
            dir: &self.dir,
        };
        let mut process = RelayProcess::start(&self.program, placement, &self.output)?;
        self.incarnations += 1;
        process
            .wait_until_serving(self.addr, self.program.liveness_path())
            .await?;
        self.running = Some(process);
        Ok(())
    }

    /// Stop the running incarnation: gracefully (SIGTERM) or not (SIGKILL). A relay that
    /// had already exited on its own, or that answers SIGTERM with a failing exit, fails the
    /// run; one that outlives its grace period is killed, with a warning.
    async fn stop(&mut self, graceful: bool) -> Result<(), String> {
        let Some(mut process) = self.running.take() else {
            return Ok(());
        };
        if let Some(status) = process.exit_status() {
            return Err(process.failure(&format!("exited on its own ({status})")));
        }
        if let Some(usage) = process.usage() {
            self.usage.peak_rss_bytes = self.usage.peak_rss_bytes.max(usage.peak_rss_bytes);
            self.usage.cpu_ticks += usage.cpu_ticks;
        }
        if !graceful {
            return process.kill().await;
        }
        match process.stop(self.stop_grace).await? {
            Some(status) if !status.success() => {
                Err(process.failure(&format!("answered SIGTERM with {status}")))
            }
            Some(_) => Ok(()),
            None => {
                tracing::warn!(
                    pid = process.pid(),
                    "the relay did not exit within its grace period and was killed"
                );
                Ok(())
            }
        }
    }
}

/// The real world: host table, relay, upstreams, actors, timeline.
async fn world(
    scenario: Scenario,
    sink: TraceSink,
    files: &RunFiles,
    program: &RelayProgram,
) -> Result<(), String> {
    let world_start = now();
    let black_box = program.is_black_box();
    let relay_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
    // Our relay dials every upstream host on this port, each on its own address; a black
    // box, each on 127.0.0.1 at a port of its own.
    let upstream_port = free_port(Ipv4Addr::new(127, 16, 0, 1))?;
    let generated = match &scenario.upstreams {
        Some(spec) => upstream::plan(spec, scenario.relay.upstream.max_frame_bytes),
        None => Vec::new(),
    };
    let own_ports = if black_box {
        free_ports(generated.len())?
    } else {
        Vec::new()
    };
    let placed: Vec<(Arc<upstream::HostPlan>, SocketAddr)> = generated
        .into_iter()
        .enumerate()
        .map(|(index, plan)| match own_ports.get(index) {
            Some(&port) => (
                Arc::new(on_loopback_port(plan, port)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ),
            None => {
                let plan = on_loopback(plan);
                let listen = SocketAddr::from((plan.ip, upstream_port));
                (Arc::new(plan), listen)
            }
        })
        .collect();
    let plans: Vec<Arc<upstream::HostPlan>> =
        placed.iter().map(|(plan, _)| Arc::clone(plan)).collect();
    let listening =
        |plan: &Arc<upstream::HostPlan>| matches!(plan.dead, None | Some(DeadHost::BlackHole));
    raise_open_file_limit(plans.iter().filter(|plan| listening(plan)).count())?;
    let database = &files.database.path;
    if let Some(spec) = &scenario.upstreams {
        if black_box {
            relay_host::record_upstream_world(spec, &plans, &sink);
        } else {
            relay_host::publish_host_table(database, spec, &plans, &sink)
                .map_err(|error| format!("cannot write the relay's host table: {error}"))?;
        }
    }
    // A live host serves; a black hole accepts and never answers, as in the madsim world;
    // nothing listens on a refusing host's address, and an unresolved host has none.
    for (plan, listen) in placed.iter().filter(|(plan, _)| listening(plan)) {
        let listen = *listen;
        match plan.dead {
            None => tokio::spawn(upstream::serve(
                Arc::clone(plan),
                listen,
                sink.clone(),
                world_start,
            )),
            Some(_) => tokio::spawn(upstream::black_hole(plan.hostname.clone(), listen)),
        };
    }
    let send_times = relay_host::send_times(&scenario, &plans);

    let relay_config = RelayPlacement {
        listen: relay_addr,
        database,
        upstream_port,
        upstream_network: HOST_NETWORK,
        without_date_header: false,
    }
    .config(&scenario);
    // A black box is configured by its own command.
    if !black_box {
        std::fs::write(&files.relay_config, relay_config.to_toml()).map_err(|error| {
            format!(
                "cannot write the relay's configuration to {}: {error}",
                files.relay_config.display()
            )
        })?;
    }
    let server = &relay_config.server;
    let mut relay = RelayNode {
        program: program.clone(),
        config: files.relay_config.clone(),
        dir: files.relay_dir.clone(),
        output: files.relay_output.clone(),
        addr: relay_addr,
        stop_grace: Duration::from_millis(
            server.shutdown_drain_ms + server.shutdown_grace_ms + server.drain_timeout_ms,
        ) + STOP_MARGIN,
        running: None,
        incarnations: 0,
        usage: ProcessUsage::default(),
    };
    relay.start().await?;
    if black_box {
        request_crawls(relay_addr, &plans).await?;
    }
    sink.phase("relay_ready");
    // A black box's insides are not read: no monitor.
    let stop_monitor = Arc::new(Notify::new());
    let monitor_task = (!black_box)
        .then(|| tokio::spawn(monitor(sink.clone(), relay_addr, Arc::clone(&stop_monitor))));

    let world = Arc::new(RealWorld {
        relay: Mutex::new(relay),
    });
    // Liveness restarts, when the prober asks for them: ended with the timeline (a restart
    // cut short there leaves the relay as it was, and the end-of-run reading says so).
    let (restart, orchestrator) = orchestrator(&world, &scenario, &sink);
    let mut orchestrating = JoinSet::new();
    orchestrating.extend(orchestrator);

    // The relay's clients; stopped before the end-of-run reading.
    let (cast, tallies) = cast::clients(&scenario, send_times.clone(), restart);
    let mut clients = JoinSet::new();
    for client in &cast {
        for _ in 0..client.loops {
            clients.spawn(client.run(relay_addr, sink.clone(), world_start));
        }
    }

    let mut faults = JoinSet::new();
    let player = FaultPlayer::new(Arc::clone(&world), &scenario, sink.clone(), world_start);
    for play in player.plays(&scenario.faults) {
        faults.spawn(play);
    }
    let timeline = async {
        if !scenario.churners.is_empty() {
            sleep_until(world_start + Duration::from_secs(scenario.churn_end_s())).await;
            sink.phase("churn_stopped");
        }
        sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
    };
    tokio::select! {
        biased;
        failure = first_failure(&mut faults) => return Err(failure),
        failure = first_failure(&mut orchestrating) => return Err(failure),
        () = timeline => {}
    }
    orchestrating.shutdown().await;
    // A fault still bringing the relay back ends first.
    while let Some(played) = faults.join_next().await {
        fault_outcome(played)?;
    }
    stop_monitor.notify_one();
    if let Some(monitor_task) = monitor_task {
        monitor_task
            .await
            .map_err(|error| format!("the monitor failed: {error}"))??;
    }
    // The end-of-run reading: a scrape is not instantaneous like an observer's reading, so
    // the clients (a probe due at this very second, a churner mid-request) stop first and
    // the relay gets a moment to release their connections; a connection it still holds
    // after that is counted.
    clients.shutdown().await;
    sleep(CLIENTS_GONE_PAUSE).await;
    let hosts = if black_box {
        if scenario.upstreams.is_some() {
            let audited_until = relay_host::audited_until(&scenario);
            let audit = audit_from_outside(relay_addr, &plans, audited_until).await?;
            sink.record("world", audit);
        }
        Vec::new()
    } else {
        record_scrape(&sink, relay_addr).await?;
        scrape::host_endings(relay_addr)
            .await
            .transpose()?
            .unwrap_or_default()
    };
    relay_host::finish(
        &scenario,
        &sink,
        (!black_box).then_some(database.as_path()),
        &plans,
        send_times.as_deref(),
        &hosts,
        tallies,
    );
    sink.phase("end");
    let mut relay = world.relay.lock().await;
    relay.stop(true).await?;
    sink.record(
        "world",
        Event::RelayProcess {
            incarnations: relay.incarnations,
            peak_rss_bytes: relay.usage.peak_rss_bytes,
            cpu_ms: relay.usage.cpu_ticks * 1_000 / ProcessUsage::TICKS_PER_SECOND,
        },
    );
    Ok(())
}

/// What real mode's faults change: the relay process, stopped (SIGTERM or SIGKILL) and
/// started again.
struct RealWorld {
    relay: Mutex<RelayNode>,
}

impl World for RealWorld {
    const SUPPORTS: &'static Supports = &REAL;

    async fn relay_up(&self) -> bool {
        self.relay.lock().await.running.is_some()
    }

    async fn kill_relay(&self) -> Result<(), String> {
        self.relay.lock().await.stop(false).await
    }

    async fn stop_relay(&self) -> Result<(), String> {
        self.relay.lock().await.stop(true).await
    }

    async fn start_relay(&self) -> Result<(), String> {
        self.relay.lock().await.start().await
    }
}

/// What a fault's task came to: its own failure, or its panic.
fn fault_outcome(played: Result<Result<(), String>, JoinError>) -> Result<(), String> {
    played.map_err(|error| format!("a fault failed: {error}"))?
}

/// The first failure among the faults' tasks; pending until there is one (forever when
/// none fails).
async fn first_failure(faults: &mut JoinSet<Result<(), String>>) -> String {
    while let Some(played) = faults.join_next().await {
        if let Err(failure) = fault_outcome(played) {
            return failure;
        }
    }
    std::future::pending().await
}

/// Scrape the relay every [`SAMPLE_PERIOD`] into the trace until `stop` is notified.
async fn monitor(sink: TraceSink, relay_addr: SocketAddr, stop: Arc<Notify>) -> Result<(), String> {
    loop {
        record_scrape(&sink, relay_addr).await?;
        tokio::select! {
            biased;
            () = stop.notified() => return Ok(()),
            () = sleep(SAMPLE_PERIOD) => {}
        }
    }
}

/// Scrape the relay once into the trace (nothing while it is down or refuses); an
/// exposition the harness cannot read ends the run.
async fn record_scrape(sink: &TraceSink, relay_addr: SocketAddr) -> Result<(), String> {
    if let Some(reading) = scrape::scrape(relay_addr).await {
        sink.record("monitor", reading?.sample());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_raised_to_the_hard_limit_and_a_larger_need_is_named() {
        use rustix::process::{getrlimit, Resource};
        let hard = getrlimit(Resource::Nofile).maximum;
        assert_eq!(raise_open_file_limit(100), Ok(()));
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
        if let Some(hard) = hard {
            let hosts = hard as usize;
            let error = raise_open_file_limit(hosts).unwrap_err();
            assert!(
                error.starts_with(&format!(
                    "real mode needs about {} open files for {hosts} listening upstream hosts",
                    hard * 2 + 1_024
                )),
                "{error}"
            );
            assert!(error.contains(&format!("hard limit {hard}")), "{error}");
        }
    }

    #[test]
    fn table_hosts_get_loopback_addresses_and_unresolvable_names() {
        let plan = |dead| upstream::HostPlan {
            index: 0,
            hostname: "pds.example.social".into(),
            ip: Ipv4Addr::new(172, 16, 12, 209),
            dead,
            handshake_latency: Duration::ZERO,
            schedule: crate::actors::repo::Schedule::regular(Duration::from_secs(1)),
            flap: None,
            body_pad_bytes: 0,
            hostile: None,
            frame_limit_bytes: 1,
            link_delay: Arc::default(),
            repos: std::sync::OnceLock::new(),
        };
        for dead in [None, Some(DeadHost::Refused), Some(DeadHost::BlackHole)] {
            let placed = on_loopback(plan(dead));
            assert_eq!(placed.ip, Ipv4Addr::new(127, 16, 12, 209));
            assert_eq!(placed.hostname, "127.16.12.209");
        }
        let unresolved = on_loopback(plan(Some(DeadHost::Unresolved)));
        assert_eq!(unresolved.hostname, "pds.example.social.invalid");
        assert!(HOST_NETWORK.contains(std::net::IpAddr::V4(unresolved.ip)));
    }
}
