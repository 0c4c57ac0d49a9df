//! Egress rules: which addresses the relay may dial an upstream on.
//!
//! An upstream is named by whoever calls `requestCrawl`, so a name could point the relay at
//! itself, its pod network or a cloud metadata service (server-side request forgery). The
//! rule is applied to the address the worker actually dials: it resolves the name once
//! ([`crate::rt::net::lookup_host`]), [`check`]s every address, and dials a checked address,
//! never the name again, so a second, different DNS answer cannot slip past it. An address
//! in a loopback, private, link-local, shared (CGNAT), multicast, documentation or reserved
//! range, or a metadata address, is refused with a named [`Refusal`] unless
//! `upstream.egress_allow` (CIDR blocks) contains it. An IPv4 address inside IPv6
//! (IPv4-mapped, NAT64) is judged as the IPv4 address it reaches.
//!
//! Names that can only mean an internal host (`localhost`, `*.local`, `*.internal`, …) are
//! refused earlier, at `requestCrawl` ([`refuse_name`]); the check on the address is the
//! authoritative one, since any public name can resolve to an internal address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rt::{net, time::timeout};

/// Why an address is not dialled. Each is a quarantine reason (`/hosts`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `0.0.0.0/8`, `::`: "this host".
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7`, `fec0::/10`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Cloud metadata services: `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
    /// `100.64.0.0/10`: carrier-grade NAT (RFC 6598).
    SharedAddress,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`.
    Documentation,
    /// Not a unicast Internet address: `192.0.0.0/24`, `198.18.0.0/15` (benchmarking),
    /// `240.0.0.0/4`, IPv4-compatible `::/96`, `100::/64` (discard).
    Reserved,
}

impl Refusal {
    /// The quarantine reason shown in `/hosts` and `relay_upstream_quarantined_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unspecified => "egress_unspecified",
            Self::Loopback => "egress_loopback",
            Self::Private => "egress_private",
            Self::LinkLocal => "egress_link_local",
            Self::Metadata => "egress_metadata",
            Self::SharedAddress => "egress_shared_address",
            Self::Multicast => "egress_multicast",
            Self::Broadcast => "egress_broadcast",
            Self::Documentation => "egress_documentation",
            Self::Reserved => "egress_reserved",
        }
    }
}

/// The refused IPv4 ranges, most specific first (a metadata address is also link-local).
const REFUSED_V4: [(Cidr, Refusal); 16] = [
    (v4(169, 254, 169, 254, 32), Refusal::Metadata),
    (v4(255, 255, 255, 255, 32), Refusal::Broadcast),
    (v4(0, 0, 0, 0, 8), Refusal::Unspecified),
    (v4(127, 0, 0, 0, 8), Refusal::Loopback),
    (v4(10, 0, 0, 0, 8), Refusal::Private),
    (v4(172, 16, 0, 0, 12), Refusal::Private),
    (v4(192, 168, 0, 0, 16), Refusal::Private),
    (v4(169, 254, 0, 0, 16), Refusal::LinkLocal),
    (v4(100, 64, 0, 0, 10), Refusal::SharedAddress),
    (v4(224, 0, 0, 0, 4), Refusal::Multicast),
    (v4(192, 0, 2, 0, 24), Refusal::Documentation),
    (v4(198, 51, 100, 0, 24), Refusal::Documentation),
    (v4(203, 0, 113, 0, 24), Refusal::Documentation),
    (v4(192, 0, 0, 0, 24), Refusal::Reserved),
    (v4(198, 18, 0, 0, 15), Refusal::Reserved),
    (v4(240, 0, 0, 0, 4), Refusal::Reserved),
];

/// The refused IPv6 ranges, most specific first.
const REFUSED_V6: [(Cidr, Refusal); 10] = [
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        Refusal::Metadata,
    ),
    (v6([0; 8], 128), Refusal::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Refusal::Loopback),
    (v6([0; 8], 96), Refusal::Reserved),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), Refusal::Reserved),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        Refusal::Documentation,
    ),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Refusal::Private),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), Refusal::Private),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), Refusal::LinkLocal),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Refusal::Multicast),
];

