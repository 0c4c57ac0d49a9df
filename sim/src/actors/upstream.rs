//! Upstream host actors and the host table: generated, or loaded from a file.
//!
//! Every host is its own simulated node with its own IP and DNS name, serving atproto's
//! firehose, `ws://<name>:80/xrpc/com.atproto.sync.subscribeRepos?cursor=N`, in binary
//! frames. A host's event log is a pure function of time: event `n` exists from its
//! [`Schedule`]'s offset after the world started (`n · interval`, or in bursts), so a
//! subscriber that resumes from cursor `c` is sent `c+1 ..` (the catch-up), then live
//! events as they fall due. What event `n` is — a `#commit` of one of the host's accounts,
//! now and then an `#identity` or an `#account` — is [`super::repo`]'s. Flaky hosts alternate up and down windows (down: new connections are dropped, live
//! ones cut); dead hosts never answer, each in one of the ways of [`DeadHost`]. A polite
//! host's link can be made slower for a while ([`LinkDelay`], the `hosts_latency` fault). Hostile
//! hosts (numbered after the polite ones) play one misbehaviour each: [`super::hostile`].
//!
//! A loaded table ([`crate::scenario::HostTable`]) gives the names and who is dead: an
//! `online` host is a polite host drawn as the generator draws one (flaky by
//! `flaky_fraction`), an `offline` one is [`DeadHost::Refused`], and the `unreachable` ones
//! alternate in file order between [`DeadHost::Unresolved`] (the first, third, …) and
//! [`DeadHost::BlackHole`] (the second, fourth, …), so both costs of a host that never
//! answered are played whatever the seed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::SinkExt;
use madsim::rand::Rng;
use relay::atproto::frame::SUBSCRIBE_REPOS_PATH;
use relay::rt::net::{TcpListener, TcpStream};
use relay::rt::time::{now, sleep, sleep_until, Instant};
use relay::upstream::egress::Cidr;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use super::repo::{Repos, Schedule};
use super::rng::thread_rng;
use super::TraceSink;
use crate::scenario::{Between, HostStatus, HostileKind, RateSpec, UpstreamsSpec};
use crate::trace::Event;

/// Port every upstream host listens on.
pub const UPSTREAM_PORT: u16 = 80;

/// A flaky host's up/down rhythm.
#[derive(Clone, Debug)]
pub struct Flap {
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

    /// Whether the host is down `since_start` into the world.
    pub fn is_down(&self, since_start: Duration) -> bool {
        self.until.is_none_or(|until| since_start < until) && self.position(since_start) >= self.up
    }

    /// How long the host stays down from `since_start` (zero if it is up then).
    pub fn down_for(&self, since_start: Duration) -> Duration {
        if !self.is_down(since_start) {
            return Duration::ZERO;
        }
        let up_again = since_start + (self.cycle() - self.position(since_start));
        let up_again = self.until.map_or(up_again, |until| up_again.min(until));
        up_again.saturating_sub(since_start)
    }

    /// When the next down window after `since_start` begins, if any.
    pub fn next_down(&self, since_start: Duration) -> Option<Duration> {
        let position = self.position(since_start);
        let next = if position < self.up {
            since_start + (self.up - position)
        } else {
            since_start + (self.cycle() - position) + self.up
        };
        self.until.is_none_or(|until| next < until).then_some(next)
    }
}

/// How a host that never answers fails the relay's attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadHost {
    /// Its node is up and nothing listens: connections are refused (`dead_fraction`, a
    /// table's `offline` hosts).
    Refused,
    /// Its name has no DNS record: the relay cannot resolve it (a table's `unreachable`
    /// hosts).
    Unresolved,
    /// Accepts connections and never answers the handshake: the relay's attempt runs into
    /// its connect timeout (a table's `unreachable` hosts).
    BlackHole,
}

impl DeadHost {
    /// The snake_case name used in the trace.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Unresolved => "unresolved",
            Self::BlackHole => "black_hole",
        }
    }
}

