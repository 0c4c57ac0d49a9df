//! The one fault player: every world's `[[faults]]` timeline, played through the
//! [`World`] trait. Each fault waits until it starts, switches on, records that it took
//! hold, waits out its length, switches off and records what it did ([`Event::Fault`]:
//! hosts cut or restarted, sends held back, failures injected, a relay stopped). Faults that hit upstream
//! hosts pick them here, by their [`HostSelector`]. Its world starts each fault as a task
//! of its own, so faults overlap as their windows do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use madsim::rand::seq::SliceRandom;
use relay::rt::fault::Fault;
use relay::rt::time::{now, sleep, sleep_until, Instant};

use super::World;
use crate::actors::rng::thread_rng;
use crate::actors::TraceSink;
use crate::scenario::{Between, FaultKind, FaultSpec, HostSelector, HostTable, Scenario};
use crate::trace::Event;

/// How often a power cut looks whether the dead relay has let go of its database.
const DISK_POLL_PERIOD: Duration = Duration::from_millis(10);

/// Plays a scenario's faults on one world.
pub struct FaultPlayer<W> {
    world: Arc<W>,
    sink: TraceSink,
    /// The world's start, as the timeline's clock reads it.
    start: Instant,
    /// `[network].latency_ms`, restored when a latency fault ends.
    network_latency_ms: Between<u64>,
    /// `upstreams.table`, whose metadata host selectors match.
    table: Option<HostTable>,
}

impl<W> Clone for FaultPlayer<W> {
    fn clone(&self) -> Self {
        Self {
            world: Arc::clone(&self.world),
            sink: self.sink.clone(),
            start: self.start,
            network_latency_ms: self.network_latency_ms,
            table: self.table.clone(),
        }
    }
}

impl<W: World> FaultPlayer<W> {
    /// A player of `scenario`'s faults on `world`, which started at `start`, recording into
    /// `sink`.
    pub fn new(world: Arc<W>, scenario: &Scenario, sink: TraceSink, start: Instant) -> Self {
        Self {
            world,
            sink,
            start,
            network_latency_ms: scenario.network.latency_ms,
            table: scenario
                .upstreams
                .as_ref()
                .and_then(|spec| spec.table.clone()),
        }
    }

