//! Reachability probes ("sometimes" assertions): named markers on the relay's code paths
//! that matter most when they are rare — admission at capacity, a host turning dormant, a
//! commit retried. A path no test ever reaches is untested, whatever the oracles say, so the
//! wind tunnel counts how often each marker is passed and scenarios declare (`reach = […]`)
//! which ones their seeds must reach.
//!
//! [`reached`] is a constant no-op outside simulation. Under madsim it adds one to a
//! per-thread counter (one simulated world per thread; no allocation, no lock), read back by
//! the world at the end of a run with [`counts`].

/// A marked code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probe {
    /// A connection was refused because `max_connections` were open.
    AdmissionAtCapacity,
    /// The refusal lane was full too: a connection was closed unanswered (or left to the
    /// probe reserve).
    RefusalLaneFull,
    /// A connection was refused because its address held `max_connections_per_ip`.
    PerIpLimit,
    /// A connection was taken on the reserved probe budget (the refusal lane had no room).
    ProbeReserve,
    /// The idle reaper asked at least one silent connection to close.
    IdleReap,
    /// A handler outlived `handler_timeout_ms` and was answered 504.
    HandlerTimeout,
    /// A handler panicked and was answered 500.
    HandlerPanic,
    /// The memory breaker opened (new work shed).
    BreakerOpen,
    /// The memory breaker closed again.
    BreakerClose,
    /// A consumer was kicked to fit the memory budget.
    MemoryKick,
    /// A consumer was kicked (queue full or memory budget).
    ConsumerKick,
    /// A consumer sent nothing for `pong_deadline_ms` and was closed.
    PongTimeout,
    /// A consumer registered for live events while still behind the head: the cutover
    /// pages were read with live events queueing behind them.
    CutoverCatchUp,
    /// A consumer's cursor pointed at events retention had removed.
    OutdatedCursor,
    /// A host failed `dormant_after_failures` times in a row and turned dormant.
    UpstreamDormant,
    /// Reconciliation dialled a dormant host again.
    DormantRetry,
    /// Reconciliation respawned a missing worker for an active host.
    ReconcileRespawn,
    /// A worker subscribed from a cursor above 0 (resuming, not starting).
    ResumeFromCursor,
    /// A host was quarantined.
    HostQuarantined,
    /// A commit failed for a transient reason and was retried.
    CommitRetry,
    /// An event the log refused for what it carries was rejected.
    EventRejected,
    /// Retention deleted a full batch and went on with the next one.
    RetentionBatchBoundary,
}

impl Probe {
    /// Every probe, in declaration order.
    pub const ALL: [Probe; 22] = [
        Self::AdmissionAtCapacity,
        Self::RefusalLaneFull,
        Self::PerIpLimit,
        Self::ProbeReserve,
        Self::IdleReap,
        Self::HandlerTimeout,
        Self::HandlerPanic,
        Self::BreakerOpen,
        Self::BreakerClose,
        Self::MemoryKick,
        Self::ConsumerKick,
        Self::PongTimeout,
        Self::CutoverCatchUp,
        Self::OutdatedCursor,
        Self::UpstreamDormant,
        Self::DormantRetry,
        Self::ReconcileRespawn,
        Self::ResumeFromCursor,
        Self::HostQuarantined,
        Self::CommitRetry,
        Self::EventRejected,
        Self::RetentionBatchBoundary,
    ];

    /// The name scenarios use (`reach = ["upstream.dormant"]`).
    pub fn name(self) -> &'static str {
        match self {
            Self::AdmissionAtCapacity => "admission.at_capacity",
            Self::RefusalLaneFull => "admission.refusal_lane_full",
            Self::PerIpLimit => "admission.per_ip_limit",
            Self::ProbeReserve => "admission.probe_reserve",
            Self::IdleReap => "http.idle_reap",
            Self::HandlerTimeout => "http.handler_timeout",
            Self::HandlerPanic => "http.handler_panic",
            Self::BreakerOpen => "memory.breaker_open",
            Self::BreakerClose => "memory.breaker_close",
            Self::MemoryKick => "memory.kick",
            Self::ConsumerKick => "fanout.kick",
            Self::PongTimeout => "fanout.pong_timeout",
            Self::CutoverCatchUp => "fanout.cutover_catch_up",
            Self::OutdatedCursor => "fanout.outdated_cursor",
            Self::UpstreamDormant => "upstream.dormant",
            Self::DormantRetry => "upstream.dormant_retry",
            Self::ReconcileRespawn => "upstream.reconcile_respawn",
            Self::ResumeFromCursor => "upstream.resume_from_cursor",
            Self::HostQuarantined => "upstream.quarantined",
            Self::CommitRetry => "events.commit_retry",
            Self::EventRejected => "events.rejected",
            Self::RetentionBatchBoundary => "events.retention_batch_boundary",
        }
    }

    /// The probe called `name`, if there is one.
    pub fn named(name: &str) -> Option<Probe> {
        Self::ALL.into_iter().find(|probe| probe.name() == name)
    }
}

#[cfg(madsim)]
thread_local! {
    static COUNTS: [std::cell::Cell<u64>; Probe::ALL.len()] =
        const { [const { std::cell::Cell::new(0) }; Probe::ALL.len()] };
}

/// Mark `probe` as reached. A no-op outside simulation.
#[inline(always)]
pub fn reached(probe: Probe) {
    #[cfg(madsim)]
    COUNTS.with(|counts| {
        let count = &counts[probe as usize];
        count.set(count.get() + 1);
    });
    #[cfg(not(madsim))]
    let _ = probe;
}

/// How often each probe was reached on this simulation thread, in [`Probe::ALL`] order.
#[cfg(madsim)]
pub fn counts() -> [u64; Probe::ALL.len()] {
    COUNTS.with(|counts| std::array::from_fn(|index| counts[index].get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_again() {
        let names: std::collections::BTreeSet<&str> =
            Probe::ALL.iter().map(|probe| probe.name()).collect();
        assert_eq!(names.len(), Probe::ALL.len());
        for probe in Probe::ALL {
            assert_eq!(Probe::named(probe.name()), Some(probe));
            assert_eq!(
                Probe::ALL[probe as usize],
                probe,
                "ALL is in declaration order"
            );
        }
        assert_eq!(Probe::named("upstream.nowhere"), None);
    }
}
