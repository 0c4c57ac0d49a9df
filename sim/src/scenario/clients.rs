//! The client sections: `[prober]`, `[[churners]]`, `[[callers]]`, `[[abusers]]` and
//! `[[consumers]]` — who talks to the relay, how, and what each section must hold.

use serde::{Deserialize, Serialize};

use super::{Between, Problem, Scenario};

/// A Kubernetes-style HTTP prober: a new connection per probe, `Connection: close`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProberSpec {
    /// Path probed with GET.
    pub path: String,
    /// Seconds before the first probe.
    pub initial_delay_s: u64,
    /// Seconds between probe starts.
    pub period_s: u64,
    /// A probe slower than this fails, seconds.
    pub timeout_s: u64,
    /// Consecutive failures after which the orchestrator would restart the pod.
    pub failure_threshold: u32,
    /// Whether the orchestrator acts on it, as the kubelet does on a liveness probe: after
    /// `failure_threshold` consecutive failures the relay is stopped (SIGTERM, then killed
    /// after `termination_grace_s`) and started again on the same database after the
    /// crash-loop back-off, and probing resumes after `initial_delay_s`. The run goes on,
    /// so a restart loop shows as restarts (`relay_restarts_max`) instead of ending at the
    /// first violation. Off: failures are only recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
    /// Seconds a liveness restart waits for the relay to stop gracefully before killing it
    /// (Kubernetes' `terminationGracePeriodSeconds`, default 30).
    #[serde(skip_serializing_if = "is_default_grace")]
    pub termination_grace_s: u64,
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_TERMINATION_GRACE_S: u64 = 30;

fn is_default_grace(grace_s: &u64) -> bool {
    *grace_s == DEFAULT_TERMINATION_GRACE_S
}

impl Default for ProberSpec {
    fn default() -> Self {
        Self {
            path: "/_healthz".to_owned(),
            initial_delay_s: 0,
            period_s: 10,
            timeout_s: 1,
            failure_threshold: 3,
            restart: false,
            termination_grace_s: DEFAULT_TERMINATION_GRACE_S,
        }
    }
}

/// A group of API clients, one per node, each calling `GET path` every `period_ms` for the
/// whole run and recording every answer (or the lack of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerSpec {
    /// Client nodes in this group.
    pub nodes: u32,
    /// Path called with GET.
    pub path: String,
    /// Milliseconds between call starts.
    pub period_ms: u64,
    /// A call without a complete response after this long is given up, milliseconds.
    pub timeout_ms: u64,
    /// Reuse one connection for every call (reconnecting only when it dies) instead of a
    /// fresh connection per call.
    pub keep_alive: bool,
}

impl Default for CallerSpec {
    fn default() -> Self {
        Self {
            nodes: 1,
            path: "/hosts".to_owned(),
            period_ms: 1_000,
            timeout_ms: 5_000,
            keep_alive: false,
        }
    }
}

/// What an abuser sends. Each kind has one answer the relay must give (see
/// [`AbuseKind::expected_answers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbuseKind {
    /// A request head trickled one header line per second, never finished.
    Slowloris,
    /// A request head of 64 KiB of headers.
    HugeHeaders,
    /// Bytes that are not HTTP (a TLS ClientHello prefix and noise).
    Garbage,
    /// A valid `GET /_healthz`, sent in pieces that end between a CR and its LF.
    SplitCrlf,
    /// A `requestCrawl` POST with a chunked body that gets a chunk every 200 ms, forever.
    EndlessBody,
    /// A WebSocket subscription that then sends a frame with a reserved opcode.
    GarbageFrame,
    /// A WebSocket subscription that then announces a 16 MiB frame.
    OversizedFrame,
    /// `requestCrawl` of a fresh junk name with no DNS record, each attempt.
    CrawlJunk,
    /// `requestCrawl` of internal names: under `.internal` or `.svc.cluster.local`, or
    /// public-looking names whose simulated DNS answer is a private or metadata address.
    CrawlInternal,
    /// `requestCrawl` of a fresh name each attempt, every one resolving to a black hole (a
    /// node that accepts and never answers): the host table's flood.
    CrawlBlackHole,
    /// `requestCrawl` of the same three black-hole names (never drawn by
    /// [`AbuseKind::CrawlBlackHole`]) again and again: once they are dormant,
    /// re-activation spam.
    CrawlReactivation,
    /// One address opening connections it never uses, more than its share: the admitted
    /// ones hold slots until the idle reaper closes them, the rest flood the refusal lane;
    /// then one request on a further connection, whose answer is recorded.
    ConnectionHog,
    /// A WebSocket subscriber that completes the handshake and then never sends a byte
    /// (nor answers a ping); recorded once the relay closes it.
    SilentSubscriber,
}

