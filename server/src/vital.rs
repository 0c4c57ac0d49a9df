//! The relay's vital tasks: the long-lived tasks without which the relay is half broken
//! while its listener stays up (the sequencer: nothing is persisted any more; retention;
//! the upstream ramp and reconciliation). Each is spawned through [`Vitals::watch`]; one that
//! ends by panicking is recorded here, logged, and from then on `/_healthz` answers 503
//! naming it (and `/_readyz` says not ready), so an orchestrator restarts the process
//! instead of routing to a relay that silently stopped persisting.
//!
//! Only a panic counts as lost: a vital task that returns (shutdown, the ramp finishing) or
//! is dropped with its runtime has done nothing wrong. A panic is told apart by
//! `std::thread::panicking()` while the task's future is dropped during unwinding.

use std::future::Future;
use std::sync::{Arc, OnceLock};

/// Which vital task was lost first, if any. Shared by `Arc` between the spawners and the
/// HTTP routes; reading it is one atomic load (no lock on the probe path).
#[derive(Debug, Default)]
pub struct Vitals {
    lost: OnceLock<&'static str>,
}

impl Vitals {
    /// `future`, watched as the vital task `name`: if it panics, [`Vitals::lost`] names it.
    pub fn watch<F: Future>(
        self: &Arc<Self>,
        name: &'static str,
        future: F,
    ) -> impl Future<Output = F::Output> {
        let watch = Watch {
            vitals: Arc::clone(self),
            name,
        };
        async move {
            let _watch = watch;
            future.await
        }
    }

    /// The first vital task lost to a panic, if any.
    pub fn lost(&self) -> Option<&'static str> {
        self.lost.get().copied()
    }

    fn record(&self, name: &'static str) {
        // The first loss is the one reported; later ones are only logged.
        let _ = self.lost.set(name);
    }
}

/// Lives inside a watched task's future; its drop during a panic's unwinding records the
/// loss.
struct Watch {
    vitals: Arc<Vitals>,
    name: &'static str,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                task = self.name,
                "vital task panicked; /_healthz now fails so the process is restarted"
            );
            self.vitals.record(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_to_end<F: Future>(future: F) -> F::Output {
        futures_util::FutureExt::now_or_never(future).expect("the test future is ready at once")
    }

    #[test]
    fn a_task_that_returns_is_not_lost() {
        let vitals = Arc::new(Vitals::default());
        assert_eq!(poll_to_end(vitals.watch("sequencer", async { 7 })), 7);
        assert_eq!(vitals.lost(), None);
    }

    #[test]
    fn a_task_dropped_unfinished_is_not_lost() {
        let vitals = Arc::new(Vitals::default());
        drop(vitals.watch("retention", std::future::pending::<()>()));
        assert_eq!(vitals.lost(), None);
    }

    #[tokio::test]
    async fn a_task_panicking_on_the_runtime_is_lost_and_the_first_loss_is_kept() {
        // As the relay runs them: spawned through the seam, the runtime catching the panic.
        let vitals = Arc::new(Vitals::default());
        for name in ["sequencer", "retention"] {
            crate::rt::spawn(vitals.watch(name, async move { panic!("injected into {name}") }));
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(vitals.lost(), Some("sequencer"));
    }
}
