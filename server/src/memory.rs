//! The memory guard: an account of the bytes the relay holds on behalf of its clients, and
//! the breaker that sheds load before that account outgrows the process.
//!
//! Every queue in the relay has a length bound (ingest, per-consumer mailboxes, refusal
//! lane, connections), but the product of the bounds is not a memory bound: a thousand
//! consumers each allowed a thousand queued frames is a gigabyte. The runtime-crash report
//! this answers: a leak grew for hours until the runtime died, and nothing shed load on the
//! way. So the bytes that grow with load — frames waiting in consumer mailboxes, counted
//! once per mailbox that holds them (frames are shared, so this errs high, never low) —
//! are reserved here when queued and released when delivered or discarded, and:
//! - at `shed_at_pct` of `budget_bytes` the breaker opens: requests that would add work
//!   (`subscribeRepos`, `/hosts` and the XRPC host routes) get `503 memory_pressure` with
//!   `Retry-After`, and `/_readyz` says not ready, while `/_healthz` keeps answering (the
//!   relay is shedding, not dead); it closes again at `resume_at_pct` (hysteresis);
//! - when a frame would take the account past `budget_bytes`, the broadcaster first kicks
//!   the consumers holding the most bytes, largest first, until it fits (they resume by
//!   cursor from the store, so nothing is lost). A kicked session discards its queue as
//!   soon as its task runs; until then the account can exceed the budget by at most the
//!   frames of one publish (one commit batch per consumer).
//!
//! Everything here is atomics: probes read the breaker without a lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::rt::probe::{self, Probe};

/// Memory budget settings: `[memory]` in the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes the relay may hold for consumers before it kicks the largest holders.
    pub budget_bytes: u64,
    /// Percent of the budget at which the breaker opens and new work is shed with 503.
    pub shed_at_pct: u8,
    /// Percent of the budget at which the breaker closes again.
    pub resume_at_pct: u8,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            budget_bytes: 256 * 1024 * 1024,
            shed_at_pct: 80,
            resume_at_pct: 60,
        }
    }
}

impl MemoryConfig {
    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.budget_bytes == 0 {
            return Err("memory.budget_bytes must be at least 1".into());
        }
        if self.resume_at_pct >= self.shed_at_pct || self.shed_at_pct > 100 {
            return Err(format!(
                "memory: expected resume_at_pct ({}) < shed_at_pct ({}) <= 100",
                self.resume_at_pct, self.shed_at_pct
            ));
        }
        Ok(())
    }
}

/// The account's levels and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held now.
    pub held_bytes: u64,
    /// Most bytes ever held at once.
    pub high_water_bytes: u64,
    /// The configured budget.
    pub budget_bytes: u64,
    /// Whether the breaker is open (new work is shed).
    pub shedding: bool,
    /// Requests answered 503 because the breaker was open.
    pub shed_total: u64,
    /// Consumers kicked because the account reached the budget.
    pub kicked_total: u64,
}

/// The relay's memory account and breaker.
#[derive(Debug)]
pub struct MemoryGuard {
    budget: u64,
    shed_at: u64,
    resume_at: u64,
    held: AtomicU64,
    high_water: AtomicU64,
    shedding: AtomicBool,
    shed_total: AtomicU64,
    kicked_total: AtomicU64,
}

impl MemoryGuard {
    /// A guard with nothing held.
    pub fn new(config: &MemoryConfig) -> Self {
        let level = |pct: u8| config.budget_bytes / 100 * u64::from(pct);
        Self {
            budget: config.budget_bytes,
            shed_at: level(config.shed_at_pct),
            resume_at: level(config.resume_at_pct),
            held: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            shedding: AtomicBool::new(false),
            shed_total: AtomicU64::new(0),
            kicked_total: AtomicU64::new(0),
        }
    }

    /// Account `bytes` more.
    pub fn reserve(&self, bytes: u64) {
        let held = self.held.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.high_water.fetch_max(held, Ordering::SeqCst);
        if held >= self.shed_at && !self.shedding.swap(true, Ordering::SeqCst) {
            probe::reached(Probe::BreakerOpen);
        }
    }

    /// Account `bytes` fewer (delivered or discarded).
    pub fn release(&self, bytes: u64) {
        let before = self.held.fetch_sub(bytes, Ordering::SeqCst);
        debug_assert!(before >= bytes, "released {bytes} bytes of {before} held");
        if before.saturating_sub(bytes) <= self.resume_at
            && self.shedding.swap(false, Ordering::SeqCst)
        {
            probe::reached(Probe::BreakerClose);
        }
    }

    /// The configured budget, bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether new work must be shed. Counts the shed when it must.
    pub fn shed(&self) -> bool {
        let shedding = self.shedding.load(Ordering::SeqCst);
        if shedding {
            self.shed_total.fetch_add(1, Ordering::SeqCst);
        }
        shedding
    }

    /// Whether the breaker is open (no counting: for readiness).
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::SeqCst)
    }

    /// Count a consumer kicked to get back under the budget.
    pub fn kicked(&self) {
        self.kicked_total.fetch_add(1, Ordering::SeqCst);
    }

    /// Levels and counters.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            held_bytes: self.held.load(Ordering::SeqCst),
            high_water_bytes: self.high_water.load(Ordering::SeqCst),
            budget_bytes: self.budget,
            shedding: self.shedding.load(Ordering::SeqCst),
            shed_total: self.shed_total.load(Ordering::SeqCst),
            kicked_total: self.kicked_total.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> MemoryGuard {
        MemoryGuard::new(&MemoryConfig {
            budget_bytes: 1000,
            shed_at_pct: 80,
            resume_at_pct: 60,
        })
    }

    #[test]
    fn the_breaker_opens_at_shed_level_and_closes_at_resume_level() {
        let memory = guard();
        memory.reserve(700);
        assert!(!memory.shed());
        memory.reserve(100);
        assert!(memory.shed(), "800 of 1000 is the shed level");
        memory.release(100);
        assert!(
            memory.shedding(),
            "700 is above the resume level: still open"
        );
        memory.release(100);
        assert!(!memory.shed(), "600 closes it");
        let stats = memory.stats();
        assert_eq!((stats.held_bytes, stats.high_water_bytes), (600, 800));
        assert_eq!(stats.shed_total, 1);
    }

    #[test]
    fn levels_must_be_ordered() {
        let mut config = MemoryConfig::default();
        assert!(config.check().is_ok());
        config.resume_at_pct = 90;
        assert!(config
            .check()
            .unwrap_err()
            .contains("resume_at_pct (90) < shed_at_pct (80)"));
    }
}
