//! Reading a relay process's accounting from its `/metrics` exposition: the real-mode
//! monitor's equivalent of the simulated worlds' `Observer`. The text becomes the same
//! [`RelayReading`] an observer gives, so one mapping turns either into a trace sample,
//! and the round-trip test below holds the two to the same numbers. At the end of a run,
//! the relay's host table is read from `GET /hosts` ([`host_endings`]), as an observer's
//! `hosts()` is read in the simulated worlds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use relay::rt::net::TcpStream;
use relay::rt::time::timeout;
use relay::upstream::HostPhase;
use tokio::io::AsyncReadExt;

use crate::actors::client;
use crate::actors::relay_host::{HostEnding, RelayReading};

/// Longest a scrape may take before the sample is skipped.
const SCRAPE_WITHIN: Duration = Duration::from_secs(2);

/// Scrape the relay on `addr` once. `None` when it is down, refuses the connection (at
/// capacity, the scrape is a connection like any other) or does not answer in time.
///
/// The scrape's own connection is admitted and open while `/metrics` is answered; it is
/// taken out of `open` and `admitted` so the reading is the relay's load, not the monitor's.
/// The scrape returns once the relay has closed that connection, so the next reading (the
/// end-of-run one may follow at once) does not count it as load either.
pub async fn scrape(addr: SocketAddr) -> Option<Result<RelayReading, String>> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let answer = client::get_text(&mut stream, "/metrics").await.ok()?;
        let mut rest = [0u8; 256];
        while stream.read(&mut rest).await.ok()? > 0 {}
        Some(answer)
    };
    let (response, text) = timeout(SCRAPE_WITHIN, exchange).await.ok()??;
    if response.status != 200 {
        return None;
    }
    Some(parse(&text).map(|mut reading| {
        let connections = &mut reading.connections;
        connections.open = connections.open.saturating_sub(1);
        connections.admitted_total = connections.admitted_total.saturating_sub(1);
        reading
    }))
}

/// Longest reading the host table may take (thousands of hosts, one JSON body).
const HOSTS_WITHIN: Duration = Duration::from_secs(10);

/// The relay's host table on `addr`, from `GET /hosts`. `None` when it is down, refuses or
/// does not answer in time; a body the harness cannot read is an error.
pub async fn host_endings(addr: SocketAddr) -> Option<Result<Vec<HostEnding>, String>> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        client::get_text(&mut stream, "/hosts").await.ok()
    };
    let (response, text) = timeout(HOSTS_WITHIN, exchange).await.ok()??;
    if response.status != 200 {
        return None;
    }
    Some(
        serde_json::from_str(&text)
            .map_err(|error| format!("the relay's /hosts is not the host list expected: {error}")),
    )
}

/// Read one exposition into a [`RelayReading`]; a metric the sample needs that is missing
/// is an error naming it (a relay built from other code than this harness expects).
pub fn parse(text: &str) -> Result<RelayReading, String> {
    let exposition = Exposition::parse(text)?;
    let value = |name: &str| exposition.value(name);
    let count = |name: &str| value(name).map(|v| v as usize);
    let mut by_phase = [0; HostPhase::ALL.len()];
    for phase in HostPhase::ALL {
        by_phase[phase as usize] = count(&format!(
            "relay_upstream_hosts{{phase=\"{}\"}}",
            phase.as_str()
        ))?;
    }
    let mut reading = RelayReading::default();
    reading.connections.open = count("relay_connections_open")?;
    reading.connections.max = count("relay_connections_max")?;
    reading.connections.high_water = count("relay_connections_high_water")?;
    reading.connections.admitted_total = value("relay_connections_admitted_total")?;
    reading.connections.released_total = value("relay_connections_released_total")?;
    // Created on the first refusal: absent means none yet.
    reading.connections.refused_at_capacity_total = exposition
        .value("relay_connections_refused_total{reason=\"at_capacity\"}")
        .unwrap_or(0);
    reading.upstreams.hosts = by_phase.iter().sum();
    reading.upstreams.by_phase = by_phase;
    reading.upstreams.workers_running = count("relay_upstream_workers_running")?;
    reading.upstreams.workers_high_water = count("relay_upstream_workers_high_water")?;
    reading.upstreams.handshakes_in_flight = count("relay_upstream_handshakes_in_flight")?;
    reading.upstreams.handshakes_high_water = count("relay_upstream_handshakes_high_water")?;
    reading.upstreams.events_total = value("relay_upstream_events")?;
    reading.events.head_seq = value("relay_events_head_seq")?;
    reading.events.store_healthy = value("relay_events_store_healthy")? == 1;
    reading.events.consumers = count("relay_consumers_subscribed")?;
    reading.events.consumers_kicked_total = value("relay_consumers_kicked")?;
    reading.events.mailbox_high_water = count("relay_consumer_mailbox_high_water")?;
    reading.events.ingest_held_bytes = value("relay_ingest_queued_bytes")?;
    reading.events.ingest_high_water_bytes = value("relay_ingest_queued_high_water_bytes")?;
    reading.dispatch.high_water = count("relay_handlers_in_flight_high_water")?;
    reading.memory.held_bytes = value("relay_memory_held_bytes")?;
    reading.memory.high_water_bytes = value("relay_memory_held_high_water_bytes")?;
    reading.memory.shedding = value("relay_memory_shedding")? == 1;
    reading.memory.shed_total = value("relay_memory_shed_requests")?;
    reading.memory.kicked_total = value("relay_memory_kicked_consumers")?;
    reading.tasks_alive = count("relay_tasks_alive")?;
    Ok(reading)
}

