//! `cold_start_real`: the wind tunnel's cold-start scenario (`scenarios/cold_start_2800.toml`)
//! played for real — real sockets, the real relay binary, the machine's own scheduler — to
//! see how a restart with thousands of upstream hosts compares with what the tunnel
//! predicts (the tunnel charges declared CPU costs through `rt::cpu`; here every handshake,
//! frame and SQLite commit costs what it really costs).
//!
//! How:
//! - the scenario's `[upstreams]` are drawn from a seeded splitmix64 (`--seed`): handshake
//!   latency, event interval, flaky up/down windows, dead hosts. Each live host is a
//!   WebSocket server on its own loopback address (`127.10.x.y`, all at `--upstream-port`;
//!   Linux routes all of 127.0.0.0/8 to `lo`), behaving like the tunnel's upstream actor
//!   (`sim/src/world/upstream.rs`): event `n` exists from `n · event_interval` after the
//!   world started, a subscription with `?cursor=c` gets `c+1 ..` at once and then live
//!   events, a flaky host drops new connections and cuts live ones while down, a dead host
//!   has no listener (connections are refused). The host table holds the IP literals:
//!   only `requestCrawl` validates hostnames, the store and the workers dial any name;
//! - the relay runs as a child process (`target/release/relay serve`), so the upstream
//!   actors and the prober do not share its runtime, with the scenario's `[relay]` settings
//!   (`[relay.cpu]` is simulation-only and skipped) and its database pre-filled with
//!   [`relay::store::Store::add_hosts`];
//! - a prober does the scenario's `GET /_healthz` (initial delay, period, timeout), each
//!   probe on a fresh connection like an orchestrator's; a second, denser prober
//!   (`--dense-probe-ms`) samples the same endpoint more often, reported separately. Both
//!   and a `/metrics` scraper (once a second) run on a current-thread runtime of their own,
//!   apart from the upstream actors' runtime.
//!
//! At `--duration-s` the upstreams stop emitting, the relay gets 3 s to persist what it
//! has, then its peak RSS (`VmHWM`) and CPU time (utime + stime) are read from `/proc`, it is
//! stopped with SIGTERM, and its SQLite event log is compared with what the upstreams
//! sent. "Connected" is measured on both sides: the first completed subscription of each
//! live host as the upstream saw it (exact), and the relay's own
//! `relay_upstream_hosts{phase="connected"}` gauge (connected now, 1 s samples). Nothing
//! here asserts a speed; it measures and prints a short table.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use futures_util::SinkExt;
use relay::rt::time::{interval_at, now, sleep, sleep_until, timeout, Instant};
use relay::store::Store;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(
    about = "The cold-start scenario for real: N loopback WebSocket upstreams, the relay binary, a /_healthz prober"
)]
struct Args {
    /// Scenario whose `[upstreams]`, `[prober]` and `[relay]` sections are played.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/cold_start_2800.toml"))]
    scenario: PathBuf,
    /// Upstream hosts (default: the scenario's).
    #[arg(long)]
    hosts: Option<usize>,
    /// Seconds from the relay's start until the upstreams stop emitting and the run is measured.
    #[arg(long, default_value_t = 120)]
    duration_s: u64,
    /// Seed of the host table draw (handshake latency, event interval, flaky, dead).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Port every upstream listens on, each on its own loopback address.
    #[arg(long, default_value_t = 18080)]
    upstream_port: u16,
    /// The relay binary (default: `relay` in the directory above this example's, i.e.
    /// `target/release/relay`).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// A second, denser prober: one `GET /_healthz` every this many ms (0: off).
    #[arg(long, default_value_t = 250)]
    dense_probe_ms: u64,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 10)]
    progress_s: u64,
    /// Keep the relay's database and log afterwards (their paths are printed).
    #[arg(long)]
    keep: bool,
}

/// The parts of a wind-tunnel scenario this example plays (other sections are ignored).
#[derive(Debug, Deserialize)]
struct Scenario {
    name: String,
    /// Relay configuration overrides, `section.key = value` (passed as `--set`).
    #[serde(default)]
    relay: toml::Table,
    upstreams: UpstreamsSpec,
    #[serde(default)]
    prober: ProberSpec,
}

/// `[upstreams]`, with the tunnel's defaults (`sim/src/scenario.rs`).
#[derive(Debug, Deserialize)]
struct UpstreamsSpec {
    hosts: usize,
    #[serde(default = "default_handshake_latency_ms")]
    handshake_latency_ms: [u64; 2],
    #[serde(default = "default_event_interval_s")]
    event_interval_s: [u64; 2],
    #[serde(default)]
    flaky_fraction: f64,
    #[serde(default = "default_flaky_up_s")]
    flaky_up_s: [u64; 2],
    #[serde(default = "default_flaky_down_s")]
    flaky_down_s: [u64; 2],
    flaky_until_s: Option<u64>,
    #[serde(default)]
    dead_fraction: f64,
}

fn default_handshake_latency_ms() -> [u64; 2] {
    [20, 200]
}

fn default_event_interval_s() -> [u64; 2] {
    [5, 60]
}

