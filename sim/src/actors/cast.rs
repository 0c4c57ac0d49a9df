//! The relay's clients in a scenario — the prober, churners, callers, abusers and
//! consumers — listed once, in the order every world starts them, with the name and
//! address each one has. An engine maps a [`Client`] onto what it runs actors on (a madsim
//! node with the client's address, a turmoil host named after it, a task on the real
//! runtime) and starts [`Client::loops`] copies of [`Client::run`] there; what runs is the
//! same everywhere.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use relay::rt::time::Instant;

use super::relay_host::ConsumerTally;
use super::{abuser, consumer, http, TraceSink};
use crate::scenario::{AbuserSpec, CallerSpec, ChurnerSpec, ConsumerSpec, ProberSpec, Scenario};

/// One client of the relay.
#[derive(Clone)]
pub struct Client {
    /// The node or host it runs on, and its name in the trace.
    pub name: String,
    /// Its address in the simulated worlds (madsim gives each node one).
    pub ip: Ipv4Addr,
    /// How many copies of its program run at once (a churner's loops; one otherwise).
    pub loops: u32,
    program: Program,
}

#[derive(Clone)]
enum Program {
    Prober(ProberSpec, Option<http::RestartLink>),
    Churner(ChurnerSpec),
    Caller(CallerSpec),
    Abuser(AbuserSpec),
    Consumer(
        ConsumerSpec,
        consumer::SharedTally,
        Option<Arc<consumer::SendTimes>>,
    ),
}

impl Client {
    /// One copy of the client's program against the relay on `relay`.
    pub fn run(
        &self,
        relay: SocketAddr,
        sink: TraceSink,
        world_start: Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (program, name) = (self.program.clone(), self.name.clone());
        async move {
            match program {
                Program::Prober(spec, restart) => {
                    http::prober(spec, relay, sink, world_start, restart).await;
                }
                Program::Churner(spec) => {
                    http::churn_loop(spec, relay, sink, name, world_start).await;
                }
                Program::Caller(spec) => http::caller(spec, relay, sink, name).await,
                Program::Abuser(spec) => abuser::run(spec, relay, sink, name, world_start).await,
                Program::Consumer(spec, tally, send_times) => {
                    consumer::run(spec, name, relay, sink, tally, send_times, world_start).await;
                }
            }
        }
    }
}

/// The clients of `scenario` in start order (prober, churners, callers, abusers,
/// consumers), and the tallies the consumers keep for the end of the run; consumers time
/// deliveries against `send_times` when given, and the prober asks `restart` for liveness
/// restarts when given.
pub fn clients(
    scenario: &Scenario,
    send_times: Option<Arc<consumer::SendTimes>>,
    restart: Option<http::RestartLink>,
) -> (Vec<Client>, Vec<ConsumerTally>) {
    let mut clients = Vec::new();
    let mut add = |name: String, ip: Ipv4Addr, loops: u32, program: Program| {
        clients.push(Client {
            name,
            ip,
            loops,
            program,
        });
    };
    if let Some(prober) = &scenario.prober {
        let ip = Ipv4Addr::new(10, 0, 1, 1);
        add(
            "prober".into(),
            ip,
            1,
            Program::Prober(prober.clone(), restart),
        );
    }
    for (group, spec) in scenario.churners.iter().enumerate() {
        for index in 0..spec.nodes {
            let ip = Ipv4Addr::new(
                10,
                group as u8 + 1,
                (index / 250) as u8,
                (index % 250) as u8 + 1,
            );
            let name = format!("churner-{group}-{index}");
            add(
                name,
                ip,
                spec.loops_per_node,
                Program::Churner(spec.clone()),
            );
        }
    }
    for (group, spec) in scenario.callers.iter().enumerate() {
        for index in 0..spec.nodes {
            let ip = Ipv4Addr::new(10, 210 + group as u8, 0, index as u8 + 1);
            let name = format!("caller-{group}-{index}");
            add(name, ip, 1, Program::Caller(spec.clone()));
        }
    }
    for (group, spec) in scenario.abusers.iter().enumerate() {
        for index in 0..spec.nodes {
            let ip = Ipv4Addr::new(10, 180 + group as u8, 0, index as u8 + 1);
            let name = format!("abuser-{group}-{index}");
            add(name, ip, 1, Program::Abuser(spec.clone()));
        }
    }
    let mut tallies = Vec::new();
    for spec in &scenario.consumers {
        for index in 0..spec.count {
            let ordinal = tallies.len();
            let ip = Ipv4Addr::new(10, 200, (ordinal / 250) as u8, (ordinal % 250) as u8 + 1);
            let name = format!("{}-{index}", spec.name);
            let tally = consumer::SharedTally::default();
            tallies.push(ConsumerTally::new(name.clone(), spec, tally.clone()));
            let program = Program::Consumer(spec.clone(), tally, send_times.clone());
            add(name, ip, 1, program);
        }
    }
    (clients, tallies)
}
