//! [`StopSignal`]: a one-way "stop now" flag that any number of tasks wait on — the
//! relay's shutdown signal for its sequencer, retention loop, upstream ramp,
//! reconciliation and workers.
//!
//! It replaces `tokio::sync::watch<bool>`, which broke determinism: a watch channel spreads
//! its waiters over eight `Notify`s chosen by tokio's per-thread RNG, and that RNG is
//! seeded from a *process-wide* counter. The order in which stopped tasks woke (and so
//! which upstream connections closed first) depended on how many simulations the process
//! had run before, so a seed's trace hash changed when other seeds ran before it. Here the
//! waiters sit on one `Notify`, woken in the order they registered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A flag that goes from "running" to "stopped" once. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct StopSignal {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    stopped: AtomicBool,
    wakeup: Notify,
}

impl StopSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire the signal: every current and future [`StopSignal::stopped`] resolves.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.wakeup.notify_waiters();
    }

    /// Whether the signal has fired.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub async fn stopped(&self) {
        loop {
            let wakeup = self.shared.wakeup.notified();
            tokio::pin!(wakeup);
            // Registered before the flag is read, so a stop between the two still wakes us.
            wakeup.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            wakeup.await;
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_wakes_and_late_waiters_return_at_once() {
        let signal = StopSignal::new();
        let waiters = futures_util::future::join_all((0..4).map(|_| signal.stopped()));
        let stopper = async {
            tokio::task::yield_now().await;
            assert!(!signal.is_stopped());
            signal.stop();
        };
        tokio::join!(waiters, stopper);
        signal.stopped().await;
        assert!(signal.is_stopped());
    }
}
