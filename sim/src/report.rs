//! What a run prints: a one-line verdict, a short summary of what happened, and on failure
//! the offending oracle and a copy-paste replay command. Pure functions over the trace, so
//! the text is testable without a simulator.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::oracle::OracleName;
use crate::oracle::{format_seconds, Verdict, Violation};
use crate::scenario::Scenario;
use crate::swarm::Draw;
use crate::trace::{ChurnAction, Event, EventsSample, MemorySample, Trace, UpstreamSample};

/// A seed as the tunnel prints it everywhere: `0x…` hex (any form parses back).
pub fn format_seed(seed: u64) -> String {
    format!("{seed:#x}")
}

/// Parse a seed: decimal or `0x`-hex.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("expected a decimal or 0x-hex u64 seed, got `{text}`: {error}"))
}

/// Counts drawn from a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Probes sent.
    pub probes: usize,
    /// Probes that failed.
    pub probes_failed: usize,
    /// Slowest successful probe, microseconds.
    pub probe_latency_us_max: u64,
    /// Churner connections by action.
    pub churn_by_action: BTreeMap<&'static str, usize>,
    /// API calls by answer: the status code, or `no response`.
    pub calls_by_answer: BTreeMap<String, usize>,
    /// Abuser attempts by kind, then by the relay's answer.
    pub abuse_answers: BTreeMap<&'static str, BTreeMap<String, usize>>,
    /// Churner connections answered 503.
    pub churn_refused: usize,
    /// Churner connections that ended otherwise than planned (closed by the relay, errors).
    pub churn_cut_short: usize,
    /// The relay's last accounting sample: (high water, max, admitted, refused).
    pub relay_last: Option<(usize, usize, u64, u64)>,
    /// The relay's last upstream sample, if it has upstream hosts.
    pub upstream_last: Option<UpstreamSample>,
    /// Most hosts connected at any sample.
    pub upstream_connected_max: usize,
    /// Fewest hosts connected at a sample taken while a fault was active (how deep the
    /// faults cut), if any fault ran.
    pub upstream_connected_min_during_faults: Option<usize>,
    /// Upstream hosts in the generated world: (hosts, dead, flaky).
    pub upstream_world: Option<(u32, u32, u32)>,
    /// The relay's last event-pipeline sample.
    pub events_last: Option<EventsSample>,
    /// The relay's last memory-account sample.
    pub memory_last: Option<MemorySample>,
    /// Consumers that reported final totals, and how many of them are slow.
    pub consumers: (usize, usize),
    /// Event frames received by all consumers.
    pub consumer_frames: u64,
    /// Consumer sessions opened.
    pub consumer_sessions: u64,
    /// `ConsumerTooSlow` notices received by consumers.
    pub consumer_too_slow: u64,
    /// Ordering anomalies consumers reported (gaps, duplicates, error frames).
    pub consumer_anomalies: usize,
    /// Longest wait between two frames of a session, over consumers that are not slow, ms.
    pub consumer_gap_ms_max: u64,
    /// The end-of-run audit of the event log: (events, head seq, hosts with gaps, hosts behind).
    pub store_audit: Option<(u64, u64, u32, u32)>,
    /// Hostile hosts by how the relay left them: `quarantined (<reason>)`, the last error
    /// of a host backing off, or `accepted`.
    pub hostile_outcomes: BTreeMap<String, usize>,
    /// A loaded table's dead hosts by how they never answered and how the relay's last
    /// attempt ended: `refused (connect_error)`, `black_hole (timeout)`, …
    pub dead_host_outcomes: BTreeMap<String, usize>,
    /// Real mode: the relay processes' (incarnations, peak RSS bytes, CPU ms).
    pub relay_process: Option<(u32, u64, u64)>,
    /// Coverage per window, with the window and the deadline (s), where it was counted.
    pub coverage: Option<(u64, u64, Vec<crate::oracle::coverage::WindowCoverage>)>,
    /// Relay incarnations killed or restarted, and store-fault windows.
    pub relay_faults: usize,
    /// Liveness restarts by the orchestrator, and how many of them had to kill the relay
    /// after the grace period.
    pub liveness_restarts: (u32, u32),
}

