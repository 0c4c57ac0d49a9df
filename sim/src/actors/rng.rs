//! The actors' random numbers, drawn from the run's seed. Under madsim that is madsim's
//! seeded global RNG (which also answers `getrandom`); elsewhere it is a per-thread
//! `StdRng` that the engine seeds with [`seed`] before it builds a world (one world runs
//! on one thread at a time).

#[cfg(madsim)]
pub use madsim::rand::thread_rng;

#[cfg(not(madsim))]
pub use self::seeded::{seed, thread_rng};

#[cfg(not(madsim))]
mod seeded {
    use std::cell::RefCell;

    use madsim::rand::rngs::StdRng;
    use madsim::rand::{RngCore, SeedableRng};

    thread_local! {
        static WORLD: RefCell<StdRng> = RefCell::new(StdRng::seed_from_u64(0));
    }

    /// Seed this thread's world RNG; every later draw on this thread follows from `seed`.
    pub fn seed(seed: u64) {
        WORLD.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
    }

    /// A handle on this thread's world RNG.
    pub fn thread_rng() -> WorldRng {
        WorldRng(())
    }

    /// Draws from the calling thread's world RNG.
    #[derive(Debug)]
    pub struct WorldRng(());

    impl RngCore for WorldRng {
        fn next_u32(&mut self) -> u32 {
            WORLD.with(|rng| rng.borrow_mut().next_u32())
        }

        fn next_u64(&mut self) -> u64 {
            WORLD.with(|rng| rng.borrow_mut().next_u64())
        }

        fn fill_bytes(&mut self, dest: &mut [u8]) {
            WORLD.with(|rng| rng.borrow_mut().fill_bytes(dest));
        }

        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), madsim::rand::Error> {
            WORLD.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
        }
    }
}
