//! `relay_bench`: the relay in the terms of the public figures for the relays people run
//! (issue 24.2): events per second, CPU and bytes allocated per event, end-to-end latency
//! percentiles and a burst, all with 16 consumers (`ci/bench.sh relay` runs it in release).
//!
//! The relay runs in a process of its own: this example re-executed as `relay_bench relay
//! serve …`, which is `relay::cli::main` — the `relay serve` program, durable commits and
//! all — with a counting global allocator, answering `stats` on its stdin with the bytes
//! and allocations it has made so far. This process plays the rest of the world on
//! loopback: `--hosts` WebSocket upstreams (`127.0.0.1`, `127.0.0.2`, … on one port, the
//! relay's per-host event-rate limit off so a handful of hosts can carry the firehose),
//! and `--consumers` subscribers that check every frame arrives in relay order, with no
//! gap and no duplicate, and reconnect from the cursor a `ConsumerTooSlow` frame names
//! when they are kicked. Frames are atproto's (`#commit` with a real CAR slice, decoded by
//! the consumers with `relay::atproto::frame::decode`). Every event body carries the time
//! its upstream sent it (an extra field `t`, which the relay keeps), so a
//! consumer's receipt gives the end-to-end latency (upstream → relay → persisted →
//! consumer). Three phases, each on a fresh database and a fresh relay:
//! - `unpaced`: every upstream sends its share as fast as its socket takes it. Events/s
//!   is the events over the time until the relay's `relay_events_head_seq` reached the
//!   last one (persisted); CPU µs and bytes allocated per event are the relay process's
//!   (`/proc/<pid>/stat`, the allocator's count) over the time until every consumer had
//!   every event, divided by the events — fan-out to the consumers included, as in the
//!   public figures.
//! - `paced`: the upstreams together send `--rate` events/s for `--paced-seconds`:
//!   delivered events/s per consumer and p50/p99/p999 latency.
//! - `burst`: `--burst-events` at once with the relay's default queues: nothing may be
//!   lost (every consumer ends with every event, through its reconnects), and who was
//!   kicked is printed.
//!
//! `--plot FILE` writes an SVG: the latency CDF of each phase and the delivery rate over
//! time. The CPU is shared: the relay, the upstreams and the consumers run on the same
//! cores, as on any one machine; the relay's own share is read from its process. Nothing
//! here asserts a speed: it measures and prints, with the goals beside the figures.

// Real tokio only, never simulated: the determinism rules' ban on `tokio::sync::watch`
// (clippy.toml) is about simulated runs; here its wake order cannot matter.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use ipld_core::ipld::Ipld;
use plotters::prelude::*;
use relay::atproto::frame::{self, Incoming, Limits, SUBSCRIBE_REPOS_PATH};
use relay::atproto::message::Commit;
use relay::atproto::syntax::tid;
use relay::rt::time::{now, sleep, sleep_until, Instant};
use relay::store::Store;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/procfs.rs"]
mod procfs;
use procfs::{check_fd_limit, cpu_seconds};

/// Counts every allocation of the process it runs in; only the relay child's counts are
/// read.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[derive(Debug, Parser)]
#[command(about = "The relay with 16 consumers: unpaced ingest, paced latency, a burst")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    args: Args,
}

