//! Real mode against a black box (`run --real --relay-cmd`): any relay that speaks atproto,
//! known only through the protocol. Its hosts' places on loopback (127.0.0.1, a port each,
//! named `localhost:<port>`), the `requestCrawl`s that tell it of them, the end-of-run
//! audit of its log read back through `subscribeRepos`, and what of a scenario can be
//! judged from outside ([`black_box_scenario`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use relay::rt::time::sleep;

use super::free_port;
use crate::actors::upstream::{self, DeadHost};
use crate::actors::{client, crawl, relay_host, repo};
use crate::oracle::{FromOutside, OracleName};
use crate::scenario::Scenario;

/// Host `plan` for a black box, which hears of it through `requestCrawl`: on 127.0.0.1 at
/// `port`, named `localhost:<port>` (how relays take a development host), except a host
/// whose name must not resolve: it keeps its name under `.invalid`.
pub(super) fn on_loopback_port(plan: upstream::HostPlan, port: u16) -> upstream::HostPlan {
    let hostname = match plan.dead {
        Some(DeadHost::Unresolved) => format!("{}.invalid", plan.hostname),
        _ => format!("localhost:{port}"),
    };
    upstream::HostPlan {
        hostname,
        ip: Ipv4Addr::LOCALHOST,
        ..plan
    }
}

/// `count` ports free on 127.0.0.1 now, all different.
pub(super) fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let mut taken = std::collections::BTreeSet::new();
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = free_port(Ipv4Addr::LOCALHOST)?;
        if taken.insert(port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// How long a `requestCrawl` the relay answered 429 or 503 waits before it is sent again.
const CRAWL_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How many times one host's `requestCrawl` is sent again before the run fails.
const CRAWL_RETRIES_MAX: u32 = 120;

/// Tell a black box of every host, as an operator would: a `requestCrawl` each, in plan
/// order, a 429 or 503 waited out. A host whose name does not resolve may be refused (a
/// relay checks that a host exists); any other refusal fails the run, quoting the answer.
pub(super) async fn request_crawls(
    relay: SocketAddr,
    plans: &[Arc<upstream::HostPlan>],
) -> Result<(), String> {
    for plan in plans {
        let mut retries = 0;
        loop {
            let failed = |error: std::io::Error| {
                format!(
                    "requestCrawl of {} to {relay} failed: {error}",
                    plan.hostname
                )
            };
            let mut stream = relay::rt::net::TcpStream::connect(relay)
                .await
                .map_err(failed)?;
            let (response, body) =
                client::send_text(&mut stream, &crawl::crawl_request(&plan.hostname))
                    .await
                    .map_err(failed)?;
            match response.status {
                200 => break,
                429 | 503 if retries < CRAWL_RETRIES_MAX => {
                    retries += 1;
                    sleep(CRAWL_RETRY_AFTER).await;
                }
                _ if plan.dead == Some(DeadHost::Unresolved) => break,
                status => {
                    return Err(format!(
                        "the relay refused requestCrawl of {} ({status}): {body}",
                        plan.hostname
                    ))
                }
            }
        }
    }
    Ok(())
}

/// `scenario` as a black-box run plays it: the prober asks `/xrpc/_health`, and the oracles
/// that read from inside the relay are dropped. What was changed, one line each, for the
/// user (which oracles are not judged, or only in part, and why).
pub fn black_box_scenario(scenario: &mut Scenario) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(prober) = scenario.prober.as_mut() {
        if prober.path != relay::http::xrpc::HEALTH_PATH {
            notes.push(format!(
                "the prober asks {} instead of {} (any relay's liveness)",
                relay::http::xrpc::HEALTH_PATH,
                prober.path
            ));
            prober.path = relay::http::xrpc::HEALTH_PATH.to_owned();
        }
    }
    for oracle in OracleName::ALL {
        if !scenario.oracles.lists(oracle) {
            continue;
        }
        match oracle.from_outside() {
            FromOutside::Whole => {}
            FromOutside::Partly(unjudged) => {
                notes.push(format!("{oracle} is judged in part: not {unjudged}"));
            }
            FromOutside::Not(reads) => {
                scenario.oracles.drop(oracle);
                notes.push(format!("{oracle} is not judged: it reads {reads}"));
            }
        }
    }
    notes
}

