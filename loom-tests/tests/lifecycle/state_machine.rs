//! The registry against a sequential reference model (proptest state machine): random
//! sequences of admissions, activations, touches, close requests through live and stale
//! ids, idle reaps, owner drops, shutdown and clock advances. After every step the real
//! registry's return value, counters and the phase of every id ever issued must equal the
//! model's. Failing sequences are shrunk by proptest and kept in `proptest-regressions/`.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use relay_lifecycle::{
    AdmitError, CloseReason, CloseRequest, ConnId, ConnOwner, Phase, Registry, RegistryStats,
};

/// One step a caller of the registry can take. Owner and id choices are indices taken
/// modulo what exists when the step runs, so every generated step is applicable.
#[derive(Clone, Debug)]
enum Step {
    Admit,
    Activate { owner: usize },
    Touch { owner: usize },
    RequestClose { id: usize, reason: CloseReason },
    ReapIdle { idle_ms: u64 },
    DropOwner { owner: usize },
    BeginShutdown,
    Advance { ms: u64 },
}

/// What the last step returned, as the reference predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Nothing,
    Admitted(Result<(), AdmitError>),
    Activated(bool),
    Close(CloseRequest),
    Requested(usize),
}

/// One connection ever admitted, in admission order.
#[derive(Clone, Debug)]
struct ModelConn {
    live: bool,
    phase: Phase,
    last_activity_ms: u64,
}

#[derive(Clone, Debug)]
struct Model {
    now_ms: u64,
    shutting_down: bool,
    conns: Vec<ModelConn>,
    stats: RegistryStats,
    last: Outcome,
}

impl Model {
    /// Admission numbers of the connections whose owners are alive, oldest first.
    fn live(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|n| self.conns[*n].live)
            .collect()
    }

    fn pick_live(&self, owner: usize) -> Option<usize> {
        let live = self.live();
        (!live.is_empty()).then(|| live[owner % live.len()])
    }

    fn pick_any(&self, id: usize) -> Option<usize> {
        (!self.conns.is_empty()).then(|| id % self.conns.len())
    }

    fn closable(conn: &ModelConn) -> bool {
        conn.live && matches!(conn.phase, Phase::Accepted | Phase::Active)
    }

    /// Drain every closable connection `select` picks; returns how many.
    fn request_all(&mut self, reason: CloseReason, select: impl Fn(&ModelConn) -> bool) -> usize {
        let mut requested = 0;
        for conn in &mut self.conns {
            if Self::closable(conn) && select(conn) {
                conn.phase = Phase::Draining(reason);
                requested += 1;
            }
        }
        requested
    }
}

struct RegistryModel;

impl ReferenceStateMachine for RegistryModel {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        (1usize..=4)
            .prop_map(|max| Model {
                now_ms: 0,
                shutting_down: false,
                conns: Vec::new(),
                stats: RegistryStats {
                    max,
                    ..RegistryStats::default()
                },
                last: Outcome::Nothing,
            })
            .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Step> {
        let reason = prop::sample::select(CloseReason::ALL.to_vec());
        prop_oneof![
            4 => Just(Step::Admit),
            2 => any::<usize>().prop_map(|owner| Step::Activate { owner }),
            2 => any::<usize>().prop_map(|owner| Step::Touch { owner }),
            3 => (any::<usize>(), reason).prop_map(|(id, reason)| Step::RequestClose { id, reason }),
            1 => (0u64..3_000).prop_map(|idle_ms| Step::ReapIdle { idle_ms }),
            3 => any::<usize>().prop_map(|owner| Step::DropOwner { owner }),
            1 => Just(Step::BeginShutdown),
            2 => (0u64..2_000).prop_map(|ms| Step::Advance { ms }),
        ]
        .boxed()
    }

