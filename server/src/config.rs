//! Relay configuration: the schema, its documented defaults, and how layers combine.
//!
//! Precedence, lowest first: embedded defaults < TOML file < `RELAY__SECTION__KEY`
//! environment variables < `--set section.key=value` flags. Each layer is validated on its
//! own before merging, so an unknown key is reported with the layer it came from
//! (`file relay.toml:3:1`, `env RELAY__SERVER__MAX_CONECTIONS`, `--set server.lsten=…`).
//! Every struct is `deny_unknown_fields`: a typo is an error, never silently ignored.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::events::EventsConfig;
pub use crate::http::admin::AdminConfig;
pub use crate::http::dispatch::DispatchMode;
pub use crate::http::subscribe::FanoutConfig;
pub use crate::memory::MemoryConfig;
pub use crate::rt::cpu::CpuConfig;
pub use crate::upstream::UpstreamConfig;

/// Prefix of environment variables that configure the relay; `__` separates path segments.
pub const ENV_PREFIX: &str = "RELAY__";

/// The whole relay configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener and connection limits.
    pub server: ServerConfig,
    /// The SQLite database.
    pub store: StoreConfig,
    /// Upstream subscriptions: ramp, backoff, dormancy.
    pub upstream: UpstreamConfig,
    /// The event pipeline: ingest queue, group commit, retention.
    pub events: EventsConfig,
    /// Consumer subscriptions: queue bound, catch-up, pings, kicks.
    pub fanout: FanoutConfig,
    /// The memory budget and the load-shedding breaker.
    pub memory: MemoryConfig,
    /// Declared CPU costs (read only by the simulation's CPU model).
    pub cpu: CpuConfig,
    /// Log output.
    pub log: LogConfig,
    /// The admin API's listener and secret (off unless a secret is set).
    pub admin: AdminConfig,
}

