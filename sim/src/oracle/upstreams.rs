//! Upstream oracles: the relay's subscriptions to its host table — coverage by a deadline,
//! bounded handshakes and workers, no host forgotten, the host table bounded under a crawl
//! flood, no internal address dialled and flaky hosts resubscribed promptly
//! (`hosts_connected_min`, `handshakes_bounded`, `workers_bounded`, `no_host_forgotten`,
//! `host_table_max`, `no_internal_dials`, `reconnect_latency_max`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{format_seconds, needs, violation_at, Judge, OracleName, Violation};
use crate::scenario::{Problem, Scenario};
use crate::trace::{Event, Record, UpstreamSample};

/// `hosts_connected_min` bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsConnectedMinSpec {
    /// Fraction of live (not dead) hosts that must be connected, 0..=1.
    pub fraction: f64,
    /// By this simulated second.
    pub by_s: u64,
}

impl Judge for HostsConnectedMinSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        let mut found = needs(
            OracleName::HostsConnectedMin,
            scenario.upstreams.is_none(),
            "an [upstreams] table",
        );
        if !(0.0..=1.0).contains(&self.fraction) || self.by_s > scenario.duration_s {
            found.push(Problem::new(
                "oracles.hosts_connected_min",
                "expected fraction within 0..=1 and by_s <= duration_s".into(),
            ));
        }
        found
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        hosts_connected_min(records, self.fraction, self.by_s * 1_000_000)
    }
}

/// `handshakes_bounded` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakesBoundedSpec {
    /// Most handshakes allowed in flight at once.
    pub max: usize,
}

impl Judge for HandshakesBoundedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::HandshakesBounded,
            scenario.upstreams.is_none(),
            "an [upstreams] table",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        handshakes_bounded(records, self.max)
    }
}

/// `workers_bounded` takes its bound from the host table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersBoundedSpec {}

impl Judge for WorkersBoundedSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::WorkersBounded,
            scenario.upstreams.is_none(),
            "an [upstreams] table",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        workers_bounded(records)
    }
}

/// `no_host_forgotten` takes no parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoHostForgottenSpec {}

impl Judge for NoHostForgottenSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::NoHostForgotten,
            scenario.upstreams.is_none(),
            "an [upstreams] table",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        no_host_forgotten(records)
    }
}

/// Whether some `[[abusers]]` group calls `requestCrawl`.
fn has_crawlers(scenario: &Scenario) -> bool {
    scenario
        .abusers
        .iter()
        .any(|abuser| abuser.kind.is_crawler())
}

/// `host_table_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostTableMaxSpec {
    /// Most hosts the relay's table may ever hold.
    pub max: usize,
}

impl Judge for HostTableMaxSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::HostTableMax,
            !has_crawlers(scenario),
            "a crawling [[abusers]] group (crawl_junk, crawl_internal, crawl_black_hole, crawl_reactivation)",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        host_table_max(records, self.max)
    }
}

/// No relay sample shows more than `max` hosts in the table.
pub fn host_table_max(records: &[Record], max: usize) -> Option<Violation> {
    upstream_samples(records)
        .find(|(_, _, sample)| sample.hosts > max)
        .map(|(index, record, sample)| {
            violation_at(
                OracleName::HostTableMax,
                index,
                record,
                format!(
                    "the host table held {} hosts at {}: more than {max}",
                    sample.hosts,
                    format_seconds(record.t_us)
                ),
            )
        })
}

/// `no_internal_dials` (no parameters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoInternalDialsSpec {}

impl Judge for NoInternalDialsSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::NoInternalDials,
            !scenario
                .abusers
                .iter()
                .any(|abuser| abuser.kind == crate::scenario::AbuseKind::CrawlInternal),
            "a crawl_internal [[abusers]] group",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        no_internal_dials(records)
    }
}

