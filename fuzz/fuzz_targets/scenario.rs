//! Fuzz target: scenario files through `windtunnel::scenario::Scenario::parse`, the loader
//! behind `cargo sim run|check|sweep`, built without `--cfg madsim` (parsing needs no
//! simulator, as in the plain `cargo test`).
//!
//! Invariants:
//! - parsing never panics, and parsing the same text twice agrees (a host table the text
//!   names, `upstreams.table`, is read as a file like any other; a file that is missing or
//!   not a table is one more problem in the text);
//! - an error holds at least one problem, in file order, each pointing inside the input
//!   (a 1-based line that exists and a 1-based column at most one past that line's last
//!   character) with a message;
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
    let ScenarioError::Invalid { problems, .. } = error else {
        panic!("parse never reads a file: {error}");
    };
    assert!(!problems.is_empty(), "an error with no problem in it: {error}");
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in problems {
        let line = problem.line;
        assert!(
            (1..=lines.len()).contains(&line),
            "line {line} of {}: {error}",
            lines.len()
        );
        let width = lines[line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&problem.column),
            "column {} on a line of {width} characters: {error}",
            problem.column
        );
        assert!(!problem.message.is_empty(), "empty message: {error}");
    }
    assert!(
        problems
            .windows(2)
            .all(|pair| (pair[0].line, pair[0].column) <= (pair[1].line, pair[1].column)),
        "problems out of file order: {error}"
    );
}
