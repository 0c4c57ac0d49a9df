//! The clients of the world: the Kubernetes-style prober, the churners and the API
//! callers. Actors only act and record what they observed; judging is the oracles' job.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use madsim::rand::Rng;
use relay::rt::net::TcpStream;
use relay::rt::time::{now, sleep, sleep_until, timeout, Instant};
use tokio::sync::{mpsc, oneshot};

use super::client::{self, get};
use super::rng::thread_rng;
use super::TraceSink;
use crate::scenario::{Between, CallerSpec, ChurnerSpec, ProberSpec};
use crate::trace::{ChurnAction, Event};

/// Upper bound on any single churner request: a stuck relay shows up as an error, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The prober's line to whoever restarts the relay (the world's orchestrator, when
/// `[prober] restart` is on): a restart request, answered once the relay is started again.
#[derive(Clone, Debug)]
pub struct RestartLink(mpsc::UnboundedSender<oneshot::Sender<()>>);

/// The orchestrator's end of a [`RestartLink`].
#[derive(Debug)]
pub struct RestartRequests(mpsc::UnboundedReceiver<oneshot::Sender<()>>);

/// A restart request; [`RestartRequest::done`] tells the prober the relay is starting again.
#[derive(Debug)]
pub struct RestartRequest(oneshot::Sender<()>);

impl RestartLink {
    /// A link and its orchestrator's end.
    pub fn new() -> (Self, RestartRequests) {
        let (requests, received) = mpsc::unbounded_channel();
        (Self(requests), RestartRequests(received))
    }

    /// Ask for a restart; returns once the relay has been started again (or the
    /// orchestrator has gone, at the end of the run).
    async fn restart(&self) {
        let (done, started) = oneshot::channel();
        if self.0.send(done).is_ok() {
            let _ = started.await;
        }
    }
}

impl RestartRequests {
    /// The next request, or `None` once every prober has gone.
    pub async fn next(&mut self) -> Option<RestartRequest> {
        self.0.recv().await.map(RestartRequest)
    }
}

impl RestartRequest {
    /// The relay is starting again.
    pub fn done(self) {
        let _ = self.0.send(());
    }
}

/// Probe like the kubelet: a fresh connection per probe, `Connection: close`, a deadline,
/// one probe per period, sequentially. With a `restart` link, `failure_threshold`
/// consecutive failures ask for a restart, and probing resumes `initial_delay_s` after the
/// relay is started again (a new container's probes start over).
pub async fn prober(
    spec: ProberSpec,
    relay: SocketAddr,
    sink: TraceSink,
    world_start: Instant,
    restart: Option<RestartLink>,
) {
    let period = Duration::from_secs(spec.period_s);
    let deadline = Duration::from_secs(spec.timeout_s);
    let initial_delay = Duration::from_secs(spec.initial_delay_s);
    let mut next = world_start + initial_delay;
    let mut failures = 0;
    loop {
        sleep_until(next).await;
        next += period;
        let started = now();
        let attempt = timeout(deadline, async {
            let mut stream = TcpStream::connect(relay).await?;
            get(&mut stream, &spec.path, false).await
        })
        .await;
        let latency_us = micros(started.elapsed());
        let event = match attempt {
            Ok(Ok(response)) => Event::Probe {
                ok: (200..400).contains(&response.status),
                status: Some(response.status),
                latency_us,
                error: (!(200..400).contains(&response.status))
                    .then(|| format!("status {}", response.status)),
            },
            Ok(Err(error)) => Event::Probe {
                ok: false,
                status: None,
                latency_us,
                error: Some(error.to_string()),
            },
            Err(_) => Event::Probe {
                ok: false,
                status: None,
                latency_us,
                error: Some(format!("timeout after {}ms", deadline.as_millis())),
            },
        };
        failures = match event {
            Event::Probe { ok: true, .. } => 0,
            _ => failures + 1,
        };
        sink.record("prober", event);
        if let Some(link) = restart
            .as_ref()
            .filter(|_| failures >= spec.failure_threshold)
        {
            failures = 0;
            link.restart().await;
            next = now() + initial_delay;
        }
    }
}

/// An API client: `GET path` every period for the whole run, on a fresh connection per call
/// or (with `keep_alive`) on one connection reused until it dies. Every call is recorded
/// with its status, or with why no response arrived.
pub async fn caller(spec: CallerSpec, relay: SocketAddr, sink: TraceSink, node: String) {
    let period = Duration::from_millis(spec.period_ms);
    let deadline = Duration::from_millis(spec.timeout_ms);
    let mut reused: Option<TcpStream> = None;
    let mut next = now();
    loop {
        sleep_until(next).await;
        next += period;
        let started = now();
        let attempt = timeout(deadline, async {
            let mut stream = match reused.take() {
                Some(stream) => stream,
                None => TcpStream::connect(relay).await?,
            };
            let response = get(&mut stream, &spec.path, spec.keep_alive).await?;
            Ok::<_, io::Error>((response, stream))
        })
        .await;
        let latency_us = micros(started.elapsed());
        let (status, error) = match attempt {
            Ok(Ok((response, stream))) => {
                if spec.keep_alive && !response.closes {
                    reused = Some(stream);
                }
                (Some(response.status), None)
            }
            Ok(Err(error)) => (None, Some(error.to_string())),
            Err(_) => (
                None,
                Some(format!("timeout after {}ms", deadline.as_millis())),
            ),
        };
        sink.record(
            node.as_str(),
            Event::Call {
                status,
                latency_us,
                error,
            },
        );
    }
}