/// No forbidden (internal) address accepted a connection.
pub fn no_internal_dials(records: &[Record]) -> Option<Violation> {
    records
        .iter()
        .enumerate()
        .find_map(|(index, record)| match &record.event {
            Event::ForbiddenDial { address, peer } => Some(violation_at(
                OracleName::NoInternalDials,
                index,
                record,
                format!(
                    "the internal address {address} was dialled from {peer} at {}",
                    format_seconds(record.t_us)
                ),
            )),
            _ => None,
        })
}

/// The upstream part of every relay sample, with its record index.
fn upstream_samples(records: &[Record]) -> impl Iterator<Item = (usize, &Record, UpstreamSample)> {
    records
        .iter()
        .enumerate()
        .filter_map(|(index, record)| match record.event {
            Event::RelaySample { upstreams, .. } => Some((index, record, upstreams)),
            _ => None,
        })
}

/// At the last sample no later than `by_us`, at least `fraction` of the live (not dead,
/// not hostile) hosts are connected.
pub fn hosts_connected_min(records: &[Record], fraction: f64, by_us: u64) -> Option<Violation> {
    let live = records.iter().find_map(|record| match record.event {
        Event::UpstreamWorld {
            hosts,
            dead,
            hostile,
            ..
        } => Some(hosts - dead - hostile),
        _ => None,
    })?;
    let required = (fraction * f64::from(live)).ceil() as usize;
    let (index, record, sample) = upstream_samples(records)
        .take_while(|(_, record, _)| record.t_us <= by_us)
        .last()?;
    (sample.hosts_connected < required).then(|| {
        violation_at(
            OracleName::HostsConnectedMin,
            index,
            record,
            format!(
                "{} of {live} live hosts connected, expected at least {required} ({:.0}%) by t={}",
                sample.hosts_connected,
                fraction * 100.0,
                format_seconds(by_us)
            ),
        )
    })
}

/// Handshakes in flight never exceeded `max` (the relay tracks an exact high-water mark).
pub fn handshakes_bounded(records: &[Record], max: usize) -> Option<Violation> {
    upstream_samples(records)
        .find(|(_, _, sample)| sample.handshakes_high_water > max)
        .map(|(index, record, sample)| {
            violation_at(
                OracleName::HandshakesBounded,
                index,
                record,
                format!(
                    "{} handshakes were in flight at once, expected at most {max}",
                    sample.handshakes_high_water
                ),
            )
        })
}

/// Never more than one worker per host, and dormant hosts hold no worker.
pub fn workers_bounded(records: &[Record]) -> Option<Violation> {
    upstream_samples(records)
        .find(|(_, _, s)| s.workers_high_water > s.hosts || s.workers_running + s.hosts_dormant > s.hosts)
        .map(|(index, record, s)| {
            violation_at(
                OracleName::WorkersBounded,
                index,
                record,
                format!(
                    "workers: {} running (high water {}), {} dormant hosts, {} hosts; expected at most \
                     one worker per non-dormant host",
                    s.workers_running, s.workers_high_water, s.hosts_dormant, s.hosts
                ),
            )
        })
}

/// At the end, every host has a worker or is dormant, and the table lost none.
pub fn no_host_forgotten(records: &[Record]) -> Option<Violation> {
    let hosts = records.iter().find_map(|record| match record.event {
        Event::UpstreamWorld { hosts, .. } => Some(hosts as usize),
        _ => None,
    })?;
    let (index, record, sample) = upstream_samples(records).last()?;
    (sample.hosts_idle > 0 || sample.hosts != hosts).then(|| {
        violation_at(
            OracleName::NoHostForgotten,
            index,
            record,
            format!(
                "at the end {} of {} hosts had no worker and were not dormant (table holds {} of {hosts})",
                sample.hosts_idle, sample.hosts, sample.hosts
            ),
        )
    })
}

/// `reconnect_latency_max` bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectLatencyMaxSpec {
    /// Most seconds from a flaky host being up again to the relay's next subscription.
    pub max_s: u64,
}

