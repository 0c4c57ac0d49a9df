//! The relay's host program and the world's handle on it, whatever the engine: one
//! incarnation of the relay per host start ([`run_relay`]), the [`RelayControl`] the world
//! stops and observes it through, the [`monitor`] that samples its accounting into the
//! trace, the [`audit`] of its event log after the run, and the run's database file.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::atproto::frame::{event_frame, Kind};
use relay::events::EventStats;
use relay::http::dispatch::DispatchStats;
use relay::memory::MemoryStats;
use relay::rt::time::sleep;
use relay::upstream::UpstreamStats;
use relay::{Observer, Phase, RegistryStats, Relay};

use super::{consumer, upstream, TraceSink};
use crate::scenario::{ConsumerKind, ConsumerSpec, Scenario, UpstreamsSpec};
use crate::trace::{
    Event, EventsSample, HttpSample, MemorySample, OpenConnectionRecord, Record, UpstreamSample,
};

/// How often the monitor samples the relay's accounting (real mode scrapes as often).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Keep the panics raised by the relay's `HandlerPanic` fault point off stderr: they are
/// expected, the relay contains each one (a 500 in the trace) and logs it with method and
/// path (in the run's captured logs). Every other panic still reaches the previous hook.
pub fn quiet_injected_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<&str>()
                == Some(&relay::rt::fault::INJECTED_HANDLER_PANIC);
            if !injected {
                previous(info);
            }
        }));
    });
}

/// The relay's database file for one run; removed (with its WAL files) on drop.
pub struct RelayDatabase {
    /// The database file.
    pub path: PathBuf,
}

impl RelayDatabase {
    /// A fresh, empty database path for one run.
    pub fn create() -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::SeqCst);
        let path = database_dir().join(format!("windtunnel-{}-{run}.sqlite", std::process::id()));
        let database = Self { path };
        database.remove();
        database
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// Where run databases go: `$WINDTUNNEL_DB_DIR` if set; else `/dev/shm` (memory-backed)
/// when it is mounted with at least [`SHM_ROOM_MIN_BYTES`] (containers often give it only
/// 64 MiB, and parallel seeds each hold a database); else the system temp dir. Every
/// commit writes WAL frames with real syscalls; on a disk filesystem those writes were a
/// tenth of the cold-start tunnel's CPU. The relay neither knows nor cares.
fn database_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WINDTUNNEL_DB_DIR") {
        return PathBuf::from(dir);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if shm_has_room(&mounts) {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// The least room `/dev/shm` must have to hold run databases.
const SHM_ROOM_MIN_BYTES: u64 = 1 << 30;

/// Whether `/proc/mounts` text shows a tmpfs on `/dev/shm` of at least
/// [`SHM_ROOM_MIN_BYTES`] (no `size=` option means the kernel's default, half the RAM).
fn shm_has_room(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "/dev/shm", "tmpfs", options, ..] = fields.as_slice() else {
            return false;
        };
        options
            .split(',')
            .find_map(|option| option.strip_prefix("size="))
            .is_none_or(|size| {
                let (digits, unit) = size.split_at(
                    size.len() - size.trim_start_matches(|c: char| c.is_ascii_digit()).len(),
                );
                let scale: u64 = match unit {
                    "" => 1,
                    "k" => 1 << 10,
                    "m" => 1 << 20,
                    "g" => 1 << 30,
                    _ => return false,
                };
                digits
                    .parse::<u64>()
                    .is_ok_and(|value| value.saturating_mul(scale) >= SHM_ROOM_MIN_BYTES)
            })
    })
}

