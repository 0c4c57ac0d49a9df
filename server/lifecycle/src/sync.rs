//! The one place that picks the synchronisation primitives, so the same registry code runs
//! in production (`std`), under loom's exhaustive scheduler (`--cfg loom`) and under
//! shuttle's randomized schedulers (the `shuttle` feature, used only by `loom-tests`).
//!
//! Reference counts (`Arc`) stay `std` on purpose: modelling them multiplies the checkers'
//! state space without exercising anything this crate decides.

#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(all(feature = "shuttle", not(loom)))]
pub(crate) use shuttle::thread::yield_now;
#[cfg(not(any(loom, feature = "shuttle")))]
pub(crate) use std::thread::yield_now;

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
#[cfg(all(feature = "shuttle", not(loom)))]
pub(crate) use shuttle::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(any(loom, feature = "shuttle")))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
