//! The CPU model. Simulators charge no simulated time for CPU work, so without this a
//! storm of 2,800 TLS/WebSocket handshakes would cost nothing inside the tunnel and could
//! never starve a health probe the way it does in production.
//!
//! The relay declares the cost of known CPU-heavy steps with [`Cpu::spend`]. In production
//! that is a no-op (the real CPU does the charging). Under madsim each call takes one of
//! `cores` permits from a FIFO semaphore and holds it for the declared cost of simulated
//! time, so work queues behind work exactly as it would on a saturated machine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Declared CPU costs and the modelled core count. Only the simulation reads these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Cores modelled in simulation (permits of the FIFO CPU semaphore).
    pub cores: usize,
    /// Cost of serving one small HTTP request (routing, encoding a probe answer), microseconds.
    pub http_request_us: u64,
    /// Cost of one upstream DNS + TLS + WebSocket client handshake, microseconds.
    pub upstream_handshake_us: u64,
    /// Cost of decoding and validating one upstream event frame, microseconds: the DAG-CBOR
    /// header and body, the DID/TID syntax, and the CAR's block hashes and root commit
    /// object.
    pub frame_decode_us: u64,
    /// Cost of writing, deleting or reading one event-log row in SQLite, microseconds.
    pub store_row_us: u64,
    /// Cost of rendering one host of the `/hosts` listing as JSON, microseconds.
    pub host_listing_us: u64,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            cores: 2,
            http_request_us: 50,
            upstream_handshake_us: 20_000,
            frame_decode_us: 50,
            store_row_us: 10,
            host_listing_us: 2,
        }
    }
}

impl CpuConfig {
    /// The declared cost of one HTTP request.
    pub fn http_request(&self) -> Duration {
        Duration::from_micros(self.http_request_us)
    }

    /// The declared cost of one upstream handshake.
    pub fn upstream_handshake(&self) -> Duration {
        Duration::from_micros(self.upstream_handshake_us)
    }

    /// The declared cost of one event-log row.
    pub fn store_row(&self) -> Duration {
        Duration::from_micros(self.store_row_us)
    }

    /// The declared cost of rendering `hosts` hosts of the `/hosts` listing.
    pub fn host_listing(&self, hosts: usize) -> Duration {
        Duration::from_micros(self.host_listing_us.saturating_mul(hosts as u64))
    }

    /// The declared cost of decoding one upstream frame (DAG-CBOR, CAR hashes and root).
    pub fn frame_decode(&self) -> Duration {
        Duration::from_micros(self.frame_decode_us)
    }
}

/// One relay instance's CPU. Clone-cheap handles share the same cores.
#[derive(Clone, Debug)]
pub struct Cpu {
    #[cfg(madsim)]
    cores: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Cpu {
    /// The CPU described by `config`.
    pub fn new(config: &CpuConfig) -> Self {
        #[cfg(not(madsim))]
        let _ = config;
        Self {
            #[cfg(madsim)]
            cores: std::sync::Arc::new(tokio::sync::Semaphore::new(config.cores.max(1))),
        }
    }

    /// Declare `cost` of CPU work. Production: returns at once. Simulation: waits for a core
    /// (FIFO) and occupies it for `cost` of simulated time.
    pub async fn spend(&self, cost: Duration) {
        #[cfg(madsim)]
        {
            let _core = self
                .cores
                .acquire()
                .await
                .expect("the CPU semaphore is never closed");
            tokio::time::sleep(cost).await;
        }
        #[cfg(not(madsim))]
        let _ = cost;
    }
}