impl Drop for RelayDatabase {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The world's handle on the relay node across restarts.
#[derive(Default)]
pub struct RelayControl {
    /// The running incarnation's observer; `None` while the relay is down.
    pub observer: Mutex<Option<Observer>>,
    /// Wakes the running incarnation's shutdown future.
    pub stop: tokio::sync::Notify,
    /// Incarnations that have finished their graceful shutdown.
    pub stopped: AtomicU64,
}

impl RelayControl {
    /// Ask the running incarnation to shut down gracefully, and wait until it has.
    pub async fn stop_gracefully(&self) {
        let stopped_before = self.stopped.load(Ordering::SeqCst);
        self.stop.notify_waiters();
        while self.stopped.load(Ordering::SeqCst) == stopped_before {
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// The running incarnation's observer, if it is up.
    pub fn observer(&self) -> Option<Observer> {
        self.observer.lock().expect("observer lock").clone()
    }

    /// The running incarnation's host table, as the end-of-run outcomes read it (empty
    /// while the relay is down).
    pub fn host_endings(&self) -> Vec<HostEnding> {
        self.observer().map_or_else(Vec::new, |observer| {
            observer.hosts().into_iter().map(HostEnding::from).collect()
        })
    }

    /// Publish (or, with `None`, withdraw) the running incarnation's observer.
    pub fn set_observer(&self, observer: Option<Observer>) {
        *self.observer.lock().expect("observer lock") = observer;
    }
}

/// One incarnation of the relay node: bind (retrying while the store refuses, as an
/// orchestrator would restart it), publish the observer, serve until asked to stop.
pub async fn run_relay(config: relay::config::Config, control: Arc<RelayControl>) {
    let relay = loop {
        match Relay::bind(config.clone()).await {
            Ok(relay) => break relay,
            Err(error) => {
                tracing::warn!(%error, "relay failed to start; retrying in 1s");
                sleep(Duration::from_secs(1)).await;
            }
        }
    };
    control.set_observer(Some(relay.observer()));
    let stop = Arc::clone(&control);
    relay.run(async move { stop.stop.notified().await }).await;
    control.set_observer(None);
    control.stopped.fetch_add(1, Ordering::SeqCst);
}

/// Judge the relay's event log from one pass over it ([`audit_of`]); an empty log's audit
/// when it could not be read.
fn audit(scan: Option<&LogScan>, plans: &[Arc<upstream::HostPlan>], emitted_by: Duration) -> Event {
    match scan {
        Some(scan) => audit_of(
            scan.events,
            scan.oldest,
            scan.head,
            &scan.per_host,
            plans,
            emitted_by,
        ),
        None => Event::StoreAudit {
            events: 0,
            oldest_seq: 0,
            head_seq: 0,
            hosts_with_gaps: 0,
            hosts_behind: 0,
            first_behind: None,
        },
    }
}

/// A log's events per host: hostname → (count, lowest upstream seq, highest upstream seq).
pub type PerHost = BTreeMap<String, (i64, i64, i64)>;

/// What one pass over the relay's event log finds for the end-of-run checks (the log has
/// no index on the host, and each row is read with its body: one pass, not one per check).
struct LogScan {
    /// Events in the log.
    events: i64,
    /// The lowest relay seq (0 when empty).
    oldest: i64,
    /// The highest relay seq (0 when empty).
    head: i64,
    /// Every host of the host table (`(0, 0, 0)` for one without events).
    per_host: PerHost,
    /// Per range [`scan_log`] was given: the rows of the log in it and the XOR of their
    /// digests (`None` where no range was given).
    in_ranges: Vec<Option<(u64, u64)>>,
}

/// One pass over the log: its extent, its events per host, and for each of `ranges` the
/// rows it holds there and their digest (each row's frame rebuilt from its kind and body as
/// the relay sends it). `None` when the log cannot be read.
fn scan_log(log: &rusqlite::Connection, ranges: &[Option<RangeInclusive<u64>>]) -> Option<LogScan> {
    let mut names = log.prepare("SELECT id, hostname FROM hosts").ok()?;
    let names: BTreeMap<i64, String> = names
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut by_host: BTreeMap<i64, (i64, i64, i64)> = names
        .keys()
        .map(|id| (*id, (0, i64::MAX, i64::MIN)))
        .collect();
    let (mut events, mut oldest, mut head) = (0, i64::MAX, i64::MIN);
    let mut in_ranges: Vec<Option<(u64, u64)>> = ranges
        .iter()
        .map(|range| range.as_ref().map(|_| (0, 0)))
        .collect();
    let mut query = log
        .prepare("SELECT seq, host_id, upstream_seq, kind, body FROM events")
        .ok()?;
    let mut rows = query.query([]).ok()?;
    while let Some(row) = rows.next().ok()? {
        let (seq, host_id, upstream_seq): (i64, i64, i64) =
            (row.get(0).ok()?, row.get(1).ok()?, row.get(2).ok()?);
        events += 1;
        oldest = oldest.min(seq);
        head = head.max(seq);
        if let Some((count, low, high)) = by_host.get_mut(&host_id) {
            *count += 1;
            *low = (*low).min(upstream_seq);
            *high = (*high).max(upstream_seq);
        }
        let seq = seq as u64;
        let wanted = |range: &Option<RangeInclusive<u64>>| {
            range.as_ref().is_some_and(|range| range.contains(&seq))
        };
        if !ranges.iter().any(wanted) {
            continue;
        }
        let kind = row
            .get_ref(3)
            .ok()
            .and_then(|kind| kind.as_str().ok())
            .and_then(stored_kind);
        let body = row.get_ref(4).ok().and_then(|body| body.as_bytes().ok());
        let digest = match (kind, body) {
            (Some(kind), Some(body)) => consumer::event_digest(seq, &event_frame(kind, body)),
            _ => 0,
        };
        for (range, found) in ranges.iter().zip(&mut in_ranges) {
            if let (true, Some((count, xor))) = (wanted(range), found) {
                *count += 1;
                *xor ^= digest;
            }
        }
    }
    let per_host = by_host
        .into_iter()
        .filter_map(|(id, (count, low, high))| {
            let counts = if count == 0 {
                (0, 0, 0)
            } else {
                (count, low, high)
            };
            Some((names.get(&id)?.clone(), counts))
        })
        .collect();
    let bound = |value: i64| if events == 0 { 0 } else { value };
    Some(LogScan {
        events,
        oldest: bound(oldest),
        head: bound(head),
        per_host,
        in_ranges,
    })
}

/// The end-of-run audit of an event log of `events` events, relay seqs `oldest..=head`,
/// `per_host` of them from each host: holes per host (a missing first event included),
/// and steady hosts whose log ends before what they had emitted by `emitted_by`.
pub fn audit_of(
    events: i64,
    oldest: i64,
    head: i64,
    per_host: &PerHost,
    plans: &[Arc<upstream::HostPlan>],
    emitted_by: Duration,
) -> Event {
    // A hole inside a host's range, or (while retention has pruned nothing: the log still
    // starts at relay seq 1) at its start: every host's first event is its seq 1.
    let nothing_pruned = oldest == 1;
    // Hostile hosts' sequence numbers jump, and their log ends where they misbehaved.
    let hostile: std::collections::BTreeSet<&str> = plans
        .iter()
        .filter(|plan| plan.hostile.is_some())
        .map(|plan| plan.hostname.as_str())
        .collect();
    let hosts_with_gaps = per_host
        .iter()
        .filter(|(hostname, _)| !hostile.contains(hostname.as_str()))
        .map(|(_, counts)| counts)
        .filter(|(count, low, high)| {
            *count > 0 && (high - low + 1 != *count || (nothing_pruned && *low != 1))
        })
        .count() as u32;
    let behind: Vec<&str> = plans
        .iter()
        .filter(|plan| plan.dead.is_none() && plan.flap.is_none() && plan.hostile.is_none())
        .filter(|plan| {
            let emitted = plan.schedule.sent_by(emitted_by) as i64;
            per_host
                .get(&plan.hostname)
                .is_none_or(|(_, _, high)| *high < emitted)
        })
        .map(|plan| plan.hostname.as_str())
        .collect();
    Event::StoreAudit {
        events: events as u64,
        oldest_seq: oldest as u64,
        head_seq: head as u64,
        hosts_with_gaps,
        hosts_behind: behind.len() as u32,
        first_behind: behind.first().map(|name| (*name).to_owned()),
    }
}

/// Sample the relay every [`SAMPLE_PERIOD`] until the task is dropped.
pub async fn monitor(sink: TraceSink, control: Arc<RelayControl>, watch: Option<ConnWatch>) {
    let mut watch = watch;
    loop {
        sleep(SAMPLE_PERIOD).await;
        sample(&sink, &control);
        if let Some(deadline) = watch {
            if deadline.name_still_open(&sink, &control) {
                watch = None;
            }
        }
    }
}

/// The `conn_accounting` deadline the monitor watches: at the first sample past it, if the
/// oracle has not seen the relay settle, the monitor names the connections still open (in
/// the trace, [`Event::StillOpen`], and in the logs).
#[derive(Clone, Copy, Debug)]
pub struct ConnWatch {
    churn_end_us: u64,
    deadline_us: u64,
    unsettled: Unsettled,
}

/// Whether the relay has not settled in the records so far, given when the churn ended and
/// the deadline (µs): the `conn_accounting` oracle's judgement, handed in by the world so
/// that the cast does not depend on the judge.
pub type Unsettled = fn(records: &[Record], churn_end_us: u64, deadline_us: u64) -> bool;

/// How many still-open connections the logs name one by one (the trace keeps them all).
const STILL_OPEN_LOGGED_MAX: usize = 20;

impl ConnWatch {
    /// The watch `scenario`'s `conn_accounting` asks for, if it has one, judged by
    /// `unsettled`.
    pub fn of(scenario: &Scenario, unsettled: Unsettled) -> Option<Self> {
        let spec = scenario.oracles.conn_accounting.as_ref()?;
        let churn_end_us = scenario.churn_end_s() * 1_000_000;
        Some(Self {
            churn_end_us,
            deadline_us: churn_end_us + spec.settle_s * 1_000_000,
            unsettled,
        })
    }

    /// After a sample: once past the deadline, record what is still open if the relay has
    /// not settled. Returns whether the watch is over.
    fn name_still_open(&self, sink: &TraceSink, control: &RelayControl) -> bool {
        let past_deadline = sink.with_records(|records| {
            let last_us = records.last().map_or(0, |record| record.t_us);
            (last_us > self.deadline_us)
                .then(|| (self.unsettled)(records, self.churn_end_us, self.deadline_us))
        });
        let Some(unsettled) = past_deadline else {
            return false;
        };
        let Some(observer) = control.observer().filter(|_| unsettled) else {
            return true;
        };
        let (open, now_ms) = observer.open_connections();
        let connections: Vec<OpenConnectionRecord> = open
            .iter()
            .map(|connection| OpenConnectionRecord {
                peer: connection.peer.to_string(),
                phase: match connection.phase {
                    Phase::Free | Phase::Accepted => "accepted".to_owned(),
                    Phase::Active => "active".to_owned(),
                    Phase::Draining(reason) => format!("draining ({reason})"),
                },
                age_ms: connection
                    .admitted_ms
                    .map_or(0, |admitted| now_ms.saturating_sub(admitted)),
                idle_ms: now_ms.saturating_sub(connection.last_activity_ms),
            })
            .collect();
        tracing::warn!(
            open = connections.len(),
            "conn_accounting deadline passed with connections still open"
        );
        for connection in connections.iter().take(STILL_OPEN_LOGGED_MAX) {
            tracing::warn!(%connection, "still open");
        }
        if connections.len() > STILL_OPEN_LOGGED_MAX {
            tracing::warn!(
                more = connections.len() - STILL_OPEN_LOGGED_MAX,
                "still open (not listed)"
            );
        }
        sink.record("monitor", Event::StillOpen { connections });
        true
    }
}

/// Record one sample of the running relay's accounting (nothing while it is down).
pub fn sample(sink: &TraceSink, control: &RelayControl) {
    if let Some(observer) = control.observer() {
        sink.record("monitor", RelayReading::observe(&observer).sample());
    }
}

/// One reading of the relay's own accounting: from its [`Observer`] in the simulated
/// worlds, from a `/metrics` scrape of the relay process in real mode; either way it
/// becomes the same [`Event::RelaySample`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayReading {
    /// The lifecycle registry's counters.
    pub connections: RegistryStats,
    /// The upstream workers and host table.
    pub upstreams: UpstreamStats,
    /// The event pipeline and fan-out.
    pub events: EventStats,
    /// Dispatched request handlers.
    pub dispatch: DispatchStats,
    /// The memory account.
    pub memory: MemoryStats,
    /// The relay's tasks alive now (`relay::rt::tasks_alive`).
    pub tasks_alive: usize,
}

impl RelayReading {
    /// Read a running relay through its observer (and this process's task census).
    pub fn observe(observer: &Observer) -> Self {
        Self {
            connections: observer.connections(),
            upstreams: observer.upstreams(),
            events: observer.events(),
            dispatch: observer.dispatch(),
            memory: observer.memory(),
            tasks_alive: relay::rt::tasks_alive(),
        }
    }

