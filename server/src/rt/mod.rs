//! The runtime seam: the only module in the relay that names sockets, timers, clocks,
//! spawning and the CPU model.
//!
//! Every crate depends on `tokio = { package = "madsim-tokio" }`. Built normally that *is*
//! tokio; built with `--cfg madsim` the same paths are madsim's simulated network, clock and
//! scheduler. Business logic never asks which one it got: anything that must differ between
//! production and the wind tunnel differs here ([`cpu`] and [`blocking`]), and nowhere else.
//!
//! The second engine, turmoil, runs on ordinary tokio (a paused clock per simulated host),
//! so only the sockets differ: with the cargo feature `turmoil` they are [`switched`]
//! between turmoil's and the operating system's, per socket.

pub mod cpu;
pub mod fault;
pub mod fd_limit;
pub mod probe;
pub mod stop;
mod timer;

pub use self::timer::HyperTimer;

#[cfg(madsim)]
mod flow;
#[cfg(madsim)]
mod sleep;
#[cfg(all(feature = "turmoil", not(madsim)))]
pub mod switched;

/// Sockets. The relay accepts and dials only through these types. Under madsim they add
/// TCP flow control (see `flow`), which the simulator's unbounded buffers lack; with the
/// `turmoil` feature they are turmoil's inside a turmoil simulation (see [`switched`]).
pub mod net {
    #[cfg(madsim)]
    pub use super::flow::{TcpListener, TcpStream};
    #[cfg(all(feature = "turmoil", not(madsim)))]
    pub use super::switched::{TcpListener, TcpStream};
    #[cfg(not(any(madsim, feature = "turmoil")))]
    pub use tokio::net::{TcpListener, TcpStream};

    /// Resolve `host` (a DNS name, or an IP literal taken as it is) to the addresses it has
    /// on `port`: the system resolver, madsim's DNS records under madsim, turmoil's host
    /// table inside a turmoil simulation (see [`switched`](super::switched)). A caller that
    /// must judge where it connects resolves once here and dials the address it judged.
    pub async fn lookup_host(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        #[cfg(all(feature = "turmoil", not(madsim)))]
        return super::switched::lookup_host(host, port).await;
        #[cfg(not(all(feature = "turmoil", not(madsim))))]
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Run blocking work (a store call) without holding up the runtime's other tasks: on tokio's
/// multi-threaded runtime the worker first hands its queued tasks to another thread
/// (`block_in_place`), so probes are still answered while a disk or a lock keeps the call
/// waiting; on a current-thread runtime (tests, turmoil's hosts) and in simulation, where
/// a call takes no time, it runs inline.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(not(madsim))]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi_threaded = Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        if multi_threaded {
            return tokio::task::block_in_place(work);
        }
    }
    work()
}

/// Time: sleeping, deadlines and a monotonic millisecond clock.
pub mod time {
    use std::sync::Arc;

    // madsim's own sleeps set a timer at every poll (see `sleep`); tokio's are used as they are.
    #[cfg(madsim)]
    pub use super::sleep::{sleep, sleep_until, timeout, Sleep};
    pub use tokio::time::{interval_at, Duration, Instant};
    #[cfg(not(madsim))]
    pub use tokio::time::{sleep, sleep_until, timeout, Sleep};

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

        /// Microseconds elapsed since [`Clock::start`].
        pub fn now_us(&self) -> u64 {
            u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
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
/// in production; per simulation thread under madsim and inside a turmoil simulation, where
/// one thread runs one simulated world and only the relay spawns through the seam, so it is
/// that relay's count (asking madsim instead walks every node's task list: a sixth of the
/// cold-start tunnel's CPU).
pub fn tasks_alive() -> usize {
    census::alive()
}

/// The per-world state the seam keeps on the simulation thread that is not at its starting
/// value, one description each: relay tasks still counted, flow-control windows, fault
/// points switched on, reachability probes counted. A world that starts with any of it
/// would inherit the previous world's, so the tunnel refuses to start one.
#[cfg(madsim)]
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if census::alive() > 0 {
        found.push(format!("{} relay tasks alive", census::alive()));
    }
    if flow::windows_open() > 0 {
        found.push(format!("{} flow-control windows", flow::windows_open()));
    }
    if fault::any_active() {
        found.push("fault points switched on".to_owned());
    }
    if probe::counts().iter().any(|&count| count > 0) {
        found.push("reachability probes already counted".to_owned());
    }
    found
}

/// The counter behind [`tasks_alive`].
mod census {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    thread_local! {
        static THIS_WORLD: Cell<usize> = const { Cell::new(0) };
    }
    static PROCESS: AtomicUsize = AtomicUsize::new(0);

    /// Whether tasks are counted per thread (one simulated world per thread).
    fn per_thread() -> bool {
        #[cfg(madsim)]
        return true;
        #[cfg(all(feature = "turmoil", not(madsim)))]
        return turmoil::in_simulation();
        #[cfg(not(any(madsim, feature = "turmoil")))]
        false
    }

    /// One live task: counted from [`Counted::enter`] until dropped with the task's future
    /// (on the counter it entered, wherever it is dropped).
    pub struct Counted {
        per_thread: bool,
    }

    impl Counted {
        pub fn enter() -> Self {
            let per_thread = per_thread();
            if per_thread {
                THIS_WORLD.with(|alive| alive.set(alive.get() + 1));
            } else {
                PROCESS.fetch_add(1, Ordering::Relaxed);
            }
            Self { per_thread }
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            if self.per_thread {
                // A thread's count may already be gone when the thread itself is exiting.
                let _ = THIS_WORLD.try_with(|alive| alive.set(alive.get().saturating_sub(1)));
            } else {
                PROCESS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn alive() -> usize {
        if per_thread() {
            THIS_WORLD.with(Cell::get)
        } else {
            PROCESS.load(Ordering::Relaxed)
        }
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
                    biased;
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
