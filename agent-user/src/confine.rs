//! The session's seccomp layer: what `agentgate exec` puts under the agent
//! just before it execs it.
//!
//! The kernel programs judge by what a call reaches; some calls reach outside
//! the session whatever their arguments, and fallback mode can only kill the
//! caller after they ran (a mount stays mounted, a pinned map is already
//! changed), or never sees them (raw and netlink sockets, ptrace of another
//! process). A seccomp filter refuses those with EPERM before they run, in
//! both modes. It is inherited by every descendant, cannot be removed, and
//! costs nothing outside the session.
//!
//! Seccomp sees only a call's number and its register arguments: nothing
//! behind a pointer (a sockaddr, clone3's flags, a path). Those stay with the
//! kernel programs. Sessions opened another way (a cgroup) have no such
//! layer.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("no seccomp filter for this architecture ({0})")]
    Arch(&'static str),
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("installing the seccomp filter: {0}")]
    Install(std::io::Error),
    #[error("dropping {cap} from the capability bounding set: {err}")]
    DropCap {
        cap: caps::Capability,
        err: caps::errors::CapsError,
    },
}

/// Calls refused whatever their arguments, in both modes: tracing and
/// reading other processes (fallback mode has no hook for them), and
/// changing mounts that exist (unmounting bpffs drops the pins; no hook
/// judges either).
const REFUSED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_umount2,
    libc::SYS_mount_setattr,
];

/// Refused in fallback mode only: calls whose effect outlives the SIGKILL
/// the guard programs send at their entry (a mount stays mounted, a pinned
/// map is changed, the daemon is stopped). LSM mode refuses them in its own
/// hooks and reports them as guard events; calls the guard's kill does stop
/// in time (new namespaces, chroot, io_uring, file handles, detached trees)
/// are left to it, which reports them.
/// `tkill` names a thread by its id alone, and a daemon thread's id is not
/// the daemon's pid: the obsolete call is refused outright (libcs and Go
/// signal threads with `tgkill`, which names the process).
const REFUSED_IN_FALLBACK: &[i64] = &[
    libc::SYS_bpf,
    libc::SYS_mount,
    libc::SYS_move_mount,
    libc::SYS_pivot_root,
    libc::SYS_tkill,
];

/// Capabilities a session's root gives up for good (bounding set): network
/// configuration (netlink writes), raw sockets, tracing, and code in the
/// kernel. The filter refuses the calls; these make sure no program the
/// agent execs gets them back through a file capability either.
const DROPPED_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SYS_PTRACE,
    caps::Capability::CAP_SYS_MODULE,
    caps::Capability::CAP_SYS_RAWIO,
    caps::Capability::CAP_BPF,
    caps::Capability::CAP_PERFMON,
    caps::Capability::CAP_SYS_BOOT,
];

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .expect("argument indexes are below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("every rule has a condition")
}

/// What the daemon told the session's first process.
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    /// The daemon's pid (0: unknown, no signal rules).
    pub daemon_pid: u32,
    /// Whether the kernel's LSM hooks judge (they refuse the calls in
    /// `REFUSED_IN_FALLBACK` themselves).
    pub lsm: bool,
}

/// The filter for a session under `guard`.
pub fn filter(guard: Guard) -> Result<BpfProgram, ConfineError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| ConfineError::Arch(std::env::consts::ARCH))?;
    let fallback: &[i64] = if guard.lsm { &[] } else { REFUSED_IN_FALLBACK };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = REFUSED
        .iter()
        .chain(fallback)
        .map(|&nr| (nr, Vec::new()))
        .collect();

    // Raw and packet sockets bypass the connect hooks; netlink other than
    // NETLINK_ROUTE reaches audit, netfilter, xfrm, uevents. NETLINK_ROUTE
    // stays: getaddrinfo and getifaddrs read interfaces through it, and
    // writing through it needs CAP_NET_ADMIN, which the session gives up.
    let raw = |family: i32| {
        rule(vec![
            arg(0, SeccompCmpOp::Eq, family as u64),
            arg(1, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_RAW as u64),
        ])
    };
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![arg(0, SeccompCmpOp::Eq, libc::AF_PACKET as u64)]),
            raw(libc::AF_INET),
            raw(libc::AF_INET6),
            rule(vec![
                arg(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64),
                arg(2, SeccompCmpOp::Ne, libc::NETLINK_ROUTE as u64),
            ]),
        ],
    );

    if !guard.lsm && guard.daemon_pid != 0 {
        let pid = u64::from(guard.daemon_pid);
        // kill(-pid) is the daemon's process group, kill(-1) every process.
        let group = u64::from((guard.daemon_pid as i32).wrapping_neg() as u32);
        let everyone = u64::from(u32::MAX);
        let first_is = |values: &[u64]| -> Vec<SeccompRule> {
            values
                .iter()
                .map(|&v| rule(vec![arg(0, SeccompCmpOp::Eq, v)]))
                .collect()
        };
        rules.insert(libc::SYS_kill, first_is(&[pid, group, everyone]));
        for nr in [
            libc::SYS_tgkill,
            libc::SYS_rt_sigqueueinfo,
            libc::SYS_rt_tgsigqueueinfo,
            libc::SYS_pidfd_open,
        ] {
            rules.insert(nr, first_is(&[pid]));
        }
    }

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Puts the layer under the calling thread: capabilities first (dropping
/// needs CAP_SETPCAP, which only a root session has; others cannot gain them
/// back under no_new_privs), then no_new_privs, then the filter, logged by
/// the kernel's audit (`journalctl -k`, type SECCOMP) when it refuses.
pub fn install(guard: Guard) -> Result<(), ConfineError> {
    let program = filter(guard)?;
    if caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
    {
        for &cap in DROPPED_CAPS {
            for set in [caps::CapSet::Bounding, caps::CapSet::Inheritable] {
                caps::drop(None, set, cap).map_err(|err| ConfineError::DropCap { cap, err })?;
            }
        }
        caps::clear(None, caps::CapSet::Ambient).map_err(|err| ConfineError::DropCap {
            cap: caps::Capability::CAP_SETPCAP,
            err,
        })?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).expect("the filter has fewer than 65536 instructions"),
        // seccompiler's sock_filter is the kernel's struct sock_filter.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points into `program`, alive for the call; the kernel
    // copies the filter.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_LOG,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(ConfineError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_mode_refuses_more_than_lsm_mode() {
        let lsm = filter(Guard {
            daemon_pid: 4242,
            lsm: true,
        })
        .unwrap();
        let fallback = filter(Guard {
            daemon_pid: 4242,
            lsm: false,
        })
        .unwrap();
        let unknown = filter(Guard {
            daemon_pid: 0,
            lsm: false,
        })
        .unwrap();
        assert!(
            fallback.len() > unknown.len(),
            "signal rules add instructions"
        );
        assert!(
            unknown.len() > lsm.len(),
            "fallback-only calls add instructions"
        );
    }
}
