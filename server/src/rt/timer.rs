//! A `hyper::rt::Timer` built on `tokio::time`, so hyper's timeouts use whichever clock the
//! seam provides. (hyper-util's `TokioTimer` panics under madsim because it reaches into
//! tokio's timer driver directly.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// `Timer::now` keeps hyper's default, `std::time::Instant::now()`, which madsim intercepts.

pin_project_lite::pin_project! {
    struct HyperSleep {
        #[pin]
        inner: tokio::time::Sleep,
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
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep {
            inner: tokio::time::sleep(duration),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // A real conversion under tokio; the identity under madsim, whose `Instant` is std's.
        #[allow(clippy::useless_conversion)]
        let deadline = deadline.into();
        Box::pin(HyperSleep {
            inner: tokio::time::sleep_until(deadline),
        })
    }
}
