//! `http_bench`: what the relay's HTTP front costs, measured in real mode (tokio, loopback
//! sockets, the release `relay` binary in a child process) against a bare hyper server.
//!
//! Two measurements, one subcommand each:
//! - `healthz`: `GET /_healthz` requests per second and per-request latency (p50/p99). The
//!   same load generator (written here: N keep-alive connections, each sending one request
//!   after the other, a small response parser, 200s counted) drives (a) the real relay
//!   (`target/release/relay serve`, defaults except the overrides printed) and (b) a
//!   minimal hyper 1.x http1 server, this example re-executed as `serve-hyper`, whose
//!   `service_fn` answers `200` with the relay's exact body (`ok\n`) and content type.
//!   Both servers run in a child process of their own, so the load generator never shares
//!   a runtime with them; each child's default multi-thread runtime gets the machine's
//!   cores, as does the load generator. Rounds alternate relay, hyper, relay, …; the table
//!   shows each server's median round, the ratio relay/hyper, and also requests per CPU
//!   second of the server process (read from `/proc/<pid>/stat`), which other load on the
//!   machine disturbs less than wall-clock rates.
//! - `idle`: resident memory the relay spends per idle connection. The relay child starts
//!   with room for the connections and with its idle reaper and header-read timeout pushed
//!   past the run; its `VmRSS` (`/proc/<pid>/status`) is read once it is ready and settled,
//!   then this process opens the connections (bounded concurrency) and, after another
//!   settle, reads it again: `(after - before) / connections`. Two kinds, each on a fresh
//!   relay: (a) HTTP keep-alive connections that sent one `GET /_healthz` and then stay
//!   silent, (b) WebSocket subscriptions (`/xrpc/com.atproto.sync.subscribeRepos?cursor=0`,
//!   no events flowing) whose
//!   client task keeps polling so the relay's pings are answered. Every connection's task
//!   notices when the relay closes it, so the count still open at the end is checked, and
//!   the relay's own `relay_connections_open` gauge is printed beside it. `--server hyper
//!   --kinds http` measures the bare hyper server the same way, for hyper's own floor.
//!
//! Why: the relay wraps hyper in its own accept loop, lifecycle registry, activity
//! stamps, per-request guard (panic boundary, handler deadline, metrics) and dispatcher;
//! this shows what that costs per request and per idle connection, against the floor
//! hyper itself sets on the same machine. Nothing here asserts a speed: it measures and
//! prints.
//!
//! Build both binaries first (`cargo build --release -p relay --bin relay --example
//! http_bench`); the relay binary is looked up next to the example's directory. The idle
//! run holds every connection's client end in this process and the server end in the
//! relay, so each needs an open-file limit above `--connections` (10,256 for the
//! default): the example does not raise it itself (that needs `setrlimit`, and the
//! workspace forbids `unsafe_code`), it checks its own limit (the child inherits it) and
//! says which `ulimit -n` to run first, as `ci/bench.sh` does for `fanout_bench`.