/// What this process is when it is not the benchmark.
#[derive(Debug, Subcommand)]
enum Role {
    /// Run `relay <ARGS>` with allocation counting; `stats` on stdin prints the counts.
    Relay {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Args {
    /// Upstream hosts sharing the load.
    #[arg(long, default_value_t = 8)]
    hosts: u8,
    /// Consumers subscribed to the relay.
    #[arg(long, default_value_t = 16)]
    consumers: usize,
    /// Events in the unpaced phase.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Offered rate of the paced phase, events/s (all hosts together).
    #[arg(long, default_value_t = 4_000)]
    rate: u64,
    /// Length of the paced phase, seconds.
    #[arg(long, default_value_t = 20)]
    paced_seconds: u64,
    /// Events in the burst phase.
    #[arg(long, default_value_t = 32_768)]
    burst_events: u64,
    /// Filler in each event body, bytes (a commit frame on the network is a few KB at
    /// most; most are under 1 KB).
    #[arg(long, default_value_t = 600)]
    body_bytes: usize,
    /// Phases to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "unpaced,paced,burst")]
    phases: Vec<String>,
    /// Write the latency CDFs and delivery rates over time to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Role::Relay { args }) = cli.role {
        return relay_child(args);
    }
    let args = cli.args;
    ensure!(
        args.hosts >= 1 && args.consumers >= 1,
        "need a host and a consumer"
    );
    // Each consumer and host holds a socket here and one in the relay child.
    check_fd_limit(2 * (args.consumers + usize::from(args.hosts)) + 64)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// The relay child: the `relay` program itself, and a thread answering `stats` with the
/// allocator's counts (bytes allocated, allocations) until stdin closes, which ends it.
fn relay_child(args: Vec<String>) -> anyhow::Result<()> {
    // Not a behaviour path: a benchmark's side channel, outside any simulation.
    #[allow(clippy::disallowed_methods)]
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "stats" {
                // A reallocation counts as one allocation of what it grew by.
                let stats = ALLOCATOR.stats();
                let bytes =
                    (stats.bytes_allocated as i128 + stats.bytes_reallocated as i128).max(0);
                println!("stats {bytes} {}", stats.allocations + stats.reallocations);
                let _ = std::io::stdout().flush();
            }
        }
        std::process::exit(0);
    });
    let code = relay::cli::main(
        std::iter::once("relay".to_owned())
            .chain(args)
            .map(Into::into),
    );
    if code == std::process::ExitCode::SUCCESS {
        Ok(())
    } else {
        bail!("the relay exited with a failure")
    }
}

/// One phase's figures.
struct Outcome {
    phase: &'static str,
    events: u64,
    /// Until the relay had persisted the last event.
    ingest: Duration,
    /// Until every consumer had every event.
    delivered: Duration,
    relay_cpu_s: f64,
    alloc_bytes: u64,
    allocs: u64,
    /// Every consumer receipt's latency, microseconds, sorted.
    latencies_us: Vec<u64>,
    /// Receipts per 100 ms bin from the start, all consumers together.
    receipts_per_bin: Vec<u64>,
    /// `consumer index → cursors it was kicked at`.
    kicks: BTreeMap<usize, Vec<u64>>,
}

const BIN: Duration = Duration::from_millis(100);

