//! The harness: one seed of one scenario end to end, and replaying an artifact folder.
//!
//! Draw the seed's swarm options, run the seed on an [`Engine`], judge it, optionally run
//! it again to check determinism, render the report, and — for failing runs, or every run
//! with `artifacts_always` — write an artifact folder ([`crate::artifacts`]) with the
//! relay's logs. When logs were not captured up front (sweeps run fast without them), a
//! failing seed is run once more with capture on; determinism makes that the same run, and
//! the harness checks it (the two traces must be identical).
//!
//! Plain Rust over [`Engine`]: tested with a fake engine, no simulator needed. Key moments
//! are also emitted as `tracing` events (target `windtunnel`) for machines reading CI logs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::artifacts::{self, Artifact, ArtifactError, Meta};
use crate::logs::LogSettings;
use crate::report::{format_seed, parse_seed, RunReport};
use crate::scenario::{Scenario, ScenarioError};
use crate::swarm::{self, Draw, SwarmError};
use crate::timeline;
use crate::trace::{Record, Trace};
use crate::worlds::{Engine, SeedRun};

/// A scenario file as loaded: its text is kept for the artifact's copy.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The path as given (shown in replay commands).
    pub path: PathBuf,
    /// The file's text.
    pub source: String,
    /// The parsed, validated scenario (swarm ranges unresolved).
    pub scenario: Scenario,
}

impl Loaded {
    /// Read and validate a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let source = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_source(path, source)
    }

    /// Validate scenario text that claims to come from `path`.
    pub fn from_source(path: &Path, source: String) -> Result<Self, ScenarioError> {
        let scenario = Scenario::parse(path, &source)?;
        Ok(Self {
            path: path.to_owned(),
            source,
            scenario,
        })
    }

    /// The path as shown in commands.
    pub fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

/// How to run seeds.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where artifact folders go; `None` writes none (replay).
    pub artifacts_root: Option<PathBuf>,
    /// Write an artifact folder for passing runs too.
    pub artifacts_always: bool,
    /// What to capture into `logs.txt`.
    pub logs: LogSettings,
    /// Capture logs in the first run (single runs) instead of re-running failing seeds
    /// with capture on (sweeps, where most seeds pass and capture costs 10–20%).
    pub logs_up_front: bool,
    /// Run every seed twice and compare the traces record by record.
    pub check_determinism: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            artifacts_root: Some(PathBuf::from("artifacts")),
            artifacts_always: false,
            logs: LogSettings::default(),
            logs_up_front: true,
            check_determinism: false,
        }
    }
}

/// Where two traces of the same seed first differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the first differing record.
    pub index: usize,
    /// Records in the first (or recorded) trace.
    pub first_len: usize,
    /// Records in the second (or replayed) trace.
    pub second_len: usize,
    /// The last record both agree on, if any.
    pub last_common: Option<Record>,
    /// The first trace's record at `index` (`None`: it ended there).
    pub first: Option<Record>,
    /// The second trace's record at `index` (`None`: it ended there).
    pub second: Option<Record>,
}

impl Divergence {
    /// Compare two traces; `None` when identical.
    pub fn between(first: &Trace, second: &Trace) -> Option<Self> {
        let index = first.first_divergence(second)?;
        Some(Self {
            index,
            first_len: first.records().len(),
            second_len: second.records().len(),
            last_common: index
                .checked_sub(1)
                .and_then(|i| first.records().get(i).cloned()),
            first: first.records().get(index).cloned(),
            second: second.records().get(index).cloned(),
        })
    }

    /// Indented lines naming the record and both versions of it; `labels` name the runs.
    pub fn describe(&self, labels: (&str, &str)) -> String {
        let show = |record: &Option<Record>| {
            record.as_ref().map_or_else(
                || "<trace ended>".to_owned(),
                |r| serde_json::to_string(r).expect("records serialise"),
            )
        };
        let width = labels.0.len().max(labels.1.len()).max("last common".len()) + 1;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "    first divergent record: #{} ({} has {} records, {} has {})",
            self.index, labels.0, self.first_len, labels.1, self.second_len
        );
        if let Some(common) = &self.last_common {
            let _ = writeln!(
                text,
                "    {:<width$} #{}: {}",
                "last common:",
                self.index - 1,
                serde_json::to_string(common).expect("records serialise")
            );
        }
        let _ = writeln!(
            text,
            "    {:<width$} #{}: {}",
            format!("{}:", labels.0),
            self.index,
            show(&self.first)
        );
        let _ = writeln!(
            text,
            "    {:<width$} #{}: {}",
            format!("{}:", labels.1),
            self.index,
            show(&self.second)
        );
        text
    }
}

