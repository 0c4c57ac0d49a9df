//! The wind tunnel as a product: what a user sees (reports, replay commands), tested
//! without a simulator by feeding the report fabricated traces.

use std::path::Path;

use windtunnel::oracle::{self, Verdict};
use windtunnel::report::RunReport;
use windtunnel::scenario::Scenario;
use windtunnel::trace::{Event, Trace};

#[test]
fn a_failed_run_prints_one_headline_and_a_copy_paste_replay_command() {
    let scenario = Scenario::parse(
        Path::new("scenarios/x.toml"),
        "name = \"x\"\nduration_s = 60\n[prober]\n[oracles]\nprobe_liveness = {}\n",
    )
    .unwrap();
    let mut trace = Trace::default();
    for t_s in [10, 20, 30] {
        let event = Event::Probe {
            ok: false,
            status: None,
            latency_us: 1_000_000,
            error: Some("timeout after 1000ms".to_owned()),
        };
        trace.push(t_s * 1_000_000, "prober", event);
    }
    let violations = oracle::check(&scenario, &trace);
    let verdict = oracle::verdict(scenario.expect, &violations);
    assert!(matches!(verdict, Verdict::Failed(_)));
    let report = RunReport {
        scenario: &scenario,
        scenario_path: "scenarios/x.toml",
        seed: 7,
        swarm: &[],
        trace: &trace,
        violations: &violations,
        verdict: &verdict,
    };
    let text = report.render();
    let headline = text.lines().next().unwrap();
    assert!(
        headline.starts_with("FAILED x seed=0x7 oracle=probe_liveness at t=30.0s hash=0x"),
        "{headline}"
    );
    assert!(
        text.contains("\n  replay: cargo sim run scenarios/x.toml --seed 0x7\n"),
        "{text}"
    );
}
