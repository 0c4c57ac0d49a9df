//! The seam's sleeps on madsim's clock (`relay::rt::time`): however often a sleep or a
//! timeout is polled, a timer it leaves behind wakes nobody once it is gone, and a deadline
//! still ends it on time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use relay::rt::time::{now, sleep, timeout};

/// `inner`, counting its polls.
struct CountPolls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.as_mut().poll(cx)
    }
}

/// A task reads 100 messages, each under a 10 s timeout that it polls at every wake-up,
/// then sleeps 30 s: the timers of the 100 finished timeouts fall due during that sleep,
/// and must not wake the task (madsim's own sleeps would, 100 times or more).
#[test]
fn a_finished_timeout_s_timer_wakes_nobody() {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    let (polls, timed_out) = runtime.block_on(async {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<u32>(1);
        madsim::task::spawn(async move {
            for message in 0..100 {
                sleep(Duration::from_millis(10)).await;
                sender.send(message).await.expect("the reader is there");
            }
        });
        for expected in 0..100 {
            let received = timeout(Duration::from_secs(10), receiver.recv()).await;
            assert_eq!(received, Ok(Some(expected)));
        }
        let polls = Arc::new(AtomicUsize::new(0));
        CountPolls {
            inner: Box::pin(sleep(Duration::from_secs(30))),
            polls: Arc::clone(&polls),
        }
        .await;
        let started = now();
        let timed_out = timeout(Duration::from_secs(5), std::future::pending::<()>()).await;
        (polls.load(Ordering::SeqCst), (timed_out, now() - started))
    });
    assert_eq!(polls, 2, "polled once to start and once at its deadline");
    assert!(timed_out.0.is_err());
    let waited = timed_out.1;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_001),
        "a timeout ends at its deadline, not {waited:?}"
    );
}
