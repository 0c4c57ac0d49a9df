//! `relay`: the binary. Parses arguments, loads configuration, binds, and hands over to
//! [`relay::Relay::run`]; everything else lives in the library so tests and the wind tunnel
//! run the same code.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::config::{Config, ConfigBuilder};
use relay::Relay;

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

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
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
            relay::logging::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async move {
                let relay = Relay::bind(config).await?;
                let report = relay.run(relay::rt::shutdown_signal()).await;
                tracing::info!(connections_left = report.connections_left, "relay stopped");
                Ok(())
            })
        }
    }
}
