//! The relay as a child process in real mode: which program runs it ([`RelayProgram`]: the
//! relay's own command line, `relay serve --config <file>`, from this windtunnel executable
//! or from a relay binary; or any relay started by a shell command, a black box), starting
//! it with its output in a log file and none of this
//! process's `RELAY__*` environment, waiting until it answers HTTP, stopping it gracefully
//! (SIGTERM, the relay drains) or killing it (SIGKILL, a crash), and its resource use read
//! from `/proc`. A child left running when the world ends early is killed on drop.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use relay::rt::net::TcpStream;
use relay::rt::time::{now, sleep, timeout};
use rustix::process::{kill_process, Pid, Signal};

use crate::actors::client;

/// How long a started relay may take to answer its first request.
const SERVING_WITHIN: Duration = Duration::from_secs(60);
/// How often a starting or stopping relay is looked at.
const POLL_PERIOD: Duration = Duration::from_millis(10);
/// Lines of the relay's output quoted when it fails.
const OUTPUT_TAIL_LINES: usize = 30;

/// The program that runs the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayProgram {
    /// This relay's own command line, `<program> <leading args> serve --config <file>`,
    /// configured from the scenario's `[relay]` table and read through its `/metrics`,
    /// `/hosts` and database.
    Ours {
        /// The executable.
        program: PathBuf,
        /// Arguments before `serve`.
        leading_args: Vec<OsString>,
    },
    /// Any relay that speaks atproto, started by a shell command (`sh -c`) in which `{addr}`
    /// becomes the address it must listen on and `{dir}` a directory of its own for the
    /// run (for its database; kept across its restarts). Configured by the command, read only
    /// through the protocol: a black box.
    BlackBox(String),
}

/// Where a started relay listens and keeps its files.
#[derive(Clone, Copy, Debug)]
pub struct Placement<'a> {
    /// The address it must listen on.
    pub addr: SocketAddr,
    /// Its configuration file (ours only).
    pub config: &'a Path,
    /// A directory of its own (a black box's `{dir}`).
    pub dir: &'a Path,
}

impl RelayProgram {
    /// The relay's command line inside the windtunnel executable at `windtunnel`
    /// (`windtunnel relay serve …` runs `relay::cli`, exactly what the `relay` binary runs).
    pub fn windtunnel(windtunnel: impl Into<PathBuf>) -> Self {
        Self::Ours {
            program: windtunnel.into(),
            leading_args: vec!["relay".into()],
        }
    }

    /// This process's own executable, when it is windtunnel.
    pub fn this_windtunnel() -> io::Result<Self> {
        std::env::current_exe().map(Self::windtunnel)
    }

    /// A `relay` binary (e.g. `target/release/relay`).
    pub fn binary(relay: impl Into<PathBuf>) -> Self {
        Self::Ours {
            program: relay.into(),
            leading_args: Vec::new(),
        }
    }

    /// Whether the relay is a black box, known only through the protocol.
    pub fn is_black_box(&self) -> bool {
        matches!(self, Self::BlackBox(_))
    }

    /// The path that tells whether it is alive: ours `/_healthz`, any relay's `/xrpc/_health`.
    pub fn liveness_path(&self) -> &'static str {
        match self {
            Self::Ours { .. } => "/_healthz",
            Self::BlackBox(_) => relay::http::xrpc::HEALTH_PATH,
        }
    }

    /// The command line as a person would type it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Ours {
                program,
                leading_args,
            } => {
                let mut words = vec![program.display().to_string()];
                words.extend(
                    leading_args
                        .iter()
                        .map(|arg| arg.to_string_lossy().into_owned()),
                );
                words.join(" ")
            }
            Self::BlackBox(command) => command.clone(),
        }
    }

    /// The process to start at `placement`.
    fn command(&self, placement: Placement<'_>) -> Command {
        match self {
            Self::Ours {
                program,
                leading_args,
            } => {
                let mut command = Command::new(program);
                command
                    .args(leading_args)
                    .arg("serve")
                    .arg("--config")
                    .arg(placement.config);
                command
            }
            Self::BlackBox(line) => {
                let line = line
                    .replace("{addr}", &placement.addr.to_string())
                    .replace("{dir}", &placement.dir.display().to_string());
                let mut command = Command::new("sh");
                command.arg("-c").arg(line);
                command
            }
        }
    }
}

/// A running (or exited) relay process.
pub struct RelayProcess {
    child: Child,
    output: PathBuf,
}

