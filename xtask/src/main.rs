//! `cargo xtask setup|build|run|test|vm-test`: everything a fresh machine
//! needs, in one place, so that the README's quick start is two commands.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod bench;
mod daemon;
mod scenarios;
mod setup;
mod vm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh Debian machine lacks (apt packages, bpf-linker, virtme-ng), mount tracefs.
    Setup,
    /// Build the kernel programs and the `agentgate` binary (release).
    Build,
    /// Set up, build, and run the daemon with the shipped default policy.
    Run {
        /// Extra arguments for `agentgate daemon`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit, host kernel (fallback mode, real agents), VM kernel.
    Test,
    /// Boot a Debian kernel with BPF LSM in qemu and run the kernel tests inside it.
    VmTest,
    /// Run the benign workload corpus and our attacks, plain and under agentgate.
    Scenarios,
    /// Overhead side by side (no agent, agentgate, auditd), then criterion benchmarks.
    Bench,
}

fn main() {
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Run { args } => {
            setup::run()?;
            build()?;
            let bin = target_dir().join("release/agentgate");
            let mut cmd = Command::new(&bin);
            cmd.arg("daemon")
                .arg("--policy")
                .arg(workspace_root().join("policies"))
                .args(args);
            println!("xtask: running {}", display(&cmd));
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            bail!("cannot run {}: {err}", bin.display())
        }
        Task::Test => {
            setup::run()?;
            require_root("the kernel tests load eBPF programs")?;
            lint()?;
            // Everything is built before the VM boots: its guest runs the
            // binaries in the target dir while the host suite runs beside
            // it (the two together take about as long as the VM alone).
            cargo(&["test", "--workspace", "--all-targets", "--no-run"])?;
            let vm = vm::prepare()?;
            let vm_log = target_dir().join("vm-test.log");
            println!(
                "xtask: the VM suite runs beside the host suite; its output: {}",
                vm_log.display()
            );
            let guest = {
                let log = vm_log.clone();
                std::thread::spawn(move || vm.boot(Some(log.as_path())))
            };
            let host = cargo(&["test", "--workspace", "--all-targets"]).and_then(|()| {
                // The real-agent rig's scripted model APIs, without an agent.
                status(
                    Command::new("python3")
                        .args(["-m", "unittest", "tests/agents/test_model_server.py"])
                        .current_dir(workspace_root()),
                )
            });
            let guest = guest
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the VM suite's thread panicked")));
            println!("xtask: VM suite output ({}):", vm_log.display());
            print!("{}", std::fs::read_to_string(&vm_log).unwrap_or_default());
            host?;
            guest?;
            scenarios::run()
        }
        Task::VmTest => {
            setup::run()?;
            vm::run()
        }
        Task::Bench => {
            setup::run()?;
            require_root("the benchmark loads eBPF programs and audit rules")?;
            bench::run()
        }
        Task::Scenarios => {
            setup::run()?;
            require_root("the scenarios load eBPF programs and create a throwaway user")?;
            scenarios::run()
        }
    }
}

/// Formatting and clippy, warnings as errors, on every crate (the kernel
/// crate has its own workspace and toolchain: formatting only).
fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "fmt",
        "--manifest-path",
        "agent-ebpf/Cargo.toml",
        "--all",
        "--check",
    ])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn build() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "agent-user"])
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("{why}: run as root (e.g. `sudo -E cargo xtask …`)");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = display(cmd);
    let st = cmd.status().with_context(|| format!("running {shown}"))?;
    if !st.success() {
        bail!("`{shown}` failed ({st})");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    status(cargo_command().args(args))
}

/// Cargo in the workspace root. RocksDB's C++ is most of a cold build, and
/// `cargo clippy` compiles it a second time (its build-script units hash apart
/// from `cargo test`'s), so C and C++ go through ccache, kept in the target
/// dir. Every cargo call of xtask sets the same compilers: build scripts rerun
/// when CC or CXX change.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    if env::var_os("CC").is_none() && env::var_os("CXX").is_none() && setup::on_path("ccache") {
        cmd.env("CC", "ccache cc")
            .env("CXX", "ccache c++")
            .env("CCACHE_DIR", target_dir().join("ccache"));
    }
    cmd
}
