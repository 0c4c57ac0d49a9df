//! Per-address shares: how many of a bounded resource (admitted connections, refusal-lane
//! places) one client address holds, so a single caller cannot take every slot; and
//! per-address counts within fixed windows of time ([`WindowedCounts`], the `requestCrawl`
//! rate limit), so a single caller cannot take every request either.
//!
//! Lock-free like the rest of the request path: a count-min sketch of two rows of atomic
//! counters, each address counted in one bucket per row (chosen by two different hashes)
//! and its holding read as the smaller of its two buckets. Two addresses share a reading
//! only if they collide in *both* rows, so the table errs only toward refusing an address
//! that shares both buckets with heavy ones, never toward letting one address past its
//! limit. An IPv6 address is counted by its /64 (what one subscriber is usually given).
//!
//! Taking a share is check-then-act, which is sound because only the accept loop takes
//! shares (one task); releases (a [`Share`] dropped on any task) only lower counts.
//! Windowed counts are taken on any request task, so they sit behind a mutex (held for a
//! few array reads and writes, never across an await).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

/// Buckets per row, at least; more for large capacities (four per unit of capacity).
const MIN_BUCKETS: usize = 64;
/// Buckets per row, at most (two rows of 4-byte counters: 512 KiB).
const MAX_BUCKETS: usize = 1 << 16;
/// Buckets per row of a [`WindowedCounts`] (two rows of 4-byte counters: 32 KiB).
const WINDOWED_BUCKETS: usize = 1 << 12;

/// The holdings of every client address in one resource, against one per-address limit.
#[derive(Debug)]
pub struct AddressShares {
    rows: [Box<[AtomicU32]>; 2],
    /// Most units one address may hold; 0 turns the limit off (nothing is counted).
    limit_per_address: usize,
}

/// One unit held by one address; gives it back when dropped.
#[derive(Debug)]
pub struct Share {
    held: Option<(Arc<AddressShares>, [usize; 2])>,
}

impl AddressShares {
    /// A table for a resource of `capacity` units, each address holding at most
    /// `limit_per_address` of them (0: no limit).
    pub fn new(capacity: usize, limit_per_address: usize) -> Arc<Self> {
        let buckets = capacity
            .saturating_mul(4)
            .clamp(MIN_BUCKETS, MAX_BUCKETS)
            .next_power_of_two();
        let row = || (0..buckets).map(|_| AtomicU32::new(0)).collect();
        Arc::new(Self {
            rows: [row(), row()],
            limit_per_address,
        })
    }

    /// One more unit for `address`, or `None` when it already holds its limit.
    pub fn try_take(self: &Arc<Self>, address: IpAddr) -> Option<Share> {
        if self.limit_per_address == 0 {
            return Some(Share { held: None });
        }
        let buckets = buckets(address, self.rows[0].len());
        if self.held_by_buckets(buckets) >= self.limit_per_address {
            return None;
        }
        for (row, bucket) in self.rows.iter().zip(buckets) {
            row[bucket].fetch_add(1, SeqCst);
        }
        Some(Share {
            held: Some((Arc::clone(self), buckets)),
        })
    }

    fn held_by_buckets(&self, buckets: [usize; 2]) -> usize {
        self.rows
            .iter()
            .zip(buckets)
            .map(|(row, bucket)| row[bucket].load(SeqCst) as usize)
            .min()
            .unwrap_or(0)
    }
}

/// `address`'s bucket in each of two rows of `row_len` (a power of two) buckets.
fn buckets(address: IpAddr, row_len: usize) -> [usize; 2] {
    let key = match address {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        // The /64 prefix, marked so it cannot equal an IPv4 key.
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64 ^ (1 << 63),
    };
    let mask = row_len - 1;
    [
        mix(key ^ 0x9e37_79b9_7f4a_7c15) as usize & mask,
        mix(key ^ 0xc2b2_ae3d_27d4_eb4f) as usize & mask,
    ]
}

/// How many times each client address did something in the current fixed window of time,
/// against one per-address limit per window: the same two-row sketch (fixed memory however
/// many addresses call), zeroed when a later window begins.
#[derive(Debug)]
pub struct WindowedCounts {
    /// Most counts one address may have per window; 0 turns the limit off.
    limit_per_address: u32,
    counts: Mutex<WindowRows>,
}

/// The sketch of one window.
#[derive(Debug)]
struct WindowRows {
    /// The window the rows count (an index chosen by the caller, e.g. `now / length`).
    window: u64,
    rows: [Box<[u32]>; 2],
}