/// One host of the world.
#[derive(Clone, Debug)]
pub struct HostPlan {
    /// Its index in the world's host list: its accounts' DIDs name it ([`super::repo::did`]).
    pub index: u32,
    /// DNS name (also the node name).
    pub hostname: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// How it never answers, if it is dead.
    pub dead: Option<DeadHost>,
    /// Delay before completing a WebSocket handshake.
    pub handshake_latency: Duration,
    /// When it sends its events.
    pub schedule: Schedule,
    /// Up/down rhythm, for flaky hosts.
    pub flap: Option<Flap>,
    /// Filler in every commit (one more block in its CAR), bytes.
    pub body_pad_bytes: u32,
    /// The misbehaviour a hostile host plays (`None`: a polite host).
    pub hostile: Option<HostileKind>,
    /// The relay's frame limit, bytes: an `oversize` host sends one byte more.
    pub frame_limit_bytes: usize,
    /// Extra latency on what it sends, while a `hosts_latency` fault holds it.
    pub link_delay: Arc<LinkDelay>,
    /// Its repositories' prebuilt blocks, built at its first event: this world's, dropped
    /// with the plan.
    pub repos: OnceLock<Repos>,
}

/// Extra one-way latency on what a polite host sends the relay (its handshake answer and
/// its event frames), set by the `hosts_latency` fault, and how many sends it has held
/// back. Applied by the host itself, as its sends leave: the simulated networks have one
/// latency for every link (madsim 0.2's `send_latency`), none per link.
#[derive(Debug, Default)]
pub struct LinkDelay {
    /// The extra latency, microseconds (0: none).
    extra_us: AtomicU64,
    /// Sends held back so far.
    delayed: AtomicU64,
}

