//! Wind-tunnel benchmarks (issue 8), run by `cargo sim-bench` (`ci/bench.sh tunnel`):
//!
//! 1. The cold start (`scenarios/cold_start_2800.toml`) against the bare madsim program of
//!    the same shape (`windtunnel::worlds::madsim::bare`), seed by seed, tunnel then bare, so each
//!    pair shares the machine's state: wall times, their ratio, simulated seconds per wall
//!    second, and the volume both moved (event frames, connections, probes).
//! 2. Seeds per second, one seed after another on one thread, for
//!    `churn_max_connections` and `close_recv_race`, with the process's resident memory
//!    after each batch (per-seed peak memory is measured per process by `ci/bench.sh`).
//!
//! It measures and prints; it never fails on speed. Options: `--seeds N` (cold-start
//! pairs, default 3), `--batch N` (seeds per throughput batch, default 20).

#[cfg(madsim)]
fn main() {
    bench::main();
}

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "the tunnel benchmarks run simulations; build them with --cfg madsim: `cargo sim-bench`"
    );
}

#[cfg(madsim)]
mod bench {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use windtunnel::report::Summary;
    use windtunnel::scenario::Scenario;
    use windtunnel::worlds::madsim::{bare, Madsim};
    use windtunnel::worlds::Engine;

    pub fn main() {
        let mut pairs = 3u64;
        let mut batch = 20u64;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> u64 {
                args.next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("{name} takes a number"))
            };
            match arg.as_str() {
                "--seeds" => pairs = number("--seeds"),
                "--batch" => batch = number("--batch"),
                "--bench" => {} // what `cargo bench` passes to every bench binary
                other => panic!("unknown option {other}; options: --seeds N, --batch N"),
            }
        }
        cold_start_vs_bare(pairs);
        for name in ["churn_max_connections", "close_recv_race"] {
            seeds_per_second(name, batch);
        }
    }

    fn scenario(name: &str) -> Scenario {
        let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios")
            .join(format!("{name}.toml"));
        Scenario::load(&path).unwrap_or_else(|error| panic!("{error}"))
    }

    fn cold_start_vs_bare(pairs: u64) {
        let scenario = scenario("cold_start_2800");
        let simulated = scenario.duration_s as f64;
        println!(
            "== cold_start_2800 ({} hosts, {simulated} simulated s) vs the bare madsim program",
            scenario
                .upstreams
                .as_ref()
                .map_or(0, |spec| spec.polite_hosts())
        );
        println!(
            "seed  tunnel_s  bare_s  ratio  tunnel_x_real  bare_x_real  tunnel_events  bare_frames  \
             bare_connections  tunnel_probes  bare_probes  verdict"
        );
        let mut ratios = Vec::new();
        let mut tunnel_walls = Vec::new();
        for seed in 1..=pairs {
            let tunnel = Madsim.run(&scenario, seed, None);
            let bare = bare::run(&scenario, seed);
            let summary = Summary::of(&tunnel.trace);
            let events = summary
                .upstream_last
                .as_ref()
                .map_or(0, |last| last.upstream_events);
            let ratio = secs(tunnel.wall) / secs(bare.wall);
            ratios.push(ratio);
            tunnel_walls.push(secs(tunnel.wall));
            println!(
                "{seed:>4}  {:>8.2}  {:>6.2}  {ratio:>5.2}  {:>13.0}  {:>11.0}  {events:>13}  {:>11}  \
                 {:>16}  {:>13}  {:>11}  {}",
                secs(tunnel.wall),
                secs(bare.wall),
                simulated / secs(tunnel.wall),
                simulated / secs(bare.wall),
                bare.frames,
                bare.connections,
                summary.probes,
                bare.probes,
                if tunnel.verdict.is_success() { "as expected" } else { "NOT as expected" },
            );
        }
        println!(
            "median: ratio {:.2}, tunnel {:.2} s ({:.0}x real time)",
            median(&mut ratios),
            median(&mut tunnel_walls),
            simulated / median(&mut tunnel_walls),
        );
        println!("{}", memory_line());
        println!();
    }

    fn seeds_per_second(name: &str, batch: u64) {
        let scenario = scenario(name);
        let mut walls = Vec::new();
        let mut failed = 0;
        #[allow(clippy::disallowed_methods)] // the benchmark's wall clock
        let start = std::time::Instant::now();
        for seed in 1..=batch {
            let outcome = Madsim.run(&scenario, seed, None);
            walls.push(secs(outcome.wall));
            if !outcome.verdict.is_success() {
                failed += 1;
            }
        }
        let total = secs(start.elapsed());
        println!(
            "== {name}: {batch} seeds in {total:.2} s = {:.2} seeds/s on one thread; \
             per seed median {:.3} s, max {:.3} s; {failed} not as expected",
            batch as f64 / total,
            median(&mut walls),
            walls.iter().copied().fold(0.0, f64::max),
        );
        println!("{}", memory_line());
        println!();
    }

    fn secs(duration: Duration) -> f64 {
        duration.as_secs_f64()
    }

    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    }

    /// This process's resident memory now and at its peak, from /proc (Linux).
    fn memory_line() -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map_or_else(|| "?".to_owned(), |value| value.trim().to_owned())
        };
        format!(
            "process memory: resident {}, peak {}",
            field("VmRSS:"),
            field("VmHWM:")
        )
    }
}
