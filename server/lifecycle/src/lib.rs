//! Connection registry and lifecycle state machine for the relay.
//!
//! This crate owns the answer to "how many connections are open, and who may close one".
//! It deliberately depends on nothing but `std` (or `loom` under `--cfg loom`), so the
//! loom models in `loom-tests/` can explore every interleaving of it.
//!
//! # Model
//! The registry is a fixed slab of `max` slots. Admitting a connection reserves capacity
//! with one atomic read-modify-write on the open counter (never check-then-act) and hands
//! out a [`ConnOwner`]: the owner handle *is* the `max_connections` permit and releases it
//! exactly once, on `Drop`. A [`ConnId`] is a copyable, possibly stale reference
//! (slot index + generation) that anyone may hold: reapers, kickers, shutdown.
//!
//! ```text
//!   Free --admit--> Accepted --activate--> Active --request_close--> Draining(reason)
//!    ^                 |                                                  |
//!    +----------- owner dropped (generation + 1) <------------------------+
//! ```
//!
//! Anyone may *request* a close; only the owner task closes its socket and frees the slot.
//! A request through a stale [`ConnId`] (its generation no longer matches) is refused, so a
//! recycled slot's new occupant can never be closed by a message meant for the old one.
//! Every write to a slot's state word is an atomic read-modify-write (plain stores racing a
//! CAS are both a real bug and a source of loom false positives).

pub mod mailbox;
mod sync;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering::SeqCst};

/// Why a connection is being closed. Recorded in the slot's state word and reported to the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CloseReason {
    /// No bytes moved for longer than the idle timeout.
    Idle = 1,
    /// A broadcaster found the consumer too slow and asked it to leave.
    Kicked = 2,
    /// Capacity pressure: an older connection was chosen to make room.
    Evicted = 3,
    /// The relay is shutting down gracefully.
    Shutdown = 4,
}

impl CloseReason {
    /// All reasons, in declaration order (useful for metrics label sets).
    pub const ALL: [CloseReason; 4] = [Self::Idle, Self::Kicked, Self::Evicted, Self::Shutdown];

    /// Stable lowercase name, used for metric labels and trace records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Kicked => "kicked",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| *reason as u8 == bits)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a slot is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Unoccupied; waiting in the free list.
    Free,
    /// Admitted, not yet serving (e.g. handshake in progress).
    Accepted,
    /// Serving requests.
    Active,
    /// A close was requested; the owner is finishing and will drop its handle.
    Draining(CloseReason),
}

/// Why the registry refused to admit a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// `max` connections are already open.
    AtCapacity,
    /// The registry is shutting down; no new connections are admitted.
    ShuttingDown,
}

impl fmt::Display for AdmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtCapacity => f.write_str("connection limit reached"),
            Self::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

impl std::error::Error for AdmitError {}

/// Outcome of [`Registry::request_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseRequest {
    /// This call moved the connection to `Draining`; the owner has been woken.
    Requested,
    /// Someone else already requested a close; nothing changed.
    AlreadyClosing,
    /// The id refers to a previous occupant of the slot; nothing changed.
    Stale,
}

/// A copyable reference to one occupancy of one slot. May outlive the connection (then stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// Slot index (stable while the connection lives; reused afterwards).
    pub fn index(self) -> u32 {
        self.index
    }

    /// Occupancy generation of the slot; distinguishes successive occupants.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// Counters describing the registry since it was created. Each is read atomically, one
/// by one; [`Registry::stats`] reads again until admitted = released + open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Configured maximum of simultaneously open connections.
    pub max: usize,
    /// Connections open right now (owners not yet dropped).
    pub open: usize,
    /// Highest `open` ever observed at admission time.
    pub high_water: usize,
    /// Admissions granted.
    pub admitted_total: u64,
    /// Owners dropped (each admission is released exactly once).
    pub released_total: u64,
    /// Admissions refused because the registry was full.
    pub refused_at_capacity_total: u64,
    /// Admissions refused because the registry was shutting down.
    pub refused_shutting_down_total: u64,
}

/// One occupied slot, as [`Registry::occupied`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupant {
    /// The occupancy.
    pub id: ConnId,
    /// Its phase (never `Free`).
    pub phase: Phase,
    /// Its last activity stamp (caller's clock, ms).
    pub last_activity_ms: u64,
}

