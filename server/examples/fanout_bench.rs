//! `fanout_bench`: how fast the relay fans events out to many consumers, measured on real
//! loopback sockets in one process (`ci/bench.sh` runs it in release and prints the table).
//!
//! Every run starts a local WebSocket upstream that emits `--events` events as fast as the
//! pipeline takes them (its sends wait on TCP backpressure), connects N consumers with
//! `cursor=0` *before* the first event, and times how long until every consumer has
//! received every event (each consumer also checks it got them in order, with no gap and
//! no duplicate). Three modes per N, same upstream, same consumer code:
//! - `relay`: the real [`relay::Relay`]: SQLite persistence before broadcast, the lifecycle
//!   registry, per-consumer mailboxes, one owner task per consumer writing what its mailbox
//!   holds (up to 64 KiB) and flushing once per batch;
//! - `broadcast`: the least a fan-out can do: one task reads the upstream, decodes each
//!   event (`atproto::frame::decode`, as the relay's workers do) and encodes the same
//!   consumer frame once (`sequenced_frame`, as the relay's sequencer does), and hands it to a
//!   `tokio::sync::broadcast` channel; one task per consumer forwards it with tungstenite,
//!   one send (write + flush) per frame (the relay's writes before issue 24). No
//!   persistence, no lifecycle;
//! - `broadcast_batched`: the same, but a consumer task feeds everything waiting in the
//!   channel and flushes once — the relay's write discipline without its persistence,
//!   lifecycle, mailboxes and memory account: its ceiling.
//!
//! The relay's per-host event-rate limit is off (one local host stands for the whole
//! firehose). Its consumer queue and memory budget are sized to the whole run so nobody can
//! be kicked (the relay has no backpressure from consumers to ingest by design: it kicks
//! instead); the kick counter is printed and must read 0. The consumers share the machine's cores with
//! the server in every mode, so the ratios compare like with like. Nothing here asserts a
//! speed; it measures and prints.

// Real tokio only, never simulated: the determinism rules' ban on `tokio::sync::watch`
// (clippy.toml) is about simulated runs; here its wake order cannot matter.
#![allow(clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use relay::atproto::frame::{self, Incoming, Kind, Limits, SUBSCRIBE_REPOS_PATH};
use relay::atproto::message::Commit;
use relay::atproto::syntax::tid;
use relay::config::ConfigBuilder;
use relay::rt::time::{now, Instant};
use relay::store::Store;
use relay::Relay;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/procfs.rs"]
mod procfs;
use procfs::{check_fd_limit, cpu_seconds};

