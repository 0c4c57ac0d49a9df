//! The wind tunnel: runs the unmodified relay inside a deterministic simulation (madsim),
//! driven by scenario files, judged by oracles, identified by a trace hash.
//!
//! - [`scenario`]: the scenario file schema and its validation (plain Rust).
//! - [`trace`]: the ordered record of a run and its hash (plain Rust).
//! - [`oracle`]: pure checks from scenario + trace to violations and a verdict (plain Rust).
//! - [`report`]: what a run prints (plain Rust).
//! - `world` (only with `--cfg madsim`): builds the simulated world and runs one seed.
//!
//! Everything judged is judged from the trace, so the plain parts are tested by ordinary
//! `cargo test` and only running a world needs the simulation build (`cargo sim-test`).

pub mod oracle;
pub mod report;
pub mod scenario;
pub mod trace;
#[cfg(madsim)]
pub mod world;
