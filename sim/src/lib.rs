//! The wind tunnel: runs the unmodified relay inside a deterministic simulation (madsim),
//! driven by scenario files, judged by oracles, identified by a trace hash.
//!
//! - [`scenario`]: the scenario file schema and its validation (plain Rust).
//! - [`trace`]: the ordered record of a run and its hash (plain Rust).
//! - [`oracle`]: pure checks from scenario + trace to violations and a verdict (plain Rust).
//! - [`report`]: what a run prints (plain Rust).
//! - [`swarm`]: scenario parameters drawn from the seed (plain Rust).
//! - [`harness`]: one seed end to end (swarm draw, run, report, determinism check,
//!   artifacts) and replaying an artifact folder (plain Rust over a [`worlds::Engine`]).
//! - [`artifacts`], [`logs`], [`timeline`]: what a run leaves behind (folder layout,
//!   captured logs, the timeline SVG).
//! - [`sweep`], [`shrink`]: many seeds in shards with a summary; failure shrinking.
//! - [`junit`]: a sweep as JUnit XML, so CI services list seeds as tests.
//! - [`isolation`]: every seed hashes the same alone and after other seeds in one process.
//! - [`actors`]: the world's cast (upstream hosts, consumers, probers, churners, callers,
//!   abusers, the relay's host program, monitor and audit), shared by every engine.
//! - [`worlds`]: the seam between the harness and what runs a seed ([`worlds::Engine`]),
//!   and the worlds themselves, each with its engine: `madsim` (only with `--cfg madsim`)
//!   builds the simulated world and runs one seed; `turmoil` (ordinary builds) puts the
//!   same cast on turmoil's TCP-faithful hosts; `real` (ordinary builds, `run --real`) on
//!   real tokio and real loopback TCP against the relay.
//!
//! Everything judged is judged from the trace, so the plain parts are tested by ordinary
//! `cargo test` and only running a world needs the simulation build (`cargo sim-test`).

/// The simulation build's allocator (every program of `cargo sim` and `cargo sim-test`):
/// mimalloc, because a simulated world runs the relay, its hosts and its consumers on one
/// thread, where glibc's malloc was a sixth of a realistic-volume seed's CPU and mimalloc
/// takes 29% off it. Ordinary builds (turmoil, real mode and its relay child) keep the
/// system allocator, as the relay binary does: on the relay's multi-threaded runtime
/// mimalloc was no faster (BENCHMARKS.md, "The simulation's allocator"). Trace hashes do not
/// depend on it.
#[cfg(madsim)]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod actors;
pub mod artifacts;
pub mod harness;
pub mod isolation;
pub mod junit;
pub mod logs;
pub mod oracle;
pub mod report;
pub mod scenario;
pub mod shrink;
pub mod swarm;
pub mod sweep;
pub mod timeline;
pub mod trace;
pub mod worlds;
