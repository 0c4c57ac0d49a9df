//! How admitted connections reach their handlers: concurrently (the default) or serialized.
//!
//! `server.dispatch = "serialized"` is for deployments whose handlers must never overlap
//! (the relay's own handlers do not need it; a handler that writes to a resource that is not
//! safe to share does). In that mode the server serves one connection's exchange at a
//! time: the connection takes the dispatch turn when its first non-probe request head has
//! arrived (so a client trickling its head cannot hold the turn) and gives it back when
//! the connection ends.
//!
//! A turn held for a whole connection is only safe if a connection is one exchange. The
//! HTTP framework crash report this comes from: serialized mode kept keep-alive
//! connections, served them outside the serialized path so they would not block it, and
//! workers crashed under concurrent dispatch; the fix was to force one request per
//! connection. So in serialized mode every response says `Connection: close` (except a
//! WebSocket upgrade, whose connection stops being HTTP; its turn ends with the handshake)
//! and a keep-alive client cannot hold the turn between its requests.
//!
//! Probes and `/metrics` are never dispatched: they answer from atomics, and queueing them
//! behind a slow handler would turn one slow request into a failed liveness check.
//!
//! The dispatcher also counts handlers in flight (in both modes) and their high water,
//! which is how the wind tunnel checks that serialized means serialized.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `server.dispatch`: whether handlers of different connections may run at the same time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatchMode {
    /// Every connection's handlers run as soon as their request arrives.
    #[default]
    Concurrent,
    /// One connection's exchange at a time, one request per connection.
    Serialized,
}

/// Dispatch counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Dispatched handlers running now.
    pub in_flight: usize,
    /// Most dispatched handlers ever running at once.
    pub high_water: usize,
}

/// The server's dispatcher: the serialized mode's turn, and the in-flight count.
#[derive(Debug)]
pub struct Dispatcher {
    mode: DispatchMode,
    /// One permit, handed out first come first served (serialized mode only).
    turn: Arc<Semaphore>,
    in_flight: AtomicUsize,
    high_water: AtomicUsize,
}

/// The dispatch turn one connection holds (serialized mode), given back when the
/// connection's task drops it. Shared only by the connection's own requests.
#[derive(Debug, Default)]
pub struct ConnectionTurn(Mutex<Option<OwnedSemaphorePermit>>);

impl ConnectionTurn {
    /// Give the turn back now (a WebSocket upgrade ends the connection's HTTP exchange).
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn holds(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn keep(&self, permit: OwnedSemaphorePermit) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(permit);
    }
}

/// One dispatched handler, counted while it lives.
#[derive(Debug)]
#[must_use = "the handler is counted in flight only while this lives"]
pub struct InFlight<'a> {
    dispatcher: &'a Dispatcher,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.dispatcher.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dispatcher {
    /// A dispatcher in `mode`.
    pub fn new(mode: DispatchMode) -> Self {
        Self {
            mode,
            turn: Arc::new(Semaphore::new(1)),
            in_flight: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
        }
    }

    /// Whether every response must end its connection.
    pub fn closes_connections(&self) -> bool {
        self.mode == DispatchMode::Serialized
    }

    /// Wait until a handler of the connection holding `turn` may run (serialized mode: the
    /// connection takes the turn unless it already holds it), then count it in flight.
    pub async fn enter<'a>(&'a self, turn: &ConnectionTurn) -> InFlight<'a> {
        if self.mode == DispatchMode::Serialized && !turn.holds() {
            let permit = Arc::clone(&self.turn)
                .acquire_owned()
                .await
                .expect("the dispatch semaphore is never closed");
            turn.keep(permit);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.high_water.fetch_max(now, Ordering::SeqCst);
        InFlight { dispatcher: self }
    }

    /// Counters.
    pub fn stats(&self) -> DispatchStats {
        DispatchStats {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            high_water: self.high_water.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::time::{timeout, Duration};

    #[tokio::test]
    async fn serialized_turn_is_held_per_connection_until_released() {
        let dispatcher = Dispatcher::new(DispatchMode::Serialized);
        let first = ConnectionTurn::default();
        let second = ConnectionTurn::default();
        drop(dispatcher.enter(&first).await);
        // The first connection still holds the turn: the second must wait.
        let blocked = timeout(Duration::from_millis(20), dispatcher.enter(&second)).await;
        assert!(
            blocked.is_err(),
            "second connection ran while the first held the turn"
        );
        // The holder's next request does not wait for itself.
        drop(dispatcher.enter(&first).await);
        first.release();
        drop(dispatcher.enter(&second).await);
        assert_eq!(dispatcher.stats().high_water, 1);
    }

    #[tokio::test]
    async fn concurrent_mode_counts_overlapping_handlers() {
        let dispatcher = Dispatcher::new(DispatchMode::Concurrent);
        let (a, b) = (ConnectionTurn::default(), ConnectionTurn::default());
        let one = dispatcher.enter(&a).await;
        let two = dispatcher.enter(&b).await;
        assert_eq!(dispatcher.stats().in_flight, 2);
        drop((one, two));
        assert_eq!(
            dispatcher.stats(),
            DispatchStats {
                in_flight: 0,
                high_water: 2
            }
        );
        assert!(!dispatcher.closes_connections());
    }
}
