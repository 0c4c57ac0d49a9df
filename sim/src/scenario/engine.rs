//! `engine`: which world runs a scenario, and what each world can play. The worlds differ
//! in a few [`Feature`]s; each world's [`Supports`] table says which it refuses and why,
//! and is the one place that says so: validation asks it of the world a scenario names
//! (or of real mode, for `run --real`), and the world itself
//! (`crate::worlds::World::SUPPORTS`) implements what its table does not refuse.

use serde::{Deserialize, Serialize};

use super::{Problem, Scenario};

/// The engines a scenario can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineName {
    /// madsim: the relay on simulated nodes, with the CPU model and the relay's fault points.
    #[default]
    Madsim,
    /// turmoil: TCP-faithful hosts on paused tokio runtimes, for small topologies.
    Turmoil,
}

impl EngineName {
    /// The name as scenario files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Madsim => "madsim",
            Self::Turmoil => "turmoil",
        }
    }

    /// The command prefix of the build that has this engine (`<prefix> run …`).
    pub fn cargo_command(self) -> &'static str {
        match self {
            Self::Madsim => "cargo sim",
            Self::Turmoil => "cargo run --release -p windtunnel --",
        }
    }

    /// What this engine's world can play.
    pub fn supports(self) -> &'static Supports {
        match self {
            Self::Madsim => &MADSIM,
            Self::Turmoil => &TURMOIL,
        }
    }
}

/// What a scenario can ask of the world that plays it, where the worlds differ: what a
/// fault does ([`super::FaultKind::needs`]) and a few settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Cut the links between the relay and some upstream hosts (`partition`, `hosts_dark`).
    Partition,
    /// Stop upstream hosts' servers and start them again (`hosts_restart`).
    HostRestart,
    /// Slow down what some upstream hosts send (`hosts_latency`).
    HostLatency,
    /// Cut the relay off the network (`clog`).
    Clog,
    /// Change the latency of every packet (`latency`).
    Latency,
    /// Stop the relay and start it again (`kill_relay`, `restart_relay`, the prober's
    /// liveness restarts).
    RelayRestart,
    /// Leave the relay's database only what a power cut leaves (`power_loss`).
    PowerLoss,
    /// Switch the relay's fault points (`store_fault`, `store_stall`, `handler_panic`,
    /// `handler_stall`).
    FaultPoints,
    /// A bounded accept queue (`network.tcp_capacity`).
    AcceptQueue,
    /// Half-closed requests (`churners[].mix.half_close`).
    HalfClose,
    /// Hostile upstream hosts, whose outcomes are read from the relay's host table
    /// (`upstreams.hostile`).
    HostileUpstreams,
    /// A host table loaded from a file (`upstreams.table`): its names as DNS names, and
    /// hosts whose names do not resolve.
    HostTable,
    /// Consumers timing each delivery against when its host sent it (`coverage_min`).
    DeliveryTiming,
    /// Crawling abusers (`abusers[].kind = "crawl_…"`), whose names resolve in the world's
    /// DNS to a black hole and to recording listeners on internal addresses.
    CrawlWorld,
}

/// What a world can play: the features it refuses, each with why, and how many hosts it
/// holds.
#[derive(Debug)]
pub struct Supports {
    /// How messages name the world: `with <world>`.
    pub world: &'static str,
    /// The features it cannot play, with why.
    refuses: &'static [(Feature, &'static str)],
    /// The most hosts (relay, upstreams and actors) it holds, with why, if it has a limit.
    max_hosts: Option<(u64, &'static str)>,
}

/// The most hosts (relay, upstreams and actors) a turmoil world may have: its links are
/// per host pair, and it steps every host every millisecond.
pub const TURMOIL_MAX_HOSTS: u64 = 300;

/// Why no loopback plays a network fault.
const LOOPBACK_HAS_NO_NETWORK_CONTROL: &str =
    "a real loopback network has no partitions, clogs or latency control";

