//! Prometheus metrics for one relay instance.
//!
//! Each relay owns its own `prometheus_client` registry (no globals), so several relays in
//! one wind-tunnel process never share counters. Every label set is bounded: label values
//! come from fixed enums and `&'static str` reasons, never from request data or hostnames.
//! Values that mirror state owned elsewhere (the lifecycle registry's totals, the host
//! table, the fan-out) are synchronised at scrape time instead of being updated on every
//! change; the registry's admitted, released and open come from one balanced reading, so a
//! scrape shows `admitted = released + open` (the wind tunnel's real mode checks it).
//!
//! The events and upstream modules count into this one, so what it mirrors of them arrives
//! as plain snapshots defined here ([`EventStats`], [`UpstreamGauges`]), and it imports
//! neither.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use relay_lifecycle::RegistryStats;

use crate::http::dispatch::DispatchStats;
use crate::memory::MemoryStats;

/// Labels naming why something was refused, closed or ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed, lowercase reason name.
    pub reason: &'static str,
}

/// Labels naming an upstream's `#info` message (`OutdatedCursor` or `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    /// A fixed name.
    pub name: &'static str,
}

/// Labels naming an upstream's error frame (`FutureCursor`, `ConsumerTooSlow` or `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A fixed name.
    pub error: &'static str,
}

/// Labels of one served HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's fixed name (`healthz`, `readyz`, `metrics`, `hosts`, `request_crawl`,
    /// `list_hosts`, `get_host_status`, `xrpc_health`, `xrpc_unknown`, `other`).
    pub route: &'static str,
    /// The response status code.
    pub status: u16,
}

/// Labels of a handler the request boundary had to answer for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerFailureLabels {
    /// The route's fixed name.
    pub route: &'static str,
    /// `panic` (answered 500) or `timeout` (answered 504).
    pub kind: &'static str,
}

/// Labels of the per-phase host gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// A host phase's name (`idle`, `waiting`, `connecting`, …).
    pub phase: &'static str,
}

/// What `/metrics` shows of the upstream host table and its workers: plain values the
/// upstream module reads at scrape time (`UpstreamStats::gauges`), so this module needs
/// nothing of the upstream module, which counts into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamGauges {
    /// Hosts per worker phase: each phase's name and how many hosts are in it.
    pub hosts_by_phase: Vec<(&'static str, usize)>,
    /// Worker tasks alive now.
    pub workers_running: usize,
    /// Most worker tasks ever alive at once.
    pub workers_high_water: usize,
    /// Handshakes in flight now.
    pub handshakes_in_flight: usize,
    /// Most handshakes ever in flight at once.
    pub handshakes_high_water: usize,
    /// Frames received from all upstreams.
    pub events_total: u64,
}

/// Counters and levels of the event pipeline and the fan-out, for `/metrics` and the wind
/// tunnel's monitor. The events module fills it (`Events::stats`, at scrape time) and
/// re-exports it; it is defined here so that this module reads it without importing the
/// events module, which counts into this one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Highest persisted relay sequence number.
    pub head_seq: u64,
    /// Lowest sequence number still in the log (0 when empty).
    pub oldest_seq: u64,
    /// Content bytes (kinds and bodies) of the events in the log.
    pub log_bytes: u64,
    /// Whether the last commit succeeded and none has hung past `stall_readyz_ms`
    /// (`Events::store_ready`, readiness).
    pub store_healthy: bool,
    /// Whether a commit survives a power loss once it returns (`Store::commits_durable`;
    /// not exported, the wind tunnel's power-loss world reads it).
    pub commits_durable: bool,
    /// Events dropped because their host had already delivered that sequence number.
    pub duplicates_total: u64,
    /// Events deleted by retention.
    pub retention_deleted_total: u64,
    /// Consumers subscribed now.
    pub consumers: usize,
    /// Consumers kicked for being too slow.
    pub consumers_kicked_total: u64,
    /// Most events ever waiting in one consumer's mailbox.
    pub mailbox_high_water: usize,
    /// Content bytes in the ingest queue and the batch being committed now.
    pub ingest_held_bytes: u64,
    /// Most content bytes the ingest queue and the batch being committed ever held.
    pub ingest_high_water_bytes: u64,
}

