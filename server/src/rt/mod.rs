//! The runtime seam: the only module in the relay that names sockets, timers, clocks,
//! spawning and the CPU model.
//!
//! Every crate depends on `tokio = { package = "madsim-tokio" }`. Built normally that *is*
//! tokio; built with `--cfg madsim` the same paths are madsim's simulated network, clock and
//! scheduler. Business logic never asks which one it got: anything that must differ between
//! production and the wind tunnel differs here (today only [`cpu`]), and nowhere else.
//! Keeping the surface this narrow is also what lets a second engine (turmoil) slot in later.

pub mod cpu;
pub mod fault;
mod timer;

pub use self::timer::HyperTimer;

#[cfg(madsim)]
mod flow;

/// Sockets. The relay accepts and dials only through these types. Under madsim they add
/// TCP flow control (see `flow`), which the simulator's unbounded buffers lack.
pub mod net {
    #[cfg(madsim)]
    pub use super::flow::{TcpListener, TcpStream};
    #[cfg(not(madsim))]
    pub use tokio::net::{TcpListener, TcpStream};
}

/// Time: sleeping, deadlines and a monotonic millisecond clock.
pub mod time {
    use std::sync::Arc;

    pub use tokio::time::{interval_at, sleep, sleep_until, timeout, Duration, Instant};

    /// The current instant of the seam's clock: tokio's in production, madsim's virtual
    /// clock in the tunnel (where tokio's `Instant` *is* `std::time::Instant`, virtualised).
    #[allow(clippy::disallowed_methods)] // the one sanctioned call
    pub fn now() -> Instant {
        Instant::now()
    }

    /// Milliseconds since a fixed origin, for atomics that cannot hold an `Instant`
    /// (e.g. the lifecycle registry's per-connection activity stamps). Cheap to clone.
    #[derive(Clone, Debug)]
    pub struct Clock {
        origin: Arc<Instant>,
    }

    impl Clock {
        /// A clock whose zero is now.
        pub fn start() -> Self {
            Self {
                origin: Arc::new(now()),
            }
        }

        /// Milliseconds elapsed since [`Clock::start`].
        pub fn now_ms(&self) -> u64 {
            u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
        }
    }
}

/// Spawn a task on the current runtime (the current simulated node under madsim).
pub fn spawn<F>(future: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let counted = census::Counted::enter();
    // Detached on purpose: tasks report through metrics and the lifecycle registry, and
    // shutdown is driven by close requests, not by join handles.
    drop(tokio::spawn(async move {
        let _counted = counted;
        future.await
    }));
}

/// How many tasks spawned through [`spawn`] are alive (spawned, and their future not yet
/// finished or dropped): the relay's own task census, which a leak makes grow. Process-wide
/// in production; per simulation thread under madsim, where one thread runs one simulated
/// world and only the relay spawns through the seam, so it is that relay's count (asking
/// madsim instead walks every node's task list: a sixth of the cold-start tunnel's CPU).
pub fn tasks_alive() -> usize {
    census::alive()
}

/// The counter behind [`tasks_alive`].
mod census {
    #[cfg(madsim)]
    thread_local! {
        static ALIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    #[cfg(not(madsim))]
    static ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// One live task: counted from [`Counted::enter`] until dropped with the task's future.
    pub struct Counted(());

    impl Counted {
        pub fn enter() -> Self {
            #[cfg(madsim)]
            ALIVE.with(|alive| alive.set(alive.get() + 1));
            #[cfg(not(madsim))]
            ALIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Self(())
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            #[cfg(madsim)]
            ALIVE.with(|alive| alive.set(alive.get().saturating_sub(1)));
            #[cfg(not(madsim))]
            ALIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn alive() -> usize {
        #[cfg(madsim)]
        return ALIVE.with(std::cell::Cell::get);
        #[cfg(not(madsim))]
        ALIVE.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Resolves on SIGINT (and SIGTERM on Unix outside simulation): the binary's shutdown trigger.
pub async fn shutdown_signal() {
    #[cfg(all(unix, not(madsim)))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the relay")
            }
        }
    }
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::error!(%error, "cannot listen for SIGINT; the relay will only stop when killed");
        std::future::pending::<()>().await;
    }
}
