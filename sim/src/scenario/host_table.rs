//! `upstreams.table`: a host table read from a file, in one of three forms, every line
//! checked, every problem at `file:line`.
//!
//! The form is chosen by the file's first line that is neither blank nor a `#` comment:
//! - **snapshot rows** (a line starting with `{` without a `hosts` key): one JSON object per
//!   line, `{"host", "status", "operator", "kind", "software", "region"}` — the shape of
//!   `scenarios/hosts/atproto-hosts-2026-05.jsonl`. `status` is `online`, `offline` or
//!   `unreachable`; the other four are optional and describe the host (strings, or `null`).
//! - **listHosts pages** (a line starting with `{` with a `hosts` key): one
//!   `com.atproto.sync.listHosts` response per line (`{"cursor", "hosts": [{"hostname",
//!   "seq", "accountCount", "status"}]}`), e.g. the pages a relay's `listHosts` returned,
//!   each compacted onto its line (`jq -c`). Statuses: `active`, `idle` and `throttled` are
//!   online (a throttled host still answers; its relay only slows it down), `offline` is
//!   offline, and `banned` hosts are left out (no relay subscribes to them); a missing
//!   status is `active`.
//! - **hostnames**: one hostname per line, every host online; `#` starts a comment, on its
//!   own line or after a name.
//!
//! Blank lines and lines starting with `#` are skipped in every form. Every other line of a
//! file must be of its form. Hostnames must pass the relay's own validation
//! (`relay::upstream::hostname`) and appear once; a table holds 1 to
//! [`TABLE_HOSTS_MAX`] hosts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most hosts a table may hold (as many as `upstreams.hosts` may ask for).
pub const TABLE_HOSTS_MAX: usize = 60_000;

/// A host's status in a table: what the world makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Answers: a polite host (flaky if `flaky_fraction` draws it).
    Online,
    /// Its node is up and nothing listens: the relay's connections are refused.
    Offline,
    /// Never answered: its name does not resolve, or it is a black hole (see
    /// `crate::actors::upstream::DeadHost`).
    Unreachable,
}

/// One host of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableHost {
    /// Its hostname, as the relay normalises it (lowercase, no trailing dot).
    pub host: String,
    /// What the world makes of it.
    pub status: HostStatus,
    /// The operator (failure domain) it belongs to, if the table says (`op-0001`).
    pub operator: Option<String>,
    /// What kind of host it is, if the table says (`bsky`, `third_party`).
    pub kind: Option<String>,
    /// The software family it runs, if the table says (`reference-pds`, …).
    pub software: Option<String>,
    /// Its region, if the table says (`us-east`).
    pub region: Option<String>,
}

/// A host table as loaded from a file.
#[derive(Clone, PartialEq, Eq)]
pub struct HostTable {
    /// The file, as an absolute path (written back when the scenario is serialised).
    pub path: PathBuf,
    /// The hosts, in file order.
    pub hosts: Arc<Vec<TableHost>>,
}

impl fmt::Debug for HostTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HostTable({}, {} hosts)",
            self.path.display(),
            self.hosts.len()
        )
    }
}

/// Most bytes a table file may hold (the shipped 3,208-host snapshot is 0.5 MB).
pub const TABLE_BYTES_MAX: u64 = 64 << 20;

/// The text of the regular file at `path`, refused when it is not a regular file (a FIFO,
/// a terminal or `/dev/zero` would block or never end) or is larger than
/// [`TABLE_BYTES_MAX`]: a scenario naming such a path costs a clear error, not a hang.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(TABLE_BYTES_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > TABLE_BYTES_MAX {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {TABLE_BYTES_MAX} bytes"),
        ));
    }
    Ok(text)
}

/// A problem on one line of a table file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LineProblem {
    line: usize,
    message: String,
}

impl HostTable {
    /// Read and check the table at `path`: every problem, one `path:line: message` per
    /// line, when it is not a valid table.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = read_bounded(path)
            .map_err(|error| format!("{}: cannot read the host table: {error}", path.display()))?;
        let hosts = parse(&text).map_err(|problems| {
            problems
                .iter()
                .map(|problem| format!("{}:{}: {}", path.display(), problem.line, problem.message))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        Ok(Self {
            path: path.to_owned(),
            hosts: Arc::new(hosts),
        })
    }
}

impl Serialize for HostTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(serializer)
    }
}

/// Reads the table its path names. The scenario's loader has made a relative path absolute
/// (relative to the scenario file's directory) before this runs.
impl<'de> Deserialize<'de> for HostTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(deserializer)?;
        Self::load(&path).map_err(serde::de::Error::custom)
    }
}

/// The three forms a line can take (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Snapshot,
    ListHosts,
    Hostnames,
}

impl Form {
    fn of(line: &str) -> Self {
        if !line.starts_with('{') {
            return Self::Hostnames;
        }
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line) {
            Ok(object) if object.contains_key("hosts") => Self::ListHosts,
            _ => Self::Snapshot,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Snapshot => "a snapshot row (a JSON object with host and status)",
            Self::ListHosts => "a listHosts page (a JSON object with hosts)",
            Self::Hostnames => "a hostname",
        }
    }
}

/// A snapshot row (`scenarios/hosts/atproto-hosts-2026-05.jsonl`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRow {
    host: String,
    status: HostStatus,
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    software: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

/// One `com.atproto.sync.listHosts` response (fields the tunnel does not use are ignored,
/// as the lexicon may grow).
#[derive(Deserialize)]
struct ListHostsPage {
    hosts: Vec<ListedHost>,
}

