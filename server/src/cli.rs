//! The `relay` command line (`relay serve`, `relay config`): arguments, configuration
//! loading (defaults < file < environment < flags), and serving until SIGINT/SIGTERM on a
//! multi-threaded runtime. It lives in the library so the `relay` binary and the wind
//! tunnel's real mode (which runs this same program as a child process) share it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigBuilder};
use crate::Relay;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Event relay: upstream subscriptions, sequencing, fan-out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay until SIGINT/SIGTERM, then drain connections gracefully.
    Serve(ConfigArgs),
    /// Print the effective configuration (defaults < file < env < flags) as TOML.
    Config(ConfigArgs),
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// TOML configuration file. Without it, the embedded defaults apply.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Listen address (shorthand for --set server.listen=ADDR).
    #[arg(long)]
    listen: Option<String>,
    /// Override one key, e.g. --set server.max_connections=512 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut builder = ConfigBuilder::new();
        if let Some(path) = &self.config {
            builder = builder.with_file(path)?;
        }
        builder = builder.with_env(std::env::vars())?;
        if let Some(listen) = &self.listen {
            builder = builder.with_set(&format!("server.listen={listen}"))?;
        }
        for assignment in &self.overrides {
            builder = builder.with_set(assignment)?;
        }
        Ok(builder.build()?)
    }
}

/// Parse `args` (the program name first, as in `std::env::args_os`) and run the command;
/// errors are printed to stderr on one line with their context chain. Parse errors and
/// `--help` exit as clap decides.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match run(Cli::parse_from(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config(args) => {
            print!("{}", args.load()?.to_toml());
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.load()?;
            crate::logging::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async move {
                let relay = Relay::bind(config).await?;
                let report = relay.run(crate::rt::shutdown_signal()).await;
                tracing::info!(connections_left = report.connections_left, "relay stopped");
                Ok(())
            })
        }
    }
}
