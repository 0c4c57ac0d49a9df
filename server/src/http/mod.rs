//! The HTTP server: our own accept loop, admission through the lifecycle registry and the
//! per-address shares, one owner task per admitted connection, the refusal lane and the
//! probe reserve behind it, the idle reaper, graceful shutdown (readiness fails first, the
//! listener keeps accepting for `shutdown_drain_ms`, then closes and connections drain).
//!
//! Why our own loop instead of a framework's: admission must happen *before* any request
//! is read, through `relay-lifecycle`, so that `max_connections` is a hard bound on owner
//! tasks and every close request (idle, shutdown, later kicks and evictions) reaches the one
//! task allowed to close the socket.

mod activity;
pub mod admin;
pub mod dispatch;
mod guard;
mod host_pages;
pub mod peers;
mod response;
pub mod routes;
mod shares;
pub mod subscribe;
pub mod xrpc;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use relay_lifecycle::{AdmitError, ConnOwner, Registry};
use tokio::sync::Semaphore;

use self::activity::ActivityIo;
use self::dispatch::{ConnectionTurn, Dispatcher};
use self::guard::RequestContext;
use self::routes::{Lane, Refused, Route};
use self::shares::{AddressShares, Share, WindowedCounts};
use crate::config::Config;
use crate::events::Events;
use crate::memory::MemoryGuard;
use crate::metrics::Metrics;
use crate::rt::cpu::Cpu;
use crate::rt::net::{TcpListener, TcpStream};
use crate::rt::probe::{self, Probe};
use crate::rt::time::{now, sleep, sleep_until, timeout, Clock, Duration, Instant};
use crate::rt::{self, HyperTimer};
use crate::store::{Store, StoreError};
use crate::upstream::{Upstreams, QUARANTINE_EVENT_UNSTORABLE};
use crate::vital::Vitals;

/// Everything a connection task needs, shared by `Arc`. No field is a lock: the request
/// path touches only atomics, the lifecycle registry and the CPU model.
#[derive(Debug)]
pub struct AppState {
    /// The effective configuration.
    pub config: Config,
    /// Admission and close requests for every connection.
    pub registry: Arc<Registry>,
    /// Who holds each registry slot (peer, admission time), for naming leaks.
    pub peers: peers::PeerTable,
    /// This instance's metrics.
    pub metrics: Arc<Metrics>,
    /// Declared CPU costs (simulation only charges them).
    pub cpu: Cpu,
    /// Millisecond clock for activity stamps.
    pub clock: Clock,
    /// Upstream subscriptions and the host table.
    pub upstreams: Arc<Upstreams>,
    /// The event log: sequencer, retention and fan-out to consumers.
    pub events: Arc<Events>,
    /// The memory account and its load-shedding breaker.
    pub memory: Arc<MemoryGuard>,
    /// How admitted connections reach their handlers (`server.dispatch`).
    pub dispatcher: Dispatcher,
    /// The long-lived tasks whose panic fails liveness.
    pub vitals: Arc<Vitals>,
    /// Caps concurrent refusal-lane connections.
    refusal_lane: Arc<Semaphore>,
    /// Caps concurrent connections on the probe reserve.
    probe_reserve: Arc<Semaphore>,
    /// Admitted connections per client address (`max_connections_per_ip`).
    connection_shares: Arc<AddressShares>,
    /// Refusal-lane places per client address (`refusal_lane_per_ip_max`).
    refusal_lane_shares: Arc<AddressShares>,
    /// `requestCrawl` requests per client address and window (`upstream.crawl_per_client_max`).
    crawl_requests: WindowedCounts,
    /// Whether `requestCrawl` is accepted (the admin API's switch; on at start).
    crawl_enabled: AtomicBool,
    /// Set while the accept loop runs and shutdown has not begun.
    accepting: AtomicBool,
    /// Set on the shutdown signal, while the listener still accepts (`shutdown_drain_ms`).
    shutdown_requested: AtomicBool,
    /// Numbers requests for logs (per instance, so seed-stable in the wind tunnel).
    request_ids: AtomicU64,
}

