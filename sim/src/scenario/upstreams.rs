//! `[upstreams]`: the upstream hosts the relay subscribes to (polite, flaky, dead) — a
//! generated table of `hosts` hosts or one loaded from a file (`table`) — and the hostile
//! cast of `[upstreams.hostile]`, with what the section must hold.

use serde::{Deserialize, Serialize};

use super::host_table::{HostTable, TABLE_HOSTS_MAX};
use super::{Between, Problem, Scenario};

/// The upstream hosts of the world. Each is its own simulated node with its own IP and DNS
/// name, serving `ws://<name>:<port>/subscribe?cursor=N`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsSpec {
    /// How many hosts to generate (names and dead hosts drawn by the generator); the
    /// alternative to `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<u32>,
    /// A host table file (relative to the scenario file's directory): its names and
    /// statuses instead of generated ones ([`super::host_table`]); the alternative to
    /// `hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<HostTable>,
    /// Server-side delay before a host completes the WebSocket handshake, per host, ms.
    #[serde(default = "default_handshake_latency_ms")]
    pub handshake_latency_ms: Between<u64>,
    /// Each host emits one event per this many seconds (drawn per host).
    #[serde(default = "default_event_interval_s")]
    pub event_interval_s: Between<u64>,
    /// The network's rate model: a total events/s split heavy-tailed over the live hosts
    /// ([`RateSpec`]); absent: each host's interval is drawn from `event_interval_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Fraction of hosts that alternate between up and down windows.
    #[serde(default)]
    pub flaky_fraction: f64,
    /// Length of a flaky host's down windows, seconds.
    #[serde(default = "default_flaky_down_s")]
    pub flaky_down_s: Between<u64>,
    /// Length of a flaky host's up windows, seconds.
    #[serde(default = "default_flaky_up_s")]
    pub flaky_up_s: Between<u64>,
    /// Flaky hosts stop flapping (stay up) from this second on; absent: they flap throughout.
    pub flaky_until_s: Option<u64>,
    /// Fraction of generated hosts that never answer (no listener); a table's statuses say
    /// which of its hosts are dead.
    #[serde(default)]
    pub dead_fraction: f64,
    /// Filler bytes in every event body (a `"pad"` field), for large frames; 0 = none.
    #[serde(default)]
    pub body_pad_bytes: u32,
    /// Hosts that misbehave, on top of the `hosts` polite ones.
    pub hostile: Option<HostileSpec>,
}

/// `[upstreams.rate]`: the realistic rate model. The network emits
/// `events_per_second_total`; the shard hosts (a table's `kind = "bsky"`, the large
/// operator's shards) share `shard_share` of it equally; every other live host `i` gets
/// weight `exp(tail_sigma · Z_i)` (`Z_i` standard normal from the world's seed, a
/// log-normal tail: most nearly silent, a few busy), and the rest of the total in
/// proportion to its weight. A host with rate `r` emits one event every `1/r` s, or, with
/// `burst_mean` above 1, runs of events at the same long-run rate. Sources:
/// the host table's data card (scenarios/hosts/atproto-hosts-2026-05.md): the firehose runs
/// at ~600 to over 2,000 events/s, nearly all of it from the large shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// The whole network's events per second.
    #[serde(default = "default_events_per_second_total")]
    pub events_per_second_total: f64,
    /// The shard hosts' share of the total (all of it goes to the tail when there are none).
    #[serde(default = "default_shard_share")]
    pub shard_share: f64,
    /// The log-normal tail's sigma: 0 spreads the tail evenly, 2 leaves most hosts nearly
    /// silent.
    #[serde(default = "default_tail_sigma")]
    pub tail_sigma: f64,
    /// Events per burst on average (geometric run sizes; 1: no bursts, one event every
    /// `1/r` s). A host's long-run rate is the same either way.
    #[serde(default = "default_burst_mean")]
    pub burst_mean: f64,
    /// Time between the events of a burst, milliseconds (at most the host's own interval).
    #[serde(default = "default_burst_gap_ms")]
    pub burst_gap_ms: u64,
}

