//! `[[faults]]`: the faults on a scenario's timeline, with what each must hold, and the
//! host selectors (`hosts = { operator = "op-0000" }`) that name which upstream hosts a
//! fault hits by the host table's metadata.

use serde::{Deserialize, Serialize};

use super::host_table::{HostTable, TableHost};
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
    /// Restart the selected upstream hosts' servers: down for the fault's length, then back
    /// with their events, all at once or a rolling deploy.
    HostsRestart {
        /// Which hosts.
        hosts: HostSelector,
        /// A rolling deploy's batches; `None`: every selected host at once.
        rolling: Option<Rolling>,
    },
    /// Cut the network between the relay and the selected upstream hosts.
    HostsDark {
        /// Which hosts.
        hosts: HostSelector,
    },
    /// Make what the selected upstream hosts send reach the relay later.
    HostsLatency {
        /// Which hosts.
        hosts: HostSelector,
        /// Extra one-way latency, milliseconds.
        extra_latency_ms: u64,
    },
}

/// Which upstream hosts a fault hits: the host table's hosts of one operator, kind or
/// region (a table file's metadata), or a fraction of all of them chosen by the seed.
/// Written as a one-key table: `{ operator = "op-0000" }`, `{ fraction = 0.3 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HostSelector {
    /// The table's hosts whose `operator` is this (a failure domain: `op-0000`, the Bluesky
    /// shards).
    Operator(String),
    /// The table's hosts whose `kind` is this (`bsky`, `third_party`).
    Kind(String),
    /// The table's hosts whose `region` is this (`us-east`).
    Region(String),
    /// This fraction of all upstream hosts (hostile ones too), chosen by the seed.
    Fraction(f64),
}

impl HostSelector {
    /// The metadata field it matches, as the table names it (`None` for a fraction).
    fn field(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Operator(value) => Some(("operator", value)),
            Self::Kind(value) => Some(("kind", value)),
            Self::Region(value) => Some(("region", value)),
            Self::Fraction(_) => None,
        }
    }

    /// Whether table host `host` matches (never, for a fraction).
    fn matches(&self, host: &TableHost) -> bool {
        let value = match self {
            Self::Operator(_) => &host.operator,
            Self::Kind(_) => &host.kind,
            Self::Region(_) => &host.region,
            Self::Fraction(_) => return false,
        };
        self.field()
            .is_some_and(|(_, wanted)| value.as_deref() == Some(wanted))
    }

    /// How many of `host_count` upstream hosts (those of `table` first) it selects: the
    /// same whatever the seed.
    pub fn count(&self, table: Option<&HostTable>, host_count: usize) -> usize {
        match self {
            Self::Fraction(fraction) => (fraction * host_count as f64).round() as usize,
            _ => self.matching(table).len(),
        }
    }

    /// The table's hosts it matches, as indices in plan order (the table's hosts come
    /// first, in file order); none for a fraction, which the fault player draws.
    pub fn matching(&self, table: Option<&HostTable>) -> Vec<usize> {
        table.map_or_else(Vec::new, |table| {
            (0..table.hosts.len())
                .filter(|&index| self.matches(&table.hosts[index]))
                .collect()
        })
    }

    /// What is wrong with it in `scenario` (at `key`): a fraction outside 0..=1, metadata
    /// without a table file, a value no host of the table has.
    fn problems(&self, scenario: &Scenario, key: &str) -> Vec<Problem> {
        let table = scenario
            .upstreams
            .as_ref()
            .and_then(|spec| spec.table.as_ref());
        match (self, self.field(), table) {
            (Self::Fraction(fraction), _, _) if !(0.0..=1.0).contains(fraction) => {
                vec![Problem::new(key, "expected a fraction within 0..=1".into())]
            }
            (_, Some((field, _)), None) => vec![Problem::new(
                key,
                format!(
                    "a selector by {field} needs upstreams.table: a generated host table has \
                     no {field}s"
                ),
            )],
            (_, Some((field, value)), Some(table)) if self.count(Some(table), 0) == 0 => {
                vec![Problem::new(
                    key,
                    format!("no host of {} has {field} {value:?}", table.path.display()),
                )]
            }
            _ => Vec::new(),
        }
    }
}

