//! Scenario files: parsing and validation through `Scenario::parse`/`Scenario::load` — every
//! shipped scenario loads, and every kind of mistake is reported at its `file:line:col`
//! with what was expected. Plain library calls, no world is run: the suite runs in both
//! builds (`cargo test`, `cargo sim-test`).

use std::path::Path;

use windtunnel::oracle::OracleName;
use windtunnel::scenario::{Expect, HostStatus, Scenario, ScenarioError};

#[path = "../support/mod.rs"]
mod support;
use support::{load, scenarios_dir, MINIMAL};

fn parse_error(text: &str) -> String {
    match Scenario::parse(Path::new("bad.toml"), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn every_shipped_scenario_loads() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = Scenario::load(&path).unwrap_or_else(|error| panic!("{error}"));
            names.push(scenario.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "bad_input",
            "churn_idle_reaper",
            "churn_idle_reaper_disabled",
            "churn_max_connections",
            "close_recv_race",
            "cold_start_2800",
            "cold_start_jitter_only",
            "cold_start_network",
            "cold_start_network_unbraked",
            "cold_start_restart_loop",
            "cold_start_thundering_herd",
            "db_fault",
            "db_fault_liveness_watchdog",
            "db_fault_long",
            "db_fault_slow_retry",
            "gc_stall",
            "gc_stall_unbatched",
            "handler_timeout",
            "handler_timeout_too_long",
            "host_blink",
            "host_dormancy",
            "host_flap",
            "hostile_callers",
            "hostile_callers_unlimited",
            "hostile_upstreams",
            "hostile_upstreams_unlimited",
            "ingest_backpressure",
            "keepalive_dispatch",
            "keepalive_dispatch_concurrent",
            "memory_pressure",
            "memory_pressure_unguarded",
            "network_blip",
            "network_farm_outage",
            "network_shard_deploy",
            "network_snapshot",
            "panic_isolation",
            "power_loss",
            "restart_during_store_fault",
            "restart_resume",
            "slow_consumer",
            "slow_consumer_unbounded_queue",
            "store_stall",
            "turmoil_backlog_churn",
            "turmoil_close_recv_race"
        ]
    );
}

#[test]
fn expectations_are_parsed() {
    assert_eq!(load("churn_max_connections.toml").expect, Expect::Pass);
    assert_eq!(
        load("churn_idle_reaper_disabled.toml").expect,
        Expect::Fail(OracleName::ConnAccounting)
    );
}

