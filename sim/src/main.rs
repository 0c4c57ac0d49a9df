//! `windtunnel`: the wind tunnel's command line. It only parses arguments, picks the
//! engine and prints; the work is in the library (`harness`, `sweep`, `shrink`).
//!
//! - `run <scenario> --seed N` runs seeds and judges them (failing runs leave an artifact
//!   folder; `--shrink` shrinks a failure);
//! - `replay <artifact-dir>` re-runs a recorded run and checks the trace hash;
//! - `sweep <dirs-or-files> --seeds N [--shard k/n]` runs many seeds with a summary table;
//! - `shrink <scenario> --seed N` minimises a failing scenario;
//! - `check <files>` validates scenario files without running them;
//! - `relay …` (hidden, ordinary builds) is the relay's own command line (`relay::cli`):
//!   real mode runs the relay as a child process through it.
//!
//! madsim scenarios run in the simulation build (`cargo sim <command> …`), turmoil
//! scenarios and `run --real` in an ordinary one.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use windtunnel::harness::{self, Loaded, Options};
use windtunnel::logs::{LogSettings, DEFAULT_FILTER};
use windtunnel::oracle::Verdict;
use windtunnel::report::{format_seed, parse_seed};
use windtunnel::worlds::Engine;
use windtunnel::{shrink, sweep};

