//! The docs against the code. SCENARIOS.md against the schema: every key the scenario
//! schema accepts is documented, and every key documented exists. ARCHITECTURE.md against
//! the tree: every path it names exists, and it names every module directly under
//! `server/src` and `sim/src`. These run in both builds (`cargo test`, `cargo sim-test`);
//! the README's commands and quoted output (`readme`) run worlds and need the simulation
//! build.
//!
//! The keys are discovered from the schema itself, not from a list kept by hand: every
//! table is `deny_unknown_fields`, so a probe document with an unknown key `zzz` in a table
//! makes serde answer "unknown field `zzz`, expected one of `a`, `b`, …" — the table's
//! complete field list, optional fields included. Probing each field with a table in turn
//! tells tables from values, and the internally tagged `[[faults]]` enum answers "unknown
//! variant" with its kinds the same way. A field added to the schema therefore fails this
//! test until SCENARIOS.md documents it.

use std::collections::BTreeSet;
use std::path::Path;

use windtunnel::scenario::Scenario;

#[path = "../support/mod.rs"]
mod support;
use support::{repository, scenarios_dir, MINIMAL};

#[cfg(madsim)]
mod readme;

const SCENARIOS_MD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../SCENARIOS.md"));

/// A path into the probe document: table keys, `[]` marking an array of tables.
#[derive(Clone, Debug)]
struct Probe {
    /// Dotted key as documented, e.g. `churners[].mix`.
    doc_key: String,
    /// TOML header of the table, e.g. `[[churners]]` + `[churners.mix]`.
    headers: Vec<String>,
    /// Key/value lines the table needs before the probe key (e.g. a fault's `kind`).
    preamble: Vec<String>,
}

fn parse_error(document: &str) -> Option<String> {
    Scenario::parse(Path::new("probe.toml"), document)
        .err()
        .map(|error| error.to_string())
}

/// Names in "expected one of `a`, `b`" / "expected `a` or `b`" / "expected `a`".
fn expected_names(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn document(probe: &Probe, lines: &[String]) -> String {
    // Tables under [oracles] need the top-level [oracles] header to come last.
    let mut text = "name = \"x\"\nduration_s = 60\n".to_owned();
    let under_oracles = probe
        .headers
        .first()
        .is_some_and(|h| h.starts_with("[oracles"));
    if !under_oracles {
        text.push_str("[oracles]\n");
    }
    for header in &probe.headers {
        text.push_str(header);
        text.push('\n');
    }
    for line in probe.preamble.iter().chain(lines) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Fields of the table at `probe`, from the unknown-field error.
fn fields_of(probe: &Probe) -> Vec<String> {
    let message = parse_error(&document(probe, &["zzz = 1".to_owned()]))
        .unwrap_or_else(|| panic!("{} accepted an unknown key", probe.doc_key));
    if message.contains("there are no fields") {
        return Vec::new();
    }
    assert!(
        message.contains("unknown field `zzz`"),
        "{}: {message}",
        probe.doc_key
    );
    expected_names(&message)
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn toml_path(probe: &Probe, key: &str) -> String {
    probe
        .headers
        .last()
        .map(|h| h.trim_matches(['[', ']']).to_owned())
        .map_or(key.to_owned(), |parent| format!("{parent}.{key}"))
}

/// Every documented-level key of the schema.
fn schema_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let root = Probe {
        doc_key: String::new(),
        headers: Vec::new(),
        preamble: Vec::new(),
    };
    let root_fields = {
        let message = parse_error(&format!("zzz = 1\n{MINIMAL}")).expect("zzz is unknown");
        expected_names(&message)
    };
    let mut queue: Vec<(Probe, Vec<String>)> = vec![(root, root_fields)];
    while let Some((table, fields)) = queue.pop() {
        if fields.is_empty() {
            keys.insert(table.doc_key.clone());
        }
        for field in fields {
            let key = join(&table.doc_key, &field);
            if key == "relay" {
                // The relay's own configuration schema: README's configuration table, tested
                // by `relay::config`'s `readme_documents_every_key`.
                keys.insert(key);
                continue;
            }
            let path = toml_path(&table, &field);
            let as_table = Probe {
                doc_key: key.clone(),
                headers: [table.headers.clone(), vec![format!("[{path}]")]].concat(),
                preamble: Vec::new(),
            };
            let as_array = Probe {
                doc_key: format!("{key}[]"),
                headers: [table.headers.clone(), vec![format!("[[{path}]]")]].concat(),
                preamble: Vec::new(),
            };
            let probe_table =
                parse_error(&document(&as_table, &["zzz = 1".to_owned()])).unwrap_or_default();
            let probe_array =
                parse_error(&document(&as_array, &["zzz = 1".to_owned()])).unwrap_or_default();
            if probe_table.contains("unknown field `zzz`")
                || probe_table.contains("there are no fields")
            {
                let fields = fields_of(&as_table);
                queue.push((as_table, fields));
            } else if probe_array.contains("unknown field `zzz`") {
                let fields = fields_of(&as_array);
                queue.push((as_array, fields));
            } else if probe_array.contains("missing field `kind`") {
                // An internally tagged enum: its kinds, then each kind's fields.
                keys.insert(format!("{key}[].kind"));
                let message = parse_error(&document(&as_array, &["kind = \"zzz\"".to_owned()]))
                    .expect("an unknown kind is an error");
                for kind in expected_names(&message) {
                    let variant = Probe {
                        preamble: vec![format!("kind = \"{kind}\"")],
                        ..as_array.clone()
                    };
                    keys.extend(
                        fields_of(&variant)
                            .into_iter()
                            .filter(|f| f != "kind")
                            .map(|f| format!("{key}[].{f}")),
                    );
                }
            } else if key == "swarm" {
                keys.insert("swarm.\"<key>\"".to_owned());
            } else {
                keys.insert(key);
            }
        }
    }
    keys
}

/// Keys in the first column of SCENARIOS.md's reference tables (the engine table, which
/// lists files, comes after them).
fn documented_keys() -> BTreeSet<String> {
    let reference = SCENARIOS_MD
        .split("## Which engine runs which scenario")
        .next()
        .expect("split yields at least one part");
    reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_owned()))
        .collect()
}