/// `64:ff9b::/96`, NAT64's well-known prefix: its last 32 bits are the IPv4 address reached.
const NAT64: Cidr = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr::V4(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
    let [a, b, c, d, e, f, g, h] = segments;
    Cidr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// Why `ip` is refused when no allowlist names it (`None`: a public address).
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    let ip = match ip.to_canonical() {
        IpAddr::V6(v6) if NAT64.contains(IpAddr::V6(v6)) => {
            let [.., a, b, c, d] = v6.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        canonical => canonical,
    };
    let table: &[(Cidr, Refusal)] = if ip.is_ipv4() {
        &REFUSED_V4
    } else {
        &REFUSED_V6
    };
    table
        .iter()
        .find(|(range, _)| range.contains(ip))
        .map(|&(_, refusal)| refusal)
}

/// Whether the relay may dial `ip`: yes if `allow` contains it or it is public; otherwise
/// `Err` names why not.
pub fn check(ip: IpAddr, allow: &[Cidr]) -> Result<(), Refusal> {
    if allow.iter().any(|block| block.contains(ip)) {
        return Ok(());
    }
    classify(ip).map_or(Ok(()), Err)
}

/// Domains that only ever name internal hosts (RFC 6761, RFC 6762, RFC 8375, cloud and
/// cluster conventions): `localhost` and `*.localhost`, `*.local` (mDNS, and Kubernetes'
/// `*.svc.cluster.local`), `*.internal` (`metadata.google.internal`), `*.localdomain`,
/// `*.home.arpa`.
const INTERNAL_DOMAINS: [&str; 5] = ["localhost", "local", "internal", "localdomain", "home.arpa"];

/// Why `requestCrawl` refuses a validated, lowercased hostname on its name alone, if it
/// does: the name lies under a domain that only names internal hosts. The message is shown
/// to the caller in a 400.
pub fn refuse_name(hostname: &str) -> Option<String> {
    INTERNAL_DOMAINS
        .iter()
        .find(|&&domain| {
            hostname == domain
                || hostname
                    .strip_suffix(domain)
                    .is_some_and(|head| head.ends_with('.'))
        })
        .map(|domain| {
            format!(
                "refused hostname {hostname:?}: names under .{domain} are internal hosts, \
                 and the relay dials only public upstreams"
            )
        })
}

/// What the existence check found wrong with a new host's name; the message is shown to
/// the `requestCrawl` caller in a 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name has no address (or the resolver did not answer in time).
    #[error("{0}")]
    NotFound(String),
    /// Every address of the name is refused; the first refusal.
    #[error("{0}")]
    Refused(String, Refusal),
}

/// The existence check `requestCrawl` makes before it stores a new host: `hostname`
/// resolves on `port` within `within`, and at least one of its addresses may be dialled
/// under `allow`. Resolved through [`net::lookup_host`] (simulated DNS in the wind tunnel).
pub async fn resolve_dialable(
    hostname: &str,
    port: u16,
    allow: &[Cidr],
    within: Duration,
) -> Result<(), NameProblem> {
    let not_found =
        |why: &str| NameProblem::NotFound(format!("hostname {hostname:?} does not resolve: {why}"));
    let addresses = match timeout(within, net::lookup_host(hostname, port)).await {
        Err(_) => {
            return Err(not_found(&format!(
                "no answer within {} ms",
                within.as_millis()
            )))
        }
        Ok(Err(error)) => return Err(not_found(&error.to_string())),
        Ok(Ok(addresses)) => addresses,
    };
    let mut first_refusal = None;
    for address in &addresses {
        match check(address.ip(), allow) {
            Ok(()) => return Ok(()),
            Err(refusal) => {
                first_refusal.get_or_insert((address.ip(), refusal));
            }
        }
    }
    let Some((ip, refusal)) = first_refusal else {
        return Err(not_found("no address"));
    };
    Err(NameProblem::Refused(
        format!(
            "refused hostname {hostname:?}: it resolves only to addresses the relay does not \
             dial ({ip}: {}), and the relay dials only public upstreams",
            refusal.reason()
        ),
        refusal,
    ))
}