/// The HTTP listener, its connection budget and its timeouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Maximum simultaneously admitted connections (the lifecycle registry's capacity).
    pub max_connections: usize,
    /// Most admitted connections one client address may hold (an IPv6 address counts by
    /// its /64); past it, the connection goes to the refusal lane and gets `429
    /// per_ip_limit`. 0 turns the limit off. The default, a quarter of the default
    /// `max_connections`, lets no single address take every slot yet never binds a client
    /// that opens a handful of connections (the wind tunnel's nodes open at most four); behind
    /// a proxy or NAT that funnels many clients through one address, raise it or set 0.
    pub max_connections_per_ip: usize,
    /// Time allowed from starting to wait for a request head (on a new connection, or on a
    /// keep-alive connection after its previous response) until the head is complete.
    /// Bounds slowloris clients that trickle bytes.
    pub header_read_timeout_ms: u64,
    /// A connection on which no bytes arrived for this long is asked to close by the idle
    /// reaper. Must be shorter than `header_read_timeout_ms` to matter for silent clients.
    pub idle_timeout_ms: u64,
    /// How often the idle reaper scans the registry.
    pub idle_check_interval_ms: u64,
    /// Largest accepted request head (start line + headers), bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// After a close request, how long an in-flight request may take to finish before the
    /// connection is dropped anyway.
    pub drain_timeout_ms: u64,
    /// On the shutdown signal, how long `/_readyz` answers `503 shutting_down` while the
    /// listener still accepts and serves, so load balancers stop sending traffic before
    /// connections are refused; then the listener closes and connections drain
    /// (`shutdown_grace_ms`). 0 closes the listener at once.
    pub shutdown_drain_ms: u64,
    /// On shutdown, after the listener closes, how long to wait for all connections to drain.
    pub shutdown_grace_ms: u64,
    /// Connections accepted while at capacity are served by a small refusal lane: probe
    /// paths are answered, everything else gets 503 + `Retry-After`. This caps that lane;
    /// beyond it, excess connections are closed without a response (and counted).
    pub refusal_lane_max: usize,
    /// Most refusal-lane places one client address may hold (0: no per-address share).
    /// Beyond it, that address's refused connections are closed without a response, while
    /// other addresses are still answered. The default is a quarter of the default lane.
    pub refusal_lane_per_ip_max: usize,
    /// Connections accepted when the refusal lane (or the caller's share of it) is full get
    /// this many more places, reserved for probes: only `/_healthz` and `/_readyz` are
    /// answered there, within `refusal_read_timeout_ms`, so slow callers filling the lane
    /// cannot get a healthy relay restarted by its orchestrator. 0: no reserve.
    pub probe_reserve_max: usize,
    /// Header-read timeout on the refusal lane (short: it exists to say no quickly).
    pub refusal_read_timeout_ms: u64,
    /// `Retry-After` seconds sent with a capacity refusal.
    pub retry_after_s: u32,
    /// A request handler still running after this long is abandoned and answered 504
    /// (a stuck handler must not hold its connection forever).
    pub handler_timeout_ms: u64,
    /// `concurrent` (default): handlers of different connections run at the same time.
    /// `serialized`: one connection's exchange at a time, and every response closes its
    /// connection (`Connection: close`) so a keep-alive client cannot hold the turn.
    /// Probes and `/metrics` are answered in either mode without waiting for the turn.
    pub dispatch: DispatchMode,
    /// Send a `Date` header on every response (HTTP/1.1 asks an origin with a clock to).
    /// The turmoil engine turns it off: there the wall clock is the real one, and a run's
    /// bytes must not depend on when it ran.
    pub date_header: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 1024,
            max_connections_per_ip: 256,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 5_000,
            idle_check_interval_ms: 1_000,
            max_header_bytes: 16 * 1024,
            drain_timeout_ms: 5_000,
            shutdown_drain_ms: 2_000,
            shutdown_grace_ms: 10_000,
            refusal_lane_max: 64,
            refusal_lane_per_ip_max: 16,
            probe_reserve_max: 8,
            refusal_read_timeout_ms: 1_000,
            retry_after_s: 1,
            handler_timeout_ms: 30_000,
            dispatch: DispatchMode::Concurrent,
            date_header: true,
        }
    }
}

impl ServerConfig {
    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `drain_timeout_ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// `shutdown_drain_ms` as a duration.
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_millis(self.shutdown_drain_ms)
    }

    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// `idle_check_interval_ms` as a duration.
    pub fn idle_check_interval(&self) -> Duration {
        Duration::from_millis(self.idle_check_interval_ms)
    }

    /// `handler_timeout_ms` as a duration.
    pub fn handler_timeout(&self) -> Duration {
        Duration::from_millis(self.handler_timeout_ms)
    }

    /// `refusal_read_timeout_ms` as a duration.
    pub fn refusal_read_timeout(&self) -> Duration {
        Duration::from_millis(self.refusal_read_timeout_ms)
    }
}

/// Where durable state lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (created if missing); `:memory:` keeps nothing across restarts.
    pub path: std::path::PathBuf,
    /// Sync the WAL at every commit (`synchronous = FULL`), so no committed (and hence
    /// broadcast) event can roll back in a power loss or OS crash. `false` runs at
    /// `NORMAL`: faster commits, but after a power loss the last commits may roll back and
    /// their relay sequence numbers be handed to different events.
    pub durable_commits: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "relay.db".into(),
            durable_commits: true,
        }
    }
}

/// Log format and verbosity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object per line, for machines) or `pretty` (for people).
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or `relay=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, multi-line.
    Pretty,
}

/// Where a configuration layer came from; every error names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A TOML file (or TOML text embedded elsewhere, such as a scenario's `[relay]` table).
    File(String),
    /// One environment variable.
    Env(String),
    /// One `--set` flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(name) => write!(f, "file {name}"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::Flag(flag) => write!(f, "--set {flag}"),
        }
    }
}