impl Judge for ReconnectLatencyMaxSpec {
    fn problems(&self, scenario: &Scenario) -> Vec<Problem> {
        needs(
            OracleName::ReconnectLatencyMax,
            scenario
                .upstreams
                .as_ref()
                .is_none_or(|upstreams| upstreams.flaky_fraction <= 0.0),
            "flaky hosts (upstreams.flaky_fraction above 0)",
        )
    }

    fn judge(&self, _: &Scenario, records: &[Record]) -> Option<Violation> {
        reconnect_latency_max(records, self.max_s * 1_000_000)
    }
}

/// Every [`Event::HostDown`] is followed, within `max_us` of the host being up again, by a
/// subscription to that host; a host still waiting when the run ends counts if it waited
/// longer than the bound.
pub fn reconnect_latency_max(records: &[Record], max_us: u64) -> Option<Violation> {
    // Per host, when it was up again after its last cut and the record of the cut.
    let mut waiting: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    let mut first_over: Option<(u64, usize, u64)> = None;
    let mut note = |latency: u64, index: usize, up_at: u64| {
        if latency > max_us && first_over.is_none() {
            first_over = Some((latency, index, up_at));
        }
    };
    for (index, record) in records.iter().enumerate() {
        match &record.event {
            Event::HostDown { up_after_ms } => {
                let up_at = record
                    .t_us
                    .saturating_add(up_after_ms.saturating_mul(1_000));
                waiting.insert(&record.node, (up_at, index));
            }
            Event::Subscribed { .. } => {
                if let Some((up_at, cut)) = waiting.remove(record.node.as_str()) {
                    note(record.t_us.saturating_sub(up_at), cut, up_at);
                }
            }
            _ => {}
        }
    }
    let end = records.last().map_or(0, |record| record.t_us);
    for (up_at, cut) in waiting.values() {
        note(end.saturating_sub(*up_at), *cut, *up_at);
    }
    let (latency, index, up_at) = first_over?;
    let record = &records[index];
    Some(violation_at(
        OracleName::ReconnectLatencyMax,
        index,
        record,
        format!(
            "{} was up again at {} and the relay had not resubscribed {} later: more than {}",
            record.node,
            format_seconds(up_at),
            format_seconds(latency),
            format_seconds(max_us)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fixtures::*;
    use crate::trace::Trace;

    #[test]
    fn host_table_max_names_the_first_sample_over_the_bound() {
        let hosts = |n| UpstreamSample {
            hosts: n,
            ..UpstreamSample::default()
        };
        let t = trace([
            upstream(10, hosts(40)),
            upstream(20, hosts(41)),
            upstream(30, hosts(90)),
        ]);
        assert_eq!(host_table_max(t.records(), 90), None);
        let violation = host_table_max(t.records(), 40).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.contains("41 hosts"),
            "{}",
            violation.message
        );
    }

    #[test]
    fn no_internal_dials_fails_on_any_forbidden_dial() {
        let dial = Event::ForbiddenDial {
            address: "169.254.169.254".to_owned(),
            peer: "10.0.0.1:40001".to_owned(),
        };
        assert_eq!(
            no_internal_dials(trace([upstream(1, UpstreamSample::default())]).records()),
            None
        );
        let t = trace([upstream(1, UpstreamSample::default()), (5_000_000, dial)]);
        let violation = no_internal_dials(t.records()).unwrap();
        assert_eq!(violation.record_index, Some(1));
        assert!(
            violation.message.contains("169.254.169.254"),
            "{}",
            violation.message
        );
    }

    #[test]
    fn hosts_connected_min_judges_the_last_sample_before_the_deadline() {
        let connected = |n| UpstreamSample {
            hosts: 100,
            hosts_connected: n,
            ..UpstreamSample::default()
        };
        let t = trace([
            world(100, 10),
            upstream(10, connected(50)),
            upstream(20, connected(85)),
            upstream(30, connected(20)),
        ]);
        assert_eq!(
            hosts_connected_min(t.records(), 0.94, 20_000_000),
            None,
            "85 >= ceil(0.94 * 90)"
        );
        let violation = hosts_connected_min(t.records(), 0.95, 20_000_000).unwrap();
        assert_eq!(violation.record_index, Some(2));
        assert!(
            violation
                .message
                .starts_with("85 of 90 live hosts connected, expected at least 86"),
            "{violation}"
        );
    }

    #[test]
    fn handshake_and_worker_bounds_name_the_first_excess() {
        let ok = UpstreamSample {
            hosts: 10,
            workers_running: 8,
            workers_high_water: 10,
            hosts_dormant: 2,
            handshakes_high_water: 4,
            ..UpstreamSample::default()
        };
        let doubled = UpstreamSample {
            workers_high_water: 11,
            ..ok
        };
        let zombie = UpstreamSample {
            workers_running: 9,
            ..ok
        };
        let t = trace([upstream(1, ok), upstream(2, doubled)]);
        assert_eq!(handshakes_bounded(t.records(), 4), None);
        assert_eq!(
            handshakes_bounded(t.records(), 3).unwrap().record_index,
            Some(0)
        );
        assert_eq!(workers_bounded(t.records()).unwrap().record_index, Some(1));
        assert_eq!(
            workers_bounded(trace([upstream(1, ok), upstream(2, zombie)]).records())
                .unwrap()
                .record_index,
            Some(1)
        );
    }

    #[test]
    fn a_host_without_worker_or_dormancy_at_the_end_is_forgotten() {
        let fine = UpstreamSample {
            hosts: 3,
            workers_running: 2,
            hosts_dormant: 1,
            ..UpstreamSample::default()
        };
        let forgotten = UpstreamSample {
            hosts_idle: 1,
            workers_running: 1,
            ..fine
        };
        assert_eq!(
            no_host_forgotten(
                trace([world(3, 0), upstream(1, forgotten), upstream(2, fine)]).records()
            ),
            None
        );
        let violation = no_host_forgotten(
            trace([world(3, 0), upstream(1, fine), upstream(2, forgotten)]).records(),
        )
        .unwrap();
        assert!(
            violation
                .message
                .starts_with("at the end 1 of 3 hosts had no worker"),
            "{violation}"
        );
        let lost = UpstreamSample { hosts: 2, ..fine };
        assert!(no_host_forgotten(trace([world(3, 0), upstream(1, lost)]).records()).is_some());
    }

    #[test]
    fn reconnect_latency_max_times_each_return_to_the_next_subscription() {
        let mut t = Trace::default();
        let down = |up_after_ms| Event::HostDown { up_after_ms };
        let subscribed = Event::Subscribed { cursor: 0 };
        // a: cut at 10 s, back at 12 s, resubscribed at 13 s (1 s).
        t.push(10_000_000, "a", down(2_000));
        // b: cut at 11 s, back at 15 s, resubscribed at 19 s (4 s).
        t.push(11_000_000, "b", down(4_000));
        t.push(13_000_000, "a", subscribed.clone());
        t.push(19_000_000, "b", subscribed.clone());
        // c: cut at 20 s, back at 21 s, never resubscribed; the run ends at 23 s (2 s).
        t.push(20_000_000, "c", down(1_000));
        t.push(23_000_000, "a", subscribed);
        assert_eq!(reconnect_latency_max(t.records(), 4_000_000), None);
        let violation = reconnect_latency_max(t.records(), 3_000_000).unwrap();
        assert_eq!(violation.record_index, Some(1), "b's cut");
        assert!(
            violation.message.contains("b was up again at 15.0s")
                && violation.message.contains("4.0s later"),
            "{}",
            violation.message
        );
        let violation = reconnect_latency_max(t.records(), 1_500_000).unwrap();
        assert_eq!(violation.record_index, Some(1), "the first over the bound");
        assert!(
            reconnect_latency_max(t.records(), 1_000_000).is_some(),
            "c waited 2 s to the end of the run"
        );
    }
}
