//! The run's timeline as a hand-written SVG (no plotting dependency): stacked panels over
//! simulated time, sharing one x axis.
//!
//! Panels appear when the trace has their data: connections open (against
//! `max_connections` unless that is far above what was observed), upstream hosts
//! (connected, dormant, workers), handshakes in flight, probe latency (failures as red
//! crosses, the scenario's latency bound or else the probe timeout dashed), and queue depths
//! (any numeric field of a relay sample whose name contains `queue` or `depth`, so a new
//! sampled queue shows up without touching this file). Faults are shaded across all
//! panels, phases are dotted lines, `conn_accounting`'s settle deadline is a purple dashed
//! line, and the deciding violation is a red line.
//!
//! Pure function of scenario + trace + violations, like the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::oracle::Violation;
use crate::scenario::Scenario;
use crate::trace::{Event, Trace};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 48.0;
const PANEL: f64 = 130.0;
const GAP: f64 = 34.0;
const BOTTOM: f64 = 40.0;
const PALETTE: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
];

struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

enum Mark {
    Lines(Vec<Series>),
    Probes {
        ok: Vec<(f64, f64)>,
        failed: Vec<f64>,
        /// The line drawn across: the scenario's `probe_latency_max` bound, or else the
        /// probe timeout, with its label.
        bound: Option<(f64, &'static str)>,
    },
}

struct Panel {
    title: String,
    mark: Mark,
}

/// A panel's vertical scale.
#[derive(Clone, Copy)]
enum Scale {
    /// 0 ..= max.
    Linear(f64),
    /// Decades 10^lo ..= 10^hi (probe latencies span 1 ms to the timeout).
    Log(i32, i32),
}

impl Scale {
    fn fraction(self, v: f64) -> f64 {
        match self {
            Self::Linear(max) => v / max,
            Self::Log(lo, hi) => {
                (v.max(10f64.powi(lo)).log10() - f64::from(lo)) / f64::from(hi - lo)
            }
        }
    }

    fn ticks(self) -> Vec<f64> {
        match self {
            // Counts: the middle tick only where it is a whole number.
            Self::Linear(max) if (max / 2.0).fract() != 0.0 && max >= 1.0 => vec![0.0, max],
            Self::Linear(max) => vec![0.0, max / 2.0, max],
            Self::Log(lo, hi) => (lo..=hi).map(|e| 10f64.powi(e)).collect(),
        }
    }
}

impl Panel {
    fn scale(&self) -> Scale {
        if let Mark::Probes { ok, bound, .. } = &self.mark {
            let values = ok.iter().map(|p| p.1).chain(bound.map(|(ms, _)| ms));
            let (lo, hi) = values.fold((1.0f64, 10.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
            return Scale::Log(
                lo.max(1e-3).log10().floor() as i32,
                hi.log10().ceil() as i32,
            );
        }
        Scale::Linear(self.y_max())
    }

    fn y_max(&self) -> f64 {
        let max = match &self.mark {
            Mark::Lines(series) => series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0, f64::max),
            Mark::Probes { ok, bound, .. } => ok
                .iter()
                .map(|p| p.1)
                .chain(bound.map(|(ms, _)| ms))
                .fold(0.0, f64::max),
        };
        nice_ceiling(max.max(1.0))
    }
}

/// Render the timeline.
pub fn render(scenario: &Scenario, trace: &Trace, violations: &[Violation]) -> String {
    let records = trace.records();
    let end_s = records
        .last()
        .map_or(0.0, |r| secs(r.t_us))
        .max(scenario.duration_s as f64)
        .max(1.0);
    let panels = panels(scenario, trace);
    let height = TOP + panels.len().max(1) as f64 * (PANEL + GAP) + BOTTOM;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / end_s * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{} — {} trace records, {}s simulated</text>"#,
        escape(&scenario.name),
        records.len(),
        scenario.duration_s
    );
    let plots_top = TOP;
    let plots_bottom = TOP + panels.len().max(1) as f64 * (PANEL + GAP) - GAP;

