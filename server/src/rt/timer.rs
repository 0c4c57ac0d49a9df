//! A `hyper::rt::Timer` built on the seam's sleeps ([`super::time`]), so hyper's timeouts use
//! whichever clock the seam provides. (hyper-util's `TokioTimer` panics under madsim because
//! it reaches into tokio's timer driver directly.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pin_project_lite::pin_project! {
    struct HyperSleep {
        #[pin]
        inner: super::time::Sleep,
    }
}

impl Future for HyperSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

/// hyper's timer, backed by the seam's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    /// The seam's clock, not hyper's default `std::time::Instant::now()`: that is the same
    /// instant in production and under madsim (which virtualises std's clock), but under
    /// turmoil each host's tokio clock is paused and runs ahead of the real one, and a
    /// deadline taken from the real clock (the header-read timeout) would already be past.
    fn now(&self) -> Instant {
        // A real conversion under tokio; the identity under madsim, whose `Instant` is std's.
        #[allow(clippy::useless_conversion)]
        Instant::from(super::time::now())
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep {
            inner: super::time::sleep(duration),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // A real conversion under tokio; the identity under madsim, whose `Instant` is std's.
        #[allow(clippy::useless_conversion)]
        let deadline = deadline.into();
        Box::pin(HyperSleep {
            inner: super::time::sleep_until(deadline),
        })
    }
}
