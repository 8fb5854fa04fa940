//! The `gatehouse` command line: `run` (default), `check`, `--version`.

use clap::{Parser, Subcommand};
use gatehouse::{Config, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A programmable edge gateway on Pingora"
)]
struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        env = "GATEHOUSE_CONFIG",
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Take over the listening sockets of a running gatehouse (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Load, validate and build the config without binding sockets; exit 1 listing every problem.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => match Config::load(&cli.config).and_then(gatehouse::check) {
            Ok(snap) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    cli.config.display(),
                    snap.routes.len(),
                    snap.pools.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration", cli.config.display());
                for p in &e.problems {
                    eprintln!("  {p}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => {
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid configuration", cli.config.display());
                    for p in &e.problems {
                        eprintln!("  {p}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            gatehouse::logging::init(&config.server.log);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %cli.config.display(), "starting gatehouse");
            match gatehouse::run(config, RunOptions { upgrade }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    for p in &e.problems {
                        tracing::error!("{p}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
