//! Sweeps: many seeds of many scenarios, split into deterministic shards, summarised in one
//! table.
//!
//! The (scenario, seed) pairs are enumerated scenario-major (files in the order given,
//! directories expanded to their `*.toml` files sorted by name; seeds ascending) and pair
//! `i` belongs to shard `k/n` when `i mod n = k - 1`, so shards are disjoint, cover
//! everything, and (given at least `n` seeds per scenario) each gets a share of every
//! scenario (a CI matrix of `n` jobs, or a nextest-style partition). A sweep fails when any seed misses its scenario's expectation,
//! or (unsharded) when a scenario never reached a reachability probe its `reach` declares;
//! [`Coverage`] is the probe × scenario table it prints after the summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::{self, Loaded, Options};
use crate::report::format_seed;
use crate::worlds::{Engine, Reached};

/// `k/n`: the k-th (1-based) of n shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, 1..=count.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// The whole sweep.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether pair number `position` belongs to this shard.
    pub fn takes(self, position: usize) -> bool {
        position % self.count == self.index - 1
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("expected a shard as k/n with 1 <= k <= n, got `{text}`");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// One (scenario, seed) pair to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// Index into the scenario list.
    pub scenario: usize,
    /// The seed.
    pub seed: u64,
}

/// This shard's pairs, in order.
pub fn plan(scenarios: usize, first_seed: u64, seeds: u64, shard: Shard) -> Vec<Job> {
    (0..scenarios)
        .flat_map(|scenario| {
            (0..seeds).map(move |offset| Job {
                scenario,
                seed: first_seed.wrapping_add(offset),
            })
        })
        .enumerate()
        .filter(|(position, _)| shard.takes(*position))
        .map(|(_, job)| job)
        .collect()
}

/// Files to sweep: each argument is a scenario file, or a directory whose `*.toml` files
/// are taken in name order.
pub fn expand_paths(arguments: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for argument in arguments {
        if argument.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(argument)?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            found.retain(|path| path.extension().is_some_and(|e| e == "toml"));
            found.sort();
            files.extend(found);
        } else {
            files.push(argument.clone());
        }
    }
    Ok(files)
}

/// What one pair came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The pair.
    pub job: Job,
    /// Matched its expectation (and any second run agreed).
    pub ok: bool,
    /// Wall time of the first run.
    pub wall: Duration,
    /// The report's first line, or why the seed could not run.
    pub headline: String,
    /// The command that reproduces it.
    pub replay: String,
    /// The artifact folder, if one was written.
    pub artifacts: Option<PathBuf>,
    /// The full console text of a failed seed (empty for passes).
    pub failure_text: String,
    /// The reachability probes the seed reached.
    pub reached: Reached,
}

/// Run `jobs` on `threads` threads; `on_done(finished, total, outcome)` is called as each
/// pair finishes (from the worker thread). Outcomes come back in `jobs` order.
pub fn run(
    engine: &dyn Engine,
    scenarios: &[Loaded],
    jobs: &[Job],
    options: &Options,
    threads: usize,
    on_done: &(dyn Fn(usize, usize, &JobOutcome) + Sync),
) -> Vec<JobOutcome> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Option<JobOutcome>>> = Mutex::new(vec![None; jobs.len()]);
    let work = || loop {
        let position = next.fetch_add(1, Ordering::SeqCst);
        let Some(job) = jobs.get(position) else {
            break;
        };
        let loaded = &scenarios[job.scenario];
        let outcome = match harness::run_seed(engine, loaded, job.seed, options) {
            Ok(result) => JobOutcome {
                job: *job,
                ok: result.ok(),
                wall: result.run.wall,
                headline: result.headline.clone(),
                replay: result.replay.clone(),
                artifacts: result.artifacts.clone(),
                failure_text: if result.ok() {
                    String::new()
                } else {
                    result.console_text()
                },
                reached: result.run.reached.clone(),
            },
            Err(error) => JobOutcome {
                job: *job,
                ok: false,
                wall: Duration::ZERO,
                headline: format!(
                    "ERROR {} seed={}: {error}",
                    loaded.scenario.name,
                    format_seed(job.seed)
                ),
                replay: format!(
                    "{} run {} --seed {}",
                    loaded.scenario.engine.cargo_command(),
                    loaded.display_path(),
                    format_seed(job.seed)
                ),
                artifacts: None,
                failure_text: format!("{error}\n"),
                reached: Reached::default(),
            },
        };
        let done = finished.fetch_add(1, Ordering::SeqCst) + 1;
        on_done(done, jobs.len(), &outcome);
        outcomes.lock().expect("outcomes lock")[position] = Some(outcome);
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1) {
            scope.spawn(work);
        }
        work();
    });
    outcomes
        .into_inner()
        .expect("outcomes lock")
        .into_iter()
        .map(|outcome| outcome.expect("every job ran"))
        .collect()
}