    /// The trace record of this reading.
    pub fn sample(&self) -> Event {
        use relay::upstream::HostPhase;
        let (stats, up, pipeline, memory) = (
            &self.connections,
            &self.upstreams,
            &self.events,
            &self.memory,
        );
        Event::RelaySample {
            open: stats.open,
            high_water: stats.high_water,
            max: stats.max,
            admitted: stats.admitted_total,
            released: stats.released_total,
            refused: stats.refused_at_capacity_total,
            relay_tasks: self.tasks_alive,
            upstreams: UpstreamSample {
                hosts: up.hosts,
                hosts_connected: up.in_phase(HostPhase::Connected),
                hosts_dormant: up.in_phase(HostPhase::Dormant),
                hosts_idle: up.in_phase(HostPhase::Idle),
                workers_running: up.workers_running,
                workers_high_water: up.workers_high_water,
                handshakes_in_flight: up.handshakes_in_flight,
                handshakes_high_water: up.handshakes_high_water,
                upstream_events: up.events_total,
            },
            events: EventsSample {
                head_seq: pipeline.head_seq,
                consumers: pipeline.consumers,
                consumers_kicked: pipeline.consumers_kicked_total,
                mailbox_high_water: pipeline.mailbox_high_water,
                store_healthy: pipeline.store_healthy,
            },
            http: HttpSample {
                handlers_high_water: self.dispatch.high_water,
            },
            memory: MemorySample {
                memory_held_bytes: memory.held_bytes,
                memory_high_water_bytes: memory.high_water_bytes,
                memory_shedding: memory.shedding,
                memory_shed_total: memory.shed_total,
                memory_kicked: memory.kicked_total,
                ingest_high_water_bytes: pipeline.ingest_high_water_bytes,
            },
        }
    }
}

/// Write the host table of `plans` (generated from `spec`) to the relay's database and
/// record the upstream world in the trace: what every world does before the relay starts.
pub fn publish_host_table(
    database: &Path,
    spec: &UpstreamsSpec,
    plans: &[Arc<upstream::HostPlan>],
    sink: &TraceSink,
) -> Result<(), relay::store::StoreError> {
    relay::store::Store::open(database)?
        .add_hosts(plans.iter().map(|plan| plan.hostname.as_str()))?;
    record_upstream_world(spec, plans, sink);
    Ok(())
}

/// Record the upstream world of `plans` (generated from `spec`) in the trace.
pub fn record_upstream_world(
    spec: &UpstreamsSpec,
    plans: &[Arc<upstream::HostPlan>],
    sink: &TraceSink,
) {
    sink.record(
        "world",
        Event::UpstreamWorld {
            hosts: plans.len() as u32,
            dead: plans.iter().filter(|plan| plan.dead.is_some()).count() as u32,
            flaky: plans.iter().filter(|plan| plan.flap.is_some()).count() as u32,
            hostile: spec.hostile.as_ref().map_or(0, |hostile| hostile.hosts),
        },
    );
}

/// What consumers time deliveries against when `scenario` checks `fair_share` or
/// `coverage_min`: every steady polite host's event interval, by its index (which its
/// accounts' DIDs name).
pub fn send_times(
    scenario: &Scenario,
    plans: &[Arc<upstream::HostPlan>],
) -> Option<Arc<consumer::SendTimes>> {
    let fair_share_from = scenario
        .oracles
        .fair_share
        .as_ref()
        .map(|spec| Duration::from_secs(spec.from_s));
    let coverage = scenario
        .oracles
        .coverage_min
        .as_ref()
        .map(|spec| consumer::CoverageWindows {
            window: Duration::from_secs(spec.window_s),
            within: Duration::from_secs(spec.within_s),
        });
    if fair_share_from.is_none() && coverage.is_none() {
        return None;
    }
    let schedules = plans
        .iter()
        .filter(|plan| plan.dead.is_none() && plan.flap.is_none() && plan.hostile.is_none())
        .map(|plan| (plan.index, plan.schedule.clone()))
        .collect();
    Some(Arc::new(consumer::SendTimes {
        schedules,
        fair_share_from,
        coverage,
    }))
}

/// One consumer's running tally, kept by the world until the end of the run.
pub struct ConsumerTally {
    name: String,
    slow: bool,
    tally: consumer::SharedTally,
}

impl ConsumerTally {
    /// The tally `tally` of consumer `name`, started from `spec`.
    pub fn new(name: String, spec: &ConsumerSpec, tally: consumer::SharedTally) -> Self {
        Self {
            name,
            slow: spec.kind == ConsumerKind::Slow,
            tally,
        }
    }
}

/// How the relay's host table ended for one host, as the end-of-run outcomes read it: from
/// an observer's `HostView` in the simulated worlds, from the relay's `GET /hosts` (the same
/// fields as JSON) in real mode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct HostEnding {
    /// Its hostname.
    pub hostname: String,
    /// The relay's phase for it (`backoff`, `dormant`, …).
    pub phase: String,
    /// Why the relay's last attempt or session ended, if one had.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why it is quarantined, if it is.
    #[serde(default)]
    pub quarantined: Option<String>,
    /// Frames the relay received from it.
    pub events: u64,
    /// Events its rate limit held back.
    pub rate_limited: u64,
}

impl From<relay::upstream::HostView> for HostEnding {
    fn from(view: relay::upstream::HostView) -> Self {
        Self {
            hostname: view.hostname,
            phase: view.phase.as_str().to_owned(),
            last_error: view.last_error.map(str::to_owned),
            quarantined: view.quarantined.map(str::to_owned),
            events: view.events,
            rate_limited: view.rate_limited,
        }
    }
}

/// What the end-of-run audit requires the log to hold: every event a steady host had
/// emitted by then (the run's end less the `lag_s` the oracles allow).
pub fn audited_until(scenario: &Scenario) -> Duration {
    let lag_s = match (
        &scenario.oracles.no_lost_events,
        &scenario.oracles.bad_hosts_isolated,
    ) {
        (Some(spec), _) => spec.lag_s,
        (None, Some(spec)) => spec.lag_s,
        (None, None) => 0,
    };
    Duration::from_secs(scenario.duration_s.saturating_sub(lag_s))
}

/// The end of a run, before teardown: record what the steady hosts sent per coverage
/// window (when consumers timed deliveries against `send_times`), audit the relay's event
/// log (when the world has upstreams and the relay's `database` can be read: not a black
/// box's), record how every hostile host and every dead host of
/// a loaded table ended (from `hosts`, the relay's host table now) and every consumer's
/// final tally.
pub fn finish(
    scenario: &Scenario,
    sink: &TraceSink,
    database: Option<&Path>,
    plans: &[Arc<upstream::HostPlan>],
    send_times: Option<&consumer::SendTimes>,
    hosts: &[HostEnding],
    tallies: Vec<ConsumerTally>,
) {
    if let Some(sent) =
        send_times.and_then(|times| times.coverage_sent(Duration::from_secs(scenario.duration_s)))
    {
        sink.record("world", sent);
    }
    let tallies: Vec<_> = tallies
        .into_iter()
        .map(|ConsumerTally { name, slow, tally }| {
            let tally = tally.lock().expect("tally lock").clone();
            (name, slow, tally)
        })
        .collect();
    let ranges: Vec<_> = tallies
        .iter()
        .map(|(_, _, tally)| received_whole(tally))
        .collect();
    let scan = database
        .and_then(|database| rusqlite::Connection::open(database).ok())
        .inspect(|log| {
            // Pages mapped, not copied by a read call each: the pass reads the whole log.
            let _ = log.pragma_update(None, "mmap_size", 1_i64 << 40);
        })
        .and_then(|log| scan_log(&log, &ranges));
    let emitted_by = audited_until(scenario);
    if let (Some(_), Some(_)) = (database, &scenario.upstreams) {
        sink.record("world", audit(scan.as_ref(), plans, emitted_by));
    }
    for plan in plans {
        let Some(kind) = plan.hostile else { continue };
        let view = hosts.iter().find(|view| view.hostname == plan.hostname);
        let persisted = scan
            .as_ref()
            .and_then(|scan| scan.per_host.get(&plan.hostname))
            .map_or(0, |(count, _, _)| *count);
        sink.record(
            &plan.hostname,
            Event::HostileOutcome {
                host: plan.hostname.clone(),
                kind: kind.as_str().to_owned(),
                phase: view.map_or("absent", |view| view.phase.as_str()).to_owned(),
                quarantined: view.and_then(|view| view.quarantined.clone()),
                last_error: view.and_then(|view| view.last_error.clone()),
                persisted: persisted as u64,
                rate_limited: view.map_or(0, |view| view.rate_limited),
            },
        );
    }
    if scenario
        .upstreams
        .as_ref()
        .is_some_and(|spec| spec.table.is_some())
    {
        for plan in plans {
            let Some(dead) = plan.dead else { continue };
            let view = hosts.iter().find(|view| view.hostname == plan.hostname);
            sink.record(
                &plan.hostname,
                Event::DeadHostOutcome {
                    host: plan.hostname.clone(),
                    dead: dead.as_str().to_owned(),
                    phase: view.map_or("absent", |view| view.phase.as_str()).to_owned(),
                    last_error: view.and_then(|view| view.last_error.clone()),
                    events: view.map_or(0, |view| view.events),
                },
            );
        }
    }
    let agreements = logs_agree(
        scan.as_ref(),
        &tallies
            .iter()
            .map(|(_, _, tally)| tally)
            .collect::<Vec<_>>(),
    );
    for ((name, slow, tally), log_agrees) in tallies.into_iter().zip(agreements) {
        sink.record(
            &name,
            Event::ConsumerFinal {
                consumer: name.clone(),
                slow,
                last_seq: tally.last_seq,
                frames: tally.frames,
                sessions: tally.sessions,
                too_slow: tally.too_slow,
                max_gap_ms: tally.max_gap_us / 1_000,
                log_agrees,
                latest_event: tally.latest_event,
                on_time: tally.on_time,
            },
        );
    }
}

/// The relay seqs a consumer received whole (`first_seq..=last_seq`, each once), if any.
fn received_whole(tally: &consumer::Tally) -> Option<RangeInclusive<u64>> {
    let (first, last) = (tally.first_seq, tally.last_seq);
    (first != 0 && tally.frames == last - first + 1).then_some(first..=last)
}

/// For each consumer, whether the events it received (its digest over relay seqs
/// `first_seq..=last_seq`, each received once) are the ones the event log holds under those
/// seqs, as `scan` (made with each tally's [`received_whole`] range, in order) found them;
/// `None` when the two cannot be compared: the log could not be read, nothing received, a
/// range the consumer did not receive whole, or rows the log no longer holds (retention).
fn logs_agree(scan: Option<&LogScan>, tallies: &[&consumer::Tally]) -> Vec<Option<bool>> {
    tallies
        .iter()
        .enumerate()
        .map(|(index, tally)| {
            let (count, digest) = scan?.in_ranges.get(index)?.as_ref()?;
            (*count == tally.frames).then_some(*digest == tally.digest)
        })
        .collect()
}

/// The kind of a stored row: its tag (`#commit`), with or without the `#`.
fn stored_kind(tag: &str) -> Option<Kind> {
    Kind::from_tag(tag).or_else(|| Kind::ALL.into_iter().find(|kind| kind.tag()[1..] == *tag))
}

#[cfg(test)]
mod tests {
    use super::shm_has_room;
    use super::*;
    use relay::atproto::frame::{decode, Incoming, Limits};

