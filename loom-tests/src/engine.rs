//! The checker-specific primitives the models use besides the registry itself: threads,
//! `block_on` and the atomics/mutexes of the models' own bookkeeping. Mirrors the std
//! signatures exactly, so a model reads like ordinary threaded code.
//!
//! Bookkeeping goes through the checker's primitives too (not std's): a std atomic would
//! be invisible to the scheduler, hiding interleavings the assertions depend on.

#[cfg(loom)]
pub use loom::{
    future::block_on,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
};
#[cfg(all(feature = "shuttle", not(loom)))]
pub use shuttle::{
    future::block_on,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
};