async fn bench(args: Args) -> anyhow::Result<()> {
    println!(
        "relay_bench: hosts={} consumers={} body_bytes={} events={} rate={}/s for {} s burst={} worker_threads={}",
        args.hosts,
        args.consumers,
        args.body_bytes,
        args.events,
        args.rate,
        args.paced_seconds,
        args.burst_events,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut outcomes = Vec::new();
    for phase in &args.phases {
        let outcome = match phase.as_str() {
            "unpaced" => run_phase(&args, "unpaced", args.events, None).await?,
            "paced" => {
                let events = args.rate * args.paced_seconds;
                run_phase(&args, "paced", events, Some(args.rate)).await?
            }
            "burst" => run_phase(&args, "burst", args.burst_events, None).await?,
            other => bail!("unknown phase {other:?} (unpaced, paced, burst)"),
        };
        print_outcome(&outcome);
        outcomes.push(outcome);
    }
    println!();
    println!("| phase | events | offered | persisted ev/s | delivered ev/s per consumer | relay CPU µs/event | bytes allocated/event | allocations/event | p50 ms | p99 ms | p999 ms | kicked |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for outcome in &outcomes {
        let offered = if outcome.phase == "paced" {
            format!("{}/s", args.rate)
        } else {
            "unpaced".to_owned()
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            outcome.phase,
            outcome.events,
            offered,
            rate(outcome.events, outcome.ingest),
            rate(outcome.events, outcome.delivered),
            outcome.relay_cpu_s * 1e6 / outcome.events as f64,
            outcome.alloc_bytes as f64 / outcome.events as f64,
            outcome.allocs as f64 / outcome.events as f64,
            percentile_ms(&outcome.latencies_us, 0.50),
            percentile_ms(&outcome.latencies_us, 0.99),
            percentile_ms(&outcome.latencies_us, 0.999),
            kicked_count(&outcome.kicks),
        );
    }
    println!();
    println!("goals (issue 24.2, this 2-core machine, durable commits): unpaced >= 20,000 events/s, <= 50 µs relay CPU per event, paced p99 <= 50 ms at 4,000/s; nothing lost in the burst");
    if let Some(path) = &args.plot {
        plot(path, &outcomes, args.consumers)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

fn print_outcome(outcome: &Outcome) {
    println!(
        "{:<8} events={} persisted in {:.3}s, every consumer had every event after {:.3}s; relay CPU {:.2}s; {} receipts; kicked: {}",
        outcome.phase,
        outcome.events,
        outcome.ingest.as_secs_f64(),
        outcome.delivered.as_secs_f64(),
        outcome.relay_cpu_s,
        outcome.latencies_us.len(),
        kicked_summary(&outcome.kicks),
    );
}

/// `N consumers, M kicks`: the table's column.
fn kicked_count(kicks: &BTreeMap<usize, Vec<u64>>) -> String {
    if kicks.is_empty() {
        return "0".to_owned();
    }
    let times: usize = kicks.values().map(Vec::len).sum();
    format!("{} consumers, {times} kicks", kicks.len())
}

/// The count and, per kicked consumer, the cursors it was kicked at.
fn kicked_summary(kicks: &BTreeMap<usize, Vec<u64>>) -> String {
    let detail: Vec<String> = kicks
        .iter()
        .map(|(consumer, cursors)| format!("c{consumer}@{cursors:?}"))
        .collect();
    if detail.is_empty() {
        return kicked_count(kicks);
    }
    format!("{} ({})", kicked_count(kicks), detail.join(" "))
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn percentile_ms(sorted_us: &[u64], fraction: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 * fraction).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[index - 1] as f64 / 1_000.0
}

/// The relay child process and its stats channel.
struct RelayProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    db: PathBuf,
}

impl RelayProcess {
    fn start(db: PathBuf, upstream_port: u16, hosts: u8) -> anyhow::Result<Self> {
        remove_db(&db);
        let names: Vec<String> = (1..=hosts).map(host_name).collect();
        Store::open(&db)?.add_hosts(names.iter().map(String::as_str))?;
        let addr = free_loopback_addr()?;
        let exe = std::env::current_exe()?;
        let sets = [
            format!("server.listen={addr}"),
            format!("store.path={}", db.display()),
            format!("upstream.port={upstream_port}"),
            "upstream.startup_jitter_ms=0".to_owned(),
            // The upstreams are on loopback, which the egress rules refuse by default.
            r#"upstream.egress_allow=["127.0.0.0/8"]"#.to_owned(),
            // They speak plain WebSocket (a TOML array of their names).
            format!("upstream.insecure_ws_hosts={names:?}"),
            // A few hosts carry the whole firehose here; the per-host event-rate limit
            // (fairness between thousands of hosts) would measure itself.
            "upstream.host_events_per_second=0".to_owned(),
            "log.level=warn".to_owned(),
        ];
        let mut command = Process::new(exe);
        command.arg("relay").arg("serve");
        for set in &sets {
            command.arg("--set").arg(set);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the relay child")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
            addr,
            db,
        })
    }

    /// Bytes allocated and allocations made by the relay process so far.
    fn alloc_stats(&mut self) -> anyhow::Result<(u64, u64)> {
        writeln!(self.stdin, "stats")?;
        self.stdin.flush()?;
        // The relay logs to stderr; stdout carries only the answers.
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut fields = line
            .strip_prefix("stats ")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::parse::<u64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(bytes)), Some(Ok(count))) => Ok((bytes, count)),
            _ => bail!("the relay child answered {line:?} to stats"),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(Path::new(&format!("/proc/{}/stat", self.child.id())))
    }

    /// A gauge or counter from `/metrics` (the first sample whose line starts with `series`).
    async fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let mut stream = TcpStream::connect(self.addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        response
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .with_context(|| format!("no {series} in /metrics"))
    }

    async fn wait_for_metric(&self, series: &str, at_least: u64) -> anyhow::Result<()> {
        for _ in 0..600 {
            if self.metric(series).await.unwrap_or(0) >= at_least {
                return Ok(());
            }
            sleep(Duration::from_millis(100)).await;
        }
        bail!("gave up waiting for {series} >= {at_least}")
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_db(&self.db);
    }
}

