//! The `windtunnel` binary end to end: arguments, exit codes, what is printed and written.
//! `check` runs in both builds and the no-simulator message in the plain build (`cargo
//! test`); the commands that run worlds (the `simulated` module) need the simulation build
//! (`cargo sim-test`), where the binary under test is built with `--cfg madsim` too.

use std::path::Path;
use std::process::{Command, Output};

#[path = "../support/mod.rs"]
mod support;
use support::scratch_dir;

fn windtunnel(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_windtunnel"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the windtunnel binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const TINY: &str = r#"name = "tiny_churn"
duration_s = 90
[relay.server]
max_connections = 8
[prober]
period_s = 5
[[churners]]
nodes = 4
loops_per_node = 4
start_s = 1
stop_s = 40
idle_hold_s = [20, 120]
[oracles]
probe_liveness = {}
conn_accounting = { settle_s = 30 }
"#;

#[test]
fn check_exits_0_for_valid_files_and_2_with_the_position_of_an_error() {
    let dir = scratch_dir("cli-check");
    std::fs::write(dir.join("ok.toml"), TINY).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        TINY.replace("idle_hold_s", "idle_hold"),
    )
    .unwrap();
    let ok = windtunnel(&["check", "ok.toml"], &dir);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "ok ok.toml (tiny_churn)\n");
    let bad = windtunnel(&["check", "ok.toml", "bad.toml"], &dir);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).starts_with("bad.toml:12:1: unknown field `idle_hold`"),
        "{}",
        stderr(&bad)
    );
}