use relay::atproto::frame::SUBSCRIBE_REPOS_PATH;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use relay::rt::time::{now, sleep, sleep_until, timeout, Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/procfs.rs"]
mod procfs;
use procfs::{check_fd_limit, cpu_seconds};

/// The relay's `/_healthz` answer (`server/src/http/routes.rs`), which the baseline copies.
const HEALTHZ_BODY: &[u8] = b"ok\n";
const HEALTHZ_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const HEALTHZ_REQUEST: &[u8] = b"GET /_healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
/// Largest response head the parser accepts.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    about = "Relay HTTP cost on loopback: /_healthz throughput against bare hyper, and RSS per idle connection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `GET /_healthz` req/s and latency: the relay against a minimal hyper server.
    Healthz(HealthzArgs),
    /// Relay resident memory per idle connection (HTTP keep-alive, WebSocket subscription).
    Idle(IdleArgs),
    /// The baseline server (run by `healthz` in a child process).
    #[command(hide = true)]
    ServeHyper {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct HealthzArgs {
    /// Keep-alive connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before each round's measurement starts (not counted).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Rounds per server, alternating relay, hyper, relay, …; the table shows the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The relay binary (default: `relay` in the directory above this example's).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Idle connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Kinds to measure, comma-separated (`http`, `ws`); each gets a fresh relay.
    #[arg(long, value_delimiter = ',', default_values_t = [Kind::Http, Kind::Ws])]
    kinds: Vec<Kind>,
    /// Connections being opened (connect + first exchange) at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds between the relay being ready and the baseline RSS reading.
    #[arg(long, default_value_t = 2)]
    baseline_settle_seconds: u64,
    /// Seconds between the last connection opening and the final RSS reading.
    #[arg(long, default_value_t = 5)]
    settle_seconds: u64,
    /// Server to measure: the relay, or (`--kinds http` only) the bare hyper server of
    /// `healthz`, for hyper's own per-connection floor.
    #[arg(long, value_enum, default_value = "relay")]
    server: Server,
    /// The relay binary (default: `relay` in the directory above this example's).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
}

/// What an idle connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// HTTP/1.1 keep-alive: one `GET /_healthz`, then silence.
    Http,
    /// A WebSocket subscription with no events flowing (the relay's pings answered).
    Ws,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "http_keepalive",
            Self::Ws => "ws_subscription",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Ws => "ws",
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Healthz(args) => healthz(args).await,
        Command::Idle(args) => idle(args).await,
        Command::ServeHyper { listen } => serve_hyper(listen).await,
    }
}

// ---------------------------------------------------------------------------------------
// healthz

/// Which server a round loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Server {
    Relay,
    Hyper,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Hyper => "hyper",
        }
    }
}

/// One measured round.
struct Round {
    server: Server,
    /// 200 responses to requests sent inside the measured window.
    ok: u64,
    /// Other statuses inside the window.
    other_status: u64,
    /// Connections that failed (and stopped) during the round.
    errors: usize,
    first_error: Option<String>,
    measured: Duration,
    /// Per-request latency of the 200s, microseconds, sorted.
    latencies_us: Vec<u32>,
    /// 200 responses over the whole round, warm-up included (for the CPU figure).
    all_ok: u64,
    /// CPU seconds the server process used during the whole round (warm-up included).
    server_cpu: f64,
    /// CPU seconds this process (the load generator) used during the whole round.
    loadgen_cpu: f64,
}

impl Round {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// 200s per CPU second of the server process (warm-up included on both sides).
    fn per_server_cpu(&self) -> f64 {
        self.all_ok as f64 / self.server_cpu.max(1e-9)
    }

    fn percentile_us(&self, pct: f64) -> u32 {
        percentile(&self.latencies_us, pct)
    }
}

fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn healthz(args: HealthzArgs) -> anyhow::Result<()> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    check_fd_limit(args.connections + 64)?;
    let relay_bin = relay_binary(args.relay_bin.as_deref())?;
    // The default `server.max_connections` (1024) admits the default load; raise it only
    // for more connections. Every other key stays at its default.
    let mut overrides = Vec::new();
    if args.connections + 64 > 1024 {
        overrides.push(format!("server.max_connections={}", args.connections + 64));
    }
    let relay = RelayChild::start(&relay_bin, "healthz", &overrides).await?;
    let hyper = HyperChild::start().await?;
    println!(
        "http_bench healthz: connections={} seconds={} warmup_seconds={} rounds={} cores={} load generator in pid {}",
        args.connections,
        args.seconds,
        args.warmup_seconds,
        args.rounds.max(1),
        std::thread::available_parallelism().map_or(0, usize::from),
        std::process::id(),
    );
    println!(
        "relay: {} (pid {}) serve --listen {} --set store.path={}{}",
        relay_bin.display(),
        relay.child.pid(),
        relay.child.addr,
        relay.store.display(),
        overrides
            .iter()
            .map(|set| format!(" --set {set}"))
            .collect::<String>(),
    );
    println!(
        "  (overrides beyond listen and store.path: {}; every other key at its default)",
        if overrides.is_empty() {
            "none".to_owned()
        } else {
            overrides.join(", ")
        }
    );
    println!(
        "hyper: {} serve-hyper --listen {} (pid {}): http1::Builder defaults, no timer, service_fn answering 200 {:?} with content-type {HEALTHZ_CONTENT_TYPE:?}",
        std::env::current_exe()?.display(),
        hyper.addr,
        hyper.pid(),
        std::str::from_utf8(HEALTHZ_BODY)?,
    );
    for (server, addr) in [
        (Server::Relay, relay.child.addr),
        (Server::Hyper, hyper.addr),
    ] {
        let answer = fetch(addr, "/_healthz").await?;
        ensure!(
            answer.status == 200 && answer.body == HEALTHZ_BODY,
            "{} answered {} {:?} to GET /_healthz",
            server.name(),
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        println!(
            "{} answers: {}",
            server.name(),
            answer.head.replace("\r\n", " | ")
        );
    }
    println!();

    let mut rounds: Vec<Round> = Vec::new();
    for index in 0..args.rounds.max(1) {
        for (server, child) in [(Server::Relay, &relay.child), (Server::Hyper, &hyper)] {
            let round = load_round(server, child, &args).await?;
            print_round(index + 1, &round);
            rounds.push(round);
        }
    }
    let relay_median = median_round(&rounds, Server::Relay);
    let hyper_median = median_round(&rounds, Server::Hyper);
    println!();
    println!(
        "median of {} round(s) per server ({} keep-alive connections, {} s measured each); \
         req/server-CPU-s: 200s per CPU second of the server process",
        args.rounds.max(1),
        args.connections,
        args.seconds
    );
    println!("| server | median req/s | p50 (µs) | p99 (µs) | req/server-CPU-s | non-200 | failed connections |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for round in [relay_median, hyper_median].into_iter().flatten() {
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            round.server.name(),
            round.rate(),
            round.percentile_us(50.0),
            round.percentile_us(99.0),
            round.per_server_cpu(),
            round.other_status,
            round.errors,
        );
    }
    if let (Some(relay), Some(hyper)) = (relay_median, hyper_median) {
        println!();
        println!(
            "relay / hyper: req/s {:.2}, req/server-CPU-s {:.2}, p50 {:.2}, p99 {:.2}",
            relay.rate() / hyper.rate().max(1e-9),
            relay.per_server_cpu() / hyper.per_server_cpu().max(1e-9),
            f64::from(relay.percentile_us(50.0)) / f64::from(hyper.percentile_us(50.0).max(1)),
            f64::from(relay.percentile_us(99.0)) / f64::from(hyper.percentile_us(99.0).max(1)),
        );
    }
    drop(hyper);
    relay.stop();
    Ok(())
}

/// The round whose req/s is the median for `server`.
fn median_round(rounds: &[Round], server: Server) -> Option<&Round> {
    let mut mine: Vec<&Round> = rounds.iter().filter(|r| r.server == server).collect();
    mine.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    mine.get(mine.len() / 2).copied()
}

fn print_round(index: usize, round: &Round) {
    println!(
        "round {index} {:<5} {:>9.0} req/s  p50={}µs p99={}µs max={}µs  ok={} non200={} failed_connections={}  server_cpu={:.2}s ({:.0} req/server-CPU-s)  loadgen_cpu={:.2}s{}",
        round.server.name(),
        round.rate(),
        round.percentile_us(50.0),
        round.percentile_us(99.0),
        round.latencies_us.last().copied().unwrap_or(0),
        round.ok,
        round.other_status,
        round.errors,
        round.server_cpu,
        round.per_server_cpu(),
        round.loadgen_cpu,
        round
            .first_error
            .as_deref()
            .map(|error| format!("  first error: {error}"))
            .unwrap_or_default(),
    );
}

