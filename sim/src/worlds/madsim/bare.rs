//! The bare-engine baseline (issue 8): a plain madsim program with a scenario's shape and
//! none of the relay or the harness, so the tunnel's cost can be read as a ratio.
//!
//! Same as the tunnel's world: the madsim config (per-packet latency), the host table
//! (`upstream::plan`, drawn from the same seed: names, IPs, dead hosts of every kind and flaky hosts, handshake
//! latencies, event intervals), one node per host serving events at the same times
//! (catch-up from a cursor, flaky hosts cutting connections in their down windows) — as the
//! tunnel's hosts served them before atproto, small JSON lines, not `#commit` frames —
//! one client node dialling every host by name after a startup jitter and re-dialling with
//! capped exponential backoff, and a prober node sending an HTTP GET on the scenario's
//! period to a listener on the client node.
//!
//! Left out on purpose, because they are what the ratio measures: WebSocket framing (frames
//! are newline-delimited), the relay's admission, sequencing, SQLite, fan-out, metrics and
//! the CPU model, the tunnel's trace, samples and oracles, and rt's flow control. Hostile
//! hosts are served like polite ones (their misbehaviour is the relay's work too).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::{NetSim, TcpListener, TcpStream};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, Runtime};
use relay::rt::time::{now, sleep, sleep_until, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{host_node, send_latency, RELAY_PORT};
use crate::actors::upstream::{plan, DeadHost, HostPlan, UPSTREAM_PORT};
use crate::scenario::Scenario;

/// What one bare run did, for comparing its volume with the tunnel's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BareOutcome {
    /// Event frames the client node read.
    pub frames: u64,
    /// Connections the client node got established.
    pub connections: u64,
    /// Probes answered.
    pub probes: u64,
    /// Wall time of the run.
    pub wall: Duration,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    connections: AtomicU64,
    probes: AtomicU64,
}

/// Run the bare program with `scenario`'s shape (its `[upstreams]`, `[network]`,
/// `[prober]`, duration and the relay's jitter and backoff settings) for `seed`, on a
/// fresh thread as [`super::Madsim`] does (so both pay for the same thread start).
pub fn run(scenario: &Scenario, seed: u64) -> BareOutcome {
    let scenario = scenario.clone();
    #[allow(clippy::disallowed_methods)] // the benchmark's own thread, outside any simulation
    let runner = std::thread::Builder::new()
        .name(format!("bare-seed-{seed}"))
        .spawn(move || run_on_this_thread(&scenario, seed))
        .expect("cannot start a bare-engine thread");
    runner.join().expect("the bare program does not panic")
}

fn run_on_this_thread(scenario: &Scenario, seed: u64) -> BareOutcome {
    #[allow(clippy::disallowed_methods)] // wall time of the benchmark, never of the world
    let wall_start = std::time::Instant::now();
    let mut config = madsim::Config::default();
    config.net.send_latency = send_latency(scenario.network.latency_ms);
    let runtime = Runtime::with_seed_and_config(seed, config);
    let counters = Arc::new(Counters::default());
    let world_counters = Arc::clone(&counters);
    let scenario = scenario.clone();
    runtime.block_on(async move { world(scenario, world_counters).await });
    drop(runtime);
    BareOutcome {
        frames: counters.frames.load(Ordering::SeqCst),
        connections: counters.connections.load(Ordering::SeqCst),
        probes: counters.probes.load(Ordering::SeqCst),
        wall: wall_start.elapsed(),
    }
}

async fn world(scenario: Scenario, counters: Arc<Counters>) {
    let handle = Handle::current();
    let world_start = now();
    let net = NetSim::current();
    let plans: Vec<Arc<HostPlan>> = scenario
        .upstreams
        .as_ref()
        .map(|spec| {
            plan(spec, scenario.relay.upstream.max_frame_bytes)
                .into_iter()
                .map(Arc::new)
                .collect()
        })
        .unwrap_or_default();
    for plan in &plans {
        let node = host_node(&handle, &net, plan);
        match plan.dead {
            None => {
                node.spawn(serve(Arc::clone(plan), world_start));
            }
            Some(DeadHost::BlackHole) => {
                node.spawn(black_hole());
            }
            Some(DeadHost::Refused | DeadHost::Unresolved) => {}
        }
    }
    let client_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let client = handle.create_node().name("client").ip(client_ip).build();
    let upstream = scenario.relay.upstream.clone();
    for plan in &plans {
        let hostname = plan.hostname.clone();
        let counters = Arc::clone(&counters);
        let jitter =
            Duration::from_millis(thread_rng().gen_range(0..upstream.startup_jitter_ms.max(1)));
        let backoff = (
            Duration::from_millis(upstream.backoff_base_ms),
            Duration::from_millis(upstream.backoff_cap_ms),
        );
        client.spawn(async move {
            sleep(jitter).await;
            subscribe(hostname, backoff, counters).await;
        });
    }
    client.spawn(answer_probes());
    if let Some(prober) = scenario.prober.clone() {
        let counters = Arc::clone(&counters);
        let node = handle
            .create_node()
            .name("prober")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
            .build();
        node.spawn(async move {
            sleep(Duration::from_secs(prober.initial_delay_s)).await;
            let target = SocketAddr::new(client_ip, RELAY_PORT);
            loop {
                let probe = probe(target, &prober.path);
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_secs(prober.timeout_s), probe).await
                {
                    counters.probes.fetch_add(1, Ordering::SeqCst);
                }
                sleep(Duration::from_secs(prober.period_s)).await;
            }
        });
    }
    sleep_until(world_start + Duration::from_secs(scenario.duration_s)).await;
}

