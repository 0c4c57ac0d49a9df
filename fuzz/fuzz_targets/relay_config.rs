//! Fuzz target: relay configuration files through `relay::config::ConfigBuilder`, as the
//! binary loads `--config relay.toml` (schema with unknown keys rejected, then the
//! cross-field checks).
//!
//! Invariants:
//! - nothing panics, and loading the same text twice agrees;
//! - an error located in the file names a line that exists and a column at most one past
//!   that line's last character;
//! - an accepted configuration passes `Config::check` again, and its `to_toml` (what the
//!   relay prints with every default spelled out) loads back to the same configuration.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::config::{Config, ConfigBuilder, ConfigError};

fn load(text: &str) -> Result<Config, ConfigError> {
    ConfigBuilder::new().with_toml("fuzz.toml", text)?.build()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match (load(text), load(text)) {
        (Ok(config), Ok(again)) => {
            assert_eq!(config, again, "loading is not deterministic");
            config
        }
        (Err(error), Err(again)) => {
            assert_eq!(error.to_string(), again.to_string());
            check_error(text, &error);
            return;
        }
        (first, again) => panic!("loading is not deterministic: {first:?} then {again:?}"),
    };
    config
        .check()
        .unwrap_or_else(|error| panic!("an accepted configuration fails its check: {error}"));
    let printed = config.to_toml();
    match load(&printed) {
        Ok(reloaded) => assert_eq!(
            reloaded, config,
            "the printed configuration loads back differently:\n{printed}"
        ),
        Err(error) => panic!("the printed configuration does not load: {error}\n{printed}"),
    }
});

fn check_error(text: &str, error: &ConfigError) {
    let ConfigError::Invalid { location, .. } = error else {
        return;
    };
    if location.is_empty() {
        return;
    }
    let (line, column) = location
        .strip_prefix(':')
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(line, column)| {
            Some((line.parse::<usize>().ok()?, column.parse::<usize>().ok()?))
        })
        .unwrap_or_else(|| panic!("location {location:?} is not :line:col"));
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "line {line} of {}: {error}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "column {column} on a line of {width} characters: {error}"
    );
}