/// How many times [`Registry::stats`] reads the counters looking for a balanced reading.
#[cfg(not(any(loom, feature = "shuttle")))]
pub const STATS_READ_ATTEMPTS: usize = 1_000;
/// Under the model checkers `stats` is read only after a model's threads are joined: one
/// reading, so a model that breaks the balance fails its assertion at once instead of
/// spending the checker's branch budget on re-reads.
#[cfg(any(loom, feature = "shuttle"))]
pub const STATS_READ_ATTEMPTS: usize = 1;

// State word layout: generation (bits 32..64) | phase (bits 8..16) | reason (bits 0..8).
const PHASE_FREE: u64 = 0;
const PHASE_ACCEPTED: u64 = 1;
const PHASE_ACTIVE: u64 = 2;
const PHASE_DRAINING: u64 = 3;

fn pack(generation: u32, phase: u64, reason: u8) -> u64 {
    (u64::from(generation) << 32) | (phase << 8) | u64::from(reason)
}

fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn phase_bits(word: u64) -> u64 {
    (word >> 8) & 0xff
}

fn phase_of(word: u64) -> Phase {
    match phase_bits(word) {
        PHASE_FREE => Phase::Free,
        PHASE_ACCEPTED => Phase::Accepted,
        PHASE_ACTIVE => Phase::Active,
        PHASE_DRAINING => Phase::Draining(
            CloseReason::from_bits(word as u8).expect("draining slot always records a reason"),
        ),
        other => unreachable!("corrupt slot phase {other}"),
    }
}

struct Slot {
    /// Generation, phase and close reason, always updated by read-modify-write.
    state: AtomicU64,
    /// Last time (caller's clock, ms) the owner saw bytes move; read by the idle reaper.
    last_activity_ms: AtomicU64,
    /// The owner's waker while it waits for a close request.
    close_waker: Mutex<Option<Waker>>,
}