/// One scenario's line in the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Seeds run in this shard.
    pub seeds: usize,
    /// Seeds that matched the expectation.
    pub passed: usize,
    /// Seeds that did not.
    pub failed: usize,
    /// The slowest seed and its wall time.
    pub slowest: Option<(u64, Duration)>,
    /// The first failing seed (lowest) and its replay command.
    pub first_failure: Option<(u64, String)>,
}

/// One row per scenario that had pairs in this shard, in scenario order.
pub fn summarise(scenarios: &[Loaded], outcomes: &[JobOutcome]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (index, loaded) in scenarios.iter().enumerate() {
        let mine: Vec<&JobOutcome> = outcomes
            .iter()
            .filter(|o| o.job.scenario == index)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let slowest = mine
            .iter()
            .max_by_key(|o| (o.wall, std::cmp::Reverse(o.job.seed)))
            .map(|o| (o.job.seed, o.wall));
        let first_failure = mine
            .iter()
            .filter(|o| !o.ok)
            .min_by_key(|o| o.job.seed)
            .map(|o| (o.job.seed, o.replay.clone()));
        let passed = mine.iter().filter(|o| o.ok).count();
        rows.push(Row {
            scenario: loaded.scenario.name.clone(),
            seeds: mine.len(),
            passed,
            failed: mine.len() - passed,
            slowest,
            first_failure,
        });
    }
    rows
}

