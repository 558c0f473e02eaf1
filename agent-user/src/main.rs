use std::process::ExitCode;

fn main() -> ExitCode {
    agentgate::cli::main()
}