    /// [`logs_agree`] on one consumer, after a scan of `log` for its range.
    fn agrees(log: &rusqlite::Connection, tally: &consumer::Tally) -> Option<bool> {
        let scan = scan_log(log, &[received_whole(tally)]);
        logs_agree(scan.as_ref(), &[tally])[0]
    }

    #[test]
    fn a_consumer_s_digest_matches_the_log_s() {
        let repos = super::super::repo::Repos::new(
            5,
            super::super::repo::Schedule::regular(Duration::from_millis(20)),
            0,
        );
        let log = rusqlite::Connection::open_in_memory().unwrap();
        log.execute_batch(
            "CREATE TABLE hosts (id INTEGER PRIMARY KEY, hostname TEXT); \
             CREATE TABLE events (seq INTEGER PRIMARY KEY, host_id INTEGER, \
             upstream_seq INTEGER, kind TEXT, body BLOB)",
        )
        .unwrap();
        let mut tally = consumer::Tally::default();
        for (seq, n) in (101..=400).zip(1..) {
            // What the relay does: decode, store the body under its own seq, send
            // `event_frame(kind, body)`.
            let Ok(Incoming::Event(event)) = decode(&repos.frame(n, n), &Limits::default()) else {
                panic!("event {n} does not decode")
            };
            let kind = event.kind;
            let body = event.body.with_seq(seq);
            log.execute(
                "INSERT INTO events VALUES (?1, 1, ?2, ?3, ?4)",
                rusqlite::params![seq as i64, n as i64, kind.tag(), body],
            )
            .unwrap();
            let sent = event_frame(kind, &body);
            tally.digest ^= consumer::event_digest(seq, &sent);
            tally.frames += 1;
            tally.last_seq = seq;
            if tally.first_seq == 0 {
                tally.first_seq = seq;
            }
        }
        assert_eq!(agrees(&log, &tally), Some(true));
        log.execute("UPDATE events SET body = x'00' || body WHERE seq = 250", [])
            .unwrap();
        assert_eq!(agrees(&log, &tally), Some(false), "one changed body shows");
        tally.frames -= 1;
        assert_eq!(agrees(&log, &tally), None, "a range not received whole");
    }

    #[test]
    fn shm_is_used_only_when_mounted_with_room() {
        let mounts = |line: &str| format!("proc /proc proc rw 0 0\n{line}\n");
        assert!(shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,relatime,size=24683652k 0 0"
        )));
        assert!(shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0"
        )));
        assert!(shm_has_room(&mounts("shm /dev/shm tmpfs rw,size=2g 0 0")));
        assert!(!shm_has_room(&mounts(
            "shm /dev/shm tmpfs rw,nosuid,size=65536k 0 0"
        )));
        assert!(!shm_has_room(&mounts(
            "tmpfs /dev/shm tmpfs rw,size=50% 0 0"
        )));
        assert!(!shm_has_room(&mounts("/dev/vda /dev/shm ext4 rw 0 0")));
        assert!(!shm_has_room("tmpfs /run tmpfs rw 0 0\n"));
    }
}