fn host_name(index: u8) -> String {
    Ipv4Addr::new(127, 0, 0, index).to_string()
}

fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// When the phase started, once it has: the upstreams and the consumers each hold one
/// (as in `fanout_bench`).
type Start = watch::Receiver<Option<Instant>>;

/// Wait until the phase has started; its start.
async fn started(start: &mut Start) -> anyhow::Result<Instant> {
    let at = *start.wait_for(Option::is_some).await?;
    at.context("the phase's start")
}

/// Microseconds from the phase's start to now.
fn micros_since(start: Instant) -> u64 {
    (now() - start).as_micros() as u64
}

/// Upstream hosts `127.0.0.1..=hosts` on one port. Host `k` sends `share(k)` events, from
/// its cursor on, paced at `rate / hosts` per second when `rate` is set; each body carries
/// `"t"`, the microseconds since the phase's start when it was sent.
async fn upstreams(
    hosts: u8,
    events: u64,
    rate: Option<u64>,
    body_bytes: usize,
    start: Start,
) -> anyhow::Result<u16> {
    let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await?;
    let port = first.local_addr()?.port();
    let mut listeners = vec![first];
    for index in 2..=hosts {
        listeners.push(TcpListener::bind((Ipv4Addr::new(127, 0, 0, index), port)).await?);
    }
    let pad: Arc<str> = "x".repeat(body_bytes).into();
    for (index, listener) in listeners.into_iter().enumerate() {
        let share =
            events / u64::from(hosts) + u64::from((index as u64) < events % u64::from(hosts));
        let per_host_rate = rate.map(|rate| rate as f64 / f64::from(hosts));
        let (pad, start) = (Arc::clone(&pad), start.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (pad, start) = (Arc::clone(&pad), start.clone());
                tokio::spawn(async move {
                    let _ =
                        upstream_session(stream, index, share, per_host_rate, &pad, start).await;
                });
            }
        });
    }
    Ok(port)
}

async fn upstream_session(
    stream: TcpStream,
    index: usize,
    share: u64,
    per_host_rate: Option<f64>,
    pad: &str,
    mut start: Start,
) -> anyhow::Result<()> {
    let mut cursor = 0;
    #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
    let read_cursor = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                       response| {
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
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, read_cursor).await?;
    let started = started(&mut start).await?;
    // Each host writes to its own account, one post (padded to `pad`) per event, with a
    // revision that rises with its seq: the relay drops a commit not newer than its
    // account's last.
    let did = format!("did:plc:relaybench{index:014}");
    let mut seq = cursor + 1;
    while seq <= share {
        if let Some(per_second) = per_host_rate {
            let due = started + Duration::from_secs_f64((seq - 1) as f64 / per_second);
            sleep_until(due).await;
        }
        // Everything due now goes in one flush.
        let mut fed = 0;
        while seq <= share && fed < 64 {
            if let Some(per_second) = per_host_rate {
                if started + Duration::from_secs_f64((seq - 1) as f64 / per_second) > now() {
                    break;
                }
            }
            let commit = Commit::with_post(
                i128::from(seq),
                &did,
                &tid(1_780_000_000_000_000 + seq, 0),
                pad,
                "2026-06-01T00:00:00.000Z",
            );
            let mut body: BTreeMap<String, Ipld> =
                serde_ipld_dagcbor::from_slice(&serde_ipld_dagcbor::to_vec(&commit)?)?;
            body.insert(
                "t".to_owned(),
                Ipld::Integer(i128::from(micros_since(started))),
            );
            ws.feed(Message::binary(frame::encode("#commit", &body)))
                .await?;
            seq += 1;
            fed += 1;
        }
        ws.flush().await?;
    }
    // Stay connected: a session that ends looks like a failing host.
    while ws.next().await.is_some() {}
    Ok(())
}