impl Summary {
    /// Summarise `trace`.
    pub fn of(trace: &Trace) -> Self {
        let mut summary = Self {
            coverage: crate::oracle::coverage::by_window(trace.records())
                .map(|(_, window_s, within_s, windows)| (window_s, within_s, windows)),
            ..Self::default()
        };
        let mut faults_active = 0usize;
        for record in trace.records() {
            match &record.event {
                Event::Probe { ok, latency_us, .. } => {
                    summary.probes += 1;
                    if *ok {
                        summary.probe_latency_us_max =
                            summary.probe_latency_us_max.max(*latency_us);
                    } else {
                        summary.probes_failed += 1;
                    }
                }
                Event::Call { status, .. } => {
                    let answer = status.map_or_else(|| "no response".to_owned(), |s| s.to_string());
                    *summary.calls_by_answer.entry(answer).or_default() += 1;
                }
                Event::Abuse { kind, answer, .. } => {
                    *summary
                        .abuse_answers
                        .entry(kind.as_str())
                        .or_default()
                        .entry(answer.clone())
                        .or_default() += 1;
                }
                Event::Churn {
                    action,
                    refused,
                    error,
                    ..
                } => {
                    *summary
                        .churn_by_action
                        .entry(action_name(*action))
                        .or_default() += 1;
                    summary.churn_refused += usize::from(*refused);
                    summary.churn_cut_short += usize::from(error.is_some());
                }
                Event::RelaySample {
                    high_water,
                    max,
                    admitted,
                    refused,
                    upstreams,
                    events,
                    memory,
                    ..
                } => {
                    summary.relay_last = Some((*high_water, *max, *admitted, *refused));
                    summary.events_last = Some(*events);
                    summary.memory_last = Some(*memory);
                    if summary.upstream_world.is_some() {
                        let connected = upstreams.hosts_connected;
                        summary.upstream_connected_max =
                            summary.upstream_connected_max.max(connected);
                        if faults_active > 0 {
                            let min = summary
                                .upstream_connected_min_during_faults
                                .get_or_insert(connected);
                            *min = (*min).min(connected);
                        }
                        summary.upstream_last = Some(*upstreams);
                    }
                }
                Event::UpstreamWorld {
                    hosts, dead, flaky, ..
                } => summary.upstream_world = Some((*hosts, *dead, *flaky)),
                Event::Fault { active, kind, .. } => {
                    if *active && kind != "partition" {
                        summary.relay_faults += 1;
                    }
                    faults_active = if *active {
                        faults_active + 1
                    } else {
                        faults_active.saturating_sub(1)
                    };
                }
                Event::ConsumerFinal {
                    slow,
                    frames,
                    sessions,
                    too_slow,
                    max_gap_ms,
                    ..
                } => {
                    if !slow {
                        summary.consumer_gap_ms_max = summary.consumer_gap_ms_max.max(*max_gap_ms);
                    }
                    summary.consumers.0 += 1;
                    summary.consumers.1 += usize::from(*slow);
                    summary.consumer_frames += frames;
                    summary.consumer_sessions += u64::from(*sessions);
                    summary.consumer_too_slow += u64::from(*too_slow);
                }
                Event::ConsumerAnomaly { .. } => summary.consumer_anomalies += 1,
                Event::StoreAudit {
                    events,
                    head_seq,
                    hosts_with_gaps,
                    hosts_behind,
                    ..
                } => {
                    summary.store_audit =
                        Some((*events, *head_seq, *hosts_with_gaps, *hosts_behind));
                }
                Event::RelayProcess {
                    incarnations,
                    peak_rss_bytes,
                    cpu_ms,
                } => summary.relay_process = Some((*incarnations, *peak_rss_bytes, *cpu_ms)),
                Event::HostileOutcome {
                    quarantined,
                    last_error,
                    ..
                } => {
                    let outcome = match (quarantined, last_error) {
                        (Some(reason), _) => format!("quarantined ({reason})"),
                        (None, Some(error)) => error.clone(),
                        (None, None) => "accepted".to_owned(),
                    };
                    *summary.hostile_outcomes.entry(outcome).or_default() += 1;
                }
                Event::LivenessRestart { graceful, .. } => {
                    summary.liveness_restarts.0 += 1;
                    summary.liveness_restarts.1 += u32::from(!graceful);
                }
                Event::DeadHostOutcome {
                    dead,
                    phase,
                    last_error,
                    ..
                } => {
                    let ended = last_error.as_deref().unwrap_or(phase);
                    *summary
                        .dead_host_outcomes
                        .entry(format!("{dead} ({ended})"))
                        .or_default() += 1;
                }
                Event::Phase { .. }
                | Event::CoverageSent { .. }
                | Event::Panic { .. }
                | Event::Subscribed { .. }
                | Event::HostDown { .. }
                | Event::ConsumerConnected { .. }
                | Event::ConsumerEnded { .. }
                | Event::StillOpen { .. }
                | Event::ForbiddenDial { .. } => {}
            }
        }
        summary
    }
}

fn action_name(action: ChurnAction) -> &'static str {
    match action {
        ChurnAction::AbruptClose => "abrupt_close",
        ChurnAction::HalfClose => "half_close",
        ChurnAction::MidRequestClose => "mid_request_close",
        ChurnAction::Keepalive => "keepalive",
        ChurnAction::IdleHold => "idle_hold",
    }
}