/// A CIDR block as the configuration spells it (`10.0.0.0/8`, `fd00::/8`; a bare address
/// is a block of one). IPv4-mapped IPv6 addresses are matched as their IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Cidr {
    /// An IPv4 network (no bits set past the prefix) and its prefix length, 0 to 32.
    V4(Ipv4Addr, u8),
    /// An IPv6 network (no bits set past the prefix) and its prefix length, 0 to 128.
    V6(Ipv6Addr, u8),
}

impl Cidr {
    /// Whether `ip` is inside the block.
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (Self::V4(network, prefix), IpAddr::V4(ip)) => v4_network(ip, prefix) == network,
            (Self::V6(network, prefix), IpAddr::V6(ip)) => v6_network(ip, prefix) == network,
            _ => false,
        }
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn v4_network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from_bits(ip.to_bits() & mask)
}

/// `ip` with every bit past the first `prefix` cleared.
fn v6_network(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from_bits(ip.to_bits() & mask)
}

/// Why a configured CIDR block was not understood; the message quotes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CIDR block: {why}")]
pub struct CidrError {
    text: String,
    why: String,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: String| CidrError {
            text: text.to_owned(),
            why,
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = address
            .parse()
            .map_err(|_| refuse(format!("{address:?} is not an IP address")))?;
        let longest: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&length| length <= longest)
                .ok_or_else(|| {
                    refuse(format!(
                        "the prefix length must be a number from 0 to {longest}"
                    ))
                })?,
        };
        let (block, network) = match ip {
            IpAddr::V4(ip) => {
                let network = v4_network(ip, prefix);
                (Self::V4(network, prefix), IpAddr::V4(network))
            }
            IpAddr::V6(ip) => {
                let network = v6_network(ip, prefix);
                (Self::V6(network, prefix), IpAddr::V6(network))
            }
        };
        if network != ip {
            return Err(refuse(format!(
                "bits are set past the prefix (did you mean {block}?)"
            )));
        }
        Ok(block)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(network, prefix) => write!(f, "{network}/{prefix}"),
            Self::V6(network, prefix) => write!(f, "{network}/{prefix}"),
        }
    }
}