#[test]
fn unknown_top_level_key_reports_line_and_column() {
    let message = parse_error("name = \"x\"\nduraton_s = 60\n[oracles]\n");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines[0], "bad.toml:1:1: missing field `duration_s`");
    assert!(
        lines[1].starts_with("bad.toml:2:1: unknown field `duraton_s`, expected one of"),
        "{message}"
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_its_key() {
    let text = "name = \"x\"\n\
                duration_s = 30\n\
                [relay.server]\n\
                max_conections = 3\n\
                [upstreams]\n\
                hosts = -10\n\
                [[faults]]\n\
                kind = \"meteor\"\n\
                at_s = 10\n\
                [[faults]]\n\
                kind = \"clog\"\n\
                at_s = \"ten\"\n\
                duration_s = 5\n\
                [oracles]\n\
                probe_lively = {}\n";
    let located: Vec<String> = parse_error(text).lines().map(str::to_owned).collect();
    assert_eq!(
        located,
        [
            "bad.toml:4:1: unknown field `max_conections`, expected one of `listen`, `max_connections`, `max_connections_per_ip`, `header_read_timeout_ms`, `idle_timeout_ms`, `idle_check_interval_ms`, `max_header_bytes`, `drain_timeout_ms`, `shutdown_drain_ms`, `shutdown_grace_ms`, `refusal_lane_max`, `refusal_lane_per_ip_max`, `probe_reserve_max`, `refusal_read_timeout_ms`, `retry_after_s`, `handler_timeout_ms`, `dispatch`, `date_header`",
            "bad.toml:6:9: invalid value: integer `-10`, expected a non-negative integer",
            "bad.toml:8:8: unknown variant `meteor`, expected one of `partition`, `clog`, `latency`, `kill_relay`, `power_loss`, `restart_relay`, `store_fault`, `store_stall`, `handler_panic`, `handler_stall`, `hosts_restart`, `hosts_dark`, `hosts_latency`",
            "bad.toml:10:1: invalid type: string \"ten\", expected a non-negative integer",
            "bad.toml:15:1: unknown field `probe_lively`, expected one of `probe_liveness`, `probe_latency_max`, `relay_restarts_max`, `conn_accounting`, `no_panics`, `faults_fired`, `hosts_connected_min`, `handshakes_bounded`, `workers_bounded`, `no_host_forgotten`, `no_lost_events`, `slow_consumers_kicked`, `memory_bounded`, `recovery_within`, `delivery_gap_max`, `no_stale_delivery`, `consumer_accounting`, `panics_contained`, `calls_answered`, `handlers_in_flight_max`, `bad_input_rejected`, `bad_hosts_isolated`, `fair_share`, `coverage_min`, `host_table_max`, `no_internal_dials`, `reconnect_latency_max`",
        ]
    );
    let semantic = "name = \"x\"\n\
                    duration_s = 30\n\
                    [upstreams]\n\
                    hosts = 10\n\
                    [[faults]]\n\
                    kind = \"partition\"\n\
                    at_s = 10\n\
                    duration_s = 40\n\
                    hosts_fraction = 0.5\n\
                    [[faults]]\n\
                    kind = \"restart_relay\"\n\
                    at_s = 10\n\
                    down_s = 0\n\
                    [oracles]\n\
                    probe_liveness = {}\n";
    assert_eq!(
        parse_error(semantic),
        "bad.toml:8:1: faults[0].duration_s: expected the fault to end by duration_s (30s), it ends at 50s\n\
         bad.toml:13:1: faults[1].down_s: expected down_s >= 1\n\
         bad.toml:15:1: oracles.probe_liveness: probe_liveness needs a [prober] table"
    );
    let duplicate = parse_error("name = \"x\"\nname = \"y\"\nduration_s = 30\n[oracles]\n");
    assert_eq!(duplicate, "bad.toml:2:1: duplicate key `name`");
}

#[test]
fn unknown_relay_key_is_caught_by_the_relay_schema_with_its_position() {
    let message = parse_error(&format!("{MINIMAL}[relay.server]\nmax_conections = 3\n"));
    assert!(
        message.starts_with("bad.toml:5:1: unknown field `max_conections`"),
        "{message}"
    );
}

#[test]
fn inverted_range_reports_what_was_expected() {
    let text = format!(
        "{MINIMAL}[[churners]]\nnodes = 1\nloops_per_node = 1\nstop_s = 10\nthink_ms = [50, 10]\n"
    );
    let message = parse_error(&text);
    assert!(
        message.starts_with("bad.toml:8:12: expected [min, max] with min <= max, got [50, 10]"),
        "{message}"
    );
}

#[test]
fn unknown_oracle_and_bad_expectation_are_rejected() {
    let message = parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nprobe_lively = {}\n");
    assert!(
        message.starts_with("bad.toml:4:1: unknown field `probe_lively`"),
        "{message}"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\nexpect = { fail = \"nope\" }\n[oracles]\n");
    assert!(
        message.starts_with("bad.toml:3:19: unknown variant `nope`"),
        "{message}"
    );
}

#[test]
fn semantic_errors_name_the_key() {
    let churner_past_end =
        format!("{MINIMAL}[[churners]]\nnodes = 1\nloops_per_node = 1\nstop_s = 61\n");
    assert_eq!(
        parse_error(&churner_past_end),
        "bad.toml:7:1: churners[0].stop_s: expected start_s (0) < stop_s (61) <= duration_s (60)"
    );
    assert_eq!(
        parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nprobe_liveness = {}\n"),
        "bad.toml:4:1: oracles.probe_liveness: probe_liveness needs a [prober] table"
    );
    assert_eq!(
        parse_error(
            "name = \"x\"\nduration_s = 60\nexpect = { fail = \"conn_accounting\" }\n[oracles]\n"
        ),
        "bad.toml:3:1: expect: expects conn_accounting to fail, but [oracles] does not check it"
    );
    assert_eq!(
        parse_error(&format!("{MINIMAL}[relay.server]\nmax_connections = 0\n")),
        "bad.toml:5:1: relay.server.max_connections: invalid configuration: server.max_connections must be at least 1"
    );
    let unknown_probe =
        parse_error("name = \"x\"\nduration_s = 60\nreach = [\"upstream.dormnat\"]\n[oracles]\n");
    assert!(
        unknown_probe.starts_with(
            "bad.toml:3:1: reach: unknown probe \"upstream.dormnat\"; expected one of admission.at_capacity, "
        ),
        "{unknown_probe}"
    );
    assert_eq!(
        parse_error(
            "name = \"x\"\nduration_s = 60\nengine = \"turmoil\"\nreach = [\"upstream.dormant\"]\n[oracles]\n"
        ),
        "bad.toml:4:1: reach: expected no reach on this engine: the relay's probes are counted only under madsim"
    );
}

#[test]
fn upstream_and_fault_tables_are_validated() {
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\nflaky_fraction = 1.5\n"
    ));
    assert_eq!(
        message,
        "bad.toml:6:1: upstreams.flaky_fraction: expected a fraction within 0..=1"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\nrate = {{ burst_mean = 0.5 }}\n"
    ));
    assert_eq!(
        message,
        "bad.toml:6:10: upstreams.rate.burst_mean: expected 1 (no bursts) to 1000 events per burst"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\nrate = {{ burst_mean = 4.0, burst_gap_ms = 0 }}\n"
    ));
    assert_eq!(
        message,
        "bad.toml:6:28: upstreams.rate.burst_gap_ms: expected 1 to 60000 ms between the events of a burst"
    );
    let message = parse_error(&format!("{MINIMAL}[upstreams]\nhost = 10\n"));
    assert!(
        message.starts_with("bad.toml:5:1: unknown field `host`"),
        "{message}"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\n[[faults]]\nkind = \"meteor\"\nat_s = 1\n"
    ));
    assert!(
        message.starts_with("bad.toml:7:8: unknown variant `meteor`, expected one of `partition`, `clog`, `latency`, `kill_relay`, `power_loss`, `restart_relay`, `store_fault`, `store_stall`, `handler_panic`, `handler_stall`, `hosts_restart`, `hosts_dark`"),
        "{message}"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"partition\"\nat_s = 1\nduration_s = 5\nhosts_fraction = 0.5\n"
    ));
    assert_eq!(
        message,
        "bad.toml:5:1: faults[0].kind: a partition needs [upstreams]"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"latency\"\nat_s = 1\nduration_s = 5\nlatency_ms = [90, 10]\n"
    ));
    assert_eq!(
        message,
        "bad.toml:4:1: expected [min, max] with min <= max, got [90, 10]"
    );
    let message = parse_error(&format!(
        "{MINIMAL}[[faults]]\nkind = \"clog\"\nat_s = 1\nduration_s = 0\n"
    ));
    assert_eq!(
        message,
        "bad.toml:7:1: faults[0].duration_s: expected duration_s >= 1"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[[callers]]\npath = \"hosts\"\n[oracles]\n");
    assert_eq!(
        message,
        "bad.toml:4:1: callers[0].path: expected a path starting with '/'"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[[abusers]]\nkind = \"smurf\"\n[oracles]\n");
    assert!(
        message.starts_with("bad.toml:4:8: unknown variant `smurf`, expected one of `slowloris`"),
        "{message}"
    );
    let message = parse_error(
        "name = \"x\"\nduration_s = 60\n[[abusers]]\nkind = \"garbage\"\nstart_s = 60\n[oracles]\n",
    );
    assert_eq!(
        message,
        "bad.toml:5:1: abusers[0].start_s: expected start_s < duration_s"
    );
    let message =
        parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nbad_input_rejected = {}\n");
    assert_eq!(
        message,
        "bad.toml:4:1: oracles.bad_input_rejected: bad_input_rejected needs [[abusers]]"
    );
    let message = parse_error("name = \"x\"\nduration_s = 60\n[oracles]\nno_host_forgotten = {}\n");
    assert_eq!(
        message,
        "bad.toml:4:1: oracles.no_host_forgotten: no_host_forgotten needs an [upstreams] table"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let error = Scenario::load(Path::new("no/such/scenario.toml")).unwrap_err();
    assert!(matches!(error, ScenarioError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("no/such/scenario.toml: cannot read:"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Host tables from files (`upstreams.table`).

/// Load `scenario` (text) from a scratch directory `name` holding the table file
/// `hosts/table` with `table` in it; an error's text with the directory written `<dir>`.
fn load_with_table(name: &str, scenario: &str, table: &str) -> Result<Scenario, String> {
    let dir = support::scratch_dir(name);
    std::fs::create_dir_all(dir.join("hosts")).unwrap();
    std::fs::write(dir.join("hosts/table"), table).unwrap();
    std::fs::write(dir.join("scenario.toml"), scenario).unwrap();
    Scenario::load(&dir.join("scenario.toml")).map_err(|error| {
        error
            .to_string()
            .replace(&dir.display().to_string(), "<dir>")
    })
}

fn table_scenario() -> String {
    format!("{MINIMAL}[upstreams]\ntable = \"hosts/table\"\n")
}

/// The loaded table's hosts as (host, status) pairs.
fn table_hosts(scenario: &Scenario) -> Vec<(String, HostStatus)> {
    let table = scenario.upstreams.as_ref().unwrap().table.as_ref().unwrap();
    table
        .hosts
        .iter()
        .map(|row| (row.host.clone(), row.status))
        .collect()
}

/// The message of a table that does not load, with its scenario's location.
fn table_error(name: &str, table: &str) -> String {
    load_with_table(name, &table_scenario(), table).unwrap_err()
}

#[test]
fn a_snapshot_table_loads_with_what_it_says_of_each_host() {
    let scenario = load_with_table(
        "table_snapshot",
        &table_scenario(),
        "{\"host\": \"shard-01.us-east.big.example\", \"status\": \"online\", \"operator\": \"op-0000\", \"kind\": \"bsky\", \"software\": \"reference-pds\", \"region\": \"us-east\"}\n\
         \n\
         {\"host\": \"PDS-0001.op-0001.example\", \"status\": \"unreachable\", \"operator\": \"op-0001\", \"kind\": \"third_party\", \"software\": \"unknown\", \"region\": null}\n\
         {\"host\": \"pds-0002.op-0002.example\", \"status\": \"offline\"}\n",
    )
    .unwrap();
    assert_eq!(
        table_hosts(&scenario),
        [
            (
                "shard-01.us-east.big.example".to_owned(),
                HostStatus::Online
            ),
            (
                "pds-0001.op-0001.example".to_owned(),
                HostStatus::Unreachable
            ),
            ("pds-0002.op-0002.example".to_owned(), HostStatus::Offline),
        ]
    );
    let upstreams = scenario.upstreams.as_ref().unwrap();
    let first = &upstreams.table.as_ref().unwrap().hosts[0];
    assert_eq!(first.operator.as_deref(), Some("op-0000"));
    assert_eq!(first.kind.as_deref(), Some("bsky"));
    assert_eq!(first.software.as_deref(), Some("reference-pds"));
    assert_eq!(first.region.as_deref(), Some("us-east"));
    assert_eq!(upstreams.hosts, None);
    assert_eq!(scenario.host_count(), 1 + 3);
}

#[test]
fn list_hosts_pages_load_with_their_statuses_mapped() {
    let scenario = load_with_table(
        "table_list_hosts",
        &table_scenario(),
        "{\"cursor\": \"2\", \"hosts\": [{\"hostname\": \"a.example\", \"seq\": 1, \"accountCount\": 10, \"status\": \"active\"}, {\"hostname\": \"b.example\", \"seq\": 2, \"accountCount\": 0, \"status\": \"idle\"}]}\n\
         {\"hosts\": [{\"hostname\": \"c.example\", \"status\": \"offline\"}, {\"hostname\": \"d.example\", \"status\": \"banned\"}, {\"hostname\": \"e.example\", \"status\": \"throttled\"}, {\"hostname\": \"f.example\"}]}\n",
    )
    .unwrap();
    assert_eq!(
        table_hosts(&scenario),
        [
            ("a.example".to_owned(), HostStatus::Online),
            ("b.example".to_owned(), HostStatus::Online),
            ("c.example".to_owned(), HostStatus::Offline),
            ("e.example".to_owned(), HostStatus::Online),
            ("f.example".to_owned(), HostStatus::Online),
        ],
        "banned hosts are left out"
    );
}

#[test]
fn a_list_of_hostnames_loads_every_host_online() {
    let scenario = load_with_table(
        "table_hostnames",
        &table_scenario(),
        "# my relay's hosts\n\nPDS.One.Example\npds.two.example  # the second\n",
    )
    .unwrap();
    assert_eq!(
        table_hosts(&scenario),
        [
            ("pds.one.example".to_owned(), HostStatus::Online),
            ("pds.two.example".to_owned(), HostStatus::Online),
        ]
    );
}

#[test]
fn the_shipped_snapshot_has_the_cards_counts() {
    let scenario = load("network_snapshot.toml");
    let hosts = table_hosts(&scenario);
    let count = |status| hosts.iter().filter(|(_, s)| *s == status).count();
    assert_eq!(hosts.len(), 3_208);
    assert_eq!(count(HostStatus::Online), 2_866);
    assert_eq!(count(HostStatus::Offline), 146);
    assert_eq!(count(HostStatus::Unreachable), 196);
}

#[test]
fn bad_tables_are_reported_at_their_file_and_line() {
    let at = "<dir>/scenario.toml:5:9: <dir>/hosts/table";
    assert_eq!(
        table_error(
            "table_bad_json",
            "{\"host\": \"a.example\", \"status\": \"online\"}\n{\"host\": \"b.example\", \"status\": online}\n"
        ),
        format!("{at}:2: not JSON: expected value (column 33)")
    );
    assert_eq!(
        table_error(
            "table_unknown_status",
            "{\"host\": \"a.example\", \"status\": \"onlin\"}\n"
        ),
        format!(
            "{at}:1: unknown variant `onlin`, expected one of `online`, `offline`, `unreachable` (column 39)"
        )
    );
    assert_eq!(
        table_error(
            "table_unknown_listed_status",
            "{\"hosts\": [{\"hostname\": \"a.example\", \"status\": \"gone\"}]}\n"
        ),
        format!(
            "{at}:1: hosts[0]: unknown status \"gone\"; expected active, idle, offline, throttled or banned"
        )
    );
    assert_eq!(
        table_error(
            "table_duplicate",
            "a.example\nb.example\n# again\nA.example.\n"
        ),
        format!("{at}:4: duplicate host \"a.example\" (first on line 1)")
    );
    assert_eq!(
        table_error("table_empty", "# nothing yet\n\n"),
        format!("{at}:1: expected at least one host, found none")
    );
    assert_eq!(
        table_error("table_bad_name", "a.example\nlocalhost:2583\n10.0.0.1\n"),
        format!(
            "{at}:2: invalid hostname \"localhost:2583\": expected a hostname without a port\n\
             <dir>/hosts/table:3: invalid hostname \"10.0.0.1\": IP addresses are not accepted; expected a DNS name"
        )
    );
    assert_eq!(
        table_error(
            "table_mixed_forms",
            "a.example\n{\"host\": \"b.example\", \"status\": \"online\"}\n"
        ),
        format!(
            "{at}:2: expected a hostname like the file's first entry, found a snapshot row (a JSON object with host and status)"
        )
    );
}

#[test]
fn a_table_is_an_alternative_to_hosts_and_to_dead_hosts_drawn() {
    let message = load_with_table(
        "table_and_hosts",
        &format!("{MINIMAL}[upstreams]\nhosts = 10\ntable = \"hosts/table\"\n"),
        "a.example\n",
    )
    .unwrap_err();
    assert_eq!(
        message,
        "<dir>/scenario.toml:6:1: upstreams.table: expected either hosts (a generated table) or table (a file), not both"
    );
    let message = parse_error(&format!("{MINIMAL}[upstreams]\nflaky_fraction = 0.1\n"));
    assert_eq!(
        message,
        "bad.toml:4:2: upstreams: expected hosts (a generated table) or table (a file)"
    );
    let message = load_with_table(
        "table_and_dead_fraction",
        &format!("{MINIMAL}[upstreams]\ntable = \"hosts/table\"\ndead_fraction = 0.1\n"),
        "a.example\n",
    )
    .unwrap_err();
    assert_eq!(
        message,
        "<dir>/scenario.toml:6:1: upstreams.dead_fraction: expected no dead_fraction with a table: its statuses say which hosts are dead"
    );
    let message = load_with_table(
        "table_missing",
        &format!("{MINIMAL}[upstreams]\ntable = \"hosts/absent\"\n"),
        "a.example\n",
    )
    .unwrap_err();
    assert!(
        message.starts_with(
            "<dir>/scenario.toml:5:9: <dir>/hosts/absent: cannot read the host table:"
        ),
        "{message}"
    );
}

#[test]
fn turmoil_refuses_a_table() {
    let message = load_with_table(
        "table_turmoil",
        &format!("engine = \"turmoil\"\n{MINIMAL}[upstreams]\ntable = \"hosts/table\"\n"),
        "a.example\n",
    )
    .unwrap_err();
    assert!(
        message.starts_with(
            "<dir>/scenario.toml:6:1: upstreams.table: expected upstreams.hosts instead of a table with engine = \"turmoil\""
        ),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// Host selectors (`[[faults]] hosts = { … }`).

/// A snapshot table of three hosts: two of operator op-1 in us-east, one of op-2.
const SELECTOR_TABLE: &str = "\
{\"host\": \"a.example\", \"status\": \"online\", \"operator\": \"op-1\", \"region\": \"us-east\"}
{\"host\": \"b.example\", \"status\": \"online\", \"operator\": \"op-2\"}
{\"host\": \"c.example\", \"status\": \"offline\", \"operator\": \"op-1\", \"region\": \"us-east\"}
";

/// `table_scenario` with one fault (`fault`, the lines after `[[faults]]`).
fn selector_scenario(fault: &str) -> String {
    format!("{}[[faults]]\n{fault}", table_scenario())
}

#[test]
fn host_selectors_match_the_tables_metadata_and_a_rolling_deploy_ends_with_its_last_batch() {
    use windtunnel::scenario::{FaultKind, HostSelector, Rolling};
    let scenario = load_with_table(
        "selector_ok",
        &selector_scenario(
            "kind = \"hosts_restart\"\nat_s = 10\ndown_s = 10\nhosts = { operator = \"op-1\" }\n\
             rolling = { batch = 1, every_s = 20 }\n",
        ),
        SELECTOR_TABLE,
    )
    .unwrap();
    let fault = &scenario.faults[0];
    let FaultKind::HostsRestart { hosts, rolling } = &fault.kind else {
        panic!("{fault:?}");
    };
    assert_eq!(hosts, &HostSelector::Operator("op-1".into()));
    assert_eq!(
        rolling,
        &Some(Rolling {
            batch: 1,
            every_s: 20
        })
    );
    let table = scenario.upstreams.as_ref().unwrap().table.as_ref();
    assert_eq!(
        hosts.matching(table),
        [0, 2],
        "op-1's hosts, in table order"
    );
    assert_eq!(
        HostSelector::Region("us-east".into()).matching(table),
        [0, 2]
    );
    assert_eq!(HostSelector::Fraction(0.5).count(table, 3), 2);
    assert_eq!(
        fault.end_s(&scenario),
        40,
        "two batches of one: the second goes down at 30 s and is back at 40 s"
    );
}

#[test]
fn host_selectors_are_checked_against_the_table_at_their_key() {
    let error = |name: &str, fault: &str| {
        load_with_table(name, &selector_scenario(fault), SELECTOR_TABLE).unwrap_err()
    };
    assert_eq!(
        error(
            "selector_unknown_operator",
            "kind = \"hosts_dark\"\nat_s = 1\nduration_s = 5\nhosts = { operator = \"op-9\" }\n"
        ),
        "<dir>/scenario.toml:10:1: faults[0].hosts: no host of <dir>/hosts/table has operator \"op-9\""
    );
    assert_eq!(
        error(
            "selector_bad_fraction",
            "kind = \"hosts_dark\"\nat_s = 1\nduration_s = 5\nhosts = { fraction = 1.5 }\n"
        ),
        "<dir>/scenario.toml:10:1: faults[0].hosts: expected a fraction within 0..=1"
    );
    assert_eq!(
        error(
            "selector_rolling_overlap",
            "kind = \"hosts_restart\"\nat_s = 1\ndown_s = 10\nhosts = { kind = \"bsky\" }\n\
             rolling = { batch = 0, every_s = 5 }\n"
        ),
        "<dir>/scenario.toml:10:1: faults[0].hosts: no host of <dir>/hosts/table has kind \"bsky\"\n\
         <dir>/scenario.toml:11:13: faults[0].rolling.batch: expected batch >= 1\n\
         <dir>/scenario.toml:11:24: faults[0].rolling.every_s: expected every_s >= down_s (10s): a batch is back before the next goes down"
    );
    assert_eq!(
        error(
            "selector_deploy_too_long",
            "kind = \"hosts_restart\"\nat_s = 10\ndown_s = 10\nhosts = { region = \"us-east\" }\n\
             rolling = { batch = 1, every_s = 45 }\n"
        ),
        "<dir>/scenario.toml:9:1: faults[0].down_s: expected the fault to end by duration_s (60s), it ends at 65s"
    );
    assert_eq!(
        error(
            "selector_no_extra_latency",
            "kind = \"hosts_latency\"\nat_s = 1\nduration_s = 5\nhosts = { operator = \"op-2\" }\n\
             extra_latency_ms = 0\n"
        ),
        "<dir>/scenario.toml:11:1: faults[0].extra_latency_ms: expected extra_latency_ms >= 1"
    );
    let generated = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\n[[faults]]\nkind = \"hosts_dark\"\nat_s = 1\nduration_s = 5\n\
         hosts = {{ region = \"us-east\" }}\n"
    ));
    assert_eq!(
        generated,
        "bad.toml:10:1: faults[0].hosts: a selector by region needs upstreams.table: a generated host table has no regions"
    );
    let unknown = parse_error(&format!(
        "{MINIMAL}[upstreams]\nhosts = 10\n[[faults]]\nkind = \"hosts_dark\"\nat_s = 1\nduration_s = 5\n\
         hosts = {{ software = \"x\" }}\n"
    ));
    assert!(
        unknown.contains(
            "unknown variant `software`, expected one of `operator`, `kind`, `region`, `fraction`"
        ),
        "{unknown}"
    );
}

#[test]
fn only_madsim_restarts_hosts() {
    let message = parse_error(&format!(
        "engine = \"turmoil\"\n{MINIMAL}[upstreams]\nhosts = 10\n[[faults]]\nkind = \"hosts_restart\"\n\
         at_s = 1\ndown_s = 5\nhosts = {{ fraction = 0.5 }}\n"
    ));
    assert!(
        message.starts_with(
            "bad.toml:8:1: faults[0].kind: expected no hosts_restart fault with engine = \"turmoil\""
        ),
        "{message}"
    );
}
