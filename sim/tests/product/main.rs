//! The wind tunnel as a product: what a user sees and gets — reports, replay commands,
//! artifact folders, replay, sweeps, shrinking, swarm draws, the timeline — tested without
//! a simulator by driving the harness with a fake engine and hand-built traces, in both
//! builds (`cargo test`, `cargo sim-test`); the `simulated` module repeats the main features
//! on the madsim engine and needs the simulation build. Report texts are insta snapshots
//! (`sim/tests/product/snapshots/`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use windtunnel::artifacts;
use windtunnel::harness::{self, Loaded, Options};
use windtunnel::logs::{LogCapture, LogSettings};
use windtunnel::oracle::OracleName;
use windtunnel::oracle::{self, Verdict};
use windtunnel::report::RunReport;
use windtunnel::scenario::Scenario;
use windtunnel::shrink;
use windtunnel::swarm;
use windtunnel::sweep::{self, Shard};
use windtunnel::timeline;
use windtunnel::trace::{ChurnAction, Event, Trace, UpstreamSample};
use windtunnel::worlds::{self, Engine, SeedRun, Unjudged};

#[path = "../support/mod.rs"]
mod support;
use support::{scenarios_dir, scratch_dir};

/// A prober scenario: seeds divisible by 3 fail `probe_liveness` under [`Fake`].
const FAKE: &str =
    "name = \"fake\"\nduration_s = 60\n[prober]\nperiod_s = 10\n[oracles]\nprobe_liveness = {}\n";

/// An engine whose trace is a pure function of (scenario, seed) — plus the run count when
/// `nondeterministic`, to prove the harness notices.
#[derive(Default)]
struct Fake {
    runs: AtomicUsize,
    nondeterministic: bool,
}

impl Fake {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

fn fake_trace(scenario: &Scenario, seed: u64, salt: u64) -> Trace {
    let mut trace = Trace::default();
    trace.push(0, "world", phase("relay_ready"));
    let period = scenario.prober.as_ref().map_or(10, |p| p.period_s);
    let mut t = period;
    while t <= scenario.duration_s {
        let ok = !seed.is_multiple_of(3);
        let latency_us = 1_000 + seed * 100 + t + salt * u64::from(t >= 40);
        trace.push(t * 1_000_000, "prober", probe(ok, latency_us));
        trace.push(
            t * 1_000_000 + 1,
            "monitor",
            relay_sample((t / 10) as usize % 4),
        );
        t += period;
    }
    trace.push(scenario.duration_s * 1_000_000, "world", phase("end"));
    trace
}

impl Engine for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) as u64;
        let unjudged = Unjudged {
            trace: fake_trace(scenario, seed, if self.nondeterministic { run } else { 0 }),
            failure: None,
            logs: logs.map(|_| format!("fake relay log line for seed {seed:#x}\n")),
            reached: Default::default(),
        };
        worlds::judge(scenario, unjudged, Duration::from_millis(10 + seed))
    }
}

fn phase(name: &str) -> Event {
    Event::Phase {
        name: name.to_owned(),
    }
}

fn probe(ok: bool, latency_us: u64) -> Event {
    Event::Probe {
        ok,
        status: ok.then_some(200),
        latency_us,
        error: (!ok).then(|| "timeout after 1000ms".to_owned()),
    }
}

fn relay_sample(open: usize) -> Event {
    Event::RelaySample {
        open,
        high_water: 4,
        max: 4,
        admitted: 10,
        released: 10 - open as u64,
        refused: 2,
        relay_tasks: 3 + open,
        upstreams: UpstreamSample::default(),
        events: Default::default(),
        http: Default::default(),
        memory: Default::default(),
    }
}

/// Where test `name` has the harness write artifacts: a folder that does not exist yet.
fn fresh_dir(name: &str) -> PathBuf {
    scratch_dir(&format!("product-{name}")).join("artifacts")
}

fn loaded(text: &str) -> Loaded {
    loaded_at("scenarios/fake.toml", text)
}

fn loaded_at(path: &str, text: &str) -> Loaded {
    Loaded::from_source(Path::new(path), text.to_owned()).unwrap_or_else(|error| panic!("{error}"))
}

