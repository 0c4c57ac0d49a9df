//! The world's cast, shared by every engine: the upstream hosts, consumers, probers,
//! churners, callers and abusers, the relay's host program with the world's handle on it,
//! the monitor that samples it, the store audit, and the trace they all write to.
//!
//! Nothing here names an engine. Sockets, timers and spawning come through the relay's own
//! seam (`relay::rt`), so the same actor code runs on madsim's nodes, on turmoil's hosts
//! and on real tokio; the few things an engine must provide are the world's clock
//! ([`WorldClock`]) and the seeded RNG ([`rng`]). [`cast`] lists the relay's clients once,
//! for every world to start. Nothing here imports the worlds or the oracles: the cast does
//! not depend on the judge, and a world hands the monitor the one judgement it needs
//! ([`relay_host::ConnWatch`]).

pub mod abuser;
pub mod cast;
pub mod client;
pub mod consumer;
pub mod crawl;
pub mod hostile;
pub mod http;
pub mod relay_host;
pub mod repo;
pub mod rng;
pub mod upstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::rt::time::{now, Instant};

use crate::trace::{Event, Trace};

/// The world's time since it started, as every actor of one run sees it.
#[derive(Clone, Copy, Debug)]
pub enum WorldClock {
    /// One clock for the whole world (madsim's virtual clock, or real time): elapsed since
    /// this instant.
    Since(Instant),
    /// turmoil: every host has its own paused tokio clock, so instants of two hosts do not
    /// compare; the simulation's own elapsed time does.
    #[cfg(not(madsim))]
    TurmoilSimulation,
}

impl WorldClock {
    /// Time since the world started.
    pub fn elapsed(&self) -> Duration {
        match self {
            Self::Since(start) => start.elapsed(),
            #[cfg(not(madsim))]
            Self::TurmoilSimulation => turmoil::sim_elapsed().unwrap_or_default(),
        }
    }

    /// The world's start as an instant of the calling task's clock: what actors add their
    /// scenario offsets to.
    pub fn start(&self) -> Instant {
        match self {
            Self::Since(start) => *start,
            #[cfg(not(madsim))]
            Self::TurmoilSimulation => {
                let now = now();
                now.checked_sub(self.elapsed()).unwrap_or(now)
            }
        }
    }
}

/// Shared, append-only trace for all actors of one run. Both engines run one task at a
/// time on one thread, so the lock is never contended; it exists to satisfy `Send`.
#[derive(Clone, Debug)]
pub struct TraceSink {
    inner: Arc<Mutex<Trace>>,
    clock: WorldClock,
}

impl TraceSink {
    /// A sink whose stamps are the world's time since `clock`'s start.
    pub fn new(clock: WorldClock) -> Self {
        Self {
            inner: Arc::default(),
            clock,
        }
    }

    /// A sink for a world that starts now, on one clock.
    pub fn starting_now() -> Self {
        Self::new(WorldClock::Since(now()))
    }

    /// Append `event` observed by `node`, stamped with the world's time.
    pub fn record(&self, node: &str, event: Event) {
        let t_us = u64::try_from(self.clock.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner
            .lock()
            .expect("trace lock poisoned")
            .push(t_us, node, event);
    }

    /// Look at the records so far.
    pub fn with_records<R>(&self, read: impl FnOnce(&[crate::trace::Record]) -> R) -> R {
        read(self.inner.lock().expect("trace lock poisoned").records())
    }

    /// Record the start of a world phase.
    pub fn phase(&self, name: &str) {
        self.record(
            "world",
            Event::Phase {
                name: name.to_owned(),
            },
        );
    }

    /// Take the trace recorded so far (the sink is left empty).
    pub fn take(&self) -> Trace {
        std::mem::take(
            &mut *self
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The WebSocket settings the world's upstream hosts and consumers use: the relay's own
/// small read buffer (`relay::upstream::WS_READ_BUFFER_BYTES`), so the tunnel's wall
/// time goes to the relay and not to zero-filling 128 KiB buffers on the actors' side.
pub fn actor_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(relay::upstream::WS_READ_BUFFER_BYTES)
}
