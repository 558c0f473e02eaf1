//! The kernel's pseudo file systems agentgate reads or pins on (tracefs,
//! securityfs, bpffs): mounted when they are not there yet, as a fresh
//! machine or a container's /sys may have them.
use std::{io, process::Command};

/// Mounts `fstype` on `target` unless `present()` already holds, and
/// checks that it holds afterwards.
pub fn ensure(fstype: &str, target: &str, present: impl Fn() -> bool) -> io::Result<()> {
    if present() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", fstype, fstype, target])
        .status()?;
    if !status.success() || !present() {
        return Err(io::Error::other(format!(
            "`mount -t {fstype} {fstype} {target}` exited with {status}"
        )));
    }
    Ok(())
}
