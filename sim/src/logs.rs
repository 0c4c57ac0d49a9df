//! Log capture for one run: a `tracing` subscriber scoped to that run, writing the relay's
//! (and the simulator's) log lines into a bounded in-memory buffer that ends up as the
//! artifact's `logs.txt`.
//!
//! In madsim every simulated node lives in one process and one thread, so "the relay's
//! logs" are simply the events emitted on the run's thread; madsim wraps every task in a
//! `node{id name}` span, so each line says which node logged it. Lines are stamped with
//! *simulated* time since the run started, so they line up with `trace.jsonl`'s `t_us`.
//!
//! The filter is a [`Targets`] list (no hash maps, no per-callsite state), and nothing here
//! draws randomness or reads the wall clock: capturing logs must not change the trace (the
//! harness checks this whenever it re-runs a seed to capture them).

use std::io;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Default filter: debug for the relay and the harness, info for the HTTP and simulator
/// crates (their debug output is per packet and drowns the relay's own lines).
pub const DEFAULT_FILTER: &str =
    "debug,hyper=info,madsim=info,tungstenite=info,tokio_tungstenite=info";

/// Most bytes of log text kept per run; older lines are dropped first (the end of a run,
/// where failures show, is what matters).
pub const DEFAULT_BUDGET_BYTES: usize = 32 << 20;

/// What to capture.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// Which targets at which level.
    pub filter: Targets,
    /// Most bytes kept.
    pub budget_bytes: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: Targets::from_str(DEFAULT_FILTER).expect("the default filter parses"),
            budget_bytes: DEFAULT_BUDGET_BYTES,
        }
    }
}

impl LogSettings {
    /// Settings with a filter given as `level,target=level,…`.
    pub fn with_filter(filter: &str) -> Result<Self, LogFilterError> {
        let filter = Targets::from_str(filter).map_err(|error| LogFilterError {
            filter: filter.to_owned(),
            message: error.to_string(),
        })?;
        Ok(Self {
            filter,
            ..Self::default()
        })
    }
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log filter `{filter}`: {message} (expected e.g. `debug,hyper=info`)")]
pub struct LogFilterError {
    /// The filter given.
    pub filter: String,
    /// What the parser said.
    pub message: String,
}

/// A subscriber for one run and the buffer it writes to.
#[derive(Debug)]
pub struct LogCapture {
    buffer: Arc<Mutex<Buffer>>,
    dispatch: Dispatch,
}

impl LogCapture {
    /// A fresh capture.
    pub fn new(settings: &LogSettings) -> Self {
        keep_interest_per_dispatcher();
        let buffer = Arc::new(Mutex::new(Buffer {
            text: Vec::new(),
            budget: settings.budget_bytes.max(1024),
            dropped_bytes: 0,
        }));
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_timer(SimulatedTime)
            .with_writer(BufferWriter(Arc::clone(&buffer)));
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(settings.filter.clone());
        Self {
            buffer,
            dispatch: Dispatch::new(subscriber),
        }
    }

    /// The dispatcher to install (with [`tracing::dispatcher::with_default`]) around the run.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The captured text, with a note first if older lines were dropped, and lines that
    /// repeat with other numbers summarised (see [`summarise_repeats`]).
    pub fn finish(self) -> String {
        let buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let text = summarise_repeats(&String::from_utf8_lossy(&buffer.text));
        if buffer.dropped_bytes == 0 {
            text
        } else {
            format!(
                "[… {} bytes of earlier log lines dropped (budget {} bytes)]\n{text}",
                buffer.dropped_bytes, buffer.budget
            )
        }
    }
}

/// Makes sure `tracing` asks every live dispatcher, not the calling thread's default, when
/// it decides whether a callsite is wanted.
///
/// `tracing-core` caches each callsite's interest globally. While at most one dispatcher is
/// registered it takes a shortcut and asks only the *current thread's* default: a callsite
/// first reached on a thread without a capture (another seed of a parallel sweep, another
/// test) is then cached as "never" — and the maximum level set to off — while a capture
/// on another thread is live, and that capture silently loses those lines. A second
/// dispatcher that stays registered for the life of the process turns the shortcut off
/// for good; it wants nothing, so it costs nothing.
fn keep_interest_per_dispatcher() {
    static WANTS_NOTHING: OnceLock<Dispatch> = OnceLock::new();
    WANTS_NOTHING.get_or_init(|| Dispatch::new(WantsNothing));
}

/// A subscriber that registers interest in nothing and hints the level off.
struct WantsNothing;

impl tracing::Subscriber for WantsNothing {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::never()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::OFF)
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// How many of a repeated line's first and last occurrences are kept.
pub const REPEATS_KEPT: usize = 10;

/// Lines that differ only in their numbers (time, peer address, ids: the refusal lane's
/// "closing without a response" thousands of times, say) are kept at their first and last
/// [`REPEATS_KEPT`] occurrences; a marker where the rest would be says how many were left
/// out. Everything else is kept as it was, in order.
pub fn summarise_repeats(text: &str) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    // The line without its leading time stamp, numbers masked.
    let shape = |line: &str| -> String {
        let trimmed = line.trim_start();
        let rest = trimmed.split_once(' ').map_or(trimmed, |(_, rest)| rest);
        let mut shape = String::with_capacity(rest.len());
        for c in rest.chars() {
            // A run of digits is one `#`: 9 and 10 have the same shape.
            if !c.is_ascii_digit() {
                shape.push(c);
            } else if !shape.ends_with('#') {
                shape.push('#');
            }
        }
        shape
    };
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        *totals.entry(shape(line)).or_default() += 1;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = shape(line);
        let total = totals[&key];
        let count = seen.entry(key).or_default();
        *count += 1;
        if total <= 2 * REPEATS_KEPT || *count <= REPEATS_KEPT || *count > total - REPEATS_KEPT {
            out.push_str(line);
            out.push('\n');
        } else if *count == REPEATS_KEPT + 1 {
            let _ = writeln!(
                out,
                "[… {} more lines like the one above, with other numbers; the last {REPEATS_KEPT} follow later]",
                total - 2 * REPEATS_KEPT
            );
        }
    }
    out
}

