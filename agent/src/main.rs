//! `egresswatch-agent`: the command line. Parsing lives here; the work lives in the library.

use clap::{Parser, Subcommand};
use egresswatch_agent::{check, enroll, run};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "egresswatch-agent",
    version,
    about = "Measure this host's outbound SMTP egress"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe this host's egress to HOST(s) once and say which layer is in the way.
    Check(check::CheckArgs),
    /// Run the agent: probe on a schedule and report to the collector.
    Run(run::RunArgs),
    /// Join the fleet with a token from `egresswatch-collector token create`: make this host's
    /// key, get its certificate from the collector, write them and the config.
    Enroll(enroll::EnrollArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 0 for --help/--version and 2 for usage errors; keep that contract.
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Check(args) => check::main(args),
        Command::Run(args) => run::main(args),
        Command::Enroll(args) => enroll::main(args),
    }
}