/// Why a second run of the same seed was made, and what it showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Determinism {
    /// `--check-determinism`, or a re-run to capture logs.
    pub reason: &'static str,
    /// Hash of the second run.
    pub second_hash: u64,
    /// Where the runs differ, if they do.
    pub divergence: Option<Divergence>,
}

/// One seed, judged and reported.
#[derive(Debug)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The scenario as run (swarm resolved).
    pub scenario: Scenario,
    /// Options the seed drew.
    pub draws: Vec<Draw>,
    /// What the engine produced.
    pub run: SeedRun,
    /// A second run of the same seed, if one was made.
    pub determinism: Option<Determinism>,
    /// The report (also `report.txt`).
    pub report: String,
    /// First line of the report.
    pub headline: String,
    /// The copy-paste command that reproduces the run.
    pub replay: String,
    /// The artifact folder written, if any.
    pub artifacts: Option<PathBuf>,
    /// Whether the engine replays this seed (false for real mode).
    pub replayable: bool,
}

impl SeedResult {
    /// Whether the run matched its expectation and every second run agreed with it.
    pub fn ok(&self) -> bool {
        self.run.verdict.is_success()
            && self
                .determinism
                .as_ref()
                .is_none_or(|d| d.divergence.is_none())
    }

    /// Everything to print: the report plus where the artifacts went.
    pub fn console_text(&self) -> String {
        let mut text = self.report.clone();
        if let Some(dir) = &self.artifacts {
            let contents = if self.replayable {
                format!(
                    "logs, timeline.svg; `{} replay {}` checks the hash",
                    self.scenario.engine.cargo_command(),
                    dir.display()
                )
            } else {
                "logs with the relay's output, timeline.svg".to_owned()
            };
            let _ = writeln!(
                text,
                "  artifacts: {} (trace, report, {contents})",
                dir.display()
            );
        }
        text
    }
}

/// The harness could not run or replay a seed (as opposed to a seed that failed).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The scenario did not load.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The seed's swarm draw is not a valid scenario.
    #[error("{path}: seed {seed}: {error}")]
    Swarm {
        /// The scenario file.
        path: PathBuf,
        /// The seed (`0x…`).
        seed: String,
        /// What was drawn and why it is invalid.
        error: SwarmError,
    },
    /// An artifact folder could not be read or written.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The folder holds a real run: real time and the machine's scheduler decided it.
    #[error(
        "{}: a real run cannot be replayed (real time and the machine's scheduler decide it); \
         run it again with: {rerun}",
        dir.display()
    )]
    RealRun {
        /// The artifact folder.
        dir: PathBuf,
        /// The command that runs it again.
        rerun: String,
    },
}

/// Run one seed of `loaded` and report it.
pub fn run_seed(
    engine: &dyn Engine,
    loaded: &Loaded,
    seed: u64,
    options: &Options,
) -> Result<SeedResult, HarnessError> {
    let (scenario, draws) =
        swarm::resolve(&loaded.scenario, seed).map_err(|error| HarnessError::Swarm {
            path: loaded.path.clone(),
            seed: format_seed(seed),
            error,
        })?;
    let mut run = engine.run(
        &scenario,
        seed,
        options.logs_up_front.then_some(&options.logs),
    );
    let mut determinism = None;
    if options.check_determinism && engine.deterministic() {
        let again = engine.run(&scenario, seed, None);
        determinism = Some(Determinism {
            reason: "--check-determinism",
            second_hash: again.trace.hash(),
            divergence: Divergence::between(&run.trace, &again.trace),
        });
    }
    let passed = run.verdict.is_success()
        && determinism
            .as_ref()
            .is_none_or(|d: &Determinism| d.divergence.is_none());
    let write_artifacts = options.artifacts_root.is_some() && (!passed || options.artifacts_always);
    if write_artifacts && run.logs.is_none() && engine.deterministic() {
        let again = engine.run(&scenario, seed, Some(&options.logs));
        if determinism.is_none() {
            determinism = Some(Determinism {
                reason: "re-run to capture logs",
                second_hash: again.trace.hash(),
                divergence: Divergence::between(&run.trace, &again.trace),
            });
        }
        run.logs = again.logs;
    }

    let path_text = loaded.display_path();
    let report = RunReport {
        scenario: &scenario,
        scenario_path: &path_text,
        seed,
        swarm: &draws,
        trace: &run.trace,
        violations: &run.violations,
        verdict: &run.verdict,
        deterministic: engine.deterministic(),
    };
    let headline = report.headline();
    let replay = report.replay_command();
    let mut text = report.render();
    let _ = writeln!(text, "  wall {:.2}s", run.wall.as_secs_f64());
    if let Some(check) = &determinism {
        match &check.divergence {
            None => {
                let _ = writeln!(
                    text,
                    "  determinism: second run ({}) identical, hash {}",
                    check.reason,
                    artifacts::format_hash(check.second_hash)
                );
            }
            Some(divergence) => {
                let _ = writeln!(
                    text,
                    "  determinism: FAILED, second run ({}) diverges: hash {} vs {}",
                    check.reason,
                    artifacts::format_hash(run.trace.hash()),
                    artifacts::format_hash(check.second_hash)
                );
                text.push_str(&divergence.describe(("first run", "second run")));
                if run.verdict.is_success() {
                    let _ = writeln!(text, "  replay: {replay} --check-determinism");
                }
            }
        }
    }

    let mut result = SeedResult {
        seed,
        scenario,
        draws,
        run,
        determinism,
        report: text,
        headline,
        replay,
        artifacts: None,
        replayable: engine.deterministic(),
    };
    log_outcome(&result);
    if let (true, Some(root)) = (write_artifacts, &options.artifacts_root) {
        let dir = root.join(artifacts::dir_name(&result.scenario.name, seed));
        write_artifact(&result, loaded, engine.name(), &dir)?;
        tracing::info!(target: "windtunnel", dir = %dir.display(), "artifacts written");
        result.artifacts = Some(dir);
    }
    Ok(result)
}