/// What one load connection saw in the measured window.
#[derive(Default)]
struct ConnTally {
    ok: u64,
    /// 200s including the warm-up.
    all_ok: u64,
    other_status: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

/// Drive `server` with the load generator for warm-up + measured seconds.
async fn load_round(
    server: Server,
    child: &ServerChild,
    args: &HealthzArgs,
) -> anyhow::Result<Round> {
    let addr = child.addr;
    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {} at {addr}", server.name()))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measured = Duration::from_secs(args.seconds);
    // Everyone starts together, a moment from now, once every task is spawned.
    let start = now() + Duration::from_millis(20);
    let from = start + warmup;
    let until = from + measured;
    let server_cpu0 = child.cpu_seconds();
    let loadgen_cpu0 = cpu_seconds(Path::new("/proc/self/stat"));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(drive(stream, start, from, until)))
        .collect();
    let mut round = Round {
        server,
        ok: 0,
        other_status: 0,
        errors: 0,
        first_error: None,
        measured,
        latencies_us: Vec::new(),
        all_ok: 0,
        server_cpu: 0.0,
        loadgen_cpu: 0.0,
    };
    for task in tasks {
        let tally = task.await?;
        round.ok += tally.ok;
        round.all_ok += tally.all_ok;
        round.other_status += tally.other_status;
        round.latencies_us.extend(tally.latencies_us);
        if let Some(error) = tally.error {
            round.errors += 1;
            round.first_error.get_or_insert(error);
        }
    }
    round.server_cpu = child.cpu_seconds() - server_cpu0;
    round.loadgen_cpu = cpu_seconds(Path::new("/proc/self/stat")) - loadgen_cpu0;
    round.latencies_us.sort_unstable();
    Ok(round)
}

/// One keep-alive connection: a request, its whole response, the next request, … until
/// `until`. Requests sent from `from` on are counted.
async fn drive(mut stream: TcpStream, start: Instant, from: Instant, until: Instant) -> ConnTally {
    let mut tally = ConnTally::default();
    let mut buf = Vec::with_capacity(4096);
    sleep_until(start).await;
    loop {
        let sent = now();
        if sent >= until {
            break;
        }
        let status = match exchange(&mut stream, &mut buf, HEALTHZ_REQUEST).await {
            Ok(response) => response.status,
            Err(error) => {
                tally.error = Some(format!("{error:#}"));
                break;
            }
        };
        if status == 200 {
            tally.all_ok += 1;
        }
        if sent < from {
            continue;
        }
        if status == 200 {
            tally.ok += 1;
            let micros = (now() - sent).as_micros();
            tally
                .latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        } else {
            tally.other_status += 1;
        }
    }
    tally
}

/// A parsed HTTP/1.1 response.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Send `request` and read one whole response (`Content-Length` framing only, which is
/// what both servers use for these routes). `buf` carries bytes over between responses.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> anyhow::Result<Answer> {
    stream.write_all(request).await?;
    loop {
        if let Some((head_len, body_len)) = parse_head(buf)? {
            if buf.len() >= head_len + body_len {
                let head = String::from_utf8_lossy(&buf[..head_len - 4]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .with_context(|| format!("bad status line in {head:?}"))?;
                let body = buf[head_len..head_len + body_len].to_vec();
                buf.drain(..head_len + body_len);
                return Ok(Answer { status, head, body });
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed by the server");
        }
    }
}

/// The length of a complete response head (with its blank line) and of the body it
/// announces, or `None` while the head is incomplete.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let Some(end) = buf.windows(4).position(|window| window == b"\r\n\r\n") else {
        ensure!(
            buf.len() < MAX_HEAD_BYTES,
            "response head over {MAX_HEAD_BYTES} bytes"
        );
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let length = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .context("bad content-length")?
        .with_context(|| format!("no content-length in {head:?}"))?;
    Ok(Some((end + 4, length)))
}

/// One request on a fresh connection (which is then closed).
async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    timeout(
        Duration::from_secs(10),
        exchange(&mut stream, &mut buf, request.as_bytes()),
    )
    .await
    .with_context(|| format!("GET {path} on {addr} timed out"))?
}

