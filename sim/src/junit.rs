//! JUnit XML for a sweep (`sweep --junit <file>`): every (scenario, seed) pair is a test
//! case, every scenario a test suite, so a CI service lists seeds as tests and shows a
//! failing seed's report, replay command and artifact folder where it shows a failing test.
//!
//! The schema is the de-facto one CI services read (Jenkins' and Surefire's
//! `testsuites/testsuite/testcase` with `failure`, `system-out`); times are seconds.

use std::fmt::Write as _;
use std::path::Path;

use crate::harness::Loaded;
use crate::report::format_seed;
use crate::sweep::JobOutcome;

/// The JUnit document for `outcomes` of `scenarios` (as `sweep::run` returns them).
pub fn render(scenarios: &[Loaded], outcomes: &[JobOutcome]) -> String {
    let failures = outcomes.iter().filter(|o| !o.ok).count();
    let seconds: f64 = outcomes.iter().map(|o| o.wall.as_secs_f64()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"windtunnel sweep\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">",
        outcomes.len()
    );
    for (index, loaded) in scenarios.iter().enumerate() {
        let cases: Vec<&JobOutcome> = outcomes
            .iter()
            .filter(|o| o.job.scenario == index)
            .collect();
        if cases.is_empty() {
            continue;
        }
        let name = escape(&loaded.scenario.name);
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
            cases.len(),
            cases.iter().filter(|o| !o.ok).count(),
            cases.iter().map(|o| o.wall.as_secs_f64()).sum::<f64>()
        );
        for case in cases {
            let _ = write!(
                xml,
                "    <testcase classname=\"windtunnel.{name}\" name=\"seed={}\" file=\"{}\" time=\"{:.3}\"",
                format_seed(case.job.seed),
                escape(&loaded.display_path()),
                case.wall.as_secs_f64()
            );
            if case.ok {
                xml.push_str("/>\n");
                continue;
            }
            let mut details = case.failure_text.clone();
            let _ = write!(details, "replay: {}", case.replay);
            if let Some(folder) = &case.artifacts {
                let _ = write!(details, "\nartifacts: {}", folder.display());
            }
            let _ = writeln!(
                xml,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                escape(&case.headline),
                case.headline
                    .split_whitespace()
                    .next()
                    .unwrap_or("FAILED")
                    .to_ascii_lowercase(),
                escape(&details)
            );
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// Write [`render`]'s document to `path`.
pub fn write(path: &Path, scenarios: &[Loaded], outcomes: &[JobOutcome]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, render(scenarios, outcomes))
}

/// `text` as XML character data or an attribute value: markup characters escaped, and
/// characters XML 1.0 cannot hold at all (controls other than tab and line breaks, which a
/// relay's logged frame may contain) written as `\u{…}`.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::sweep::Job;

    fn scenario(name: &str) -> Loaded {
        Loaded::from_source(
            Path::new(&format!("scenarios/{name}.toml")),
            format!("name = \"{name}\"\nduration_s = 10\n[oracles]\n"),
        )
        .expect("a minimal scenario parses")
    }

    fn outcome(scenario: usize, seed: u64, failure: Option<&str>) -> JobOutcome {
        JobOutcome {
            job: Job { scenario, seed },
            ok: failure.is_none(),
            wall: Duration::from_millis(250),
            headline: failure.unwrap_or("PASSED").to_owned(),
            replay: format!("cargo sim run scenarios/x.toml --seed {seed:#x}"),
            artifacts: failure.map(|_| PathBuf::from("artifacts/x-seed0x2")),
            failure_text: failure.map_or(String::new(), |_| {
                "probe 7 failed: <timeout> & \"closed\"\u{1b}[0m\n".to_owned()
            }),
            reached: Default::default(),
        }
    }

    #[test]
    fn seeds_are_test_cases_and_a_failure_carries_its_report_replay_and_artifacts() {
        let scenarios = [scenario("churn"), scenario("dormancy")];
        let outcomes = [
            outcome(0, 1, None),
            outcome(
                0,
                2,
                Some("FAILED churn seed=0x2 oracle=probe_liveness at t=3.0s"),
            ),
            outcome(1, 1, None),
        ];
        let xml = render(&scenarios, &outcomes);
        let document = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("tests"), Some("3"));
        assert_eq!(root.attribute("failures"), Some("1"));
        assert_eq!(root.attribute("time"), Some("0.750"));
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        let names: Vec<_> = suites.iter().map(|s| s.attribute("name")).collect();
        assert_eq!(names, [Some("churn"), Some("dormancy")]);
        assert_eq!(suites[0].attribute("failures"), Some("1"));
        let cases: Vec<_> = suites[0].children().filter(|n| n.is_element()).collect();
        assert_eq!(cases[0].attribute("name"), Some("seed=0x1"));
        assert_eq!(cases[0].attribute("classname"), Some("windtunnel.churn"));
        assert_eq!(cases[0].attribute("file"), Some("scenarios/churn.toml"));
        assert!(cases[0].first_element_child().is_none());
        let failure = cases[1].first_element_child().expect("a failure element");
        assert_eq!(failure.tag_name().name(), "failure");
        assert_eq!(failure.attribute("type"), Some("failed"));
        assert_eq!(
            failure.attribute("message"),
            Some("FAILED churn seed=0x2 oracle=probe_liveness at t=3.0s")
        );
        assert_eq!(
            failure.text(),
            Some(
                "probe 7 failed: <timeout> & \"closed\"\\u{1b}[0m\n\
                 replay: cargo sim run scenarios/x.toml --seed 0x2\n\
                 artifacts: artifacts/x-seed0x2"
            )
        );
    }

    #[test]
    fn a_scenario_without_seeds_in_this_shard_has_no_suite() {
        let xml = render(
            &[scenario("churn"), scenario("dormancy")],
            &[outcome(1, 3, None)],
        );
        let document = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suites: Vec<_> = document
            .root_element()
            .children()
            .filter(|n| n.is_element())
            .map(|s| s.attribute("name"))
            .collect();
        assert_eq!(suites, [Some("dormancy")]);
    }
}
