//! Prometheus metrics for one relay instance.
//!
//! Each relay owns its own `prometheus_client` registry (no globals), so several relays in
//! one wind-tunnel process never share counters. Every label set is bounded: label values
//! come from fixed enums, never from request data.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use relay_lifecycle::RegistryStats;

/// Labels naming why a connection was refused or closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed, lowercase reason name.
    pub reason: &'static str,
}

/// Labels of one served HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's fixed name (`healthz`, `readyz`, `metrics`, `other`).
    pub route: &'static str,
    /// The response status code.
    pub status: u16,
}

/// All relay metrics. Counters are updated where things happen; gauges that mirror the
/// lifecycle registry are synchronised at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_admitted: Counter,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_closed: Family<ReasonLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    connections_open: Gauge,
    connections_max: Gauge,
    connections_high_water: Gauge,
    refusal_lane_open: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every relay metric registered under the `relay_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let metrics = Self {
            connections_admitted: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            http_requests: Family::default(),
            connections_open: Gauge::default(),
            connections_max: Gauge::default(),
            connections_high_water: Gauge::default(),
            refusal_lane_open: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_admitted",
            "Connections admitted by the lifecycle registry",
            metrics.connections_admitted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused (at_capacity, shutting_down) or dropped (refusal_lane_full)",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Admitted connections closed, by reason",
            metrics.connections_closed.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "connections_open",
            "Admitted connections open now",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_max",
            "Configured max_connections",
            metrics.connections_max.clone(),
        );
        registry.register(
            "connections_high_water",
            "Most admitted connections ever open at once",
            metrics.connections_high_water.clone(),
        );
        registry.register(
            "refusal_lane_open",
            "Connections being answered by the refusal lane now",
            metrics.refusal_lane_open.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Count an admission.
    pub fn admitted(&self) {
        self.connections_admitted.inc();
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

    /// Track the refusal lane's occupancy (+1 on entry, -1 on exit).
    pub fn refusal_lane_delta(&self, delta: i64) {
        self.refusal_lane_open.inc_by(delta);
    }

    /// The text exposition, with registry gauges synchronised from `connections`.
    pub fn encode(&self, connections: RegistryStats) -> String {
        let as_gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.connections_open.set(as_gauge(connections.open));
        self.connections_max.set(as_gauge(connections.max));
        self.connections_high_water
            .set(as_gauge(connections.high_water));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
