//! Scenario files: the schema, loading, and validation with `file:line:col: …` errors.
//!
//! A scenario names the simulated duration, relay configuration overrides (the relay's own
//! schema, so a typo in `[relay]` is caught exactly as the binary would catch it), the
//! network, the clients, the oracles to check, and whether the run is expected to pass or
//! to fail a named oracle (to prove that oracle bites). Every table is
//! `deny_unknown_fields`. Each section lives in its own module with its types and the
//! problems it can have on its own; this module holds the file as a whole, the checks that
//! span sections, and loading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oracle::{OracleName, OracleSpecs};
use crate::swarm::SwarmRange;

mod clients;
mod engine;
mod faults;
mod host_table;
mod network;
mod problems;
mod upstreams;

pub use clients::{
    AbuseKind, AbuserSpec, CallerSpec, ChurnMix, ChurnerSpec, ConsumerKind, ConsumerSpec,
    ProberSpec,
};
pub use engine::{EngineName, Feature, Supports, MADSIM, REAL, TURMOIL, TURMOIL_MAX_HOSTS};
pub use faults::{FaultKind, FaultSpec, HostSelector, Rolling};
pub use host_table::{HostStatus, HostTable, TableHost};
pub use network::NetworkSpec;
pub use problems::{Located, Problem};
pub use upstreams::{HostileKind, HostileSpec, RateSpec, UpstreamsSpec};

/// One scenario file, parsed and validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short identifier, used in reports and artifact names.
    pub name: String,
    /// What the scenario reproduces and why it should pass (or fail).
    #[serde(default)]
    pub description: String,
    /// Simulated duration of the whole run, seconds.
    pub duration_s: u64,
    /// Which engine runs the scenario: `"madsim"` (the default: thousands of hosts, run by
    /// `cargo sim …`) or `"turmoil"` (small topologies with TCP's RST, half-close and a
    /// bounded accept queue; runs in an ordinary build, `cargo run -p windtunnel -- …`).
    #[serde(default)]
    pub engine: EngineName,
    /// `"pass"`, or `{ fail = "<oracle>" }` for a scenario that proves an oracle bites.
    #[serde(default)]
    pub expect: Expect,
    /// Reachability probes (`relay::rt::probe` names) that a sweep of this scenario must
    /// reach at least once (madsim only). Before the tables, so it serialises as a top-level
    /// key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<String>,
    /// Relay configuration (the relay's own schema and defaults). `server.listen` is
    /// replaced by the world's relay address.
    #[serde(default)]
    pub relay: relay::config::Config,
    /// The simulated network.
    #[serde(default)]
    pub network: NetworkSpec,
    /// A Kubernetes-style liveness prober, if any.
    pub prober: Option<ProberSpec>,
    /// Groups of client nodes opening and closing connections.
    #[serde(default)]
    pub churners: Vec<ChurnerSpec>,
    /// Upstream hosts the relay subscribes to (its host table is generated from this, or
    /// loaded from the file it names).
    pub upstreams: Option<UpstreamsSpec>,
    /// Groups of downstream consumers on `/subscribe`.
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
    /// Groups of API clients calling one path periodically (what a handler fault hits).
    #[serde(default)]
    pub callers: Vec<CallerSpec>,
    /// Groups of clients sending bad input (slowloris, huge heads, garbage, bad frames).
    #[serde(default)]
    pub abusers: Vec<AbuserSpec>,
    /// Faults on a timeline.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Which oracles to check, with their bounds.
    pub oracles: OracleSpecs,
    /// Swarm ranges: dotted scenario keys whose values each seed draws (see [`crate::swarm`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub swarm: BTreeMap<String, SwarmRange>,
}

/// Expected verdict of a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Every oracle holds.
    #[default]
    Pass,
    /// The named oracle reports a violation (other oracles may or may not).
    Fail(OracleName),
}

/// An inclusive `[min, max]` range drawn from by the seeded RNG; written `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Between<T> {
    /// Smallest value.
    pub min: T,
    /// Largest value.
    pub max: T,
}

impl<T> Between<T> {
    /// Convert both bounds.
    pub fn map<U>(self, convert: impl Fn(T) -> U) -> Between<U> {
        Between {
            min: convert(self.min),
            max: convert(self.max),
        }
    }
}

impl<T: Serialize> Serialize for Between<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        [&self.min, &self.max].serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de> + PartialOrd + fmt::Display + Copy> Deserialize<'de> for Between<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [min, max] = <[T; 2]>::deserialize(deserializer)?;
        if min > max {
            return Err(serde::de::Error::custom(format!(
                "expected [min, max] with min <= max, got [{min}, {max}]"
            )));
        }
        Ok(Self { min, max })
    }
}

