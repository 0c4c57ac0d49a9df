//! What the real-mode benchmarks read from `/proc` (Linux): a process's CPU time and this
//! process's open-file limit. Shared by `fanout_bench` and `http_bench` through
//! `#[path]`, since examples are separate crates.

use std::path::Path;

/// CPU time (user + system) of the process whose `/proc/<pid>/stat` is `stat`, seconds; 0
/// where it cannot be read. Linux reports it in clock ticks of 1/100 s.
pub fn cpu_seconds(stat: &Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Fail unless this process may open `needed` files (its children inherit the limit); a
/// limit that cannot be read passes.
pub fn check_fd_limit(needed: usize) -> anyhow::Result<()> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok());
    if let Some(soft) = soft {
        anyhow::ensure!(
            soft >= needed,
            "open-file limit {soft} is below the {needed} this run needs; raise it first (ulimit -n {needed}), child processes inherit it"
        );
    }
    Ok(())
}
