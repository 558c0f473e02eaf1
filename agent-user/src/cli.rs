//! The command line: `agentgate daemon|exec|policy|sessions|status|…`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "agentgate", version, about = "Runtime authorization for AI agents, enforced in the kernel with eBPF")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check, explain and compile policies.
    Policy(crate::policy::cli::PolicyArgs),
    /// Verify and export the audit log.
    Audit(crate::audit::cli::AuditArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(args) => crate::policy::cli::run(args),
        Command::Audit(args) => crate::audit::cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