/// A rolling deploy: `batch` hosts go down together, a batch every `every_s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Hosts restarted together.
    pub batch: u32,
    /// Seconds from one batch going down to the next (at least the fault's `down_s`: a
    /// batch is back before the next goes down).
    pub every_s: u64,
}

impl FaultSpec {
    /// When the fault is over in `scenario`, seconds: a rolling deploy's last batch is back
    /// `duration_s` after it went down.
    pub fn end_s(&self, scenario: &Scenario) -> u64 {
        match &self.kind {
            FaultKind::HostsRestart {
                hosts,
                rolling: Some(rolling),
            } => {
                let table = scenario
                    .upstreams
                    .as_ref()
                    .and_then(|spec| spec.table.as_ref());
                let selected = hosts.count(table, scenario.upstream_hosts() as usize) as u64;
                let batches = selected.div_ceil(u64::from(rolling.batch.max(1)));
                self.at_s + rolling.every_s * batches.saturating_sub(1) + self.duration_s
            }
            _ => self.at_s + self.duration_s,
        }
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
            Self::HostsRestart { .. } => "hosts_restart",
            Self::HostsDark { .. } => "hosts_dark",
            Self::HostsLatency { .. } => "hosts_latency",
        }
    }

    /// What the world that plays it must be able to do.
    pub fn needs(&self) -> Feature {
        match self {
            Self::Partition { .. } | Self::HostsDark { .. } => Feature::Partition,
            Self::HostsRestart { .. } => Feature::HostRestart,
            Self::HostsLatency { .. } => Feature::HostLatency,
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

    /// Whether the fault stops something that comes back (its length is then written
    /// `down_s`): the relay's kill, power loss and restart, and hosts' restarts.
    pub fn stops_and_starts(&self) -> bool {
        matches!(
            self,
            Self::KillRelay | Self::PowerLoss | Self::RestartRelay | Self::HostsRestart { .. }
        )
    }

    /// The key that sets the fault's length in files: `duration_s`, or `down_s` for the
    /// relay's kill, power loss and restart, and hosts' restarts.
    pub fn length_key(&self) -> &'static str {
        if self.stops_and_starts() {
            "down_s"
        } else {
            "duration_s"
        }
    }

    /// What "no effect" means for this kind (the `faults_fired` oracle's explanation).
    pub fn no_effect(&self) -> &'static str {
        match self {
            Self::Partition { .. } | Self::HostsDark { .. } => "it cut off no upstream host",
            Self::HostsRestart { .. } => "it restarted no upstream host",
            Self::HostsLatency { .. } => {
                "no selected host sent a handshake answer or an event in its window"
            }
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
            E::HostsRestart {
                at_s,
                down_s,
                hosts,
                rolling,
            } => (at_s, down_s, FaultKind::HostsRestart { hosts, rolling }),
            E::HostsDark {
                at_s,
                duration_s,
                hosts,
            } => (at_s, duration_s, FaultKind::HostsDark { hosts }),
            E::HostsLatency {
                at_s,
                duration_s,
                hosts,
                extra_latency_ms,
            } => (
                at_s,
                duration_s,
                FaultKind::HostsLatency {
                    hosts,
                    extra_latency_ms,
                },
            ),
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
            FaultKind::HostsRestart { hosts, rolling } => Self::HostsRestart {
                at_s,
                down_s,
                hosts,
                rolling,
            },
            FaultKind::HostsDark { hosts } => Self::HostsDark {
                at_s,
                duration_s,
                hosts,
            },
            FaultKind::HostsLatency {
                hosts,
                extra_latency_ms,
            } => Self::HostsLatency {
                at_s,
                duration_s,
                hosts,
                extra_latency_ms,
            },
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
    /// Make the relay's work-route handlers (`/hosts`, `requestCrawl`) panic from `at_s`
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
    /// Restart the servers of the upstream hosts `hosts` selects at `at_s` (a PDS restart):
    /// their connections drop and connections to them are refused for `down_s`, then they
    /// serve again with their events still there, so the relay resumes from its cursors.
    /// All at once, or a rolling deploy (`rolling`): `batch` hosts (in table order) go down
    /// every `every_s`.
    HostsRestart {
        /// When (the first batch), seconds.
        at_s: u64,
        /// How long each host stays down, seconds.
        down_s: u64,
        /// Which hosts.
        hosts: HostSelector,
        /// The deploy's batches; absent: every selected host at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rolling: Option<Rolling>,
    },
    /// Cut the network between the relay and the upstream hosts `hosts` selects (both
    /// directions) from `at_s` for `duration_s`: an operator going dark and coming back.
    HostsDark {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Which hosts.
        hosts: HostSelector,
    },
    /// Make what the upstream hosts `hosts` selects send (their handshake answers and
    /// event frames) reach the relay `extra_latency_ms` later, from `at_s` for
    /// `duration_s`: a region's latency rising. Held back by the hosts themselves (the
    /// simulated networks have no per-link latency); hostile hosts ignore it.
    HostsLatency {
        /// Start, seconds.
        at_s: u64,
        /// Length, seconds.
        duration_s: u64,
        /// Which hosts.
        hosts: HostSelector,
        /// Extra one-way latency, milliseconds.
        extra_latency_ms: u64,
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
        match &fault.kind {
            FaultKind::HostsRestart { hosts, rolling } => {
                found.extend(selector_problems(scenario, fault, hosts, &key("hosts")));
                if let Some(rolling) = rolling {
                    if rolling.batch == 0 {
                        found.push(Problem::new(
                            &key("rolling.batch"),
                            "expected batch >= 1".into(),
                        ));
                    }
                    if rolling.every_s < fault.duration_s {
                        found.push(Problem::new(
                            &key("rolling.every_s"),
                            format!(
                                "expected every_s >= down_s ({}s): a batch is back before the \
                                 next goes down",
                                fault.duration_s
                            ),
                        ));
                    }
                }
            }
            FaultKind::HostsDark { hosts } => {
                found.extend(selector_problems(scenario, fault, hosts, &key("hosts")));
            }
            FaultKind::HostsLatency {
                hosts,
                extra_latency_ms,
            } => {
                found.extend(selector_problems(scenario, fault, hosts, &key("hosts")));
                if *extra_latency_ms == 0 {
                    found.push(Problem::new(
                        &key("extra_latency_ms"),
                        "expected extra_latency_ms >= 1".into(),
                    ));
                }
            }
            _ => {}
        }
        let length = fault.kind.length_key();
        if fault.duration_s == 0 {
            found.push(Problem::new(
                &key(length),
                format!("expected {length} >= 1"),
            ));
        }
        if fault.end_s(scenario) > scenario.duration_s {
            found.push(Problem::new(
                &key(length),
                format!(
                    "expected the fault to end by duration_s ({}s), it ends at {}s",
                    scenario.duration_s,
                    fault.end_s(scenario)
                ),
            ));
        }
    }
    found
}

/// A host-selecting fault's problems: it needs `[upstreams]`, and a selector that holds.
fn selector_problems(
    scenario: &Scenario,
    fault: &FaultSpec,
    hosts: &HostSelector,
    key: &str,
) -> Vec<Problem> {
    if scenario.upstreams.is_none() {
        return vec![Problem::new(
            key,
            format!("a {} needs [upstreams]", fault.kind.name()),
        )];
    }
    hosts.problems(scenario, key)
}