#[derive(Debug, Parser)]
#[command(
    name = "windtunnel",
    version,
    about = "Deterministic simulation of the relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario for one or more seeds and judge it (`cargo sim run` for madsim
    /// scenarios, `cargo run --release -p windtunnel -- run` for turmoil ones).
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// First seed (decimal or 0x-hex).
        #[arg(long, default_value = "1", value_parser = parse_seed)]
        seed: u64,
        /// How many consecutive seeds to run, starting at --seed.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Run each seed twice and compare the traces record by record.
        #[arg(long)]
        check_determinism: bool,
        /// Shrink a failing seed's scenario to a minimal one that still fails.
        #[arg(long)]
        shrink: bool,
        /// Most runs a shrink may make.
        #[arg(long, default_value_t = 100)]
        max_runs: usize,
        /// Run the scenario's actors on real tokio and loopback TCP against the relay as a
        /// separate process, in real time (ordinary builds; not deterministic, same oracles).
        #[arg(long, conflicts_with_all = ["check_determinism", "shrink"])]
        real: bool,
        /// With --real: the relay binary to run (default: this executable's own copy of the
        /// relay's command line, `windtunnel relay serve`).
        #[arg(long, requires = "real", value_name = "PATH")]
        relay_bin: Option<PathBuf>,
        /// With --real: any atproto relay, as a black box: the shell command that starts
        /// it, where `{addr}` is the address it must listen on and `{dir}` a directory for
        /// its files. Hosts are seeded with requestCrawl; only what the cast sees is judged.
        #[arg(
            long,
            requires = "real",
            conflicts_with = "relay_bin",
            value_name = "COMMAND"
        )]
        relay_cmd: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Re-run the scenario copy and seed recorded in an artifact folder; fail unless the
    /// trace hash is identical, naming the first divergent record.
    Replay {
        /// An artifact folder (contains meta.json, scenario.toml, trace.jsonl).
        dir: PathBuf,
    },
    /// Run many seeds of many scenarios (optionally one shard of them) and print a summary.
    Sweep {
        /// Scenario files, or directories whose *.toml files are all swept.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// First seed.
        #[arg(long, default_value = "1", value_parser = parse_seed)]
        seed: u64,
        /// Seeds per scenario, starting at --seed.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Run only shard k of n (1-based) of the (scenario, seed) pairs.
        #[arg(long, default_value = "1/1")]
        shard: sweep::Shard,
        /// Seeds run at once (each on its own thread).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Run each seed twice and compare the traces.
        #[arg(long)]
        check_determinism: bool,
        /// Also write the outcomes as JUnit XML to this file (one test case per seed).
        #[arg(long)]
        junit: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shrink a failing (scenario, seed) to a minimal scenario that fails the same oracle.
    Shrink {
        /// The scenario file.
        scenario: PathBuf,
        /// The failing seed.
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
        /// Most runs the shrink may make.
        #[arg(long, default_value_t = 100)]
        max_runs: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Require every (scenario, seed) pair to hash the same alone (a fresh process each)
    /// and back to back with all the others in one process, in order and in reverse.
    Isolation {
        /// Scenario files, or directories whose *.toml files are all checked.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// First seed.
        #[arg(long, default_value = "1", value_parser = parse_seed)]
        seed: u64,
        /// Seeds per scenario, starting at --seed.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Print only the hashes of the pairs given, run back to back in this process, one
        /// per line (the check's child processes use it).
        #[arg(long, hide = true)]
        hashes_only: bool,
        /// With --hashes-only: run the pairs in reverse.
        #[arg(long, hide = true, requires = "hashes_only")]
        reverse: bool,
    },
    /// Parse and validate scenario files; report every error as file:line:col.
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The relay's command line (`windtunnel relay serve --config F` is `relay serve
    /// --config F`); real mode's relay process.
    #[command(hide = true)]
    Relay {
        /// The relay's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Where artifact folders go (one per failing run).
    #[arg(long, default_value = "artifacts")]
    artifacts: PathBuf,
    /// Write an artifact folder for passing runs too.
    #[arg(long)]
    artifacts_always: bool,
    /// Which log lines go into logs.txt (`level,target=level,…`).
    #[arg(long, default_value = DEFAULT_FILTER)]
    log_filter: String,
}

impl OutputArgs {
    fn options(&self, check_determinism: bool, logs_up_front: bool) -> Result<Options, ExitCode> {
        let logs = LogSettings::with_filter(&self.log_filter).map_err(|error| {
            eprintln!("{error}");
            ExitCode::from(2)
        })?;
        Ok(Options {
            artifacts_root: Some(self.artifacts.clone()),
            artifacts_always: self.artifacts_always,
            logs,
            logs_up_front,
            check_determinism,
        })
    }
}

/// This build's engine: madsim in the simulation build, turmoil in an ordinary one.
#[cfg(madsim)]
fn engine() -> &'static dyn Engine {
    &windtunnel::worlds::madsim::Madsim
}

/// This build's engine: madsim in the simulation build, turmoil in an ordinary one.
#[cfg(not(madsim))]
fn engine() -> &'static dyn Engine {
    &windtunnel::worlds::turmoil::Turmoil
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    match &command {
        Command::Check { files } => return check(files),
        Command::Relay { args } => return relay_command(args),
        _ => {}
    }
    let engine = engine();
    let outcome = match command {
        Command::Run {
            scenario,
            seed,
            seeds,
            check_determinism,
            shrink,
            max_runs,
            real,
            relay_bin,
            relay_cmd,
            output,
        } => output.options(check_determinism, true).and_then(|options| {
            let real_engine: Box<dyn Engine>;
            let (engine, loaded) = if real {
                let (found, loaded) = load_for_real(&scenario, relay_bin, relay_cmd)?;
                real_engine = found;
                (real_engine.as_ref(), loaded)
            } else {
                (engine, load(&scenario)?)
            };
            run(
                engine,
                &loaded,
                seed,
                seeds,
                &options,
                shrink.then_some(max_runs),
            )
        }),
        Command::Replay { dir } => replay(engine, &dir),
        Command::Isolation {
            paths,
            seed,
            seeds,
            hashes_only,
            reverse,
        } => isolation(engine, &paths, seed, seeds, hashes_only.then_some(reverse)),
        Command::Sweep {
            paths,
            seed,
            seeds,
            shard,
            jobs,
            check_determinism,
            junit,
            output,
        } => output
            .options(check_determinism, false)
            .and_then(|options| {
                let plan = SweepPlan {
                    first_seed: seed,
                    seeds,
                    shard,
                    jobs,
                    junit,
                };
                sweep(engine, &paths, &plan, &options)
            }),
        Command::Shrink {
            scenario,
            seed,
            max_runs,
            output,
        } => output.options(false, true).and_then(|options| {
            let loaded = load(&scenario)?;
            let result = run_one(engine, &loaded, seed, &options)?;
            shrink_failure(engine, &loaded, &result, max_runs, &options)
        }),
        Command::Check { .. } | Command::Relay { .. } => unreachable!("handled above"),
    };
    outcome.unwrap_or_else(|code| code)
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match Loaded::load(file) {
            Ok(loaded) => {
                let swarm = match loaded.scenario.swarm.len() {
                    0 => String::new(),
                    n => format!("; swarm: {n} keys drawn per seed"),
                };
                println!("ok {} ({}{swarm})", file.display(), loaded.scenario.name);
            }
            Err(error) => {
                eprintln!("{error}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Load a scenario to run for real (`run --real`), with the engine that does it: the
/// relay run by `relay_bin`, or by this executable's `relay` command, or a black box
/// started by `relay_cmd` (what it cannot judge of the scenario is said on stderr).
#[cfg(not(madsim))]
fn load_for_real(
    path: &Path,
    relay_bin: Option<PathBuf>,
    relay_cmd: Option<String>,
) -> Result<(Box<dyn Engine>, Loaded), ExitCode> {
    use windtunnel::worlds::real::process::RelayProgram;
    let loaded = Loaded::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    let refused = windtunnel::scenario::REAL.problems(&loaded.scenario);
    if !refused.is_empty() {
        for problem in refused {
            eprintln!("{}: cannot run for real: {problem}", path.display());
        }
        return Err(ExitCode::from(2));
    }
    let relay = match (relay_bin, relay_cmd) {
        (_, Some(command)) => {
            let mut adapted = loaded.scenario.clone();
            for note in windtunnel::worlds::real::black_box::black_box_scenario(&mut adapted) {
                eprintln!("{}: black box: {note}", path.display());
            }
            RelayProgram::BlackBox(command)
        }
        (Some(binary), None) => RelayProgram::binary(binary),
        (None, None) => RelayProgram::this_windtunnel().map_err(|error| {
            eprintln!("cannot find this executable to run the relay with: {error}");
            ExitCode::from(2)
        })?,
    };
    Ok((Box::new(windtunnel::worlds::real::Real { relay }), loaded))
}

/// `run --real` needs an ordinary build.
#[cfg(madsim)]
fn load_for_real(
    path: &Path,
    _relay_bin: Option<PathBuf>,
    _relay_cmd: Option<String>,
) -> Result<(Box<dyn Engine>, Loaded), ExitCode> {
    eprintln!(
        "{}: --real runs in an ordinary build (real tokio, real sockets): \
         `cargo run --release -p windtunnel -- run --real …`",
        path.display()
    );
    Err(ExitCode::from(2))
}

/// Load a scenario this build's engine can run.
fn load(path: &Path) -> Result<Loaded, ExitCode> {
    let loaded = Loaded::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    if let Err(error) = windtunnel::worlds::for_scenario(&loaded.scenario) {
        eprintln!("{}: {error}", path.display());
        return Err(ExitCode::from(2));
    }
    Ok(loaded)
}

fn run_one(
    engine: &dyn Engine,
    loaded: &Loaded,
    seed: u64,
    options: &Options,
) -> Result<harness::SeedResult, ExitCode> {
    let result = harness::run_seed(engine, loaded, seed, options).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    print!("{}", result.console_text());
    Ok(result)
}

fn run(
    engine: &dyn Engine,
    loaded: &Loaded,
    first_seed: u64,
    seeds: u64,
    options: &Options,
    shrink_budget: Option<usize>,
) -> Result<ExitCode, ExitCode> {
    let mut all_ok = true;
    for seed in first_seed..first_seed.saturating_add(seeds.max(1)) {
        let result = run_one(engine, loaded, seed, options)?;
        all_ok &= result.ok();
        if let (false, Some(max_runs)) = (result.ok(), shrink_budget) {
            if matches!(result.run.verdict, Verdict::Failed(_)) {
                shrink_failure(engine, loaded, &result, max_runs, options)?;
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `windtunnel relay …`: the relay's own command line, in this executable.
#[cfg(not(madsim))]
fn relay_command(args: &[OsString]) -> ExitCode {
    relay::cli::main(std::iter::once(OsString::from("relay")).chain(args.iter().cloned()))
}

/// The relay's command line is not in the simulation build (it starts a real runtime).
#[cfg(madsim)]
fn relay_command(_args: &[OsString]) -> ExitCode {
    eprintln!(
        "`windtunnel relay` runs in an ordinary build: `cargo run --release -p windtunnel -- relay …`"
    );
    ExitCode::from(2)
}

fn replay(engine: &dyn Engine, dir: &Path) -> Result<ExitCode, ExitCode> {
    // The recorded scenario must be one this build's engine runs (the harness reports a
    // missing or broken folder itself).
    if let Ok(recorded) = Loaded::load(&dir.join("scenario.toml")) {
        if let Err(error) = windtunnel::worlds::for_scenario(&recorded.scenario) {
            eprintln!("{}: {error}", dir.display());
            return Err(ExitCode::from(2));
        }
    }
    let options = Options {
        logs_up_front: false,
        ..Options::default()
    };
    let replay = harness::replay(engine, dir, &options).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    // The replay's verdict first; then the report of the run it replayed.
    print!("{}", replay.summary(dir));
    print!("{}", replay.result.console_text());
    Ok(if replay.identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `sweep` was asked to run, and where its JUnit file goes.
struct SweepPlan {
    first_seed: u64,
    seeds: u64,
    shard: sweep::Shard,
    jobs: usize,
    junit: Option<PathBuf>,
}

fn sweep(
    engine: &dyn Engine,
    paths: &[PathBuf],
    asked: &SweepPlan,
    options: &Options,
) -> Result<ExitCode, ExitCode> {
    let &SweepPlan {
        first_seed,
        seeds,
        shard,
        jobs,
        ..
    } = asked;
    let scenarios = load_for_engine(paths)?;
    let plan = sweep::plan(scenarios.len(), first_seed, seeds, shard);
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(plan.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {pos}/{len} seeds [{elapsed_precise}, eta {eta}] {msg}",
            )
            .expect("the template parses"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        bar
    });
    let on_done = |done: usize, total: usize, outcome: &sweep::JobOutcome| {
        let name = &scenarios[outcome.job.scenario].scenario.name;
        match &progress {
            Some(bar) => {
                if !outcome.ok {
                    bar.println(outcome.failure_text.trim_end());
                }
                bar.set_message(format!("{name} seed={}", format_seed(outcome.job.seed)));
                bar.inc(1);
            }
            None => {
                if !outcome.ok {
                    print!("{}", outcome.failure_text);
                }
                eprintln!(
                    "[{done}/{total}] {} ({:.2}s)",
                    outcome.headline,
                    outcome.wall.as_secs_f64()
                );
            }
        }
    };
    let outcomes = sweep::run(engine, &scenarios, &plan, options, jobs, &on_done);
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let report = sweep::SweepReport::of(
        &scenarios,
        &outcomes,
        shard,
        options.artifacts_root.as_deref(),
    );
    print!("{}", report.text);
    match &report.written {
        Some((path, Ok(()))) => println!("summary: {}", path.display()),
        Some((path, Err(error))) => eprintln!("cannot write {}: {error}", path.display()),
        None => {}
    }
    let mut junit_ok = true;
    if let Some(path) = &asked.junit {
        match windtunnel::junit::write(path, &scenarios, &outcomes) {
            Ok(()) => println!("junit: {}", path.display()),
            Err(error) => {
                eprintln!("cannot write {}: {error}", path.display());
                junit_ok = false;
            }
        }
    }
    Ok(if report.ok && junit_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The scenarios of `paths` this build's engine runs (others are skipped with a note);
/// exit code 2 if one does not load or none is left.
fn load_for_engine(paths: &[PathBuf]) -> Result<Vec<Loaded>, ExitCode> {
    let selection = sweep::Selection::load(paths).map_err(|error| {
        eprintln!("cannot list scenarios: {error}");
        ExitCode::from(2)
    })?;
    for error in &selection.errors {
        eprintln!("{error}");
    }
    if let Some(first) = selection.other_engine.first() {
        eprintln!(
            "skipping {} scenario(s) for another engine ({}, …): {}",
            selection.other_engine.len(),
            first.path.display(),
            windtunnel::worlds::for_scenario(&first.scenario)
                .err()
                .unwrap_or_default()
        );
    }
    let load_failed = !selection.errors.is_empty();
    if load_failed || selection.runnable.is_empty() {
        if selection.runnable.is_empty() && !load_failed && selection.other_engine.is_empty() {
            eprintln!("no scenario files found in the given paths");
        }
        return Err(ExitCode::from(2));
    }
    Ok(selection.runnable)
}

/// `child_reverse`: `Some(reverse)` in a child of the check (`--hashes-only`), which
/// prints the pairs' hashes and nothing else.
fn isolation(
    engine: &dyn Engine,
    paths: &[PathBuf],
    first_seed: u64,
    seeds: u64,
    child_reverse: Option<bool>,
) -> Result<ExitCode, ExitCode> {
    let scenarios = load_for_engine(paths)?;
    let failed = |error: String| {
        eprintln!("{error}");
        ExitCode::from(2)
    };
    let seed_list: Vec<u64> = (first_seed..first_seed.saturating_add(seeds)).collect();
    if let Some(reverse) = child_reverse {
        let hashes = windtunnel::isolation::hashes_here(engine, &scenarios, &seed_list, reverse)
            .map_err(failed)?;
        for hash in hashes {
            println!("{}", format_seed(hash));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let fresh = windtunnel::isolation::ChildProcesses {
        executable: std::env::current_exe().map_err(|error| failed(error.to_string()))?,
    };
    let result = windtunnel::isolation::check(engine, &scenarios, &seed_list, &fresh, &|pass| {
        eprintln!("isolation: {pass}")
    })
    .map_err(failed)?;
    print!("{}", result.render());
    Ok(if result.moved.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn shrink_failure(
    engine: &dyn Engine,
    loaded: &Loaded,
    failing: &harness::SeedResult,
    max_runs: usize,
    options: &Options,
) -> Result<ExitCode, ExitCode> {
    let fail = |error: shrink::ShrinkError| {
        eprintln!("{error}");
        ExitCode::from(2)
    };
    let target = shrink::target(failing).map_err(fail)?;
    let seed = format_seed(failing.seed);
    let name = &failing.scenario.name;
    println!(
        "shrinking {name} seed={seed} while it still fails {target} (at most {max_runs} runs)"
    );
    let artifacts_root = options
        .artifacts_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("artifacts"));
    let mut on_try = |change: &str, kept: bool| {
        println!("  {} {change}", if kept { "kept:   " } else { "dropped:" });
    };
    let done = shrink::shrink_failure(
        engine,
        loaded,
        failing,
        target,
        max_runs,
        &artifacts_root,
        &mut on_try,
    )
    .map_err(fail)?;
    println!(
        "SHRUNK {name} seed={seed} still fails {target}: {} of {} runs kept a change{}",
        done.shrunk.steps.len(),
        done.shrunk.runs,
        if done.shrunk.budget_exhausted {
            " (budget exhausted; raise --max-runs to go further)"
        } else {
            ""
        }
    );
    println!("{}", done.text);
    match done.written {
        Ok(()) => println!(
            "  written to {}; reproduce: {} run {} --seed {seed}",
            done.path.display(),
            failing.scenario.engine.cargo_command(),
            done.path.display(),
        ),
        Err(error) => eprintln!("cannot write {}: {error}", done.path.display()),
    }
    Ok(ExitCode::FAILURE)
}
