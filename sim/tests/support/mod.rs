//! What the wind tunnel's test suites share: the repository's paths ([`repository`],
//! [`scenarios_dir`]), a shipped scenario ([`load`]), the smallest valid scenario file
//! ([`MINIMAL`]) and a fresh scratch directory per test ([`scratch_dir`]). Each suite
//! includes it as `#[path = "../support/mod.rs"] mod support;` and uses a subset, hence
//! the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use windtunnel::scenario::Scenario;

/// The smallest valid scenario file: a name, a duration, no oracles.
pub const MINIMAL: &str = "name = \"x\"\nduration_s = 60\n[oracles]\n";

/// The repository's root (the workspace, one level above this package).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped scenarios, `scenarios/` at the repository's root.
pub fn scenarios_dir() -> PathBuf {
    repository().join("scenarios")
}

/// The shipped scenario `name` (e.g. `"power_loss.toml"`); a file that does not load fails
/// the test with its error.
pub fn load(name: &str) -> Scenario {
    Scenario::load(&scenarios_dir().join(name)).unwrap_or_else(|error| panic!("{error}"))
}

/// An empty directory for test `name` in cargo's temporary directory for integration tests
/// (`<target>/tmp`), with whatever a previous run left there removed.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
