//! The isolation check: a seed's trace hash must not depend on what the process ran before
//! it. Every (scenario, seed) pair is hashed alone (each in a fresh process), then all pairs
//! are run back to back in one process in order (this one) and in another in reverse (a
//! fresh one), and every hash must equal the pair's hash alone.
//!
//! Running in both orders puts each pair after a different set of predecessors (every pair
//! after all the others in one of the two): a leak
//! that only matters for the first world of a process (a lazily seeded global), or that
//! grows with every world (a process-wide counter, a table never emptied), shows up as a
//! pair whose hash moves. This is how `tokio::sync::watch`'s process-seeded waiter order
//! was found (see `relay::rt::stop`).

use crate::harness::Loaded;
use crate::report::format_seed;
use crate::swarm;
use crate::worlds::Engine;

/// One pair whose hash in a shared process differed from its hash alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The scenario file as given.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Which back-to-back pass saw it ("in order" or "in reverse").
    pub pass: &'static str,
    /// The hash alone.
    pub alone: u64,
    /// The hash in that pass.
    pub shared: u64,
}

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Pairs checked.
    pub pairs: usize,
    /// Every pair whose hash moved, in the order seen.
    pub moved: Vec<Moved>,
}

impl Isolation {
    /// One line per moved pair, then the verdict.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for moved in &self.moved {
            text.push_str(&format!(
                "MOVED {} seed={} {}: hash={} alone, hash={} after other seeds in one process\n",
                moved.scenario,
                format_seed(moved.seed),
                moved.pass,
                format_seed(moved.alone),
                format_seed(moved.shared),
            ));
        }
        if self.moved.is_empty() {
            text.push_str(&format!(
                "isolation: PASSED - {} (scenario, seed) pairs hash the same alone, in order and in reverse\n",
                self.pairs
            ));
        } else {
            text.push_str(&format!(
                "isolation: FAILED - {} of {} pair runs depend on what ran before them in the process\n",
                self.moved.len(),
                2 * self.pairs
            ));
        }
        text
    }
}

/// The trace hash of one seed of `loaded` run in this process (swarm keys drawn as a run
/// would draw them).
pub fn hash_here(engine: &dyn Engine, loaded: &Loaded, seed: u64) -> Result<u64, String> {
    let (scenario, _) = swarm::resolve(&loaded.scenario, seed)
        .map_err(|error| format!("{}: {error}", loaded.display_path()))?;
    Ok(engine.run(&scenario, seed, None).trace.hash())
}

/// Where the check hashes pairs outside its own process: each in a fresh process of its
/// own, and all of them back to back in one more fresh process, in reverse. In practice
/// [`ChildProcesses`]; the tests use engines that start from nothing.
pub trait FreshProcesses: Sync {
    /// The hash of `loaded` at `seed`, run alone.
    fn alone(&self, loaded: &Loaded, seed: u64) -> Result<u64, String>;
    /// The hashes of every pair of `scenarios` × `seeds` run back to back in one process
    /// in reverse (the last seed of the last scenario first), in the order they ran.
    fn back_to_back_in_reverse(
        &self,
        scenarios: &[Loaded],
        seeds: &[u64],
    ) -> Result<Vec<u64>, String>;
}

/// Fresh processes of this executable: `executable isolation <scenario>... --seed N --seeds
/// K --hashes-only [--reverse]` runs the pairs back to back and prints their hashes
/// (`hash_here`), one per line, and nothing else.
pub struct ChildProcesses {
    /// The windtunnel executable.
    pub executable: std::path::PathBuf,
}