#[cfg(not(madsim))]
#[test]
fn without_the_simulator_a_madsim_scenario_says_how_to_run_it() {
    let dir = scratch_dir("cli-nosim");
    std::fs::write(dir.join("ok.toml"), TINY).unwrap();
    std::fs::create_dir_all(dir.join("recorded")).unwrap();
    std::fs::write(dir.join("recorded/scenario.toml"), TINY).unwrap();
    for args in [
        &["run", "ok.toml"][..],
        &["sweep", "ok.toml"],
        &["replay", "recorded"],
        &["shrink", "ok.toml", "--seed", "1"],
    ] {
        let output = windtunnel(args, &dir);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(
                "runs on madsim, which this build does not have; use `cargo sim <command> …`"
            ),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

/// `run --real --relay-cmd`: the black box's command runs through the shell, what the run
/// cannot judge from outside is said before it starts, a relay that dies before it serves
/// fails the run quoting its output, and the flag does not go with `--relay-bin`.
#[cfg(not(madsim))]
#[test]
fn a_black_box_relay_command_is_run_and_what_is_not_judged_is_said() {
    let dir = scratch_dir("cli-black-box");
    std::fs::write(
        dir.join("bb.toml"),
        "name = \"bb\"\nduration_s = 5\n[upstreams]\nhosts = 2\n\
         [prober]\npath = \"/_healthz\"\ninitial_delay_s = 1\nperiod_s = 1\ntimeout_s = 1\n\
         failure_threshold = 3\n[oracles]\nprobe_liveness = {}\n\
         hosts_connected_min = { fraction = 1.0, by_s = 5 }\n",
    )
    .unwrap();
    let dead = windtunnel(
        &[
            "run",
            "--real",
            "--relay-cmd",
            "echo listening on {addr} in {dir}; exit 3",
            "bb.toml",
        ],
        &dir,
    );
    assert_eq!(dead.status.code(), Some(1), "{}", stderr(&dead));
    let said = stderr(&dead);
    assert!(
        said.contains(
            "bb.toml: black box: the prober asks /xrpc/_health instead of /_healthz \
             (any relay's liveness)"
        ) && said.contains(
            "bb.toml: black box: hosts_connected_min is not judged: it reads the relay's /metrics"
        ),
        "{said}"
    );
    let report = stdout(&dead);
    assert!(
        report.contains("exited before it served (exit status: 3)")
            && report.contains("listening on 127.0.0.1:"),
        "{report}"
    );
    let both = windtunnel(
        &[
            "run",
            "--real",
            "--relay-cmd",
            "true",
            "--relay-bin",
            "relay",
            "bb.toml",
        ],
        &dir,
    );
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
}

#[cfg(madsim)]
mod simulated {
    use super::*;

    /// TINY with the idle reaper disabled: silent clients pin slots, conn_accounting fails.
    fn broken() -> String {
        TINY.replace(
            "max_connections = 8\n",
            "max_connections = 8\nidle_timeout_ms = 3600000\nheader_read_timeout_ms = 3600000\n",
        )
    }

    #[test]
    fn run_replay_and_shrink_a_failure_through_the_binary() {
        let dir = scratch_dir("cli-failure");
        std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
        let pass = windtunnel(&["run", "tiny.toml", "--seed", "1"], &dir);
        assert_eq!(pass.status.code(), Some(0), "{}", stdout(&pass));
        assert!(stdout(&pass).starts_with("PASSED tiny_churn seed=0x1 hash=0x"));
        assert!(!dir.join("artifacts").exists());

        std::fs::write(dir.join("tiny.toml"), broken()).unwrap();
        let fail = windtunnel(&["run", "tiny.toml", "--seed", "1"], &dir);
        let text = stdout(&fail);
        assert_eq!(fail.status.code(), Some(1), "{text}");
        assert!(
            text.starts_with("FAILED tiny_churn seed=0x1 oracle=conn_accounting at t="),
            "{text}"
        );
        assert!(text.contains("\n  replay: cargo sim run tiny.toml --seed 0x1\n"));
        assert!(text.contains("\n  artifacts: artifacts/tiny_churn-seed0x1 ("));
        let artifact = dir.join("artifacts/tiny_churn-seed0x1");
        for file in [
            "meta.json",
            "scenario.toml",
            "trace.jsonl",
            "report.txt",
            "logs.txt",
            "timeline.svg",
        ] {
            assert!(artifact.join(file).is_file(), "{file}");
        }

        let replay = windtunnel(&["replay", "artifacts/tiny_churn-seed0x1"], &dir);
        assert_eq!(replay.status.code(), Some(0), "{}", stdout(&replay));
        assert!(
            stdout(&replay).starts_with("REPLAYED tiny_churn seed=0x1: trace identical"),
            "the verdict comes first: {}",
            stdout(&replay)
        );

        // A recorded trace from "another build": replay must fail and name the record.
        let trace = std::fs::read_to_string(artifact.join("trace.jsonl")).unwrap();
        let mut lines: Vec<String> = trace.lines().map(str::to_owned).collect();
        lines[10] = lines[10].replacen("\"t_us\":", "\"t_us\":1", 1);
        std::fs::write(artifact.join("trace.jsonl"), lines.join("\n") + "\n").unwrap();
        let diverged = windtunnel(&["replay", "artifacts/tiny_churn-seed0x1"], &dir);
        assert_eq!(diverged.status.code(), Some(1));
        assert!(
            stdout(&diverged).contains("REPLAY DIVERGED tiny_churn seed=0x1")
                && stdout(&diverged).contains("first divergent record: #10 "),
            "{}",
            stdout(&diverged)
        );

        let shrink = windtunnel(
            &["shrink", "tiny.toml", "--seed", "1", "--max-runs", "12"],
            &dir,
        );
        assert_eq!(shrink.status.code(), Some(1), "{}", stdout(&shrink));
        assert!(stdout(&shrink).contains("SHRUNK tiny_churn seed=0x1 still fails conn_accounting"));
        let rerun = windtunnel(
            &[
                "run",
                "artifacts/tiny_churn-seed0x1/shrunk.toml",
                "--seed",
                "1",
            ],
            &dir,
        );
        assert_eq!(rerun.status.code(), Some(1));
        assert!(
            stdout(&rerun).starts_with("FAILED tiny_churn_shrunk seed=0x1 oracle=conn_accounting"),
            "{}",
            stdout(&rerun)
        );
    }

    #[test]
    fn sweep_prints_plain_progress_a_summary_and_fails_if_any_seed_failed() {
        let dir = scratch_dir("cli-sweep");
        std::fs::create_dir_all(dir.join("scenarios")).unwrap();
        std::fs::write(dir.join("scenarios/a_tiny.toml"), TINY).unwrap();
        std::fs::write(
            dir.join("scenarios/b_broken.toml"),
            broken().replace("\"tiny_churn\"", "\"tiny_broken\""),
        )
        .unwrap();
        let output = windtunnel(
            &[
                "sweep",
                "scenarios",
                "--seeds",
                "3",
                "--shard",
                "2/2",
                "--jobs",
                "2",
                "--junit",
                "reports/sweep.xml",
            ],
            &dir,
        );
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("junit: reports/sweep.xml"), "{text}");
        // stderr is not a terminal here: one plain line per seed, no progress bar.
        let progress: Vec<String> = stderr(&output)
            .lines()
            .filter(|l| l.starts_with('['))
            .map(str::to_owned)
            .collect();
        assert_eq!(progress.len(), 3, "{progress:?}");
        assert!(progress.iter().any(|l| l.starts_with("[3/3] ")));
        let summary =
            std::fs::read_to_string(dir.join("artifacts/sweep-summary-2-of-2.txt")).unwrap();
        assert!(text.contains(&summary));
        assert!(
            summary.starts_with("FAILED sweep (shard 2/2): 2 scenarios, 3 seeds, "),
            "{summary}"
        );
        let broken_row = summary
            .lines()
            .find(|l| l.starts_with("tiny_broken"))
            .unwrap();
        assert!(
            broken_row.ends_with(": cargo sim run scenarios/b_broken.toml --seed 0x1"),
            "{broken_row}"
        );
        // The same outcomes as JUnit: one test case per seed, the broken scenario's failing.
        let junit = std::fs::read_to_string(dir.join("reports/sweep.xml")).unwrap();
        let document = roxmltree::Document::parse(&junit).expect("well-formed JUnit XML");
        let cases: Vec<_> = document
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 3, "{junit}");
        let failed: Vec<_> = cases
            .iter()
            .filter(|case| case.children().any(|n| n.has_tag_name("failure")))
            .map(|case| case.attribute("classname").unwrap())
            .collect();
        assert!(!failed.is_empty(), "{junit}");
        assert!(
            failed.iter().all(|&name| name == "windtunnel.tiny_broken"),
            "{junit}"
        );

        let passing = windtunnel(&["sweep", "scenarios/a_tiny.toml", "--seeds", "2"], &dir);
        assert_eq!(passing.status.code(), Some(0), "{}", stdout(&passing));
    }
}
