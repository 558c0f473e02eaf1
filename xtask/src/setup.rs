//! Idempotent set-up of a fresh Debian machine: each step checks first and
//! says what it did.
use std::{path::Path, process::Command};

use anyhow::bail;

use crate::status;

/// Where the real agents of tests/agents are installed.
pub const AGENTS_DIR: &str = "/usr/local/lib/agentgate-agents";

/// Debian packages, and why each is needed (see ../shared/TOOLCHAIN.md).
const APT: &[(&str, &str)] = &[
    ("rustc-web", "rustc 1.96 that can target bpfel-unknown-none"),
    ("cargo-web", "its cargo"),
    (
        "libstd-rust-web-dev-bpf",
        "precompiled core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker's LLVM link"),
    ("clang-22", "bpf-linker's LLVM link"),
    ("libclang-dev", "bindgen for librocksdb-sys"),
    (
        "ccache",
        "RocksDB's C++, compiled once for clippy and once for the tests",
    ),
    ("qemu-system-x86", "the VM that runs the BPF LSM tests"),
    (
        "linux-image-amd64",
        "a Debian kernel with CONFIG_BPF_LSM for the VM",
    ),
    ("python3-yaml", "the scenario harness"),
    (
        "systemd",
        "systemd-journald and journalctl for verdict tests",
    ),
    (
        "busybox-static",
        "virtme-ng builds the guest's initramfs with it",
    ),
    (
        "auditd",
        "the baseline `cargo xtask bench` compares against",
    ),
    ("curl", "the scenario corpus"),
    (
        "iproute2",
        "the scenario harness's private network namespace",
    ),
    (
        "libnss-systemd",
        "the trust tests' user that only the user database knows",
    ),
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
    } else {
        if !Path::new("/usr/bin/apt-get").exists() {
            for (p, why) in APT.iter().filter(|(p, _)| missing.contains(p)) {
                eprintln!("  missing {p}: {why}");
            }
            bail!("not a Debian machine: install the packages above by their local names");
        }
        crate::require_root("installing apt packages")?;
        println!("setup: installing {}", missing.join(" "));
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }

    // `cargo xtask test` checks formatting and clippy first.
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let present = Command::new("cargo")
            .args([probe, "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            println!("setup: {component} present");
        } else {
            println!("setup: adding the {component} component");
            status(Command::new("rustup").args(["component", "add", component]))?;
        }
    }

    let home_linker = std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/bpf-linker"));
    if on_path("bpf-linker") || home_linker.is_ok_and(|p| p.exists()) {
        println!("setup: bpf-linker present");
    } else {
        println!("setup: building bpf-linker against LLVM 22 (about a minute)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        status(
            Command::new("cargo")
                .env("PATH", path)
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
                .args(["install", "--locked", "bpf-linker", "--version", "0.13.0"])
                .args(["--no-default-features", "--features", "llvm-22"]),
        )?;
    }

    if on_path("vng") {
        println!("setup: virtme-ng present");
    } else {
        println!("setup: installing virtme-ng");
        status(Command::new("python3").args(["-m", "pip", "install", "-q", "virtme-ng==1.42"]))?;
    }

    if on_path("npm") {
        println!("setup: npm present");
    } else {
        println!(
            "setup: installing nodejs and npm (the real agents of tests/agents come from npm)"
        );
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "nodejs",
                    "npm",
                ]),
        )?;
    }
    // Where a user's `npm install` would put them (/usr/local/lib, in the
    // shipped exec scope), not in the npm tree of the machine; the harness
    // skips what is there already.
    println!("setup: real agents (Claude Code, Codex) in {AGENTS_DIR}");
    status(
        Command::new("python3")
            .arg(crate::workspace_root().join("tests/agents/run_agents.py"))
            .args(["--install", "--cache", AGENTS_DIR]),
    )?;

    if Path::new("/sys/kernel/tracing/events").is_dir() {
        println!("setup: tracefs mounted");
    } else {
        println!("setup: mounting tracefs on /sys/kernel/tracing");
        status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}
