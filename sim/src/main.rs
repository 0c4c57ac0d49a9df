//! `windtunnel`: the wind tunnel's command line. `cargo sim run <scenario> --seed N` runs a
//! scenario in simulation; `check` validates scenario files without running them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use windtunnel::scenario::Scenario;

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
    /// Run a scenario for one or more seeds and judge it (simulation build only: `cargo sim run`).
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
        /// Where failing runs leave their trace and report.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
    },
    /// Parse and validate scenario files; report every error as file:line:col.
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("expected a decimal or 0x-hex u64 seed: {error}"))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { files } => check(&files),
        Command::Run {
            scenario,
            seed,
            seeds,
            check_determinism,
            artifacts,
        } => {
            let loaded = match Scenario::load(&scenario) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            run(
                &scenario,
                &loaded,
                seed,
                seeds,
                check_determinism,
                &artifacts,
            )
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match Scenario::load(file) {
            Ok(scenario) => println!("ok {} ({})", file.display(), scenario.name),
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

#[cfg(not(madsim))]
fn run(_: &Path, _: &Scenario, _: u64, _: u64, _: bool, _: &Path) -> ExitCode {
    eprintln!(
        "this windtunnel binary was built without the simulator; run scenarios with \
         `cargo sim run <scenario> --seed N` (it builds with --cfg madsim)"
    );
    ExitCode::from(2)
}

#[cfg(madsim)]
fn run(
    path: &Path,
    scenario: &Scenario,
    first_seed: u64,
    seeds: u64,
    check_determinism: bool,
    artifacts: &Path,
) -> ExitCode {
    use windtunnel::report::RunReport;
    use windtunnel::world;

    let mut all_ok = true;
    for seed in first_seed..first_seed.saturating_add(seeds.max(1)) {
        let outcome = world::run(scenario, seed);
        let path_text = path.display().to_string();
        let report = RunReport {
            scenario,
            scenario_path: &path_text,
            seed,
            trace: &outcome.trace,
            violations: &outcome.violations,
            verdict: &outcome.verdict,
        };
        let text = report.render();
        print!("{text}");
        println!("  wall {:.2}s", outcome.wall.as_secs_f64());
        let mut ok = outcome.verdict.is_success();
        if check_determinism {
            let again = world::run(scenario, seed);
            match outcome.trace.first_divergence(&again.trace) {
                None => println!(
                    "  determinism: second run identical (hash {:#018x})",
                    again.trace.hash()
                ),
                Some(index) => {
                    ok = false;
                    println!("  determinism: FAILED, runs diverge at trace record #{index}");
                    let show = |trace: &windtunnel::trace::Trace| {
                        trace.records().get(index).map_or_else(
                            || "<end of trace>".to_owned(),
                            |r| serde_json::to_string(r).expect("records serialise"),
                        )
                    };
                    println!("    first run:  {}", show(&outcome.trace));
                    println!("    second run: {}", show(&again.trace));
                }
            }
        }
        if !ok {
            let dir = artifacts.join(format!("{}-seed{seed}", scenario.name));
            match write_artifacts(&dir, &outcome.trace.to_jsonl(), &text) {
                Ok(()) => println!("  artifacts: {}", dir.display()),
                Err(error) => eprintln!("  cannot write artifacts to {}: {error}", dir.display()),
            }
        }
        all_ok &= ok;
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn write_artifacts(dir: &Path, trace: &str, report: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("trace.jsonl"), trace)?;
    std::fs::write(dir.join("report.txt"), report)
}