impl AppState {
    /// Build the shared state for `config` around an open store (loads the host table).
    pub fn new(config: Config, store: Arc<Store>) -> Result<Self, StoreError> {
        let metrics = Arc::new(Metrics::new());
        let memory = Arc::new(MemoryGuard::new(&config.memory));
        let cpu = Cpu::new(&config.cpu);
        let clock = Clock::start();
        let events = Events::open(
            config.events.clone(),
            &config.cpu,
            cpu.clone(),
            Arc::clone(&store),
            Arc::clone(&metrics),
            Arc::clone(&memory),
            clock.clone(),
        )?;
        let upstreams = Upstreams::load(
            config.upstream.clone(),
            config.cpu.clone(),
            cpu.clone(),
            clock.clone(),
            store,
            Arc::clone(&metrics),
        )?;
        Ok(Self {
            registry: Registry::new(config.server.max_connections),
            peers: peers::PeerTable::new(config.server.max_connections),
            metrics,
            cpu,
            clock,
            upstreams: Arc::new(upstreams),
            events: Arc::new(events),
            memory,
            dispatcher: Dispatcher::new(config.server.dispatch),
            vitals: Arc::default(),
            refusal_lane: Arc::new(Semaphore::new(config.server.refusal_lane_max)),
            probe_reserve: Arc::new(Semaphore::new(config.server.probe_reserve_max)),
            connection_shares: AddressShares::new(
                config.server.max_connections,
                config.server.max_connections_per_ip,
            ),
            refusal_lane_shares: AddressShares::new(
                config.server.refusal_lane_max,
                config.server.refusal_lane_per_ip_max,
            ),
            crawl_requests: WindowedCounts::new(config.upstream.crawl_per_client_max),
            crawl_enabled: AtomicBool::new(true),
            accepting: AtomicBool::new(false),
            shutdown_requested: AtomicBool::new(false),
            request_ids: AtomicU64::new(0),
            config,
        })
    }

    /// Whether the shutdown signal has come (readiness fails from then on).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_requested.load(Ordering::SeqCst) || self.registry.is_shutting_down()
    }

    /// Readiness: no vital task lost, accepting, not shutting down, the upstream ramp has
    /// begun, the event log accepted its last commit and the memory breaker is closed. Answered from atomics
    /// only.
    pub fn is_ready(&self) -> bool {
        self.vitals.lost().is_none()
            && self.accepting.load(Ordering::SeqCst)
            && !self.is_shutting_down()
            && self.upstreams.ramp_started()
            && self.events.store_ready()
            && !self.memory.shedding()
    }

    /// The next request number (1, 2, …): names a request in the logs.
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The `/metrics` text as of now.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode(
            self.registry.stats(),
            self.upstreams.stats().gauges(),
            self.events.stats(),
            self.dispatcher.stats(),
            self.memory.stats(),
        )
    }

    fn http1(&self, lane: Lane<'_>) -> http1::Builder {
        let server = &self.config.server;
        let mut builder = http1::Builder::new();
        builder
            .timer(HyperTimer)
            .auto_date_header(server.date_header)
            .max_header_size(server.max_header_bytes)
            .max_buf_size(server.max_header_bytes.max(8192));
        match lane {
            Lane::Admitted(_) => builder.header_read_timeout(server.header_read_timeout()),
            Lane::Refusal(_) | Lane::ProbeReserve => builder
                .header_read_timeout(server.refusal_read_timeout())
                .keep_alive(false),
        };
        builder
    }
}

/// What the server did on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the grace period ended (0 for a clean drain).
    pub connections_left: usize,
}

