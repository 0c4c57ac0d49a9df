//! Worlds in the plain build (`cargo test`; empty in the simulation build): the turmoil
//! engine's scenarios, each passing and running to the same trace twice, and real mode, the
//! same actors on real tokio and loopback TCP against the relay as a child process.
#![cfg(not(madsim))]

use std::path::Path;

use windtunnel::oracle::Verdict;
use windtunnel::scenario::Scenario;
use windtunnel::trace::Event;
use windtunnel::worlds::real::process::RelayProgram;

#[path = "../support/mod.rs"]
mod support;
use support::{load, MINIMAL};

/// The turmoil engine's scenarios: each passes, and runs to the same trace twice.
mod turmoil_engine {
    use super::*;
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

    #[test]
    fn slowed_and_darkened_hosts_take_effect_and_are_deterministic() {
        let scenario = Scenario::parse(
            Path::new("hosts.toml"),
            "engine = \"turmoil\"\nname = \"hosts\"\nduration_s = 60\n\
             [upstreams]\nhosts = 10\nevent_interval_s = [1, 2]\n\
             [[faults]]\nkind = \"hosts_latency\"\nat_s = 5\nduration_s = 20\n\
             hosts = { fraction = 0.5 }\nextra_latency_ms = 300\n\
             [[faults]]\nkind = \"hosts_dark\"\nat_s = 30\nduration_s = 10\n\
             hosts = { fraction = 0.3 }\n\
             [oracles]\nno_panics = {}\nfaults_fired = {}\n",
        )
        .unwrap();
        let [first, second] = [1, 1].map(|seed| Turmoil.run(&scenario, seed, None));
        assert_eq!(first.verdict, Verdict::Passed, "{:?}", first.violations);
        assert_eq!(first.trace.hash(), second.trace.hash(), "two runs differ");
        let healed: Vec<(&str, u32, u64)> = first
            .trace
            .records()
            .iter()
            .filter_map(|r| match &r.event {
                Event::Fault {
                    kind,
                    hosts,
                    active: false,
                    effect,
                    ..
                } => Some((kind.as_str(), *hosts, *effect)),
                _ => None,
            })
            .collect();
        let [("hosts_latency", 5, delayed), ("hosts_dark", 3, 3)] = healed[..] else {
            panic!("{healed:?}");
        };
        // Five hosts, an event every 1-2 s each, for 20 s: every send held back.
        assert!(delayed >= 50, "only {delayed} sends were held back");
    }
}

/// Run `scenario` for real at seed 1 (the relay run by this package's windtunnel binary),
/// requiring that real mode accepts it and that it passes.
fn passes_for_real(scenario: &Scenario) -> windtunnel::worlds::SeedRun {
    assert_eq!(
        windtunnel::scenario::REAL.problems(scenario),
        [],
        "real mode refuses {}",
        scenario.name
    );
    let relay = RelayProgram::windtunnel(env!("CARGO_BIN_EXE_windtunnel"));
    let run = windtunnel::worlds::real::run(scenario, 1, None, &relay);
    assert_eq!(
        run.verdict,
        Verdict::Passed,
        "{:?}\n{}",
        run.violations,
        run.logs.clone().unwrap_or_default()
    );
    run
}

