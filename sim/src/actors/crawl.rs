//! The crawl flood's world: the relay's `requestCrawl` request as the tunnel's callers send
//! it, the names its crawler abusers ask for (junk with no DNS record, internal names,
//! names whose DNS answer is a private or metadata address, names resolving to a black
//! hole), the simulated DNS records and nodes behind them, and the *forbidden* listeners on
//! the internal addresses, which record every connection they accept: the relay must never
//! dial one (`no_internal_dials`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use madsim::rand::Rng;
use relay::http::xrpc::REQUEST_CRAWL_PATH;
use relay::rt::net::TcpListener;

use super::rng::thread_rng;
use super::TraceSink;
use crate::trace::Event;

/// Where the black-hole names resolve: inside the world's upstream block (so the egress
/// rule lets the relay dial it), a node that accepts and never answers.
pub const BLACK_HOLE_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 250, 250);

/// How many distinct black-hole names have DNS records.
pub const BLACK_HOLE_NAMES: u32 = 400;

/// The few black-hole names the re-activation spam asks for again and again.
const REACTIVATED_NAMES: u32 = 3;

/// Internal addresses with a listener that records every connection: a cluster-private
/// address and the cloud metadata address.
pub const FORBIDDEN_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(10, 99, 0, 1),
    Ipv4Addr::new(169, 254, 169, 254),
];

/// Names refused on the name alone (they can only name internal hosts).
const INTERNAL_NAMES: [&str; 2] = [
    "metadata.google.internal",
    "kube-dns.kube-system.svc.cluster.local",
];

/// Public-looking names whose DNS answer is a forbidden address (server-side request
/// forgery through DNS).
const RESOLVING_INTERNALLY: [(&str, Ipv4Addr); 2] = [
    ("intranet.crawl-example.net", FORBIDDEN_IPS[0]),
    ("metadata.crawl-example.net", FORBIDDEN_IPS[1]),
];

/// The `n`th black-hole name.
fn black_hole_name(n: u32) -> String {
    format!("bh-{n}.crawl-example.net")
}

/// The simulated DNS records the crawl flood needs: every black-hole name and every name
/// resolving to a forbidden address (junk names have none).
pub fn dns_records() -> Vec<(String, IpAddr)> {
    (0..BLACK_HOLE_NAMES)
        .map(|n| (black_hole_name(n), IpAddr::V4(BLACK_HOLE_IP)))
        .chain(
            RESOLVING_INTERNALLY
                .iter()
                .map(|&(name, ip)| (name.to_owned(), IpAddr::V4(ip))),
        )
        .collect()
}

/// What a crawler asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrawlTarget {
    /// A fresh name with no DNS record.
    Junk,
    /// An internal name, or one resolving to an internal address.
    Internal,
    /// A black-hole name, drawn from all but the re-activation spam's.
    BlackHole,
    /// One of the first few black-hole names.
    Reactivation,
}

impl CrawlTarget {
    /// A hostname of this kind, drawn from the run's seeded randomness.
    pub fn draw(self) -> String {
        let mut rng = thread_rng();
        match self {
            Self::Junk => format!("junk-{:016x}.crawl-example.net", rng.gen::<u64>()),
            Self::Internal => {
                let pick = rng.gen_range(0..INTERNAL_NAMES.len() + RESOLVING_INTERNALLY.len());
                INTERNAL_NAMES
                    .get(pick)
                    .copied()
                    .unwrap_or_else(|| RESOLVING_INTERNALLY[pick - INTERNAL_NAMES.len()].0)
                    .to_owned()
            }
            Self::BlackHole => black_hole_name(rng.gen_range(REACTIVATED_NAMES..BLACK_HOLE_NAMES)),
            Self::Reactivation => black_hole_name(rng.gen_range(0..REACTIVATED_NAMES)),
        }
    }
}

/// A `requestCrawl` of `hostname`, closing the connection after the answer.
pub fn crawl_request(hostname: &str) -> String {
    let body = format!(r#"{{"hostname":"{hostname}"}}"#);
    format!(
        "POST {REQUEST_CRAWL_PATH} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A forbidden address's listener on `listen`: every connection accepted is an internal
/// address dialled, recorded as [`Event::ForbiddenDial`] and dropped.
pub async fn forbidden_listener(listen: SocketAddr, address: IpAddr, sink: TraceSink) {
    let node = format!("forbidden-{address}");
    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|error| panic!("{node} cannot bind {listen}: {error}"));
    while let Ok((_stream, peer)) = listener.accept().await {
        sink.record(
            node.as_str(),
            Event::ForbiddenDial {
                address: address.to_string(),
                peer: peer.to_string(),
            },
        );
    }
}