fn default_flaky_up_s() -> [u64; 2] {
    [60, 300]
}

fn default_flaky_down_s() -> [u64; 2] {
    [20, 120]
}

/// `[prober]`, with the tunnel's defaults.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct ProberSpec {
    path: String,
    initial_delay_s: u64,
    period_s: u64,
    timeout_s: u64,
    failure_threshold: u32,
}

impl Default for ProberSpec {
    fn default() -> Self {
        Self {
            path: "/_healthz".to_owned(),
            initial_delay_s: 0,
            period_s: 10,
            timeout_s: 1,
            failure_threshold: 3,
        }
    }
}

/// The seeded generator for the host table (splitmix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// Uniform in `[min, max]` (inclusive).
    fn between(&mut self, [min, max]: [u64; 2]) -> u64 {
        min + self.next() % (max - min + 1)
    }
}

/// A flaky host's up/down rhythm (as in the tunnel's upstream actor).
#[derive(Clone, Debug)]
struct Flap {
    up: Duration,
    down: Duration,
    offset: Duration,
    until: Option<Duration>,
}

impl Flap {
    fn cycle(&self) -> Duration {
        self.up + self.down
    }

    fn position(&self, since_start: Duration) -> Duration {
        Duration::from_nanos(
            ((since_start + self.offset).as_nanos() % self.cycle().as_nanos()) as u64,
        )
    }

    fn is_down(&self, since_start: Duration) -> bool {
        self.until.is_none_or(|until| since_start < until) && self.position(since_start) >= self.up
    }

    fn next_down(&self, since_start: Duration) -> Option<Duration> {
        let position = self.position(since_start);
        let next = if position < self.up {
            since_start + (self.up - position)
        } else {
            since_start + (self.cycle() - position) + self.up
        };
        self.until.is_none_or(|until| next < until).then_some(next)
    }
}

/// One drawn host.
#[derive(Clone, Debug)]
struct HostPlan {
    /// Its loopback address, which is also its hostname in the relay's host table.
    ip: Ipv4Addr,
    dead: bool,
    handshake_latency: Duration,
    event_interval: Duration,
    flap: Option<Flap>,
}

/// Host `index`'s loopback address: 250 hosts per /24 from 127.10.0.1 on.
fn host_ip(index: usize) -> Ipv4Addr {
    let second = 10 + index / 62_500;
    Ipv4Addr::new(
        127,
        u8::try_from(second).expect("--hosts is bounded"),
        ((index % 62_500) / 250) as u8,
        (index % 250) as u8 + 1,
    )
}

fn plan(spec: &UpstreamsSpec, hosts: usize, seed: u64) -> Vec<HostPlan> {
    let mut rng = SplitMix64(seed);
    (0..hosts)
        .map(|index| {
            let dead = rng.chance(spec.dead_fraction);
            let flaky = !dead && rng.chance(spec.flaky_fraction);
            let handshake_latency = Duration::from_millis(rng.between(spec.handshake_latency_ms));
            let event_interval = Duration::from_secs(rng.between(spec.event_interval_s));
            let flap = flaky.then(|| {
                let up = Duration::from_secs(rng.between(spec.flaky_up_s));
                let down = Duration::from_secs(rng.between(spec.flaky_down_s));
                let cycle_ms = (up + down).as_millis() as u64;
                Flap {
                    up,
                    down,
                    offset: Duration::from_millis(rng.between([0, cycle_ms - 1])),
                    until: spec.flaky_until_s.map(Duration::from_secs),
                }
            });
            HostPlan {
                ip: host_ip(index),
                dead,
                handshake_latency,
                event_interval,
                flap,
            }
        })
        .collect()
}

/// What the upstream side saw of one host.
struct HostCounters {
    /// Milliseconds after world start of the first completed subscription (`u64::MAX`: none).
    first_subscribed_ms: AtomicU64,
    subscriptions: AtomicU64,
    /// Connections dropped before the handshake because the host was down.
    dropped_down: AtomicU64,
    /// Live sessions cut when a down window began.
    cuts: AtomicU64,
    /// Event frames written, resends after a reconnect included.
    frames_sent: AtomicU64,
    /// Highest seq written: the host's distinct events delivered at least once.
    max_seq_sent: AtomicU64,
}

impl HostCounters {
    fn new() -> Self {
        Self {
            first_subscribed_ms: AtomicU64::new(u64::MAX),
            subscriptions: AtomicU64::new(0),
            dropped_down: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            max_seq_sent: AtomicU64::new(0),
        }
    }
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Upstreams emit events.
    Running,
    /// No more events; sessions stay open so the relay can drain.
    Quiet,
    /// Sessions and listeners close.
    Closing,
}

/// The simulated upstream world, shared by every actor.
struct World {
    start: Instant,
    plans: Vec<HostPlan>,
    counters: Vec<HostCounters>,
    phase: watch::Receiver<Phase>,
    sessions_open: AtomicU64,
    accept_errors: AtomicU64,
    handshake_errors: AtomicU64,
}

impl World {
    fn since_start(&self) -> Duration {
        now().saturating_duration_since(self.start)
    }
}