/// A configuration error, naming its source and (for files) line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The path given.
        path: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A layer is not valid TOML or does not match the schema.
    #[error("{source_name}{location}: {message}")]
    Invalid {
        /// Where the bad layer came from.
        source_name: Source,
        /// `:line:col` when known, else empty.
        location: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A `--set` flag or env var is not of the form `section.key=value`.
    #[error("{source_name}: expected section.key=value, e.g. server.max_connections=512")]
    Malformed {
        /// The offending flag or variable.
        source_name: Source,
    },
    /// The merged configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
}

/// Builds a [`Config`] from layers; each `with_*` call validates its layer immediately.
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    merged: toml::Table,
}

impl ConfigBuilder {
    /// Start from the embedded defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overlay a TOML document. `name` is used in errors (a path or a description).
    pub fn with_toml(mut self, name: &str, text: &str) -> Result<Self, ConfigError> {
        let located = |error: toml::de::Error| ConfigError::Invalid {
            location: span_location(text, error.span()),
            message: error.message().trim().to_owned(),
            source_name: Source::File(name.to_owned()),
        };
        // Deserialising the text straight into the schema keeps spans, so schema errors
        // (unknown keys, wrong types) point at a line and column.
        toml::from_str::<Config>(text).map_err(located)?;
        let table: toml::Table = toml::from_str(text).map_err(located)?;
        deep_merge(&mut self.merged, table);
        Ok(self)
    }

    /// Overlay a TOML file from disk.
    pub fn with_file(self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        self.with_toml(&path.display().to_string(), &text)
    }

    /// Overlay an already-parsed TOML table (e.g. a scenario's `[relay]` section).
    pub fn with_table(mut self, name: &str, table: toml::Table) -> Result<Self, ConfigError> {
        validate_layer(&table, &Source::File(name.to_owned()))?;
        deep_merge(&mut self.merged, table);
        Ok(self)
    }

    /// Overlay every `RELAY__SECTION__KEY=value` pair from `vars` (pass `std::env::vars()`).
    /// Variables without the prefix are ignored; those with it must name a real key.
    pub fn with_env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut relevant: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        relevant.sort();
        for (name, value) in relevant {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            let source_name = Source::Env(name.clone());
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Malformed { source_name });
            }
            self = self.with_assignment(source_name, &path, &value)?;
        }
        Ok(self)
    }

    /// Overlay one `section.key=value` flag.
    pub fn with_set(self, assignment: &str) -> Result<Self, ConfigError> {
        let source_name = Source::Flag(assignment.to_owned());
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ConfigError::Malformed { source_name });
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Malformed { source_name });
        }
        self.with_assignment(source_name, &path, value.trim())
    }

    /// Validate the merged layers and produce the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let config: Config = self
            .merged
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Inconsistent(error.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn with_assignment(
        mut self,
        source_name: Source,
        path: &[String],
        raw_value: &str,
    ) -> Result<Self, ConfigError> {
        // A value is read as TOML when it parses as one (numbers, booleans, quoted strings),
        // otherwise as a bare string, so `server.listen=0.0.0.0:8080` needs no quotes.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw_value}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw_value.to_owned()));
        let mut table = toml::Table::new();
        let (last, parents) = path.split_last().expect("path checked non-empty");
        let mut cursor = &mut table;
        for segment in parents {
            cursor = cursor
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("freshly inserted table");
        }
        cursor.insert(last.clone(), value);
        validate_layer(&table, &source_name)?;
        deep_merge(&mut self.merged, table);
        Ok(self)
    }
}

/// The largest `server.max_connections` a config may set: the registry reserves a slot for
/// every connection at startup, and each needs a file descriptor.
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

/// The longest `server.shutdown_drain_ms`: orchestrators kill a process that has not
/// stopped within their own grace period (30 s by default in Kubernetes), long before this.
pub const SHUTDOWN_DRAIN_LIMIT_MS: u64 = 300_000;

