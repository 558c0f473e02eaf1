//! `agentgate audit …`
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every link and signature of the audit log.
    Verify,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify => anyhow::bail!("the audit log is not built yet (issue 6)"),
    }
}