/// Why only madsim plays a power loss.
const POWER_LOSS_IS_MADSIM_ONLY: &str =
    "the relay database's power loss exists only in the madsim build";

/// Why only madsim restarts upstream hosts.
const HOST_RESTART_IS_MADSIM_ONLY: &str =
    "restarting an upstream host (killing its node, starting its server again) is played by \
     the madsim world only; use engine = \"madsim\"";

/// The madsim world: every fault; thousands of hosts; madsim's TCP, without accept queues
/// or half-close.
pub const MADSIM: Supports = Supports {
    world: "engine = \"madsim\"",
    refuses: &[
        (
            Feature::AcceptQueue,
            "madsim's TCP has no accept queue or window limit; use engine = \"turmoil\"",
        ),
        (
            Feature::HalfClose,
            "madsim's TCP has no half-close; use engine = \"turmoil\"",
        ),
    ],
    max_hosts: None,
};

/// The turmoil world: TCP-faithful hosts, few of them, and no relay fault points.
pub const TURMOIL: Supports = Supports {
    world: "engine = \"turmoil\"",
    refuses: &[
        (
            Feature::FaultPoints,
            "the relay's fault points exist only in the madsim build",
        ),
        (Feature::PowerLoss, POWER_LOSS_IS_MADSIM_ONLY),
        (Feature::HostRestart, HOST_RESTART_IS_MADSIM_ONLY),
        (
            Feature::HostileUpstreams,
            "its outcomes are read from the madsim world's relay; use engine = \"madsim\"",
        ),
        (
            Feature::HostTable,
            "its unresolvable and black-hole hosts are played by the madsim world and real \
             mode; use engine = \"madsim\"",
        ),
        (
            Feature::DeliveryTiming,
            "the turmoil world does not tell consumers when each event was sent; use \
             engine = \"madsim\" (or run --real)",
        ),
        (Feature::CrawlWorld, ONLY_MADSIM_HAS_THE_CRAWL_WORLD),
    ],
    max_hosts: Some((
        TURMOIL_MAX_HOSTS,
        "its links are per host pair; use engine = \"madsim\"",
    )),
};

/// Real mode (`run --real`): a real loopback and the relay as a process, which can only be
/// stopped and started.
pub const REAL: Supports = Supports {
    world: "--real",
    refuses: &[
        (Feature::Partition, LOOPBACK_HAS_NO_NETWORK_CONTROL),
        (Feature::Clog, LOOPBACK_HAS_NO_NETWORK_CONTROL),
        (Feature::Latency, LOOPBACK_HAS_NO_NETWORK_CONTROL),
        (Feature::PowerLoss, POWER_LOSS_IS_MADSIM_ONLY),
        (Feature::HostRestart, HOST_RESTART_IS_MADSIM_ONLY),
        (
            Feature::HostLatency,
            "real mode's faults reach only the relay's process, not its upstream hosts",
        ),
        (
            Feature::FaultPoints,
            "the relay's fault points exist only in simulation builds",
        ),
        (
            Feature::AcceptQueue,
            "network.tcp_capacity is turmoil's accept queue; a real listener's backlog is the \
             kernel's",
        ),
        (
            Feature::HostileUpstreams,
            "the hostile hosts' outcomes are read from the relay's host table in the simulated \
             worlds only",
        ),
        (Feature::CrawlWorld, ONLY_MADSIM_HAS_THE_CRAWL_WORLD),
    ],
    max_hosts: None,
};

/// Why only the madsim world plays crawlers.
const ONLY_MADSIM_HAS_THE_CRAWL_WORLD: &str =
    "the crawlers' names, black hole and internal listeners are the madsim world's DNS and \
     nodes; use engine = \"madsim\"";

