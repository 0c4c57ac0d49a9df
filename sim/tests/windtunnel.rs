//! The wind tunnel's system-boundary tests. The plain part (parsing, validation, reports)
//! runs under ordinary `cargo test`; the `simulated` module runs worlds and needs the
//! simulation build (`cargo sim-test`).

use std::path::{Path, PathBuf};

use windtunnel::oracle::OracleName;
use windtunnel::scenario::{Expect, Scenario, ScenarioError};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn load(name: &str) -> Scenario {
    Scenario::load(&scenarios_dir().join(name)).unwrap_or_else(|error| panic!("{error}"))
}

fn parse_error(text: &str) -> String {
    match Scenario::parse(Path::new("bad.toml"), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(error) => error.to_string(),
    }
}

const MINIMAL: &str = "name = \"x\"\nduration_s = 60\n[oracles]\n";

#[test]
fn every_shipped_scenario_loads() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = Scenario::load(&path).unwrap_or_else(|error| panic!("{error}"));
            names.push(scenario.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "bad_input",
            "churn_idle_reaper",
            "churn_idle_reaper_disabled",
            "churn_max_connections",
            "close_recv_race",
            "cold_start_2800",
            "cold_start_jitter_only",
            "cold_start_thundering_herd",
            "db_fault",
            "db_fault_liveness_watchdog",
            "db_fault_long",
            "db_fault_slow_retry",
            "gc_stall",
            "gc_stall_unbatched",
            "handler_timeout",
            "handler_timeout_too_long",
            "host_blink",
            "host_dormancy",
            "host_flap",
            "hostile_upstreams",
            "hostile_upstreams_unlimited",
            "ingest_backpressure",
            "keepalive_dispatch",
            "keepalive_dispatch_concurrent",
            "memory_pressure",
            "memory_pressure_unguarded",
            "network_blip",
            "panic_isolation",
            "power_loss",
            "restart_during_store_fault",
            "restart_resume",
            "slow_consumer",
            "slow_consumer_unbounded_queue",
            "store_stall",
            "turmoil_backlog_churn",
            "turmoil_close_recv_race"
        ]
    );
}

#[test]
fn expectations_are_parsed() {
    assert_eq!(load("churn_max_connections.toml").expect, Expect::Pass);
    assert_eq!(
        load("churn_idle_reaper_disabled.toml").expect,
        Expect::Fail(OracleName::ConnAccounting)
    );
}

