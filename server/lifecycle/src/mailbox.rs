//! The per-consumer mailbox: a bounded single-consumer queue between the broadcaster and
//! one consumer's own task.
//!
//! Why it lives here and not in a channel crate: its close semantics are part of the
//! connection lifecycle and must be model-checked with the registry. The rules:
//! - anyone may [`Mailbox::offer`]; an offer is either accepted (the owner will see it),
//!   refused because the mailbox is full (the caller decides: the broadcaster kicks), or
//!   refused because the mailbox is closed. Nothing is ever silently dropped;
//! - only the owner receives, and only the owner closes: [`Mailbox::close`] refuses every
//!   later offer and hands back everything accepted but not yet received, so the owner can
//!   flush it (or account for it) before it closes its socket.
//!
//! One short mutex guards the queue; it is held for a push or a pop, never across I/O or an
//! `await`, and only the broadcaster and this consumer's task ever take it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::Mutex;

/// What became of an offered item. Refusals give the item back.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Queued; the owner will receive it (or get it back from [`Mailbox::close`]).
    Accepted,
    /// The mailbox holds `capacity` items already.
    Full(T),
    /// The owner has closed the mailbox.
    Closed(T),
}

struct Inner<T> {
    queue: VecDeque<T>,
    closed: bool,
    /// The owner's waker while it waits in [`Mailbox::recv`].
    receiver: Option<Waker>,
    /// Most items ever queued at once.
    high_water: usize,
}

/// A bounded queue with one receiving owner. Share it through an `Arc`.
pub struct Mailbox<T> {
    capacity: usize,
    inner: Mutex<Inner<T>>,
}

impl<T> fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Mailbox<T> {
    /// An open mailbox holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                closed: false,
                receiver: None,
                high_water: 0,
            }),
        }
    }

    /// The most items it holds at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the owner has closed it.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Most items ever waiting at once.
    pub fn high_water(&self) -> usize {
        self.lock().high_water
    }

    /// Queue `item` unless the mailbox is full or closed; wakes the owner on acceptance.
    pub fn offer(&self, item: T) -> Offer<T> {
        let waker = {
            let mut inner = self.lock();
            if inner.closed {
                return Offer::Closed(item);
            }
            if inner.queue.len() >= self.capacity {
                return Offer::Full(item);
            }
            inner.queue.push_back(item);
            inner.high_water = inner.high_water.max(inner.queue.len());
            inner.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Offer::Accepted
    }

    /// Take the oldest item without waiting. `None` when empty (open or closed).
    pub fn try_recv(&self) -> Option<T> {
        self.lock().queue.pop_front()
    }

    /// Take waiting items, oldest first, onto the end of `into` while `take` accepts them,
    /// without waiting: the first item `take` refuses stays (and so does everything behind
    /// it). One lock hold for the whole run, so an owner drains a batch for the price of
    /// one pop.
    pub fn try_recv_while(&self, into: &mut Vec<T>, mut take: impl FnMut(&T) -> bool) {
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(&mut take) {
            into.extend(inner.queue.pop_front());
        }
    }

    /// Owner side: the next item; resolves to `None` once the mailbox is closed and empty.
    pub fn recv(&self) -> Recv<'_, T> {
        Recv { mailbox: self }
    }

    /// Owner side: refuse every later offer and return what was accepted but not received,
    /// oldest first. Closing twice returns nothing the second time.
    pub fn close(&self) -> Vec<T> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.receiver = None;
        inner.queue.drain(..).collect()
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut inner = self.lock();
        if let Some(item) = inner.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if inner.closed {
            return Poll::Ready(None);
        }
        // Stored under the same lock an offer takes, so an offer either sees this waker or
        // happened before the pop above: no lost wakeup.
        inner.receiver = Some(cx.waker().clone());
        Poll::Pending
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock can only come from VecDeque allocation failure;
        // the queue is still consistent, so keep going rather than poison the consumer.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Future returned by [`Mailbox::recv`].
#[derive(Debug)]
pub struct Recv<'a, T> {
    mailbox: &'a Mailbox<T>,
}

impl<T> Future for Recv<'_, T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.mailbox.poll_recv(cx)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn offers_beyond_capacity_are_handed_back() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.offer(1), Offer::Accepted);
        assert_eq!(mailbox.offer(2), Offer::Accepted);
        assert_eq!(mailbox.offer(3), Offer::Full(3));
        assert_eq!(mailbox.try_recv(), Some(1));
        assert_eq!(mailbox.offer(4), Offer::Accepted);
        assert_eq!(mailbox.high_water(), 2);
    }

    #[test]
    fn close_returns_the_undelivered_and_refuses_later_offers() {
        let mailbox = Mailbox::new(4);
        mailbox.offer("a");
        mailbox.offer("b");
        assert_eq!(mailbox.try_recv(), Some("a"));
        assert_eq!(mailbox.close(), vec!["b"]);
        assert_eq!(mailbox.offer("c"), Offer::Closed("c"));
        assert!(mailbox.close().is_empty());
    }

    #[test]
    fn try_recv_while_takes_in_order_up_to_the_first_refusal() {
        let mailbox = Mailbox::new(8);
        for item in [1, 2, 3, 10, 4] {
            assert_eq!(mailbox.offer(item), Offer::Accepted);
        }
        let mut taken = vec![0];
        mailbox.try_recv_while(&mut taken, |&item| item < 5);
        assert_eq!(taken, [0, 1, 2, 3], "appended, oldest first");
        assert_eq!(
            mailbox.len(),
            2,
            "the refused item and what is behind it stay"
        );
        mailbox.try_recv_while(&mut taken, |_| true);
        assert_eq!(taken, [0, 1, 2, 3, 10, 4]);
        assert!(mailbox.is_empty());
        mailbox.try_recv_while(&mut taken, |_| panic!("nothing is waiting"));
        assert_eq!(taken.len(), 6);
    }

    #[test]
    fn an_offer_wakes_a_waiting_owner() {
        let mailbox = Mailbox::new(1);
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut recv = mailbox.recv();
        assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
        assert_eq!(mailbox.offer(7), Offer::Accepted);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(Pin::new(&mut recv).poll(&mut cx), Poll::Ready(Some(7)));
        mailbox.close();
        assert_eq!(Pin::new(&mut recv).poll(&mut cx), Poll::Ready(None));
    }
}
