//! `agentgate policy …`
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check policy files; exit 1 with `file:line:col: reason` on any error.
    Check { paths: Vec<std::path::PathBuf> },
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Check { .. } => {
            anyhow::bail!("the policy language is not built yet (issue 3)")
        }
    }
}