fn default_events_per_second_total() -> f64 {
    1_000.0
}

fn default_shard_share() -> f64 {
    0.95
}

fn default_tail_sigma() -> f64 {
    2.0
}

fn default_burst_mean() -> f64 {
    1.0
}

fn default_burst_gap_ms() -> u64 {
    20
}

/// The hostile cast: upstream hosts that each misbehave in one way, numbered after the
/// polite hosts (so adding them leaves the polite hosts' draws unchanged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    /// How many hostile hosts.
    pub hosts: u32,
    /// The misbehaviours they play; all of them when absent.
    #[serde(default = "HostileKind::all")]
    pub kinds: Vec<HostileKind>,
    /// Each host's kind drawn from `kinds` by the seed; otherwise host `i` plays
    /// `kinds[i % len]`, so every kind is played once `hosts >= kinds.len()`.
    #[serde(default)]
    pub draw: bool,
    /// A flooding host sends this many times as often as the quickest polite host.
    #[serde(default = "default_flood_factor")]
    pub flood_factor: u32,
}

fn default_flood_factor() -> u32 {
    100
}

/// One way an upstream host misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileKind {
    /// Three good events, then a sequence number past what the log can hold (the
    /// historical poison frame).
    SeqOverflow,
    /// Each connection: three good events, then a sequence number below the last.
    SeqBackwards,
    /// Valid events whose sequence numbers jump by 2^40 each time.
    SeqJump,
    /// Its first three events, replayed in a loop on every connection.
    DuplicateLoop,
    /// Two good events, then a frame over the relay's frame limit.
    Oversize,
    /// Two good events, then a frame that is not JSON.
    Malformed,
    /// A valid frame sent one byte a second.
    Dribble,
    /// Accepts the TCP connection, never answers the WebSocket handshake.
    HandshakeStall,
    /// Completes the handshake, then never sends a byte.
    Silent,
    /// Valid events `flood_factor` times as often as the quickest polite host.
    Flood,
    /// Completes the handshake and closes at once, every time.
    ReconnectStorm,
    /// Answers the upgrade with a plain HTTP page.
    NotWebsocket,
}

impl HostileKind {
    /// Every kind, in file order.
    pub fn all() -> Vec<HostileKind> {
        vec![
            Self::SeqOverflow,
            Self::SeqBackwards,
            Self::SeqJump,
            Self::DuplicateLoop,
            Self::Oversize,
            Self::Malformed,
            Self::Dribble,
            Self::HandshakeStall,
            Self::Silent,
            Self::Flood,
            Self::ReconnectStorm,
            Self::NotWebsocket,
        ]
    }

    /// The snake_case name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeqOverflow => "seq_overflow",
            Self::SeqBackwards => "seq_backwards",
            Self::SeqJump => "seq_jump",
            Self::DuplicateLoop => "duplicate_loop",
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::Dribble => "dribble",
            Self::HandshakeStall => "handshake_stall",
            Self::Silent => "silent",
            Self::Flood => "flood",
            Self::ReconnectStorm => "reconnect_storm",
            Self::NotWebsocket => "not_websocket",
        }
    }
}

impl UpstreamsSpec {
    /// The polite hosts: the table's, or the generated ones (0 when neither is given).
    pub fn polite_hosts(&self) -> u32 {
        match &self.table {
            Some(table) => table.hosts.len() as u32,
            None => self.hosts.unwrap_or(0),
        }
    }
}

fn default_handshake_latency_ms() -> Between<u64> {
    Between { min: 20, max: 200 }
}

fn default_event_interval_s() -> Between<u64> {
    Between { min: 5, max: 60 }
}

fn default_flaky_down_s() -> Between<u64> {
    Between { min: 20, max: 120 }
}

fn default_flaky_up_s() -> Between<u64> {
    Between { min: 60, max: 300 }
}

