//! `egresswatch-agent run`: STUB — being built in issue 3.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Path of the agent's TOML config.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
}

pub fn main(args: RunArgs) -> ExitCode {
    let _ = args;
    ExitCode::from(2)
}