/// Accept connections until `shutdown` resolves and `shutdown_drain_ms` more (readiness
/// failing meanwhile), then close the listener and drain.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> ShutdownReport {
    let server = &state.config.server;
    tokio::pin!(shutdown);
    state.accepting.store(true, Ordering::SeqCst);
    let upstreams = Arc::clone(&state.upstreams);
    let ingest = state.events.start(
        state.upstreams.cursors(),
        &state.vitals,
        Box::new(move |host_id| {
            upstreams.quarantine(host_id, QUARANTINE_EVENT_UNSTORABLE);
        }),
    );
    state.upstreams.start(ingest, &state.vitals);
    let mut next_reap = now() + server.idle_check_interval();
    // Set when the shutdown signal comes: the listener closes at this instant.
    let mut listener_closes_at = None;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown, if listener_closes_at.is_none() => {
                state.shutdown_requested.store(true, Ordering::SeqCst);
                tracing::info!(
                    drain_ms = server.shutdown_drain_ms,
                    "shutdown requested: readiness fails, still accepting until the drain ends"
                );
                listener_closes_at = Some(now() + server.shutdown_drain());
            }
            () = sleep_until_some(listener_closes_at) => break,
            () = sleep_until(next_reap) => {
                next_reap = now() + server.idle_check_interval();
                let reaped = state.registry.reap_idle(state.clock.now_ms(), server.idle_timeout_ms);
                if reaped > 0 {
                    probe::reached(Probe::IdleReap);
                    tracing::debug!(reaped, "idle connections asked to close");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(&state, stream, peer),
                Err(error) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning on the error.
                    tracing::warn!(%error, "accept failed");
                    sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    state.accepting.store(false, Ordering::SeqCst);
    drop(listener);
    state.upstreams.stop();
    state.events.stop();
    let asked = state.registry.begin_shutdown();
    tracing::info!(
        open = state.registry.open(),
        asked,
        "shutting down: draining connections"
    );
    let deadline = now() + server.shutdown_grace();
    while state.registry.open() > 0 && now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let connections_left = state.registry.open();
    if connections_left > 0 {
        tracing::warn!(
            connections_left,
            "shutdown grace period ended with connections open"
        );
    }
    ShutdownReport { connections_left }
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn admit(state: &Arc<AppState>, stream: TcpStream, peer: SocketAddr) {
    let now_ms = state.clock.now_ms();
    let (refused, reason) = match state.connection_shares.try_take(peer.ip()) {
        None => {
            probe::reached(Probe::PerIpLimit);
            (Refused::PerAddress, "per_ip_limit")
        }
        Some(share) => match state.registry.try_admit(now_ms) {
            Ok(owner) => {
                state.peers.admitted(owner.id(), peer, now_ms);
                rt::spawn(own_connection(
                    Arc::clone(state),
                    stream,
                    peer.ip(),
                    owner,
                    share,
                ));
                return;
            }
            Err(AdmitError::AtCapacity) => {
                probe::reached(Probe::AdmissionAtCapacity);
                (Refused::Capacity, "at_capacity")
            }
            Err(AdmitError::ShuttingDown) => (Refused::Capacity, "shutting_down"),
        },
    };
    state.metrics.refused(reason);
    let lane_share = state.refusal_lane_shares.try_take(peer.ip());
    let lane_permit = Arc::clone(&state.refusal_lane).try_acquire_owned();
    let (lane, permit, share) = match (lane_share, lane_permit) {
        (Some(share), Ok(permit)) => (Lane::Refusal(refused), permit, Some(share)),
        (share, permit) => {
            probe::reached(Probe::RefusalLaneFull);
            state.metrics.refused(if share.is_none() {
                "refusal_lane_per_ip"
            } else {
                "refusal_lane_full"
            });
            drop(permit);
            let Ok(reserve) = Arc::clone(&state.probe_reserve).try_acquire_owned() else {
                tracing::debug!(%peer, "refusal lane and probe reserve full: closing without a response");
                state.metrics.refused("probe_reserve_full");
                return;
            };
            probe::reached(Probe::ProbeReserve);
            (Lane::ProbeReserve, reserve, None)
        }
    };
    let state = Arc::clone(state);
    let on_lane = i64::from(matches!(lane, Lane::Refusal(_)));
    rt::spawn(async move {
        state.metrics.refusal_lane_delta(on_lane);
        refuse(&state, stream, peer.ip(), lane).await;
        state.metrics.refusal_lane_delta(-on_lane);
        drop((permit, share));
    });
}

/// The owner task of one admitted connection: serves it, honours close requests, and
/// releases the registry slot (by dropping the owner) exactly once, when it ends.
/// `share` is the connection's place in its address's `max_connections_per_ip`.
async fn own_connection(
    state: Arc<AppState>,
    stream: TcpStream,
    client: IpAddr,
    owner: ConnOwner,
    share: Share,
) {
    let owner = Arc::new(owner);
    let reason = if owner.activate() {
        drive_connection(&state, stream, client, &owner).await
    } else {
        // A close was requested between admission and activation (e.g. shutdown).
        owner
            .close_requested()
            .map_or("requested", |reason| reason.as_str())
    };
    state.metrics.closed(reason);
    drop(share);
}

async fn drive_connection(
    state: &Arc<AppState>,
    stream: TcpStream,
    client: IpAddr,
    owner: &Arc<ConnOwner>,
) -> &'static str {
    let io = TokioIo::new(ActivityIo::new(
        stream,
        Arc::clone(owner),
        state.clock.clone(),
    ));
    let service_state = Arc::clone(state);
    // Where the `subscribeRepos` route parks an accepted WebSocket handshake for this task.
    let pending: subscribe::PendingSlot = Arc::default();
    let service_pending = Arc::clone(&pending);
    // This connection's dispatch turn (serialized mode); given back when the task ends.
    let turn = Arc::new(ConnectionTurn::default());
    let service_turn = Arc::clone(&turn);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        let pending = Arc::clone(&service_pending);
        let turn = Arc::clone(&service_turn);
        // Boxed for the same reason as the session below: hyper keeps the service's future
        // inline in the connection, so unboxed every idle connection would carry the
        // largest handler's state.
        Box::pin(async move {
            let mut response = if subscribe::is_subscribe(&request) {
                let context = RequestContext::new("subscribe", &request, state.next_request_id());
                let _in_flight = state.dispatcher.enter(&turn).await;
                state.cpu.spend(state.config.cpu.http_request()).await;
                guard::guarded(&state, context, async {
                    subscribe::accept(&state, request, &pending)
                })
                .await
            } else {
                serve_route(&state, request, Lane::Admitted(&turn), client).await
            };
            if state.dispatcher.closes_connections()
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                // hyper ends the connection after a response that says so.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        })
    });
    let connection = state
        .http1(Lane::Admitted(&turn))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        biased;
        result = connection.as_mut() => {
            // The HTTP exchange is over; a subscription does not hold the dispatch turn.
            turn.release();
            let upgraded = pending.lock().unwrap_or_else(PoisonError::into_inner).take();
            match (result, upgraded) {
                // Boxed: a session's state lives on the heap only while there is one, so a
                // plain HTTP connection's task does not carry it (it was ~12 KB of every
                // idle keep-alive connection, BENCHMARKS.md "idle connections").
                (Ok(()), Some(subscription)) => {
                    Box::pin(subscribe::run(state, subscription, owner)).await
                }
                (result, _) => finished_reason(result),
            }
        }
        reason = owner.close_request() => {
            // Finish the in-flight request (if any), then close; bounded by the drain timeout.
            connection.as_mut().graceful_shutdown();
            match timeout(state.config.server.drain_timeout(), connection).await {
                Ok(_) => reason.as_str(),
                Err(_) => "drain_timeout",
            }
        }
    }
}