/// Real mode: the same actors on real tokio and loopback TCP against the relay as a child
/// process (this package's windtunnel binary running the relay's command line), judged by
/// the same oracles (a small world, 18 real seconds, a graceful restart and a SIGKILL).
#[test]
fn real_mode_runs_the_actors_against_the_relay_and_judges_them() {
    let scenario = Scenario::parse(
        Path::new("real.toml"),
        r#"name = "real"
duration_s = 18
[relay.server]
shutdown_grace_ms = 2000
drain_timeout_ms = 500
shutdown_drain_ms = 500
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
    let run = passes_for_real(&scenario);
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

/// The command that starts this package's relay as a black box (`--relay-cmd`): it is
/// configured by its own command line, as any relay would be, to listen at `{addr}`, keep
/// its database in `{dir}`, dial `localhost` hosts over plain ws:// on loopback, take a
/// few hundred `requestCrawl`s from one address, and redial its hosts within half a second
/// of a restart.
fn our_relay_as_a_black_box() -> RelayProgram {
    let relay = env!("CARGO_BIN_EXE_windtunnel");
    RelayProgram::BlackBox(format!(
        "exec '{relay}' relay serve --listen {{addr}} --set 'store.path={{dir}}/relay.sqlite' \
         --set 'upstream.insecure_ws_hosts=[\"localhost\"]' \
         --set 'upstream.egress_allow=[\"127.0.0.0/8\"]' \
         --set upstream.crawl_per_client_max=0 --set upstream.crawl_new_hosts_max=0 \
         --set server.shutdown_grace_ms=2000 --set server.drain_timeout_ms=500 \
         --set server.shutdown_drain_ms=500 --set upstream.startup_jitter_ms=500"
    ))
}

/// Real mode with the relay as a black box: started by a shell command, told of its
/// hosts by `requestCrawl` (`localhost:<port>` each), probed at `/xrpc/_health`, restarted
/// by the same command on the same directory, and judged only on what the cast saw: not
/// one read of its `/metrics`, and the oracles that need one are dropped, saying so.
#[test]
fn a_black_box_relay_is_seeded_by_request_crawl_and_judged_from_outside() {
    let scenario = Scenario::parse(
        Path::new("black_box.toml"),
        r#"name = "black_box"
duration_s = 16
[upstreams]
hosts = 8
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
stop_s = 14
[[faults]]
kind = "restart_relay"
at_s = 7
down_s = 1
[oracles]
probe_liveness = {}
no_stale_delivery = {}
no_lost_events = { lag_s = 4 }
consumer_accounting = { settle_s = 2 }
hosts_connected_min = { fraction = 1.0, by_s = 10 }
no_panics = {}
"#,
    )
    .unwrap();
    let mut adapted = scenario.clone();
    let notes = windtunnel::worlds::real::black_box::black_box_scenario(&mut adapted);
    assert_eq!(
        notes,
        [
            "the prober asks /xrpc/_health instead of /_readyz (any relay's liveness)",
            "hosts_connected_min is not judged: it reads the relay's /metrics",
            "no_lost_events is judged in part: not whether consumers caught up with the head \
             the relay had persisted lag_s before the end (its /metrics) nor whether what they \
             received is what its log holds under the same seqs (its database); the log itself \
             is audited, read back from cursor 0",
            "consumer_accounting is not judged: it reads the relay's /metrics",
        ]
    );
    let run = windtunnel::worlds::real::run(&scenario, 1, None, &our_relay_as_a_black_box());
    assert_eq!(
        run.verdict,
        Verdict::Passed,
        "{:?}\n{}",
        run.violations,
        run.logs.clone().unwrap_or_default()
    );
    let records = run.trace.records();
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.event, Event::RelaySample { .. })),
        "nothing is read from inside a black box"
    );
    // Its log, read back from cursor 0: dense, every host without a hole and none behind.
    let audit = records.iter().find_map(|r| match &r.event {
        Event::StoreAudit {
            events,
            oldest_seq,
            head_seq,
            hosts_with_gaps,
            hosts_behind,
            ..
        } => Some((
            *events,
            *oldest_seq,
            *head_seq,
            *hosts_with_gaps,
            *hosts_behind,
        )),
        _ => None,
    });
    let Some((events, 1, head, 0, 0)) = audit else {
        panic!("the log audit from outside: {audit:?}");
    };
    assert!(events >= 8 * 8 && events == head, "{audit:?}");
    let subscribed: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| matches!(r.event, Event::Subscribed { .. }))
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(subscribed.len(), 8, "every host crawled: {subscribed:?}");
    assert!(
        subscribed.iter().all(|host| host.starts_with("localhost:")),
        "{subscribed:?}"
    );
    // The restarted relay found its database in {dir}: it resumed every host by cursor.
    let resumed: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| matches!(r.event, Event::Subscribed { cursor } if cursor > 0))
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(resumed, subscribed, "hosts resumed after the restart");
    let probes_ok = records
        .iter()
        .filter(|r| {
            matches!(
                &r.event,
                Event::Probe {
                    status: Some(200),
                    ..
                }
            )
        })
        .count();
    assert!(probes_ok >= 10, "only {probes_ok} probes answered 200");
    let frames: u64 = records
        .iter()
        .filter_map(|r| match r.event {
            Event::ConsumerFinal { frames, .. } => Some(frames),
            _ => None,
        })
        .sum();
    assert!(frames > 100, "the consumers saw only {frames} frames");
    let incarnations = records.iter().find_map(|r| match r.event {
        Event::RelayProcess { incarnations, .. } => Some(incarnations),
        _ => None,
    });
    assert_eq!(
        incarnations,
        Some(2),
        "started, then restarted by the fault"
    );
}