impl LinkDelay {
    /// Make what the host sends from now on arrive `extra` later (zero: on time again).
    pub fn set(&self, extra: Duration) {
        self.extra_us
            .store(extra.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many sends it has held back so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Hold back something the host sends at `sent` until it would arrive with the extra
    /// latency; returns at once (without yielding) when there is none.
    async fn hold(&self, sent: Instant) {
        let extra_us = self.extra_us.load(Ordering::Relaxed);
        if extra_us == 0 {
            return;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        sleep_until(sent + Duration::from_micros(extra_us)).await;
    }
}

/// A realistic-looking, seed-independent hostname for host `index`: mostly hosted
/// multi-tenant servers, some self-hosted names on assorted TLDs.
pub fn hostname(index: u32) -> String {
    const REGIONS: [&str; 4] = ["us-east", "us-west", "eu-central", "ap-south"];
    const TLDS: [&str; 5] = ["dev", "net", "social", "org", "io"];
    match index % 10 {
        0..=6 => format!(
            "pds-{index:05}.{}.host.example",
            REGIONS[(index % 4) as usize]
        ),
        7 | 8 => format!("pds.user{index}.{}", TLDS[(index % 5) as usize]),
        _ => format!("bsky.team-{index}.example"),
    }
}

/// Draw the host table for `spec` from the seeded RNG: the polite hosts (generated, or the
/// loaded table's), then the hostile ones (so a hostile cast leaves the polite hosts' draws
/// as they were). `frame_limit_bytes` is the relay's `upstream.max_frame_bytes`.
pub fn plan(spec: &UpstreamsSpec, frame_limit_bytes: usize) -> Vec<HostPlan> {
    let mut rng = thread_rng();
    let polite = spec.polite_hosts();
    // The table's `unreachable` hosts so far, to alternate their kinds of silence.
    let mut unreachable = 0_u32;
    let mut hosts: Vec<HostPlan> = (0..polite)
        .map(|index| {
            // The name and whether it is dead: drawn for a generated host, read from the
            // table's status otherwise.
            let (name, dead) = match &spec.table {
                None => (
                    hostname(index),
                    rng.gen_bool(spec.dead_fraction)
                        .then_some(DeadHost::Refused),
                ),
                Some(table) => {
                    let row = &table.hosts[index as usize];
                    let dead = match row.status {
                        HostStatus::Online => None,
                        HostStatus::Offline => Some(DeadHost::Refused),
                        HostStatus::Unreachable => {
                            unreachable += 1;
                            Some(if unreachable % 2 == 1 {
                                DeadHost::Unresolved
                            } else {
                                DeadHost::BlackHole
                            })
                        }
                    };
                    (row.host.clone(), dead)
                }
            };
            let flaky = dead.is_none() && rng.gen_bool(spec.flaky_fraction);
            let mut draw = |range: Between<u64>| rng.gen_range(range.min..=range.max);
            let handshake_latency = Duration::from_millis(draw(spec.handshake_latency_ms));
            let schedule = Schedule::regular(Duration::from_secs(draw(spec.event_interval_s)));
            let flap = flaky.then(|| {
                let up = Duration::from_secs(draw(spec.flaky_up_s));
                let down = Duration::from_secs(draw(spec.flaky_down_s));
                let offset = Duration::from_millis(draw(Between {
                    min: 0,
                    max: (up + down).as_millis() as u64 - 1,
                }));
                Flap {
                    up,
                    down,
                    offset,
                    until: spec.flaky_until_s.map(Duration::from_secs),
                }
            });
            HostPlan {
                index,
                hostname: name,
                ip: host_ip(index),
                dead,
                handshake_latency,
                schedule,
                flap,
                body_pad_bytes: spec.body_pad_bytes,
                hostile: None,
                frame_limit_bytes,
                link_delay: Arc::default(),
                repos: OnceLock::new(),
            }
        })
        .collect();
    if let Some(rate) = &spec.rate {
        apply_rate_model(rate, spec, &mut hosts, &mut rng);
    }
    if let Some(hostile) = &spec.hostile {
        let quickest = Duration::from_secs(spec.event_interval_s.min);
        for offset in 0..hostile.hosts {
            let index = polite + offset;
            let kind = if hostile.draw {
                hostile.kinds[rng.gen_range(0..hostile.kinds.len())]
            } else {
                hostile.kinds[offset as usize % hostile.kinds.len()]
            };
            let handshake_latency = Duration::from_millis(
                rng.gen_range(spec.handshake_latency_ms.min..=spec.handshake_latency_ms.max),
            );
            let schedule = Schedule::regular(match kind {
                HostileKind::Flood => quickest / hostile.flood_factor,
                _ => quickest,
            });
            hosts.push(HostPlan {
                index,
                hostname: hostname(index),
                ip: host_ip(index),
                dead: None,
                handshake_latency,
                schedule,
                flap: None,
                body_pad_bytes: spec.body_pad_bytes,
                hostile: Some(kind),
                frame_limit_bytes,
                link_delay: Arc::default(),
                repos: OnceLock::new(),
            });
        }
    }
    hosts
}

/// The longest interval the rate model gives a host (a nearly silent one): a day.
const RATE_INTERVAL_MAX: Duration = Duration::from_secs(86_400);

/// Replace the live polite hosts' drawn schedules with the rate model's
/// ([`crate::scenario::RateSpec`]): the shard hosts share `shard_share` of the total
/// equally, the others the rest by log-normal weights drawn from the world's seed; each
/// host's events come in bursts when `burst_mean` is above 1 (run sizes from a seed drawn
/// then).
fn apply_rate_model(
    rate: &RateSpec,
    spec: &UpstreamsSpec,
    hosts: &mut [HostPlan],
    rng: &mut impl Rng,
) {
    let is_shard = |index: usize| {
        spec.table
            .as_ref()
            .is_some_and(|table| table.hosts[index].kind.as_deref() == Some("bsky"))
    };
    let live: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].dead.is_none())
        .collect();
    let shards = live.iter().filter(|&&i| is_shard(i)).count();
    let tail = live.len() - shards;
    let shard_share = match (shards, tail) {
        (0, _) => 0.0,
        (_, 0) => 1.0,
        _ => rate.shard_share,
    };
    // Box–Muller: a standard normal from two uniforms.
    let mut standard_normal = || {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let weights: Vec<(usize, f64)> = live
        .iter()
        .filter(|&&i| !is_shard(i))
        .map(|&i| (i, (rate.tail_sigma * standard_normal()).exp()))
        .collect();
    let weight_sum: f64 = weights.iter().map(|(_, weight)| weight).sum();
    let total = rate.events_per_second_total;
    let burst_seed = (rate.burst_mean > 1.0).then(|| rng.gen::<u64>());
    let schedule = |index: usize, per_second: f64| {
        let interval =
            Duration::from_secs_f64((1.0 / per_second).min(RATE_INTERVAL_MAX.as_secs_f64()))
                .max(Duration::from_micros(1));
        match burst_seed {
            Some(seed) => Schedule::bursts(
                interval,
                rate.burst_mean,
                Duration::from_millis(rate.burst_gap_ms),
                seed ^ index as u64,
            ),
            None => Schedule::regular(interval),
        }
    };
    for &index in live.iter().filter(|&&i| is_shard(i)) {
        hosts[index].schedule = schedule(index, total * shard_share / shards as f64);
    }
    for (index, weight) in weights {
        hosts[index].schedule = schedule(index, total * (1.0 - shard_share) * weight / weight_sum);
    }
}

/// The simulated network every [`host_ip`] is in (a private range: the relay's egress rule
/// must allow it, see `RelayPlacement`).
pub const HOST_NETWORK: Cidr = Cidr::V4(Ipv4Addr::new(172, 16, 0, 0), 16);

fn host_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, (index / 250) as u8, (index % 250) as u8 + 1)
}

