//! Failure shrinking: from a failing (scenario, seed), repeatedly try a smaller scenario —
//! a fault, a churner group, the prober, the upstreams or an oracle dropped; a count,
//! fraction or window halved — and keep it when the same seed still fails the same
//! oracle. Greedy, first improvement wins, bounded by a run budget. The result is printed as
//! TOML (relay keys only where they differ from the relay's defaults) and loads as a
//! scenario.
//!
//! A smaller world draws randomness differently, so "the same seed" is a different run; the
//! shrinker only keeps what still fails, so the minimal scenario always reproduces with the
//! printed seed. [`shrink`] is plain Rust over a `still_fails` closure, tested without a
//! simulator; [`shrink_failure`] is the workflow around it for a failing run: run the
//! candidates on an engine, name the minimal scenario, check that it loads back and write
//! it as `shrunk.toml` in the run's artifact folder.

use std::path::{Path, PathBuf};

use crate::artifacts;
use crate::harness::{Loaded, SeedResult};
use crate::oracle::{OracleName, Verdict};
use crate::report::format_seed;
use crate::scenario::Scenario;
use crate::worlds::Engine;

/// A smaller scenario and what was removed to get it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// What changed, e.g. `drop churners[1]` or `upstreams.hosts 2800 → 1400`.
    pub change: String,
    /// The smaller scenario (valid).
    pub scenario: Scenario,
}

fn halve<T: Copy + Into<u64> + TryFrom<u64>>(value: T) -> Option<T> {
    let value: u64 = value.into();
    (value > 1).then(|| T::try_from(value / 2).ok()).flatten()
}