#[test]
fn unknown_top_level_key_reports_line_and_column() {
    let message = parse_error("name = \"x\"\nduraton_s = 60\n[oracles]\n");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines[0], "bad.toml:1:1: missing field `duration_s`");
    assert!(
        lines[1].starts_with("bad.toml:2:1: unknown field `duraton_s`, expected one of"),
        "{message}"
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_its_key() {
    let text = "name = \"x\"\n\
                duration_s = 30\n\
                [relay.server]\n\
                max_conections = 3\n\
                [upstreams]\n\
                hosts = -10\n\
                [[faults]]\n\
                kind = \"meteor\"\n\
                at_s = 10\n\
                [[faults]]\n\
                kind = \"clog\"\n\
                at_s = \"ten\"\n\
                duration_s = 5\n\
                [oracles]\n\
                probe_lively = {}\n";
    let located: Vec<String> = parse_error(text).lines().map(str::to_owned).collect();
    assert_eq!(
        located,
        [
            "bad.toml:4:1: unknown field `max_conections`, expected one of `listen`, `max_connections`, `header_read_timeout_ms`, `idle_timeout_ms`, `idle_check_interval_ms`, `max_header_bytes`, `drain_timeout_ms`, `shutdown_grace_ms`, `refusal_lane_max`, `refusal_read_timeout_ms`, `retry_after_s`, `handler_timeout_ms`, `dispatch`, `date_header`",
            "bad.toml:6:9: invalid value: integer `-10`, expected a non-negative integer",
            "bad.toml:8:8: unknown variant `meteor`, expected one of `partition`, `clog`, `latency`, `kill_relay`, `power_loss`, `restart_relay`, `store_fault`, `store_stall`, `handler_panic`, `handler_stall`",
            "bad.toml:10:1: invalid type: string \"ten\", expected a non-negative integer",
            "bad.toml:15:1: unknown field `probe_lively`, expected one of `probe_liveness`, `probe_latency_max`, `conn_accounting`, `no_panics`, `faults_fired`, `hosts_connected_min`, `handshakes_bounded`, `workers_bounded`, `no_host_forgotten`, `no_lost_events`, `slow_consumers_kicked`, `memory_bounded`, `recovery_within`, `delivery_gap_max`, `no_stale_delivery`, `consumer_accounting`, `panics_contained`, `calls_answered`, `handlers_in_flight_max`, `bad_input_rejected`, `bad_hosts_isolated`, `fair_share`",
        ]
    );
    let semantic = "name = \"x\"\n\
                    duration_s = 30\n\
                    [upstreams]\n\
                    hosts = 10\n\
                    [[faults]]\n\
                    kind = \"partition\"\n\
                    at_s = 10\n\
                    duration_s = 40\n\
                    hosts_fraction = 0.5\n\
                    [[faults]]\n\
                    kind = \"restart_relay\"\n\
                    at_s = 10\n\
                    down_s = 0\n\
                    [oracles]\n\
                    probe_liveness = {}\n";
    assert_eq!(
        parse_error(semantic),
        "bad.toml:8:1: faults[0].duration_s: expected the fault to end by duration_s (30s), it ends at 50s\n\
         bad.toml:13:1: faults[1].down_s: expected down_s >= 1\n\
         bad.toml:15:1: oracles.probe_liveness: probe_liveness needs a [prober] table"
    );
    let duplicate = parse_error("name = \"x\"\nname = \"y\"\nduration_s = 30\n[oracles]\n");
    assert_eq!(duplicate, "bad.toml:2:1: duplicate key `name`");
}

#[test]
fn unknown_relay_key_is_caught_by_the_relay_schema_with_its_position() {
    let message = parse_error(&format!("{MINIMAL}[relay.server]\nmax_conections = 3\n"));
    assert!(
        message.starts_with("bad.toml:5:1: unknown field `max_conections`"),
        "{message}"
    );
}

#[test]
fn inverted_range_reports_what_was_expected() {
    let text = format!(
        "{MINIMAL}[[churners]]\nnodes = 1\nloops_per_node = 1\nstop_s = 10\nthink_ms = [50, 10]\n"
    );
    let message = parse_error(&text);
    assert!(
        message.starts_with("bad.toml:8:12: expected [min, max] with min <= max, got [50, 10]"),
        "{message}"
    );
}

#[test]
fn unknown_oracle_and_bad_expectation_are_rejected() {
    let message = parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nprobe_lively = {}\n");
    assert!(
        message.starts_with("bad.toml:4:1: unknown field `probe_lively`"),
        "{message}"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\nexpect = { fail = \"nope\" }\n[oracles]\n");
    assert!(
        message.starts_with("bad.toml:3:19: unknown variant `nope`"),
        "{message}"
    );
}

#[test]
fn semantic_errors_name_the_key() {
    let churner_past_end =
        format!("{MINIMAL}[[churners]]\nnodes = 1\nloops_per_node = 1\nstop_s = 61\n");
    assert_eq!(
        parse_error(&churner_past_end),
        "bad.toml:7:1: churners[0].stop_s: expected start_s (0) < stop_s (61) <= duration_s (60)"
    );
    assert_eq!(
        parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nprobe_liveness = {}\n"),
        "bad.toml:4:1: oracles.probe_liveness: probe_liveness needs a [prober] table"
    );
    assert_eq!(
        parse_error(
            "name = \"x\"\nduration_s = 60\nexpect = { fail = \"conn_accounting\" }\n[oracles]\n"
        ),
        "bad.toml:3:1: expect: expects conn_accounting to fail, but [oracles] does not check it"
    );
    assert_eq!(
        parse_error(&format!("{MINIMAL}[relay.server]\nmax_connections = 0\n")),
        "bad.toml:5:1: relay.server.max_connections: invalid configuration: server.max_connections must be at least 1"
    );
    let unknown_probe =
        parse_error("name = \"x\"\nduration_s = 60\nreach = [\"upstream.dormnat\"]\n[oracles]\n");
    assert!(
        unknown_probe.starts_with(
            "bad.toml:3:1: reach: unknown probe \"upstream.dormnat\"; expected one of admission.at_capacity, "
        ),
        "{unknown_probe}"
    );
    assert_eq!(
        parse_error(
            "name = \"x\"\nduration_s = 60\nengine = \"turmoil\"\nreach = [\"upstream.dormant\"]\n[oracles]\n"
        ),
        "bad.toml:4:1: reach: expected no reach on this engine: the relay's probes are counted only under madsim"
    );
}

#[test]
fn upstream_and_fault_tables_are_validated() {
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\nflaky_fraction = 1.5\n"
    ));
    assert_eq!(
        message,
        "bad.toml:6:1: upstreams.flaky_fraction: expected a fraction within 0..=1"
    );
    let message = parse_error(&format!("{MINIMAL}[upstreams]\nhost = 10\n"));
    assert!(
        message.starts_with("bad.toml:5:1: unknown field `host`"),
        "{message}"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\n[[faults]]\nkind = \"meteor\"\nat_s = 1\n"
    ));
    assert!(
        message.starts_with("bad.toml:7:8: unknown variant `meteor`, expected one of `partition`, `clog`, `latency`, `kill_relay`, `power_loss`, `restart_relay`, `store_fault`, `store_stall`, `handler_panic`, `handler_stall`"),
        "{message}"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"partition\"\nat_s = 1\nduration_s = 5\nhosts_fraction = 0.5\n"
    ));
    assert_eq!(
        message,
        "bad.toml:5:1: faults[0].kind: a partition needs [upstreams]"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"latency\"\nat_s = 1\nduration_s = 5\nlatency_ms = [90, 10]\n"
    ));
    assert_eq!(
        message,
        "bad.toml:4:1: expected [min, max] with min <= max, got [90, 10]"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"clog\"\nat_s = 1\nduration_s = 0\n"
    ));
    assert_eq!(
        message,
        "bad.toml:7:1: faults[0].duration_s: expected duration_s >= 1"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[[callers]]\npath = \"hosts\"\n[oracles]\n");
    assert_eq!(
        message,
        "bad.toml:4:1: callers[0].path: expected a path starting with '/'"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[[abusers]]\nkind = \"smurf\"\n[oracles]\n");
    assert!(
        message.starts_with("bad.toml:4:8: unknown variant `smurf`, expected one of `slowloris`"),
        "{message}"
    );
    let message = parse_error(
        "name = \"x\"\nduration_s = 60\n[[abusers]]\nkind = \"garbage\"\nstart_s = 60\n[oracles]\n",
    );
    assert_eq!(
        message,
        "bad.toml:5:1: abusers[0].start_s: expected start_s < duration_s"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nbad_input_rejected = {}\n");
    assert_eq!(
        message,
        "bad.toml:4:1: oracles.bad_input_rejected: bad_input_rejected needs [[abusers]]"
    );
    let message = parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nno_host_forgotten = {}\n");
    assert_eq!(
        message,
        "bad.toml:4:1: oracles.no_host_forgotten: no_host_forgotten needs an [upstreams] table"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let error = Scenario::load(Path::new("no/such/scenario.toml")).unwrap_err();
    assert!(matches!(error, ScenarioError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("no/such/scenario.toml: cannot read:"),
        "{error}"
    );
}

/// The turmoil engine's scenarios, in the ordinary build (no cfg flags): each passes, and
/// runs to the same trace twice.
#[cfg(not(madsim))]
mod turmoil_engine {
    use super::*;
    use windtunnel::oracle::Verdict;
    use windtunnel::trace::Event;
    use windtunnel::worlds::turmoil::Turmoil;
    use windtunnel::worlds::Engine;

    fn passes_twice_alike(file: &str, seed: u64) -> windtunnel::trace::Trace {
        let scenario = load(file);
        let [first, second] = [seed, seed].map(|seed| Turmoil.run(&scenario, seed, None));
        assert_eq!(
            first.verdict,
            Verdict::Passed,
            "{file} seed {seed}: {:?}",
            first.violations
        );
        assert_eq!(
            first.trace.hash(),
            second.trace.hash(),
            "{file} seed {seed}: two runs differ"
        );
        first.trace
    }

    #[test]
    fn backlog_churn_passes_and_is_deterministic() {
        let trace = passes_twice_alike("turmoil_backlog_churn.toml", 1);
        let half_closed_ok = trace
            .records()
            .iter()
            .filter(|r| {
                matches!(
                    r.event,
                    Event::Churn {
                        action: windtunnel::trace::ChurnAction::HalfClose,
                        requests_ok: 1,
                        ..
                    }
                )
            })
            .count();
        assert!(
            half_closed_ok > 100,
            "only {half_closed_ok} half-closed requests were answered"
        );
    }

    #[test]
    fn close_recv_race_passes_and_is_deterministic() {
        let trace = passes_twice_alike("turmoil_close_recv_race.toml", 1);
        let restarted = trace.records().iter().any(|r| {
            matches!(&r.event, Event::Fault { kind, active: false, .. } if kind == "restart_relay")
        });
        assert!(restarted, "the relay never came back from its restart");
    }
}

/// Real mode: the same actors on real tokio and loopback TCP against the relay as a child
/// process (this package's windtunnel binary running the relay's command line), judged by
/// the same oracles (a small world, 18 real seconds, a graceful restart and a SIGKILL).
#[cfg(not(madsim))]
#[test]
fn real_mode_runs_the_actors_against_the_relay_and_judges_them() {
    use windtunnel::oracle::Verdict;
    use windtunnel::trace::Event;
    use windtunnel::worlds::real::process::RelayProgram;
    let scenario = Scenario::parse(
        Path::new("real.toml"),
        r#"name = "real"
duration_s = 18
[relay.server]
shutdown_grace_ms = 2000
drain_timeout_ms = 500
[relay.upstream]
startup_jitter_ms = 500
backoff_base_ms = 200
backoff_cap_ms = 1000
[upstreams]
hosts = 10
handshake_latency_ms = [5, 20]
event_interval_s = [1, 1]
[prober]
path = "/_readyz"
initial_delay_s = 1
period_s = 1
timeout_s = 1
failure_threshold = 4
[[consumers]]
name = "fast"
count = 2
kind = "fast"
start_s = 2
stop_s = 16
[[faults]]
kind = "restart_relay"
at_s = 6
down_s = 1
[[faults]]
kind = "kill_relay"
at_s = 10
down_s = 1
[oracles]
probe_liveness = {}
no_stale_delivery = {}
no_lost_events = { lag_s = 4 }
consumer_accounting = { settle_s = 2 }
no_panics = {}
"#,
    )
    .unwrap();
    assert!(windtunnel::scenario::REAL.problems(&scenario).is_empty());
    let relay = RelayProgram::windtunnel(env!("CARGO_BIN_EXE_windtunnel"));
    let run = windtunnel::worlds::real::run(&scenario, 1, None, &relay);
    assert_eq!(
        run.verdict,
        Verdict::Passed,
        "{:?}\n{}",
        run.violations,
        run.logs.unwrap_or_default()
    );
    // Three incarnations (start, restart, after the kill), each scraped.
    let samples = run
        .trace
        .records()
        .iter()
        .filter(|r| matches!(r.event, Event::RelaySample { .. }))
        .count();
    assert!(
        samples >= 12,
        "only {samples} scrapes of /metrics were recorded"
    );
    let incarnations = run.trace.records().iter().find_map(|r| match r.event {
        Event::RelayProcess {
            incarnations,
            peak_rss_bytes,
            ..
        } if peak_rss_bytes > 0 => Some(incarnations),
        _ => None,
    });
    assert_eq!(
        incarnations,
        Some(3),
        "start, restart, start after the kill"
    );
    let frames: u64 = run
        .trace
        .records()
        .iter()
        .filter_map(|r| match r.event {
            Event::ConsumerFinal { frames, .. } => Some(frames),
            _ => None,
        })
        .sum();
    assert!(frames > 100, "the consumers saw only {frames} frames");
}

#[cfg(not(madsim))]
#[test]
fn real_mode_refuses_what_a_loopback_cannot_play() {
    use windtunnel::scenario::REAL;
    use windtunnel::worlds::real::process::RelayProgram;
    let with_fault = |fault: &str| {
        Scenario::parse(
            Path::new("real.toml"),
            &format!("{MINIMAL}\n[upstreams]\nhosts = 4\n\n[[faults]]\n{fault}\n"),
        )
        .unwrap()
    };
    let partition =
        with_fault("kind = \"partition\"\nat_s = 1\nduration_s = 1\nhosts_fraction = 0.5");
    let refused = |scenario: &Scenario| -> Vec<String> {
        REAL.problems(scenario)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        refused(&partition),
        [
            "faults[0].kind: expected no partition fault with --real (a real loopback network has \
          no partitions, clogs or latency control)"
        ]
    );
    let stall = with_fault("kind = \"handler_stall\"\nat_s = 1\nduration_s = 1");
    let [reason] = &refused(&stall)[..] else {
        panic!("{:?}", refused(&stall));
    };
    assert!(reason.contains("fault points"), "{reason}");
    let kill = with_fault("kind = \"kill_relay\"\nat_s = 1\ndown_s = 1");
    assert_eq!(refused(&kill), Vec::<String>::new());
    // A relay that cannot start is a clear failure of the run, not a hang.
    let missing = RelayProgram::binary("/nonexistent/relay");
    let run = windtunnel::worlds::real::run(&kill, 1, None, &missing);
    let panic = run
        .trace
        .records()
        .iter()
        .find_map(|r| match &r.event {
            windtunnel::trace::Event::Panic { message } => Some(message.clone()),
            _ => None,
        })
        .expect("the failure is recorded");
    assert!(
        panic.contains("cannot start the relay (/nonexistent/relay)"),
        "{panic}"
    );
}

#[cfg(madsim)]
mod simulated {
    use super::*;
    use windtunnel::oracle::Verdict;
    use windtunnel::worlds::madsim::Madsim;
    use windtunnel::worlds::{Engine, SeedRun};

    /// Run `seeds` on two worker threads (one madsim runtime per run), in seed order.
    fn run_seeds(scenario: &Scenario, seeds: std::ops::RangeInclusive<u64>) -> Vec<(u64, SeedRun)> {
        let seeds: Vec<u64> = seeds.collect();
        let halves = seeds.split_at(seeds.len() / 2);
        let mut outcomes: Vec<(u64, SeedRun)> = std::thread::scope(|scope| {
            let workers = [halves.0, halves.1].map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| (seed, Madsim.run(scenario, seed, None)))
                        .collect::<Vec<_>>()
                })
            });
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap())
                .collect()
        });
        outcomes.sort_by_key(|(seed, _)| *seed);
        outcomes
    }

    #[test]
    fn churn_max_connections_passes_for_50_seeds() {
        for (seed, _, outcome) in passes("churn_max_connections.toml", 1..=50) {
            let samples = outcome
                .trace
                .records()
                .iter()
                .filter(|r| matches!(r.event, windtunnel::trace::Event::RelaySample { .. }))
                .count();
            assert!(
                samples >= 170,
                "seed {seed}: the monitor sampled only {samples} times"
            );
        }
    }

    #[test]
    fn churn_reaches_the_connection_limit_and_gets_refusals() {
        // The scenario is only meaningful if the churn really exceeds max_connections.
        let scenario = load("churn_max_connections.toml");
        let outcome = Madsim.run(&scenario, 3, None);
        let summary = windtunnel::report::Summary::of(&outcome.trace);
        let (high_water, max, _, refused) = summary.relay_last.unwrap();
        assert_eq!(high_water, max);
        assert!(refused > 1_000, "only {refused} refusals");
        assert!(summary.churn_refused > 0, "no churner ever saw a 503");
    }

    #[test]
    fn disabled_idle_reaping_fails_conn_accounting_for_20_seeds() {
        let scenario = load("churn_idle_reaper_disabled.toml");
        for (seed, outcome) in run_seeds(&scenario, 1..=20) {
            match &outcome.verdict {
                Verdict::FailedAsExpected(violation) => {
                    assert_eq!(violation.oracle, OracleName::ConnAccounting);
                    assert!(
                        violation.message.contains("did not return to baseline"),
                        "{violation}"
                    );
                }
                other => panic!("seed {seed}: expected conn_accounting to fail, got {other:?}"),
            }
            let others: Vec<_> = outcome
                .violations
                .iter()
                .filter(|v| v.oracle != OracleName::ConnAccounting)
                .collect();
            assert!(
                others.is_empty(),
                "seed {seed}: only conn_accounting should fail: {others:?}"
            );
        }
    }

    #[test]
    fn cold_start_2800_keeps_probes_alive_and_connects_the_live_hosts_for_20_seeds() {
        let scenario = load("cold_start_2800.toml");
        for (seed, outcome) in run_seeds(&scenario, 1..=20) {
            assert_eq!(
                outcome.verdict,
                Verdict::Passed,
                "seed {seed}: {:?}",
                outcome.violations
            );
            let summary = windtunnel::report::Summary::of(&outcome.trace);
            let last = summary.upstream_last.unwrap();
            assert_eq!(last.hosts, 2_800, "seed {seed}");
            assert_eq!(
                last.handshakes_high_water, 32,
                "seed {seed}: the cap was reached, not just respected"
            );
        }
    }

    #[test]
    fn cold_start_thundering_herd_fails_probe_liveness_for_20_seeds() {
        let scenario = load("cold_start_thundering_herd.toml");
        for (seed, outcome) in run_seeds(&scenario, 1..=20) {
            match &outcome.verdict {
                Verdict::FailedAsExpected(violation) => {
                    assert_eq!(violation.oracle, OracleName::ProbeLiveness, "seed {seed}");
                    assert!(
                        violation.t_us < 60_000_000,
                        "seed {seed}: starvation is a cold-start effect: {violation}"
                    );
                }
                other => panic!("seed {seed}: expected probe_liveness to fail, got {other:?}"),
            }
        }
    }

    #[test]
    fn host_flap_recovers_every_host_after_the_faults_for_20_seeds() {
        let scenario = load("host_flap.toml");
        for (seed, outcome) in run_seeds(&scenario, 1..=20) {
            assert_eq!(
                outcome.verdict,
                Verdict::Passed,
                "seed {seed}: {:?}",
                outcome.violations
            );
            let summary = windtunnel::report::Summary::of(&outcome.trace);
            let during_faults = summary.upstream_connected_min_during_faults.unwrap();
            assert!(
                during_faults + 50 < summary.upstream_connected_max,
                "seed {seed}: the faults must cut hosts off (fewest {during_faults}, most {})",
                summary.upstream_connected_max
            );
        }
    }

    #[test]
    fn slow_consumer_kicks_the_slow_and_loses_nothing_for_the_rest_for_20_seeds() {
        for (seed, summary, _) in passes("slow_consumer.toml", 1..=20) {
            let events = summary.events_last.unwrap();
            assert!(
                events.head_seq > 10_000 && summary.consumer_frames > 5 * events.head_seq,
                "seed {seed}: the consumers must actually carry the stream: {summary:?}"
            );
            assert!(summary.consumer_too_slow >= 2, "seed {seed}: {summary:?}");
        }
    }

    #[test]
    fn an_unbounded_consumer_queue_fails_memory_bounded() {
        let scenario = load("slow_consumer_unbounded_queue.toml");
        for (seed, outcome) in run_seeds(&scenario, 1..=6) {
            match &outcome.verdict {
                Verdict::FailedAsExpected(violation) => {
                    assert_eq!(violation.oracle, OracleName::MemoryBounded, "seed {seed}");
                }
                other => panic!("seed {seed}: expected memory_bounded to fail, got {other:?}"),
            }
        }
    }

    /// Whether a relay sample in `t_us` found the event log not ready (a commit failing or
    /// hanging).
    fn readiness_off_between(outcome: &SeedRun, t_us: std::ops::Range<u64>) -> bool {
        outcome.trace.records().iter().any(|record| {
            t_us.contains(&record.t_us)
                && matches!(record.event, windtunnel::trace::Event::RelaySample { events, .. } if !events.store_healthy)
        })
    }

    /// Every seed passes; returns the summaries for scenario-specific checks.
    fn passes(
        name: &str,
        seeds: std::ops::RangeInclusive<u64>,
    ) -> Vec<(u64, windtunnel::report::Summary, SeedRun)> {
        let scenario = load(name);
        let results: Vec<_> = run_seeds(&scenario, seeds)
            .into_iter()
            .map(|(seed, outcome)| {
                assert_eq!(
                    outcome.verdict,
                    Verdict::Passed,
                    "{name} seed {seed}: {:?}",
                    outcome.violations
                );
                (
                    seed,
                    windtunnel::report::Summary::of(&outcome.trace),
                    outcome,
                )
            })
            .collect();
        // Every probe the scenario declares in `reach` is reached by at least one seed.
        for probe in &scenario.reach {
            assert!(
                results
                    .iter()
                    .any(|(_, _, outcome)| outcome.reached.contains_key(probe.as_str())),
                "{name}: no seed reached the probe {probe:?} its reach declares"
            );
        }
        results
    }

    /// Every seed fails `oracle`, as the scenario expects.
    fn fails_as_expected(name: &str, seeds: std::ops::RangeInclusive<u64>, oracle: OracleName) {
        let scenario = load(name);
        for (seed, outcome) in run_seeds(&scenario, seeds) {
            match &outcome.verdict {
                Verdict::FailedAsExpected(violation) => {
                    assert_eq!(violation.oracle, oracle, "{name} seed {seed}")
                }
                other => panic!("{name} seed {seed}: expected {oracle} to fail, got {other:?}"),
            }
        }
    }

    #[test]
    fn power_loss_never_reuses_a_relay_seq_for_20_seeds() {
        for (seed, _, outcome) in passes("power_loss.toml", 1..=20) {
            let cut_while_up = outcome.trace.records().iter().any(|record| {
                matches!(&record.event, windtunnel::trace::Event::Fault { kind, active: false, effect: 1, .. } if kind == "power_loss")
            });
            assert!(
                cut_while_up,
                "seed {seed}: the power must go while the relay is up"
            );
        }
    }

    #[test]
    fn restart_resume_loses_nothing_across_a_kill_and_a_graceful_restart_for_20_seeds() {
        for (seed, summary, outcome) in passes("restart_resume.toml", 1..=20) {
            assert_eq!(summary.relay_faults, 2, "seed {seed}");
            let resumed = outcome.trace.records().iter().any(|record| {
                record.t_us > 40_000_000
                    && matches!(record.event, windtunnel::trace::Event::Subscribed { cursor } if cursor > 0)
            });
            assert!(
                resumed,
                "seed {seed}: upstreams must be resumed by cursor after the kill"
            );
            let (events, head, _, _) = summary.store_audit.unwrap();
            assert!(events > 5_000 && events == head, "seed {seed}: {summary:?}");
        }
    }

    #[test]
    fn db_fault_turns_readiness_off_then_recovers_without_loss_for_20_seeds() {
        for (seed, _, outcome) in passes("db_fault.toml", 1..=20) {
            assert!(
                readiness_off_between(&outcome, 41_000_000..60_000_000),
                "seed {seed}: the fault must bite (readiness off)"
            );
        }
    }

    #[test]
    fn store_stall_keeps_liveness_and_reports_not_ready_for_20_seeds() {
        for (seed, _, outcome) in passes("store_stall.toml", 1..=20) {
            assert!(
                readiness_off_between(&outcome, 46_000_000..100_000_000),
                "seed {seed}: readiness must report the stalled store"
            );
        }
    }

    #[test]
    fn db_fault_long_recovers_within_the_window_after_a_30_s_outage_for_20_seeds() {
        passes("db_fault_long.toml", 1..=20);
    }

    #[test]
    fn ingest_backpressure_holds_the_byte_bound_and_loses_nothing_for_20_seeds() {
        for (seed, _, outcome) in passes("ingest_backpressure.toml", 1..=20) {
            let ingest_high_water = outcome
                .trace
                .records()
                .iter()
                .filter_map(|record| match record.event {
                    windtunnel::trace::Event::RelaySample { memory, .. } => {
                        Some(memory.ingest_high_water_bytes)
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            assert!(
                ingest_high_water > 1024 * 1024 * 3 / 4,
                "seed {seed}: the outage must fill the byte bound (high water {ingest_high_water})"
            );
        }
    }

    #[test]
    fn host_dormancy_retries_dormant_hosts_until_every_one_is_back_for_20_seeds() {
        for (seed, _, outcome) in passes("host_dormancy.toml", 1..=20) {
            let dormant_at_some_point = outcome.trace.records().iter().any(|record| {
                matches!(record.event, windtunnel::trace::Event::RelaySample { upstreams, .. } if upstreams.hosts_dormant > 0)
            });
            assert!(
                dormant_at_some_point,
                "seed {seed}: some host must turn dormant, or the scenario tests nothing"
            );
        }
    }

    #[test]
    fn consumers_receive_only_what_the_log_keeps_across_a_kill_during_store_failures_for_20_seeds()
    {
        for (seed, _, outcome) in passes("restart_during_store_fault.toml", 1..=20) {
            let compared = outcome.trace.records().iter().any(|record| {
                matches!(
                    record.event,
                    windtunnel::trace::Event::ConsumerFinal {
                        log_agrees: Some(true),
                        ..
                    }
                )
            });
            assert!(
                compared,
                "seed {seed}: no consumer's deliveries were compared with the log"
            );
        }
    }

    #[test]
    fn short_outages_never_add_up_to_dormancy_for_20_seeds() {
        for (seed, _, outcome) in passes("host_blink.toml", 1..=20) {
            assert!(
                !outcome.reached.contains_key("upstream.dormant"),
                "seed {seed}: a host turned dormant"
            );
        }
    }

    #[test]
    fn the_startup_jitter_alone_keeps_probes_alive_for_6_seeds() {
        passes("cold_start_jitter_only.toml", 1..=6);
    }

    #[test]
    fn the_idle_reaper_alone_frees_silent_holders_for_20_seeds() {
        passes("churn_idle_reaper.toml", 1..=20);
    }

    #[test]
    fn every_hostile_host_costs_only_itself_for_20_seeds() {
        let every_kind = windtunnel::scenario::HostileKind::all();
        for (seed, _, outcome) in passes("hostile_upstreams.toml", 1..=20) {
            let outcomes: Vec<(String, u64)> = outcome
                .trace
                .records()
                .iter()
                .filter_map(|record| match &record.event {
                    windtunnel::trace::Event::HostileOutcome {
                        kind, rate_limited, ..
                    } => Some((kind.clone(), *rate_limited)),
                    _ => None,
                })
                .collect();
            for kind in &every_kind {
                assert!(
                    outcomes.iter().any(|(played, _)| played == kind.as_str()),
                    "seed {seed}: no host played {}",
                    kind.as_str()
                );
            }
            assert!(
                outcomes
                    .iter()
                    .any(|(kind, rate_limited)| kind == "flood" && *rate_limited > 1_000),
                "seed {seed}: the flooding host must be held to its rate: {outcomes:?}"
            );
        }
    }

    #[test]
    fn a_flood_without_a_per_host_rate_limit_fails_fair_share() {
        fails_as_expected(
            "hostile_upstreams_unlimited.toml",
            1..=6,
            OracleName::FairShare,
        );
    }

    #[test]
    fn a_stuck_event_log_fails_healthz_through_the_liveness_watchdog() {
        fails_as_expected(
            "db_fault_liveness_watchdog.toml",
            1..=6,
            OracleName::ProbeLiveness,
        );
    }

    #[test]
    fn db_fault_with_a_too_long_backoff_fails_recovery_within() {
        fails_as_expected(
            "db_fault_slow_retry.toml",
            1..=6,
            OracleName::RecoveryWithin,
        );
    }

    #[test]
    fn gc_stall_batched_retention_never_stalls_delivery_for_20_seeds() {
        for (seed, summary, _) in passes("gc_stall.toml", 1..=20) {
            let (events, head, _, _) = summary.store_audit.unwrap();
            assert!(
                events < head / 2,
                "seed {seed}: retention must have deleted: {summary:?}"
            );
        }
    }

    #[test]
    fn gc_stall_unbatched_retention_fails_delivery_gap_max() {
        fails_as_expected("gc_stall_unbatched.toml", 1..=6, OracleName::DeliveryGapMax);
    }

    #[test]
    fn network_blip_rides_out_latency_and_a_clog_for_20_seeds() {
        for (seed, summary, _) in passes("network_blip.toml", 1..=20) {
            let fewest = summary.upstream_connected_min_during_faults.unwrap();
            assert!(
                fewest < 100,
                "seed {seed}: the clog must bite (hosts disconnected): {summary:?}"
            );
            assert!(
                summary.consumer_gap_ms_max >= 5_000,
                "seed {seed}: the clog must stall delivery: {summary:?}"
            );
        }
    }

    #[test]
    fn panic_isolation_answers_every_panic_and_keeps_serving_for_20_seeds() {
        for (seed, summary, _) in passes("panic_isolation.toml", 1..=20) {
            let contained = summary.calls_by_answer.get("500").copied().unwrap_or(0);
            assert!(
                contained > 50,
                "seed {seed}: the fault must bite: {summary:?}"
            );
            assert!(!summary.calls_by_answer.contains_key("no response"));
        }
    }

    #[test]
    fn handler_timeout_answers_stalled_handlers_504_for_20_seeds() {
        for (seed, summary, _) in passes("handler_timeout.toml", 1..=20) {
            let timed_out = summary.calls_by_answer.get("504").copied().unwrap_or(0);
            assert!(
                timed_out > 10,
                "seed {seed}: the fault must bite: {summary:?}"
            );
        }
    }

    #[test]
    fn a_handler_deadline_longer_than_the_clients_wait_fails_panics_contained() {
        fails_as_expected(
            "handler_timeout_too_long.toml",
            1..=6,
            OracleName::PanicsContained,
        );
    }

    #[test]
    fn keepalive_dispatch_serializes_handlers_and_answers_every_call_for_20_seeds() {
        for (seed, summary, _) in passes("keepalive_dispatch.toml", 1..=20) {
            let served = summary.calls_by_answer.get("200").copied().unwrap_or(0);
            assert!(
                served > 1000,
                "seed {seed}: callers must keep calling: {summary:?}"
            );
        }
    }

    #[test]
    fn concurrent_dispatch_overlaps_handlers_and_fails_handlers_in_flight_max() {
        fails_as_expected(
            "keepalive_dispatch_concurrent.toml",
            1..=6,
            OracleName::HandlersInFlightMax,
        );
    }

    #[test]
    fn bad_input_gets_clear_answers_while_probes_pass_for_20_seeds() {
        for (seed, summary, _) in passes("bad_input.toml", 1..=20) {
            assert_eq!(summary.abuse_answers.len(), 7, "seed {seed}: {summary:?}");
            let attempts: usize = summary
                .abuse_answers
                .values()
                .flat_map(|answers| answers.values())
                .sum();
            assert!(
                attempts > 500,
                "seed {seed}: abusers must keep at it: {summary:?}"
            );
        }
    }

    #[test]
    fn memory_pressure_sheds_and_kicks_within_the_budget_for_20_seeds() {
        for (seed, summary, _) in passes("memory_pressure.toml", 1..=20) {
            let memory = summary.memory_last.expect("memory samples");
            assert!(
                memory.memory_kicked > 0,
                "seed {seed}: the budget must bite: {memory:?}"
            );
            assert!(
                memory.memory_shed_total > 0,
                "seed {seed}: the breaker must open: {memory:?}"
            );
            assert!(
                summary.calls_by_answer.contains_key("503"),
                "seed {seed}: {summary:?}"
            );
        }
    }

    #[test]
    fn without_the_memory_budget_the_account_grows_and_fails_memory_bounded() {
        fails_as_expected(
            "memory_pressure_unguarded.toml",
            1..=6,
            OracleName::MemoryBounded,
        );
    }

    #[test]
    fn close_recv_race_tears_down_exactly_once_for_20_seeds() {
        for (seed, summary, _) in passes("close_recv_race.toml", 1..=20) {
            assert!(summary.consumer_sessions > 60, "seed {seed}: {summary:?}");
            assert_eq!(summary.relay_faults, 1, "seed {seed}");
        }
    }

    #[test]
    fn slow_consumer_is_deterministic() {
        let scenario = load("slow_consumer.toml");
        let first = Madsim.run(&scenario, 9, None);
        let second = Madsim.run(&scenario, 9, None);
        assert_eq!(first.trace.first_divergence(&second.trace), None);
    }

    #[test]
    fn cold_start_is_deterministic() {
        let scenario = load("cold_start_2800.toml");
        let first = Madsim.run(&scenario, 5, None);
        let second = Madsim.run(&scenario, 5, None);
        assert_eq!(first.trace.first_divergence(&second.trace), None);
    }

    #[test]
    fn same_seed_same_hash_and_a_different_seed_changes_it() {
        let scenario = load("churn_max_connections.toml");
        let first = Madsim.run(&scenario, 42, None);
        let second = Madsim.run(&scenario, 42, None);
        assert_eq!(first.trace.first_divergence(&second.trace), None);
        assert_eq!(first.trace.hash(), second.trace.hash());
        let other = Madsim.run(&scenario, 43, None);
        assert_ne!(first.trace.hash(), other.trace.hash());
    }
}

#[path = "windtunnel/cli.rs"]
mod cli;
#[path = "windtunnel/docs.rs"]
mod docs;
#[path = "windtunnel/product.rs"]
mod product;
#[cfg(madsim)]
#[path = "windtunnel/readme.rs"]
mod readme;