impl HostPlan {
    /// Wait until event `seq` falls due and return its frame, or, if the host goes down
    /// first (flaky hosts), wait until then and return `None`: the live connection is cut.
    pub async fn next_frame(&self, seq: u64, world_start: Instant) -> Option<Vec<u8>> {
        self.wait_due(seq, world_start)
            .await
            .then(|| self.frame(seq, seq))
    }

    /// Wait until event `seq` falls due (`true`), or, if the host goes down first (flaky
    /// hosts), until then (`false`).
    pub async fn wait_due(&self, seq: u64, world_start: Instant) -> bool {
        let due = self.schedule.offset(seq);
        let since_start = now().saturating_duration_since(world_start);
        let cut_at = self
            .flap
            .as_ref()
            .and_then(|flap| flap.next_down(since_start));
        if let Some(cut_at) = cut_at.filter(|cut_at| *cut_at <= due) {
            sleep_until(world_start + cut_at).await;
            return false;
        }
        sleep_until(world_start + due).await;
        true
    }

    /// The host's repositories (built at the first call).
    pub fn repos(&self) -> &Repos {
        self.repos
            .get_or_init(|| Repos::new(self.index, self.schedule.clone(), self.body_pad_bytes))
    }

    /// The frame of event `n` sent under sequence number `seq`.
    pub fn frame(&self, seq: u64, n: u64) -> Vec<u8> {
        self.repos().frame(seq, n)
    }

    /// When event `n` falls due.
    pub fn due(&self, n: u64, world_start: Instant) -> Instant {
        world_start + self.schedule.offset(n)
    }
}

/// The address a simulated host listens on: every address of its node, [`UPSTREAM_PORT`].
pub fn simulated_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], UPSTREAM_PORT))
}

/// The host's server on `listen`: accept subscriptions forever.
pub async fn serve(plan: Arc<HostPlan>, listen: SocketAddr, sink: TraceSink, world_start: Instant) {
    let listener = TcpListener::bind(listen).await.unwrap_or_else(|error| {
        panic!(
            "upstream host {} cannot bind {listen}: {error}",
            plan.hostname
        )
    });
    while let Ok((stream, _)) = listener.accept().await {
        let plan = Arc::clone(&plan);
        match plan.hostile {
            Some(kind) => tokio::spawn(super::hostile::session(
                kind,
                plan,
                stream,
                sink.clone(),
                world_start,
            )),
            None => tokio::spawn(subscription(plan, stream, sink.clone(), world_start)),
        };
    }
}

/// A black hole's server on `listen`: accept every connection and never answer.
pub async fn black_hole(hostname: String, listen: SocketAddr) {
    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|error| panic!("upstream host {hostname} cannot bind {listen}: {error}"));
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(hold_unanswered(stream));
    }
}

/// Read the upgrade request and never answer: hold the connection until the peer gives up.
pub async fn hold_unanswered(mut stream: TcpStream) {
    let mut request = [0; 1024];
    while matches!(stream.read(&mut request).await, Ok(read) if read > 0) {}
}