fn options(root: &Path) -> Options {
    Options {
        artifacts_root: Some(root.to_owned()),
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------
// Failure UX: headline, replay command, artifact folder, replay.

#[test]
fn a_failed_run_prints_one_headline_and_a_copy_paste_replay_command() {
    let root = fresh_dir("headline");
    let result = harness::run_seed(&Fake::default(), &loaded(FAKE), 3, &options(&root)).unwrap();
    assert!(!result.ok());
    let text = result.console_text();
    let headline = text.lines().next().unwrap();
    assert!(
        headline.starts_with("FAILED fake seed=0x3 oracle=probe_liveness at t=30.0s hash=0x"),
        "{headline}"
    );
    let replays: Vec<&str> = text.lines().filter(|l| l.contains("replay: ")).collect();
    assert_eq!(
        replays,
        ["  replay: cargo sim run scenarios/fake.toml --seed 0x3"],
        "{text}"
    );
    assert!(text.contains(&format!(
        "  artifacts: {} (",
        root.join("fake-seed0x3").display()
    )));
}

#[test]
fn a_failing_seed_leaves_a_complete_artifact_folder() {
    let root = fresh_dir("artifact");
    let engine = Fake::default();
    let result = harness::run_seed(&engine, &loaded(FAKE), 3, &options(&root)).unwrap();
    assert_eq!(engine.runs(), 1, "logs are captured in the first run");
    let dir = result
        .artifacts
        .clone()
        .expect("a failing run writes artifacts");
    assert_eq!(dir, root.join("fake-seed0x3"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "logs.txt",
            "meta.json",
            "report.txt",
            "scenario.toml",
            "timeline.svg",
            "trace.jsonl"
        ]
    );
    let meta = artifacts::read_meta(&dir).unwrap();
    assert_eq!(meta.scenario, "fake");
    assert_eq!(meta.scenario_path, "scenarios/fake.toml");
    assert_eq!(meta.seed, "0x3");
    assert_eq!(meta.engine, "fake");
    assert_eq!(meta.verdict, "failed");
    assert_eq!(meta.oracle.as_deref(), Some("probe_liveness"));
    assert_eq!(meta.violation_t_us, Some(30_000_000));
    assert_eq!(meta.windtunnel_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(meta.replay, "cargo sim run scenarios/fake.toml --seed 0x3");
    let trace = artifacts::read_trace(&dir).unwrap();
    assert_eq!(trace, result.run.trace);
    assert_eq!(meta.trace_hash, artifacts::format_hash(trace.hash()));
    assert_eq!(meta.trace_records, trace.records().len());
    assert_eq!(
        std::fs::read_to_string(dir.join("scenario.toml")).unwrap(),
        FAKE
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("report.txt")).unwrap(),
        result.report
    );
    let logs = std::fs::read_to_string(dir.join("logs.txt")).unwrap();
    assert!(
        logs.starts_with("# windtunnel ") && logs.contains("scenarios/fake.toml seed=0x3"),
        "{logs}"
    );
    assert!(
        logs.ends_with("fake relay log line for seed 0x3\n"),
        "{logs}"
    );
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
}

#[test]
fn a_passing_seed_writes_artifacts_only_when_asked() {
    let root = fresh_dir("passing");
    let engine = Fake::default();
    let result = harness::run_seed(&engine, &loaded(FAKE), 1, &options(&root)).unwrap();
    assert!(result.ok());
    assert_eq!(result.artifacts, None);
    assert!(!root.exists());
    assert!(!result.report.contains("replay:"), "{}", result.report);
    let always = Options {
        artifacts_always: true,
        ..options(&root)
    };
    let result = harness::run_seed(&engine, &loaded(FAKE), 1, &always).unwrap();
    let dir = result.artifacts.unwrap();
    assert_eq!(artifacts::read_meta(&dir).unwrap().verdict, "passed");
}

#[test]
fn replay_reproduces_the_recorded_hash_and_names_the_first_divergent_record_otherwise() {
    let root = fresh_dir("replay");
    let engine = Fake::default();
    let dir = harness::run_seed(&engine, &loaded(FAKE), 3, &options(&root))
        .unwrap()
        .artifacts
        .unwrap();

    let replay = harness::replay(&engine, &dir, &Options::default()).unwrap();
    assert!(replay.identical(), "{}", replay.summary(&dir));
    assert!(
        replay.summary(&dir).starts_with(&format!(
            "REPLAYED fake seed=0x3: trace identical to {} (hash 0x",
            dir.display()
        )),
        "{}",
        replay.summary(&dir)
    );
    assert_eq!(replay.result.artifacts, None, "replay writes no artifacts");

    // A different build of the relay would produce a different record 3: simulate that by
    // editing the recorded trace.
    let mut recorded = artifacts::read_trace(&dir).unwrap();
    let mut edited = Trace::default();
    for (index, record) in recorded.records().iter().enumerate() {
        let event = if index == 3 {
            probe(true, 99)
        } else {
            record.event.clone()
        };
        edited.push(record.t_us, record.node.clone(), event);
    }
    recorded = edited;
    std::fs::write(dir.join("trace.jsonl"), recorded.to_jsonl()).unwrap();
    let mut meta = artifacts::read_meta(&dir).unwrap();
    meta.trace_hash = artifacts::format_hash(recorded.hash());
    std::fs::write(
        dir.join("meta.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    let replay = harness::replay(&engine, &dir, &Options::default()).unwrap();
    assert!(!replay.identical());
    assert_eq!(replay.divergence.as_ref().unwrap().index, 3);
    insta::assert_snapshot!(
        "replay_diverged",
        replay.summary(Path::new("artifacts/fake-seed0x3"))
    );
}

#[test]
fn an_artifact_folder_carries_the_host_table_its_scenario_names() {
    let scratch = scratch_dir("product-host-table");
    std::fs::create_dir_all(scratch.join("hosts")).unwrap();
    std::fs::write(scratch.join("hosts/mine.txt"), "pds.one.example\n").unwrap();
    let source = format!("{FAKE}[upstreams]\ntable = \"hosts/mine.txt\"\n");
    std::fs::write(scratch.join("tabled.toml"), &source).unwrap();
    let loaded = Loaded::load(&scratch.join("tabled.toml")).unwrap();
    let engine = Fake::default();
    let dir = harness::run_seed(&engine, &loaded, 3, &options(&scratch.join("artifacts")))
        .unwrap()
        .artifacts
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts/mine.txt")).unwrap(),
        "pds.one.example\n",
        "the table is copied where the copy of the scenario looks for it"
    );
    // Gone from where it was: replay reads the copy.
    std::fs::remove_dir_all(scratch.join("hosts")).unwrap();
    let replay = harness::replay(&engine, &dir, &Options::default()).unwrap();
    assert!(replay.identical(), "{}", replay.summary(&dir));
    let table = replay
        .result
        .scenario
        .upstreams
        .as_ref()
        .unwrap()
        .table
        .as_ref()
        .unwrap();
    assert_eq!(
        table.path,
        std::path::absolute(dir.join("hosts/mine.txt")).unwrap()
    );
}

#[test]
fn replay_of_a_missing_folder_is_a_clear_error() {
    let error = harness::replay(
        &Fake::default(),
        Path::new("no/such/artifact"),
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("no/such/artifact/meta.json: "),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Determinism.

#[test]
fn check_determinism_reports_the_first_divergent_record_with_both_versions() {
    let engine = Fake {
        nondeterministic: true,
        ..Fake::default()
    };
    let opts = Options {
        artifacts_root: None,
        check_determinism: true,
        ..Options::default()
    };
    let result = harness::run_seed(&engine, &loaded(FAKE), 1, &opts).unwrap();
    assert!(!result.ok(), "a nondeterministic pass is a failure");
    assert!(result.run.verdict.is_success());
    let divergence = result
        .determinism
        .as_ref()
        .unwrap()
        .divergence
        .clone()
        .unwrap();
    assert_eq!(
        divergence.index, 7,
        "the probe at t=40s is the first to differ"
    );
    let determinism: String = result
        .report
        .lines()
        .skip_while(|line| !line.starts_with("  determinism:"))
        .map(|line| format!("{line}\n"))
        .collect();
    insta::assert_snapshot!("determinism_diverged", determinism);

    let deterministic = harness::run_seed(&Fake::default(), &loaded(FAKE), 1, &opts).unwrap();
    assert!(deterministic.ok());
    assert!(
        deterministic
            .report
            .contains("  determinism: second run (--check-determinism) identical, hash 0x"),
        "{}",
        deterministic.report
    );
}

#[test]
fn without_logs_up_front_a_failing_seed_is_rerun_for_its_logs_and_must_match() {
    let root = fresh_dir("rerun");
    let opts = Options {
        logs_up_front: false,
        ..options(&root)
    };
    let engine = Fake::default();
    let result = harness::run_seed(&engine, &loaded(FAKE), 6, &opts).unwrap();
    assert_eq!(engine.runs(), 2);
    let check = result.determinism.as_ref().unwrap();
    assert_eq!(check.reason, "re-run to capture logs");
    assert_eq!(check.divergence, None);
    assert!(result.run.logs.is_some());

    let flaky = Fake {
        nondeterministic: true,
        ..Fake::default()
    };
    let result = harness::run_seed(&flaky, &loaded(FAKE), 6, &opts).unwrap();
    assert!(result
        .report
        .contains("determinism: FAILED, second run (re-run to capture logs) diverges"));
}

// ---------------------------------------------------------------------------------------
// Sweeps.

#[test]
fn a_sweep_summarises_every_scenario_and_names_the_first_failing_seed() {
    let root = fresh_dir("sweep");
    let other = FAKE.replace("name = \"fake\"", "name = \"fake_slow\"");
    let scenarios = [loaded(FAKE), loaded_at("scenarios/fake_slow.toml", &other)];
    let plan = sweep::plan(scenarios.len(), 1, 7, Shard::ALL);
    let opts = Options {
        logs_up_front: false,
        ..options(&root)
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let outcomes = sweep::run(
        &Fake::default(),
        &scenarios,
        &plan,
        &opts,
        2,
        &|done, total, o| {
            assert_eq!(total, 14);
            seen.lock().unwrap().push((done, o.job));
        },
    );
    assert_eq!(outcomes.iter().map(|o| o.job).collect::<Vec<_>>(), plan);
    let mut done: Vec<usize> = seen.lock().unwrap().iter().map(|(d, _)| *d).collect();
    done.sort_unstable();
    assert_eq!(done, (1..=14).collect::<Vec<_>>());
    let failed: BTreeSet<u64> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.job.seed)
        .collect();
    assert_eq!(failed, BTreeSet::from([3, 6]));
    assert!(outcomes
        .iter()
        .filter(|o| !o.ok)
        .all(|o| o.artifacts.is_some() && o.failure_text.contains("replay: ")));
    let rows = sweep::summarise(&scenarios, &outcomes);
    insta::assert_snapshot!("sweep_table", sweep::render_table(&rows, Shard::ALL));

    let shard = Shard { index: 3, count: 3 };
    let plan = sweep::plan(scenarios.len(), 1, 7, shard);
    let outcomes = sweep::run(&Fake::default(), &scenarios, &plan, &opts, 1, &|_, _, _| {});
    let rows = sweep::summarise(&scenarios, &outcomes);
    let table = sweep::render_table(&rows, shard);
    assert!(
        table.starts_with("FAILED sweep (shard 3/3): 2 scenarios, 4 seeds, 2 failed\n"),
        "{table}"
    );
    assert_eq!(
        sweep::summary_path(Path::new("artifacts"), shard),
        Path::new("artifacts/sweep-summary-3-of-3.txt")
    );
}

#[test]
fn a_sweep_expands_directories_to_their_scenarios_in_name_order() {
    let dir = scenarios_dir();
    let files = sweep::expand_paths(&[dir.clone(), dir.join("host_flap.toml")]).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.first().unwrap(), "bad_input.toml");
    assert_eq!(names.last().unwrap(), "host_flap.toml");
    assert!(names.iter().all(|n| n.ends_with(".toml")));
    assert_eq!(names.len(), 45, "{names:?}");
}

// ---------------------------------------------------------------------------------------
// Shrinking.

const BIG: &str = r#"name = "big"
duration_s = 200
[relay.server]
max_connections = 16
idle_timeout_ms = 4000
[prober]
[upstreams]
hosts = 40
flaky_fraction = 0.2
[[churners]]
nodes = 8
loops_per_node = 4
stop_s = 100
[[churners]]
nodes = 3
loops_per_node = 2
start_s = 10
stop_s = 60
[[faults]]
kind = "partition"
at_s = 20
duration_s = 30
hosts_fraction = 0.5
[oracles]
probe_liveness = {}
conn_accounting = { settle_s = 60 }
workers_bounded = {}
"#;

#[test]
fn shrinking_keeps_only_what_the_failure_needs_and_prints_a_loadable_scenario() {
    let start = Scenario::parse(Path::new("big.toml"), BIG).unwrap();
    // The "bug": conn_accounting fails while 12 or more churn loops run until t >= 40s.
    let mut still_fails = |s: &Scenario| {
        let loops: u32 = s
            .churners
            .iter()
            .filter(|c| c.stop_s >= 40)
            .map(|c| c.nodes * c.loops_per_node)
            .sum();
        s.checks(OracleName::ConnAccounting) && loops >= 12
    };
    let mut tried = Vec::new();
    let shrunk = shrink::shrink(
        &start,
        OracleName::ConnAccounting,
        500,
        &mut still_fails,
        &mut |change, kept| tried.push((change.to_owned(), kept)),
    );
    assert!(!shrunk.budget_exhausted);
    assert_eq!(shrunk.runs, tried.len());
    let s = &shrunk.scenario;
    assert!(still_fails(s));
    assert!(s.faults.is_empty() && s.upstreams.is_none() && s.prober.is_none());
    assert_eq!(s.churners.len(), 1);
    let c = &s.churners[0];
    assert_eq!((c.nodes * c.loops_per_node, c.stop_s), (16, 50), "{c:?}");
    assert!(s.oracles.probe_liveness.is_none() && s.oracles.workers_bounded.is_none());
    assert!(s.checks(OracleName::ConnAccounting));
    // Nothing left can be taken away without losing the failure.
    for candidate in shrink::candidates(s, OracleName::ConnAccounting) {
        assert!(!still_fails(&candidate.scenario), "{}", candidate.change);
    }

    let text = shrink::to_toml(s, "Shrunk by a test.\nSecond header line.");
    let back =
        Scenario::parse(Path::new("shrunk.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&back, s);
    insta::assert_snapshot!("shrunk_scenario", text);
}

#[test]
fn shrinking_stops_at_the_run_budget() {
    let start = Scenario::parse(Path::new("big.toml"), BIG).unwrap();
    let shrunk = shrink::shrink(
        &start,
        OracleName::ConnAccounting,
        3,
        &mut |_| true,
        &mut |_, _| {},
    );
    assert!(shrunk.budget_exhausted);
    assert_eq!((shrunk.runs, shrunk.steps.len()), (3, 3));
}

// ---------------------------------------------------------------------------------------
// Swarm ranges.

const SWARM_BASE: &str = "name = \"swarm\"\nduration_s = 60\n[relay.server]\nidle_timeout_ms = 5000\n[network]\nlatency_ms = [1, 5]\n[prober]\n[[churners]]\nnodes = 40\nloops_per_node = 4\nstop_s = 30\n[oracles]\nprobe_liveness = {}\n";

const SWARM: &str = "\n[swarm]\n\"relay.server.max_connections\" = [32, 128]\n\"churners[0].loops_per_node\" = [2, 6]\n\"churners[0].mix.idle_hold\" = { one_of = [0, 2, 5] }\n\"network.latency_ms\" = { one_of = [[1, 5], [5, 50]] }\n";

#[test]
fn swarm_ranges_draw_every_option_from_the_seed() {
    let text = SWARM_BASE.to_owned() + SWARM;
    let scenario = Scenario::parse(Path::new("swarm.toml"), &text).unwrap();
    let mut seen_max = BTreeSet::new();
    let mut seen_latency = BTreeSet::new();
    for seed in 1..=60 {
        let (resolved, draws) = swarm::resolve(&scenario, seed).unwrap();
        assert_eq!(
            swarm::resolve(&scenario, seed).unwrap().1,
            draws,
            "seed {seed}"
        );
        assert!(resolved.swarm.is_empty());
        let keys: Vec<&str> = draws.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "churners[0].loops_per_node",
                "churners[0].mix.idle_hold",
                "network.latency_ms",
                "relay.server.max_connections"
            ]
        );
        let max = resolved.relay.server.max_connections;
        assert!((32..=128).contains(&max));
        assert_eq!(draws[3].value.as_integer(), Some(max as i64));
        assert!((2..=6).contains(&resolved.churners[0].loops_per_node));
        assert!([0, 2, 5].contains(&resolved.churners[0].mix.idle_hold));
        seen_max.insert(max);
        seen_latency.insert((
            resolved.network.latency_ms.min,
            resolved.network.latency_ms.max,
        ));
        // Everything not drawn stays as written.
        assert_eq!(resolved.churners[0].nodes, 40);
        assert_eq!(resolved.relay.server.idle_timeout_ms, 5000);
    }
    assert!(seen_max.len() > 20, "{seen_max:?}");
    assert_eq!(seen_latency, BTreeSet::from([(1, 5), (5, 50)]));
}

#[test]
fn a_run_prints_the_options_its_seed_drew() {
    let text = format!("{FAKE}\n[swarm]\n\"prober.period_s\" = [5, 15]\n");
    let result = harness::run_seed(
        &Fake::default(),
        &loaded(&text),
        2,
        &Options {
            artifacts_root: None,
            ..Options::default()
        },
    )
    .unwrap();
    let period = result.scenario.prober.as_ref().unwrap().period_s;
    assert!(
        result
            .report
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("  swarm: prober.period_s={period}")),
        "{}",
        result.report
    );
}

#[test]
fn swarm_keys_are_checked_when_the_scenario_loads() {
    let error = |swarm: &str| {
        Scenario::parse(
            Path::new("bad.toml"),
            &(SWARM_BASE.to_owned() + "[swarm]\n" + swarm),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        error("\"churners[3].nodes\" = [1, 2]\n"),
        "bad.toml:15:1: swarm.\"churners[3].nodes\": the scenario has no `churners[3]` (1 entries) (drawing 1)"
    );
    assert!(
        error("\"prober.perod_s\" = [1, 2]\n").starts_with(
            "bad.toml:15:1: swarm.\"prober.perod_s\": unknown field `perod_s`, expected one of"
        ),
        "{}",
        error("\"prober.perod_s\" = [1, 2]\n")
    );
    assert_eq!(
        error("\"prober.timeout_s\" = [1, 20]\n"),
        "bad.toml:15:1: swarm.\"prober.timeout_s\": prober.timeout_s: expected timeout_s <= period_s (drawing 20)"
    );
    assert_eq!(
        error("\"upstreams.hosts\" = [1, 2]\n"),
        "bad.toml:15:1: swarm.\"upstreams.hosts\": the scenario has no `upstreams` (drawing 1)"
    );
    assert!(
        error("\"prober.period_s\" = [5, 1]\n")
            .starts_with("bad.toml:15:21: expected [min, max] with min <= max, got [5, 1]"),
        "{}",
        error("\"prober.period_s\" = [5, 1]\n")
    );
}

// ---------------------------------------------------------------------------------------
// Reports (insta snapshots of hand-built traces).

/// A churn run; `open_at_end` connections are still open at the last sample (t=30s).
fn churn_trace(open_at_end: usize) -> Trace {
    let mut trace = Trace::default();
    trace.push(0, "world", phase("relay_ready"));
    trace.push(1_000_000, "monitor", relay_sample(0));
    for (i, action) in [
        ChurnAction::Keepalive,
        ChurnAction::AbruptClose,
        ChurnAction::IdleHold,
        ChurnAction::MidRequestClose,
        ChurnAction::Keepalive,
    ]
    .into_iter()
    .enumerate()
    {
        trace.push(
            2_000_000 + i as u64 * 100_000,
            format!("churner-0-{i}"),
            Event::Churn {
                action,
                requests_ok: u32::from(action == ChurnAction::Keepalive) * 3,
                refused: i == 2,
                error: (i == 3).then(|| "closed by relay".to_owned()),
            },
        );
    }
    trace.push(5_000_000, "prober", probe(true, 12_345));
    trace.push(10_000_000, "monitor", relay_sample(3));
    trace.push(15_000_000, "prober", probe(true, 2_500));
    trace.push(20_000_000, "world", phase("churn_stopped"));
    trace.push(30_000_000, "monitor", relay_sample(open_at_end));
    trace
}

fn upstream_trace() -> Trace {
    let mut trace = Trace::default();
    trace.push(
        0,
        "world",
        Event::UpstreamWorld {
            hosts: 10,
            dead: 1,
            flaky: 2,
            hostile: 0,
        },
    );
    for (t_s, connected) in [(1, 3), (5, 9), (10, 4), (20, 9)] {
        let event = Event::RelaySample {
            open: 0,
            high_water: 1,
            max: 1024,
            admitted: 2,
            released: 2,
            refused: 0,
            relay_tasks: 12,
            upstreams: UpstreamSample {
                hosts: 10,
                hosts_connected: connected,
                hosts_dormant: 1,
                hosts_idle: 0,
                workers_running: 9,
                workers_high_water: 9,
                handshakes_in_flight: 10 - connected,
                handshakes_high_water: 6,
                upstream_events: t_s * 10,
            },
            events: Default::default(),
            http: Default::default(),
            memory: Default::default(),
        };
        trace.push(t_s * 1_000_000, "monitor", event);
        if t_s == 5 {
            let fault = |active| Event::Fault {
                kind: "partition".to_owned(),
                index: 0,
                hosts: 5,
                active,
                effect: if active { 0 } else { 5 },
            };
            trace.push(6_000_000, "world", fault(true));
            trace.push(15_000_000, "world", fault(false));
        }
    }
    trace.push(25_000_000, "prober", probe(true, 40_000));
    trace
}

fn render(scenario_text: &str, trace: &Trace, seed: u64) -> String {
    let scenario = Scenario::parse(Path::new("scenarios/x.toml"), scenario_text).unwrap();
    let violations = oracle::check(&scenario, trace);
    let verdict = oracle::verdict(scenario.expect, &violations);
    RunReport {
        scenario: &scenario,
        scenario_path: "scenarios/x.toml",
        seed,
        swarm: &[],
        trace,
        violations: &violations,
        verdict: &verdict,
        deterministic: true,
    }
    .render()
}

const CHURN: &str = "name = \"churn\"\nduration_s = 40\n[prober]\n[[churners]]\nnodes = 1\nloops_per_node = 5\nstop_s = 20\n[oracles]\nprobe_liveness = {}\nconn_accounting = { settle_s = 10 }\n";

#[test]
fn report_of_a_passing_churn_run() {
    insta::assert_snapshot!("report_passed", render(CHURN, &churn_trace(0), 1));
}

#[test]
fn report_of_a_run_that_failed_an_oracle() {
    let tight = CHURN.replace(
        "probe_liveness = {}",
        "probe_latency_max = { latency_ms_max = 10 }",
    );
    let text = render(&tight, &churn_trace(0), 0x2a);
    assert!(text.starts_with("FAILED churn seed=0x2a oracle=probe_latency_max at t=5.0s"));
    insta::assert_snapshot!("report_failed", text);
}

#[test]
fn report_of_expected_failures_that_happened_and_did_not() {
    let expect_fail = CHURN.replace(
        "duration_s = 40",
        "duration_s = 40\nexpect = { fail = \"conn_accounting\" }",
    );
    // Two connections never close: conn_accounting fails, as this scenario expects.
    let text = render(&expect_fail, &churn_trace(2), 3);
    assert!(text.starts_with("PASSED churn seed=0x3"), "{text}");
    insta::assert_snapshot!("report_failed_as_expected", text);
    // Everything closes: the expected failure did not happen, and that is a failure.
    let text = render(&expect_fail, &churn_trace(0), 3);
    assert!(
        text.starts_with("FAILED churn seed=0x3 oracle=conn_accounting expected to fail but held"),
        "{text}"
    );
    insta::assert_snapshot!("report_unexpected_pass", text);
}

#[test]
fn report_of_an_upstream_run_with_faults() {
    let text = "name = \"flap\"\nduration_s = 30\n[prober]\n[upstreams]\nhosts = 10\n[[faults]]\nkind = \"partition\"\nat_s = 6\nduration_s = 9\nhosts_fraction = 0.5\n[oracles]\nhosts_connected_min = { fraction = 1.0, by_s = 20 }\nhandshakes_bounded = { max = 5 }\nworkers_bounded = {}\n";
    insta::assert_snapshot!("report_upstreams", render(text, &upstream_trace(), 9));
}

// ---------------------------------------------------------------------------------------
// The timeline.

#[test]
fn the_timeline_draws_samples_probes_faults_phases_and_the_violation() {
    let scenario = Scenario::parse(
        Path::new("x.toml"),
        "name = \"flap\"\nduration_s = 30\n[prober]\n[upstreams]\nhosts = 10\n[oracles]\nhandshakes_bounded = { max = 5 }\n",
    )
    .unwrap();
    let trace = upstream_trace();
    let violations = oracle::check(&scenario, &trace);
    assert_eq!(violations.len(), 1);
    let svg = timeline::render(&scenario, &trace, &violations);
    // Well-formed enough for any renderer: balanced elements, one root.
    for element in ["svg", "text", "title"] {
        assert_eq!(
            svg.matches(&format!("<{element}")).count(),
            svg.matches(&format!("</{element}>")).count(),
            "<{element}> unbalanced"
        );
    }
    // No connections panel (nothing was ever open); hosts, handshakes and probes are drawn.
    assert!(!svg.contains("connections open"));
    assert!(svg.contains(">upstream hosts<") && svg.contains(">probe latency (ms, log scale)<"));
    let polylines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
    assert_eq!(
        polylines.len(),
        4,
        "connected, workers, dormant, handshakes"
    );
    assert!(polylines
        .iter()
        .all(|l| l.split("points=\"").nth(1).unwrap().split(' ').count() == 4));
    assert!(svg.contains("<title>fault partition 6.0s–15.0s</title>"));
    assert!(svg.contains(">handshakes_bounded at 1.0s</text>"));
    insta::assert_snapshot!("timeline_svg", svg);
}

#[test]
fn the_timeline_marks_every_liveness_restart_and_the_summary_counts_them() {
    let scenario = Scenario::parse(
        Path::new("x.toml"),
        "name = \"loop\"\nduration_s = 120\n[prober]\nrestart = true\n[oracles]\nrelay_restarts_max = { max = 1 }\n",
    )
    .unwrap();
    let mut trace = Trace::default();
    for (t_s, restart, graceful, back_off_s) in [(30, 1, true, 0), (70, 2, false, 10)] {
        trace.push(t_s * 1_000_000, "prober", probe(false, 1_000_000));
        trace.push(
            t_s * 1_000_000,
            "orchestrator",
            Event::LivenessRestart {
                restart,
                graceful,
                back_off_s,
            },
        );
    }
    let violations = oracle::check(&scenario, &trace);
    assert_eq!(violations.len(), 1, "{violations:?}");
    let svg = timeline::render(&scenario, &trace, &violations);
    assert!(svg.contains("<title>liveness restart 1 at 30.0s: stopped, back-off 0s</title>"));
    assert!(svg.contains("<title>liveness restart 2 at 70.0s: killed, back-off 10s</title>"));
    assert_eq!(svg.matches(">restart ").count(), 2, "{svg}");
    assert!(svg.contains(">relay_restarts_max at 70.0s</text>"));
    assert_eq!(
        windtunnel::report::Summary::of(&trace).liveness_restarts,
        (2, 1)
    );
}

// ---------------------------------------------------------------------------------------
// Logged lines: what machines reading CI logs rely on.

/// What `action` logs through `tracing` from the windtunnel library (targets
/// `windtunnel::…`, every level), captured on this thread with the harness's own
/// [`LogCapture`].
fn logged<T>(action: impl FnOnce() -> T) -> (T, String) {
    let settings = LogSettings::with_filter("windtunnel=trace").expect("the filter parses");
    let capture = LogCapture::new(&settings);
    let result = tracing::dispatcher::with_default(capture.dispatch(), action);
    (result, capture.finish())
}

#[test]
fn a_failing_run_logs_its_headline_and_the_replay_command() {
    let opts = Options {
        artifacts_root: None,
        ..Options::default()
    };
    let (result, logs) = logged(|| harness::run_seed(&Fake::default(), &loaded(FAKE), 3, &opts));
    assert!(matches!(result.unwrap().run.verdict, Verdict::Failed(_)));
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(
        logs.contains("FAILED fake seed=0x3 oracle=probe_liveness at t=30.0s"),
        "{logs}"
    );
    assert!(
        logs.contains("replay=cargo sim run scenarios/fake.toml --seed 0x3"),
        "{logs}"
    );
    assert!(logs.contains("oracle=probe_liveness"), "{logs}");
}

#[test]
fn a_passing_run_logs_its_headline_without_a_replay_command() {
    let opts = Options {
        artifacts_root: None,
        ..Options::default()
    };
    let (result, logs) = logged(|| harness::run_seed(&Fake::default(), &loaded(FAKE), 1, &opts));
    assert!(result.unwrap().ok());
    assert!(logs.contains("PASSED fake seed=0x1 hash=0x"), "{logs}");
    assert!(!logs.contains("replay="), "{logs}");
}

#[test]
fn writing_artifacts_and_replaying_are_logged() {
    let root = fresh_dir("logged");
    let engine = Fake::default();
    let (dir, logs) = logged(|| {
        let dir = harness::run_seed(&engine, &loaded(FAKE), 3, &options(&root))
            .unwrap()
            .artifacts
            .unwrap();
        harness::replay(&engine, &dir, &Options::default()).unwrap();
        dir
    });
    assert!(
        logs.contains(&format!("artifacts written dir={}", dir.display())),
        "{logs}"
    );
    assert!(logs.contains("replay identical"), "{logs}");
}

// ---------------------------------------------------------------------------------------
// The same product features on the real engine (simulation build only).

#[cfg(madsim)]
mod simulated {
    use super::*;
    use windtunnel::worlds::madsim::Madsim;

    fn shipped(name: &str) -> Loaded {
        Loaded::load(&scenarios_dir().join(name)).unwrap_or_else(|error| panic!("{error}"))
    }

    /// `churn_max_connections` with a probe latency bound it cannot meet.
    fn tight() -> Loaded {
        let original = shipped("churn_max_connections.toml");
        let text = original
            .source
            .replace("latency_ms_max = 1000", "latency_ms_max = 3")
            .replace(
                "name = \"churn_max_connections\"",
                "name = \"churn_tight_latency\"",
            );
        assert_ne!(text, original.source);
        loaded_at("scenarios/churn_tight_latency.toml", &text)
    }

    #[test]
    fn capturing_the_relays_logs_does_not_change_the_trace() {
        let scenario = shipped("churn_max_connections.toml").scenario;
        let plain = Madsim.run(&scenario, 11, None);
        let logged = Madsim.run(&scenario, 11, Some(&LogSettings::default()));
        assert_eq!(plain.trace.first_divergence(&logged.trace), None);
        assert_eq!(plain.logs, None);
        let logs = logged.logs.unwrap();
        let serving = logs
            .lines()
            .find(|line| line.contains("relay serving"))
            .unwrap_or_else(|| panic!("no startup line in:\n{logs}"));
        // Simulated seconds, then the madsim node span naming the relay.
        assert!(serving.trim_start().starts_with("0.0"), "{serving}");
        assert!(serving.contains("node{id=1 name=\"relay\"}"), "{serving}");
        assert!(
            logs.contains("DEBUG") && logs.contains("idle connections asked to close"),
            "the idle reaper's debug lines are captured"
        );
    }

    #[test]
    fn a_contained_handler_panic_is_logged_with_method_path_and_request_id() {
        let scenario = shipped("panic_isolation.toml").scenario;
        let run = Madsim.run(&scenario, 3, Some(&LogSettings::default()));
        let logs = run.logs.unwrap();
        let panicked = logs
            .lines()
            .find(|line| line.contains("handler panicked; answered 500"))
            .unwrap_or_else(|| panic!("no contained panic logged in:\n{logs}"));
        assert!(panicked.contains("ERROR"), "{panicked}");
        assert!(panicked.contains("method=GET"), "{panicked}");
        assert!(panicked.contains(r#"path="/hosts""#), "{panicked}");
        assert!(panicked.contains("request_id="), "{panicked}");
        assert!(panicked.contains("injected handler panic"), "{panicked}");
        // Simulated time first: the panic happened inside the fault window (10–30 s).
        let stamp = panicked.split_whitespace().next().unwrap();
        let t_s: f64 = stamp.trim_end_matches('s').parse().unwrap();
        assert!((10.0..31.0).contains(&t_s), "{panicked}");
    }

    #[test]
    fn a_failing_run_leaves_artifacts_that_replay_to_the_same_hash() {
        let root = fresh_dir("sim-replay");
        let result = harness::run_seed(&Madsim, &tight(), 2, &options(&root)).unwrap();
        assert!(
            result
                .headline
                .starts_with("FAILED churn_tight_latency seed=0x2 oracle=probe_latency_max at t="),
            "{}",
            result.headline
        );
        let dir = result.artifacts.clone().unwrap();
        let logs = std::fs::read_to_string(dir.join("logs.txt")).unwrap();
        assert!(logs.contains("relay serving"), "{logs}");
        let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
        assert!(
            svg.contains(">probe_latency_max at "),
            "the violation is drawn"
        );
        let replay = harness::replay(&Madsim, &dir, &Options::default()).unwrap();
        assert!(replay.identical(), "{}", replay.summary(&dir));
        assert_eq!(
            artifacts::format_hash(replay.result.run.trace.hash()),
            artifacts::read_meta(&dir).unwrap().trace_hash
        );
    }

    #[test]
    fn swarm_options_reach_the_world() {
        let text = shipped("churn_max_connections.toml").source
            + "\n[swarm]\n\"relay.server.max_connections\" = [16, 48]\n";
        let loaded = loaded_at("scenarios/churn_swarm.toml", &text);
        let opts = Options {
            artifacts_root: None,
            logs_up_front: false,
            ..Options::default()
        };
        let mut drawn = BTreeSet::new();
        for seed in [1, 2, 3] {
            let result = harness::run_seed(&Madsim, &loaded, seed, &opts).unwrap();
            let max = result.scenario.relay.server.max_connections;
            drawn.insert(max);
            assert!(result
                .report
                .contains(&format!("  swarm: relay.server.max_connections={max}\n")));
            let summary = windtunnel::report::Summary::of(&result.run.trace);
            assert_eq!(summary.relay_last.unwrap().1, max, "seed {seed}");
        }
        assert!(drawn.len() > 1, "{drawn:?}");
    }

    #[test]
    fn shrinking_a_real_failure_keeps_it_failing() {
        let failing = tight();
        let seed = 2;
        let target = OracleName::ProbeLatencyMax;
        let mut still_fails = |s: &Scenario| {
            Madsim
                .run(s, seed, None)
                .violations
                .iter()
                .any(|v| v.oracle == target)
        };
        let shrunk = shrink::shrink(
            &failing.scenario,
            target,
            8,
            &mut still_fails,
            &mut |_, _| {},
        );
        assert!(!shrunk.steps.is_empty(), "nothing could be removed");
        assert!(still_fails(&shrunk.scenario));
        let text = shrink::to_toml(&shrunk.scenario, "test");
        let back = Scenario::parse(Path::new("shrunk.toml"), &text).unwrap();
        assert!(
            still_fails(&back),
            "the printed scenario reproduces:\n{text}"
        );
    }

    #[test]
    fn a_sharded_sweep_covers_what_the_whole_sweep_covers() {
        let scenarios = [shipped("churn_max_connections.toml"), tight()];
        let opts = Options {
            artifacts_root: None,
            logs_up_front: false,
            ..Options::default()
        };
        let whole = sweep::run(
            &Madsim,
            &scenarios,
            &sweep::plan(2, 1, 2, Shard::ALL),
            &opts,
            2,
            &|_, _, _| {},
        );
        let mut sharded = Vec::new();
        for index in 1..=2 {
            let plan = sweep::plan(2, 1, 2, Shard { index, count: 2 });
            sharded.extend(sweep::run(
                &Madsim,
                &scenarios,
                &plan,
                &opts,
                1,
                &|_, _, _| {},
            ));
        }
        sharded.sort_by_key(|o| (o.job.scenario, o.job.seed));
        let key = |o: &sweep::JobOutcome| (o.job, o.ok, o.headline.clone());
        assert_eq!(
            whole.iter().map(key).collect::<Vec<_>>(),
            sharded.iter().map(key).collect::<Vec<_>>()
        );
        let rows = sweep::summarise(&scenarios, &whole);
        assert_eq!((rows[0].passed, rows[0].failed), (2, 0));
        assert_eq!((rows[1].passed, rows[1].failed), (0, 2));
        assert_eq!(rows[1].first_failure.as_ref().unwrap().0, 1);
    }
}