#[derive(Debug, Parser)]
#[command(about = "Relay fan-out throughput on loopback, against a broadcast-channel baseline")]
struct Args {
    /// Consumer counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    consumers: Vec<usize>,
    /// Events per run (every consumer receives all of them).
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Padding added to each event's post text, bytes (a consumer frame is about 500 bytes
    /// more: the commit object, the CAR, the op).
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Rounds per (mode, consumer count); the table shows the median round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Consumers handshaking at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

/// One measured run.
struct Run {
    mode: Mode,
    consumers: usize,
    /// From releasing the upstream until the server had taken in every event (for the relay:
    /// persisted; for the baseline: handed to the channel).
    ingest: Duration,
    /// Until each consumer had received every event, sorted ascending.
    finished: Vec<Duration>,
    /// CPU time this process (server and consumers) spent from release to all delivered.
    cpu: f64,
    kicked: u64,
    mailbox_high_water: usize,
}

impl Run {
    fn all(&self) -> Duration {
        *self.finished.last().expect("at least one consumer")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.events > 0, "--events must be at least 1");
    ensure!(
        args.consumers.iter().all(|&n| n > 0),
        "consumer counts must be at least 1"
    );
    let most = args.consumers.iter().copied().max().unwrap_or(1);
    // Each consumer holds a socket in this process and the server holds the other end.
    check_fd_limit(2 * most + 64)?;
    let frame_bytes = consumer_frame(1, &pad(args.body_bytes))?.len();
    println!(
        "fanout_bench: events={} body_pad_bytes={} frame_bytes~{} consumers={:?} worker_threads={}",
        args.events,
        args.body_bytes,
        frame_bytes,
        args.consumers,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut table = Vec::new();
    for &consumers in &args.consumers {
        let mut medians = Vec::new();
        for mode in Mode::ALL {
            let mut rounds = Vec::new();
            for _ in 0..args.rounds.max(1) {
                let run = match mode {
                    Mode::Broadcast | Mode::BroadcastBatched => {
                        baseline(&args, consumers, mode).await?
                    }
                    Mode::Relay => relay_run(&args, consumers).await?,
                };
                print_run(&run, args.events);
                rounds.push(run);
            }
            // The round whose all-delivered time is the median stands for the mode.
            rounds.sort_by_key(Run::all);
            medians.push(rounds.swap_remove(rounds.len() / 2));
        }
        table.push(medians);
    }
    println!();
    println!(
        "median of {} round(s). ev/s: events delivered per second of wall time, every consumer's copy counted; \
         per CPU-s: the same per second of this process's CPU time (server and consumers together), \
         which other load on the machine disturbs less",
        args.rounds.max(1)
    );
    println!("| consumers | mode | all delivered (s) | aggregate ev/s | per-consumer ev/s (slowest) | ingest ev/s | process CPU (s) | deliveries per CPU-s | kicked | mailbox high water |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let aggregate = |run: &Run| rate(run.consumers as u64 * args.events, run.all());
    let per_cpu = |run: &Run| run.consumers as f64 * args.events as f64 / run.cpu.max(1e-9);
    for run in table.iter().flatten() {
        println!(
            "| {} | {} | {:.3} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {} | {} |",
            run.consumers,
            run.mode.name(),
            run.all().as_secs_f64(),
            aggregate(run),
            rate(args.events, run.all()),
            rate(args.events, run.ingest),
            run.cpu,
            per_cpu(run),
            run.kicked,
            run.mailbox_high_water,
        );
    }
    println!();
    println!("| consumers | relay / broadcast (wall) | relay / broadcast_batched (wall) | relay / broadcast (per CPU-s) | relay / broadcast_batched (per CPU-s) |");
    println!("|---:|---:|---:|---:|---:|");
    for row in &table {
        let [broadcast, batched, relay] = row.as_slice() else {
            continue;
        };
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            relay.consumers,
            aggregate(relay) / aggregate(broadcast),
            aggregate(relay) / aggregate(batched),
            per_cpu(relay) / per_cpu(broadcast),
            per_cpu(relay) / per_cpu(batched),
        );
    }
    Ok(())
}

/// What serves the consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `tokio::sync::broadcast` + tungstenite, one send (write + flush) per frame.
    Broadcast,
    /// The same, but each consumer task drains what is waiting and flushes once: the
    /// relay's write discipline without its persistence, lifecycle and mailboxes.
    BroadcastBatched,
    /// The relay.
    Relay,
}

impl Mode {
    const ALL: [Mode; 3] = [Self::Broadcast, Self::BroadcastBatched, Self::Relay];

    fn name(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast",
            Self::BroadcastBatched => "broadcast_batched",
            Self::Relay => "relay",
        }
    }
}