/// `[upstreams]`'s problems (its hostile cast's included).
pub(super) fn problems(scenario: &Scenario) -> Vec<Problem> {
    let mut found = Vec::new();
    if let Some(upstreams) = &scenario.upstreams {
        let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
        match (upstreams.hosts, &upstreams.table) {
            (Some(hosts), None) if hosts == 0 || hosts as usize > TABLE_HOSTS_MAX => {
                found.push(Problem::new(
                    "upstreams.hosts",
                    format!("expected 1 to {TABLE_HOSTS_MAX} hosts"),
                ));
            }
            (Some(_), Some(_)) => found.push(Problem::new(
                "upstreams.table",
                "expected either hosts (a generated table) or table (a file), not both".into(),
            )),
            (None, None) => found.push(Problem::new(
                "upstreams",
                "expected hosts (a generated table) or table (a file)".into(),
            )),
            _ => {}
        }
        if upstreams.table.is_some() && upstreams.dead_fraction != 0.0 {
            found.push(Problem::new(
                "upstreams.dead_fraction",
                "expected no dead_fraction with a table: its statuses say which hosts are dead"
                    .into(),
            ));
        }
        for (name, fraction) in [
            ("flaky_fraction", upstreams.flaky_fraction),
            ("dead_fraction", upstreams.dead_fraction),
        ] {
            if !fraction_ok(fraction) {
                found.push(Problem::new(
                    &format!("upstreams.{name}"),
                    "expected a fraction within 0..=1".into(),
                ));
            }
        }
        if upstreams.event_interval_s.min == 0
            || upstreams.flaky_down_s.min == 0
            || upstreams.flaky_up_s.min == 0
        {
            found.push(Problem::new(
                "upstreams",
                "expected event_interval_s, flaky_down_s and flaky_up_s of at least 1".into(),
            ));
        }
        if let Some(rate) = &upstreams.rate {
            if !(rate.events_per_second_total > 0.0 && rate.events_per_second_total <= 100_000.0) {
                found.push(Problem::new(
                    "upstreams.rate.events_per_second_total",
                    "expected more than 0 and at most 100000 events/s".into(),
                ));
            }
            if !fraction_ok(rate.shard_share) {
                found.push(Problem::new(
                    "upstreams.rate.shard_share",
                    "expected a fraction within 0..=1".into(),
                ));
            }
            if !(0.0..=4.0).contains(&rate.tail_sigma) {
                found.push(Problem::new(
                    "upstreams.rate.tail_sigma",
                    "expected a sigma within 0..=4".into(),
                ));
            }
            if !(1.0..=1_000.0).contains(&rate.burst_mean) {
                found.push(Problem::new(
                    "upstreams.rate.burst_mean",
                    "expected 1 (no bursts) to 1000 events per burst".into(),
                ));
            }
            if !(1..=60_000).contains(&rate.burst_gap_ms) {
                found.push(Problem::new(
                    "upstreams.rate.burst_gap_ms",
                    "expected 1 to 60000 ms between the events of a burst".into(),
                ));
            }
        }
        if upstreams.table.is_some() && upstreams.hostile.is_some() {
            found.push(Problem::new(
                "upstreams.hostile",
                "expected no hostile cast with a table: the hostile hosts' generated names could \
                 be the table's"
                    .into(),
            ));
        }
        if let Some(hostile) = &upstreams.hostile {
            if hostile.hosts == 0 || hostile.hosts > 1_000 {
                found.push(Problem::new(
                    "upstreams.hostile.hosts",
                    "expected 1 to 1000 hostile hosts".into(),
                ));
            }
            if hostile.kinds.is_empty() {
                found.push(Problem::new(
                    "upstreams.hostile.kinds",
                    "expected at least one kind".into(),
                ));
            }
            if hostile.flood_factor == 0 || hostile.flood_factor > 10_000 {
                found.push(Problem::new(
                    "upstreams.hostile.flood_factor",
                    "expected 1 to 10000".into(),
                ));
            }
        }
    }
    found
}
