//! The one integration-test binary of `loom-tests`. Which suite it holds depends on the
//! build: `--cfg loom` runs the models exhaustively under loom, `--features shuttle` runs
//! them with more threads under shuttle's schedulers, and the plain build runs the
//! registry against a sequential reference model (proptest state machine).

#[cfg(loom)]
mod loom_suite;
#[cfg(all(feature = "shuttle", not(loom)))]
mod shuttle_suite;
#[cfg(not(any(loom, feature = "shuttle")))]
mod state_machine;
