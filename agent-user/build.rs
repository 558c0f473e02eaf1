//! Builds the kernel programs (`agent-ebpf`) for `bpfel-unknown-none` and
//! hands the objects to the daemon through `AGENTGATE_EBPF_OBJ` (the
//! programs), `AGENTGATE_LSM_PROBE_OBJ` (the mode probe's LSM program) and
//! `AGENTGATE_DECIDE_TEST_OBJ` (the decision code under BPF_PROG_TEST_RUN,
//! for the kernel tests).
//!
//! Two toolchains can do it (../shared/TOOLCHAIN.md §1): Debian's rustc-web
//! with its precompiled `core` for the BPF target, or rustup nightly with
//! rust-src (`-Z build-std`). Both need bpf-linker. The first one found wins.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup`, or install by hand: \
    `apt-get install rustc-web cargo-web libstd-rust-web-dev-bpf` and \
    `cargo install bpf-linker` (see ../shared/TOOLCHAIN.md), \
    or `rustup toolchain install nightly --component rust-src` and `cargo install bpf-linker`";

enum Toolchain {
    /// Debian's rustc-web: precompiled core for bpfel-unknown-none.
    Debian,
    /// rustup nightly with rust-src.
    Nightly,
}

fn detect() -> Result<Toolchain, String> {
    let linker = which("bpf-linker");
    if linker.is_none() {
        return Err(format!("bpf-linker not found in PATH; {SETUP_HINT}"));
    }
    if Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").exists()
    {
        return Ok(Toolchain::Debian);
    }
    let nightly_src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").exists());
    if nightly_src {
        return Ok(Toolchain::Nightly);
    }
    Err(format!(
        "no Rust compiler for bpfel-unknown-none found; {SETUP_HINT}"
    ))
}

fn which(bin: &str) -> Option<PathBuf> {
    let home_bin = env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(home_bin)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("agent-ebpf");
    for p in ["src", "Cargo.toml", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("agent-common/src").display()
    );

    let toolchain = detect().unwrap_or_else(|e| {
        println!("cargo:warning=cannot build the kernel programs: {e}");
        std::process::exit(1);
    });
    // Build beside the outer target dir so that repeated builds are cached,
    // one dir per checkout: clones sharing a target dir (CI, worktrees) must
    // not overwrite each other's kernel object.
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let checkout = root
        .to_string_lossy()
        .trim_matches('/')
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let target_dir = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .map(|t| t.join("ebpf").join(&checkout))
        .unwrap_or_else(|| out.join("ebpf"));

    let mut cmd = match toolchain {
        Toolchain::Debian => Command::new("/usr/bin/cargo"),
        Toolchain::Nightly => Command::new("rustup"),
    };
    // The outer cargo's settings are for the host compiler: drop them.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") || k.starts_with("RUSTC") || k == "RUSTFLAGS" || k == "RUSTDOC" {
            cmd.env_remove(&*k);
        }
    }
    match toolchain {
        Toolchain::Debian => {
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .arg("build");
        }
        Toolchain::Nightly => {
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
        }
    }
    if let Some(dir) = which("bpf-linker").and_then(|p| p.parent().map(Path::to_path_buf)) {
        let path = env::join_paths(
            std::iter::once(dir).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        cmd.env("PATH", path);
    }
    cmd.current_dir(&ebpf_dir)
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    let status = cmd.status().expect("run cargo for agent-ebpf");
    if !status.success() {
        println!("cargo:warning=building agent-ebpf failed; {SETUP_HINT}");
        std::process::exit(1);
    }
    let bins = target_dir.join("bpfel-unknown-none/release");
    println!(
        "cargo:rustc-env=AGENTGATE_EBPF_OBJ={}",
        bins.join("agent-ebpf").display()
    );
    println!(
        "cargo:rustc-env=AGENTGATE_LSM_PROBE_OBJ={}",
        bins.join("lsm-probe").display()
    );
    println!(
        "cargo:rustc-env=AGENTGATE_DECIDE_TEST_OBJ={}",
        bins.join("decide-test").display()
    );
}