impl ChildProcesses {
    fn hashes(
        &self,
        scenarios: &[&Loaded],
        seeds: &[u64],
        reverse: bool,
    ) -> Result<Vec<u64>, String> {
        let (Some(&first), Some(&last)) = (seeds.first(), seeds.last()) else {
            return Ok(Vec::new());
        };
        let mut command = std::process::Command::new(&self.executable);
        command
            .arg("isolation")
            .args(scenarios.iter().map(|loaded| &loaded.path))
            .args([
                "--seed",
                &first.to_string(),
                "--seeds",
                &(last - first + 1).to_string(),
            ])
            .arg("--hashes-only");
        if reverse {
            command.arg("--reverse");
        }
        let what = || {
            let names: Vec<String> = scenarios
                .iter()
                .map(|loaded| loaded.display_path())
                .collect();
            format!(
                "{} seeds {}..={}",
                names.join(" "),
                format_seed(first),
                format_seed(last)
            )
        };
        let output = command
            .output()
            .map_err(|error| format!("cannot run {}: {error}", self.executable.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let hashes: Option<Vec<u64>> = text
            .lines()
            .map(|line| {
                line.trim()
                    .strip_prefix("0x")
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            })
            .collect();
        hashes
            .filter(|hashes| {
                output.status.success() && hashes.len() == scenarios.len() * seeds.len()
            })
            .ok_or_else(|| {
                format!(
                    "{} in a fresh process failed ({}): {}{}",
                    what(),
                    output.status,
                    text,
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    }
}

impl FreshProcesses for ChildProcesses {
    fn alone(&self, loaded: &Loaded, seed: u64) -> Result<u64, String> {
        Ok(self.hashes(&[loaded], &[seed], false)?[0])
    }

    fn back_to_back_in_reverse(
        &self,
        scenarios: &[Loaded],
        seeds: &[u64],
    ) -> Result<Vec<u64>, String> {
        let scenarios: Vec<&Loaded> = scenarios.iter().collect();
        self.hashes(&scenarios, seeds, true)
    }
}

/// Every pair of `scenarios` × `seeds` (seeds consecutive), scenario by scenario.
fn pairs<'a>(scenarios: &'a [Loaded], seeds: &[u64]) -> Vec<(&'a Loaded, u64)> {
    scenarios
        .iter()
        .flat_map(|loaded| seeds.iter().map(move |&seed| (loaded, seed)))
        .collect()
}

/// The hashes of every pair of `scenarios` × `seeds` run back to back here, in order or in
/// reverse, in the order they ran (what a `--hashes-only` child prints).
pub fn hashes_here(
    engine: &dyn Engine,
    scenarios: &[Loaded],
    seeds: &[u64],
    reverse: bool,
) -> Result<Vec<u64>, String> {
    let mut pairs = pairs(scenarios, seeds);
    if reverse {
        pairs.reverse();
    }
    pairs
        .into_iter()
        .map(|(loaded, seed)| hash_here(engine, loaded, seed))
        .collect()
}

/// Check every pair of `scenarios` × `seeds` (consecutive): `fresh` hashes each pair alone
/// and all of them back to back in reverse; the in-order pass runs here with `engine`.
/// The three passes run at once, the two in fresh processes on threads of their own, so a
/// two-core machine spends about half the time of one pass after another. `progress` hears
/// of each pass as it starts.
pub fn check(
    engine: &dyn Engine,
    scenarios: &[Loaded],
    seeds: &[u64],
    fresh: &dyn FreshProcesses,
    progress: &dyn Fn(&str),
) -> Result<Isolation, String> {
    let pairs = pairs(scenarios, seeds);
    progress(&format!(
        "{} pairs alone, back to back in reverse (fresh processes) and back to back in order (here)",
        pairs.len()
    ));
    let (alone_hashes, in_reverse, in_order) = std::thread::scope(|scope| {
        let alone_pass = scope.spawn(|| {
            pairs
                .iter()
                .map(|&(loaded, seed)| fresh.alone(loaded, seed))
                .collect::<Result<Vec<u64>, String>>()
        });
        let reverse_pass = scope.spawn(|| fresh.back_to_back_in_reverse(scenarios, seeds));
        let in_order = hashes_here(engine, scenarios, seeds, false);
        (
            alone_pass.join().expect("the pass alone does not panic"),
            reverse_pass
                .join()
                .expect("the reverse pass does not panic"),
            in_order,
        )
    });
    let alone_hashes = alone_hashes?;
    let in_order: Vec<(usize, u64)> = in_order?.into_iter().enumerate().collect();
    let in_reverse: Vec<(usize, u64)> = (0..pairs.len()).rev().zip(in_reverse?).collect();
    let mut isolation = Isolation {
        pairs: pairs.len(),
        moved: Vec::new(),
    };
    for (pass, hashes) in [("in order", in_order), ("in reverse", in_reverse)] {
        for (index, shared) in hashes {
            if shared != alone_hashes[index] {
                let (loaded, seed) = pairs[index];
                isolation.moved.push(Moved {
                    scenario: loaded.display_path(),
                    seed,
                    pass,
                    alone: alone_hashes[index],
                    shared,
                });
            }
        }
    }
    Ok(isolation)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use super::*;
    use crate::oracle::Verdict;
    use crate::scenario::Scenario;
    use crate::trace::{Event, Trace};
    use crate::worlds::SeedRun;

    /// An engine whose hash depends on the seed and, if `leaky`, on how many worlds this
    /// engine ran before (a process-wide counter).
    struct CountingEngine {
        leaky: bool,
        runs: std::sync::Mutex<u64>,
    }

    impl Engine for CountingEngine {
        fn name(&self) -> &'static str {
            "counting"
        }

        fn run(&self, _: &Scenario, seed: u64, _: Option<&crate::logs::LogSettings>) -> SeedRun {
            let mut runs = self.runs.lock().expect("lock");
            *runs += 1;
            let mut trace = Trace::default();
            let stamp = if self.leaky { seed + *runs } else { seed };
            trace.push(stamp, "world", Event::Phase { name: "end".into() });
            SeedRun {
                trace,
                violations: Vec::new(),
                verdict: Verdict::Passed,
                wall: std::time::Duration::ZERO,
                logs: None,
                reached: Default::default(),
            }
        }
    }

    fn scenarios() -> Vec<Loaded> {
        ["a", "b"]
            .iter()
            .map(|name| {
                Loaded::from_source(
                    Path::new(&format!("{name}.toml")),
                    format!("name = \"{name}\"\nduration_s = 10\n[oracles]\n"),
                )
                .expect("a minimal scenario parses")
            })
            .collect()
    }

    /// Fresh processes, modelled as engines that start from nothing.
    struct FreshEngines {
        leaky: bool,
    }

    impl FreshEngines {
        fn engine(&self) -> CountingEngine {
            CountingEngine {
                leaky: self.leaky,
                runs: std::sync::Mutex::new(0),
            }
        }
    }

    impl FreshProcesses for FreshEngines {
        fn alone(&self, loaded: &Loaded, seed: u64) -> Result<u64, String> {
            hash_here(&self.engine(), loaded, seed)
        }

        fn back_to_back_in_reverse(
            &self,
            scenarios: &[Loaded],
            seeds: &[u64],
        ) -> Result<Vec<u64>, String> {
            hashes_here(&self.engine(), scenarios, seeds, true)
        }
    }

    #[test]
    fn an_isolated_engine_passes() {
        let engine = CountingEngine {
            leaky: false,
            runs: std::sync::Mutex::new(0),
        };
        let fresh = FreshEngines { leaky: false };
        let result = check(&engine, &scenarios(), &[1, 2], &fresh, &|_| {}).expect("runs");
        assert_eq!(result.pairs, 4);
        assert!(result.moved.is_empty(), "{result:?}");
        assert!(result.render().contains("isolation: PASSED"));
    }

    #[test]
    fn a_leaking_engine_is_named_pair_by_pair() {
        let engine = CountingEngine {
            leaky: true,
            runs: std::sync::Mutex::new(0),
        };
        let fresh = FreshEngines { leaky: true };
        let passes = Cell::new(0);
        let result = check(&engine, &scenarios(), &[1, 2], &fresh, &|_| {
            passes.set(passes.get() + 1)
        })
        .expect("runs");
        assert_eq!(passes.get(), 1, "the three passes start together");
        // Only the first world of each back-to-back process matches its run alone.
        assert_eq!(result.moved.len(), 6, "{result:?}");
        let first = &result.moved[0];
        assert_eq!(
            (first.scenario.as_str(), first.seed, first.pass),
            ("a.toml", 2, "in order")
        );
        let text = result.render();
        assert!(text.contains("MOVED a.toml seed=0x2 in order"), "{text}");
        assert!(text.contains("MOVED a.toml seed=0x1 in reverse"), "{text}");
        assert!(!text.contains("b.toml seed=0x2 in reverse"), "{text}");
        assert!(text.contains("isolation: FAILED - 6 of 8"), "{text}");
    }
}
