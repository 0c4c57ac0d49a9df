//! Concurrency checks of `relay-lifecycle`, the connection registry and per-consumer
//! mailbox that every relay connection goes through.
//!
//! This crate owns the *models*: small concurrent programs over the real registry code,
//! each ending in assertions about what must hold in every interleaving (exactly one close
//! initiated, capacity fully returned, no lost wakeup, nothing accepted and lost). They are
//! written once, in [`models`], against a tiny engine shim ([`engine`]), and run by two
//! checkers with different strengths:
//!
//! - **loom** (`RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release`, run by
//!   `ci/loom.sh`): every interleaving of 2–3 threads, with no preemption bound, duration
//!   limit or permutation limit (those pass silently when hit, so the suite never relies on
//!   them). Small parameters keep each model exhaustive in seconds.
//! - **shuttle** (`cargo test -p loom-tests --features shuttle`): the same models with more
//!   threads and larger parameters, under shuttle's random and PCT schedulers. Not
//!   exhaustive; it reaches shapes loom cannot afford.
//!
//! The plain build (neither checker) compiles only the crate docs; its integration test
//! runs a proptest state machine of the registry against a sequential reference model.
//!
//! Why the shim and not `#[cfg]` inside every model: the models are the specification, and
//! one copy of each means loom and shuttle can never check different properties.

#[cfg(all(loom, feature = "shuttle"))]
compile_error!("choose one checker: --cfg loom or --features shuttle, not both");

#[cfg(any(loom, feature = "shuttle"))]
pub mod engine;
#[cfg(any(loom, feature = "shuttle"))]
pub mod models;