impl AbuseKind {
    /// Every kind, in report order.
    pub const ALL: [AbuseKind; 13] = [
        Self::Slowloris,
        Self::HugeHeaders,
        Self::Garbage,
        Self::SplitCrlf,
        Self::EndlessBody,
        Self::GarbageFrame,
        Self::OversizedFrame,
        Self::CrawlJunk,
        Self::CrawlInternal,
        Self::CrawlBlackHole,
        Self::CrawlReactivation,
        Self::ConnectionHog,
        Self::SilentSubscriber,
    ];

    /// The snake_case name used in files, traces and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slowloris => "slowloris",
            Self::HugeHeaders => "huge_headers",
            Self::Garbage => "garbage",
            Self::SplitCrlf => "split_crlf",
            Self::EndlessBody => "endless_body",
            Self::GarbageFrame => "garbage_frame",
            Self::OversizedFrame => "oversized_frame",
            Self::CrawlJunk => "crawl_junk",
            Self::CrawlInternal => "crawl_internal",
            Self::CrawlBlackHole => "crawl_black_hole",
            Self::CrawlReactivation => "crawl_reactivation",
            Self::ConnectionHog => "connection_hog",
            Self::SilentSubscriber => "silent_subscriber",
        }
    }

    /// Whether it calls `requestCrawl` (one of the crawl flood's kinds).
    pub fn is_crawler(self) -> bool {
        matches!(
            self,
            Self::CrawlJunk | Self::CrawlInternal | Self::CrawlBlackHole | Self::CrawlReactivation
        )
    }

    /// The answers (as abusers record them) that count as the relay handling this input:
    /// an HTTP status, `closed` (the relay closed without a response) or `ws close <code>`.
    pub fn expected_answers(self) -> &'static [&'static str] {
        match self {
            // hyper closes a connection whose head missed the header-read deadline.
            Self::Slowloris => &["408", "closed"],
            Self::HugeHeaders => &["431"],
            Self::Garbage => &["400"],
            Self::SplitCrlf => &["200"],
            Self::EndlessBody => &["408"],
            Self::GarbageFrame => &["ws close 1002"],
            Self::OversizedFrame => &["ws close 1009"],
            // Refused at the door (host_not_found, egress_refused), or past the caller's
            // own limit: never stored.
            Self::CrawlJunk | Self::CrawlInternal => &["400", "429"],
            // Accepted until this window's new hosts (or re-activations) are used up, or
            // the host table is full.
            Self::CrawlBlackHole | Self::CrawlReactivation => &["200", "403", "429"],
            // Past its share: 429 per_ip_limit from the refusal lane, or closed unanswered
            // once its share of the lane is full too.
            Self::ConnectionHog => &["429", "closed"],
            // Closed by the idle reaper (or the pong deadline), never kept.
            Self::SilentSubscriber => &["closed"],
        }
    }
}

/// A group of abusers, one per node, each sending `kind` of bad input every `period_ms`
/// (one attempt at a time, each on a fresh connection) and recording the relay's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuserSpec {
    /// What to send.
    pub kind: AbuseKind,
    /// Abuser nodes in this group.
    #[serde(default = "default_one")]
    pub nodes: u32,
    /// Milliseconds between the end of one attempt and the start of the next.
    #[serde(default = "default_abuse_period_ms")]
    pub period_ms: u64,
    /// When the first attempt starts, seconds.
    #[serde(default)]
    pub start_s: u64,
}

