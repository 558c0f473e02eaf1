//! The contract between agentgate's kernel programs (`agent-ebpf`) and its daemon
//! (`agent-user`): map keys and values, event records and their codes.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on
//! the layout byte for byte; the `user` feature adds `aya::Pod` for map access.
#![no_std]

/// Session identifier. 0 is never a session: it means "untagged".
pub type SessionId = u64;

/// Value of the `TAGS` map, keyed by thread-group id (and, for threads created
/// inside a session, by thread id, which the fork hook cannot tell apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcTag {
    pub session: SessionId,
    /// Boot-clock nanoseconds at which the process was forked (or, for a
    /// session's launcher, its start time from /proc). With the pid this is the
    /// process's exec id: pid reuse cannot alias two processes.
    pub start_ns: u64,
    /// Thread-group id of the process that forked this one, at fork time.
    pub ppid: u32,
    pub _pad: u32,
}

/// What kind of record follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Open = 2,
    Connect = 3,
    Fork = 4,
    Exit = 5,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Open,
            3 => Self::Connect,
            4 => Self::Fork,
            5 => Self::Exit,
            _ => return None,
        })
    }
}

/// Hooks that keep counters, in `COUNTERS` order.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Exec = 0,
    Open = 1,
    Connect = 2,
    Fork = 3,
    Exit = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Exec,
        Hook::Open,
        Hook::Connect,
        Hook::Fork,
        Hook::Exit,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Exec => "exec",
            Hook::Open => "open",
            Hook::Connect => "connect",
            Hook::Fork => "fork",
            Hook::Exit => "exit",
        }
    }
}

/// Per-hook counters, in `COUNTERS` order. `Seen` counts calls from tagged
/// processes only: untagged calls return after one look-up and count nothing.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Seen = 0,
    Emitted = 1,
    /// The ring buffer was full: the event was lost, and this says so.
    Dropped = 2,
}

impl Counter {
    pub const ALL: [Counter; 3] = [Counter::Seen, Counter::Emitted, Counter::Dropped];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Emitted => "emitted",
            Counter::Dropped => "dropped",
        }
    }
}

pub const COUNTERS_LEN: u32 = (Hook::ALL.len() * Counter::ALL.len()) as u32;

pub const fn counter_index(hook: Hook, counter: Counter) -> u32 {
    hook as u32 * Counter::ALL.len() as u32 + counter as u32
}

/// Longest path read from user memory (PATH_MAX, with its NUL).
pub const PATH_MAX: usize = 4096;
/// Bytes of argv kept per exec event (NUL-separated arguments).
pub const ARGV_MAX: usize = 1024;
/// Longest single argument copied; longer ones are cut.
pub const ARG_MAX_EACH: usize = 256;
/// Arguments read per exec event.
pub const ARGC_MAX: usize = 32;
/// Size of a whole record buffer, header included. A power of two: the
/// kernel masks the length it sends with `EVENT_BUF_LEN - 1`, the one bound
/// every verifier version (6.1 included) follows through arithmetic.
pub const EVENT_BUF_LEN: usize = 8192;
/// Size of the variable part of an event: the path, then (exec only) argv at
/// `PATH_MAX`; the rest is slack that lets the verifier prove every bounded
/// copy stays inside the buffer.
pub const EVENT_DATA_LEN: usize = EVENT_BUF_LEN - EVENT_HEADER_LEN;
const _: () = assert!(EVENT_DATA_LEN >= PATH_MAX + ARGV_MAX + ARG_MAX_EACH);

/// Fixed part of every ring-buffer record. The kernel sends the header and
/// only the used part of `data` (`path_len`, or `PATH_MAX + argv_len`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// What the kernel did to the call (see [`KernelAction`]).
    pub kernel_action: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad0: u32,
    pub session: SessionId,
    /// With `pid`, the process's exec id (see [`ProcTag::start_ns`]).
    pub start_ns: u64,
    /// Boot-clock nanoseconds of the call.
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// exec and open: dirfd (AT_FDCWD for execve, open, creat); connect:
    /// socket fd; fork: child pid.
    pub arg0: i64,
    /// exec: execveat flags; open: open flags.
    pub arg1: i64,
    /// exec: arguments read; open: mode; connect: addrlen.
    pub arg2: i64,
    /// connect: AF_INET, AF_INET6 or AF_UNIX (0 when unreadable).
    pub family: u16,
    /// connect: port in host byte order.
    pub port: u16,
    /// Bytes of `data` holding the path, without its NUL.
    pub path_len: u16,
    /// exec: bytes of argv at `data[PATH_MAX..]`.
    pub argv_len: u16,
    /// connect: the IPv4 (first 4 bytes) or IPv6 address.
    pub addr: [u8; 16],
}

pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// A whole record as the kernel builds it in per-CPU scratch space.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBuf {
    pub header: EventHeader,
    pub data: [u8; EVENT_DATA_LEN],
}

/// What the kernel did when it saw the call.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAction {
    /// Observed and let through.
    Observed = 0,
}

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Offsets into tracepoint records that differ between kernels, read from
/// tracefs at load time and set as globals (see TOOLCHAIN.md §4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointLayout {
    /// `sched_process_fork.child_pid`.
    pub fork_child_pid: u32,
    /// `sched_process_exit.group_dead`, or 0 when the kernel lacks it (6.1):
    /// then the exit hook leaves the tag for the fork hook to overwrite when
    /// the pid is reused, since deleting on the exit of any one thread would
    /// let the remaining threads out of the session.
    pub exit_group_dead: u32,
    pub _pad: [u32; 2],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), built only of integers and byte
    // arrays, with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for super::ProcTag {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::TracepointLayout {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn header_has_no_implicit_padding() {
        // Sum of the field sizes: a change that adds padding breaks this.
        let fields = 8 * 4 + 4 * 8 + 16 + 3 * 8 + 4 * 2 + 16;
        assert_eq!(EVENT_HEADER_LEN, fields);
        assert_eq!(EVENT_HEADER_LEN % 8, 0);
        assert_eq!(core::mem::size_of::<ProcTag>(), 24);
        assert_eq!(core::mem::size_of::<EventBuf>(), EVENT_BUF_LEN);
    }

    #[test]
    fn counter_indices_are_dense_and_distinct() {
        let mut seen = [false; COUNTERS_LEN as usize];
        for h in Hook::ALL {
            for c in Counter::ALL {
                let i = counter_index(h, c) as usize;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