/// A host's server: per connection, read the cursor line, then send the frames due.
async fn serve(plan: Arc<HostPlan>, world_start: Instant) {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], UPSTREAM_PORT)))
        .await
        .expect("a bare host binds its port");
    while let Ok((stream, _)) = listener.accept().await {
        madsim::task::spawn(session(Arc::clone(&plan), stream, world_start));
    }
}

/// A black hole (a table's unreachable host): accept, read until the client gives up,
/// never answer.
async fn black_hole() {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], UPSTREAM_PORT)))
        .await
        .expect("a bare host binds its port");
    while let Ok((mut stream, _)) = listener.accept().await {
        madsim::task::spawn(async move {
            let mut request = [0; 1024];
            while matches!(stream.read(&mut request).await, Ok(read) if read > 0) {}
        });
    }
}

async fn session(plan: Arc<HostPlan>, stream: TcpStream, world_start: Instant) {
    let since_start = || now().saturating_duration_since(world_start);
    if plan
        .flap
        .as_ref()
        .is_some_and(|flap| flap.is_down(since_start()))
    {
        return;
    }
    let (read, mut write) = tokio::io::split(stream);
    let mut cursor_line = String::new();
    if BufReader::new(read)
        .read_line(&mut cursor_line)
        .await
        .is_err()
    {
        return;
    }
    let cursor: u64 = cursor_line.trim().parse().unwrap_or(0);
    sleep(plan.handshake_latency).await;
    let mut seq = cursor + 1;
    while plan.wait_due(seq, world_start).await {
        let frame = json_line(&plan, seq);
        if write_flushed(&mut write, frame.as_bytes()).await.is_err() {
            return;
        }
        seq += 1;
    }
}

/// Event `seq` of `plan` as a newline-delimited JSON frame: the tunnel's private protocol
/// before atproto, kept here because the baseline's cost is what it was measured with
/// (`{"seq":N,"kind":"commit","body":{"host":…,"n":N,"pad":…}}`).
fn json_line(plan: &HostPlan, seq: u64) -> String {
    let pad = match plan.body_pad_bytes {
        0 => String::new(),
        bytes => format!(r#","pad":"{}""#, "x".repeat(bytes as usize)),
    };
    format!(
        "{{\"seq\":{seq},\"kind\":\"commit\",\"body\":{{\"host\":\"{}\",\"n\":{seq}{pad}}}}}\n",
        plan.hostname
    )
}

/// The client's side of one host: dial, send the cursor, count frames; on any failure
/// wait out a capped exponential backoff (reset after a session that got frames).
async fn subscribe(hostname: String, (base, cap): (Duration, Duration), counters: Arc<Counters>) {
    let mut cursor = 0u64;
    let mut delay = base;
    loop {
        if let Ok(stream) = TcpStream::connect((hostname.as_str(), UPSTREAM_PORT)).await {
            counters.connections.fetch_add(1, Ordering::SeqCst);
            let (read, mut write) = tokio::io::split(stream);
            let cursor_line = format!("{cursor}\n");
            if write_flushed(&mut write, cursor_line.as_bytes())
                .await
                .is_ok()
            {
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(seq) = frame_seq(&line) {
                        cursor = cursor.max(seq);
                        counters.frames.fetch_add(1, Ordering::SeqCst);
                        delay = base;
                    }
                }
            }
        }
        sleep(delay).await;
        delay = (delay * 2).min(cap);
    }
}

/// The `seq` of a newline-delimited frame `{"seq":N,...}`.
fn frame_seq(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(',')?;
    rest[..end].parse().ok()
}

/// The client node's probe listener: one fixed `200 ok` per connection.
async fn answer_probes() {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], RELAY_PORT)))
        .await
        .expect("the bare client binds its probe port");
    while let Ok((mut stream, _)) = listener.accept().await {
        madsim::task::spawn(async move {
            let mut request = [0u8; 1024];
            if stream.read(&mut request).await.unwrap_or(0) > 0 {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = write_flushed(&mut stream, answer).await;
            }
        });
    }
}

async fn probe(target: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(target).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n");
    write_flushed(&mut stream, request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("probe answered without 200"))
    }
}

/// Write `bytes` and flush: madsim's TCP sends what was written only on flush.
async fn write_flushed(
    stream: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_seq_reads_the_leading_field() {
        assert_eq!(frame_seq(r#"{"seq":42,"kind":"commit"}"#), Some(42));
        assert_eq!(frame_seq(r#"{"kind":"commit"}"#), None);
        assert_eq!(frame_seq(r#"{"seq":x,"kind":"commit"}"#), None);
    }
}
