//! The guard itself: a process inside a session tries to stop, blind or
//! reprogram agentgate. LSM mode refuses each attempt (task_kill,
//! ptrace_access_check, bpf hooks) and the daemon keeps running and
//! logging. Fallback mode has no hook that can refuse these calls: the
//! seccomp layer `agentgate exec` puts under the agent refuses them there
//! (unreported by agentgate; the kernel's audit log has them). What neither
//! refuses (unpinning through bpffs in fallback mode) the README names,
//! and these tests hold the code to what it says.
use std::time::Duration;

use crate::support::*;

fn lsm(d: &Daemon) -> bool {
    d.status().starts_with("mode: lsm")
}

fn errno_of(out: &std::process::Output) -> i64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no errno= in {out:?}"))
}

#[test]
fn a_tagged_process_cannot_call_bpf() {
    let d = Daemon::start(&[]);
    // BPF_MAP_CREATE with an all-zero attribute: EINVAL when the call is
    // let through, EPERM when the guard (lsm) or the seccomp layer
    // (fallback) refuses it.
    let out = d.exec_sh(&format!(
        "{} -c 'import ctypes,os; libc=ctypes.CDLL(None, use_errno=True); a=ctypes.create_string_buffer(72); \
         r=libc.syscall(321, 0, a, 72); print(\"errno=\" + str(ctypes.get_errno() if r < 0 else 0))'",
        python()
    ));
    assert_eq!(errno_of(&out), libc::EPERM as i64, "{out:?}");
}

#[test]
fn a_tagged_process_cannot_trace_the_daemon() {
    let d = Daemon::start(&[]);
    let pid = d.pid();
    // PTRACE_ATTACH, then PTRACE_DETACH at once if it was let through.
    let out = d.exec_sh(&format!(
        "{} -c 'import ctypes,os,time; libc=ctypes.CDLL(None, use_errno=True); \
         r=libc.ptrace(16, {pid}, 0, 0); e=ctypes.get_errno() if r < 0 else 0; \
         time.sleep(0.2); r < 0 or libc.ptrace(17, {pid}, 0, 0); print(\"errno=\" + str(e))'",
        python()
    ));
    // The seccomp layer refuses ptrace in both modes.
    assert_eq!(errno_of(&out), libc::EPERM as i64, "{out:?}");
    assert!(d.status().contains("mode: "), "the daemon still serves");
}