/// The largest `server.probe_reserve_max`: a few probers need a few places.
pub const PROBE_RESERVE_LIMIT: usize = 1024;

impl Config {
    /// Cross-field checks that the schema alone cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        let problem = if server.max_connections == 0 {
            Some("server.max_connections must be at least 1".to_owned())
        } else if server.max_connections > MAX_CONNECTIONS_LIMIT {
            Some(format!(
                "server.max_connections must be at most {MAX_CONNECTIONS_LIMIT} \
                 (a slot and a file descriptor are reserved for each connection)"
            ))
        } else if server.shutdown_drain_ms > SHUTDOWN_DRAIN_LIMIT_MS {
            Some(format!(
                "server.shutdown_drain_ms must be at most {SHUTDOWN_DRAIN_LIMIT_MS} \
                 (an orchestrator kills a relay that takes longer to stop)"
            ))
        } else if server.probe_reserve_max > PROBE_RESERVE_LIMIT {
            Some(format!(
                "server.probe_reserve_max must be at most {PROBE_RESERVE_LIMIT} \
                 (it is a reserve for a few probers, not a second refusal lane)"
            ))
        } else if server.max_header_bytes < 1024 {
            Some("server.max_header_bytes must be at least 1024".to_owned())
        } else if server.idle_check_interval_ms == 0 {
            Some("server.idle_check_interval_ms must be at least 1".to_owned())
        } else if server.handler_timeout_ms == 0 {
            Some("server.handler_timeout_ms must be at least 1".to_owned())
        } else if self.cpu.cores == 0 {
            Some("cpu.cores must be at least 1".to_owned())
        } else if self.fanout.consumer_queue_max < self.events.commit_batch_max {
            // One commit is published to every mailbox at once: a queue smaller than a
            // batch would kick consumers that keep up perfectly well.
            Some(format!(
                "fanout.consumer_queue_max ({}) must be at least events.commit_batch_max ({})",
                self.fanout.consumer_queue_max, self.events.commit_batch_max
            ))
        } else {
            self.upstream
                .check()
                .and_then(|()| self.admin.check())
                .and_then(|()| self.events.check())
                .and_then(|()| self.fanout.check())
                .and_then(|()| self.memory.check())
                .err()
        };
        problem.map_or(Ok(()), |message| Err(ConfigError::Inconsistent(message)))
    }

    /// The configuration as TOML, with every default spelled out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config schema always serialises")
    }
}

fn validate_layer(table: &toml::Table, source_name: &Source) -> Result<(), ConfigError> {
    Config::deserialize(toml::Value::Table(table.clone()))
        .map(drop)
        .map_err(|error| ConfigError::Invalid {
            source_name: source_name.clone(),
            location: String::new(),
            message: error.message().trim().to_owned(),
        })
}

fn span_location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let (line, column) = line_column(text, span.start);
    format!(":{line}:{column}")
}

/// 1-based line and column (in characters) of a byte offset into a TOML text: where error
/// messages point (the relay's config files here, the tunnel's scenario files too).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

