//! The event model the engine judges: one call by a process in a session,
//! with what it acts on and what the kernel already did about it. The
//! daemon's `events` module decodes ring-buffer records into these.
use std::{net::SocketAddr, path::PathBuf};

use agent_common::{ENFORCED_KILLED, ENFORCED_REFUSED, EventHeader, FileOp, SessionId, Verdict};
use serde::{Serialize, Serializer};

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
        /// Absolute, symlink-free path of the new image: the kernel's when
        /// it resolved it (`PATH_RESOLVED`), else resolved here where it
        /// could be, else the path as passed.
        path: PathBuf,
        /// The path as the process passed it (the resolved one when the
        /// kernel sends only that).
        raw_path: PathBuf,
        argv: Vec<String>,
        /// execveat: the dirfd; execve: AT_FDCWD (-100).
        dirfd: i32,
    },
    Open {
        /// Absolute path. When the kernel resolved it (`PATH_RESOLVED`) it
        /// is the file the open reached: symlinks, `..`, the dirfd and
        /// `/proc/self/fd` already followed. Otherwise a relative path is
        /// resolved against the process's cwd (or the dirfd's path),
        /// lexically, not following symlinks: rules see what was named.
        path: PathBuf,
        /// The path as the process passed it (the resolved one when the
        /// kernel sends only that).
        raw_path: PathBuf,
        dirfd: i32,
        flags: i32,
        mode: u32,
    },
    Connect {
        addr: ConnectAddr,
    },
    /// A change to the file system other than an open, judged as file
    /// accesses on its paths (see `engine::change_access`).
    Change {
        #[serde(serialize_with = "op_name")]
        op: FileOp,
        /// What the call acts on: a rename's or a link's source, a
        /// symlink's new name, the file or directory otherwise. The file the
        /// kernel reached (`PATH_RESOLVED`), or its last components after
        /// `…` when the kernel's walk stopped short (`PATH_PARTIAL`).
        path: PathBuf,
        /// A rename's or a link's new name (judged, like `path`); a
        /// symlink's contents as written (not judged: the link may name
        /// anything, what reaches it through the link is judged then).
        to: Option<PathBuf>,
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

/// A file op as its name (`rename`, `unlink`, …).
fn op_name<S: Serializer>(op: &FileOp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(op.name())
}

/// The file op of this name (see [`FileOp::name`]).
pub fn file_op_named(name: &str) -> Option<FileOp> {
    FileOp::ALL.into_iter().find(|op| op.name() == name)
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