    /// One task per entry of `faults` (the scenario's `[[faults]]`), in order, for the
    /// world to start. A task fails only when the world fails to stop or start the relay
    /// (real mode); a simulated world's never do.
    pub fn plays(
        &self,
        faults: &[FaultSpec],
    ) -> Vec<impl Future<Output = Result<(), String>> + Send + 'static> {
        faults
            .iter()
            .cloned()
            .enumerate()
            .map(|(index, fault)| {
                let player = self.clone();
                async move { player.play(index, fault).await }
            })
            .collect()
    }

    /// Play fault `index` of the timeline.
    async fn play(&self, index: usize, fault: FaultSpec) -> Result<(), String> {
        let FaultSpec {
            at_s,
            duration_s,
            kind,
        } = fault;
        let world = &*self.world;
        let length = Duration::from_secs(duration_s);
        let record = |hosts: usize, active: bool, effect: u64| {
            self.sink.record(
                "world",
                Event::Fault {
                    kind: kind.name().to_owned(),
                    index: index as u32,
                    hosts: hosts as u32,
                    active,
                    effect,
                },
            );
        };
        sleep_until(self.start + Duration::from_secs(at_s)).await;
        match kind {
            FaultKind::Partition { hosts_fraction } => {
                let cut = self.select(&HostSelector::Fraction(hosts_fraction));
                self.cut_off(&cut, length, record).await;
            }
            FaultKind::HostsDark { ref hosts } => {
                let cut = self.select(hosts);
                self.cut_off(&cut, length, record).await;
            }
            FaultKind::HostsLatency {
                ref hosts,
                extra_latency_ms,
            } => {
                let selected = self.select(hosts);
                let plans = world.upstream_plans();
                let delayed = || -> u64 {
                    selected
                        .iter()
                        .map(|&host| plans[host].link_delay.delayed())
                        .sum()
                };
                let delayed_before = delayed();
                for &host in &selected {
                    plans[host]
                        .link_delay
                        .set(Duration::from_millis(extra_latency_ms));
                }
                record(selected.len(), true, 0);
                sleep(length).await;
                for &host in &selected {
                    plans[host].link_delay.set(Duration::ZERO);
                }
                record(selected.len(), false, delayed() - delayed_before);
            }
            FaultKind::HostsRestart { ref hosts, rolling } => {
                let selected = self.select(hosts);
                let batch = rolling.map_or(selected.len(), |rolling| rolling.batch as usize);
                let every = Duration::from_secs(rolling.map_or(0, |rolling| rolling.every_s));
                record(selected.len(), true, 0);
                let first_down = now();
                for (number, hosts) in selected.chunks(batch.max(1)).enumerate() {
                    sleep_until(first_down + every * number as u32).await;
                    world.stop_hosts(hosts);
                    sleep(length).await;
                    world.start_hosts(hosts);
                }
                record(selected.len(), false, selected.len() as u64);
            }
            FaultKind::Clog => {
                world.clog_relay(true);
                record(0, true, 0);
                sleep(length).await;
                world.clog_relay(false);
                record(0, false, 1);
            }
            FaultKind::Latency { latency_ms } => {
                world.set_latency(latency_ms);
                record(0, true, 0);
                sleep(length).await;
                world.set_latency(self.network_latency_ms);
                record(0, false, 1);
            }
            FaultKind::KillRelay => {
                let was_up = world.relay_up().await;
                world.kill_relay().await?;
                record(0, true, 0);
                sleep(length).await;
                world.start_relay().await?;
                record(0, false, u64::from(was_up));
            }
            FaultKind::PowerLoss => {
                let was_up = world.relay_up().await;
                let image = world.cut_power();
                record(0, true, 0);
                // The dead incarnation lets go of its files (closing checkpoints and
                // removes the WAL) before the image is laid down over them.
                let back_at = now() + length;
                while image.still_open() && now() < back_at {
                    sleep(DISK_POLL_PERIOD).await;
                }
                assert!(
                    !image.still_open(),
                    "power_loss: the killed relay still held its database open after {duration_s} s"
                );
                image.restore().unwrap_or_else(|error| {
                    panic!("power_loss: cannot restore the database: {error}")
                });
                sleep_until(back_at).await;
                world.start_relay().await?;
                record(0, false, u64::from(was_up));
            }
            FaultKind::RestartRelay => {
                record(0, true, 0);
                world.stop_relay().await?;
                sleep(length).await;
                world.start_relay().await?;
                record(0, false, 1);
            }
            FaultKind::StoreFault { reads } => {
                let switches = [(Fault::StoreWrite, true), (Fault::StoreRead, reads)];
                self.fail_points(&switches, length, record).await;
            }
            FaultKind::StoreStall => {
                self.fail_points(&[(Fault::StoreStall, true)], length, record)
                    .await;
            }
            FaultKind::HandlerPanic => {
                self.fail_points(&[(Fault::HandlerPanic, true)], length, record)
                    .await;
            }
            FaultKind::HandlerStall => {
                self.fail_points(&[(Fault::HandlerStall, true)], length, record)
                    .await;
            }
        }
        Ok(())
    }

    /// The upstream hosts `selector` picks, as indices in plan order: the table's matching
    /// hosts in file order, or a fraction of all of them drawn from the seeded RNG.
    fn select(&self, selector: &HostSelector) -> Vec<usize> {
        let table = self.table.as_ref();
        match selector {
            HostSelector::Fraction(_) => {
                let upstreams: Vec<usize> = (0..self.world.upstream_count()).collect();
                let count = selector.count(table, upstreams.len());
                upstreams
                    .choose_multiple(&mut thread_rng(), count)
                    .copied()
                    .collect()
            }
            _ => selector.matching(table),
        }
    }

    /// Cut the relay off the upstream hosts `cut` for `length`, then heal; the fault's
    /// effect is the hosts cut.
    async fn cut_off(&self, cut: &[usize], length: Duration, record: impl Fn(usize, bool, u64)) {
        let world = &*self.world;
        world.partition(cut, true);
        record(cut.len(), true, 0);
        sleep(length).await;
        world.partition(cut, false);
        record(cut.len(), false, cut.len() as u64);
    }

    /// Switch the relay's fault points as `switches` says for `length`, then every one of
    /// them off; the fault's effect is the failures they injected meanwhile.
    async fn fail_points(
        &self,
        switches: &[(Fault, bool)],
        length: Duration,
        record: impl Fn(usize, bool, u64),
    ) {
        let world = &*self.world;
        world.switch_fault_points(switches);
        let injected_before = world.faults_injected();
        record(0, true, 0);
        sleep(length).await;
        let off: Vec<(Fault, bool)> = switches.iter().map(|&(point, _)| (point, false)).collect();
        world.switch_fault_points(&off);
        record(0, false, world.faults_injected() - injected_before);
    }
}
