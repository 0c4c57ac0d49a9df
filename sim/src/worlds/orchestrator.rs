//! The orchestrator: what Kubernetes does with a failing liveness probe, played on any
//! [`World`] when `[prober] restart` is on. The prober (an actor) counts its consecutive
//! failures and asks through its [`RestartLink`]; the orchestrator stops the relay as the
//! kubelet does (SIGTERM, then a kill after the termination grace period), waits out the
//! crash-loop back-off, starts it again on the same database and lets the prober resume.
//!
//! Back-off as the kubelet's: the first restart at once, then 10 s doubling per restart up
//! to 5 minutes; a relay that ran 10 minutes since its last start is forgiven (the next
//! restart is a first one again).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use relay::rt::time::{now, sleep, timeout};

use super::World;
use crate::actors::http::{RestartLink, RestartRequests};
use crate::actors::TraceSink;
use crate::scenario::Scenario;
use crate::trace::Event;

/// The first back-off after the first restart.
const BACK_OFF_FIRST: Duration = Duration::from_secs(10);
/// The back-off's cap.
const BACK_OFF_MAX: Duration = Duration::from_secs(300);
/// Running this long since its last start resets the back-off.
const BACK_OFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// The orchestrator's task: it ends when the prober goes, and fails only when the world
/// cannot stop or start the relay.
pub type OrchestratorTask = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// The prober's link and the orchestrator's task for `scenario` on `world`, when its
/// prober asks for restarts; `(None, None)` otherwise. The world starts the task beside its
/// fault player's.
pub fn orchestrator<W: World>(
    world: &Arc<W>,
    scenario: &Scenario,
    sink: &TraceSink,
) -> (Option<RestartLink>, Option<OrchestratorTask>) {
    let Some(prober) = scenario.prober.as_ref().filter(|prober| prober.restart) else {
        return (None, None);
    };
    let (link, requests) = RestartLink::new();
    let grace = Duration::from_secs(prober.termination_grace_s);
    let task = restart_on_request(Arc::clone(world), requests, grace, sink.clone());
    (Some(link), Some(Box::pin(task)))
}

/// Serve restart requests until the prober goes.
async fn restart_on_request<W: World>(
    world: Arc<W>,
    mut requests: RestartRequests,
    grace: Duration,
    sink: TraceSink,
) -> Result<(), String> {
    let mut restarts = 0;
    let mut crash_loop = 0;
    let mut started = now();
    while let Some(request) = requests.next().await {
        restarts += 1;
        if started.elapsed() >= BACK_OFF_RESET_AFTER {
            crash_loop = 0;
        }
        let back_off = crash_loop_back_off(crash_loop);
        crash_loop += 1;
        let graceful = matches!(timeout(grace, world.stop_relay()).await, Ok(Ok(())));
        if !graceful {
            world.kill_relay().await?;
        }
        sink.record(
            "orchestrator",
            Event::LivenessRestart {
                restart: restarts,
                graceful,
                back_off_s: back_off.as_secs(),
            },
        );
        sleep(back_off).await;
        world.start_relay().await?;
        started = now();
        request.done();
    }
    Ok(())
}

/// The kubelet's back-off before restart number `earlier + 1` of a crash loop.
fn crash_loop_back_off(earlier: u32) -> Duration {
    match earlier {
        0 => Duration::ZERO,
        n => BACK_OFF_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(BACK_OFF_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_starts_at_once_then_doubles_from_ten_seconds_to_five_minutes() {
        let back_offs: Vec<u64> = (0..8).map(|n| crash_loop_back_off(n).as_secs()).collect();
        assert_eq!(back_offs, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(crash_loop_back_off(u32::MAX), BACK_OFF_MAX);
    }
}