fn print_run(run: &Run, events: u64) {
    let per = |d: Duration| rate(events, d);
    let median = run.finished[run.finished.len() / 2];
    println!(
        "{:<17} consumers={:<5} ingest={:>8.3}s ({:>9.0} ev/s)  all_delivered={:>8.3}s  aggregate={:>11.0} ev/s  per_consumer ev/s: slowest={:.0} median={:.0} fastest={:.0}  cpu={:.2}s  kicked={} mailbox_high_water={}",
        run.mode.name(),
        run.consumers,
        run.ingest.as_secs_f64(),
        per(run.ingest),
        run.all().as_secs_f64(),
        rate(run.consumers as u64 * events, run.all()),
        per(run.all()),
        per(median),
        per(run.finished[0]),
        run.cpu,
        run.kicked,
        run.mailbox_high_water,
    );
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn pad(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// The `#commit` the upstream sends for `seq`: a post whose text is `pad`, in a real CAR.
fn commit(seq: u64, pad: &str) -> Commit {
    Commit::with_post(
        i128::from(seq),
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        &tid(1_780_000_000_000_000 + seq, 0),
        pad,
        "2026-06-01T00:00:00.000Z",
    )
}

/// The frame every consumer receives for `seq`, in every mode (the relay's format).
fn consumer_frame(seq: u64, pad: &str) -> anyhow::Result<Vec<u8>> {
    let body = frame::Body::read(&serde_ipld_dagcbor::to_vec(&commit(seq, pad))?)?;
    Ok(frame::sequenced_frame(Kind::Commit, &body, seq).0)
}

/// A WebSocket upstream: every subscription gets `cursor+1 ..= limit`, sent as fast as the
/// socket takes them; the run starts when `limit` is raised.
async fn upstream(body_bytes: usize) -> anyhow::Result<(u16, watch::Sender<u64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    // Sessions end when the returned sender is dropped (or their socket fails).
    let (limit, limits) = watch::channel(0u64);
    let pad: Arc<str> = pad(body_bytes).into();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut limit = limits.clone();
            let pad = Arc::clone(&pad);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut next = 1;
                loop {
                    let upto = *limit.borrow_and_update();
                    while next <= upto {
                        let sent = frame::encode("#commit", &commit(next, &pad));
                        if ws.send(Message::binary(sent)).await.is_err() {
                            return;
                        }
                        next += 1;
                    }
                    if limit.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, limit))
}

/// Connect `count` consumers to `ws://addr/xrpc/com.atproto.sync.subscribeRepos?cursor=0`, each reading until it has
/// `events` frames in order; they wait for `go` before timing starts. Returns the readers.
async fn consumers(
    addr: SocketAddr,
    count: usize,
    events: u64,
    concurrency: usize,
    start: watch::Receiver<Option<Instant>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Duration>>>> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut connecting = Vec::with_capacity(count);
    for _ in 0..count {
        let gate = Arc::clone(&gate);
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (ws, _) = tokio_tungstenite::client_async(
                format!("ws://{addr}{SUBSCRIBE_REPOS_PATH}?cursor=0"),
                stream,
            )
            .await?;
            anyhow::Ok(ws)
        }));
    }
    let mut readers = Vec::with_capacity(count);
    for handshake in connecting {
        let mut ws = handshake.await??;
        let mut start = start.clone();
        readers.push(tokio::spawn(async move {
            let mut expected = 1;
            while expected <= events {
                let message = match ws.next().await {
                    Some(message) => message?,
                    None => bail!("stream ended after {} events", expected - 1),
                };
                let Message::Binary(bytes) = message else {
                    continue;
                };
                let seq = frame_seq(&bytes)?;
                ensure!(seq == expected, "expected seq {expected}, got {seq}");
                expected += 1;
            }
            let finished = now();
            let started = *start.wait_for(Option::is_some).await?;
            Ok(finished - started.expect("waited for it"))
        }));
    }
    Ok(readers)
}

/// The body's `seq`, without checking the rest of the frame (the consumers' work stays
/// small, as the JSON prefix parse it replaces was).
fn frame_seq(bytes: &[u8]) -> anyhow::Result<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let mut reader = std::io::Cursor::new(bytes);
    let _header: ipld_core::ipld::Ipld =
        serde_ipld_dagcbor::de::from_reader_once(&mut reader).context("not a frame")?;
    let body: Seq = serde_ipld_dagcbor::from_slice(&bytes[reader.position() as usize..])
        .context("not an event frame")?;
    Ok(body.seq)
}

