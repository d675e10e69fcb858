//! `egresswatch-agent check`: STUB — being built in issue 2.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Hosts to probe (names or addresses).
    #[arg(required = true)]
    pub hosts: Vec<String>,
}

pub fn main(args: CheckArgs) -> ExitCode {
    let _ = args;
    ExitCode::from(2)
}
