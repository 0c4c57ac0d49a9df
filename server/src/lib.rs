//! The relay: an event relay's HTTP core, written once and run both in production (real
//! tokio) and inside the wind tunnel (madsim), unmodified.
//!
//! Module map:
//! - [`atproto`]: the sync protocol: event-stream frames, message bodies, CAR, DID/TID syntax.
//! - [`rt`]: the runtime seam; the only place naming sockets, clocks, spawning, the CPU model.
//! - [`config`]: the configuration schema, defaults and layering (file, env, flags).
//! - [`http`]: accept loop, admission, per-connection owner tasks, routes, shutdown.
//! - [`upstream`]: one worker per upstream host, the startup ramp, backoff, dormancy.
//! - [`events`]: sequencer, persistence, retention and fan-out to consumers.
//! - [`store`]: SQLite (embedded): the host table, the event log and their migrations.
//! - [`memory`]: the memory account and the breaker that sheds load under pressure.
//! - [`metrics`]: the per-instance Prometheus registry.
//! - [`vital`]: the long-lived tasks whose panic fails liveness (no half-broken relay).
//! - [`logging`]: tracing subscriber setup for the binary.
//!
//! Tests and the wind tunnel drive the relay through [`Relay`] exactly as the binary does:
//! bind, then [`Relay::run`] with a shutdown future (the mini-redis shape).

pub mod atproto;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod rt;
pub mod store;
pub mod upstream;
pub mod vital;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use http::peers::OpenConnection;
pub use relay_lifecycle::{Phase, RegistryStats};

use crate::config::Config;
use crate::events::EventStats;
use crate::http::dispatch::DispatchStats;
use crate::http::{AppState, ShutdownReport};
use crate::memory::MemoryStats;
use crate::rt::net::TcpListener;
use crate::rt::stop::StopSignal;
use crate::store::{Store, StoreError};
use crate::upstream::transport::{Transport, TransportError};
use crate::upstream::{HostView, UpstreamStats};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("cannot open the store at {path}: {error}")]
    Store {
        /// The configured path.
        path: String,
        /// What went wrong.
        error: StoreError,
    },
    /// The upstream transport could not be set up (`upstream.tls_ca_file`).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        error: io::Error,
    },
}

/// Descriptors the relay needs beyond one per connection and one per upstream host: the
/// listener, the database and its WAL, logs, DNS.
const FD_RESERVE: u64 = 64;

/// Raise the open-file limit toward what `config` and a table of `hosts` upstream hosts
/// need, and say loudly when the hard limit does not allow it: past the limit, connections
/// are refused and upstream dials wait (counted as `local_resources_exhausted`).
fn raise_open_file_limit(config: &Config, hosts: usize) {
    let needed = config.server.max_connections as u64 + hosts as u64 + FD_RESERVE;
    match rt::fd_limit::raise_toward(needed) {
        Ok(limit) if limit.soft < needed => tracing::warn!(
            needed,
            soft = limit.soft,
            hard = limit.hard,
            "the open-file limit is below what server.max_connections and the host table need; \
             raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower server.max_connections"
        ),
        Ok(limit) => tracing::debug!(needed, soft = limit.soft, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// A bound, not yet running relay.
#[derive(Debug)]
pub struct Relay {
    state: Arc<AppState>,
    listener: TcpListener,
    /// The admin API's listener, bound only when `admin.secret` is set.
    admin: Option<TcpListener>,
}

impl Relay {
    /// Set up the upstream transport (reading `upstream.tls_ca_file`), open the store, load
    /// the host table, and bind the listener named by `config.server.listen` (and
    /// `config.admin.listen` when an admin secret is set). Nothing runs until [`Relay::run`].
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let transport = Transport::new(&config.upstream)?;
        let store_error = |error| StartError::Store {
            path: config.store.path.display().to_string(),
            error,
        };
        let store = Store::open_with(&config.store.path, config.store.durable_commits)
            .map_err(store_error)?;
        let state =
            AppState::new(config.clone(), Arc::new(store), transport).map_err(store_error)?;
        raise_open_file_limit(&config, state.upstreams.stats().hosts);
        let listener = http::bind(&config)
            .await
            .map_err(|error| StartError::Bind {
                addr: config.server.listen,
                error,
            })?;
        let admin = if config.admin.enabled() {
            let listener = TcpListener::bind(config.admin.listen)
                .await
                .map_err(|error| StartError::Bind {
                    addr: config.admin.listen,
                    error,
                })?;
            Some(listener)
        } else {
            None
        };
        Ok(Self {
            state: Arc::new(state),
            listener,
            admin,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, when it is bound (useful with port 0).
    pub fn admin_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// A read-only view for tests and the wind tunnel's oracles.
    pub fn observer(&self) -> Observer {
        Observer {
            state: Arc::clone(&self.state),
        }
    }

    /// Serve until `shutdown` resolves, then drain connections within the grace period.
    /// The admin listener (if bound) closes when the public one does.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        tracing::info!(
            listen = %self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            max_connections = self.state.config.server.max_connections,
            "relay serving"
        );
        let admin_stop = StopSignal::new();
        if let Some(admin) = self.admin {
            tracing::info!(
                listen = %admin.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
                "admin API serving"
            );
            rt::spawn(http::admin::serve(
                Arc::clone(&self.state),
                admin,
                admin_stop.clone(),
            ));
        }
        let report = http::serve(self.state, self.listener, shutdown).await;
        admin_stop.stop();
        report
    }
}

/// Read-only access to a running relay's state.
#[derive(Clone, Debug)]
pub struct Observer {
    state: Arc<AppState>,
}

impl Observer {
    /// Lifecycle registry counters (open, high water, admitted, released, refused).
    pub fn connections(&self) -> RegistryStats {
        self.state.registry.stats()
    }

    /// Every connection held open now (peer, admission time, phase, last activity), and
    /// the relay clock's reading they are relative to, ms.
    pub fn open_connections(&self) -> (Vec<OpenConnection>, u64) {
        let open = self.state.peers.open_connections(&self.state.registry);
        (open, self.state.clock.now_ms())
    }

    /// Whether `/_readyz` would answer 200 now.
    pub fn is_ready(&self) -> bool {
        self.state.is_ready()
    }

    /// The `/metrics` text as it would be served now.
    pub fn metrics_text(&self) -> String {
        self.state.metrics_text()
    }

    /// Upstream aggregate counts (phases, workers, handshakes, events).
    pub fn upstreams(&self) -> UpstreamStats {
        self.state.upstreams.stats()
    }

    /// Every upstream host, as `/hosts` shows it.
    pub fn hosts(&self) -> Vec<HostView> {
        self.state.upstreams.views()
    }

    /// Dispatched handlers in flight now and at most.
    pub fn dispatch(&self) -> DispatchStats {
        self.state.dispatcher.stats()
    }

    /// The memory account: bytes held, high water, breaker state, sheds and kicks.
    pub fn memory(&self) -> MemoryStats {
        self.state.memory.stats()
    }

    /// Event pipeline counters (head, retention, consumers, kicks, store health).
    pub fn events(&self) -> EventStats {
        self.state.events.stats()
    }
}