impl Supports {
    /// Why this world cannot play `feature`, if it cannot.
    pub fn refusal(&self, feature: Feature) -> Option<&'static str> {
        self.refuses
            .iter()
            .find(|(refused, _)| *refused == feature)
            .map(|(_, why)| *why)
    }

    /// Whether this world can play `feature`.
    pub fn supports(&self, feature: Feature) -> bool {
        self.refusal(feature).is_none()
    }

    /// What this world cannot play of `scenario`: every feature it uses that the world
    /// refuses, at the key that asks for it, and a topology too large for it.
    pub fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let mut found: Vec<Problem> = uses(scenario)
            .into_iter()
            .filter_map(
                |Use {
                     feature,
                     key,
                     expected,
                 }| {
                    let why = self.refusal(feature)?;
                    Some(Problem::new(
                        &key,
                        format!("expected {expected} with {} ({why})", self.world),
                    ))
                },
            )
            .collect();
        let hosts = scenario.host_count();
        if let Some((max, why)) = self.max_hosts.filter(|&(max, _)| hosts > max) {
            found.push(Problem::new(
                "engine",
                format!(
                    "expected at most {max} hosts with {} ({why}), found {hosts}",
                    self.world
                ),
            ));
        }
        found
    }
}

/// One feature a scenario uses: which, the key that asks for it, and what a world that
/// refuses it expects there instead.
struct Use {
    feature: Feature,
    key: String,
    expected: String,
}

/// Every feature `scenario` uses that some world refuses.
fn uses(scenario: &Scenario) -> Vec<Use> {
    let upstreams = scenario.upstreams.as_ref();
    // Features a key switches on: (switched on, feature, key, what a refusing world expects).
    let switches = [
        (
            scenario.network.tcp_capacity.is_some(),
            Feature::AcceptQueue,
            "network.tcp_capacity",
            "no tcp_capacity",
        ),
        (
            upstreams.is_some_and(|upstreams| upstreams.hostile.is_some()),
            Feature::HostileUpstreams,
            "upstreams.hostile",
            "no hostile cast",
        ),
        (
            scenario
                .prober
                .as_ref()
                .is_some_and(|prober| prober.restart),
            Feature::RelayRestart,
            "prober.restart",
            "restart = false",
        ),
        (
            upstreams.is_some_and(|upstreams| upstreams.table.is_some()),
            Feature::HostTable,
            "upstreams.table",
            "upstreams.hosts instead of a table",
        ),
        (
            scenario.oracles.coverage_min.is_some(),
            Feature::DeliveryTiming,
            "oracles.coverage_min",
            "no coverage_min",
        ),
        (
            scenario
                .abusers
                .iter()
                .any(|abuser| abuser.kind.is_crawler()),
            Feature::CrawlWorld,
            "abusers",
            "no crawling abusers",
        ),
    ];
    let mut found: Vec<Use> = switches
        .into_iter()
        .filter(|(on, ..)| *on)
        .map(|(_, feature, key, expected)| Use {
            feature,
            key: key.into(),
            expected: expected.into(),
        })
        .collect();
    for (index, churner) in scenario.churners.iter().enumerate() {
        if churner.mix.half_close > 0 {
            found.push(Use {
                feature: Feature::HalfClose,
                key: format!("churners[{index}].mix.half_close"),
                expected: "half_close = 0".into(),
            });
        }
    }
    for (index, fault) in scenario.faults.iter().enumerate() {
        found.push(Use {
            feature: fault.kind.needs(),
            key: format!("faults[{index}].kind"),
            expected: format!("no {} fault", fault.kind.name()),
        });
    }
    found
}

/// What the engine a scenario names cannot play, and a turmoil accept queue of no size.
pub(super) fn problems(scenario: &Scenario) -> Vec<Problem> {
    let supports = scenario.engine.supports();
    let mut found = supports.problems(scenario);
    if supports.supports(Feature::AcceptQueue) && scenario.network.tcp_capacity == Some(0) {
        found.push(Problem::new(
            "network.tcp_capacity",
            "expected a capacity of at least 1".into(),
        ));
    }
    found
}