    fn apply(mut model: Model, step: &Step) -> Model {
        model.last = match *step {
            Step::Admit => Outcome::Admitted(if model.shutting_down {
                model.stats.refused_shutting_down_total += 1;
                Err(AdmitError::ShuttingDown)
            } else if model.stats.open == model.stats.max {
                model.stats.refused_at_capacity_total += 1;
                Err(AdmitError::AtCapacity)
            } else {
                model.stats.open += 1;
                model.stats.admitted_total += 1;
                model.stats.high_water = model.stats.high_water.max(model.stats.open);
                model.conns.push(ModelConn {
                    live: true,
                    phase: Phase::Accepted,
                    last_activity_ms: model.now_ms,
                });
                Ok(())
            }),
            Step::Activate { owner } => match model.pick_live(owner) {
                Some(n) if model.conns[n].phase == Phase::Accepted => {
                    model.conns[n].phase = Phase::Active;
                    Outcome::Activated(true)
                }
                Some(_) => Outcome::Activated(false),
                None => Outcome::Nothing,
            },
            Step::Touch { owner } => {
                if let Some(n) = model.pick_live(owner) {
                    model.conns[n].last_activity_ms = model.now_ms;
                }
                Outcome::Nothing
            }
            Step::RequestClose { id, reason } => match model.pick_any(id) {
                Some(n) => {
                    let conn = &mut model.conns[n];
                    Outcome::Close(if !conn.live {
                        CloseRequest::Stale
                    } else if Model::closable(conn) {
                        conn.phase = Phase::Draining(reason);
                        CloseRequest::Requested
                    } else {
                        CloseRequest::AlreadyClosing
                    })
                }
                None => Outcome::Nothing,
            },
            Step::ReapIdle { idle_ms } => {
                let now_ms = model.now_ms;
                Outcome::Requested(model.request_all(CloseReason::Idle, |conn| {
                    now_ms - conn.last_activity_ms >= idle_ms
                }))
            }
            Step::DropOwner { owner } => {
                if let Some(n) = model.pick_live(owner) {
                    model.conns[n].live = false;
                    model.stats.open -= 1;
                    model.stats.released_total += 1;
                }
                Outcome::Nothing
            }
            Step::BeginShutdown => {
                model.shutting_down = true;
                Outcome::Requested(model.request_all(CloseReason::Shutdown, |_| true))
            }
            Step::Advance { ms } => {
                model.now_ms += ms;
                Outcome::Nothing
            }
        };
        model
    }
}

/// The real registry, the owners the test holds and every id it was ever given, indexed
/// like the model's connections.
struct System {
    registry: Arc<Registry>,
    now_ms: u64,
    owners: Vec<Option<ConnOwner>>,
    ids: Vec<ConnId>,
}

impl System {
    fn live(&self) -> Vec<usize> {
        (0..self.owners.len())
            .filter(|n| self.owners[*n].is_some())
            .collect()
    }

    fn pick_live(&self, owner: usize) -> Option<usize> {
        let live = self.live();
        (!live.is_empty()).then(|| live[owner % live.len()])
    }

    fn owner(&self, n: usize) -> &ConnOwner {
        self.owners[n].as_ref().expect("picked a live owner")
    }
}

struct RegistryTest;

impl StateMachineTest for RegistryTest {
    type SystemUnderTest = System;
    type Reference = RegistryModel;

    fn init_test(model: &Model) -> System {
        System {
            registry: Registry::new(model.stats.max),
            now_ms: 0,
            owners: Vec::new(),
            ids: Vec::new(),
        }
    }

    fn apply(mut system: System, model: &Model, step: Step) -> System {
        let outcome = match step {
            Step::Admit => Outcome::Admitted(match system.registry.try_admit(system.now_ms) {
                Ok(owner) => {
                    system.ids.push(owner.id());
                    system.owners.push(Some(owner));
                    Ok(())
                }
                Err(err) => Err(err),
            }),
            Step::Activate { owner } => match system.pick_live(owner) {
                Some(n) => Outcome::Activated(system.owner(n).activate()),
                None => Outcome::Nothing,
            },
            Step::Touch { owner } => {
                if let Some(n) = system.pick_live(owner) {
                    system.owner(n).touch(system.now_ms);
                }
                Outcome::Nothing
            }
            Step::RequestClose { id, reason } => match system.ids.len() {
                0 => Outcome::Nothing,
                issued => Outcome::Close(
                    system
                        .registry
                        .request_close(system.ids[id % issued], reason),
                ),
            },
            Step::ReapIdle { idle_ms } => {
                Outcome::Requested(system.registry.reap_idle(system.now_ms, idle_ms))
            }
            Step::DropOwner { owner } => {
                if let Some(n) = system.pick_live(owner) {
                    system.owners[n] = None;
                }
                Outcome::Nothing
            }
            Step::BeginShutdown => Outcome::Requested(system.registry.begin_shutdown()),
            Step::Advance { ms } => {
                system.now_ms += ms;
                Outcome::Nothing
            }
        };
        assert_eq!(
            outcome, model.last,
            "the registry and the model disagree on the result"
        );
        system
    }

    fn check_invariants(system: &System, model: &Model) {
        assert_eq!(system.registry.stats(), model.stats, "counters");
        assert_eq!(system.registry.is_shutting_down(), model.shutting_down);
        for (n, conn) in model.conns.iter().enumerate() {
            let id = system.ids[n];
            let expected = conn.live.then_some(conn.phase);
            assert_eq!(
                system.registry.phase(id),
                expected,
                "phase of admission #{n} ({id})"
            );
            if let Some(owner) = &system.owners[n] {
                assert_eq!(owner.phase(), conn.phase, "owner's view of admission #{n}");
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]
    #[test]
    fn registry_matches_the_reference_model(sequential 1..60 => RegistryTest);
}