/// All relay metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_admitted: Counter,
    connections_released: Counter,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_closed: Family<ReasonLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    handler_failures: Family<HandlerFailureLabels, Counter>,
    connections_open: Gauge,
    connections_max: Gauge,
    connections_high_water: Gauge,
    refusal_lane_open: Gauge,
    upstream_hosts: Family<PhaseLabels, Gauge>,
    upstream_workers_running: Gauge,
    upstream_workers_high_water: Gauge,
    upstream_handshakes_in_flight: Gauge,
    upstream_handshakes_high_water: Gauge,
    upstream_attempts: Family<ReasonLabels, Counter>,
    upstream_disconnects: Family<ReasonLabels, Counter>,
    upstream_events: Gauge,
    upstream_duplicate_frames: Counter,
    upstream_bad_frames: Counter,
    upstream_unknown_messages: Counter,
    upstream_info: Family<NameLabels, Counter>,
    upstream_error_frames: Family<ErrorLabels, Counter>,
    upstream_rate_limited: Counter,
    upstream_quarantined: Family<ReasonLabels, Counter>,
    crawl_refused: Family<ReasonLabels, Counter>,
    events_rejected: Counter,
    store_errors: Family<ReasonLabels, Counter>,
    consumer_sessions: Gauge,
    events_head_seq: Gauge,
    events_oldest_seq: Gauge,
    events_log_bytes: Gauge,
    events_store_healthy: Gauge,
    events_duplicates: Gauge,
    events_retention_deleted: Gauge,
    consumers_kicked: Gauge,
    consumer_mailbox_high_water: Gauge,
    ingest_queued_bytes: Gauge,
    ingest_queued_high_water_bytes: Gauge,
    handlers_in_flight: Gauge,
    handlers_in_flight_high_water: Gauge,
    memory_held_bytes: Gauge,
    memory_held_high_water_bytes: Gauge,
    memory_budget_bytes: Gauge,
    memory_shedding: Gauge,
    memory_shed: Gauge,
    memory_kicked: Gauge,
    consumers_subscribed: Gauge,
    tasks_alive: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every relay metric registered under the `relay_` prefix.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::with_prefix("relay"),
            connections_admitted: Counter::default(),
            connections_released: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            http_requests: Family::default(),
            handler_failures: Family::default(),
            connections_open: Gauge::default(),
            connections_max: Gauge::default(),
            connections_high_water: Gauge::default(),
            refusal_lane_open: Gauge::default(),
            upstream_hosts: Family::default(),
            upstream_workers_running: Gauge::default(),
            upstream_workers_high_water: Gauge::default(),
            upstream_handshakes_in_flight: Gauge::default(),
            upstream_handshakes_high_water: Gauge::default(),
            upstream_attempts: Family::default(),
            upstream_disconnects: Family::default(),
            upstream_events: Gauge::default(),
            upstream_duplicate_frames: Counter::default(),
            upstream_bad_frames: Counter::default(),
            upstream_unknown_messages: Counter::default(),
            upstream_info: Family::default(),
            upstream_error_frames: Family::default(),
            upstream_rate_limited: Counter::default(),
            upstream_quarantined: Family::default(),
            crawl_refused: Family::default(),
            events_rejected: Counter::default(),
            store_errors: Family::default(),
            consumer_sessions: Gauge::default(),
            events_head_seq: Gauge::default(),
            events_oldest_seq: Gauge::default(),
            events_log_bytes: Gauge::default(),
            events_store_healthy: Gauge::default(),
            events_duplicates: Gauge::default(),
            events_retention_deleted: Gauge::default(),
            consumers_kicked: Gauge::default(),
            consumer_mailbox_high_water: Gauge::default(),
            ingest_queued_bytes: Gauge::default(),
            ingest_queued_high_water_bytes: Gauge::default(),
            handlers_in_flight: Gauge::default(),
            handlers_in_flight_high_water: Gauge::default(),
            memory_held_bytes: Gauge::default(),
            memory_held_high_water_bytes: Gauge::default(),
            memory_budget_bytes: Gauge::default(),
            memory_shedding: Gauge::default(),
            memory_shed: Gauge::default(),
            memory_kicked: Gauge::default(),
            consumers_subscribed: Gauge::default(),
            tasks_alive: Gauge::default(),
        };
        metrics.registered()
    }

    fn registered(mut self) -> Self {
        let registry = &mut self.registry;
        registry.register(
            "connections_admitted",
            "Connections admitted by the lifecycle registry (admitted = released + open within one scrape)",
            self.connections_admitted.clone(),
        );
        registry.register(
            "connections_released",
            "Admitted connections released (their owner dropped), each exactly once",
            self.connections_released.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused (at_capacity, shutting_down, per_ip_limit), not given a refusal-lane place (refusal_lane_full, refusal_lane_per_ip) or dropped (probe_reserve_full)",
            self.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Admitted connections closed, by reason",
            self.connections_closed.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            self.http_requests.clone(),
        );
        registry.register(
            "handler_failures",
            "Requests whose handler panicked (500) or timed out (504), by route and kind",
            self.handler_failures.clone(),
        );
        registry.register(
            "connections_open",
            "Admitted connections open now",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_max",
            "Configured max_connections",
            self.connections_max.clone(),
        );
        registry.register(
            "connections_high_water",
            "Most admitted connections ever open at once",
            self.connections_high_water.clone(),
        );
        registry.register(
            "refusal_lane_open",
            "Connections being answered by the refusal lane now",
            self.refusal_lane_open.clone(),
        );
        registry.register(
            "upstream_hosts",
            "Upstream hosts by worker phase",
            self.upstream_hosts.clone(),
        );
        registry.register(
            "upstream_workers_running",
            "Upstream worker tasks alive now",
            self.upstream_workers_running.clone(),
        );
        registry.register(
            "upstream_workers_high_water",
            "Most upstream worker tasks ever alive at once",
            self.upstream_workers_high_water.clone(),
        );
        registry.register(
            "upstream_handshakes_in_flight",
            "Upstream handshakes in flight now",
            self.upstream_handshakes_in_flight.clone(),
        );
        registry.register(
            "upstream_handshakes_high_water",
            "Most upstream handshakes ever in flight at once",
            self.upstream_handshakes_high_water.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Upstream connection attempts, by outcome",
            self.upstream_attempts.clone(),
        );
        registry.register(
            "upstream_disconnects",
            "Established upstream sessions that ended, by reason",
            self.upstream_disconnects.clone(),
        );
        registry.register(
            "upstream_events",
            "Upstream event frames received since start",
            self.upstream_events.clone(),
        );
        registry.register(
            "upstream_duplicate_frames",
            "Upstream frames at or below the host's cursor (skipped)",
            self.upstream_duplicate_frames.clone(),
        );
        registry.register(
            "upstream_bad_frames",
            "Upstream messages that were not valid event-stream frames (framing, body, syntax, limits, CAR)",
            self.upstream_bad_frames.clone(),
        );
        registry.register(
            "upstream_unknown_messages",
            "Upstream messages of a type this relay does not know (skipped, as the spec says)",
            self.upstream_unknown_messages.clone(),
        );
        registry.register(
            "upstream_info",
            "Upstream #info messages, by name (OutdatedCursor or other)",
            self.upstream_info.clone(),
        );
        registry.register(
            "upstream_error_frames",
            "Upstream error frames (each ends its session), by error (FutureCursor, ConsumerTooSlow or other)",
            self.upstream_error_frames.clone(),
        );
        registry.register(
            "upstream_rate_limited",
            "Upstream events held back by their host's event-rate limit",
            self.upstream_rate_limited.clone(),
        );
        registry.register(
            "upstream_quarantined",
            "Hosts quarantined for sending what the relay cannot keep, by reason",
            self.upstream_quarantined.clone(),
        );
        registry.register(
            "crawl_refused",
            "requestCrawl requests refused, by the relay's reason for the refusal (crawl_rate_limit, host_not_found, egress_refused, new_host_limit, …)",
            self.crawl_refused.clone(),
        );
        registry.register(
            "events_rejected",
            "Events the event log refused for what they carry (their hosts are quarantined)",
            self.events_rejected.clone(),
        );
        registry.register(
            "store_errors",
            "Failed event-log operations (commit, retention), each retried",
            self.store_errors.clone(),
        );
        registry.register(
            "consumer_sessions",
            "Consumer WebSocket sessions open now",
            self.consumer_sessions.clone(),
        );
        registry.register(
            "events_head_seq",
            "Highest persisted relay sequence number",
            self.events_head_seq.clone(),
        );
        registry.register(
            "events_oldest_seq",
            "Lowest relay sequence number still in the log",
            self.events_oldest_seq.clone(),
        );
        registry.register(
            "events_log_bytes",
            "Content bytes (kinds and bodies) of the events in the log",
            self.events_log_bytes.clone(),
        );
        registry.register(
            "events_store_healthy",
            "1 if the last event commit succeeded and none is hanging past events.stall_readyz_ms, else 0",
            self.events_store_healthy.clone(),
        );
        registry.register(
            "events_duplicates",
            "Upstream events dropped because already persisted",
            self.events_duplicates.clone(),
        );
        registry.register(
            "events_retention_deleted",
            "Events deleted by retention since start",
            self.events_retention_deleted.clone(),
        );
        registry.register(
            "consumers_kicked",
            "Consumers asked to close because their queue was full",
            self.consumers_kicked.clone(),
        );
        registry.register(
            "consumer_mailbox_high_water",
            "Most frames ever waiting for one consumer",
            self.consumer_mailbox_high_water.clone(),
        );
        registry.register(
            "ingest_queued_bytes",
            "Content bytes of upstream events queued for the sequencer or in its batch",
            self.ingest_queued_bytes.clone(),
        );
        registry.register(
            "ingest_queued_high_water_bytes",
            "Most content bytes of upstream events ever queued for the sequencer at once",
            self.ingest_queued_high_water_bytes.clone(),
        );
        registry.register(
            "handlers_in_flight",
            "Dispatched request handlers running now (probes and /metrics excluded)",
            self.handlers_in_flight.clone(),
        );
        registry.register(
            "handlers_in_flight_high_water",
            "Most dispatched request handlers ever running at once",
            self.handlers_in_flight_high_water.clone(),
        );
        registry.register(
            "memory_held_bytes",
            "Bytes of frames queued for consumers (the memory account)",
            self.memory_held_bytes.clone(),
        );
        registry.register(
            "memory_held_high_water_bytes",
            "Most bytes the memory account ever held",
            self.memory_held_high_water_bytes.clone(),
        );
        registry.register(
            "memory_budget_bytes",
            "The memory budget (memory.budget_bytes)",
            self.memory_budget_bytes.clone(),
        );
        registry.register(
            "memory_shedding",
            "1 while the memory breaker is open and new work is answered 503",
            self.memory_shedding.clone(),
        );
        registry.register(
            "memory_shed_requests",
            "Requests answered 503 memory_pressure",
            self.memory_shed.clone(),
        );
        registry.register(
            "consumers_subscribed",
            "Consumers subscribed to the fan-out now",
            self.consumers_subscribed.clone(),
        );
        registry.register(
            "tasks_alive",
            "Tasks the relay spawned (through its runtime seam) that are alive now",
            self.tasks_alive.clone(),
        );
        registry.register(
            "memory_kicked_consumers",
            "Consumers kicked because the memory account passed the budget",
            self.memory_kicked.clone(),
        );
        self
    }

    /// Count a refusal for `reason`.
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count a closed admitted connection for `reason`.
    pub fn closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count a served request.
    pub fn request(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Count a handler that panicked or timed out (`kind` = `panic` | `timeout`).
    pub fn handler_failed(&self, route: &'static str, kind: &'static str) {
        self.handler_failures
            .get_or_create(&HandlerFailureLabels { route, kind })
            .inc();
    }

    /// Track the refusal lane's occupancy (+1 on entry, -1 on exit).
    pub fn refusal_lane_delta(&self, delta: i64) {
        self.refusal_lane_open.inc_by(delta);
    }

    /// Count an upstream attempt's outcome (`connected` or a failure reason).
    pub fn upstream_attempt(&self, outcome: &'static str) {
        self.upstream_attempts
            .get_or_create(&ReasonLabels { reason: outcome })
            .inc();
    }

    /// Count an established session's end.
    pub fn upstream_disconnect(&self, reason: &'static str) {
        self.upstream_disconnects
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count a duplicate upstream frame.
    pub fn upstream_duplicate(&self) {
        self.upstream_duplicate_frames.inc();
    }

    /// Count an invalid upstream frame.
    pub fn upstream_bad_frame(&self) {
        self.upstream_bad_frames.inc();
    }

    /// Count an upstream message of an unknown type (skipped).
    pub fn upstream_unknown_message(&self) {
        self.upstream_unknown_messages.inc();
    }

    /// Count an upstream `#info` message named `name` (`OutdatedCursor` or another).
    pub fn upstream_info(&self, name: &str) {
        let name = if name == "OutdatedCursor" {
            "OutdatedCursor"
        } else {
            "other"
        };
        self.upstream_info.get_or_create(&NameLabels { name }).inc();
    }

    /// Count an upstream error frame named `error`.
    pub fn upstream_error_frame(&self, error: &str) {
        let error = match error {
            "FutureCursor" => "FutureCursor",
            "ConsumerTooSlow" => "ConsumerTooSlow",
            _ => "other",
        };
        self.upstream_error_frames
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    /// Count an upstream event held back by its host's rate limit.
    pub fn upstream_rate_limited(&self) {
        self.upstream_rate_limited.inc();
    }

    /// Count a host quarantined for `reason`.
    pub fn upstream_quarantined(&self, reason: &'static str) {
        self.upstream_quarantined
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count a refused `requestCrawl` for `reason` (the error code its caller was answered).
    pub fn crawl_refused(&self, reason: &'static str) {
        self.crawl_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count an event the event log refused for what it carries.
    pub fn event_rejected(&self) {
        self.events_rejected.inc();
    }

    /// Count a failed event-log operation (`commit`, `retention`).
    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&ReasonLabels { reason: operation })
            .inc();
    }

    /// Track open consumer sessions (+1 on start, -1 on end).
    pub fn consumer_session(&self, delta: i64) {
        self.consumer_sessions.inc_by(delta);
    }

    /// The text exposition, with mirrored gauges synchronised first.
    pub fn encode(
        &self,
        connections: RegistryStats,
        upstreams: UpstreamGauges,
        events: EventStats,
        dispatch: DispatchStats,
        memory: MemoryStats,
    ) -> String {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        let wide = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.handlers_in_flight.set(gauge(dispatch.in_flight));
        self.memory_held_bytes.set(wide(memory.held_bytes));
        self.memory_held_high_water_bytes
            .set(wide(memory.high_water_bytes));
        self.memory_budget_bytes.set(wide(memory.budget_bytes));
        self.memory_shedding.set(i64::from(memory.shedding));
        self.memory_shed.set(wide(memory.shed_total));
        self.memory_kicked.set(wide(memory.kicked_total));
        self.handlers_in_flight_high_water
            .set(gauge(dispatch.high_water));
        self.events_head_seq.set(wide(events.head_seq));
        self.events_oldest_seq.set(wide(events.oldest_seq));
        self.events_log_bytes.set(wide(events.log_bytes));
        self.events_store_healthy
            .set(i64::from(events.store_healthy));
        self.events_duplicates.set(wide(events.duplicates_total));
        self.events_retention_deleted
            .set(wide(events.retention_deleted_total));
        self.consumers_kicked
            .set(wide(events.consumers_kicked_total));
        self.consumer_mailbox_high_water
            .set(gauge(events.mailbox_high_water));
        self.ingest_queued_bytes.set(wide(events.ingest_held_bytes));
        self.ingest_queued_high_water_bytes
            .set(wide(events.ingest_high_water_bytes));
        self.consumers_subscribed.set(gauge(events.consumers));
        self.tasks_alive.set(gauge(crate::rt::tasks_alive()));
        // One balanced registry reading: admitted = released + open in the same scrape.
        self.connections_admitted
            .inner()
            .store(connections.admitted_total, Ordering::Relaxed);
        self.connections_released
            .inner()
            .store(connections.released_total, Ordering::Relaxed);
        self.connections_open.set(gauge(connections.open));
        self.connections_max.set(gauge(connections.max));
        self.connections_high_water
            .set(gauge(connections.high_water));
        for (phase, hosts) in upstreams.hosts_by_phase {
            self.upstream_hosts
                .get_or_create(&PhaseLabels { phase })
                .set(gauge(hosts));
        }
        self.upstream_workers_running
            .set(gauge(upstreams.workers_running));
        self.upstream_workers_high_water
            .set(gauge(upstreams.workers_high_water));
        self.upstream_handshakes_in_flight
            .set(gauge(upstreams.handshakes_in_flight));
        self.upstream_handshakes_high_water
            .set(gauge(upstreams.handshakes_high_water));
        self.upstream_events
            .set(i64::try_from(upstreams.events_total).unwrap_or(i64::MAX));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