impl RelayProcess {
    /// Start `program` at `placement`, its stdout and stderr appended to `output`.
    pub fn start(
        program: &RelayProgram,
        placement: Placement<'_>,
        output: &Path,
    ) -> Result<Self, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(output)
            .map_err(|error| format!("cannot open {}: {error}", output.display()))?;
        let log_again = log
            .try_clone()
            .map_err(|error| format!("cannot share {}: {error}", output.display()))?;
        let mut command = program.command(placement);
        command.stdin(Stdio::null()).stdout(log).stderr(log_again);
        // The scenario's [relay] table (or the black box's command) is the whole
        // configuration: nothing from this process's environment may override it.
        for (name, _) in std::env::vars_os() {
            if name
                .to_string_lossy()
                .starts_with(relay::config::ENV_PREFIX)
            {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start the relay ({}): {error}", program.describe()))?;
        Ok(Self {
            child,
            output: output.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the relay answers a request for `path` on `addr` (any status: it is
    /// serving).
    pub async fn wait_until_serving(&mut self, addr: SocketAddr, path: &str) -> Result<(), String> {
        let deadline = now() + SERVING_WITHIN;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.failure(&format!("exited before it served ({status})")));
            }
            if let Ok(Ok(mut stream)) = timeout(POLL_PERIOD * 10, TcpStream::connect(addr)).await {
                if timeout(
                    Duration::from_secs(1),
                    client::get(&mut stream, path, false),
                )
                .await
                .is_ok_and(|answer| answer.is_ok())
                {
                    return Ok(());
                }
            }
            if now() >= deadline {
                return Err(self.failure(&format!(
                    "did not answer on {addr} within {}s",
                    SERVING_WITHIN.as_secs()
                )));
            }
            sleep(POLL_PERIOD).await;
        }
    }

    /// Ask the relay to stop (SIGTERM: it drains and exits) and wait up to `grace`; kill it
    /// if it is still running then. Returns how it exited by itself, or `None` if it had to
    /// be killed.
    pub async fn stop(&mut self, grace: Duration) -> Result<Option<ExitStatus>, String> {
        if self.exit_status().is_some() {
            return Err(self.failure("had exited before it was asked to stop"));
        }
        self.signal(Signal::TERM)?;
        let deadline = now() + grace;
        while now() < deadline {
            if let Some(status) = self.exit_status() {
                return Ok(Some(status));
            }
            sleep(POLL_PERIOD).await;
        }
        self.kill().await?;
        Ok(None)
    }

    /// Kill the relay (SIGKILL: no drain, no final commit) and wait for it to be gone.
    pub async fn kill(&mut self) -> Result<(), String> {
        if self.exit_status().is_none() {
            self.signal(Signal::KILL)?;
        }
        while self.exit_status().is_none() {
            sleep(POLL_PERIOD).await;
        }
        Ok(())
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What `/proc` says the process used so far (`None` once it is gone, or off Linux).
    pub fn usage(&self) -> Option<ProcessUsage> {
        ProcessUsage::read(self.pid())
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        kill_process(Pid::from_child(&self.child), signal)
            .map_err(|error| format!("cannot signal the relay (pid {}): {error}", self.pid()))
    }

    /// A failure message that quotes the end of the relay's output.
    pub fn failure(&self, what: &str) -> String {
        let output = std::fs::read_to_string(&self.output).unwrap_or_default();
        let lines: Vec<&str> = output.lines().collect();
        let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
        format!(
            "the relay process (pid {}) {what}; the end of its output ({}):\n{tail}",
            self.pid(),
            self.output.display()
        )
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's resource use from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// CPU time in user and kernel mode (`utime + stime`), in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcessUsage {
    /// Clock ticks per second of `cpu_ticks` (`USER_HZ`, 100 on every Linux ABI).
    pub const TICKS_PER_SECOND: u64 = 100;

    fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self {
            peak_rss_bytes: status_kib(&status, "VmHWM")? * 1024,
            cpu_ticks: stat_cpu_ticks(&stat)?,
        })
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15; the command name, field 2, is
/// parenthesised and may hold spaces, so fields are counted after its closing parenthesis).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_from_this_process() {
        let usage = ProcessUsage::read(std::process::id()).expect("/proc of this process");
        assert!(usage.peak_rss_bytes > 1 << 20, "{usage:?}");
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(287));
        assert_eq!(
            status_kib("Name:\tx\nVmHWM:\t  2048 kB\n", "VmHWM"),
            Some(2048)
        );
        assert_eq!(status_kib("VmRSS:\t1 kB\n", "VmHWM"), None);
    }
}
