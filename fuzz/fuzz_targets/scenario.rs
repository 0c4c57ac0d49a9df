//! Fuzz target: scenario files through `windtunnel::scenario::Scenario::parse`, the loader
//! behind `cargo sim run|check|sweep`, built without `--cfg madsim` (parsing needs no
//! simulator, as in the plain `cargo test`).
//!
//! Invariants:
//! - parsing never panics, and parsing the same text twice agrees;
//! - a syntax error points inside the input: a 1-based line that exists and a 1-based
//!   column at most one past that line's last character; its message is not empty;
//! - a semantic error names a key;
//! - a scenario that parses is re-checked consistently: written out as a scenario file the
//!   way `cargo sim shrink` writes `shrunk.toml` (`shrink::to_toml`), it parses again to
//!   the same scenario; and resolving its swarm ranges for a seed never panics.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use windtunnel::scenario::{Scenario, ScenarioError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let parsed = Scenario::parse(path, text);
    let again = Scenario::parse(path, text);
    let scenario = match (parsed, again) {
        (Ok(scenario), Ok(again)) => {
            assert_eq!(scenario, again, "parsing is not deterministic");
            scenario
        }
        (Err(error), Err(again)) => {
            assert_eq!(error.to_string(), again.to_string());
            check_error(text, &error);
            return;
        }
        (first, again) => panic!("parsing is not deterministic: {first:?} then {again:?}"),
    };

    let written = windtunnel::shrink::to_toml(&scenario, "written back by the fuzzer");
    match Scenario::parse(path, &written) {
        Ok(reread) => assert_eq!(
            reread, scenario,
            "a written scenario reads back differently:\n{written}"
        ),
        Err(error) => panic!("a written scenario does not parse: {error}\n{written}"),
    }

    let seed = data
        .iter()
        .fold(0u64, |hash, byte| hash.rotate_left(5) ^ u64::from(*byte));
    let _ = windtunnel::swarm::resolve(&scenario, seed);
});

fn check_error(text: &str, error: &ScenarioError) {
    match error {
        ScenarioError::Syntax {
            line,
            column,
            message,
            ..
        } => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(line),
                "line {line} of {}: {error}",
                lines.len()
            );
            let width = lines[line - 1].chars().count();
            assert!(
                (1..=width + 1).contains(column),
                "column {column} on a line of {width} characters: {error}"
            );
            assert!(!message.is_empty(), "empty message: {error}");
        }
        ScenarioError::Invalid { key, message, .. } => {
            assert!(!key.is_empty(), "an invalid scenario names no key: {error}");
            assert!(!message.is_empty(), "empty message: {error}");
        }
        ScenarioError::Read { .. } => panic!("parse never reads a file: {error}"),
    }
}