/// An exposition's samples: `name{labels}` (exactly as written) to value.
struct Exposition(BTreeMap<String, u64>);

impl Exposition {
    fn parse(text: &str) -> Result<Self, String> {
        let mut samples = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.rsplit_once(' ').and_then(|(key, value)| {
                let value = value.parse::<f64>().ok()?;
                // Every relay metric is a count, a byte total or a flag.
                (value >= 0.0 && value.fract() == 0.0).then(|| (key.to_owned(), value as u64))
            });
            let Some((key, value)) = parsed else {
                return Err(format!(
                    "/metrics line {}: expected `name{{labels}} value` with a whole value, got {line:?}",
                    number + 1
                ));
            };
            samples.insert(key, value);
        }
        Ok(Self(samples))
    }

    fn value(&self, key: &str) -> Result<u64, String> {
        self.0
            .get(key)
            .copied()
            .ok_or_else(|| format!("/metrics has no {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::metrics::Metrics;

    /// What the relay encodes is what the scrape reads: the sample a scrape makes equals
    /// the one an observer makes from the same counters.
    #[test]
    fn a_scraped_reading_matches_the_observed_one() {
        let mut reading = RelayReading::default();
        reading.connections.max = 64;
        reading.connections.open = 5;
        reading.connections.high_water = 64;
        reading.connections.admitted_total = 1_005;
        reading.connections.released_total = 1_000;
        reading.connections.refused_at_capacity_total = 3;
        reading.upstreams.by_phase = [1, 2, 3, 4, 5, 6, 7];
        reading.upstreams.hosts = 28;
        reading.upstreams.workers_running = 20;
        reading.upstreams.workers_high_water = 21;
        reading.upstreams.handshakes_in_flight = 2;
        reading.upstreams.handshakes_high_water = 9;
        reading.upstreams.events_total = 123_456;
        reading.events.head_seq = 99_999;
        reading.events.store_healthy = true;
        reading.events.consumers = 7;
        reading.events.consumers_kicked_total = 2;
        reading.events.mailbox_high_water = 256;
        reading.events.ingest_held_bytes = 2_048;
        reading.events.ingest_high_water_bytes = 1 << 20;
        reading.dispatch.high_water = 11;
        reading.memory.held_bytes = 4_096;
        reading.memory.high_water_bytes = 65_536;
        reading.memory.shedding = true;
        reading.memory.shed_total = 17;
        reading.memory.kicked_total = 1;
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.refused("at_capacity");
        }
        let text = metrics.encode(
            reading.connections,
            reading.upstreams.gauges(),
            reading.events,
            reading.dispatch,
            reading.memory,
        );
        let scraped = parse(&text).unwrap();
        // The task census is this process's, read when the text was encoded.
        reading.tasks_alive = scraped.tasks_alive;
        assert_eq!(scraped.sample(), reading.sample());
    }

    #[test]
    fn a_missing_or_malformed_metric_is_named() {
        let error = parse("relay_connections_open 1\n").unwrap_err();
        assert!(
            error.contains("/metrics has no relay_upstream_hosts"),
            "{error}"
        );
        let error = Exposition::parse("# HELP x\nrelay_x 1.5\n").err().unwrap();
        assert!(error.contains("line 2"), "{error}");
    }
}