    // Faults: shaded windows across every panel.
    for (kind, start, end) in fault_windows(trace, end_s) {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{plots_top:.1}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.08"><title>fault {} {start:.1}s–{end:.1}s</title></rect>"##,
            x(start),
            (x(end) - x(start)).max(1.0),
            plots_bottom - plots_top,
            escape(&kind)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728" font-size="10">{}</text>"##,
            x(start) + 2.0,
            plots_top + 11.0,
            escape(&kind)
        );
    }
    // Phases: dotted vertical lines.
    for record in records {
        if let Event::Phase { name } = &record.event {
            if name == "end" || name == "relay_ready" {
                continue;
            }
            let px = x(secs(record.t_us));
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{plots_top:.1}" x2="{px:.1}" y2="{plots_bottom:.1}" stroke="#555" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" fill="#555" font-size="10">{}</text>"##,
                px + 2.0,
                plots_bottom + 12.0,
                escape(name)
            );
        }
    }

    // Liveness restarts by the orchestrator: solid orange lines, so a restart loop shows as
    // a comb across every panel.
    for record in records {
        if let Event::LivenessRestart {
            restart,
            graceful,
            back_off_s,
        } = &record.event
        {
            let px = x(secs(record.t_us));
            let how = if *graceful { "stopped" } else { "killed" };
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{plots_top:.1}" x2="{px:.1}" y2="{plots_bottom:.1}" stroke="#ff7f0e" stroke-width="1.5"><title>liveness restart {restart} at {:.1}s: {how}, back-off {back_off_s}s</title></line><text x="{:.1}" y="{:.1}" fill="#ff7f0e" font-size="10">restart {restart}</text>"##,
                secs(record.t_us),
                px + 2.0,
                plots_top + 36.0,
            );
        }
    }

    // conn_accounting's settle deadline: the last churner's stop plus settle_s.
    if let Some(spec) = &scenario.oracles.conn_accounting {
        let px = x((scenario.churn_end_s() + spec.settle_s) as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{plots_top:.1}" x2="{px:.1}" y2="{plots_bottom:.1}" stroke="#9467bd" stroke-dasharray="4,3"/><text x="{:.1}" y="{:.1}" fill="#9467bd" font-size="10">settle deadline</text>"##,
            px + 2.0,
            plots_bottom + 22.0,
        );
    }

    for (index, panel) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL + GAP);
        draw_panel(&mut svg, panel, top, end_s, &x);
    }
    if panels.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{:.1}" fill="#555">no samples or probes in this trace</text>"##,
            TOP + PANEL / 2.0
        );
    }

    // x axis under the last panel.
    let axis_y = plots_bottom + 24.0;
    let step = nice_step(end_s / 8.0);
    let mut t = 0.0;
    while t <= end_s + 1e-9 {
        let px = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}s</text>"##,
            axis_y - 4.0,
            axis_y,
            axis_y + 12.0,
            trim(t)
        );
        t += step;
    }

    // The deciding violations: red lines with the oracle's name.
    for violation in violations {
        let px = x(secs(violation.t_us));
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{plots_top:.1}" x2="{px:.1}" y2="{plots_bottom:.1}" stroke="#d62728" stroke-width="2"><title>{}</title></line><text x="{:.1}" y="{:.1}" fill="#d62728" font-weight="bold">{} at {:.1}s</text>"##,
            escape(&violation.to_string()),
            px + 3.0,
            plots_top + 24.0,
            escape(violation.oracle.as_str()),
            secs(violation.t_us)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, top: f64, end_s: f64, x: &impl Fn(f64) -> f64) {
    let bottom = top + PANEL;
    let scale = panel.scale();
    let y = |v: f64| bottom - scale.fraction(v) * PANEL;
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{PANEL}" fill="none" stroke="#bbb"/><text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"##,
        right - LEFT,
        top - 5.0,
        escape(&panel.title)
    );
    for v in scale.ticks() {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{right:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT,
            y(v),
            y(v),
            LEFT - 4.0,
            y(v) + 4.0,
            trim(v)
        );
    }
    match &panel.mark {
        Mark::Lines(series) => {
            for (index, s) in series.iter().enumerate() {
                let points: Vec<String> = s
                    .points
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(t.min(end_s)), y(*v)))
                    .collect();
                let dash = if s.dashed {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                };
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{dash} points="{}"/>"#,
                    s.color,
                    points.join(" ")
                );
                let last = s.points.last().map_or(0.0, |p| p.1);
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" fill="{}">{} (last {})</text>"#,
                    right + 6.0,
                    top + 12.0 + index as f64 * 14.0,
                    s.color,
                    escape(&s.name),
                    trim(last)
                );
            }
        }
        Mark::Probes { ok, failed, bound } => {
            if let Some((bound_ms, label)) = bound {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" y1="{:.1}" x2="{right:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" fill="#d62728">{label} {}ms</text>"##,
                    y(*bound_ms),
                    y(*bound_ms),
                    right + 6.0,
                    top + 40.0,
                    trim(*bound_ms)
                );
            }
            for (t, ms) in ok {
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#1f77b4"><title>{t:.1}s: {ms:.1}ms</title></circle>"##,
                    x(*t),
                    y(*ms)
                );
            }
            for t in failed {
                let (cx, cy) = (x(*t), top + 6.0);
                let _ = writeln!(
                    svg,
                    r##"<path d="M{:.1},{:.1} l6,6 m0,-6 l-6,6" stroke="#d62728" stroke-width="2"><title>{t:.1}s: failed</title></path>"##,
                    cx - 3.0,
                    cy - 3.0
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#1f77b4">{} ok</text><text x="{:.1}" y="{:.1}" fill="#d62728">{} failed</text>"##,
                right + 6.0,
                top + 12.0,
                ok.len(),
                right + 6.0,
                top + 26.0,
                failed.len()
            );
        }
    }
}