/// What one consumer saw.
#[derive(Default)]
struct Receipts {
    latencies_us: Vec<u64>,
    per_bin: Vec<u64>,
    kicked_at: Vec<u64>,
    finished_us: u64,
}

/// Read relay seqs `1..=events` from `subscribeRepos`, in order, once each; on a
/// `ConsumerTooSlow` frame, reconnect from the cursor it names.
async fn consumer(
    relay: SocketAddr,
    events: u64,
    mut start: Start,
    subscribed: Arc<Notify>,
) -> anyhow::Result<Receipts> {
    let mut receipts = Receipts::default();
    let mut next = 1;
    let mut first = true;
    let mut started = None;
    while next <= events {
        let stream = TcpStream::connect(relay).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{relay}{SUBSCRIBE_REPOS_PATH}?cursor={}", next - 1);
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        if first {
            subscribed.notify_one();
            first = false;
        }
        let started = match started {
            Some(at) => at,
            None => *started.insert(self::started(&mut start).await?),
        };
        loop {
            let Some(message) = ws.next().await else {
                bail!("the relay ended the stream at seq {next} without a word");
            };
            let bytes = match message? {
                Message::Binary(bytes) => bytes,
                Message::Close(close) => {
                    bail!("the relay closed the stream at seq {next} without a word: {close:?}")
                }
                _ => continue,
            };
            match frame::decode(&bytes, &Limits::default())? {
                Incoming::Event(event) => {
                    let seq = event.seq;
                    ensure!(seq == next, "expected seq {next}, got {seq}");
                    let Some(&Ipld::Integer(sent_us)) = event.body.fields().get("t") else {
                        bail!("an event without its send time");
                    };
                    let sent_us = u64::try_from(sent_us)?;
                    let at_us = micros_since(started);
                    receipts.latencies_us.push(at_us.saturating_sub(sent_us));
                    let bin = (at_us / BIN.as_micros() as u64) as usize;
                    if receipts.per_bin.len() <= bin {
                        receipts.per_bin.resize(bin + 1, 0);
                    }
                    receipts.per_bin[bin] += 1;
                    next += 1;
                    if next > events {
                        receipts.finished_us = at_us;
                        break;
                    }
                }
                Incoming::Error(error) if error.error == "ConsumerTooSlow" => {
                    let text = error.message.unwrap_or_default();
                    let cursor: u64 = text
                        .split_once("cursor=")
                        .and_then(|(_, rest)| {
                            rest.split(|c: char| !c.is_ascii_digit())
                                .next()?
                                .parse()
                                .ok()
                        })
                        .with_context(|| format!("a kick without a cursor: {text}"))?;
                    ensure!(
                        cursor == next - 1,
                        "kicked with cursor {cursor} after receiving {}",
                        next - 1
                    );
                    receipts.kicked_at.push(cursor);
                    break;
                }
                other => bail!("unexpected frame: {other:?}"),
            }
        }
    }
    Ok(receipts)
}

async fn run_phase(
    args: &Args,
    phase: &'static str,
    events: u64,
    pace: Option<u64>,
) -> anyhow::Result<Outcome> {
    let (release, start) = watch::channel(None);
    let port = upstreams(args.hosts, events, pace, args.body_bytes, start.clone()).await?;
    let db =
        std::env::temp_dir().join(format!("relay-bench-{}-{phase}.sqlite", std::process::id()));
    let mut relay = RelayProcess::start(db, port, args.hosts)?;
    let result = measure(args, &mut relay, events, &release).await;
    relay.stop();
    let (ingest, delivered, relay_cpu_s, alloc_bytes, allocs, receipts) = result?;
    let mut latencies_us = Vec::new();
    let mut receipts_per_bin = Vec::new();
    let mut kicks = BTreeMap::new();
    for (index, receipt) in receipts.into_iter().enumerate() {
        latencies_us.extend(receipt.latencies_us);
        if receipts_per_bin.len() < receipt.per_bin.len() {
            receipts_per_bin.resize(receipt.per_bin.len(), 0);
        }
        for (bin, count) in receipt.per_bin.into_iter().enumerate() {
            receipts_per_bin[bin] += count;
        }
        if !receipt.kicked_at.is_empty() {
            kicks.insert(index, receipt.kicked_at);
        }
    }
    latencies_us.sort_unstable();
    Ok(Outcome {
        phase,
        events,
        ingest,
        delivered,
        relay_cpu_s,
        alloc_bytes,
        allocs,
        latencies_us,
        receipts_per_bin,
        kicks,
    })
}

