//! Artifact folders: everything needed to understand and reproduce one run, in one folder
//! `<root>/<scenario>-seed0x…/`:
//!
//! | file | what |
//! |---|---|
//! | `meta.json` | scenario name and path, seed, trace hash, verdict, swarm draws, windtunnel version, engine |
//! | `scenario.toml` | the scenario file exactly as it was run (replay reads this copy, not the original) |
//! | `trace.jsonl` | the trace; its FNV-1a hash is `meta.json`'s `trace_hash` |
//! | `report.txt` | what the run printed |
//! | `logs.txt` | the relay's `tracing` output at debug, stamped with simulated time |
//! | `timeline.svg` | connections, hosts, probe latency and queues over simulated time |
//! | the host table, e.g. `hosts/atproto-hosts-2026-05.jsonl` | a copy of `upstreams.table`'s file at its path relative to the scenario (when the file lies below the scenario's directory), so replay reads the copy |
//!
//! Written for every failing run, and for every run with `--artifacts-always`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oracle::Verdict;
use crate::report::format_seed;
use crate::trace::Trace;

/// Version of the tunnel that wrote an artifact.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// `windtunnel` crate version.
    pub windtunnel_version: String,
    /// Engine that ran the seed (`madsim`).
    pub engine: String,
    /// Scenario name.
    pub scenario: String,
    /// Path the scenario was loaded from, as given on the command line.
    pub scenario_path: String,
    /// The seed, `0x…`.
    pub seed: String,
    /// FNV-1a of `trace.jsonl`, `0x` + 16 hex digits.
    pub trace_hash: String,
    /// Records in `trace.jsonl`.
    pub trace_records: usize,
    /// `passed`, `failed_as_expected`, `failed` or `unexpected_pass`.
    pub verdict: String,
    /// The oracle the verdict is about, if any.
    pub oracle: Option<String>,
    /// Simulated time of the deciding violation, microseconds.
    pub violation_t_us: Option<u64>,
    /// Options the seed drew from `[swarm]` (key → TOML value).
    pub swarm: BTreeMap<String, String>,
    /// The command that reproduces the run.
    pub replay: String,
}

/// A trace hash as written in reports and `meta.json`.
pub fn format_hash(hash: u64) -> String {
    format!("{hash:#018x}")
}

/// `passed`, `failed_as_expected`, `failed`, `unexpected_pass`; and the oracle and time.
pub fn verdict_fields(verdict: &Verdict) -> (&'static str, Option<String>, Option<u64>) {
    match verdict {
        Verdict::Passed => ("passed", None, None),
        Verdict::FailedAsExpected(v) => (
            "failed_as_expected",
            Some(v.oracle.to_string()),
            Some(v.t_us),
        ),
        Verdict::Failed(v) => ("failed", Some(v.oracle.to_string()), Some(v.t_us)),
        Verdict::UnexpectedPass(oracle) => ("unexpected_pass", Some(oracle.to_string()), None),
    }
}

/// Folder name of one run: `<scenario>-seed0x…`.
pub fn dir_name(scenario: &str, seed: u64) -> String {
    format!("{scenario}-seed{}", format_seed(seed))
}

/// Everything written for one run.
#[derive(Debug)]
pub struct Artifact<'a> {
    /// `meta.json`.
    pub meta: &'a Meta,
    /// The scenario file's text.
    pub scenario_source: &'a str,
    /// The trace.
    pub trace: &'a Trace,
    /// The report text.
    pub report: &'a str,
    /// Captured logs, if any.
    pub logs: Option<&'a str>,
    /// The timeline.
    pub timeline_svg: &'a str,
    /// The scenario's host table file (`upstreams.table`) and where its copy goes in the
    /// folder: the same path relative to `scenario.toml` as the original's to the scenario,
    /// so that replaying the copy reads the copied table.
    pub host_table: Option<(&'a Path, PathBuf)>,
}

/// Reading or writing an artifact folder failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// `meta.json` or `trace.jsonl` is not what this version writes.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |error| ArtifactError::Io {
        path: path.to_owned(),
        error,
    }
}

impl Artifact<'_> {
    /// Write every file into `dir` (created if missing; files of an earlier run replaced).
    pub fn write(&self, dir: &Path) -> Result<(), ArtifactError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let meta = serde_json::to_string_pretty(self.meta).expect("meta always serialises") + "\n";
        let mut files = vec![
            ("meta.json", meta),
            ("scenario.toml", self.scenario_source.to_owned()),
            ("trace.jsonl", self.trace.to_jsonl()),
            ("report.txt", self.report.to_owned()),
            ("timeline.svg", self.timeline_svg.to_owned()),
        ];
        match self.logs {
            Some(logs) => files.push(("logs.txt", logs.to_owned())),
            None => {
                let stale = dir.join("logs.txt");
                if stale.exists() {
                    std::fs::remove_file(&stale).map_err(io(&stale))?;
                }
            }
        }
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        if let Some((table, relative)) = &self.host_table {
            let copy = dir.join(relative);
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(table, &copy).map_err(io(&copy))?;
        }
        Ok(())
    }
}

/// Read `meta.json` from an artifact folder.
pub fn read_meta(dir: &Path) -> Result<Meta, ArtifactError> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|error| ArtifactError::Format {
        path,
        message: error.to_string(),
    })
}

/// Read `trace.jsonl` from an artifact folder.
pub fn read_trace(dir: &Path) -> Result<Trace, ArtifactError> {
    let path = dir.join("trace.jsonl");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Trace::from_jsonl(&text).map_err(|error| ArtifactError::Format {
        path,
        message: error.to_string(),
    })
}
