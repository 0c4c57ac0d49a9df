//! Who holds each connection slot: the peer address and admission time of every admitted
//! connection, kept beside the lifecycle registry (which knows phases and activity, not
//! peers) so a leak can be named — peer, age, phase, last activity — rather than only
//! counted. Lock-free like the rest of the request path: one slot of atomics per registry
//! slot, written once at admission, read only for diagnostics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use relay_lifecycle::{ConnId, Phase, Registry};

/// Marks a written slot in [`PeerSlot::occupancy`] (the low 32 bits hold the generation).
const WRITTEN: u64 = 1 << 63;
/// Marks an IPv4 peer in [`PeerSlot::peer`] (bits 16..48 address, 0..16 port); without it
/// only the port is kept (an IPv6 peer).
const IPV4: u64 = 1 << 63;

#[derive(Debug, Default)]
struct PeerSlot {
    occupancy: AtomicU64,
    peer: AtomicU64,
    admitted_ms: AtomicU64,
}

/// Peer and admission time per registry slot.
#[derive(Debug)]
pub struct PeerTable {
    slots: Box<[PeerSlot]>,
}

/// One open connection, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenConnection {
    /// Its registry id.
    pub id: ConnId,
    /// The peer address (IPv4), or only its port (IPv6).
    pub peer: Peer,
    /// When it was admitted (relay clock, ms), if recorded.
    pub admitted_ms: Option<u64>,
    /// Its lifecycle phase.
    pub phase: Phase,
    /// Its last activity stamp (relay clock, ms).
    pub last_activity_ms: u64,
}

/// A peer as the table keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// An IPv4 peer, in full.
    V4(SocketAddr),
    /// An IPv6 peer: only the port is kept.
    V6Port(u16),
    /// Admitted before its peer was recorded.
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4(address) => write!(f, "{address}"),
            Self::V6Port(port) => write!(f, "[ipv6]:{port}"),
            Self::Unknown => f.write_str("unknown peer"),
        }
    }
}

impl PeerTable {
    /// A table for a registry of `max` slots.
    pub fn new(max: usize) -> Self {
        Self {
            slots: (0..max).map(|_| PeerSlot::default()).collect(),
        }
    }

    /// Record who holds `id` from `admitted_ms`.
    pub fn admitted(&self, id: ConnId, peer: SocketAddr, admitted_ms: u64) {
        let Some(slot) = self.slots.get(id.index() as usize) else {
            return;
        };
        let packed = match peer.ip() {
            IpAddr::V4(address) => {
                IPV4 | (u64::from(u32::from(address)) << 16) | u64::from(peer.port())
            }
            IpAddr::V6(_) => u64::from(peer.port()),
        };
        slot.peer.store(packed, SeqCst);
        slot.admitted_ms.store(admitted_ms, SeqCst);
        slot.occupancy
            .store(WRITTEN | u64::from(id.generation()), SeqCst);
    }

    /// Every connection `registry` holds open now, with its peer where recorded.
    pub fn open_connections(&self, registry: &Registry) -> Vec<OpenConnection> {
        registry
            .occupied()
            .into_iter()
            .map(|occupant| {
                let recorded = self.slots.get(occupant.id.index() as usize).filter(|slot| {
                    slot.occupancy.load(SeqCst) == WRITTEN | u64::from(occupant.id.generation())
                });
                let (peer, admitted_ms) = recorded.map_or((Peer::Unknown, None), |slot| {
                    (
                        unpack(slot.peer.load(SeqCst)),
                        Some(slot.admitted_ms.load(SeqCst)),
                    )
                });
                OpenConnection {
                    id: occupant.id,
                    peer,
                    admitted_ms,
                    phase: occupant.phase,
                    last_activity_ms: occupant.last_activity_ms,
                }
            })
            .collect()
    }
}

fn unpack(packed: u64) -> Peer {
    let port = packed as u16;
    if packed & IPV4 == 0 {
        return Peer::V6Port(port);
    }
    let address = Ipv4Addr::from(((packed >> 16) & 0xffff_ffff) as u32);
    Peer::V4(SocketAddr::new(IpAddr::V4(address), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_open_connection_and_forgets_released_ones() {
        let registry = Registry::new(4);
        let table = PeerTable::new(4);
        let first = registry.try_admit(100).unwrap();
        table.admitted(first.id(), "10.0.0.7:40001".parse().unwrap(), 100);
        let second = registry.try_admit(200).unwrap();
        table.admitted(second.id(), "[::1]:40002".parse().unwrap(), 200);
        assert!(second.activate());
        let open = table.open_connections(&registry);
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].peer.to_string(), "10.0.0.7:40001");
        assert_eq!(open[0].admitted_ms, Some(100));
        assert_eq!(open[0].phase, Phase::Accepted);
        assert_eq!(open[1].peer, Peer::V6Port(40002));
        assert_eq!(open[1].phase, Phase::Active);
        drop(first);
        let third = registry.try_admit(300).unwrap();
        // The reused slot's new occupant has no peer recorded yet: not the old one's.
        let open = table.open_connections(&registry);
        let reused = open.iter().find(|conn| conn.id == third.id()).unwrap();
        assert_eq!(reused.peer, Peer::Unknown);
        assert_eq!(reused.admitted_ms, None);
    }
}
