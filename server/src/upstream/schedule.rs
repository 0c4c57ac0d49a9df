//! Timing decisions for upstream workers: startup jitter, retry backoff, and each host's
//! event-rate allowance.
//!
//! Jitter and backoff derive their spread from a hash of the hostname (FNV-1a), never from a random
//! source: the same host always gets the same startup offset and the same backoff sequence,
//! in production and in the tunnel, whatever the seed. That keeps a cold start's shape
//! reproducible and spreads 2,800 hosts evenly without coordination.

use std::time::Duration;

use serde::Serialize;

use super::UpstreamConfig;

/// FNV-1a over `parts`, each followed by a separator byte.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Delay before a host's first connection after a restart: uniform over
/// `[0, startup_jitter_ms)` by hostname hash.
pub fn startup_delay(config: &UpstreamConfig, hostname: &str) -> Duration {
    if config.startup_jitter_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(hash(&[hostname.as_bytes()]) % config.startup_jitter_ms)
}

/// Delay before retry number `failures` (1-based): `base · 2^(failures-1)`, capped, then
/// shifted by up to ±`backoff_jitter_pct` percent by hostname and attempt.
pub fn backoff(config: &UpstreamConfig, hostname: &str, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(40);
    let raw_ms = config
        .backoff_base_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_cap_ms);
    let spread_ms = raw_ms * u64::from(config.backoff_jitter_pct) / 100;
    if spread_ms == 0 {
        return Duration::from_millis(raw_ms);
    }
    let offset = hash(&[hostname.as_bytes(), &failures.to_le_bytes()]) % (2 * spread_ms + 1);
    Duration::from_millis(
        (raw_ms + offset)
            .saturating_sub(spread_ms)
            .min(config.backoff_cap_ms),
    )
}

/// One host's event-rate allowance, a token bucket: `host_events_per_second` tokens a
/// second, at most `host_events_burst` saved up; every event takes one. Kept across a
/// host's sessions, so reconnecting does not refill it. Integer arithmetic in microtokens.
#[derive(Debug)]
pub struct EventAllowance {
    per_second: u64,
    burst_microtokens: u64,
    microtokens: u64,
    refilled_at_us: u64,
}

const MICRO: u64 = 1_000_000;

/// One host's event rate: events a second on average (0: no limit) and how many may come
/// at once above it (the bucket's depth). The config's `upstream.host_events_per_second`
/// and `host_events_burst` by default; the admin API may set another for one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EventLimit {
    /// Events a second on average; 0: no limit.
    pub events_per_second: u32,
    /// The bucket's depth, events.
    pub events_burst: u32,
}

impl EventLimit {
    /// The configured limit every host has unless the admin API set its own.
    pub fn of(config: &UpstreamConfig) -> Self {
        Self {
            events_per_second: config.host_events_per_second,
            events_burst: config.host_events_burst,
        }
    }

    /// The rule `upstream.check` applies to the configured limit, for one host's.
    pub fn check(self) -> Result<Self, String> {
        if self.events_per_second > 0 && self.events_burst == 0 {
            return Err(
                "events_burst must be at least 1 while events_per_second limits the host".into(),
            );
        }
        Ok(self)
    }
}

impl EventAllowance {
    /// A full bucket for `config`'s limits.
    pub fn new(config: &UpstreamConfig) -> Self {
        let burst_microtokens = u64::from(config.host_events_burst) * MICRO;
        Self {
            per_second: u64::from(config.host_events_per_second),
            burst_microtokens,
            microtokens: burst_microtokens,
            refilled_at_us: 0,
        }
    }

    /// Use `limit` from now on (no-op when it is the current one); tokens above the new
    /// depth are dropped.
    pub fn retune(&mut self, limit: EventLimit) {
        let per_second = u64::from(limit.events_per_second);
        let burst_microtokens = u64::from(limit.events_burst) * MICRO;
        if (per_second, burst_microtokens) != (self.per_second, self.burst_microtokens) {
            self.per_second = per_second;
            self.burst_microtokens = burst_microtokens;
            self.microtokens = self.microtokens.min(burst_microtokens);
        }
    }

