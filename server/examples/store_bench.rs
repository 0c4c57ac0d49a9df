//! `store_bench`: what durable commits cost. The relay's own [`Store`] on a real file
//! (`--dir`, default `target/`: a disk, not tmpfs, where a sync would cost nothing) commits
//! `--events` events in batches of each `--batches` size, once with `store.durable_commits`
//! on (`synchronous = FULL`: the WAL synced at every commit) and once off (`NORMAL`), in
//! alternating rounds, and prints events/s per batch size and the ratio of the two. The
//! sequencer commits what has queued up to `events.commit_batch_max` (256) per batch, so
//! the small batches show a quiet relay and the large ones a busy one. Nothing here
//! asserts a speed; it measures and prints.

use relay::rt::time::now;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use relay::atproto::frame::Kind;
use relay::store::{NewEvent, Store};

#[derive(Parser)]
struct Args {
    /// Events committed per measurement.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batches: Vec<u64>,
    /// Rounds per setting (the best is kept: noise only ever slows a run down).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Bytes of each event's body (900: a small post's `#commit`; the wind tunnel's
    /// hosts average 3,200).
    #[arg(long, default_value_t = 900)]
    body_bytes: usize,
    /// Where the database files go.
    #[arg(long, default_value = "target")]
    dir: PathBuf,
}

/// Events per second committing `args.events` events of `args.body_bytes` in batches of
/// `batch` to a fresh database in `args.dir`.
fn commit_rate(args: &Args, durable: bool, batch: u64) -> anyhow::Result<f64> {
    let Args {
        events,
        body_bytes,
        ref dir,
        ..
    } = *args;
    let path = dir.join(format!("store_bench-{}.sqlite", std::process::id()));
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    };
    remove();
    let store = Store::open_with(&path, durable).context("open the store")?;
    let hosts: Vec<String> = (0..100).map(|i| format!("pds-{i}.example")).collect();
    store.add_hosts(hosts.iter().map(String::as_str))?;
    // An opaque body (the store does not look inside it).
    let body = bytes::Bytes::from(vec![0xa0; body_bytes]);
    let started = now();
    let mut seq = 1;
    while seq <= events {
        let batch: Vec<NewEvent> = (seq..(seq + batch).min(events + 1))
            .map(|seq| NewEvent {
                seq,
                host_id: (seq % 100) as i64 + 1,
                upstream_seq: seq,
                kind: Kind::Commit,
                body: body.clone(),
                account: None,
            })
            .collect();
        seq += batch.len() as u64;
        store.commit_events(&batch)?;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(store);
    remove();
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    println!(
        "{:>6} {:>16} {:>16} {:>8}",
        "batch", "durable ev/s", "normal ev/s", "ratio"
    );
    for &batch in &args.batches {
        let (mut durable, mut normal) = (0f64, 0f64);
        for _ in 0..args.rounds {
            durable = durable.max(commit_rate(&args, true, batch)?);
            normal = normal.max(commit_rate(&args, false, batch)?);
        }
        println!(
            "{batch:>6} {durable:>16.0} {normal:>16.0} {:>8.2}",
            durable / normal
        );
    }
    Ok(())
}
