//! `[[faults]]`: the faults on a scenario's timeline, with what each must hold.

use serde::{Deserialize, Serialize};

use super::{Between, Feature, Problem, Scenario};

/// One fault on the timeline: when it starts, how long it lasts, and what it does. Written
/// flat in files (`kind`, `at_s`, `duration_s` or `down_s`, and the kind's own keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "FaultEntry", into = "FaultEntry")]
pub struct FaultSpec {
    /// Start, seconds.
    pub at_s: u64,
    /// Length, seconds: for the relay's kill, power loss and restart, how long it stays down
    /// (`down_s` in files).
    pub duration_s: u64,
    /// What it does.
    pub kind: FaultKind,
}

/// What a fault does (each kind is documented in full on its file form, `FaultEntry`).
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Cut the network between the relay and a fraction of the upstream hosts.
    Partition {
        /// Fraction of upstream hosts cut off (chosen by the seed).
        hosts_fraction: f64,
    },
    /// Cut the relay's node off the network entirely.
    Clog,
    /// Change the one-way latency of every packet.
    Latency {
        /// One-way latency range during the window, milliseconds.
        latency_ms: Between<u64>,
    },
    /// Kill the relay's node, then start it again on the same database.
    KillRelay,
    /// Cut the relay's power: killed, and its database loses what was not durable.
    PowerLoss,
    /// Shut the relay down gracefully, then start it again.
    RestartRelay,
    /// Make the relay's event-log writes (and reads, if `reads`) fail.
    StoreFault {
        /// Fail reads too (catch-up pages).
        reads: bool,
    },
    /// Make every store call hang.
    StoreStall,
    /// Make the relay's work-route handlers panic.
    HandlerPanic,
    /// Make the relay's work-route handlers never finish.
    HandlerStall,
}

impl FaultSpec {
    /// When the fault is over, seconds.
    pub fn end_s(&self) -> u64 {
        self.at_s + self.duration_s
    }
}

impl FaultKind {
    /// The kind as written in scenario files and trace records.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Partition { .. } => "partition",
            Self::Clog => "clog",
            Self::Latency { .. } => "latency",
            Self::KillRelay => "kill_relay",
            Self::PowerLoss => "power_loss",
            Self::RestartRelay => "restart_relay",
            Self::StoreFault { .. } => "store_fault",
            Self::StoreStall => "store_stall",
            Self::HandlerPanic => "handler_panic",
            Self::HandlerStall => "handler_stall",
        }
    }

    /// What the world that plays it must be able to do.
    pub fn needs(&self) -> Feature {
        match self {
            Self::Partition { .. } => Feature::Partition,
            Self::Clog => Feature::Clog,
            Self::Latency { .. } => Feature::Latency,
            Self::KillRelay | Self::RestartRelay => Feature::RelayRestart,
            Self::PowerLoss => Feature::PowerLoss,
            Self::StoreFault { .. }
            | Self::StoreStall
            | Self::HandlerPanic
            | Self::HandlerStall => Feature::FaultPoints,
        }
    }

    /// Whether the fault stops the relay (its length is then written `down_s`).
    pub fn stops_the_relay(&self) -> bool {
        matches!(self, Self::KillRelay | Self::PowerLoss | Self::RestartRelay)
    }

    /// The key that sets the fault's length in files: `duration_s`, or `down_s` for the
    /// relay's kill, power loss and restart.
    pub fn length_key(&self) -> &'static str {
        if self.stops_the_relay() {
            "down_s"
        } else {
            "duration_s"
        }
    }

    /// What "no effect" means for this kind (the `faults_fired` oracle's explanation).
    pub fn no_effect(&self) -> &'static str {
        match self {
            Self::Partition { .. } => "it cut off no upstream host",
            Self::StoreFault { .. } => "no store call reached a failing fault point in its window",
            Self::StoreStall => "no store call was made in its window",
            Self::HandlerPanic | Self::HandlerStall => "no work-route handler ran in its window",
            Self::KillRelay | Self::PowerLoss | Self::RestartRelay => {
                "the relay was not up to stop"
            }
            Self::Clog | Self::Latency { .. } => "the network was not changed",
        }
    }
}

impl From<FaultEntry> for FaultSpec {
    fn from(entry: FaultEntry) -> Self {
        use FaultEntry as E;
        let (at_s, duration_s, kind) = match entry {
            E::Partition {
                at_s,
                duration_s,
                hosts_fraction,
            } => (at_s, duration_s, FaultKind::Partition { hosts_fraction }),
            E::Clog { at_s, duration_s } => (at_s, duration_s, FaultKind::Clog),
            E::Latency {
                at_s,
                duration_s,
                latency_ms,
            } => (at_s, duration_s, FaultKind::Latency { latency_ms }),
            E::KillRelay { at_s, down_s } => (at_s, down_s, FaultKind::KillRelay),
            E::PowerLoss { at_s, down_s } => (at_s, down_s, FaultKind::PowerLoss),
            E::RestartRelay { at_s, down_s } => (at_s, down_s, FaultKind::RestartRelay),
            E::StoreFault {
                at_s,
                duration_s,
                reads,
            } => (at_s, duration_s, FaultKind::StoreFault { reads }),
            E::StoreStall { at_s, duration_s } => (at_s, duration_s, FaultKind::StoreStall),
            E::HandlerPanic { at_s, duration_s } => (at_s, duration_s, FaultKind::HandlerPanic),
            E::HandlerStall { at_s, duration_s } => (at_s, duration_s, FaultKind::HandlerStall),
        };
        Self {
            at_s,
            duration_s,
            kind,
        }
    }
}