fn deep_merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                deep_merge(existing, incoming);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_and_round_trip() {
        let config = ConfigBuilder::new().build().unwrap();
        assert_eq!(config, Config::default());
        let again = ConfigBuilder::new()
            .with_toml("defaults", &config.to_toml())
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn a_consumer_queue_smaller_than_a_commit_batch_is_refused() {
        let error = ConfigBuilder::new()
            .with_set("fanout.consumer_queue_max=64")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: fanout.consumer_queue_max (64) must be at least events.commit_batch_max (256)"
        );
    }

    #[test]
    fn frame_limits_too_small_for_a_control_frame_are_refused() {
        for key in ["upstream.max_frame_bytes", "fanout.max_inbound_frame_bytes"] {
            let error = ConfigBuilder::new()
                .with_set(&format!("{key}=0"))
                .unwrap()
                .build()
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("invalid configuration: {key} must be at least 125 (a control frame's largest payload)")
            );
            ConfigBuilder::new()
                .with_set(&format!("{key}=125"))
                .unwrap()
                .build()
                .unwrap();
        }
    }

    #[test]
    fn unknown_file_key_names_file_line_and_column() {
        let text = "[server]\nmax_connections = 10\nmax_conections = 5\n";
        let error = ConfigBuilder::new()
            .with_toml("relay.toml", text)
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("file relay.toml:3:1: unknown field `max_conections`"),
            "{message}"
        );
        assert!(message.contains("expected one of"), "{message}");
    }

    #[test]
    fn wrong_type_names_the_value_position() {
        let text = "[server]\nmax_connections = \"many\"\n";
        let message = ConfigBuilder::new()
            .with_toml("relay.toml", text)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("file relay.toml:2:19:"), "{message}");
    }

    #[test]
    fn layers_apply_in_precedence_order() {
        let config = ConfigBuilder::new()
            .with_toml("f", "[server]\nmax_connections = 10\nidle_timeout_ms = 7\n")
            .unwrap()
            .with_env([
                ("RELAY__SERVER__MAX_CONNECTIONS".to_owned(), "20".to_owned()),
                ("HOME".to_owned(), "/root".to_owned()),
            ])
            .unwrap()
            .with_set("server.max_connections=30")
            .unwrap()
            .with_set("server.listen=0.0.0.0:9000")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.server.max_connections, 30);
        assert_eq!(config.server.idle_timeout_ms, 7);
        assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn unknown_env_and_flag_keys_are_rejected_with_their_source() {
        let env_error = ConfigBuilder::new()
            .with_env([("RELAY__SERVER__MAX_CONECTIONS".to_owned(), "1".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            env_error.starts_with("env RELAY__SERVER__MAX_CONECTIONS: unknown field"),
            "{env_error}"
        );
        let flag_error = ConfigBuilder::new()
            .with_set("srver.listen=x")
            .unwrap_err()
            .to_string();
        assert!(
            flag_error.starts_with("--set srver.listen=x: unknown field `srver`"),
            "{flag_error}"
        );
        let malformed = ConfigBuilder::new()
            .with_set("server.listen")
            .unwrap_err()
            .to_string();
        assert!(
            malformed.contains("expected section.key=value"),
            "{malformed}"
        );
    }

    /// The README's configuration table must name every key the schema has.
    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (section, keys) in &defaults {
            for key in keys.as_table().unwrap().keys() {
                let row = format!("| `{section}.{key}` |");
                assert!(readme.contains(&row), "README.md has no row {row}");
            }
        }
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let message = ConfigBuilder::new()
            .with_set("server.max_connections=0")
            .unwrap()
            .build()
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid configuration: server.max_connections must be at least 1"
        );
    }

    #[test]
    fn absurd_fairness_settings_are_refused_with_the_rule() {
        for (setting, message) in [
            (
                "fanout.pong_deadline_ms=3999",
                "fanout.pong_deadline_ms (3999) must be at least two ping intervals (fanout.ping_interval_ms = 2000), or a pong in flight counts as silence",
            ),
            (
                "fanout.ping_interval_ms=40000",
                "fanout.pong_deadline_ms (60000) must be at least two ping intervals (fanout.ping_interval_ms = 40000), or a pong in flight counts as silence",
            ),
            (
                "server.shutdown_drain_ms=300001",
                "server.shutdown_drain_ms must be at most 300000 (an orchestrator kills a relay that takes longer to stop)",
            ),
            (
                "server.probe_reserve_max=1025",
                "server.probe_reserve_max must be at most 1024 (it is a reserve for a few probers, not a second refusal lane)",
            ),
        ] {
            let error = ConfigBuilder::new()
                .with_set(setting)
                .unwrap()
                .build()
                .unwrap_err();
            assert_eq!(error.to_string(), format!("invalid configuration: {message}"));
        }
        for allowed in [
            "server.shutdown_drain_ms=0",
            "server.max_connections_per_ip=0",
            "server.refusal_lane_per_ip_max=0",
            "server.probe_reserve_max=0",
            "fanout.pong_deadline_ms=4000",
        ] {
            ConfigBuilder::new()
                .with_set(allowed)
                .unwrap()
                .build()
                .unwrap();
        }
    }

    #[test]
    fn egress_allowlists_take_cidr_blocks_and_a_bad_one_names_itself() {
        let config = ConfigBuilder::new()
            .with_set(r#"upstream.egress_allow=["10.0.0.0/8", "fd00::/8", "127.0.0.1"]"#)
            .unwrap()
            .build()
            .unwrap();
        let allow: Vec<String> = config
            .upstream
            .egress_allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allow, ["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]);
        let reparsed = ConfigBuilder::new()
            .with_toml("printed", &config.to_toml())
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(reparsed, config);
        for (value, why) in [
            (
                "10.0.0.0/33",
                "the prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0.1/8",
                "bits are set past the prefix (did you mean 10.0.0.0/8?)",
            ),
        ] {
            let message = ConfigBuilder::new()
                .with_set(&format!(r#"upstream.egress_allow=["{value}"]"#))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(&format!("{value:?} is not a CIDR block: {why}")),
                "{message}"
            );
        }
        let message = ConfigBuilder::new()
            .with_toml(
                "relay.toml",
                "[upstream]\negress_allow = [\"10.0.0.0/8\", \"10.0.0/8\"]\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("relay.toml:2:")
                && message.contains(r#""10.0.0/8" is not a CIDR block"#),
            "{message}"
        );
    }

    #[test]
    fn insecure_ws_hosts_take_host_patterns_and_a_bad_one_names_itself() {
        let config = ConfigBuilder::new()
            .with_set(
                r#"upstream.insecure_ws_hosts=["PDS.user17.dev", "*.host.example", "127.0.0.1"]"#,
            )
            .unwrap()
            .with_set("upstream.tls_ca_file=/etc/relay/ca.pem")
            .unwrap()
            .build()
            .unwrap();
        let patterns: Vec<String> = config
            .upstream
            .insecure_ws_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(patterns, ["pds.user17.dev", "*.host.example", "127.0.0.1"]);
        assert_eq!(config.upstream.tls_ca_file, Path::new("/etc/relay/ca.pem"));
        let reparsed = ConfigBuilder::new()
            .with_toml("printed", &config.to_toml())
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(reparsed, config);
        let message = ConfigBuilder::new()
            .with_set(r#"upstream.insecure_ws_hosts=["pds*.example"]"#)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("--set upstream.insecure_ws_hosts=")
                && message.contains(
                    r#""pds*.example" in upstream.insecure_ws_hosts is not a host pattern"#
                ),
            "{message}"
        );
        let message = ConfigBuilder::new()
            .with_toml(
                "relay.toml",
                "[upstream]\ninsecure_ws_hosts = [\"*\", \"a.example:80\"]\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("file relay.toml:2:")
                && message.contains(r#""a.example:80" in upstream.insecure_ws_hosts"#)
                && message.contains("without a port"),
            "{message}"
        );
    }

    /// A limit beyond `u32::MAX` used to panic in the registry; anything past
    /// `MAX_CONNECTIONS_LIMIT` is refused with a message instead.
    #[test]
    fn absurd_connection_limits_are_refused_not_panicked_on() {
        for value in [MAX_CONNECTIONS_LIMIT + 1, 1 << 40] {
            let message = ConfigBuilder::new()
                .with_set(&format!("server.max_connections={value}"))
                .unwrap()
                .build()
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("server.max_connections must be at most 1048576"),
                "{message}"
            );
        }
    }
}