/// One host of a listHosts page.
#[derive(Deserialize)]
struct ListedHost {
    hostname: String,
    #[serde(default)]
    status: Option<String>,
}

/// A listHosts status as a table status; `Ok(None)`: left out (`banned`).
fn listed_status(status: Option<&str>) -> Result<Option<HostStatus>, String> {
    match status.unwrap_or("active") {
        "active" | "idle" | "throttled" => Ok(Some(HostStatus::Online)),
        "offline" => Ok(Some(HostStatus::Offline)),
        "banned" => Ok(None),
        other => Err(format!(
            "unknown status {other:?}; expected active, idle, offline, throttled or banned"
        )),
    }
}

/// The hosts of a table's text, or every problem in it.
fn parse(text: &str) -> Result<Vec<TableHost>, Vec<LineProblem>> {
    let mut problems = Vec::new();
    let mut hosts: Vec<TableHost> = Vec::new();
    // Each host's first line, to name it when it comes again.
    let mut first_line: std::collections::BTreeMap<String, usize> = Default::default();
    let mut form = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let this = Form::of(content);
        let form = *form.get_or_insert(this);
        if this != form {
            problems.push(LineProblem {
                line,
                message: format!(
                    "expected {} like the file's first entry, found {}",
                    form.name(),
                    this.name()
                ),
            });
            continue;
        }
        let rows = match form {
            Form::Snapshot => snapshot_row(content).map(|row| vec![row]),
            Form::ListHosts => list_hosts_page(content),
            Form::Hostnames => hostname_line(content).map(|row| vec![row]),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(message) => {
                problems.push(LineProblem { line, message });
                continue;
            }
        };
        for mut row in rows {
            match relay::upstream::hostname::validate(&row.host) {
                Ok(name) => row.host = name,
                Err(error) => {
                    problems.push(LineProblem {
                        line,
                        message: error.to_string(),
                    });
                    continue;
                }
            }
            if let Some(first) = first_line.get(&row.host) {
                problems.push(LineProblem {
                    line,
                    message: format!("duplicate host {:?} (first on line {first})", row.host),
                });
                continue;
            }
            first_line.insert(row.host.clone(), line);
            hosts.push(row);
        }
    }
    if problems.is_empty() && hosts.is_empty() {
        problems.push(LineProblem {
            line: 1,
            message: "expected at least one host, found none".into(),
        });
    }
    if hosts.len() > TABLE_HOSTS_MAX {
        problems.push(LineProblem {
            line: 1,
            message: format!(
                "expected at most {TABLE_HOSTS_MAX} hosts, found {}",
                hosts.len()
            ),
        });
    }
    if problems.is_empty() {
        Ok(hosts)
    } else {
        Err(problems)
    }
}

fn snapshot_row(line: &str) -> Result<TableHost, String> {
    let row: SnapshotRow = serde_json::from_str(line).map_err(|error| json_problem(&error))?;
    Ok(TableHost {
        host: row.host,
        status: row.status,
        operator: row.operator,
        kind: row.kind,
        software: row.software,
        region: row.region,
    })
}

fn list_hosts_page(line: &str) -> Result<Vec<TableHost>, String> {
    let page: ListHostsPage = serde_json::from_str(line).map_err(|error| json_problem(&error))?;
    let mut rows = Vec::new();
    for (index, listed) in page.hosts.into_iter().enumerate() {
        let status = listed_status(listed.status.as_deref())
            .map_err(|message| format!("hosts[{index}]: {message}"))?;
        if let Some(status) = status {
            rows.push(TableHost {
                host: listed.hostname,
                status,
                operator: None,
                kind: None,
                software: None,
                region: None,
            });
        }
    }
    Ok(rows)
}

fn hostname_line(line: &str) -> Result<TableHost, String> {
    let name = line.split('#').next().unwrap_or_default().trim();
    if name.split_whitespace().count() > 1 {
        return Err(format!("expected one hostname per line, found {name:?}"));
    }
    Ok(TableHost {
        host: name.to_owned(),
        status: HostStatus::Online,
        operator: None,
        kind: None,
        software: None,
        region: None,
    })
}

/// serde_json's error with its column but without its `line 1` (the line is the file's,
/// given separately).
fn json_problem(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head);
    let what = if error.is_syntax() || error.is_eof() {
        "not JSON: "
    } else {
        ""
    };
    format!("{what}{message} (column {})", error.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_statuses_map_to_table_statuses() {
        assert_eq!(listed_status(None), Ok(Some(HostStatus::Online)));
        assert_eq!(listed_status(Some("idle")), Ok(Some(HostStatus::Online)));
        assert_eq!(
            listed_status(Some("throttled")),
            Ok(Some(HostStatus::Online))
        );
        assert_eq!(
            listed_status(Some("offline")),
            Ok(Some(HostStatus::Offline))
        );
        assert_eq!(listed_status(Some("banned")), Ok(None));
        assert!(listed_status(Some("gone")).is_err());
    }

    #[test]
    fn a_form_is_kept_for_the_whole_file() {
        let problems =
            parse("a.example\n{\"host\": \"b.example\", \"status\": \"online\"}\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(problems[0].message.starts_with("expected a hostname like"));
    }

    #[test]
    fn a_path_that_is_not_a_regular_file_is_refused_not_read_forever() {
        let error = HostTable::load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            error,
            "/dev/zero: cannot read the host table: not a regular file"
        );
        let error = HostTable::load(Path::new("/")).unwrap_err();
        assert!(
            error.starts_with("/: cannot read the host table: "),
            "{error}"
        );
    }
}
