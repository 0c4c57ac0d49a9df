//! The README is tested: its quoted run output (the first command's report) and its new-user
//! walkthrough are run with this build's `windtunnel` (the simulation build: `cargo sim …`
//! is that binary), and every hash, count and figure the README quotes must be what the
//! commands print now. A README that goes stale fails here.
//!
//! The walkthrough's ```sh blocks run in order, in one scratch directory, with `cargo sim`
//! meaning this binary; each ```text block after a ```sh block is that block's expected
//! output: every quoted line must appear in it, in order, except that `…` stands for
//! anything (a line that is only `…` skips lines; a `…` inside a line matches any text)
//! and `wall` times are not compared.

use std::path::Path;
use std::process::Command;

use crate::support::{repository, scratch_dir};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The fenced blocks of `text` in order: (language, body).
fn blocks(text: &str) -> Vec<(&str, String)> {
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(language) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        found.push((language, body));
    }
    found
}

/// Whether `actual` matches the quoted `expected` line (`…` matches any text).
fn line_matches(expected: &str, actual: &str) -> bool {
    let mut parts = expected.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (index, part) in parts.iter().enumerate() {
        let last = index + 1 == parts.len();
        if last {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Every quoted line of `expected` appears in `actual`, in order (see the module docs).
fn check_quoted(expected: &str, actual: &str, context: &str) {
    let mut actual_lines = actual.lines();
    for quoted in expected.lines() {
        let quoted = quoted.trim_end();
        if quoted.trim() == "…" || quoted.trim_start().starts_with("wall ") {
            continue;
        }
        let found = actual_lines.any(|line| line_matches(quoted, line.trim_end()));
        assert!(
            found,
            "README ({context}) quotes a line the command no longer prints (or not in this order):\n  \
             {quoted}\nthe commands printed:\n{actual}"
        );
    }
}

/// Run a ```sh block in `dir` with `cargo sim` meaning this build's windtunnel binary;
/// stdout and stderr together.
fn run_shell(block: &str, dir: &Path) -> String {
    let script = format!(
        "cargo() {{ if [ \"$1\" = sim ]; then shift; \"$WINDTUNNEL\" \"$@\"; else command cargo \"$@\"; fi; }}\n{block}"
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("WINDTUNNEL", env!("CARGO_BIN_EXE_windtunnel"))
        .env("NO_COLOR", "1")
        .output()
        .expect("bash runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_first_commands_quoted_report_is_what_it_prints() {
    let repository = repository();
    let start = README
        .find("A run prints one verdict line")
        .expect("the README quotes a run");
    let (_, quoted) = blocks(&README[start..])
        .into_iter()
        .find(|(language, _)| *language == "text")
        .expect("a text block follows");
    let artifacts = scratch_dir("readme-first-command");
    let printed = run_shell(
        &format!(
            "cargo sim run scenarios/churn_max_connections.toml --seed 1 --artifacts {}",
            artifacts.display()
        ),
        &repository,
    );
    check_quoted(&quoted, &printed, "the first command's report");
}

#[test]
fn the_walkthrough_prints_what_the_readme_quotes() {
    let start = README
        .find("## New-user walkthrough")
        .expect("the walkthrough");
    let end = start
        + README[start..]
            .find("\n## ")
            .expect("a section follows the walkthrough");
    let scratch = scratch_dir("readme-walkthrough");
    let mut last_output = String::new();
    let mut step = 0;
    for (language, body) in blocks(&README[start..end]) {
        match language {
            "sh" => {
                step += 1;
                last_output = run_shell(&body, &scratch);
            }
            "text" => check_quoted(&body, &last_output, &format!("walkthrough block {step}")),
            _ => {}
        }
    }
    assert!(
        step >= 6,
        "the walkthrough has its steps ({step} shell blocks)"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn quoted_lines_match_with_ellipses() {
    assert!(line_matches("a … c", "a b b c"));
    assert!(line_matches(
        "#5782: {\"t\":1,…}",
        "#5782: {\"t\":1,\"x\":2}"
    ));
    assert!(!line_matches("a … c", "a b d"));
    assert!(line_matches("exact", "exact"));
    assert!(!line_matches("exact", "exactly"));
}