fn default_one() -> u32 {
    1
}

fn default_abuse_period_ms() -> u64 {
    1_000
}

/// A group of client nodes, each running `loops_per_node` concurrent connection loops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnerSpec {
    /// Client nodes in this group (each its own simulated host and IP).
    pub nodes: u32,
    /// Concurrent connection loops per node.
    pub loops_per_node: u32,
    /// When the loops start, seconds.
    #[serde(default)]
    pub start_s: u64,
    /// When the loops stop starting new connections, seconds.
    pub stop_s: u64,
    /// Pause between a loop's connections, milliseconds.
    #[serde(default = "default_think_ms")]
    pub think_ms: Between<u64>,
    /// Relative weights of what a loop does with each connection.
    #[serde(default)]
    pub mix: ChurnMix,
    /// Requests per keep-alive connection.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: Between<u32>,
    /// How long an idle holder keeps its connection silent, seconds.
    #[serde(default = "default_idle_hold_s")]
    pub idle_hold_s: Between<u64>,
    /// Paths requested (drawn uniformly).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
}

fn default_think_ms() -> Between<u64> {
    Between { min: 0, max: 200 }
}

fn default_keepalive_requests() -> Between<u32> {
    Between { min: 1, max: 5 }
}

fn default_idle_hold_s() -> Between<u64> {
    Between { min: 1, max: 30 }
}

fn default_paths() -> Vec<String> {
    ["/_healthz", "/_readyz", "/metrics", "/not-a-route"]
        .map(str::to_owned)
        .to_vec()
}

/// Relative weights of churn actions (0 disables an action).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnMix {
    /// Connect, then drop the socket without sending anything.
    pub abrupt_close: u32,
    /// Send half a request head, then drop the socket.
    pub mid_request_close: u32,
    /// Send several requests on one keep-alive connection, then close.
    pub keepalive: u32,
    /// Send one request, then hold the connection silent (the idle reaper's business).
    pub idle_hold: u32,
    /// Send one request with `Connection: close`, shut the write half (FIN) and read the
    /// response to the end: the relay must answer a half-closed connection. turmoil only
    /// (madsim's TCP has no half-close).
    pub half_close: u32,
}

impl Default for ChurnMix {
    fn default() -> Self {
        Self {
            abrupt_close: 2,
            mid_request_close: 2,
            keepalive: 5,
            idle_hold: 1,
            half_close: 0,
        }
    }
}

impl ChurnMix {
    /// Sum of all weights.
    pub fn total(&self) -> u32 {
        self.abrupt_close
            + self.mid_request_close
            + self.keepalive
            + self.idle_hold
            + self.half_close
    }
}

/// How a consumer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    /// Reads everything as soon as it arrives.
    Fast,
    /// Stops reading for `stall_s` every `stall_every_s`.
    Slow,
    /// Drops its connection every `reconnect_every_s` and resumes by cursor.
    Reconnecting,
}

/// A group of consumers, each on its own node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Group name; consumers are named `<name>-<index>`.
    pub name: String,
    /// How many consumers.
    pub count: u32,
    /// How they read.
    pub kind: ConsumerKind,
    /// When they first connect, seconds (cursor 0: everything from the start).
    #[serde(default)]
    pub start_s: u64,
    /// When they leave for good (dropping their connection), seconds; absent: never.
    pub stop_s: Option<u64>,
    /// Slow consumers: seconds between stalls.
    #[serde(default = "default_stall_every_s")]
    pub stall_every_s: u64,
    /// Slow consumers: length of a stall, seconds.
    #[serde(default = "default_stall_s")]
    pub stall_s: u64,
    /// Reconnecting consumers: seconds between planned disconnects.
    #[serde(default = "default_reconnect_every_s")]
    pub reconnect_every_s: u64,
}

fn default_stall_every_s() -> u64 {
    60
}

fn default_stall_s() -> u64 {
    20
}