impl WindowedCounts {
    /// Counts of at most `limit_per_address` per address and window (0: no limit).
    pub fn new(limit_per_address: u32) -> Self {
        let row = || vec![0; WINDOWED_BUCKETS].into_boxed_slice();
        Self {
            limit_per_address,
            counts: Mutex::new(WindowRows {
                window: 0,
                rows: [row(), row()],
            }),
        }
    }

    /// Count one more for `address` in window `window` (windows never go back), or `false`
    /// (nothing counted) when it already has its limit there.
    pub fn try_count(&self, address: IpAddr, window: u64) -> bool {
        if self.limit_per_address == 0 {
            return true;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if window > counts.window {
            counts.window = window;
            for row in &mut counts.rows {
                row.fill(0);
            }
        }
        let buckets = buckets(address, WINDOWED_BUCKETS);
        let held = counts
            .rows
            .iter()
            .zip(buckets)
            .map(|(row, bucket)| row[bucket])
            .min()
            .unwrap_or(0);
        if held >= self.limit_per_address {
            return false;
        }
        for (row, bucket) in counts.rows.iter_mut().zip(buckets) {
            row[bucket] = row[bucket].saturating_add(1);
        }
        true
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some((table, buckets)) = self.held.take() {
            for (row, bucket) in table.rows.iter().zip(buckets) {
                row[bucket].fetch_sub(1, SeqCst);
            }
        }
    }
}

/// The splitmix64 finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Units `address` holds now, as the table reads it.
    fn held_by(shares: &AddressShares, address: IpAddr) -> usize {
        shares.held_by_buckets(buckets(address, shares.rows[0].len()))
    }

    #[test]
    fn one_address_is_held_to_its_limit_and_others_are_not_affected() {
        let shares = AddressShares::new(16, 3);
        let greedy = ip("10.0.0.1");
        let held: Vec<Share> = (0..3).map(|_| shares.try_take(greedy).unwrap()).collect();
        assert!(
            shares.try_take(greedy).is_none(),
            "a fourth unit is refused"
        );
        assert_eq!(held_by(&shares, greedy), 3);
        for other in ["10.0.0.2", "192.168.1.9", "2001:db8::1"] {
            assert!(
                shares.try_take(ip(other)).is_some(),
                "{other} has its own share"
            );
        }
        drop(held);
        assert_eq!(held_by(&shares, greedy), 0, "dropped shares are given back");
        assert!(shares.try_take(greedy).is_some());
    }

    #[test]
    fn an_ipv6_address_is_counted_by_its_64_prefix() {
        let shares = AddressShares::new(16, 2);
        let _first = shares.try_take(ip("2001:db8:1:2::1")).unwrap();
        let _second = shares.try_take(ip("2001:db8:1:2::ffff")).unwrap();
        assert!(shares.try_take(ip("2001:db8:1:2:aaaa::7")).is_none());
        assert!(shares.try_take(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn a_zero_limit_counts_nothing_and_refuses_nothing() {
        let shares = AddressShares::new(4, 0);
        let held: Vec<Share> = (0..100)
            .map(|_| shares.try_take(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(held.len(), 100);
        assert_eq!(held_by(&shares, ip("10.0.0.1")), 0);
    }

    #[test]
    fn windowed_counts_refuse_past_the_limit_until_the_next_window() {
        let counts = WindowedCounts::new(3);
        let caller = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(counts.try_count(caller, 7));
        }
        assert!(
            !counts.try_count(caller, 7),
            "the fourth in window 7 is refused"
        );
        assert!(!counts.try_count(caller, 7), "and stays refused");
        assert!(
            counts.try_count(ip("10.0.0.2"), 7),
            "another address has its own count"
        );
        assert!(counts.try_count(ip("2001:db8::1"), 7));
        assert!(counts.try_count(caller, 8), "a new window starts from zero");
        for _ in 0..2 {
            assert!(counts.try_count(caller, 8));
        }
        assert!(!counts.try_count(caller, 8));
        assert!(
            !counts.try_count(caller, 7),
            "a late request for an old window is counted against the current one"
        );
    }

    #[test]
    fn windowed_counts_with_a_zero_limit_refuse_nothing() {
        let counts = WindowedCounts::new(0);
        assert!((0..1000).all(|_| counts.try_count(ip("10.0.0.1"), 0)));
    }
}