/// How long the log reader waits for the next frame before it takes the log as read.
const LOG_QUIET: Duration = Duration::from_secs(2);
/// How long reading the whole log may take.
const LOG_READ_WITHIN: Duration = Duration::from_secs(120);
/// How far past the audited time the log is read: events sent up to then are in it,
/// relay seqs following persistence, not sending.
const LOG_READ_PAST: Duration = Duration::from_secs(5);

/// The end-of-run audit of a black box's log, read from outside: everything it serves from
/// `subscribeRepos?cursor=0`, each event mapped back to its host by its DID and to its
/// number there by when it says it was sent, until a frame sent [`LOG_READ_PAST`] after
/// `emitted_by` arrives or the stream goes quiet; then judged as the database audit is
/// ([`relay_host::audit_of`]). An event no host of `plans` sent fails the run.
pub(super) async fn audit_from_outside(
    relay: SocketAddr,
    plans: &[Arc<upstream::HostPlan>],
    emitted_by: Duration,
) -> Result<crate::trace::Event, String> {
    use futures_util::StreamExt;
    use relay::atproto::frame::{self, Incoming, Limits, SUBSCRIBE_REPOS_PATH};
    use tokio_tungstenite::tungstenite::Message;

    let failed = |what: String| format!("reading the relay's log from cursor 0: {what}");
    let stream = relay::rt::net::TcpStream::connect(relay)
        .await
        .map_err(|error| failed(error.to_string()))?;
    let url = format!("ws://{relay}{SUBSCRIBE_REPOS_PATH}?cursor=0");
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        url,
        stream,
        Some(crate::actors::actor_ws_config()),
    )
    .await
    .map_err(|error| failed(error.to_string()))?;
    let by_index: std::collections::BTreeMap<u32, &upstream::HostPlan> = plans
        .iter()
        .map(|plan| (plan.index, plan.as_ref()))
        .collect();
    let mut per_host = relay_host::PerHost::new();
    let (mut events, mut oldest, mut head) = (0i64, 0i64, 0i64);
    let read_until = emitted_by + LOG_READ_PAST;
    let reading = async {
        while let Ok(Some(message)) = relay::rt::time::timeout(LOG_QUIET, socket.next()).await {
            let bytes = match message.map_err(|error| failed(error.to_string()))? {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                _ => continue,
            };
            let event = match frame::decode_forwarded(&bytes, &Limits::default()) {
                Ok(Incoming::Event(event)) => event,
                Ok(_) => continue,
                Err(error) => return Err(failed(format!("a frame does not decode: {error}"))),
            };
            let seq = i64::try_from(event.seq).map_err(|error| failed(error.to_string()))?;
            let plan = repo::host_of(&event.did)
                .and_then(|(host, _)| by_index.get(&host))
                .ok_or_else(|| {
                    failed(format!(
                        "seq {seq} is about {}, no host's account",
                        event.did
                    ))
                })?;
            let sent = repo::sent_at(&event)
                .ok_or_else(|| failed(format!("seq {seq} does not say when it was sent")))?;
            if sent > read_until {
                break;
            }
            let n = plan.schedule.sent_by(sent) as i64;
            let (count, low, high) = per_host.entry(plan.hostname.clone()).or_insert((0, n, n));
            *count += 1;
            (*low, *high) = ((*low).min(n), (*high).max(n));
            events += 1;
            if oldest == 0 {
                oldest = seq;
            }
            head = seq;
        }
        Ok(())
    };
    relay::rt::time::timeout(LOG_READ_WITHIN, reading)
        .await
        .map_err(|_| failed(format!("not read within {}s", LOG_READ_WITHIN.as_secs())))??;
    Ok(relay_host::audit_of(
        events, oldest, head, &per_host, plans, emitted_by,
    ))
}