/// Every one-step reduction of `scenario` that is still valid and still checks `target`,
/// most drastic first.
pub fn candidates(scenario: &Scenario, target: OracleName) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |change: String, edit: &dyn Fn(&mut Scenario)| {
        let mut smaller = scenario.clone();
        edit(&mut smaller);
        if smaller != *scenario && smaller.checks(target) && smaller.problems().is_empty() {
            out.push(Candidate {
                change,
                scenario: smaller,
            });
        }
    };
    for (index, fault) in scenario.faults.iter().enumerate() {
        let kind = fault.kind.name();
        push(format!("drop faults[{index}] ({kind})"), &|s| {
            s.faults.remove(index);
        });
    }
    for index in 0..scenario.churners.len() {
        push(format!("drop churners[{index}]"), &|s| {
            s.churners.remove(index);
        });
    }
    for (index, group) in scenario.callers.iter().enumerate() {
        push(format!("drop callers[{index}]"), &|s| {
            s.callers.remove(index);
        });
        if let Some(nodes) = halve(group.nodes) {
            push(
                format!("callers[{index}].nodes {} → {nodes}", group.nodes),
                &|s| s.callers[index].nodes = nodes,
            );
        }
    }
    for (index, group) in scenario.abusers.iter().enumerate() {
        push(format!("drop abusers[{index}]"), &|s| {
            s.abusers.remove(index);
        });
        if let Some(nodes) = halve(group.nodes) {
            push(
                format!("abusers[{index}].nodes {} → {nodes}", group.nodes),
                &|s| s.abusers[index].nodes = nodes,
            );
        }
    }
    for (index, group) in scenario.consumers.iter().enumerate() {
        push(format!("drop consumers[{index}] ({})", group.name), &|s| {
            s.consumers.remove(index);
        });
        if let Some(count) = halve(group.count) {
            push(
                format!("consumers[{index}].count {} → {count}", group.count),
                &|s| s.consumers[index].count = count,
            );
        }
    }
    push("drop [prober] and the probe oracles".to_owned(), &|s| {
        s.prober = None;
        s.oracles.probe_liveness = None;
        s.oracles.probe_latency_max = None;
    });
    push(
        "drop [upstreams] and the upstream oracles".to_owned(),
        &|s| {
            s.upstreams = None;
            s.oracles.hosts_connected_min = None;
            s.oracles.handshakes_bounded = None;
            s.oracles.workers_bounded = None;
            s.oracles.no_host_forgotten = None;
            s.oracles.bad_hosts_isolated = None;
            s.oracles.fair_share = None;
        },
    );
    for oracle in OracleName::ALL {
        if oracle != target {
            push(format!("drop oracles.{oracle}"), &|s| {
                s.oracles.drop(oracle)
            });
        }
    }
    for (index, churner) in scenario.churners.iter().enumerate() {
        if let Some(nodes) = halve(churner.nodes) {
            push(
                format!("churners[{index}].nodes {} → {nodes}", churner.nodes),
                &|s| s.churners[index].nodes = nodes,
            );
        }
        if let Some(loops) = halve(churner.loops_per_node) {
            push(
                format!(
                    "churners[{index}].loops_per_node {} → {loops}",
                    churner.loops_per_node
                ),
                &|s| s.churners[index].loops_per_node = loops,
            );
        }
        let mix = &churner.mix;
        for (action, weight) in [
            ("abrupt_close", mix.abrupt_close),
            ("mid_request_close", mix.mid_request_close),
            ("keepalive", mix.keepalive),
            ("idle_hold", mix.idle_hold),
            ("half_close", mix.half_close),
        ] {
            if weight > 0 {
                push(
                    format!("churners[{index}].mix.{action} {weight} → 0"),
                    &|s| {
                        let mix = &mut s.churners[index].mix;
                        match action {
                            "abrupt_close" => mix.abrupt_close = 0,
                            "mid_request_close" => mix.mid_request_close = 0,
                            "keepalive" => mix.keepalive = 0,
                            "idle_hold" => mix.idle_hold = 0,
                            _ => mix.half_close = 0,
                        }
                    },
                );
            }
        }
        let window = churner.stop_s - churner.start_s;
        if window > 1 {
            let stop = churner.start_s + window / 2;
            push(
                format!("churners[{index}].stop_s {} → {stop}", churner.stop_s),
                &|s| s.churners[index].stop_s = stop,
            );
        }
    }
    if let Some(upstreams) = &scenario.upstreams {
        if let Some((before, hosts)) = upstreams
            .hosts
            .and_then(|before| Some((before, halve(before)?)))
        {
            push(format!("upstreams.hosts {before} → {hosts}"), &|s| {
                if let Some(u) = &mut s.upstreams {
                    u.hosts = Some(hosts);
                }
            });
        }
        if let Some(hostile) = &upstreams.hostile {
            push(
                "drop [upstreams.hostile] and its oracles".to_owned(),
                &|s| {
                    if let Some(u) = &mut s.upstreams {
                        u.hostile = None;
                    }
                    s.oracles.bad_hosts_isolated = None;
                    s.oracles.fair_share = None;
                },
            );
            if let Some(hosts) = halve(hostile.hosts) {
                push(
                    format!("upstreams.hostile.hosts {} → {hosts}", hostile.hosts),
                    &|s| {
                        if let Some(h) = s.upstreams.as_mut().and_then(|u| u.hostile.as_mut()) {
                            h.hosts = hosts;
                        }
                    },
                );
            }
        }
        if upstreams.flaky_fraction > 0.0 {
            push("upstreams.flaky_fraction → 0".to_owned(), &|s| {
                if let Some(u) = &mut s.upstreams {
                    u.flaky_fraction = 0.0;
                }
            });
        }
        if upstreams.dead_fraction > 0.0 {
            push("upstreams.dead_fraction → 0".to_owned(), &|s| {
                if let Some(u) = &mut s.upstreams {
                    u.dead_fraction = 0.0;
                }
            });
        }
    }
    for (index, fault) in scenario.faults.iter().enumerate() {
        let (field, length) = (fault.kind.length_key(), fault.duration_s);
        if let Some(half) = halve(length) {
            push(
                format!("faults[{index}].{field} {length} → {half}"),
                &|s| s.faults[index].duration_s = half,
            );
        }
    }
    if let Some(half) = halve(scenario.duration_s) {
        push(
            format!("duration_s {} → {half}", scenario.duration_s),
            &|s| s.duration_s = half,
        );
    }
    out
}