/// The fixed-capacity connection registry. Shared through an `Arc`.
pub struct Registry {
    slots: Box<[Slot]>,
    /// Indices of free slots. Invariant: `free.len() >= max - open` at every instant,
    /// because release pushes the index *before* decrementing `open`.
    free: Mutex<Vec<u32>>,
    open: AtomicUsize,
    high_water: AtomicUsize,
    shutting_down: AtomicBool,
    admitted_total: AtomicU64,
    released_total: AtomicU64,
    refused_at_capacity_total: AtomicU64,
    refused_shutting_down_total: AtomicU64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Registry {
    /// A registry admitting at most `max` simultaneous connections.
    pub fn new(max: usize) -> Arc<Self> {
        let max_u32 = u32::try_from(max).expect("max connections fits in u32");
        let slots = (0..max)
            .map(|_| Slot {
                state: AtomicU64::new(pack(0, PHASE_FREE, 0)),
                last_activity_ms: AtomicU64::new(0),
                close_waker: Mutex::new(None),
            })
            .collect();
        Arc::new(Self {
            slots,
            // Popped from the end: hand out low indices first (purely cosmetic, but stable).
            free: Mutex::new((0..max_u32).rev().collect()),
            open: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            admitted_total: AtomicU64::new(0),
            released_total: AtomicU64::new(0),
            refused_at_capacity_total: AtomicU64::new(0),
            refused_shutting_down_total: AtomicU64::new(0),
        })
    }

    /// Configured capacity.
    pub fn max(&self) -> usize {
        self.slots.len()
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Whether [`Registry::begin_shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(SeqCst)
    }

    /// A snapshot of the counters.
    ///
    /// The reading balances (`admitted_total = released_total + open`) whenever the
    /// registry does: an admission or release half-done on another thread (`open` moves
    /// before or after its total) is waited out by reading again, up to
    /// [`STATS_READ_ATTEMPTS`] times. A registry that never balances — an admission
    /// released twice or never — is returned as read, for the caller to see.
    pub fn stats(&self) -> RegistryStats {
        let balanced = |reading: &RegistryStats| {
            reading.admitted_total == reading.released_total + reading.open as u64
        };
        let mut reading = self.read_stats();
        let mut readings = 1;
        while readings < STATS_READ_ATTEMPTS && !balanced(&reading) {
            sync::yield_now();
            reading = self.read_stats();
            readings += 1;
        }
        reading
    }

    fn read_stats(&self) -> RegistryStats {
        RegistryStats {
            max: self.max(),
            open: self.open(),
            high_water: self.high_water.load(SeqCst),
            admitted_total: self.admitted_total.load(SeqCst),
            released_total: self.released_total.load(SeqCst),
            refused_at_capacity_total: self.refused_at_capacity_total.load(SeqCst),
            refused_shutting_down_total: self.refused_shutting_down_total.load(SeqCst),
        }
    }

    /// Admit a connection if capacity allows and the registry is not shutting down.
    ///
    /// `now_ms` seeds the slot's activity clock for the idle reaper.
    pub fn try_admit(self: &Arc<Self>, now_ms: u64) -> Result<ConnOwner, AdmitError> {
        if self.is_shutting_down() {
            self.refused_shutting_down_total.fetch_add(1, SeqCst);
            return Err(AdmitError::ShuttingDown);
        }
        let max = self.max();
        let reserved = self
            .open
            .fetch_update(SeqCst, SeqCst, |open| (open < max).then_some(open + 1));
        let Ok(previous) = reserved else {
            self.refused_at_capacity_total.fetch_add(1, SeqCst);
            return Err(AdmitError::AtCapacity);
        };
        self.high_water.fetch_max(previous + 1, SeqCst);
        let index = self
            .free
            .lock()
            .expect("registry free list poisoned")
            .pop()
            .expect("a capacity reservation guarantees a free slot");
        let slot = &self.slots[index as usize];
        slot.last_activity_ms.fetch_max(now_ms, SeqCst);
        let previous_word = slot
            .state
            .fetch_update(SeqCst, SeqCst, |word| {
                debug_assert_eq!(
                    phase_bits(word),
                    PHASE_FREE,
                    "free list held an occupied slot"
                );
                Some(pack(generation_of(word), PHASE_ACCEPTED, 0))
            })
            .expect("closure always returns Some");
        self.admitted_total.fetch_add(1, SeqCst);
        let owner = ConnOwner {
            registry: Arc::clone(self),
            id: ConnId {
                index,
                generation: generation_of(previous_word),
            },
        };
        // Shutdown may have begun between the check above and now; make sure this
        // connection sees it rather than slipping past `begin_shutdown`'s sweep. This
        // re-check and `begin_shutdown`'s flag write are both read-modify-writes of the flag,
        // so they are totally ordered: either the sweep comes after this slot turned
        // `Accepted` and requests its close, or this re-check sees the flag. (With a plain
        // load here, both sides could miss each other's write — the store-buffering shape —
        // under any ordering weaker than SeqCst, which is how loom checks it.)
        if self.shutting_down.fetch_or(false, SeqCst) {
            self.request_close(owner.id, CloseReason::Shutdown);
        }
        Ok(owner)
    }

    /// Ask the owner of `id` to close, for `reason`. Never closes anything itself.
    pub fn request_close(&self, id: ConnId, reason: CloseReason) -> CloseRequest {
        let Some(slot) = self.slots.get(id.index as usize) else {
            return CloseRequest::Stale;
        };
        let mut outcome = CloseRequest::Stale;
        let _ = slot.state.fetch_update(SeqCst, SeqCst, |word| {
            if generation_of(word) != id.generation {
                outcome = CloseRequest::Stale;
                return None;
            }
            match phase_bits(word) {
                PHASE_ACCEPTED | PHASE_ACTIVE => {
                    outcome = CloseRequest::Requested;
                    Some(pack(id.generation, PHASE_DRAINING, reason as u8))
                }
                PHASE_DRAINING => {
                    outcome = CloseRequest::AlreadyClosing;
                    None
                }
                _ => {
                    outcome = CloseRequest::Stale;
                    None
                }
            }
        });
        if outcome == CloseRequest::Requested {
            let waker = slot.close_waker.lock().expect("slot waker poisoned").take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        outcome
    }

    /// Stop admitting and request every open connection to close. Returns how many requests took effect.
    pub fn begin_shutdown(&self) -> usize {
        // A read-modify-write, not a store: see the re-check at the end of `try_admit`.
        self.shutting_down.swap(true, SeqCst);
        self.request_close_where(CloseReason::Shutdown, |_| true)
    }

    /// Request close of every connection whose last activity is `idle_ms` or more before `now_ms`.
    /// Returns how many requests took effect.
    pub fn reap_idle(&self, now_ms: u64, idle_ms: u64) -> usize {
        self.request_close_where(CloseReason::Idle, |slot| {
            now_ms.saturating_sub(slot.last_activity_ms.load(SeqCst)) >= idle_ms
        })
    }

    /// Every occupied slot now: its id, phase and last activity (read slot by slot, so a
    /// connection admitted or released meanwhile may or may not appear). For diagnostics:
    /// naming the connections a leak left open.
    pub fn occupied(&self) -> Vec<Occupant> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let word = slot.state.load(SeqCst);
                let phase = phase_of(word);
                (phase != Phase::Free).then(|| Occupant {
                    id: ConnId {
                        index: index as u32,
                        generation: generation_of(word),
                    },
                    phase,
                    last_activity_ms: slot.last_activity_ms.load(SeqCst),
                })
            })
            .collect()
    }

    /// The current phase of `id`'s slot, or `None` if `id` is stale.
    pub fn phase(&self, id: ConnId) -> Option<Phase> {
        let word = self.slots.get(id.index as usize)?.state.load(SeqCst);
        (generation_of(word) == id.generation).then(|| phase_of(word))
    }

    fn request_close_where(&self, reason: CloseReason, select: impl Fn(&Slot) -> bool) -> usize {
        let mut requested = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let word = slot.state.load(SeqCst);
            if !matches!(phase_bits(word), PHASE_ACCEPTED | PHASE_ACTIVE) || !select(slot) {
                continue;
            }
            let id = ConnId {
                index: index as u32,
                generation: generation_of(word),
            };
            if self.request_close(id, reason) == CloseRequest::Requested {
                requested += 1;
            }
        }
        requested
    }

    fn release(&self, id: ConnId) {
        let slot = &self.slots[id.index as usize];
        slot.close_waker.lock().expect("slot waker poisoned").take();
        slot.state
            .fetch_update(SeqCst, SeqCst, |word| {
                assert_eq!(generation_of(word), id.generation, "slot released twice");
                Some(pack(id.generation.wrapping_add(1), PHASE_FREE, 0))
            })
            .expect("closure always returns Some");
        // Push before decrementing `open`: keeps `free.len() >= max - open`.
        self.free
            .lock()
            .expect("registry free list poisoned")
            .push(id.index);
        self.released_total.fetch_add(1, SeqCst);
        self.open.fetch_sub(1, SeqCst);
    }
}

/// The owner of one admitted connection: the `max_connections` permit, released on `Drop`.
///
/// Not `Clone`: there is exactly one owner, so the release happens exactly once.
pub struct ConnOwner {
    registry: Arc<Registry>,
    id: ConnId,
}

impl fmt::Debug for ConnOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnOwner").field("id", &self.id).finish()
    }
}

impl ConnOwner {
    /// The copyable id others use to request a close.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The registry this connection belongs to.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Move `Accepted → Active`. Returns `false` if a close was already requested
    /// (the connection must then drain instead of serving).
    pub fn activate(&self) -> bool {
        let slot = self.slot();
        slot.state
            .fetch_update(SeqCst, SeqCst, |word| {
                (phase_bits(word) == PHASE_ACCEPTED)
                    .then(|| pack(self.id.generation, PHASE_ACTIVE, 0))
            })
            .is_ok()
    }

    /// Record that bytes moved at `now_ms` (postpones the idle reaper).
    pub fn touch(&self, now_ms: u64) {
        self.slot().last_activity_ms.fetch_max(now_ms, SeqCst);
    }

    /// The current phase of this connection.
    pub fn phase(&self) -> Phase {
        phase_of(self.slot().state.load(SeqCst))
    }

    /// The reason, if someone has requested this connection to close.
    pub fn close_requested(&self) -> Option<CloseReason> {
        match self.phase() {
            Phase::Draining(reason) => Some(reason),
            _ => None,
        }
    }

    /// Resolves when a close is requested. Safe against lost wakeups: the waker is stored
    /// before the state is re-checked, and requesters change the state before taking it.
    pub fn close_request(&self) -> CloseRequested<'_> {
        CloseRequested { owner: self }
    }

    fn slot(&self) -> &Slot {
        &self.registry.slots[self.id.index as usize]
    }
}

impl Drop for ConnOwner {
    fn drop(&mut self) {
        self.registry.release(self.id);
    }
}

/// Future returned by [`ConnOwner::close_request`].
#[derive(Debug)]
pub struct CloseRequested<'a> {
    owner: &'a ConnOwner,
}

impl Future for CloseRequested<'_> {
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(reason) = self.owner.close_requested() {
            return Poll::Ready(reason);
        }
        *self
            .owner
            .slot()
            .close_waker
            .lock()
            .expect("slot waker poisoned") = Some(cx.waker().clone());
        match self.owner.close_requested() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