fn panels(scenario: &Scenario, trace: &Trace) -> Vec<Panel> {
    let mut open = Vec::new();
    let mut max = Vec::new();
    let mut connected = Vec::new();
    let mut dormant = Vec::new();
    let mut workers = Vec::new();
    let mut handshakes = Vec::new();
    let mut queues: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut probes_ok = Vec::new();
    let mut probes_failed = Vec::new();
    let mut has_upstreams = false;
    for record in trace.records() {
        let t = secs(record.t_us);
        match &record.event {
            Event::RelaySample {
                open: o,
                max: m,
                upstreams,
                ..
            } => {
                open.push((t, *o as f64));
                max.push((t, *m as f64));
                connected.push((t, upstreams.hosts_connected as f64));
                dormant.push((t, upstreams.hosts_dormant as f64));
                workers.push((t, upstreams.workers_running as f64));
                handshakes.push((t, upstreams.handshakes_in_flight as f64));
                let json = serde_json::to_value(record).expect("records serialise");
                for (key, v) in queue_fields(&json) {
                    queues.entry(key).or_default().push((t, v));
                }
            }
            Event::UpstreamWorld { .. } => has_upstreams = true,
            Event::Probe { ok, latency_us, .. } => {
                if *ok {
                    probes_ok.push((t, *latency_us as f64 / 1e3));
                } else {
                    probes_failed.push(t);
                }
            }
            _ => {}
        }
    }
    let series = |name: &str, index: usize, points: Vec<(f64, f64)>| Series {
        name: name.to_owned(),
        color: PALETTE[index % PALETTE.len()],
        dashed: false,
        points,
    };
    let mut panels = Vec::new();
    if open.iter().any(|(_, o)| *o > 0.0) {
        // Scaled to what was observed: a max_connections far above the peak (1024 against
        // 11 open) would flatten the line onto zero, so it is then named, not drawn.
        let peak = open.iter().map(|p| p.1).fold(0.0, f64::max);
        let limit = max.iter().map(|p| p.1).fold(0.0, f64::max);
        let mut lines = vec![series("open", 0, open)];
        let title = if limit <= 4.0 * peak {
            lines.push(Series {
                name: "max_connections".to_owned(),
                color: "#7f7f7f",
                dashed: true,
                points: max,
            });
            "connections open".to_owned()
        } else {
            format!(
                "connections open (max_connections {} off scale)",
                trim(limit)
            )
        };
        panels.push(Panel {
            title,
            mark: Mark::Lines(lines),
        });
    }
    if has_upstreams {
        panels.push(Panel {
            title: "upstream hosts".to_owned(),
            mark: Mark::Lines(vec![
                series("connected", 1, connected),
                series("workers", 3, workers),
                series("dormant", 2, dormant),
            ]),
        });
        panels.push(Panel {
            title: "upstream handshakes in flight".to_owned(),
            mark: Mark::Lines(vec![series("in flight", 4, handshakes)]),
        });
    }
    if !probes_ok.is_empty() || !probes_failed.is_empty() {
        panels.push(Panel {
            title: "probe latency (ms, log scale)".to_owned(),
            mark: Mark::Probes {
                ok: probes_ok,
                failed: probes_failed,
                bound: match (&scenario.oracles.probe_latency_max, &scenario.prober) {
                    (Some(bound), _) => Some((bound.latency_ms_max as f64, "bound")),
                    (None, Some(prober)) => Some((prober.timeout_s as f64 * 1e3, "timeout")),
                    (None, None) => None,
                },
            },
        });
    }
    if let Some((_, window_s, within_s, windows)) =
        crate::oracle::coverage::by_window(trace.records())
    {
        // A step per window: flat across the window the events were sent in.
        let steps = windows
            .iter()
            .flat_map(|window| {
                let percent = 100.0 * window.fraction();
                [
                    (window.start_s as f64, percent),
                    ((window.start_s + window_s) as f64, percent),
                ]
            })
            .collect();
        panels.push(Panel {
            title: format!("coverage (% of steady hosts' events delivered within {within_s} s)"),
            mark: Mark::Lines(vec![series("coverage", 1, steps)]),
        });
    }
    if !queues.is_empty() {
        panels.push(Panel {
            title: "queue depths".to_owned(),
            mark: Mark::Lines(
                queues
                    .into_iter()
                    .enumerate()
                    .map(|(index, (name, points))| series(&name, index, points))
                    .collect(),
            ),
        });
    }
    panels
}