/// The end of a shrink.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The smallest scenario found that still fails.
    pub scenario: Scenario,
    /// Accepted changes, in order.
    pub steps: Vec<String>,
    /// Runs made (not counting the first, failing one).
    pub runs: usize,
    /// Whether the budget ran out before no candidate was left.
    pub budget_exhausted: bool,
}

/// A failing run shrunk to a minimal scenario.
#[derive(Debug)]
pub struct ShrunkFailure {
    /// The oracle the minimal scenario still fails.
    pub target: OracleName,
    /// The shrink itself.
    pub shrunk: Shrunk,
    /// The minimal scenario as TOML, with a header saying how it was made.
    pub text: String,
    /// Where it was written (`<artifacts>/<scenario>-seed0x…/shrunk.toml`).
    pub path: PathBuf,
    /// Whether writing it succeeded.
    pub written: std::io::Result<()>,
}

/// Why a failing run could not be shrunk.
#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    /// The run violated no oracle.
    #[error("nothing to shrink: {scenario} seed={seed} violates no oracle")]
    NothingToShrink {
        /// The scenario's name.
        scenario: String,
        /// The seed, formatted.
        seed: String,
    },
    /// The minimal scenario does not parse as a scenario (a shrinker bug).
    #[error("the shrunk scenario does not load back (a shrinker bug): {error}\n{text}")]
    DoesNotLoadBack {
        /// The parse error.
        error: String,
        /// The TOML that failed.
        text: String,
    },
}

/// The oracle a failing run violated, which shrinking keeps failing.
pub fn target(failing: &SeedResult) -> Result<OracleName, ShrinkError> {
    match &failing.run.verdict {
        Verdict::Failed(violation) | Verdict::FailedAsExpected(violation) => Ok(violation.oracle),
        Verdict::Passed | Verdict::UnexpectedPass(_) => Err(ShrinkError::NothingToShrink {
            scenario: failing.scenario.name.clone(),
            seed: format_seed(failing.seed),
        }),
    }
}

/// Shrink the scenario of `failing` (loaded from `loaded`) on `engine` with the same seed
/// while it still fails `target`, making at most `max_runs` runs (`on_try(change, kept)`
/// hears of each), and write the minimal scenario under `artifacts_root`.
pub fn shrink_failure(
    engine: &dyn Engine,
    loaded: &Loaded,
    failing: &SeedResult,
    target: OracleName,
    max_runs: usize,
    artifacts_root: &Path,
    on_try: &mut dyn FnMut(&str, bool),
) -> Result<ShrunkFailure, ShrinkError> {
    let seed = failing.seed;
    let mut still_fails = |candidate: &Scenario| {
        engine
            .run(candidate, seed, None)
            .violations
            .iter()
            .any(|v| v.oracle == target)
    };
    let shrunk = shrink(
        &failing.scenario,
        target,
        max_runs,
        &mut still_fails,
        on_try,
    );
    let mut minimal = shrunk.scenario.clone();
    minimal.name = format!("{}_shrunk", failing.scenario.name);
    minimal.description = format!(
        "{} (shrunk from {} seed {})",
        failing.scenario.description,
        loaded.display_path(),
        format_seed(seed)
    );
    let header = format!(
        "Shrunk by `cargo sim shrink {} --seed {}`: still fails {target} with seed {}.\n\
         {} runs; changes: {}",
        loaded.display_path(),
        format_seed(seed),
        format_seed(seed),
        shrunk.runs,
        if shrunk.steps.is_empty() {
            "none kept".to_owned()
        } else {
            shrunk.steps.join("; ")
        }
    );
    let text = to_toml(&minimal, &header);
    let dir = artifacts_root.join(artifacts::dir_name(&failing.scenario.name, seed));
    let path = dir.join("shrunk.toml");
    if let Err(error) = Scenario::parse(&path, &text) {
        return Err(ShrinkError::DoesNotLoadBack {
            error: error.to_string(),
            text,
        });
    }
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &text));
    Ok(ShrunkFailure {
        target,
        shrunk,
        text,
        path,
        written,
    })
}

