//! The isolation check: a seed's trace hash must not depend on what the process ran before
//! it. Every (scenario, seed) pair is hashed alone (by a caller-supplied runner, in practice
//! a fresh child process), then all pairs are run back to back in this process, once in
//! order and once in reverse, and every hash must equal the pair's hash alone.
//!
//! Running in both orders puts each pair after a different set of predecessors: a leak
//! that only matters for the first world of a process (a lazily seeded global), or that
//! grows with every world (a process-wide counter, a table never emptied), shows up as a
//! pair whose hash moves. This is how `tokio::sync::watch`'s process-seeded waiter order
//! was found (see `relay::rt::stop`).

use std::path::Path;

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

/// The hash of `loaded` at `seed` computed alone in a fresh process: `executable isolation
/// <scenario> --seed N --alone`, which prints the hash (`hash_here`) and nothing else.
pub fn hash_in_child(executable: &Path, loaded: &Loaded, seed: u64) -> Result<u64, String> {
    let output = std::process::Command::new(executable)
        .arg("isolation")
        .arg(&loaded.path)
        .args(["--seed", &seed.to_string(), "--alone"])
        .output()
        .map_err(|error| format!("cannot run {}: {error}", executable.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .filter(|_| output.status.success())
        .ok_or_else(|| {
            format!(
                "{} seed={} alone failed ({}): {}{}",
                loaded.display_path(),
                format_seed(seed),
                output.status,
                text,
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Check every pair of `scenarios` × `seeds`: `alone` gives a pair's hash alone; the two
/// back-to-back passes run here with `engine`. `progress` hears of each pass as it starts.
/// The pairs alone (other processes) are hashed on a second thread while the first pass
/// runs here, so a two-core machine does both at once; the passes themselves stay back to
/// back on this one.
pub fn check(
    engine: &dyn Engine,
    scenarios: &[Loaded],
    seeds: &[u64],
    alone: &(dyn Fn(&Loaded, u64) -> Result<u64, String> + Sync),
    progress: &dyn Fn(&str),
) -> Result<Isolation, String> {
    let pairs: Vec<(&Loaded, u64)> = scenarios
        .iter()
        .flat_map(|loaded| seeds.iter().map(move |&seed| (loaded, seed)))
        .collect();
    let back_to_back = |order: &mut dyn Iterator<Item = usize>| {
        order
            .map(|index| {
                let (loaded, seed) = pairs[index];
                Ok((index, hash_here(engine, loaded, seed)?))
            })
            .collect::<Result<Vec<(usize, u64)>, String>>()
    };
    progress(&format!("{} pairs alone", pairs.len()));
    let (alone_hashes, in_order) = std::thread::scope(|scope| {
        let alone_pass = scope.spawn(|| {
            pairs
                .iter()
                .map(|&(loaded, seed)| alone(loaded, seed))
                .collect::<Result<Vec<u64>, String>>()
        });
        progress(&format!("{} pairs back to back, in order", pairs.len()));
        let in_order = back_to_back(&mut (0..pairs.len()));
        let alone_hashes = alone_pass.join().expect("the pass alone does not panic");
        (alone_hashes, in_order)
    });
    let alone_hashes = alone_hashes?;
    let in_order = in_order?;
    progress(&format!("{} pairs back to back, in reverse", pairs.len()));
    let in_reverse = back_to_back(&mut (0..pairs.len()).rev())?;
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

    fn alone_on(engine: &CountingEngine) -> impl Fn(&Loaded, u64) -> Result<u64, String> + '_ {
        move |loaded, seed| {
            // Alone = the first world of a fresh engine.
            let fresh = CountingEngine {
                leaky: engine.leaky,
                runs: std::sync::Mutex::new(0),
            };
            hash_here(&fresh, loaded, seed)
        }
    }

    #[test]
    fn an_isolated_engine_passes() {
        let engine = CountingEngine {
            leaky: false,
            runs: std::sync::Mutex::new(0),
        };
        let result =
            check(&engine, &scenarios(), &[1, 2], &alone_on(&engine), &|_| {}).expect("runs");
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
        let passes = Cell::new(0);
        let result = check(&engine, &scenarios(), &[1, 2], &alone_on(&engine), &|_| {
            passes.set(passes.get() + 1)
        })
        .expect("runs");
        assert_eq!(passes.get(), 3, "alone, in order, in reverse");
        // Only the very first world of the process matches its run alone.
        assert_eq!(result.moved.len(), 7, "{result:?}");
        let first = &result.moved[0];
        assert_eq!(
            (first.scenario.as_str(), first.seed, first.pass),
            ("a.toml", 2, "in order")
        );
        let text = result.render();
        assert!(text.contains("MOVED a.toml seed=0x2 in order"), "{text}");
        assert!(text.contains("isolation: FAILED - 7 of 8"), "{text}");
    }
}