/// Emit the run's outcome as one `tracing` event: info when it matched its expectation,
/// error (with the replay command as a field) when it did not.
pub fn log_outcome(result: &SeedResult) {
    let (verdict, oracle, _) = artifacts::verdict_fields(&result.run.verdict);
    let hash = artifacts::format_hash(result.run.trace.hash());
    if result.ok() {
        tracing::info!(
            target: "windtunnel",
            scenario = %result.scenario.name,
            seed = %format_seed(result.seed),
            %verdict,
            %hash,
            "{}", result.headline
        );
    } else {
        tracing::error!(
            target: "windtunnel",
            scenario = %result.scenario.name,
            seed = %format_seed(result.seed),
            %verdict,
            oracle = oracle.as_deref().unwrap_or("-"),
            %hash,
            replay = %result.replay,
            "{}", result.headline
        );
    }
}

fn write_artifact(
    result: &SeedResult,
    loaded: &Loaded,
    engine: &str,
    dir: &Path,
) -> Result<(), ArtifactError> {
    let (verdict, oracle, violation_t_us) = artifacts::verdict_fields(&result.run.verdict);
    let meta = Meta {
        windtunnel_version: artifacts::VERSION.to_owned(),
        engine: engine.to_owned(),
        scenario: result.scenario.name.clone(),
        scenario_path: loaded.display_path(),
        seed: format_seed(result.seed),
        trace_hash: artifacts::format_hash(result.run.trace.hash()),
        trace_records: result.run.trace.records().len(),
        verdict: verdict.to_owned(),
        oracle,
        violation_t_us,
        swarm: result
            .draws
            .iter()
            .map(|draw| (draw.key.clone(), draw.value.to_string()))
            .collect(),
        replay: result.replay.clone(),
    };
    let svg = timeline::render(&result.scenario, &result.run.trace, &result.run.violations);
    let logs = result.run.logs.as_deref().map(|logs| {
        let mut header = format!(
            "# windtunnel {} ({engine}) {} seed={}",
            artifacts::VERSION,
            loaded.display_path(),
            format_seed(result.seed)
        );
        for draw in &result.draws {
            let _ = write!(header, " {draw}");
        }
        header.push_str(
            "\n# simulated seconds since the run started, node, task, level, target, message\n",
        );
        header + logs
    });
    Artifact {
        meta: &meta,
        scenario_source: &loaded.source,
        trace: &result.run.trace,
        report: &result.report,
        logs: logs.as_deref(),
        timeline_svg: &svg,
        host_table: host_table_copy(loaded),
    }
    .write(dir)
}