#[test]
fn the_schema_probe_finds_the_keys_it_should() {
    // Guards the probe itself: if serde's messages changed shape, this fails loudly
    // instead of the documentation test passing on an empty key set.
    let keys = schema_keys();
    for key in [
        "name",
        "duration_s",
        "expect",
        "relay",
        "network.latency_ms",
        "prober.failure_threshold",
        "churners[].nodes",
        "churners[].mix.keepalive",
        "upstreams.flaky_until_s",
        "faults[].kind",
        "faults[].hosts_fraction",
        "oracles.probe_liveness",
        "oracles.probe_latency_max.latency_ms_max",
        "oracles.hosts_connected_min.by_s",
        "swarm.\"<key>\"",
    ] {
        assert!(keys.contains(key), "{key} not found in {keys:#?}");
    }
    assert!(keys.len() > 40, "{keys:#?}");
}

#[test]
fn scenarios_md_documents_every_schema_key() {
    let documented = documented_keys();
    let schema = schema_keys();
    let missing: Vec<&String> = schema.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "SCENARIOS.md has no row for: {missing:?}"
    );
    let stale: Vec<&String> = documented.difference(&schema).collect();
    assert!(
        stale.is_empty(),
        "SCENARIOS.md documents keys the schema does not have: {stale:?}"
    );
}

#[test]
fn scenarios_md_names_every_shipped_scenario_and_its_engine() {
    let dir = scenarios_dir();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let file = format!(
                "`scenarios/{}`",
                path.file_name().unwrap().to_string_lossy()
            );
            let row = SCENARIOS_MD
                .lines()
                .find(|line| line.starts_with(&format!("| {file} |")))
                .unwrap_or_else(|| panic!("SCENARIOS.md's engine table has no row for {file}"));
            let scenario = Scenario::load(&path).unwrap();
            let engine = scenario.engine.as_str();
            assert!(row.contains(&format!("| {engine} |")), "{row}");
            // The `--real` column: whether real mode can play it.
            #[cfg(not(madsim))]
            {
                let real = if windtunnel::scenario::REAL.problems(&scenario).is_empty() {
                    "yes"
                } else {
                    "no"
                };
                assert!(
                    row.starts_with(&format!("| {file} | {engine} | {real} |")),
                    "SCENARIOS.md's --real column should say {real}: {row}"
                );
            }
        }
    }
}

const ARCHITECTURE_MD: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ARCHITECTURE.md"));

/// The repository paths ARCHITECTURE.md names: backticked text that starts with one of the
/// repository's top-level folders.
fn architecture_paths() -> BTreeSet<String> {
    const ROOTS: [&str; 6] = [
        "server/",
        "sim/",
        "ci/",
        "fuzz/",
        "loom-tests/",
        "scenarios/",
    ];
    ARCHITECTURE_MD
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| ROOTS.iter().any(|root| quoted.starts_with(root)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn architecture_names_every_module_and_only_real_paths() {
    let root = repository();
    let named = architecture_paths();
    assert!(named.len() > 30, "{named:#?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|path| !root.join(path.as_str()).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
    let mut unnamed = Vec::new();
    for dir in ["server/src", "sim/src"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("the source folder lists") {
            let entry = entry.expect("a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let module = if entry.path().is_dir() {
                format!("{dir}/{name}/")
            } else if name.ends_with(".rs") {
                format!("{dir}/{name}")
            } else {
                continue;
            };
            if !named.iter().any(|path| path.starts_with(&module)) {
                unnamed.push(module);
            }
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "ARCHITECTURE.md's code map does not name: {unnamed:?}"
    );
}