fn default_reconnect_every_s() -> u64 {
    20
}

/// The client sections' problems: `[prober]`, `[[churners]]`, `[[callers]]`, `[[abusers]]` and `[[consumers]]`.
pub(super) fn problems(scenario: &Scenario) -> Vec<Problem> {
    let mut found = Vec::new();
    if let Some(prober) = &scenario.prober {
        if prober.period_s == 0 || prober.timeout_s == 0 || prober.failure_threshold == 0 {
            found.push(Problem::new(
                "prober",
                "expected period_s, timeout_s and failure_threshold of at least 1".into(),
            ));
        }
        if prober.timeout_s > prober.period_s {
            found.push(Problem::new(
                "prober.timeout_s",
                "expected timeout_s <= period_s".into(),
            ));
        }
    }
    for (index, churner) in scenario.churners.iter().enumerate() {
        let key = |field: &str| format!("churners[{index}].{field}");
        if churner.nodes == 0 || churner.loops_per_node == 0 {
            found.push(Problem::new(
                &key("nodes"),
                "expected nodes and loops_per_node of at least 1".into(),
            ));
        }
        if churner.start_s >= churner.stop_s || churner.stop_s > scenario.duration_s {
            found.push(Problem::new(
                &key("stop_s"),
                format!(
                    "expected start_s ({}) < stop_s ({}) <= duration_s ({})",
                    churner.start_s, churner.stop_s, scenario.duration_s
                ),
            ));
        }
        if churner.mix.total() == 0 {
            found.push(Problem::new(
                &key("mix"),
                "expected at least one non-zero weight".into(),
            ));
        }
        if churner.paths.is_empty() || churner.paths.iter().any(|p| !p.starts_with('/')) {
            found.push(Problem::new(
                &key("paths"),
                "expected a non-empty list of paths starting with '/'".into(),
            ));
        }
    }
    for (index, caller) in scenario.callers.iter().enumerate() {
        let key = |field: &str| format!("callers[{index}].{field}");
        if index >= 40 {
            found.push(Problem::new(
                "callers",
                "expected at most 40 caller groups".into(),
            ));
        }
        if caller.nodes == 0 || caller.nodes > 250 {
            found.push(Problem::new(
                &key("nodes"),
                "expected 1 to 250 nodes".into(),
            ));
        }
        if caller.period_ms == 0 || caller.timeout_ms == 0 {
            found.push(Problem::new(
                &key("period_ms"),
                "expected period_ms and timeout_ms of at least 1".into(),
            ));
        }
        if !caller.path.starts_with('/') {
            found.push(Problem::new(
                &key("path"),
                "expected a path starting with '/'".into(),
            ));
        }
    }
    for (index, abuser) in scenario.abusers.iter().enumerate() {
        let key = |field: &str| format!("abusers[{index}].{field}");
        if index >= 20 {
            found.push(Problem::new(
                "abusers",
                "expected at most 20 abuser groups".into(),
            ));
        }
        if abuser.nodes == 0 || abuser.nodes > 250 {
            found.push(Problem::new(
                &key("nodes"),
                "expected 1 to 250 nodes".into(),
            ));
        }
        if abuser.period_ms == 0 {
            found.push(Problem::new(
                &key("period_ms"),
                "expected at least 1".into(),
            ));
        }
        if abuser.start_s >= scenario.duration_s {
            found.push(Problem::new(
                &key("start_s"),
                "expected start_s < duration_s".into(),
            ));
        }
    }
    for (index, consumer) in scenario.consumers.iter().enumerate() {
        if consumer.count == 0
            || consumer.stall_every_s == 0
            || consumer.reconnect_every_s == 0
            || consumer.start_s >= scenario.duration_s
            || consumer
                .stop_s
                .is_some_and(|stop| stop <= consumer.start_s || stop > scenario.duration_s)
        {
            found.push(Problem::new(
                &format!("consumers[{index}]"),
                "expected count, stall_every_s and reconnect_every_s of at least 1 and start_s < stop_s <= duration_s".into(),
            ));
        }
    }
    found
}