async fn collect(
    readers: Vec<tokio::task::JoinHandle<anyhow::Result<Duration>>>,
) -> anyhow::Result<Vec<Duration>> {
    let mut finished = Vec::with_capacity(readers.len());
    for reader in readers {
        finished.push(reader.await??);
    }
    finished.sort();
    Ok(finished)
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..120_000 {
        if condition() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("gave up waiting until {what}")
}

async fn relay_run(args: &Args, count: usize) -> anyhow::Result<Run> {
    let db = temp_db(count)?;
    Store::open(&db)?.add_hosts(["127.0.0.1"])?;
    let (port, limit) = upstream(args.body_bytes).await?;
    let mut builder = ConfigBuilder::new();
    for assignment in [
        "server.listen=127.0.0.1:0".to_owned(),
        format!("store.path={}", db.display()),
        format!("upstream.port={port}"),
        "upstream.startup_jitter_ms=0".to_owned(),
        // The upstream runs on loopback, which the egress rule refuses by default.
        r#"upstream.egress_allow=["127.0.0.0/8"]"#.to_owned(),
        // It speaks plain WebSocket.
        r#"upstream.insecure_ws_hosts=["127.0.0.1"]"#.to_owned(),
        format!("server.max_connections={}", count + 64),
        // Every consumer dials from 127.0.0.1: no per-address limit (256 by default).
        "server.max_connections_per_ip=0".to_owned(),
        "server.idle_timeout_ms=3600000".to_owned(),
        // One upstream host plays the whole firehose: the per-host event-rate limit
        // (50 events/s by default, for fairness between hosts) would measure itself.
        "upstream.host_events_per_second=0".to_owned(),
        // Room for the whole run: measure throughput, not the kick policy. The memory
        // account counts a frame once per mailbox holding it, so the whole run's frames in
        // every mailbox must fit the budget too (frames are shared: real memory is far less).
        format!("fanout.consumer_queue_max={}", args.events.max(1)),
        format!(
            "memory.budget_bytes={}",
            (count as u64 * args.events * (args.body_bytes as u64 + 512)).max(1 << 28)
        ),
        "log.level=warn".to_owned(),
    ] {
        builder = builder.with_set(&assignment)?;
    }
    let relay = Relay::bind(builder.build()?).await?;
    let addr = relay.local_addr()?;
    let observer = relay.observer();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    wait_for("the upstream is connected", || {
        observer
            .upstreams()
            .in_phase(relay::upstream::HostPhase::Connected)
            == 1
    })
    .await?;
    let (started, start) = watch::channel(None);
    let readers = consumers(addr, count, args.events, args.connect_concurrency, start).await?;
    wait_for("every consumer is registered", || {
        observer.events().consumers == count
    })
    .await?;

    let cpu0 = cpu_seconds(Path::new("/proc/self/stat"));
    let t0 = now();
    started.send_replace(Some(t0));
    limit.send_replace(args.events);
    wait_for("every event is persisted", || {
        observer.events().head_seq == args.events
    })
    .await?;
    let ingest = now() - t0;
    let finished = collect(readers).await?;
    let cpu = cpu_seconds(Path::new("/proc/self/stat")) - cpu0;
    let stats = observer.events();
    let _ = stop.send(());
    server.await?;
    remove_db(&db);
    Ok(Run {
        cpu,
        mode: Mode::Relay,
        consumers: count,
        ingest,
        finished,
        kicked: stats.consumers_kicked_total,
        mailbox_high_water: stats.mailbox_high_water,
    })
}

async fn baseline(args: &Args, count: usize, mode: Mode) -> anyhow::Result<Run> {
    let batched = mode == Mode::BroadcastBatched;
    let (port, limit) = upstream(args.body_bytes).await?;
    let capacity = usize::try_from(args.events)?.max(16);
    let (frames, _) = broadcast::channel::<Bytes>(capacity);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept_frames = frames.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut receiver = accept_frames.subscribe();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Ok(frame) = receiver.recv().await {
                    if !batched {
                        if ws.send(Message::Binary(frame)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if ws.feed(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                    while let Ok(frame) = receiver.try_recv() {
                        if ws.feed(Message::Binary(frame)).await.is_err() {
                            return;
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (ingested, mut ingest_progress) = watch::channel(0u64);
    let ingest_frames = frames.clone();
    let ingest = tokio::spawn(async move {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://127.0.0.1:{port}{SUBSCRIBE_REPOS_PATH}?cursor=0"),
            stream,
        )
        .await?;
        let (_sink, mut upstream) = ws.split();
        while let Some(message) = upstream.next().await {
            let Message::Binary(bytes) = message? else {
                continue;
            };
            // The same work the relay's worker and sequencer do per event: decode and check
            // the upstream frame, then encode the consumer frame once for everyone.
            let Incoming::Event(event) = frame::decode(&bytes, &Limits::default())? else {
                bail!("not an event");
            };
            let seq = event.seq;
            let (encoded, _) = frame::sequenced_frame(event.kind, &event.body, seq);
            // No receivers yet only before the run starts; nothing is sent then.
            let _ = ingest_frames.send(Bytes::from(encoded));
            ingested.send_replace(seq);
        }
        anyhow::Ok(())
    });
    let (started, start) = watch::channel(None);
    let readers = consumers(addr, count, args.events, args.connect_concurrency, start).await?;
    wait_for("every consumer is subscribed", || {
        frames.receiver_count() == count
    })
    .await?;

    let cpu0 = cpu_seconds(Path::new("/proc/self/stat"));
    let t0 = now();
    started.send_replace(Some(t0));
    limit.send_replace(args.events);
    ingest_progress
        .wait_for(|&seq| seq == args.events)
        .await
        .context("the baseline's upstream reader stopped")?;
    let ingest_time = now() - t0;
    let finished = collect(readers).await?;
    let cpu = cpu_seconds(Path::new("/proc/self/stat")) - cpu0;
    acceptor.abort();
    ingest.abort();
    Ok(Run {
        cpu,
        mode,
        consumers: count,
        ingest: ingest_time,
        finished,
        kicked: 0,
        mailbox_high_water: 0,
    })
}

fn temp_db(consumers: usize) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "relay-fanout-bench-{}-{consumers}.sqlite",
        std::process::id()
    ));
    remove_db(&path);
    Ok(path)
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
