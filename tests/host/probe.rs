//! The mode probe's answer is what the kernel actually does. aya's own
//! feature probe (a trivial LSM program, loaded and attached by other code
//! than ours) is the witness: lsm mode iff the kernel takes LSM programs.
//! The VM suite sets AGENTGATE_EXPECT_MODE=lsm, so a guest that silently
//! fell back fails here instead of passing every test in fallback mode.
use std::process::Command;

use aya::{
    programs::{LsmAttachType, ProgramType},
    sys::is_program_supported,
};

use crate::support::*;

/// The indented line under `mode: …` in `agentgate status`.
fn mode_detail(status: &str) -> &str {
    status.lines().nth(1).unwrap_or("").trim()
}

#[test]
fn auto_mode_matches_what_the_kernel_loads() {
    let d = Daemon::start(&[]);
    let status = d.status();
    let mode = status.lines().next().unwrap_or("").to_owned();
    let kernel_takes_lsm = matches!(
        is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)),
        Ok(true)
    );
    if let Ok(expected) = std::env::var("AGENTGATE_EXPECT_MODE") {
        assert_eq!(mode, format!("mode: {expected}"), "{status}");
    }
    let detail = mode_detail(&status);
    if kernel_takes_lsm {
        assert_eq!(mode, "mode: lsm", "{status}");
        assert!(
            detail.starts_with(
                "BPF LSM works: a probe program on file_open loaded, attached and ran"
            ),
            "{status}"
        );
        assert!(status.contains("lsm/file_open"), "{status}");
        assert!(status.contains("  lsm: works"), "{status}");
        return;
    }
    assert_eq!(mode, "mode: fallback", "{status}");
    assert!(
        !status.contains("lsm/"),
        "no LSM program may be attached: {status}"
    );
    let reason = detail.split("; ").next().unwrap();
    let listed = std::fs::read_to_string("/sys/kernel/security/lsm")
        .unwrap_or_default()
        .trim()
        .split(',')
        .any(|l| l == "bpf");
    if listed {
        // This host's case: `bpf` listed, LSM programs refused (lockdown).
        assert!(
            reason.starts_with("bpf is in the LSM list (")
                && reason.contains(") but the kernel refused an LSM program at load: "),
            "{status}"
        );
    }
    // `--mode lsm` is refused with the very same reason, and the hint to
    // add `bpf` to lsm= only where `bpf` is missing from the list.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENTGATE)
        .arg("daemon")
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--pin-dir")
        .arg("/sys/fs/bpf/agentgate-test-probe-refused")
        .arg("--policy")
        .arg(test_policy("observe.yaml"))
        .args(["--mode", "lsm", "--log", "json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "--mode lsm must be refused here: {err}"
    );
    assert!(
        err.contains(&format!("--mode lsm: {reason}")),
        "{err}\nstatus:\n{status}"
    );
    assert_eq!(err.contains("lsm="), !listed, "{err}");
    assert!(
        !std::path::Path::new("/sys/fs/bpf/agentgate-test-probe-refused").exists(),
        "a refused start pins nothing"
    );
}
