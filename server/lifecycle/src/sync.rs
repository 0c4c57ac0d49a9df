//! The one place that picks `std` or `loom` synchronisation primitives, so the same
//! registry code runs in production and under loom's exhaustive scheduler.
//!
//! Reference counts (`Arc`) stay `std` on purpose: modelling them multiplies loom's state
//! space without exercising anything this crate decides.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};