async fn until_phase(phase: &mut watch::Receiver<Phase>, reached: impl Fn(Phase) -> bool) {
    // The guard `wait_for` returns is dropped here, never held across an await.
    let _ = phase.wait_for(|current| reached(*current)).await.is_ok();
}

/// The upstream actor's WebSocket settings (the tunnel's `actor_ws_config`).
fn actor_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(relay::upstream::WS_READ_BUFFER_BYTES)
}

/// Host `index`'s server: accept subscriptions until the run closes.
async fn serve(world: Arc<World>, index: usize, listener: TcpListener) {
    let mut phase = world.phase.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = until_phase(&mut phase, |p| p == Phase::Closing) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(subscription(Arc::clone(&world), index, stream));
            }
            Err(_) => {
                // Out of descriptors, most likely: back off instead of spinning.
                world.accept_errors.fetch_add(1, Relaxed);
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts an open upstream session for as long as it lives.
struct SessionOpen<'a>(&'a AtomicU64);

impl<'a> SessionOpen<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Relaxed);
        Self(counter)
    }
}

impl Drop for SessionOpen<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One subscription, exactly as the tunnel's upstream actor serves it.
async fn subscription(world: Arc<World>, index: usize, stream: TcpStream) {
    let plan = &world.plans[index];
    let counters = &world.counters[index];
    if plan
        .flap
        .as_ref()
        .is_some_and(|flap| flap.is_down(world.since_start()))
    {
        counters.dropped_down.fetch_add(1, Relaxed);
        return; // down: the connection is dropped before the handshake
    }
    sleep(plan.handshake_latency).await;
    let mut cursor = 0;
    #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
    let read_cursor = |request: &Request, response: Response| {
        cursor = request
            .uri()
            .query()
            .and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("cursor="))
            })
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        read_cursor,
        Some(actor_ws_config()),
    )
    .await
    else {
        world.handshake_errors.fetch_add(1, Relaxed);
        return;
    };
    let _open = SessionOpen::enter(&world.sessions_open);
    let at_ms = u64::try_from(world.since_start().as_millis()).unwrap_or(u64::MAX);
    counters.first_subscribed_ms.fetch_min(at_ms, Relaxed);
    counters.subscriptions.fetch_add(1, Relaxed);
    let mut phase = world.phase.clone();
    let mut seq = cursor + 1;
    while *phase.borrow() == Phase::Running {
        let due = plan.event_interval * u32::try_from(seq).unwrap_or(u32::MAX);
        let cut_at = plan
            .flap
            .as_ref()
            .and_then(|flap| flap.next_down(world.since_start()))
            .filter(|cut_at| *cut_at <= due);
        tokio::select! {
            () = sleep_until(world.start + cut_at.unwrap_or(due)) => {}
            () = until_phase(&mut phase, |p| p != Phase::Running) => break,
        }
        if cut_at.is_some() {
            counters.cuts.fetch_add(1, Relaxed);
            return; // going down: the live connection is cut
        }
        let frame = format!(
            r#"{{"seq":{seq},"kind":"commit","body":{{"host":"{}","n":{seq}}}}}"#,
            plan.ip
        );
        if ws.send(Message::text(frame)).await.is_err() {
            return;
        }
        counters.frames_sent.fetch_add(1, Relaxed);
        counters.max_seq_sent.fetch_max(seq, Relaxed);
        seq += 1;
    }
    // Quiet: no more events, but the session stays up until the run closes.
    until_phase(&mut phase, |p| p == Phase::Closing).await;
}

/// One `/_healthz` probe.
#[derive(Clone, Debug)]
struct Probe {
    latency: Duration,
    outcome: ProbeOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ProbeOutcome {
    Ok,
    Timeout,
    Status(u16),
    Error(String),
}

/// `GET path` on a fresh connection (`Connection: close`): the status and body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut response).await? == 0 || response_complete(&response) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status line in {:?}", truncate(&text, 80)))?;
    let body = header_end(&response).map_or_else(Vec::new, |end| response[end..].to_vec());
    Ok((status, body))
}

fn header_end(response: &[u8]) -> Option<usize> {
    response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Whether the head and a `Content-Length` body are complete (else read to EOF).
fn response_complete(response: &[u8]) -> bool {
    let Some(end) = header_end(response) else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|length| length.trim().parse::<usize>().ok())
        .is_some_and(|length| response.len() >= end + length)
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

async fn probe(addr: SocketAddr, path: &str, limit: Duration) -> Probe {
    let started = now();
    let outcome = match timeout(limit, http_get(addr, path)).await {
        Err(_) => ProbeOutcome::Timeout,
        Ok(Err(error)) => ProbeOutcome::Error(format!("{error:#}")),
        Ok(Ok((200, _))) => ProbeOutcome::Ok,
        Ok(Ok((status, _))) => ProbeOutcome::Status(status),
    };
    Probe {
        latency: now() - started,
        outcome,
    }
}

/// Probe `path` every `period` from `first` until `until`; each probe runs in its own task
/// so a slow one never delays the schedule. Returns the probes in start order.
async fn prober(
    addr: SocketAddr,
    path: String,
    first: Instant,
    period: Duration,
    limit: Duration,
    until: Instant,
) -> Vec<Probe> {
    let path: Arc<str> = path.into();
    let mut ticks = interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut running = Vec::new();
    loop {
        let tick = tokio::select! {
            tick = ticks.tick() => tick,
            () = sleep_until(until) => break,
        };
        if tick >= until {
            break;
        }
        let path = Arc::clone(&path);
        running.push(tokio::spawn(async move { probe(addr, &path, limit).await }));
    }
    let mut probes = Vec::with_capacity(running.len());
    for task in running {
        if let Ok(probe) = task.await {
            probes.push(probe);
        }
    }
    probes
}

/// Parse a Prometheus text exposition into `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One scrape of the relay and the upstream side.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    /// The relay's connected gauge (`None`: the scrape failed).
    relay_connected: Option<u64>,
    relay_cpu_ticks: Option<u64>,
    ever_subscribed: usize,
    sessions_open: u64,
}