impl From<Cidr> for String {
    fn from(block: Cidr) -> Self {
        block.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn the_existence_check_wants_a_name_that_resolves_to_a_dialable_address() {
        let within = Duration::from_secs(2);
        // `localhost` resolves everywhere, to loopback only (the name rule, which would
        // refuse it first at `requestCrawl`, is not this function's business).
        match resolve_dialable("localhost", 80, &[], within).await {
            Err(NameProblem::Refused(message, Refusal::Loopback)) => assert!(
                message.contains("resolves only to addresses the relay does not dial")
                    && message.contains("egress_loopback"),
                "{message}"
            ),
            other => panic!("localhost: {other:?}"),
        }
        let allow = [block("127.0.0.0/8"), block("::1")];
        assert_eq!(
            resolve_dialable("localhost", 80, &allow, within).await,
            Ok(())
        );
        // RFC 6761: `.invalid` never resolves.
        match resolve_dialable("nothing-here.invalid", 80, &allow, within).await {
            Err(NameProblem::NotFound(message)) => assert!(
                message.starts_with(r#"hostname "nothing-here.invalid" does not resolve: "#),
                "{message}"
            ),
            other => panic!("nothing-here.invalid: {other:?}"),
        }
    }

    #[test]
    fn each_refused_range_is_refused_with_its_reason() {
        for (address, refusal) in [
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.0.9", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("fd12:3456::1", Refusal::Private),
            ("fec0::1", Refusal::Private),
            ("169.254.1.1", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("169.254.169.254", Refusal::Metadata),
            ("fd00:ec2::254", Refusal::Metadata),
            ("100.64.0.1", Refusal::SharedAddress),
            ("100.127.255.254", Refusal::SharedAddress),
            ("224.0.0.1", Refusal::Multicast),
            ("239.255.255.250", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("192.0.2.10", Refusal::Documentation),
            ("198.51.100.10", Refusal::Documentation),
            ("203.0.113.10", Refusal::Documentation),
            ("2001:db8::1", Refusal::Documentation),
            ("192.0.0.8", Refusal::Reserved),
            ("198.18.0.1", Refusal::Reserved),
            ("198.19.255.255", Refusal::Reserved),
            ("240.0.0.1", Refusal::Reserved),
            ("::7f00:1", Refusal::Reserved),
            ("100::1", Refusal::Reserved),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(classify(ip), Some(refusal), "{address}");
            assert_eq!(check(ip, &[]), Err(refusal), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(check(ip, &[]), Ok(()), "{address}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_the_ipv4_address_it_reaches() {
        for (address, refusal) in [
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:169.254.169.254", Refusal::Metadata),
            ("::ffff:10.0.0.1", Refusal::Private),
            ("64:ff9b::a9fe:a9fe", Refusal::Metadata),
            ("64:ff9b::7f00:1", Refusal::Loopback),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(check(ip, &[]), Err(refusal), "{address}");
        }
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(check(mapped, &[block("127.0.0.0/8")]), Ok(()));
    }

    #[test]
    fn the_allowlist_admits_exactly_what_it_names() {
        let allow = [
            block("127.0.0.0/8"),
            block("fd00::/8"),
            block("169.254.169.254"),
        ];
        for address in [
            "127.0.0.1",
            "127.16.3.4",
            "fd00:ec2::254",
            "169.254.169.254",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(check(ip, &allow), Ok(()), "{address}");
        }
        for (address, refusal) in [
            ("10.0.0.1", Refusal::Private),
            ("169.254.169.253", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("::1", Refusal::Loopback),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(check(ip, &allow), Err(refusal), "{address}");
        }
        let everything = [block("0.0.0.0/0"), block("::/0")];
        for address in ["127.0.0.1", "::1", "255.255.255.255"] {
            assert_eq!(check(address.parse().unwrap(), &everything), Ok(()));
        }
    }

    #[test]
    fn cidr_blocks_parse_round_trip_and_name_themselves_when_bad() {
        for text in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "127.0.0.1/32",
            "fd00::/8",
            "::/0",
        ] {
            assert_eq!(block(text).to_string(), text);
        }
        assert_eq!(block("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(block("::1").to_string(), "::1/128");
        for (text, why) in [
            (
                "10.0.0.0/33",
                "the prefix length must be a number from 0 to 32",
            ),
            (
                "fd00::/129",
                "the prefix length must be a number from 0 to 128",
            ),
            (
                "10.0.0.0/x",
                "the prefix length must be a number from 0 to 32",
            ),
            ("10.0.0/8", "\"10.0.0\" is not an IP address"),
            ("pds.example.com", "is not an IP address"),
            (
                "10.0.0.1/8",
                "bits are set past the prefix (did you mean 10.0.0.0/8?)",
            ),
        ] {
            let error = text.parse::<Cidr>().unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{text:?} is not a CIDR block: "))
                    && error.contains(why),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn internal_names_are_refused_by_name() {
        for (name, domain) in [
            ("localhost", ".localhost"),
            ("api.localhost", ".localhost"),
            ("printer.local", ".local"),
            ("kube-dns.kube-system.svc.cluster.local", ".local"),
            ("metadata.google.internal", ".internal"),
            ("db.localdomain", ".localdomain"),
            ("router.home.arpa", ".home.arpa"),
        ] {
            let message = refuse_name(name).unwrap_or_else(|| panic!("{name} passed"));
            assert!(
                message.contains(&format!("names under {domain} are internal")),
                "{message}"
            );
        }
        for name in [
            "pds.example.com",
            "local.example",
            "notlocal",
            "internal.host.example",
        ] {
            assert_eq!(refuse_name(name), None, "{name}");
        }
    }
}