#[test]
fn real_mode_refuses_what_a_loopback_cannot_play() {
    use windtunnel::scenario::REAL;
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
    for fault in [
        "kind = \"hosts_restart\"\nat_s = 1\ndown_s = 1\nhosts = { fraction = 0.5 }",
        "kind = \"hosts_latency\"\nat_s = 1\nduration_s = 1\nhosts = { fraction = 0.5 }\n\
         extra_latency_ms = 100",
    ] {
        let refusals = refused(&with_fault(fault));
        assert_eq!(refusals.len(), 1, "{fault}: {refusals:?}");
    }
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
            Event::Panic { message } => Some(message.clone()),
            _ => None,
        })
        .expect("the failure is recorded");
    assert!(
        panic.contains("cannot start the relay (/nonexistent/relay)"),
        "{panic}"
    );
}

/// Real mode plays a loaded host table: `network_snapshot`'s 3,208 hosts on loopback, cut
/// to 90 real seconds (its connection deadline and coverage windows moved in with it, and
/// coverage's bar lowered for a loaded 2-core machine), judged by all its oracles. Every
/// dead host ends as its status says: offline hosts refused, unreachable ones alternately
/// unresolved and black holes the relay's connect timeout gives up on.
#[test]
fn real_mode_plays_the_network_snapshot_table() {
    let mut scenario = load("network_snapshot.toml");
    scenario.duration_s = 90;
    let oracles = &mut scenario.oracles;
    oracles.hosts_connected_min.as_mut().unwrap().by_s = 90;
    let coverage = oracles.coverage_min.as_mut().unwrap();
    (coverage.window_s, coverage.within_s, coverage.from_s) = (20, 20, 40);
    coverage.fraction = 0.9;
    let run = passes_for_real(&scenario);
    let mut endings = std::collections::BTreeMap::<(String, Option<String>), u32>::new();
    for record in run.trace.records() {
        if let Event::DeadHostOutcome {
            dead, last_error, ..
        } = &record.event
        {
            *endings
                .entry((dead.clone(), last_error.clone()))
                .or_default() += 1;
        }
    }
    let ended = |dead: &str, error: &str| (dead.to_owned(), Some(error.to_owned()));
    assert_eq!(
        endings,
        [
            (ended("black_hole", "timeout"), 98),
            (ended("refused", "connect_error"), 146),
            (ended("unresolved", "resolve_error"), 98),
        ]
        .into(),
        "how the table's dead hosts ended"
    );
    let sent = run.trace.records().iter().any(|r| {
        matches!(&r.event, Event::CoverageSent { sent, .. } if sent.iter().sum::<u64>() > 1_000)
    });
    assert!(
        sent,
        "the steady hosts' sends were not counted for coverage"
    );
}