#[derive(Debug)]
struct Buffer {
    text: Vec<u8>,
    budget: usize,
    dropped_bytes: usize,
}

impl Buffer {
    fn append(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
        if self.text.len() > 2 * self.budget {
            // Drop the oldest half at a line boundary; amortised O(1) per byte.
            let excess = self.text.len() - self.budget;
            let cut = self.text[excess..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.text.len(), |at| excess + at + 1);
            self.text.drain(..cut);
            self.dropped_bytes += cut;
        }
    }
}

#[derive(Clone, Debug)]
struct BufferWriter(Arc<Mutex<Buffer>>);

impl io::Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferWriter {
    type Writer = BufferWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Stamps lines with simulated seconds since the run started; `-` outside a simulation.
#[derive(Clone, Copy, Debug)]
struct SimulatedTime;

impl FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        #[cfg(madsim)]
        if let Some(time) = madsim::time::TimeHandle::try_current() {
            return write!(w, "{:>11.6}s", time.elapsed().as_secs_f64());
        }
        write!(w, "{:>12}", "-")
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn captures_events_at_the_filtered_levels_only() {
        let settings = LogSettings::with_filter("info,noisy=warn").unwrap();
        let capture = LogCapture::new(&settings);
        tracing::dispatcher::with_default(capture.dispatch(), || {
            tracing::info!(target: "relay::http", peer = "10.0.0.2", "accepted");
            tracing::debug!(target: "relay::http", "not at debug");
            tracing::info!(target: "noisy", "filtered out");
            tracing::warn!(target: "noisy", "kept");
        });
        let text = capture.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("INFO relay::http: accepted peer=\"10.0.0.2\""),
            "{text}"
        );
        assert!(lines[1].ends_with("WARN noisy: kept"), "{text}");
        assert!(lines[0].trim_start().starts_with("- "), "{text}");
    }

    /// The race `keep_interest_per_dispatcher` closes: a capture live on this thread, the
    /// callsite reached first on a thread that has none.
    #[test]
    fn a_callsite_first_reached_on_another_thread_still_reaches_the_capture() {
        fn shared_callsite() {
            tracing::info!(target: "relay::shared", "reached");
        }
        let capture = LogCapture::new(&LogSettings::default());
        #[allow(clippy::disallowed_methods)] // a harness thread, outside any simulation
        std::thread::spawn(shared_callsite).join().unwrap();
        tracing::dispatcher::with_default(capture.dispatch(), shared_callsite);
        let text = capture.finish();
        assert!(text.contains("INFO relay::shared: reached"), "{text:?}");
    }

    #[test]
    fn the_budget_keeps_the_newest_lines_and_says_how_much_was_dropped() {
        let settings = LogSettings {
            budget_bytes: 1024,
            ..LogSettings::default()
        };
        let capture = LogCapture::new(&settings);
        tracing::dispatcher::with_default(capture.dispatch(), || {
            for line in 0..200 {
                tracing::info!(target: "relay", line, "a line of padding text");
            }
        });
        let text = capture.finish();
        assert!(text.starts_with("[… "), "{}", &text[..80]);
        assert!(text.len() <= 2 * 1024 + 100, "{}", text.len());
        assert!(text.trim_end().ends_with("line=199"), "{text}");
        assert!(!text.contains("line=0\n"), "{text}");
    }

    #[test]
    fn repeated_lines_keep_their_first_and_last_occurrences_and_a_count() {
        let mut text = String::from("   0.1s INFO relay: relay serving\n");
        for peer in 0..100 {
            let _ = writeln!(
                text,
                "   {peer}.5s DEBUG relay::http: refusal lane full: closing without a response peer=10.0.0.{peer}:80"
            );
        }
        text.push_str("  99.9s WARN relay: the end\n");
        let summary = summarise_repeats(&text);
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), 1 + 2 * REPEATS_KEPT + 1 + 1, "{summary}");
        assert!(lines[1].ends_with("peer=10.0.0.0:80"));
        assert_eq!(
            lines[1 + REPEATS_KEPT],
            "[… 80 more lines like the one above, with other numbers; the last 10 follow later]"
        );
        assert!(lines[lines.len() - 2].ends_with("peer=10.0.0.99:80"));
        assert!(lines[lines.len() - 1].ends_with("the end"));
        let few = "   1.0s INFO a: x=1\n   2.0s INFO a: x=2\n";
        assert_eq!(
            summarise_repeats(few),
            few,
            "rare lines are kept as they are"
        );
    }

    #[test]
    fn a_bad_filter_is_a_clear_error() {
        let error = LogSettings::with_filter("debug,hyper=loud").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("log filter `debug,hyper=loud`: "),
            "{error}"
        );
    }
}