/// The baseline: hyper's http1 connection with a `service_fn`, nothing else.
async fn serve_hyper(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Typically EMFILE: back off instead of spinning.
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from_static(HEALTHZ_BODY)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(HEALTHZ_CONTENT_TYPE));
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// idle

/// What the connections of one kind saw, shared with their tasks.
#[derive(Default)]
struct IdleTally {
    opened: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    close_reasons: Mutex<BTreeMap<&'static str, usize>>,
}

impl IdleTally {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error);
    }

    fn close(&self, reason: &'static str) {
        *self
            .close_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
        self.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn open_now(&self) -> usize {
        self.opened.load(Ordering::SeqCst) - self.closed.load(Ordering::SeqCst)
    }
}

/// The result of one kind.
struct IdleRun {
    kind: Kind,
    rss_before_kb: u64,
    rss_after_kb: u64,
    opened: usize,
    failed: usize,
    open_at_end: usize,
    metrics: Vec<String>,
}

impl IdleRun {
    fn per_connection_bytes(&self, connections: usize) -> f64 {
        (self.rss_after_kb as f64 - self.rss_before_kb as f64) * 1024.0 / connections.max(1) as f64
    }
}

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(!args.kinds.is_empty(), "--kinds needs at least one kind");
    ensure!(
        args.server == Server::Relay || !args.kinds.contains(&Kind::Ws),
        "the hyper baseline serves no WebSocket: use --kinds http with --server hyper"
    );
    check_fd_limit(args.connections + 256)?;
    let relay_bin = match args.server {
        Server::Relay => relay_binary(args.relay_bin.as_deref())?,
        Server::Hyper => PathBuf::new(),
    };
    let overrides = vec![
        // Room for every connection plus the probes (readiness, /metrics).
        format!("server.max_connections={}", args.connections + 256),
        // Silent connections must outlive the run: the idle reaper (5 s by default) …
        "server.idle_timeout_ms=3600000".to_owned(),
        // … and hyper's header-read timeout, which also runs while a keep-alive
        // connection waits for its next request (10 s by default).
        "server.header_read_timeout_ms=3600000".to_owned(),
    ];
    println!(
        "http_bench idle: server={} connections={} kinds={:?} concurrency={} baseline_settle={}s settle={}s cores={}",
        args.server.name(),
        args.connections,
        args.kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>(),
        args.concurrency,
        args.baseline_settle_seconds,
        args.settle_seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    match args.server {
        Server::Relay => println!(
            "relay overrides: {} (every other key at its default, e.g. fanout.ping_interval_ms=2000)",
            overrides
                .iter()
                .map(|set| format!("--set {set}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Server::Hyper => println!(
            "hyper baseline: http1::Builder defaults, no timer (so no header-read timeout), no idle reaper"
        ),
    }
    let mut runs = Vec::new();
    for &kind in &args.kinds {
        runs.push(idle_run(&args, kind, &relay_bin, &overrides).await?);
    }
    println!();
    println!(
        "RSS of the server process (VmRSS) before and after {} idle connections, settled; per connection = (after - before) / {}",
        args.connections, args.connections
    );
    println!("| server | kind | opened | failed | still open at end | RSS before (KiB) | RSS after (KiB) | bytes per connection | relay metrics at end |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for run in &runs {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            args.server.name(),
            run.kind.name(),
            run.opened,
            run.failed,
            run.open_at_end,
            run.rss_before_kb,
            run.rss_after_kb,
            run.per_connection_bytes(args.connections),
            run.metrics.join("; "),
        );
    }
    Ok(())
}

async fn idle_run(
    args: &IdleArgs,
    kind: Kind,
    relay_bin: &Path,
    overrides: &[String],
) -> anyhow::Result<IdleRun> {
    let server = match args.server {
        Server::Relay => {
            Started::Relay(RelayChild::start(relay_bin, kind.name(), overrides).await?)
        }
        Server::Hyper => Started::Hyper(HyperChild::start().await?),
    };
    let addr = server.child().addr;
    println!();
    println!(
        "== {}: {} pid {} on {addr}, settling {} s",
        kind.name(),
        args.server.name(),
        server.child().pid(),
        args.baseline_settle_seconds
    );
    sleep(Duration::from_secs(args.baseline_settle_seconds)).await;
    let rss_before_kb = server.child().rss_kb()?;
    println!("rss_before={rss_before_kb} KiB");

    let tally = Arc::new(IdleTally::default());
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = now();
    let holders: Vec<_> = (0..args.connections)
        .map(|_| {
            let tally = Arc::clone(&tally);
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let Ok(permit) = gate.acquire_owned().await else {
                    return;
                };
                let held = match timeout(Duration::from_secs(30), open_idle(kind, addr)).await {
                    Ok(Ok(held)) => held,
                    Ok(Err(error)) => return tally.fail(format!("{error:#}")),
                    Err(_) => return tally.fail("opening took over 30 s".to_owned()),
                };
                drop(permit);
                tally.opened.fetch_add(1, Ordering::SeqCst);
                tally.close(held.hold().await);
            })
        })
        .collect();
    let mut reported = 0;
    loop {
        let opened = tally.opened.load(Ordering::SeqCst);
        let failed = tally.failed.load(Ordering::SeqCst);
        let done = opened + failed == args.connections;
        if done || opened + failed >= reported + 1000 {
            reported = opened + failed;
            println!(
                "  {:>6.1}s opened={opened} failed={failed} open_now={}",
                (now() - started).as_secs_f64(),
                tally.open_now()
            );
        }
        if done {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    println!("all attempted; settling {} s", args.settle_seconds);
    sleep(Duration::from_secs(args.settle_seconds)).await;
    let rss_after_kb = server.child().rss_kb()?;
    let open_at_end = tally.open_now();
    let metrics: Vec<String> = match &server {
        Started::Relay(_) => String::from_utf8(fetch(addr, "/metrics").await?.body)?
            .lines()
            .filter(|line| {
                line.starts_with("relay_connections_open")
                    || line.starts_with("relay_consumer_sessions")
            })
            .map(str::to_owned)
            .collect(),
        Started::Hyper(_) => vec!["-".to_owned()],
    };
    let run = IdleRun {
        kind,
        rss_before_kb,
        rss_after_kb,
        opened: tally.opened.load(Ordering::SeqCst),
        failed: tally.failed.load(Ordering::SeqCst),
        open_at_end,
        metrics,
    };
    println!(
        "rss_after={} KiB  delta={} KiB  per_connection={:.0} bytes  opened={} failed={} still_open={} (counted by the client tasks)",
        run.rss_after_kb,
        run.rss_after_kb as i64 - run.rss_before_kb as i64,
        run.per_connection_bytes(args.connections),
        run.opened,
        run.failed,
        run.open_at_end,
    );
    if let Started::Relay(_) = server {
        println!(
            "relay /metrics: {} (relay_connections_open includes the /metrics request's own connection)",
            run.metrics.join("; ")
        );
    }
    if let Some(error) = tally
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_deref()
    {
        println!("first failure: {error}");
    }
    let reasons = tally
        .close_reasons
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if !reasons.is_empty() {
        println!("closed by the relay before the end: {reasons:?}");
    }
    for holder in &holders {
        holder.abort();
    }
    for holder in holders {
        let _ = holder.await;
    }
    server.stop();
    Ok(run)
}

/// The server an idle run measures.
enum Started {
    Relay(RelayChild),
    Hyper(ServerChild),
}

impl Started {
    fn child(&self) -> &ServerChild {
        match self {
            Self::Relay(relay) => &relay.child,
            Self::Hyper(hyper) => hyper,
        }
    }

    fn stop(self) {
        match self {
            Self::Relay(relay) => relay.stop(),
            Self::Hyper(hyper) => drop(hyper),
        }
    }
}

/// An idle connection's client end.
enum Held {
    Http(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

async fn open_idle(kind: Kind, addr: SocketAddr) -> anyhow::Result<Held> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    match kind {
        Kind::Http => {
            let mut buf = Vec::with_capacity(512);
            let answer = exchange(&mut stream, &mut buf, HEALTHZ_REQUEST).await?;
            ensure!(
                answer.status == 200,
                "GET /_healthz answered {}",
                answer.status
            );
            Ok(Held::Http(stream))
        }
        Kind::Ws => {
            // A small client read buffer keeps this process lean; the relay's side is what
            // is measured.
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                format!("ws://{addr}{SUBSCRIBE_REPOS_PATH}?cursor=0"),
                stream,
                Some(config),
            )
            .await?;
            Ok(Held::Ws(Box::new(ws)))
        }
    }
}

impl Held {
    /// Wait until the relay closes the connection; returns how it ended. A WebSocket is
    /// polled throughout, which is when tungstenite answers the relay's pings.
    async fn hold(self) -> &'static str {
        match self {
            Self::Http(mut stream) => {
                let mut byte = [0u8; 256];
                loop {
                    match stream.read(&mut byte).await {
                        Ok(0) => return "http_eof",
                        Ok(_) => continue,
                        Err(_) => return "http_error",
                    }
                }
            }
            Self::Ws(mut ws) => loop {
                match ws.next().await {
                    None => return "ws_eof",
                    Some(Ok(Message::Close(_))) => return "ws_close_frame",
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => return "ws_error",
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// child processes

/// A server in a child process, killed when dropped.
struct ServerChild {
    process: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServerChild {
    /// Start `command` (which must listen on `addr`) and wait until `addr` accepts.
    async fn spawn(mut command: Process, addr: SocketAddr, label: &str) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "http-bench-{}-{label}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let log_file = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let process = command
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let mut child = Self { process, addr, log };
        let deadline = now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.process.try_wait()? {
                bail!(
                    "{label} exited ({status}) before accepting on {addr}; its output:\n{}",
                    child.output()
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(child);
            }
            if now() >= deadline {
                bail!(
                    "{label} did not accept on {addr} within 30 s; its output:\n{}",
                    child.output()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&PathBuf::from(format!("/proc/{}/stat", self.pid())))
    }

    /// The child's resident set size, KiB.
    fn rss_kb(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }
}

impl ServerChild {
    /// Kill the child and reap it (idempotent).
    fn terminate(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.terminate();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The baseline server: this example re-executed as `serve-hyper`.
struct HyperChild;

impl HyperChild {
    async fn start() -> anyhow::Result<ServerChild> {
        let addr = free_addr().await?;
        let mut command = Process::new(std::env::current_exe()?);
        command
            .arg("serve-hyper")
            .arg("--listen")
            .arg(addr.to_string());
        ServerChild::spawn(command, addr, "hyper").await
    }
}

/// The relay binary in a child process, with a store file of its own.
struct RelayChild {
    child: ServerChild,
    store: PathBuf,
}

impl RelayChild {
    async fn start(binary: &Path, label: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let addr = free_addr().await?;
        let store = std::env::temp_dir().join(format!(
            "http-bench-{}-{label}-{}.sqlite",
            std::process::id(),
            addr.port()
        ));
        remove_db(&store);
        let mut command = Process::new(binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--set")
            .arg(format!("store.path={}", store.display()));
        for assignment in overrides {
            command.arg("--set").arg(assignment);
        }
        let child = match ServerChild::spawn(command, addr, "relay").await {
            Ok(child) => child,
            Err(error) => {
                remove_db(&store);
                return Err(error);
            }
        };
        Ok(Self { child, store })
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        // The relay first, so it writes no more to the store being removed.
        self.child.terminate();
        remove_db(&self.store);
    }
}

/// `relay` next to this example's directory (`target/release/examples/http_bench` →
/// `target/release/relay`), unless given.
fn relay_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .context("cannot tell the target directory from this example's path")?
                .join("relay")
        }
    };
    ensure!(
        path.is_file(),
        "relay binary not found at {}: build it first with `cargo build --release -p relay --bin relay` (or pass --relay-bin)",
        path.display()
    );
    Ok(path)
}

/// A loopback address nobody listens on (bound and released; the child binds it next).
async fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