/// Everything the report needs about one run.
#[derive(Debug)]
pub struct RunReport<'a> {
    /// The scenario as run (swarm ranges resolved).
    pub scenario: &'a Scenario,
    /// Path the scenario was loaded from (for the replay command).
    pub scenario_path: &'a str,
    /// The seed.
    pub seed: u64,
    /// The options the seed drew from the scenario's `[swarm]` table.
    pub swarm: &'a [Draw],
    /// The run's trace.
    pub trace: &'a Trace,
    /// All violations found.
    pub violations: &'a [Violation],
    /// The verdict.
    pub verdict: &'a Verdict,
    /// Whether the engine replays seeds (false for real mode).
    pub deterministic: bool,
}

impl RunReport<'_> {
    /// The first line: `PASSED …` or `FAILED <scenario> seed=… oracle=… at t=…`.
    pub fn headline(&self) -> String {
        let name = &self.scenario.name;
        let seed = format_seed(self.seed);
        let hash = self.trace.hash();
        match self.verdict {
            Verdict::Passed => format!("PASSED {name} seed={seed} hash={hash:#018x}"),
            Verdict::FailedAsExpected(v) => format!(
                "PASSED {name} seed={seed} hash={hash:#018x} (failed {} at t={} as expected)",
                v.oracle,
                format_seconds(v.t_us)
            ),
            Verdict::Failed(v) => format!(
                "FAILED {name} seed={seed} oracle={} at t={} hash={hash:#018x}",
                v.oracle,
                format_seconds(v.t_us)
            ),
            Verdict::UnexpectedPass(oracle) => format!(
                "FAILED {name} seed={seed} oracle={oracle} expected to fail but held hash={hash:#018x}"
            ),
        }
    }

    /// The copy-paste command that reproduces this run; for a real run, the command that
    /// runs it for real again (it will not replay).
    pub fn replay_command(&self) -> String {
        if !self.deterministic {
            return format!(
                "cargo run --release -p windtunnel -- run --real {} --seed {}",
                self.scenario_path,
                format_seed(self.seed)
            );
        }
        format!(
            "{} run {} --seed {}",
            self.scenario.engine.cargo_command(),
            self.scenario_path,
            format_seed(self.seed)
        )
    }

    /// The full text: headline, summary, oracle lines, and (on failure) the replay command.
    pub fn render(&self) -> String {
        let summary = Summary::of(self.trace);
        let mut text = self.headline();
        text.push('\n');
        if !self.swarm.is_empty() {
            let drawn: Vec<String> = self.swarm.iter().map(Draw::to_string).collect();
            let _ = writeln!(text, "  swarm: {}", drawn.join(", "));
        }
        let _ = writeln!(
            text,
            "  {} {}s, {} trace records",
            if self.deterministic {
                "simulated"
            } else {
                "real time"
            },
            self.scenario.duration_s,
            self.trace.records().len()
        );
        if summary.probes > 0 {
            let _ = writeln!(
                text,
                "  probes: {} sent, {} failed, slowest success {:.1}ms{}",
                summary.probes,
                summary.probes_failed,
                summary.probe_latency_us_max as f64 / 1e3,
                match summary.liveness_restarts {
                    (0, _) => String::new(),
                    (restarts, killed) => format!(
                        "; the orchestrator restarted the relay {restarts} time(s), killing it after the grace period {killed} time(s)"
                    ),
                }
            );
        }
        if !summary.churn_by_action.is_empty() {
            let total: usize = summary.churn_by_action.values().sum();
            let by_action: Vec<String> = summary
                .churn_by_action
                .iter()
                .map(|(action, count)| format!("{action} {count}"))
                .collect();
            let _ = writeln!(
                text,
                "  churn: {total} connections ({}), {} refused with 503, {} cut short",
                by_action.join(", "),
                summary.churn_refused,
                summary.churn_cut_short
            );
        }
        if !summary.calls_by_answer.is_empty() {
            let total: usize = summary.calls_by_answer.values().sum();
            let by_answer: Vec<String> = summary
                .calls_by_answer
                .iter()
                .map(|(answer, count)| format!("{answer} {count}"))
                .collect();
            let _ = writeln!(text, "  calls: {total} ({})", by_answer.join(", "));
        }
        if !summary.abuse_answers.is_empty() {
            let by_kind: Vec<String> = summary
                .abuse_answers
                .iter()
                .map(|(kind, answers)| {
                    let answers: Vec<String> = answers
                        .iter()
                        .map(|(answer, count)| format!("{answer} ×{count}"))
                        .collect();
                    format!("{kind}: {}", answers.join(", "))
                })
                .collect();
            let _ = writeln!(text, "  bad input: {}", by_kind.join("; "));
        }
        if let Some((high_water, max, admitted, refused)) = summary.relay_last {
            let _ = writeln!(
                text,
                "  relay: high water {high_water}/{max}, admitted {admitted}, refused at capacity {refused}"
            );
        }
        if let (Some((hosts, dead, flaky)), Some(last)) =
            (summary.upstream_world, summary.upstream_last)
        {
            let faults = summary
                .upstream_connected_min_during_faults
                .map(|min| format!(", fewest during faults {min}"))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "  upstreams: {hosts} hosts ({dead} dead, {flaky} flaky); connected: most {}{faults}, at end {}; \
                 {} dormant; handshakes high water {}, workers high water {}, {} events",
                summary.upstream_connected_max,
                last.hosts_connected,
                last.hosts_dormant,
                last.handshakes_high_water,
                last.workers_high_water,
                last.upstream_events
            );
        }
        if let (Some(events), (consumers, slow)) = (summary.events_last, summary.consumers) {
            if consumers > 0 {
                let _ = writeln!(
                    text,
                    "  events: head seq {}; consumers: {consumers} ({slow} slow), {} sessions, {} frames, \
                     {} kicked (ConsumerTooSlow), {} anomalies, queue high water {}, longest frame gap {}ms",
                    events.head_seq,
                    summary.consumer_sessions,
                    summary.consumer_frames,
                    summary.consumer_too_slow,
                    summary.consumer_anomalies,
                    events.mailbox_high_water,
                    summary.consumer_gap_ms_max
                );
            }
        }
        if let Some(memory) = summary
            .memory_last
            .filter(|m| m.memory_high_water_bytes > 0 || m.ingest_high_water_bytes > 0)
        {
            let _ = writeln!(
                text,
                "  memory: held at most {} bytes for consumers and {} bytes of upstream events in the ingest queue; \
                 {} requests shed with 503, {} consumers kicked to stay in budget",
                memory.memory_high_water_bytes,
                memory.ingest_high_water_bytes,
                memory.memory_shed_total,
                memory.memory_kicked
            );
        }
        if let Some((events, head, gaps, behind)) = summary.store_audit {
            let _ = writeln!(
                text,
                "  event log: {events} events up to seq {head}, {gaps} hosts with gaps, {behind} hosts behind; \
                 {} relay/store faults",
                summary.relay_faults
            );
        }
        if !summary.hostile_outcomes.is_empty() {
            let outcomes: Vec<String> = summary
                .hostile_outcomes
                .iter()
                .map(|(outcome, hosts)| format!("{outcome} {hosts}"))
                .collect();
            let _ = writeln!(text, "  hostile hosts: {}", outcomes.join(", "));
        }
        if !summary.dead_host_outcomes.is_empty() {
            let outcomes: Vec<String> = summary
                .dead_host_outcomes
                .iter()
                .map(|(outcome, hosts)| format!("{outcome} {hosts}"))
                .collect();
            let _ = writeln!(text, "  dead hosts: {}", outcomes.join(", "));
        }
        if let Some((window_s, within_s, windows)) = &summary.coverage {
            let fractions: Vec<String> = windows
                .iter()
                .map(|window| format!("{:.0}%", 100.0 * window.fraction()))
                .collect();
            let _ = writeln!(
                text,
                "  coverage (steady hosts' events delivered within {within_s} s), per {window_s} s window: {}",
                fractions.join(" ")
            );
        }
        if let Some((incarnations, peak_rss_bytes, cpu_ms)) = summary.relay_process {
            let _ = writeln!(
                text,
                "  relay process: {incarnations} incarnation{}, peak RSS {:.1} MiB, CPU {:.2} s",
                if incarnations == 1 { "" } else { "s" },
                peak_rss_bytes as f64 / f64::from(1 << 20),
                cpu_ms as f64 / 1e3
            );
        }
        let oracles: Vec<String> = OracleName::ALL
            .into_iter()
            .filter(|oracle| self.scenario.checks(*oracle))
            .map(|oracle| {
                let held = !self.violations.iter().any(|v| v.oracle == oracle);
                format!("{oracle} {}", if held { "held" } else { "VIOLATED" })
            })
            .collect();
        let _ = writeln!(text, "  oracles: {}", oracles.join(", "));
        for violation in self.violations {
            let _ = writeln!(text, "  {violation}");
            let record = violation
                .record_index
                .and_then(|index| Some((index, self.trace.records().get(index)?)));
            if let Some((index, record)) = record {
                let json = serde_json::to_string(record).expect("records serialise");
                let _ = writeln!(text, "    #{index}: {json}");
            }
        }
        if !self.verdict.is_success() {
            let label = if self.deterministic {
                "replay"
            } else {
                "run again (a real run is not deterministic)"
            };
            let _ = writeln!(text, "  {label}: {}", self.replay_command());
        }
        text
    }
}