/// A WebSocket subscriber on `stream`: the server handshake, after the host's handshake
/// latency, and the cursor the subscriber asked to resume from (0 without one). A request
/// for any other path than the firehose's is answered 404.
pub async fn accept(
    plan: &HostPlan,
    stream: TcpStream,
) -> Option<(tokio_tungstenite::WebSocketStream<TcpStream>, u64)> {
    sleep(plan.handshake_latency).await;
    let mut cursor = 0;
    #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
    let read_cursor = |request: &Request, response: Response| {
        if request.uri().path() != SUBSCRIBE_REPOS_PATH {
            let mut refusal = ErrorResponse::new(Some("not found".to_owned()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
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
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        read_cursor,
        Some(super::actor_ws_config()),
    )
    .await
    .ok()?;
    Some((ws, cursor))
}

async fn subscription(
    plan: Arc<HostPlan>,
    stream: TcpStream,
    sink: TraceSink,
    world_start: Instant,
) {
    let since_start = || now().saturating_duration_since(world_start);
    if plan
        .flap
        .as_ref()
        .is_some_and(|flap| flap.is_down(since_start()))
    {
        return; // down: the connection is dropped before the handshake
    }
    // The handshake's answer leaves once the request is in; a slowed link holds it back.
    plan.link_delay.hold(now()).await;
    let Some((mut ws, cursor)) = accept(&plan, stream).await else {
        return;
    };
    sink.record(&plan.hostname, Event::Subscribed { cursor });
    let subscribed = now();
    let mut seq = cursor + 1;
    loop {
        let Some(frame) = plan.next_frame(seq, world_start).await else {
            // Going down: the live connection is cut, and the relay's reconnect is timed
            // from when the host is back (`reconnect_latency_max`).
            let down_for = plan
                .flap
                .as_ref()
                .map_or(Duration::ZERO, |flap| flap.down_for(since_start()));
            let up_after_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX);
            sink.record(&plan.hostname, Event::HostDown { up_after_ms });
            return;
        };
        // Sent when it fell due, or at the subscription for the catch-up's events.
        plan.link_delay
            .hold(plan.due(seq, world_start).max(subscribed))
            .await;
        if ws.send(Message::binary(frame)).await.is_err() {
            return;
        }
        seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flap_windows_alternate_and_stop_at_until() {
        let flap = Flap {
            up: Duration::from_secs(60),
            down: Duration::from_secs(20),
            offset: Duration::ZERO,
            until: Some(Duration::from_secs(200)),
        };
        assert!(!flap.is_down(Duration::from_secs(59)));
        assert!(flap.is_down(Duration::from_secs(60)));
        assert!(!flap.is_down(Duration::from_secs(80)));
        assert_eq!(
            flap.next_down(Duration::from_secs(10)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            flap.next_down(Duration::from_secs(70)),
            Some(Duration::from_secs(140))
        );
        assert_eq!(
            flap.next_down(Duration::from_secs(150)),
            None,
            "the next window would start after until"
        );
        assert!(
            !flap.is_down(Duration::from_secs(220)),
            "no flapping after until"
        );
        assert_eq!(flap.down_for(Duration::from_secs(59)), Duration::ZERO);
        assert_eq!(
            flap.down_for(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(
            flap.down_for(Duration::from_secs(70)),
            Duration::from_secs(10)
        );
        let stops_mid_window = Flap {
            until: Some(Duration::from_secs(150)),
            ..flap
        };
        assert_eq!(
            stops_mid_window.down_for(Duration::from_secs(140)),
            Duration::from_secs(10),
            "up for good at until"
        );
    }

    #[test]
    fn every_host_address_is_in_the_host_network() {
        for index in [0, 249, 250, 2_799, 62_499] {
            assert!(
                HOST_NETWORK.contains(std::net::IpAddr::V4(host_ip(index))),
                "{}",
                host_ip(index)
            );
        }
    }

    #[test]
    fn hostnames_are_unique_and_valid() {
        let names: std::collections::BTreeSet<String> = (0..2_800).map(hostname).collect();
        assert_eq!(names.len(), 2_800);
        for name in &names {
            assert_eq!(
                relay::upstream::hostname::validate(name).as_deref(),
                Ok(name.as_str())
            );
        }
    }
}