#[test]
fn a_tagged_process_cannot_signal_the_daemon() {
    let mut d = Daemon::start(&[]);
    let pid = d.pid();
    let lsm_mode = lsm(&d);
    let out = d.exec_sh(&format!("kill -TERM {pid}; echo errno=$?"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(errno_of(&out), 1, "kill reports failure: {out:?}");
    assert!(d.alive(), "the daemon was stopped");
    // A thread of the daemon, named by its own id alone (tkill): a stop
    // would stop the whole daemon.
    let thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != pid)
        .expect("the daemon runs threads");
    let out = d.exec_sh(&format!(
        "{py} -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
         r = libc.syscall({nr}, {thread}, {stop}); print(\"errno=\" + str(ctypes.get_errno() if r < 0 else 0))'",
        py = python(),
        nr = libc::SYS_tkill,
        stop = libc::SIGSTOP,
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(errno_of(&out), 1, "tkill of a daemon thread: {out:?}");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = state.rsplit_once(") ").map(|(_, r)| &r[..1]);
    assert_ne!(state, Some("T"), "the daemon was stopped by tkill");
    // Fallback: the seccomp layer refused it before any hook saw it.
    if lsm_mode {
        let events = d.wait_for(Duration::from_secs(10), |ev| {
            ev.iter().any(|e| s(e, "kind") == "guard")
        });
        let guard: Vec<_> = events.iter().filter(|e| s(e, "kind") == "guard").collect();
        assert!(!guard.is_empty(), "the attempt was not reported");
        assert_eq!(s(guard[0], "target"), "signal:agentgate");
    }
}

/// New user or mount namespaces, mounts and chroot change what a path
/// names (a bind mount of a key onto an allowed path reads as that path):
/// a tagged process may not use them. LSM mode refuses user namespaces and
/// mounts with EPERM, fallback mode's seccomp layer refuses mounts; mount
/// namespaces and chroot, and user namespaces in fallback mode, kill the
/// caller at syscall entry (a killed fork is not created; a killed
/// unshare's namespace dies with it).
#[test]
fn a_tagged_process_cannot_leave_its_confinement() {
    let d = Daemon::start(&[]);
    let lsm_mode = lsm(&d);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = d.exec_sh(
        "unshare -U true; echo userns=$?; unshare -m true; echo mountns=$?; \
         chroot / true; echo chroot=$?",
    );
    let status = |o: &std::process::Output, name: &str| -> i32 {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {o:?}"))
    };
    if lsm_mode {
        assert_eq!(status(&out, "userns"), 1, "userns_create refuses: {out:?}");
    } else {
        assert_eq!(status(&out, "userns"), 137, "killed at unshare: {out:?}");
    }
    // No LSM hook refuses a new mount namespace: killed in both modes.
    assert_eq!(status(&out, "mountns"), 137, "killed at unshare: {out:?}");
    assert_eq!(status(&out, "chroot"), 137, "killed at chroot: {out:?}");

    // A mount, from a session opened inside a private mount namespace (so
    // that a mount the fallback kill cannot undo stays in there).
    let mount = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", AGENTGATE, "--socket"])
        .arg(&d.socket)
        .args(["exec", "--intent", "test", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none {}; echo mount=$?",
            path_str(&mnt)
        ))
        .output()
        .unwrap();
    assert_eq!(status(&mount, "mount"), 32, "{mount:?}");

    // Fallback mode's refused mount never reached a hook.
    let reported: &[&str] = if lsm_mode {
        &["unshare:namespace", "chroot", "mount"]
    } else {
        &["unshare:namespace", "chroot"]
    };
    let events = d.wait_for(Duration::from_secs(10), |ev| {
        ev.iter().filter(|e| s(e, "kind") == "guard").count() >= reported.len()
    });
    let targets: Vec<&str> = events
        .iter()
        .filter(|e| s(e, "kind") == "guard")
        .map(|e| s(e, "target"))
        .collect();
    for t in reported {
        assert!(targets.contains(t), "no guard event {t}: {targets:?}");
    }
    assert!(d.status().contains("mode: "), "the daemon still serves");

    let plain = std::process::Command::new("sh")
        .args(["-c", "unshare -U true; echo userns=$?"])
        .output()
        .unwrap();
    assert_eq!(status(&plain, "userns"), 0, "untagged unshare was touched");
}

/// Unpinning is an unlink on bpffs: with no daemon running, removing the
/// link pins would detach the programs. LSM mode refuses it to a tagged
/// process (`inode_unlink`); fallback mode cannot (the README says so).
#[test]
fn a_tagged_process_cannot_unpin_the_guard() {
    let d = Daemon::start(&[]);
    let lsm_mode = lsm(&d);
    let pins: Vec<std::path::PathBuf> = std::fs::read_dir(&d.pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("links"))
        .filter(|p| p.is_dir())
        .flat_map(|p| std::fs::read_dir(p).unwrap().filter_map(Result::ok))
        .map(|e| e.path())
        .collect();
    let pin = pins
        .iter()
        .find(|p| p.ends_with("sched_process_exec"))
        .unwrap_or_else(|| panic!("no sched_process_exec link pin in {pins:?}"));
    let out = d.exec_sh(&format!("rm -f {}; echo rm=$?", path_str(pin)));
    let rm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("rm="))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no rm= in {out:?}"));
    if lsm_mode {
        assert_eq!(rm, 1, "rm was let through: {out:?}");
        assert!(pin.exists(), "the pin is gone");
        let events = d.wait_for(Duration::from_secs(10), |ev| {
            ev.iter().any(|e| s(e, "target") == "unlink:bpffs")
        });
        assert!(
            events.iter().any(|e| s(e, "target") == "unlink:bpffs"),
            "the attempt was not reported"
        );
    } else {
        assert_eq!(rm, 0, "fallback mode was expected not to refuse the unlink");
        assert!(!pin.exists());
    }
}

/// Guard events count in a row of their own: `N` forked children of one
/// process each try chroot (killed at syscall entry, in both modes) and the
/// guard row counts `N` seen and emitted, while the exec row counts only
/// the session's two programs (the shell and the interpreter).
#[test]
fn guard_events_are_counted_apart_from_execs() {
    const N: u64 = 20;
    let d = Daemon::start(&[]);
    // `counter` fails the test when the status has no guard row.
    let guard = |st: &str, col: usize| counter(st, "guard", col);
    let before = d.status();
    let out = d.exec_sh(&format!(
        "exec {} -c 'import os\nfor _ in range({N}):\n    pid = os.fork()\n    if pid == 0:\n        \
         os.chroot(\"/\")\n        os._exit(0)\n    os.waitpid(pid, 0)\nprint(\"done\")'",
        python()
    ));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{out:?}"
    );
    d.wait_for(Duration::from_secs(10), |ev| {
        ev.iter().filter(|e| s(e, "kind") == "guard").count() as u64 >= N
    });
    let after = d.status();
    assert_eq!(
        guard(&after, 1) - guard(&before, 1),
        N,
        "guard seen:\n{after}"
    );
    assert_eq!(
        guard(&after, 2) - guard(&before, 2),
        N,
        "guard emitted:\n{after}"
    );
    assert_eq!(
        guard(&after, 4) - guard(&before, 4),
        N,
        "guard blocked:\n{after}"
    );
    // Each program is seen once (sched_process_exec), and in LSM mode once
    // more by bprm_check_security.
    let execs = counter(&after, "exec", 1) - counter(&before, "exec", 1);
    let per_exec = if lsm(&d) { 2 } else { 1 };
    assert_eq!(
        execs,
        2 * per_exec,
        "exec seen moved by the guard events:\n{before}\n{after}"
    );
}