/// The scenario's host table and its path relative to the scenario file's directory, when
/// it lies below that directory (a table elsewhere is named by a path the copy of the
/// scenario cannot follow, and is not copied).
fn host_table_copy(loaded: &Loaded) -> Option<(&Path, PathBuf)> {
    let table = loaded.scenario.upstreams.as_ref()?.table.as_ref()?;
    let directory = loaded
        .path
        .parent()
        .filter(|directory| !directory.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let directory = std::path::absolute(directory).ok()?;
    let relative = table.path.strip_prefix(&directory).ok()?;
    Some((table.path.as_path(), relative.to_owned()))
}

/// What replaying an artifact folder showed.
#[derive(Debug)]
pub struct Replay {
    /// The recorded `meta.json`.
    pub recorded: Meta,
    /// The new run.
    pub result: SeedResult,
    /// Where the new trace first differs from the recorded `trace.jsonl`, if it does.
    pub divergence: Option<Divergence>,
    /// Swarm options that were drawn differently this time: (key, recorded, now).
    pub swarm_changes: Vec<(String, Option<String>, Option<String>)>,
}

impl Replay {
    /// Whether the replay reproduced the recorded trace exactly.
    pub fn identical(&self) -> bool {
        artifacts::format_hash(self.result.run.trace.hash()) == self.recorded.trace_hash
            && self.divergence.is_none()
    }

    /// The replay's verdict line and, on a mismatch, what differs.
    pub fn summary(&self, dir: &Path) -> String {
        let now = artifacts::format_hash(self.result.run.trace.hash());
        let mut text = String::new();
        if self.identical() {
            let _ = writeln!(
                text,
                "REPLAYED {} seed={}: trace identical to {} (hash {now}, {} records)",
                self.recorded.scenario,
                self.recorded.seed,
                dir.display(),
                self.recorded.trace_records
            );
            return text;
        }
        let _ = writeln!(
            text,
            "REPLAY DIVERGED {} seed={}: hash {now}, recorded {} (windtunnel {} then, {} now)",
            self.recorded.scenario,
            self.recorded.seed,
            self.recorded.trace_hash,
            self.recorded.windtunnel_version,
            artifacts::VERSION
        );
        for (key, then, now) in &self.swarm_changes {
            let _ = writeln!(
                text,
                "    swarm option {key}: recorded {}, drawn now {}",
                then.as_deref().unwrap_or("<none>"),
                now.as_deref().unwrap_or("<none>")
            );
        }
        match &self.divergence {
            Some(divergence) => text.push_str(&divergence.describe(("recorded", "replayed"))),
            None => {
                let _ = writeln!(
                    text,
                    "    trace.jsonl matches the new run record for record: the recorded hash in meta.json was edited or the file was truncated"
                );
            }
        }
        text
    }
}

/// Re-run the scenario copy and seed recorded in `dir` and compare with its trace.
pub fn replay(engine: &dyn Engine, dir: &Path, options: &Options) -> Result<Replay, HarnessError> {
    let recorded = artifacts::read_meta(dir)?;
    if recorded.engine == "real" {
        return Err(HarnessError::RealRun {
            dir: dir.to_owned(),
            rerun: recorded.replay,
        });
    }
    let seed = parse_seed(&recorded.seed).map_err(|message| ArtifactError::Format {
        path: dir.join("meta.json"),
        message: format!("seed: {message}"),
    })?;
    let loaded = Loaded::load(&dir.join("scenario.toml"))?;
    let options = Options {
        artifacts_root: None,
        artifacts_always: false,
        ..options.clone()
    };
    let result = run_seed(engine, &loaded, seed, &options)?;
    let recorded_trace = artifacts::read_trace(dir)?;
    let divergence = Divergence::between(&recorded_trace, &result.run.trace);
    let now: std::collections::BTreeMap<String, String> = result
        .draws
        .iter()
        .map(|d| (d.key.clone(), d.value.to_string()))
        .collect();
    let keys: std::collections::BTreeSet<&String> =
        recorded.swarm.keys().chain(now.keys()).collect();
    let swarm_changes = keys
        .into_iter()
        .filter(|key| recorded.swarm.get(*key) != now.get(*key))
        .map(|key| {
            (
                key.clone(),
                recorded.swarm.get(key).cloned(),
                now.get(key).cloned(),
            )
        })
        .collect();
    let replay = Replay {
        recorded,
        result,
        divergence,
        swarm_changes,
    };
    if replay.identical() {
        tracing::info!(target: "windtunnel", dir = %dir.display(), "replay identical");
    } else {
        tracing::error!(
            target: "windtunnel",
            dir = %dir.display(),
            first_divergent_record = replay.divergence.as_ref().map(|d| d.index),
            "replay diverged"
        );
    }
    Ok(replay)
}