/// The summary table (aligned text, also written to `sweep-summary.txt`).
pub fn render_table(rows: &[Row], shard: Shard) -> String {
    let header = [
        "scenario",
        "seeds",
        "passed",
        "failed",
        "slowest seed (wall)",
        "first failing seed: replay",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            [
                row.scenario.clone(),
                row.seeds.to_string(),
                row.passed.to_string(),
                row.failed.to_string(),
                row.slowest.map_or("-".to_owned(), |(seed, wall)| {
                    format!("{} ({:.2}s)", format_seed(seed), wall.as_secs_f64())
                }),
                row.first_failure
                    .as_ref()
                    .map_or("-".to_owned(), |(seed, replay)| {
                        format!("{}: {replay}", format_seed(*seed))
                    }),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let numeric = (1..=3).contains(&column);
            match (column, numeric) {
                (5, _) => text.push_str(cell),
                (_, true) => {
                    let _ = write!(text, "{cell:>width$}  ");
                }
                _ => {
                    let _ = write!(text, "{cell:<width$}  ");
                }
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = String::new();
    let total_seeds: usize = rows.iter().map(|r| r.seeds).sum();
    let total_failed: usize = rows.iter().map(|r| r.failed).sum();
    let _ = writeln!(
        text,
        "{} sweep (shard {}/{}): {} scenarios, {total_seeds} seeds, {total_failed} failed",
        if total_failed == 0 {
            "PASSED"
        } else {
            "FAILED"
        },
        shard.index,
        shard.count,
        rows.len()
    );
    text.push_str(&line(header));
    for row in &cells {
        text.push_str(&line(row.each_ref().map(String::as_str)));
    }
    text
}

/// Which seeds of which scenario reached which reachability probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Per scenario (sweep order): its name, seeds run, declared probes, and seeds that
    /// reached each probe.
    pub scenarios: Vec<ScenarioCoverage>,
}

/// One scenario's reachability over a sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScenarioCoverage {
    /// Scenario name.
    pub name: String,
    /// Seeds run.
    pub seeds: usize,
    /// The probes its `reach` declares.
    pub declared: Vec<String>,
    /// Probe name → seeds that reached it.
    pub reached: std::collections::BTreeMap<&'static str, usize>,
}

impl Coverage {
    /// Tally `outcomes` by scenario.
    pub fn of(scenarios: &[Loaded], outcomes: &[JobOutcome]) -> Self {
        let mut coverage: Vec<ScenarioCoverage> = scenarios
            .iter()
            .map(|loaded| ScenarioCoverage {
                name: loaded.scenario.name.clone(),
                declared: loaded.scenario.reach.clone(),
                ..ScenarioCoverage::default()
            })
            .collect();
        for outcome in outcomes {
            let entry = &mut coverage[outcome.job.scenario];
            entry.seeds += 1;
            for &probe in outcome.reached.keys() {
                *entry.reached.entry(probe).or_default() += 1;
            }
        }
        coverage.retain(|entry| entry.seeds > 0);
        Self {
            scenarios: coverage,
        }
    }

    /// (scenario, probe) pairs a scenario declares but none of its seeds reached.
    pub fn missing(&self) -> Vec<(&str, &str)> {
        self.scenarios
            .iter()
            .flat_map(|entry| {
                entry
                    .declared
                    .iter()
                    .filter(|probe| !entry.reached.contains_key(probe.as_str()))
                    .map(|probe| (entry.name.as_str(), probe.as_str()))
            })
            .collect()
    }

    /// One line per probe of `all` (the relay's probes, in their order): how many seeds
    /// reached it in all, then `scenario n/N` for every scenario that reached it (`*` where
    /// the scenario declares it), then every declared probe that was never reached.
    pub fn render(&self, all: &[&'static str]) -> String {
        let mut text = String::from(
            "reachability: probe, seeds that reached it, by scenario (* = declared in reach)\n",
        );
        let width = all.iter().map(|name| name.len()).max().unwrap_or(0);
        for &probe in all {
            let mut total = 0;
            let mut cells = Vec::new();
            for entry in &self.scenarios {
                if let Some(&count) = entry.reached.get(probe) {
                    total += count;
                    let declared = if entry.declared.iter().any(|d| d == probe) {
                        "*"
                    } else {
                        ""
                    };
                    cells.push(format!("{} {count}/{}{declared}", entry.name, entry.seeds));
                }
            }
            let detail = if cells.is_empty() {
                "never reached".to_owned()
            } else {
                cells.join(", ")
            };
            let _ = writeln!(text, "  {probe:<width$}  {total:>5}  {detail}");
        }
        for (scenario, probe) in self.missing() {
            let _ = writeln!(
                text,
                "MISSING {scenario}: declares reach {probe:?}, reached by none of its seeds"
            );
        }
        text
    }
}

/// Where a sweep writes its summary: `<root>/sweep-summary[-k-of-n].txt`.
pub fn summary_path(root: &Path, shard: Shard) -> PathBuf {
    if shard == Shard::ALL {
        root.join("sweep-summary.txt")
    } else {
        root.join(format!(
            "sweep-summary-{}-of-{}.txt",
            shard.index, shard.count
        ))
    }
}

/// The scenario files under some paths, sorted by whether this build's engine runs them.
#[derive(Debug, Default)]
pub struct Selection {
    /// Scenarios this build runs, in path order.
    pub runnable: Vec<Loaded>,
    /// Scenarios for the other build's engine (skipped).
    pub other_engine: Vec<Loaded>,
    /// Files that did not load.
    pub errors: Vec<crate::scenario::ScenarioError>,
}

impl Selection {
    /// Load every scenario file of `paths` (files, or folders of `.toml` files).
    pub fn load(paths: &[PathBuf]) -> std::io::Result<Self> {
        let mut selection = Self::default();
        for file in expand_paths(paths)? {
            match Loaded::load(&file) {
                Ok(loaded) if crate::worlds::for_scenario(&loaded.scenario).is_ok() => {
                    selection.runnable.push(loaded);
                }
                Ok(loaded) => selection.other_engine.push(loaded),
                Err(error) => selection.errors.push(error),
            }
        }
        Ok(selection)
    }
}

/// What a finished sweep reports: the summary table with the reachability coverage, and
/// whether the sweep passed (every seed ok, and on an unsharded sweep every declared
/// `reach` reached).
#[derive(Debug)]
pub struct SweepReport {
    /// The summary table and coverage, as printed.
    pub text: String,
    /// Whether the sweep passed.
    pub ok: bool,
    /// Where the summary was written under the artifacts root, and whether that worked.
    pub written: Option<(PathBuf, std::io::Result<()>)>,
}

impl SweepReport {
    /// Summarise `outcomes` of `scenarios` in `shard`, and write the summary under
    /// `artifacts_root` if there is one.
    pub fn of(
        scenarios: &[Loaded],
        outcomes: &[JobOutcome],
        shard: Shard,
        artifacts_root: Option<&Path>,
    ) -> Self {
        let rows = summarise(scenarios, outcomes);
        let mut text = render_table(&rows, shard);
        let coverage = Coverage::of(scenarios, outcomes);
        let probes: Vec<&'static str> = relay::rt::probe::Probe::ALL
            .iter()
            .map(|probe| probe.name())
            .collect();
        text.push_str(&coverage.render(&probes));
        // A shard holds only some seeds of each scenario: reach is judged on whole sweeps.
        let unreached = shard == Shard::ALL && !coverage.missing().is_empty();
        if shard != Shard::ALL {
            text.push_str("(reach is judged on unsharded sweeps only)\n");
        }
        let written = artifacts_root.map(|root| {
            let path = summary_path(root, shard);
            let result = std::fs::create_dir_all(root).and_then(|()| std::fs::write(&path, &text));
            (path, result)
        });
        Self {
            ok: outcomes.iter().all(|o| o.ok) && !unreached,
            text,
            written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_cover_everything_and_mix_scenarios() {
        let all = plan(3, 1, 10, Shard::ALL);
        assert_eq!(all.len(), 30);
        let mut union = Vec::new();
        for index in 1..=4 {
            let shard = plan(3, 1, 10, Shard { index, count: 4 });
            assert!((7..=8).contains(&shard.len()), "{}", shard.len());
            for scenario in 0..3 {
                assert!(shard.iter().any(|job| job.scenario == scenario));
            }
            union.extend(shard);
        }
        union.sort_by_key(|job| (job.scenario, job.seed));
        assert_eq!(union, all);
        let seeds_of = |shard| -> Vec<(usize, u64)> {
            plan(2, 5, 3, shard)
                .into_iter()
                .map(|job| (job.scenario, job.seed))
                .collect()
        };
        assert_eq!(seeds_of(Shard { index: 2, count: 3 }), [(0, 6), (1, 6)]);
        assert_eq!(
            seeds_of(Shard { index: 1, count: 2 }),
            [(0, 5), (0, 7), (1, 6)]
        );
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage_counts_seeds_per_probe_and_names_what_was_declared_but_never_reached() {
        let scenario = |name: &str, reach: &str| {
            Loaded::from_source(
                Path::new(&format!("{name}.toml")),
                format!("name = \"{name}\"\nduration_s = 10\nreach = [{reach}]\n[oracles]\n"),
            )
            .expect("a minimal scenario parses")
        };
        let scenarios = [
            scenario(
                "dormancy",
                r#""upstream.dormant", "upstream.dormant_retry""#,
            ),
            scenario("churn", ""),
        ];
        let outcome = |scenario: usize, seed: u64, probes: &[&'static str]| JobOutcome {
            job: Job { scenario, seed },
            ok: true,
            wall: Duration::ZERO,
            headline: String::new(),
            replay: String::new(),
            artifacts: None,
            failure_text: String::new(),
            reached: probes.iter().map(|&probe| (probe, 1)).collect(),
        };
        let outcomes = [
            outcome(0, 1, &["upstream.dormant"]),
            outcome(0, 2, &["upstream.dormant", "http.idle_reap"]),
            outcome(1, 1, &["http.idle_reap"]),
        ];
        let coverage = Coverage::of(&scenarios, &outcomes);
        assert_eq!(coverage.scenarios[0].seeds, 2);
        assert_eq!(coverage.scenarios[0].reached["upstream.dormant"], 2);
        assert_eq!(coverage.missing(), [("dormancy", "upstream.dormant_retry")]);
        let text = coverage.render(&[
            "upstream.dormant",
            "upstream.dormant_retry",
            "http.idle_reap",
        ]);
        let line = |probe: &str, total: usize, detail: &str| {
            format!("  {probe:<22}  {total:>5}  {detail}\n")
        };
        assert!(
            text.contains(&line("upstream.dormant", 2, "dormancy 2/2*")),
            "{text}"
        );
        assert!(
            text.contains(&line("upstream.dormant_retry", 0, "never reached")),
            "{text}"
        );
        assert!(
            text.contains(&line("http.idle_reap", 2, "dormancy 1/2, churn 1/1")),
            "{text}"
        );
        assert!(
            text.contains("MISSING dormancy: declares reach \"upstream.dormant_retry\", reached by none of its seeds"),
            "{text}"
        );
    }
}