/// One churner loop: until `stop_at`, pick an action by weight, do it, record the outcome.
pub async fn churn_loop(
    spec: ChurnerSpec,
    relay: SocketAddr,
    sink: TraceSink,
    node: String,
    world_start: Instant,
) {
    sleep_until(world_start + Duration::from_secs(spec.start_s)).await;
    let stop_at = world_start + Duration::from_secs(spec.stop_s);
    while now() < stop_at {
        sleep(Duration::from_millis(draw(spec.think_ms))).await;
        let action = pick_action(&spec);
        let outcome = match TcpStream::connect(relay).await {
            Ok(stream) => perform(&spec, action, stream).await,
            Err(error) => Outcome::failed(format!("connect: {error}")),
        };
        sink.record(
            node.as_str(),
            Event::Churn {
                action,
                requests_ok: outcome.requests_ok,
                refused: outcome.refused,
                error: outcome.error,
            },
        );
    }
}

#[derive(Debug, Default)]
struct Outcome {
    requests_ok: u32,
    refused: bool,
    error: Option<String>,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

async fn perform(spec: &ChurnerSpec, action: ChurnAction, mut stream: TcpStream) -> Outcome {
    let mut outcome = Outcome::default();
    match action {
        ChurnAction::AbruptClose => {
            sleep(Duration::from_millis(draw(Between { min: 0, max: 50 }))).await;
        }
        ChurnAction::MidRequestClose => {
            let head = b"GET /_healthz HTTP/1.1\r\nHost: rel";
            if let Err(error) = client::write_flushed(&mut stream, head).await {
                outcome.error = Some(error.to_string());
            }
            sleep(Duration::from_millis(draw(Between { min: 0, max: 500 }))).await;
        }
        ChurnAction::Keepalive => {
            let requests = draw(spec.keepalive_requests.map(u64::from));
            for _ in 0..requests {
                if !request(spec, &mut stream, &mut outcome).await {
                    break;
                }
            }
        }
        ChurnAction::IdleHold => {
            if request(spec, &mut stream, &mut outcome).await {
                sleep(Duration::from_secs(draw(spec.idle_hold_s))).await;
                request(spec, &mut stream, &mut outcome).await;
            }
        }
        ChurnAction::HalfClose => {
            let path = &spec.paths[thread_rng().gen_range(0..spec.paths.len())];
            match timeout(REQUEST_TIMEOUT, client::get_half_closed(&mut stream, path)).await {
                Ok(Ok(response)) if response.status == 503 => outcome.refused = true,
                Ok(Ok(_)) => outcome.requests_ok += 1,
                Ok(Err(error)) => outcome.error = Some(classify(&error)),
                Err(_) => {
                    outcome.error =
                        Some(format!("no response within {}s", REQUEST_TIMEOUT.as_secs()));
                }
            }
        }
    }
    outcome
}

/// One keep-alive request; returns whether the connection is still usable.
async fn request(spec: &ChurnerSpec, stream: &mut TcpStream, outcome: &mut Outcome) -> bool {
    let path = &spec.paths[thread_rng().gen_range(0..spec.paths.len())];
    match timeout(REQUEST_TIMEOUT, get(stream, path, true)).await {
        Ok(Ok(response)) if response.status == 503 => {
            outcome.refused = true;
            false
        }
        Ok(Ok(response)) => {
            outcome.requests_ok += 1;
            !response.closes
        }
        Ok(Err(error)) => {
            outcome.error = Some(classify(&error));
            false
        }
        Err(_) => {
            outcome.error = Some(format!("no response within {}s", REQUEST_TIMEOUT.as_secs()));
            false
        }
    }
}

fn classify(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => "closed by relay".to_owned(),
        _ => error.to_string(),
    }
}

fn pick_action(spec: &ChurnerSpec) -> ChurnAction {
    let mix = &spec.mix;
    let mut ticket = thread_rng().gen_range(0..mix.total());
    for (weight, action) in [
        (mix.abrupt_close, ChurnAction::AbruptClose),
        (mix.mid_request_close, ChurnAction::MidRequestClose),
        (mix.keepalive, ChurnAction::Keepalive),
        (mix.idle_hold, ChurnAction::IdleHold),
        (mix.half_close, ChurnAction::HalfClose),
    ] {
        if ticket < weight {
            return action;
        }
        ticket -= weight;
    }
    unreachable!("ticket drawn below the total weight")
}

fn draw(range: Between<u64>) -> u64 {
    thread_rng().gen_range(range.min..=range.max)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