/// utime + stime of `pid`, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some(ticks(11)? + ticks(12)?)
}

fn cpu_split(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let seconds = |index: usize| Some(fields.get(index)?.parse::<u64>().ok()? as f64 / 100.0);
    Some((seconds(11)?, seconds(12)?))
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// The relay child process; killed if still running when dropped (an early error).
struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (graceful drain), then SIGKILL after `grace`. Returns whether it went gracefully.
    async fn stop(&mut self, grace: Duration) -> bool {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .is_ok_and(|status| status.success());
        if signalled {
            let deadline = now() + grace;
            while now() < deadline {
                if self.exited() {
                    return true;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everything the run measured.
struct Outcome {
    samples: Vec<Sample>,
    probes: Vec<Probe>,
    dense: Vec<Probe>,
    first_healthy: Duration,
    stopped_at: Duration,
    metrics: BTreeMap<String, f64>,
    peak_rss_kb: Option<u64>,
    relay_cpu: Option<(f64, f64)>,
    graceful: bool,
}

const FD_MARK: &str = "COLD_START_REAL_ULIMIT_RAISED";

fn main() -> ExitCode {
    match cold_start(Args::parse()) {
        Ok(code) => code,
        Err(error) => {
            // The whole context chain on one line, without a backtrace (as the relay does).
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn cold_start(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read scenario {}", args.scenario.display()))?;
    let scenario: Scenario = toml::from_str(&text)
        .with_context(|| format!("cannot parse scenario {}", args.scenario.display()))?;
    let spec = &scenario.upstreams;
    for (name, [min, max]) in [
        ("handshake_latency_ms", spec.handshake_latency_ms),
        ("event_interval_s", spec.event_interval_s),
        ("flaky_up_s", spec.flaky_up_s),
        ("flaky_down_s", spec.flaky_down_s),
    ] {
        ensure!(
            min <= max,
            "upstreams.{name}: [{min}, {max}] is not a range"
        );
    }
    ensure!(
        spec.event_interval_s[0] > 0 && spec.flaky_up_s[0] + spec.flaky_down_s[0] > 0,
        "upstreams.event_interval_s and a flaky host's up + down window must be positive"
    );
    let hosts = args.hosts.unwrap_or(spec.hosts);
    ensure!(
        (1..=1_000_000).contains(&hosts),
        "--hosts must be 1 to 1,000,000"
    );
    ensure!(args.duration_s > 0, "--duration-s must be at least 1");
    let relay_bin = match &args.relay_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate target/release from this example's path")?
            .join("relay"),
    };
    ensure!(
        relay_bin.is_file(),
        "relay binary {} not found: build it first with `cargo build --release -p relay --bin relay` (or pass --relay-bin)",
        relay_bin.display()
    );
    // Here: a listener and a session per live host, plus probes. The relay (a child, which
    // inherits the limit): a socket per host.
    let needed = 2 * hosts as u64 + 512;
    if let Some(code) = ensure_fd_limit(needed)? {
        return Ok(code);
    }

    let plans = plan(spec, hosts, args.seed);
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("upstreams")
        .build()?;
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let port = args.upstream_port;
    let live: Vec<usize> = (0..hosts).filter(|&index| !plans[index].dead).collect();
    let listeners = upstream_rt.block_on(async {
        let mut listeners = Vec::with_capacity(live.len());
        for &index in &live {
            let addr = SocketAddr::from((plans[index].ip, port));
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind upstream {addr}"))?,
            );
        }
        anyhow::Ok(listeners)
    })?;
    let result = main_rt.block_on(run(
        &args,
        &scenario,
        plans,
        &live,
        listeners,
        &upstream_rt,
        &relay_bin,
    ));
    // Its tasks still hold connections; do not wait for them. (The gate's `--cfg madsim`
    // clippy pass builds every example, and madsim's runtime has no background shutdown;
    // this example only ever runs for real.)
    #[cfg(not(madsim))]
    upstream_rt.shutdown_background();
    #[cfg(madsim)]
    drop(upstream_rt);
    result.map(|()| ExitCode::SUCCESS)
}

/// Check the open-file limit; if the soft limit is too low but the hard one allows it,
/// re-run this program under `sh -c 'ulimit -n N && exec …'` (no `unsafe`, no extra crate)
/// and return its exit code.
fn ensure_fd_limit(needed: u64) -> anyhow::Result<Option<ExitCode>> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(None);
    };
    let Some((soft, hard)) = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| {
            let mut fields = rest.split_whitespace();
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
    else {
        return Ok(None);
    };
    let parse = |value: &str| {
        if value == "unlimited" {
            Some(u64::MAX)
        } else {
            value.parse::<u64>().ok()
        }
    };
    let (Some(soft), Some(hard)) = (parse(&soft), parse(&hard)) else {
        return Ok(None);
    };
    if soft >= needed {
        return Ok(None);
    }
    ensure!(
        hard >= needed && std::env::var_os(FD_MARK).is_none(),
        "open-file limit {soft} (hard {hard}) is below the {needed} this run needs (a listener and a session per upstream here, a socket per host in the relay); raise it with `ulimit -n {}` (as root if the hard limit is lower) or pass fewer --hosts",
        needed.max(16_384)
    );
    let target = needed.max(16_384).min(hard);
    println!("cold_start_real: raising the open-file limit {soft} -> {target} (re-running under `ulimit -n`)");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"ulimit -n "$0" && exec "$@""#)
        .arg(target.to_string())
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(FD_MARK, "1")
        .status()
        .context(
            "cannot re-run under `sh -c ulimit -n`; raise the limit yourself (ulimit -n 16384)",
        )?;
    Ok(Some(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    )))
}

/// `--set section.key=value` for every key of the scenario's `[relay]` table, except the
/// simulation-only `[relay.cpu]` and what this run decides itself.
fn relay_overrides(relay: &toml::Table) -> Vec<String> {
    let mut sets = Vec::new();
    for (section, table) in relay {
        if section == "cpu" {
            continue;
        }
        let Some(table) = table.as_table() else {
            continue;
        };
        for (key, value) in table {
            let path = format!("{section}.{key}");
            if [
                "server.listen",
                "store.path",
                "upstream.port",
                "log.level",
                "log.format",
            ]
            .contains(&path.as_str())
            {
                continue;
            }
            sets.push(format!("{path}={value}"));
        }
    }
    sets
}

async fn run(
    args: &Args,
    scenario: &Scenario,
    plans: Vec<HostPlan>,
    live: &[usize],
    listeners: Vec<TcpListener>,
    upstream_rt: &tokio::runtime::Runtime,
    relay_bin: &Path,
) -> anyhow::Result<()> {
    let hosts = plans.len();
    let dead = hosts - live.len();
    let flaky = plans.iter().filter(|plan| plan.flap.is_some()).count();
    let tag = format!("cold-start-real-{}", std::process::id());
    let db = std::env::temp_dir().join(format!("{tag}.sqlite"));
    let log = std::env::temp_dir().join(format!("{tag}.log"));
    remove_db(&db);
    {
        let names: Vec<String> = plans.iter().map(|plan| plan.ip.to_string()).collect();
        let store = Store::open(&db).context("cannot create the relay's database")?;
        let added = store.add_hosts(names.iter().map(String::as_str))?;
        ensure!(added == hosts, "pre-filled {added} of {hosts} hosts");
    }
    let relay_addr = {
        // A free port for the relay (released just before the relay binds it).
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut command_line = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        relay_addr.to_string(),
        "--set".to_owned(),
        format!("store.path={}", db.display()),
        "--set".to_owned(),
        format!("upstream.port={}", args.upstream_port),
        "--set".to_owned(),
        "log.level=warn".to_owned(),
    ];
    for set in relay_overrides(&scenario.relay) {
        command_line.push("--set".to_owned());
        command_line.push(set);
    }
    println!(
        "cold_start_real: scenario={} hosts={hosts} (live {}, flaky {flaky}, dead {dead}) seed={} duration={}s \
         upstreams=127.10.x.y:{} relay={relay_addr} cores={} load_average_start={}",
        scenario.name,
        live.len(),
        args.seed,
        args.duration_s,
        args.upstream_port,
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    println!("relay: {} {}", relay_bin.display(), command_line.join(" "));

    let (phase_tx, phase) = watch::channel(Phase::Running);
    let counters = (0..hosts).map(|_| HostCounters::new()).collect();
    let world = Arc::new(World {
        start: now(),
        plans,
        counters,
        phase,
        sessions_open: AtomicU64::new(0),
        accept_errors: AtomicU64::new(0),
        handshake_errors: AtomicU64::new(0),
    });
    for (&index, listener) in live.iter().zip(listeners) {
        upstream_rt.spawn(serve(Arc::clone(&world), index, listener));
    }
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(relay_bin)
        .args(&command_line)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", relay_bin.display()))?;
    let mut relay = RelayProcess { child };
    let outcome = measure(
        args, scenario, &world, &phase_tx, &mut relay, relay_addr, live,
    )
    .await;
    phase_tx.send_replace(Phase::Closing);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            drop(relay);
            eprintln!("relay log ({}), last lines:", log.display());
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("  {line}");
            }
            return Err(error);
        }
    };
    let persisted = read_event_log(&db, &world)?;
    report(args, scenario, &world, live, &outcome, &persisted);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = log_text
        .lines()
        .filter(|line| line.contains("WARN"))
        .count();
    let errors = log_text
        .lines()
        .filter(|line| line.contains("ERROR"))
        .count();
    println!(
        "relay log: {} lines, {warnings} WARN, {errors} ERROR{}",
        log_text.lines().count(),
        if args.keep {
            format!(" ({}; database {})", log.display(), db.display())
        } else {
            String::new()
        }
    );
    if !args.keep {
        remove_db(&db);
        let _ = std::fs::remove_file(&log);
    }
    Ok(())
}

async fn measure(
    args: &Args,
    scenario: &Scenario,
    world: &Arc<World>,
    phase: &watch::Sender<Phase>,
    relay: &mut RelayProcess,
    addr: SocketAddr,
    live: &[usize],
) -> anyhow::Result<Outcome> {
    let start = world.start;
    let pid = relay.pid();
    // Until the relay answers its first probe (not counted as a probe).
    let first_healthy = loop {
        if relay.exited() {
            bail!("the relay exited during startup");
        }
        if matches!(
            timeout(Duration::from_secs(1), http_get(addr, "/_healthz")).await,
            Ok(Ok((200, _)))
        ) {
            break world.since_start();
        }
        ensure!(
            world.since_start() < Duration::from_secs(60),
            "the relay did not answer /_healthz within 60 s"
        );
        sleep(Duration::from_millis(10)).await;
    };
    let stop = start + Duration::from_secs(args.duration_s);
    let spec = &scenario.prober;
    let limit = Duration::from_secs(spec.timeout_s.max(1));
    let probes = tokio::spawn(prober(
        addr,
        spec.path.clone(),
        start + Duration::from_secs(spec.initial_delay_s),
        Duration::from_secs(spec.period_s.max(1)),
        limit,
        stop,
    ));
    let dense = (args.dense_probe_ms > 0).then(|| {
        tokio::spawn(prober(
            addr,
            spec.path.clone(),
            start + first_healthy,
            Duration::from_millis(args.dense_probe_ms),
            limit,
            stop,
        ))
    });

    // Scrape once a second until the stop.
    let mut samples: Vec<Sample> = Vec::new();
    let mut metrics = BTreeMap::new();
    let mut ticks = interval_at(start + first_healthy, Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let connected_key = r#"relay_upstream_hosts{phase="connected"}"#;
    let every = usize::try_from(args.progress_s).unwrap_or(usize::MAX);
    let mut next_progress = every;
    loop {
        let tick = ticks.tick().await;
        if tick > stop {
            break;
        }
        ensure!(!relay.exited(), "the relay exited during the run");
        let scraped = timeout(Duration::from_secs(5), http_get(addr, "/metrics")).await;
        let relay_connected = if let Ok(Ok((200, body))) = scraped {
            metrics = parse_metrics(&String::from_utf8_lossy(&body));
            metrics.get(connected_key).map(|value| *value as u64)
        } else {
            None
        };
        let sample = Sample {
            at: world.since_start(),
            relay_connected,
            relay_cpu_ticks: cpu_ticks(&pid),
            ever_subscribed: live
                .iter()
                .filter(|&&index| {
                    world.counters[index].first_subscribed_ms.load(Relaxed) != u64::MAX
                })
                .count(),
            sessions_open: world.sessions_open.load(Relaxed),
        };
        if every > 0 && samples.len() == next_progress {
            next_progress += every;
            let back = samples[samples.len() - every].clone();
            let cpu = match (sample.relay_cpu_ticks, back.relay_cpu_ticks) {
                (Some(now_ticks), Some(then)) => format!(
                    "{:.0}%",
                    (now_ticks - then) as f64 / 100.0 / (sample.at - back.at).as_secs_f64() * 100.0
                ),
                _ => "?".to_owned(),
            };
            let metric = |key: &str| {
                metrics
                    .get(key)
                    .map_or("?".to_owned(), |value| format!("{value}"))
            };
            println!(
                "  t={:>5.1}s subscribed_once={}/{} sessions_open={} relay_connected={} handshakes_in_flight={} relay_events={} relay_cpu={cpu}",
                sample.at.as_secs_f64(),
                sample.ever_subscribed,
                live.len(),
                sample.sessions_open,
                sample.relay_connected.map_or("?".to_owned(), |value| value.to_string()),
                metric("relay_upstream_handshakes_in_flight"),
                metric("relay_upstream_events"),
            );
        }
        samples.push(sample);
    }
    let probes = probes.await?;
    let dense = match dense {
        Some(task) => task.await?,
        None => Vec::new(),
    };

    // Stop emitting, let the relay persist what it has, then read it and stop it.
    phase.send_replace(Phase::Quiet);
    let stopped_at = world.since_start();
    sleep(Duration::from_secs(3)).await;
    if let Ok(Ok((200, body))) = timeout(Duration::from_secs(5), http_get(addr, "/metrics")).await {
        metrics = parse_metrics(&String::from_utf8_lossy(&body));
    }
    let peak_rss_kb = status_kb(&pid, "VmHWM");
    let relay_cpu = cpu_split(&pid);
    let graceful = relay.stop(Duration::from_secs(20)).await;
    Ok(Outcome {
        samples,
        probes,
        dense,
        first_healthy,
        stopped_at,
        metrics,
        peak_rss_kb,
        relay_cpu,
        graceful,
    })
}

/// What the relay's event log holds per host, after it stopped.
struct Persisted {
    rows: u64,
    /// Per host index: (events persisted, highest upstream seq persisted, cursor).
    per_host: Vec<(u64, u64, u64)>,
}

fn read_event_log(db: &Path, world: &World) -> anyhow::Result<Persisted> {
    let index: BTreeMap<String, usize> = world
        .plans
        .iter()
        .enumerate()
        .map(|(index, plan)| (plan.ip.to_string(), index))
        .collect();
    let connection = rusqlite::Connection::open(db)
        .with_context(|| format!("cannot open the relay's database {}", db.display()))?;
    let rows: u64 = connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
    let mut per_host = vec![(0, 0, 0); world.plans.len()];
    let mut query = connection.prepare(
        "SELECT h.hostname, h.cursor, COUNT(e.seq), COALESCE(MAX(e.upstream_seq), 0) \
         FROM hosts h LEFT JOIN events e ON e.host_id = h.id GROUP BY h.id",
    )?;
    let mut found = query.query([])?;
    while let Some(row) = found.next()? {
        let hostname: String = row.get(0)?;
        let Some(&at) = index.get(&hostname) else {
            bail!("the host table holds {hostname:?}, which this run did not create");
        };
        per_host[at] = (row.get(2)?, row.get(3)?, row.get(1)?);
    }
    Ok(Persisted { rows, per_host })
}

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn probe_row(name: &str, probes: &[Probe], threshold: u32) {
    if probes.is_empty() {
        println!("| {name} | 0 | | | | | | | |");
        return;
    }
    let mut latencies: Vec<Duration> = probes.iter().map(|probe| probe.latency).collect();
    latencies.sort();
    let failures = probes
        .iter()
        .filter(|probe| probe.outcome != ProbeOutcome::Ok)
        .count();
    let timeouts = probes
        .iter()
        .filter(|probe| probe.outcome == ProbeOutcome::Timeout)
        .count();
    let (mut streak, mut longest) = (0u32, 0u32);
    for probe in probes {
        streak = if probe.outcome == ProbeOutcome::Ok {
            0
        } else {
            streak + 1
        };
        longest = longest.max(streak);
    }
    println!(
        "| {name} | {} | {failures} ({timeouts} timeouts) | {longest}{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        probes.len(),
        if longest >= threshold {
            " (would restart)"
        } else {
            ""
        },
        ms(latencies[0]),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(*latencies.last().expect("not empty")),
    );
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for probe in probes {
        match &probe.outcome {
            ProbeOutcome::Ok | ProbeOutcome::Timeout => {}
            ProbeOutcome::Status(status) => {
                *other.entry(format!("status {status}")).or_default() += 1
            }
            ProbeOutcome::Error(error) => *other.entry(truncate(error, 60)).or_default() += 1,
        }
    }
    for (what, count) in other {
        println!("|   {name}: {count} × {what} | | | | | | | | |");
    }
}

fn report(
    args: &Args,
    scenario: &Scenario,
    world: &World,
    live: &[usize],
    outcome: &Outcome,
    persisted: &Persisted,
) {
    let counters = &world.counters;
    let secs = |duration: Duration| format!("{:.1}", duration.as_secs_f64());
    println!();
    println!(
        "relay answered /_healthz {:.0} ms after it was started; upstreams stopped emitting at t={:.1}s; load_average_end={}",
        ms(outcome.first_healthy),
        outcome.stopped_at.as_secs_f64(),
        load_average()
    );
    println!();
    println!(
        "connected: of {} live hosts (dead hosts excluded), time from the relay's start until the share was reached",
        live.len()
    );
    println!("| share | hosts | upstream side: first subscription done (s) | relay gauge connected now, 1 s samples (s) |");
    println!("|---:|---:|---:|---:|");
    let mut firsts: Vec<u64> = live
        .iter()
        .map(|&index| counters[index].first_subscribed_ms.load(Relaxed))
        .filter(|&at| at != u64::MAX)
        .collect();
    firsts.sort_unstable();
    for share in [50u64, 90, 95, 100] {
        let target = (live.len() as u64 * share).div_ceil(100).max(1);
        let upstream = usize::try_from(target - 1)
            .ok()
            .and_then(|at| firsts.get(at))
            .map_or_else(
                || format!("not reached ({} of {target})", firsts.len()),
                |at| format!("{:.1}", *at as f64 / 1000.0),
            );
        let relay = outcome
            .samples
            .iter()
            .find(|sample| {
                sample
                    .relay_connected
                    .is_some_and(|connected| connected >= target)
            })
            .map_or_else(
                || {
                    let best = outcome
                        .samples
                        .iter()
                        .filter_map(|sample| sample.relay_connected)
                        .max()
                        .unwrap_or(0);
                    format!("not reached (peak {best})")
                },
                |sample| secs(sample.at),
            );
        println!("| {share}% | {target} | {upstream} | {relay} |");
    }
    let last_connected = outcome
        .samples
        .iter()
        .rev()
        .find_map(|sample| sample.relay_connected)
        .unwrap_or(0);
    let metric = |key: &str| outcome.metrics.get(key).copied().unwrap_or(0.0);
    println!(
        "hosts ever subscribed: {} of {} live; relay connected at the stop: {last_connected}; upstream sessions open at the stop: {}; handshakes high water: {}",
        firsts.len(),
        live.len(),
        outcome.samples.last().map_or(0, |sample| sample.sessions_open),
        metric("relay_upstream_handshakes_high_water"),
    );
    let attempts: Vec<String> = outcome
        .metrics
        .iter()
        .filter_map(|(key, value)| {
            let reason = key
                .strip_prefix("relay_upstream_attempts_total{reason=\"")?
                .strip_suffix("\"}")?;
            Some(format!("{reason}={value}"))
        })
        .collect();
    let sum = |get: fn(&HostCounters) -> &AtomicU64| {
        counters
            .iter()
            .map(|host| get(host).load(Relaxed))
            .sum::<u64>()
    };
    println!(
        "relay attempts: {}; upstream side: {} subscriptions, {} dropped while down, {} cut by a down window, {} handshake errors, {} accept errors",
        if attempts.is_empty() {
            "?".to_owned()
        } else {
            attempts.join(" ")
        },
        sum(|host| &host.subscriptions),
        sum(|host| &host.dropped_down),
        sum(|host| &host.cuts),
        world.handshake_errors.load(Relaxed),
        world.accept_errors.load(Relaxed),
    );

    println!();
    let spec = &scenario.prober;
    println!(
        "probes: GET {} on a fresh connection, timeout {} s; scenario prober: first at {} s, every {} s; dense: every {} ms from the first 200",
        spec.path, spec.timeout_s, spec.initial_delay_s, spec.period_s, args.dense_probe_ms
    );
    println!("| prober | probes | failures | longest failure streak | min (ms) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    probe_row("scenario", &outcome.probes, spec.failure_threshold);
    if args.dense_probe_ms > 0 {
        probe_row("dense", &outcome.dense, u32::MAX);
    }

    println!();
    let stopped = outcome.stopped_at;
    let due: u64 = live
        .iter()
        .map(|&index| {
            let interval = world.plans[index].event_interval.as_nanos();
            (stopped.as_nanos() / interval) as u64
        })
        .sum();
    let delivered = sum(|host| &host.max_seq_sent);
    let (mut gaps, mut unpersisted, mut cursor_behind) = (0u64, 0u64, 0u64);
    for (index, host) in counters.iter().enumerate() {
        let (count, max_seq, cursor) = persisted.per_host[index];
        gaps += max_seq - count.min(max_seq);
        unpersisted += host.max_seq_sent.load(Relaxed).saturating_sub(max_seq);
        cursor_behind += max_seq.saturating_sub(cursor);
    }
    println!("events (the relay resumes each host from its cursor, so every event should be persisted exactly once):");
    println!("| due on live hosts by the stop | distinct sent by upstreams | frames sent (resends included) | relay frames received | relay persisted (SQLite rows) | sent, not persisted | gaps in a host's log | persisted but above the host's saved cursor |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {due} | {delivered} | {} | {} | {} | {unpersisted} | {gaps} | {cursor_behind} |",
        sum(|host| &host.frames_sent),
        metric("relay_upstream_events"),
        persisted.rows,
    );

    println!();
    let upstream_cpu = cpu_split("self").map_or("?".to_owned(), |(user, system)| {
        format!("{:.2} s", user + system)
    });
    let (peak_cpu, peak_at) = outcome
        .samples
        .windows(2)
        .filter_map(|pair| {
            let ticks = pair[1].relay_cpu_ticks? - pair[0].relay_cpu_ticks?;
            let wall = (pair[1].at - pair[0].at).as_secs_f64();
            Some((ticks as f64 / 100.0 / wall * 100.0, pair[1].at))
        })
        .fold((0.0, Duration::ZERO), |best, next| {
            if next.0 > best.0 {
                next
            } else {
                best
            }
        });
    println!("| relay process | peak RSS (VmHWM) | CPU user (s) | CPU system (s) | CPU total (s) | mean CPU (% of a core) | busiest second | stopped by SIGTERM | this process's CPU (upstreams + prober) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (user, system) = outcome.relay_cpu.unwrap_or((f64::NAN, f64::NAN));
    println!(
        "| relay | {} | {user:.2} | {system:.2} | {:.2} | {:.1} | {peak_cpu:.0}% at t={:.0}s | {} | {upstream_cpu} |",
        outcome
            .peak_rss_kb
            .map_or("?".to_owned(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
        user + system,
        (user + system) / (stopped.as_secs_f64() + 3.0) * 100.0,
        peak_at.as_secs_f64(),
        if outcome.graceful { "yes" } else { "no (killed)" },
    );
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
