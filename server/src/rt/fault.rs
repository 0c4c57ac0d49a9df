//! Fault points: the places in relay code where the wind tunnel can inject a failure
//! (BUGGIFY-style, after FoundationDB and madsim).
//!
//! Relay code asks `fault::active(Fault::StoreWrite)` right where the real failure would
//! surface, and handles it exactly like the real thing (the store returns an error, callers
//! back off and answer 503). Outside simulation `active` is a constant `false` and the check
//! compiles away, so production behaviour cannot depend on it. Under madsim the tunnel's
//! timeline switches points on and off with [`set`]; the switches live in a thread-local
//! because each simulation run owns its OS thread.

/// The payload of the panic the `HandlerPanic` point raises, so the tunnel can tell an
/// injected (and contained) panic from a real one.
pub const INJECTED_HANDLER_PANIC: &str = "injected handler panic (fault point HandlerPanic)";

/// A place where a failure can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Every store write (event commits, retention deletes) fails.
    StoreWrite,
    /// Every store read (catch-up pages, log bounds) fails.
    StoreRead,
    /// Every store call from async code hangs until the point is switched off (a full
    /// disk, a checkpoint's fsync, a lock held by another process).
    StoreStall,
    /// Work-route handlers (`/hosts`, `requestCrawl`, `listHosts`, `getHostStatus`) panic.
    HandlerPanic,
    /// Work-route handlers (`/hosts`, `requestCrawl`, `listHosts`, `getHostStatus`) never finish.
    HandlerStall,
}

impl Fault {
    #[cfg(madsim)]
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

#[cfg(madsim)]
thread_local! {
    static ACTIVE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static INJECTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether `point` is failing now. Always `false` outside simulation.
#[inline(always)]
pub fn active(point: Fault) -> bool {
    #[cfg(madsim)]
    {
        let failing = ACTIVE.with(|active| active.get() & point.bit() != 0);
        if failing {
            INJECTED.with(|injected| injected.set(injected.get() + 1));
        }
        failing
    }
    #[cfg(not(madsim))]
    {
        let _ = point;
        false
    }
}

/// Wait while `point` is on (a hang, counted once per caller). Returns at once outside
/// simulation.
#[inline(always)]
pub async fn hang_while(point: Fault) {
    #[cfg(madsim)]
    {
        if active(point) {
            while ACTIVE.with(|active| active.get() & point.bit() != 0) {
                crate::rt::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    #[cfg(not(madsim))]
    {
        let _ = point;
    }
}

/// Switch `point` on or off for the current simulation run (the tunnel's timeline calls this).
#[cfg(madsim)]
pub fn set(point: Fault, failing: bool) {
    ACTIVE.with(|active| {
        let bits = active.get();
        active.set(if failing {
            bits | point.bit()
        } else {
            bits & !point.bit()
        });
    });
}

/// How many failures the points have injected on this simulation thread so far: relay
/// code that reached a point while it was switched on. The tunnel takes the difference over
/// a fault's window to show the fault took effect.
#[cfg(madsim)]
pub fn injected() -> u64 {
    INJECTED.with(std::cell::Cell::get)
}

/// Whether any point is failing (a world must start with none).
#[cfg(madsim)]
pub fn any_active() -> bool {
    ACTIVE.with(|active| active.get() != 0)
}
