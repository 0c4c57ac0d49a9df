//! Sleeps and timeouts on madsim's clock that set one simulated timer per deadline, as
//! tokio's do in production.
//!
//! madsim's `Sleep` adds a timer to the simulator's heap each time it is polled while
//! pending, and a timer cannot be cancelled: it stays in the heap until its deadline and then
//! wakes the task that polled. A `timeout` around a socket read is polled at every wake-up
//! of its task, so every read left timers behind, due up to `read_idle_timeout_ms` later;
//! each of them woke its task for nothing when it fell due, and the poll that followed set
//! yet another one. Over a long session a worker carried one timer for every wake-up it
//! ever had (BENCHMARKS.md, "One timer per sleep": the timer heap fell from 6.2% to 4.2% of
//! `cold_start_network`).
//!
//! [`Sleep`] wraps madsim's: it polls the inner sleep (setting a timer) once, and the timer
//! wakes the task through a slot that the latest poll fills and that dropping the sleep
//! empties, so a timer outliving its sleep wakes nobody. Nothing else changes: the same
//! deadlines (madsim's 1 ms minimum included) and the same order of completion.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio::time::error::Elapsed;
use tokio::time::{Duration, Instant};

/// Where a sleep's timer finds the task to wake: the waker of the sleep's latest poll,
/// taken by the timer when it fires, emptied when the sleep is dropped.
#[derive(Default)]
struct WakeSlot(Mutex<Option<Waker>>);

impl WakeSlot {
    fn put(&self, waker: Option<&Waker>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = waker.cloned();
    }
}

impl Wake for WakeSlot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A sleep until a deadline (see the module docs). [`sleep`] and [`sleep_until`] make one.
pub struct Sleep {
    inner: tokio::time::Sleep,
    /// Whether the timer for the deadline is set.
    timer_set: bool,
    slot: Arc<WakeSlot>,
}

/// Wait `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::of(tokio::time::sleep(duration))
}

/// Wait until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::of(tokio::time::sleep_until(deadline))
}

impl Sleep {
    fn of(inner: tokio::time::Sleep) -> Self {
        Self {
            inner,
            timer_set: false,
            slot: Arc::default(),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.is_elapsed() {
            return Poll::Ready(());
        }
        this.slot.put(Some(cx.waker()));
        if !this.timer_set {
            let through_slot = Waker::from(Arc::clone(&this.slot));
            // Pending (not elapsed, checked above): sets one timer that wakes through the slot.
            let _ = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&through_slot));
            this.timer_set = true;
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.slot.put(None);
    }
}

/// `future`, unless `duration` passes first (the future is polled first, as tokio's
/// `timeout` does).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        delay: sleep(duration),
    }
}

pin_project_lite::pin_project! {
    /// The future [`timeout`] returns.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        delay: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(this.delay).poll(cx).map(|()| Err(Elapsed))
    }
}