/// Serve exactly one request from `client` on a refused connection (`lane`: the refusal
/// lane or the probe reserve), then close.
async fn refuse(state: &Arc<AppState>, stream: TcpStream, client: IpAddr, lane: Lane<'static>) {
    let service_state = Arc::clone(state);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(serve_route(&state, request, lane, client).await) }
    });
    let connection = state
        .http1(lane)
        .serve_connection(TokioIo::new(stream), service);
    let budget = state.config.server.refusal_read_timeout() + state.config.server.drain_timeout();
    if let Ok(Err(error)) = timeout(budget, connection).await {
        tracing::debug!(%error, "refusal lane connection ended with an error");
    }
}

/// Answer one request from `client` that is not a subscription: its route's handler runs
/// inside the request boundary (`guard`), after the dispatch turn (unless the route is
/// served at capacity) and the declared CPU cost every request pays.
async fn serve_route(
    state: &AppState,
    request: Request<Incoming>,
    lane: Lane<'_>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    let route = Route::of(request.uri().path());
    let context = RequestContext::new(route.label(), &request, state.next_request_id());
    let _in_flight = match lane {
        Lane::Admitted(turn) if !route.served_at_capacity() => {
            Some(state.dispatcher.enter(turn).await)
        }
        _ => None,
    };
    state.cpu.spend(state.config.cpu.http_request()).await;
    let response = guard::guarded(
        state,
        context,
        routes::respond(state, request, route, lane, client),
    )
    .await;
    if route.is_xrpc() {
        xrpc::in_lexicon_terms(response).await
    } else {
        response
    }
}

fn finished_reason(result: Result<(), hyper::Error>) -> &'static str {
    match result {
        Ok(()) => "completed",
        Err(error) if error.is_timeout() => "header_timeout",
        Err(error) if error.is_parse() || error.is_parse_too_large() => "malformed",
        Err(error) if error.is_incomplete_message() => "incomplete",
        Err(_) => "io_error",
    }
}

/// Bind the configured listener.
pub async fn bind(config: &Config) -> io::Result<TcpListener> {
    TcpListener::bind(config.server.listen).await
}