impl From<FaultSpec> for FaultEntry {
    fn from(
        FaultSpec {
            at_s,
            duration_s,
            kind,
        }: FaultSpec,
    ) -> Self {
        let down_s = duration_s;
        match kind {
            FaultKind::Partition { hosts_fraction } => Self::Partition {
                at_s,
                duration_s,
                hosts_fraction,
            },
            FaultKind::Clog => Self::Clog { at_s, duration_s },
            FaultKind::Latency { latency_ms } => Self::Latency {
                at_s,
                duration_s,
                latency_ms,
            },
            FaultKind::KillRelay => Self::KillRelay { at_s, down_s },
            FaultKind::PowerLoss => Self::PowerLoss { at_s, down_s },
            FaultKind::RestartRelay => Self::RestartRelay { at_s, down_s },
            FaultKind::StoreFault { reads } => Self::StoreFault {
                at_s,
                duration_s,
                reads,
            },
            FaultKind::StoreStall => Self::StoreStall { at_s, duration_s },
            FaultKind::HandlerPanic => Self::HandlerPanic { at_s, duration_s },
            FaultKind::HandlerStall => Self::HandlerStall { at_s, duration_s },
        }
    }
}

/// A `[[faults]]` entry as written in a scenario file: the kind's tag, its start and
/// length, and its own keys. The model is [`FaultSpec`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum FaultEntry {
    /// Cut the network between the relay and a fraction of the upstream hosts (both
    /// directions) from `at_s` for `duration_s`.
    Partition {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Fraction of upstream hosts cut off (chosen by the seed).
        hosts_fraction: f64,
    },
    /// Cut the relay's node off the network entirely (every link, both directions) from
    /// `at_s` for `duration_s`: new connections are refused, bytes of live ones are held
    /// until it heals (madsim's clog).
    Clog {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Change the one-way latency of every packet to `latency_ms` from `at_s` for
    /// `duration_s`, then restore `[network].latency_ms`.
    Latency {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// One-way latency range during the window, milliseconds.
        latency_ms: Between<u64>,
    },
    /// Kill the relay's node at `at_s` (no drain: in-flight work is lost, as in a crash or
    /// an OOM kill) and start it again `down_s` later on the same database.
    KillRelay {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down, seconds.
        down_s: u64,
    },
    /// Cut the relay's power at `at_s`: its node dies as in `kill_relay`, and its database
    /// files lose what the relay's commits did not make durable (the WAL's unsynced tail:
    /// everything not yet checkpointed, unless the store syncs the WAL at every commit);
    /// it starts again `down_s` later on what survived.
    PowerLoss {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down, seconds.
        down_s: u64,
    },
    /// Ask the relay to shut down gracefully at `at_s` (stop accepting, request every
    /// connection to close, drain), then start it again `down_s` after it stopped.
    RestartRelay {
        /// When, seconds.
        at_s: u64,
        /// How long it stays down after it stopped, seconds.
        down_s: u64,
    },
    /// Make the relay's event-log writes (and reads, if `reads`) fail from `at_s` for
    /// `duration_s`, through the relay's store fault points.
    StoreFault {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Fail reads too (catch-up pages).
        #[serde(default)]
        reads: bool,
    },
    /// Make every store call the relay makes from async code hang from `at_s` for
    /// `duration_s` (a full disk, a checkpoint's fsync, a lock held by another process),
    /// through the relay's `StoreStall` fault point.
    StoreStall {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Make the relay's work-route handlers (`/hosts`, `/requestCrawl`) panic from `at_s`
    /// for `duration_s`, through the relay's `HandlerPanic` fault point.
    HandlerPanic {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
    /// Make the relay's work-route handlers never finish from `at_s` for `duration_s`,
    /// through the relay's `HandlerStall` fault point.
    HandlerStall {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
    },
}

/// `[[faults]]`' problems.
pub(super) fn problems(scenario: &Scenario) -> Vec<Problem> {
    let mut found = Vec::new();
    for (index, fault) in scenario.faults.iter().enumerate() {
        let key = |field: &str| format!("faults[{index}].{field}");
        if let FaultKind::Partition { hosts_fraction } = fault.kind {
            if scenario.upstreams.is_none() {
                found.push(Problem::new(
                    &key("kind"),
                    "a partition needs [upstreams]".into(),
                ));
            }
            if !(0.0..=1.0).contains(&hosts_fraction) {
                found.push(Problem::new(
                    &key("hosts_fraction"),
                    "expected hosts_fraction within 0..=1".into(),
                ));
            }
        }
        let length = fault.kind.length_key();
        if fault.duration_s == 0 {
            found.push(Problem::new(
                &key(length),
                format!("expected {length} >= 1"),
            ));
        }
        if fault.end_s() > scenario.duration_s {
            found.push(Problem::new(
                &key(length),
                format!(
                    "expected the fault to end by duration_s ({}s), it ends at {}s",
                    scenario.duration_s,
                    fault.end_s()
                ),
            ));
        }
    }
    found
}