/// A scenario that could not be loaded: where, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Not valid TOML, not the scenario schema, or inconsistent (e.g. a churner outliving
    /// the scenario): every problem found, one `file:line:col: message` per line.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Located>,
    },
}

fn render_problems(path: &Path, problems: &[Located]) -> String {
    problems
        .iter()
        .map(|problem| {
            format!(
                "{}:{}:{}: {}",
                path.display(),
                problem.line,
                problem.column,
                problem.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Scenario {
    /// Read, parse and validate a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate scenario text, reporting every problem; `path` is used in errors
    /// and to resolve the paths the scenario names (relative to its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ScenarioError> {
        let directory = path.parent().unwrap_or(Path::new(""));
        problems::parse(text, directory).map_err(|problems| ScenarioError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// When the last churner stops starting connections, seconds (0 without churners).
    pub fn churn_end_s(&self) -> u64 {
        self.churners.iter().map(|c| c.stop_s).max().unwrap_or(0)
    }

    /// Every host of the world: the relay, the upstream hosts, the prober, and the nodes of
    /// the churners, callers, abusers and consumers.
    pub fn host_count(&self) -> u64 {
        1 + self.upstream_hosts()
            + u64::from(self.prober.is_some())
            + self.churners.iter().map(|c| c.nodes as u64).sum::<u64>()
            + self.callers.iter().map(|c| c.nodes as u64).sum::<u64>()
            + self.abusers.iter().map(|a| a.nodes as u64).sum::<u64>()
            + self.consumers.iter().map(|c| c.count as u64).sum::<u64>()
    }

    /// The upstream hosts: polite (generated or the table's) and hostile.
    pub fn upstream_hosts(&self) -> u64 {
        self.upstreams.as_ref().map_or(0, |spec| {
            u64::from(spec.polite_hosts()) + spec.hostile.as_ref().map_or(0, |h| u64::from(h.hosts))
        })
    }

    /// Semantic checks beyond the schema: every problem, each naming its dotted key (empty
    /// when the scenario is consistent).
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        if self.duration_s == 0 {
            found.push(Problem::new(
                "duration_s",
                "expected a duration of at least 1 second".into(),
            ));
        }
        if let Err(error) = self.relay.check() {
            found.push(Problem::new(&relay_key(&error), error.to_string()));
        }
        found.extend(engine::problems(self));
        for name in &self.reach {
            if relay::rt::probe::Probe::named(name).is_none() {
                let known: Vec<&str> = relay::rt::probe::Probe::ALL
                    .iter()
                    .map(|probe| probe.name())
                    .collect();
                found.push(Problem::new(
                    "reach",
                    format!(
                        "unknown probe {name:?}; expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        if !self.reach.is_empty() && self.engine != EngineName::Madsim {
            found.push(Problem::new(
                "reach",
                "expected no reach on this engine: the relay's probes are counted only under madsim"
                    .into(),
            ));
        }
        found.extend(upstreams::problems(self));
        found.extend(faults::problems(self));
        found.extend(self.oracles.problems(self));
        found.extend(clients::problems(self));
        if let Expect::Fail(oracle) = self.expect {
            if !self.checks(oracle) {
                found.push(Problem::new(
                    "expect",
                    format!("expects {oracle} to fail, but [oracles] does not check it"),
                ));
            }
        }
        if found.is_empty() {
            found.extend(crate::swarm::check(self));
        }
        found
    }

    /// When the last consumer leaves, if every group has a `stop_s` (and there is one).
    pub fn consumers_end_s(&self) -> Option<u64> {
        let stops: Option<Vec<u64>> = self.consumers.iter().map(|c| c.stop_s).collect();
        stops?.into_iter().max()
    }

    /// Names of the consumers of `kind`, as the world names them.
    pub fn consumer_names(&self, kind: ConsumerKind) -> Vec<String> {
        self.consumers
            .iter()
            .filter(|group| group.kind == kind)
            .flat_map(|group| (0..group.count).map(move |index| format!("{}-{index}", group.name)))
            .collect()
    }

    /// Whether `oracle` is checked in this scenario.
    pub fn checks(&self, oracle: OracleName) -> bool {
        match oracle {
            OracleName::NoPanics => true,
            OracleName::FaultsFired => !self.faults.is_empty(),
            listed => self.oracles.lists(listed),
        }
    }
}

/// The scenario key a relay configuration error is about: `relay.` and the dotted key its
/// message starts with (`server.max_connections must be …`), else `relay`.
fn relay_key(error: &relay::config::ConfigError) -> String {
    let relay::config::ConfigError::Inconsistent(message) = error else {
        return "relay".to_owned();
    };
    message
        .split_whitespace()
        .next()
        .filter(|word| {
            word.contains('.')
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        })
        .map_or_else(|| "relay".to_owned(), |word| format!("relay.{word}"))
}