    /// Take one event's token at `now_us` (any monotonic microsecond clock). Returns how
    /// long the host must wait first: zero when a token was there (or no limit is set);
    /// otherwise the token is already spent, so the caller waits and then sends.
    pub fn take(&mut self, now_us: u64) -> Duration {
        if self.per_second == 0 {
            return Duration::ZERO;
        }
        if now_us > self.refilled_at_us {
            let earned = (now_us - self.refilled_at_us).saturating_mul(self.per_second);
            self.microtokens = self
                .microtokens
                .saturating_add(earned)
                .min(self.burst_microtokens);
            self.refilled_at_us = now_us;
        }
        if self.microtokens >= MICRO {
            self.microtokens -= MICRO;
            return Duration::ZERO;
        }
        // Wait until the missing part has been earned: that refill pays for this event,
        // so the bucket is empty from then on (and `refilled_at_us` may lie ahead of now).
        let wait_us = (MICRO - self.microtokens).div_ceil(self.per_second);
        self.microtokens = 0;
        self.refilled_at_us += wait_us;
        Duration::from_micros(self.refilled_at_us - now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_lets_a_burst_through_then_paces_to_the_rate() {
        let config = UpstreamConfig {
            host_events_per_second: 10,
            host_events_burst: 3,
            ..UpstreamConfig::default()
        };
        let mut allowance = EventAllowance::new(&config);
        let waits: Vec<Duration> = (0..6).map(|_| allowance.take(1_000_000)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                ms(100),
                ms(200),
                ms(300)
            ],
            "three from the bucket, then one every 100 ms"
        );
        // After a quiet second the bucket is full again, never fuller than its depth.
        let later = 1_300_000 + 1_000_000;
        assert_eq!(allowance.take(later), Duration::ZERO);
        assert_eq!(allowance.take(later), Duration::ZERO);
        assert_eq!(allowance.take(later), Duration::ZERO);
        assert_eq!(allowance.take(later), ms(100));
    }

    #[test]
    fn no_rate_means_no_limit() {
        let config = UpstreamConfig {
            host_events_per_second: 0,
            ..UpstreamConfig::default()
        };
        let mut allowance = EventAllowance::new(&config);
        assert!((0..100_000).all(|_| allowance.take(0) == Duration::ZERO));
    }

    #[test]
    fn startup_delay_is_stable_and_within_the_window() {
        let config = UpstreamConfig::default();
        let a = startup_delay(&config, "pds-1.example");
        assert_eq!(a, startup_delay(&config, "pds-1.example"));
        assert!(a < Duration::from_millis(config.startup_jitter_ms));
        let spread: std::collections::BTreeSet<u64> = (0..2_800)
            .map(|i| startup_delay(&config, &format!("pds-{i}.example")).as_secs())
            .collect();
        assert_eq!(
            spread.len(),
            30,
            "2,800 hosts cover every second of a 30 s window"
        );
        let zero = UpstreamConfig {
            startup_jitter_ms: 0,
            ..config
        };
        assert_eq!(startup_delay(&zero, "pds-1.example"), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let config = UpstreamConfig {
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            backoff_jitter_pct: 20,
            ..UpstreamConfig::default()
        };
        for (failures, nominal_ms) in [(1, 1_000u64), (2, 2_000), (3, 4_000), (6, 32_000)] {
            let delay = backoff(&config, "h.example", failures).as_millis() as u64;
            assert!(
                delay >= nominal_ms * 8 / 10 && delay <= nominal_ms * 12 / 10,
                "failure {failures}: {delay} ms vs nominal {nominal_ms} ms"
            );
        }
        for failures in [7, 20, 1_000, u32::MAX] {
            assert!(backoff(&config, "h.example", failures) <= Duration::from_millis(60_000));
        }
    }

    #[test]
    fn a_retuned_allowance_paces_to_its_new_rate_and_drops_tokens_above_its_depth() {
        let config = UpstreamConfig {
            host_events_per_second: 10,
            host_events_burst: 5,
            ..UpstreamConfig::default()
        };
        let mut allowance = EventAllowance::new(&config);
        allowance.retune(EventLimit {
            events_per_second: 2,
            events_burst: 1,
        });
        assert_eq!(allowance.take(0), Duration::ZERO, "one token left of five");
        assert_eq!(
            allowance.take(0),
            Duration::from_millis(500),
            "then 2 a second"
        );
        allowance.retune(EventLimit {
            events_per_second: 0,
            events_burst: 0,
        });
        assert!(
            (0..1_000).all(|_| allowance.take(600_000).is_zero()),
            "no limit"
        );
        assert_eq!(
            EventLimit {
                events_per_second: 1,
                events_burst: 0
            }
            .check()
            .unwrap_err(),
            "events_burst must be at least 1 while events_per_second limits the host"
        );
    }
}