type Measured = (Duration, Duration, f64, u64, u64, Vec<Receipts>);

async fn measure(
    args: &Args,
    relay: &mut RelayProcess,
    events: u64,
    release: &watch::Sender<Option<Instant>>,
) -> anyhow::Result<Measured> {
    relay
        .wait_for_metric(
            r#"relay_upstream_hosts{phase="connected"}"#,
            u64::from(args.hosts),
        )
        .await?;
    let subscribed = Arc::new(Notify::new());
    let mut readers = Vec::new();
    for _ in 0..args.consumers {
        readers.push(tokio::spawn(consumer(
            relay.addr,
            events,
            release.subscribe(),
            Arc::clone(&subscribed),
        )));
        subscribed.notified().await;
    }
    relay
        .wait_for_metric("relay_consumers_subscribed", args.consumers as u64)
        .await?;
    let (bytes0, allocs0) = relay.alloc_stats()?;
    let cpu0 = relay.cpu_seconds();
    let started = now();
    release.send_replace(Some(started));
    while relay.metric("relay_events_head_seq").await? < events {
        sleep(Duration::from_millis(20)).await;
    }
    let ingest = now() - started;
    let mut receipts = Vec::new();
    for reader in readers {
        receipts.push(reader.await??);
    }
    let delivered =
        Duration::from_micros(receipts.iter().map(|r| r.finished_us).max().unwrap_or(0));
    let cpu = relay.cpu_seconds() - cpu0;
    let (bytes1, allocs1) = relay.alloc_stats()?;
    Ok((
        ingest,
        delivered,
        cpu,
        bytes1 - bytes0,
        allocs1 - allocs0,
        receipts,
    ))
}

/// Latency CDFs (left) and deliveries per second per consumer over time (right).
fn plot(path: &Path, outcomes: &[Outcome], consumers: usize) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let colors = [RED, BLUE, GREEN];

    let max_ms = outcomes
        .iter()
        .map(|o| percentile_ms(&o.latencies_us, 0.999))
        .fold(1.0, f64::max);
    let mut cdf = ChartBuilder::on(&left)
        .caption("end-to-end latency CDF", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms * 1.05, 0.0..1.0)?;
    cdf.configure_mesh()
        .x_desc("latency (ms), up to the slowest p999")
        .y_desc("fraction of receipts")
        .draw()?;
    for (outcome, color) in outcomes.iter().zip(colors) {
        let n = outcome.latencies_us.len().max(1);
        let step = (n / 2_000).max(1);
        let points = outcome
            .latencies_us
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, &us)| (us as f64 / 1_000.0, (i + 1) as f64 / n as f64));
        cdf.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(outcome.phase)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    cdf.configure_series_labels()
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let per_second = |count: u64| count as f64 / consumers as f64 / BIN.as_secs_f64();
    let max_rate = outcomes
        .iter()
        .flat_map(|o| o.receipts_per_bin.iter().map(|&c| per_second(c)))
        .fold(1.0, f64::max);
    let max_t = outcomes
        .iter()
        .map(|o| o.receipts_per_bin.len() as f64 * BIN.as_secs_f64())
        .fold(1.0, f64::max);
    let mut rates = ChartBuilder::on(&right)
        .caption("delivered events/s per consumer", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_rate * 1.05)?;
    rates
        .configure_mesh()
        .x_desc("seconds since the phase started")
        .y_desc("events/s (100 ms bins)")
        .draw()?;
    for (outcome, color) in outcomes.iter().zip(colors) {
        let points = outcome
            .receipts_per_bin
            .iter()
            .enumerate()
            .map(|(bin, &count)| (bin as f64 * BIN.as_secs_f64(), per_second(count)));
        rates
            .draw_series(LineSeries::new(points, color.stroke_width(1)))?
            .label(outcome.phase)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    rates
        .configure_series_labels()
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