/// Shrink `start` while `still_fails` holds, making at most `max_runs` runs.
/// `on_try(change, kept)` reports every attempt.
pub fn shrink(
    start: &Scenario,
    target: OracleName,
    max_runs: usize,
    still_fails: &mut dyn FnMut(&Scenario) -> bool,
    on_try: &mut dyn FnMut(&str, bool),
) -> Shrunk {
    let mut current = start.clone();
    let mut steps = Vec::new();
    let mut runs = 0;
    'outer: loop {
        for candidate in candidates(&current, target) {
            if runs == max_runs {
                return Shrunk {
                    scenario: current,
                    steps,
                    runs,
                    budget_exhausted: true,
                };
            }
            runs += 1;
            let kept = still_fails(&candidate.scenario);
            on_try(&candidate.change, kept);
            if kept {
                steps.push(candidate.change);
                current = candidate.scenario;
                continue 'outer;
            }
        }
        return Shrunk {
            scenario: current,
            steps,
            runs,
            budget_exhausted: false,
        };
    }
}

/// Top-level keys in the order a scenario file is written (the schema's field order);
/// keys not listed follow in name order.
const KEY_ORDER: [&str; 14] = [
    "name",
    "description",
    "duration_s",
    "engine",
    "expect",
    "reach",
    "relay",
    "network",
    "prober",
    "churners",
    "upstreams",
    "faults",
    "oracles",
    "swarm",
];

/// `scenario` as a scenario file: `header` lines as comments, then the TOML in schema
/// order, with `[relay]` reduced to the keys that differ from the relay's defaults and
/// empty lists left out.
pub fn to_toml(scenario: &Scenario, header: &str) -> String {
    let document = toml::Value::try_from(scenario).expect("scenarios always serialise");
    let toml::Value::Table(mut table) = document else {
        unreachable!("a scenario serialises as a table")
    };
    if let Some(relay) = table.get_mut("relay") {
        let defaults = toml::Value::try_from(relay::config::Config::default())
            .expect("the relay config always serialises");
        strip_defaults(relay, &defaults);
    }
    table.retain(|_, value| match value {
        toml::Value::Array(items) => !items.is_empty(),
        toml::Value::Table(items) => !items.is_empty(),
        _ => true,
    });
    let mut keys: Vec<String> = KEY_ORDER
        .iter()
        .filter(|key| table.contains_key(**key))
        .map(|key| (*key).to_owned())
        .collect();
    keys.extend(
        table
            .keys()
            .filter(|key| !KEY_ORDER.contains(&key.as_str()))
            .cloned(),
    );
    let mut text = String::new();
    for line in header.lines() {
        text.push_str("# ");
        text.push_str(line);
        text.push('\n');
    }
    let (scalars, tables): (Vec<&String>, Vec<&String>) = keys.iter().partition(|key| {
        !matches!(
            table[key.as_str()],
            toml::Value::Table(_) | toml::Value::Array(_)
        )
    });
    for key in scalars.into_iter().chain(tables) {
        let mut one = toml::Table::new();
        one.insert(key.clone(), table[key.as_str()].clone());
        let part = toml::to_string(&one).expect("a TOML value always prints");
        if !text.ends_with("\n\n") && part.starts_with('[') {
            text.push('\n');
        }
        text.push_str(&part);
    }
    if table.contains_key("oracles") {
        text
    } else {
        text + "\n[oracles]\n"
    }
}

/// Remove every key of `value` equal to the same key in `defaults`; drop emptied tables.
fn strip_defaults(value: &mut toml::Value, defaults: &toml::Value) {
    let (Some(table), Some(defaults)) = (value.as_table_mut(), defaults.as_table()) else {
        return;
    };
    table.retain(|key, value| match defaults.get(key) {
        Some(default) if default == value => false,
        Some(default) if value.is_table() => {
            strip_defaults(value, default);
            !value.as_table().is_some_and(toml::Table::is_empty)
        }
        _ => true,
    });
}