/// Numeric fields of a serialised sample whose names say they are queues.
fn queue_fields(record: &serde_json::Value) -> Vec<(String, f64)> {
    record
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.contains("queue") || key.contains("depth"))
        .filter_map(|(key, value)| Some((key.clone(), value.as_f64()?)))
        .collect()
}

/// `(kind, start_s, end_s)` of every fault window; unhealed faults run to the end.
fn fault_windows(trace: &Trace, end_s: f64) -> Vec<(String, f64, f64)> {
    let mut open: Vec<(String, f64)> = Vec::new();
    let mut windows = Vec::new();
    for record in trace.records() {
        if let Event::Fault { kind, active, .. } = &record.event {
            let t = secs(record.t_us);
            if *active {
                open.push((kind.clone(), t));
            } else if let Some(position) = open.iter().position(|(k, _)| k == kind) {
                let (kind, start) = open.remove(position);
                windows.push((kind, start, t));
            }
        }
    }
    windows.extend(open.into_iter().map(|(kind, start)| (kind, start, end_s)));
    windows
}

fn secs(t_us: u64) -> f64 {
    t_us as f64 / 1e6
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|candidate| *candidate >= value - 1e-9)
        .unwrap_or(10.0 * magnitude)
}

fn nice_step(rough: f64) -> f64 {
    nice_ceiling(rough.max(1.0))
}

fn trim(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else if value.abs() < 1.0 {
        format!("{}", (value * 1e3).round() / 1e3)
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_numeric_queue_or_depth_field_of_a_sample_is_a_queue_series() {
        let sample = serde_json::json!({
            "t_us": 1, "node": "monitor", "event": "relay_sample", "open": 3,
            "consumer_queue_max": 7, "store_depth": 2.5, "queue_name": "not a number"
        });
        assert_eq!(
            queue_fields(&sample),
            [
                ("consumer_queue_max".to_owned(), 7.0),
                ("store_depth".to_owned(), 2.5)
            ]
        );
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(64.0), 100.0);
        assert_eq!(nice_ceiling(13.1), 20.0);
        assert_eq!(nice_ceiling(2800.0), 5000.0);
        assert_eq!(nice_step(180.0 / 8.0), 50.0);
        assert_eq!(trim(12.0), "12");
        assert_eq!(trim(0.25), "0.25");
        assert_eq!(trim(2.5), "2.5");
        assert_eq!(escape("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
