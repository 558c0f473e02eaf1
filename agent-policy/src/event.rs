//! The event model the engine judges: one call by a process in a session,
//! with what it acts on and what the kernel already did about it. The
//! daemon's `events` module decodes ring-buffer records into these.
use std::{net::SocketAddr, path::PathBuf};

use agent_common::{ENFORCED_KILLED, ENFORCED_REFUSED, EventHeader, SessionId, Verdict};
use serde::Serialize;

/// The process that made the call, as far as the kernel and /proc tell.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// With `pid`, the exec id: identifies the process across pid reuse.
    pub start_ns: u64,
    pub comm: String,
    /// Executable, from /proc (None once the process is gone).
    pub exe: Option<PathBuf>,
    /// Working directory at the time the record was read.
    pub cwd: Option<PathBuf>,
    pub cgroup_id: u64,
    /// Executables of the ancestors still in the session, nearest first.
    pub ancestors: Vec<PathBuf>,
}

impl Process {
    pub fn exec_id(&self) -> String {
        format!("{}:{}", self.pid, self.start_ns)
    }
}

/// Where a connect goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectAddr {
    Inet(SocketAddr),
    /// A filesystem path, or `@name` for the abstract namespace.
    Unix(PathBuf),
    /// Another address family (number), not judged by address.
    Other(u16),
}

/// What the call acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Exec {
        /// Absolute, symlink-free path of the new image where it could be
        /// resolved, else the path as passed.
        path: PathBuf,
        /// The path as the process passed it.
        raw_path: PathBuf,
        argv: Vec<String>,
        /// execveat: the dirfd; execve: AT_FDCWD (-100).
        dirfd: i32,
    },
    Open {
        /// Absolute path: relative ones are resolved against the process's cwd
        /// (or the dirfd's path). Not symlink-resolved: rules see what was
        /// named.
        path: PathBuf,
        raw_path: PathBuf,
        dirfd: i32,
        flags: i32,
        mode: u32,
    },
    Connect {
        addr: ConnectAddr,
    },
    Fork {
        child: u32,
    },
    Exit,
    /// An attempt on agentgate itself, refused by the kernel: `signal`,
    /// `ptrace` or `bpf()`.
    Guard {
        attempt: String,
    },
}

/// One call by a process in a session, decoded and enriched.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub session: SessionId,
    /// Nanoseconds since the boot clock's epoch.
    pub time_ns: u64,
    pub process: Process,
    #[serde(flatten)]
    pub target: Target,
    pub kernel: KernelVerdict,
}

/// What the kernel decided on the call, and what it did about it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct KernelVerdict {
    /// `none` when the kernel had no say (no policy, or a path only user
    /// space can judge).
    pub verdict: &'static str,
    /// `none`, `refused` (EPERM) or `killed` (SIGKILL).
    pub enforced: &'static str,
    /// The compiled rule's id (0: none or the session default).
    pub rule: u32,
}

impl KernelVerdict {
    pub fn of(h: &EventHeader) -> Self {
        Self {
            verdict: Verdict::from_u8(h.verdict).name(),
            enforced: match h.enforced {
                ENFORCED_REFUSED => "refused",
                ENFORCED_KILLED => "killed",
                _ => "none",
            },
            rule: h.rule,
        }
    }
}
