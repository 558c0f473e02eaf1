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
    /// A tagged process went for the guard itself (signal, ptrace, bpf());
    /// the path says which.
    Guard = 6,
    /// A change to the file system other than an open: `arg1` is the
    /// [`FileOp`], the path is the object (rename, link: the source), and
    /// `data[PATH_MAX..][..argv_len]` holds the second path, if any (rename,
    /// link: the new name; symlink: the link's contents as written).
    Change = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Open,
            3 => Self::Connect,
            4 => Self::Fork,
            5 => Self::Exit,
            6 => Self::Guard,
            7 => Self::Change,
            _ => return None,
        })
    }
}

/// The change an [`EventKind::Change`] record reports (its `arg1`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Both ends are judged: the source is written (it goes away), the new
    /// name is written and created.
    Rename = 1,
    /// A new name for an existing file: the file is judged as read and
    /// written (the link reaches it), the new name as created.
    Link = 2,
    /// The new name is created; its contents are not judged.
    Symlink = 3,
    Unlink = 4,
    Rmdir = 5,
    Mkdir = 6,
    Mknod = 7,
    Truncate = 8,
    Chmod = 9,
    Chown = 10,
    /// A new regular file (`open` with `O_CREAT`, or `mknod` of a regular
    /// file), judged in LSM mode before it exists (`path_mknod`); the open
    /// that follows is reported as an open.
    Create = 11,
}

impl FileOp {
    pub const ALL: [FileOp; 11] = [
        FileOp::Rename,
        FileOp::Link,
        FileOp::Symlink,
        FileOp::Unlink,
        FileOp::Rmdir,
        FileOp::Mkdir,
        FileOp::Mknod,
        FileOp::Truncate,
        FileOp::Chmod,
        FileOp::Chown,
        FileOp::Create,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u32 == v)
    }

    pub const fn name(self) -> &'static str {
        match self {
            FileOp::Rename => "rename",
            FileOp::Link => "link",
            FileOp::Symlink => "symlink",
            FileOp::Unlink => "unlink",
            FileOp::Rmdir => "rmdir",
            FileOp::Mkdir => "mkdir",
            FileOp::Mknod => "mknod",
            FileOp::Truncate => "truncate",
            FileOp::Chmod => "chmod",
            FileOp::Chown => "chown",
            FileOp::Create => "create",
        }
    }

    /// Whether the record carries a second path.
    pub const fn has_second_path(self) -> bool {
        matches!(self, FileOp::Rename | FileOp::Link | FileOp::Symlink)
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
    /// Attempts on the guard or on the session's confinement
    /// ([`EventKind::Guard`]), whichever hook caught them.
    Guard = 5,
    /// Changes to the file system other than opens ([`EventKind::Change`]).
    Change = 6,
}

impl Hook {
    pub const ALL: [Hook; 7] = [
        Hook::Exec,
        Hook::Open,
        Hook::Connect,
        Hook::Fork,
        Hook::Exit,
        Hook::Guard,
        Hook::Change,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Exec => "exec",
            Hook::Open => "open",
            Hook::Connect => "connect",
            Hook::Fork => "fork",
            Hook::Exit => "exit",
            Hook::Guard => "guard",
            Hook::Change => "change",
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
    /// The kernel refused the call or killed the caller.
    Blocked = 3,
}

impl Counter {
    pub const ALL: [Counter; 4] = [
        Counter::Seen,
        Counter::Emitted,
        Counter::Dropped,
        Counter::Blocked,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Emitted => "emitted",
            Counter::Dropped => "dropped",
            Counter::Blocked => "blocked",
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
    /// The kernel's [`Verdict`] on the call (`None`: it had no say).
    pub verdict: u8,
    /// One of `ENFORCED_*`: what the kernel did with the verdict.
    pub enforced: u8,
    /// `PATH_*` bits: how the path was found.
    pub path_flags: u8,
    pub _pad0: u8,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Id of the rule behind `verdict` (0: none, or the session default).
    pub rule: u32,
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

/// The path is the file the call reached, resolved by the kernel (a walk
/// of its dentries and mounts, or `bpf_d_path`): symlinks, `..` and
/// descriptors already followed.
pub const PATH_RESOLVED: u8 = 1;
/// The kernel's walk stopped before the root (the path is longer than its
/// buffer): the path is only its last components, and was not judged.
pub const PATH_PARTIAL: u8 = 2;
/// A change record's second path is partial (as [`PATH_PARTIAL`] for the
/// first). The other bits speak for the first path only; an absolute path
/// with neither bit is the kernel's directory and the name as written.
pub const PATH_SECOND_PARTIAL: u8 = 4;

pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// A whole record as the kernel builds it in per-CPU scratch space.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBuf {
    pub header: EventHeader,
    pub data: [u8; EVENT_DATA_LEN],
}

/// The call went through (allowed, or audit-only mode).
pub const ENFORCED_NONE: u8 = 0;
/// The call was refused with EPERM.
pub const ENFORCED_REFUSED: u8 = 1;
/// The process was sent SIGKILL (and, where the hook can, refused).
pub const ENFORCED_KILLED: u8 = 2;

// ---- enforcement: the compiled policy as map contents --------------------
//
// The daemon compiles the policy once per session (so that `~` and
// `${workspace}` are that session's) into a *ruleset*: entries of the maps
// below keyed by the ruleset id. The kernel looks a call up, takes the
// strongest verdict of the entries that match, and falls back to the
// session's default for that access when nothing matches.

/// What is done to a call. Larger wins when several rules match: deny and
/// kill over refer over audit over allow (audit is allow, recorded).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// No rule matched (an unused slot).
    None = 0,
    Allow = 1,
    Audit = 2,
    /// Denied now; a human may grant it (a referral).
    Refer = 3,
    Deny = 4,
    /// Denied and the process killed.
    Kill = 5,
}

impl Verdict {
    /// `self` from `rule` wins over `other` from `other_rule`: the stronger
    /// verdict, and between equals the rule written first (lower id). The
    /// kernel's look-ups, the compiler and the engine all decide by this.
    pub const fn wins(self, rule: u32, other: Self, other_rule: u32) -> bool {
        self as u8 > other as u8 || (self as u8 == other as u8 && rule < other_rule)
    }

    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Allow,
            2 => Self::Audit,
            3 => Self::Refer,
            4 => Self::Deny,
            5 => Self::Kill,
            _ => Self::None,
        }
    }

    /// The policy language's word for it (`none` for no verdict).
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Allow => "allow",
            Self::Audit => "audit",
            Self::Refer => "refer",
            Self::Deny => "deny",
            Self::Kill => "kill",
        }
    }

    /// The call is refused.
    pub const fn blocks(self) -> bool {
        matches!(self, Self::Refer | Self::Deny | Self::Kill)
    }
}

/// What a path rule is about. An open looks up every access its flags ask
/// for (O_RDWR|O_CREAT: read, write and create) and takes the strongest.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read = 0,
    Write = 1,
    Create = 2,
    /// The path of a new program image.
    Exec = 3,
    /// The path of a unix socket connected to.
    ConnectUnix = 4,
    /// An inet address connected to (`NET_RULES`, not `PATH_RULES`).
    ConnectInet = 5,
}

pub const ACCESS_COUNT: usize = 6;

/// Bytes of path in a rule key. The LPM trie takes at most 256 bytes of
/// key data, and the ruleset id and access use 5 of them; paths are
/// matched on their first `RULE_PATH_LEN` bytes (longer paths can still match
/// prefix rules, never exact ones).
pub const RULE_PATH_LEN: usize = 251;

/// Key data of `PATH_RULES` (path prefixes) and `PATH_SUFFIX_RULES` (the
/// path reversed, for suffixes such as `*.pem`). The LPM prefix length
/// counts bits from `ruleset` on: see [`path_prefix_bits`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRuleKey {
    pub ruleset: u32,
    pub access: u8,
    pub path: [u8; RULE_PATH_LEN],
}

/// LPM prefix length for a key whose path is significant for `path_bytes`
/// bytes. An exact path counts its NUL terminator (`len + 1`), so that it
/// does not match longer paths; a prefix (`/home/u/.ssh/`) does not.
pub const fn path_prefix_bits(path_bytes: usize) -> u32 {
    ((5 + path_bytes) * 8) as u32
}

/// Key data of `NET_RULES`: IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`), so `::ffff:127.0.0.1` and `127.0.0.1` are one
/// address. `port` 0 means any port; the kernel looks up the real port and
/// 0 and takes the strongest verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRuleKey {
    pub ruleset: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

/// LPM prefix length for a `NET_RULES` key with an `addr_bits`-bit network
/// (an IPv4 /n is `96 + n`).
pub const fn net_prefix_bits(addr_bits: u32) -> u32 {
    64 + addr_bits
}

/// Conditional verdicts per rule entry.
pub const RULE_SLOTS: usize = 4;

/// One rule's verdict on a key, and the session labels it depends on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSlot {
    /// Applies only when the session has every one of these labels.
    pub require: u64,
    /// Applies only when the session has none of these labels.
    pub forbid: u64,
    /// Labels added to the session when the call goes through.
    pub set_labels: u64,
    /// The rule's id in the compiled policy (0: none).
    pub rule: u32,
    /// A [`Verdict`].
    pub verdict: u8,
    pub _pad: [u8; 3],
}

impl RuleSlot {
    pub const fn applies(&self, labels: u64) -> bool {
        self.verdict != Verdict::None as u8
            && labels & self.require == self.require
            && labels & self.forbid == 0
    }
}

/// Value of `PATH_RULES`, `PATH_SUFFIX_RULES` and `NET_RULES`: the rules on
/// one key. The compiler folds every less specific rule that also covers the
/// key into it, so that the longest match alone gives the right answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    pub slots: [RuleSlot; RULE_SLOTS],
}

/// The session is past its TTL: every call is refused.
pub const SESSION_EXPIRED: u32 = 1;
/// Past its TTL, and its processes are killed on their next call.
pub const SESSION_EXPIRED_KILL: u32 = 2;

/// One ruleset a call is judged by, and its verdicts where no rule matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    /// Key prefix of the layer's entries in the rule maps (0: no layer).
    pub ruleset: u32,
    /// Verdict when no rule matches, per [`Access`] (`None`: the layer has
    /// no opinion on that access).
    pub defaults: [u8; ACCESS_COUNT],
    pub _pad: [u8; 2],
    /// Rule id reported with a default verdict, per [`Access`].
    pub default_rules: [u32; ACCESS_COUNT],
}

/// Sessions a call is judged by: the caller's, and up to three sessions that
/// delegated to it (each a parent of the one before). A call goes through
/// only if every one of them lets it: a delegated session's scope can only
/// narrow. The daemon refuses deeper delegation.
pub const MAX_CHAIN: usize = 4;

/// Value of `SESSION_POLICY`, keyed by session id. A call is judged by
/// every layer of the session and of each session up its `parent` chain;
/// the strongest verdict wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionPolicy {
    /// The policy's rules and the profile's scopes.
    pub rules: Layer,
    /// The scope of the tool call in progress (`action begin`), which
    /// narrows the profile's (ruleset 0: no tool call).
    pub tool: Layer,
    /// `SESSION_*` flags.
    pub flags: u32,
    pub _pad: u32,
    /// The session this one was opened from (0: none).
    pub parent: SessionId,
    /// Labels the daemon decided (its engine judged a call the kernel could
    /// not, or it carried them over a restart). Only the daemon writes this
    /// value; the kernel ORs the labels it sets into `SESSION_LABELS`,
    /// which the daemon never writes, and judges by the union of the two.
    pub labels: u64,
}

/// Value of `CONFIG[0]`: which hooks judge and whether they block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnforceConfig {
    /// One of `MODE_*`.
    pub mode: u32,
    /// 0: verdicts are computed and reported, nothing is blocked
    /// (`--audit-only`).
    pub block: u32,
    /// The daemon's own tgid: tagged processes may not signal or trace it.
    pub guard_tgid: u32,
    pub _pad: u32,
}

/// No policy yet: the syscall tracepoints report, nobody judges.
pub const MODE_OBSERVE: u32 = 0;
/// Syscall tracepoints judge exec/open (SIGKILL) and report connect;
/// cgroup connect/sendmsg hooks refuse (EPERM).
pub const MODE_FALLBACK: u32 = 1;
/// BPF LSM hooks judge and refuse (EPERM; SIGKILL too for kill) and report
/// open and connect with resolved paths; the open/connect tracepoints stand
/// down.
pub const MODE_LSM: u32 = 2;

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Offsets that differ between kernels: tracepoint record fields (read from
/// tracefs) and kernel struct members (read from the running kernel's BTF),
/// set as a global before load. Rust eBPF has no CO-RE relocations, so this
/// is how the programs stay correct on 6.1 and 6.18 alike (TOOLCHAIN.md §4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `sched_process_fork.child_pid`.
    pub fork_child_pid: u32,
    /// `sched_process_exit.group_dead`, or 0 when the kernel lacks it (6.1):
    /// then the exit hook leaves the tag for the fork hook to overwrite when
    /// the pid is reused, since deleting on the exit of any one thread would
    /// let the remaining threads out of the session.
    pub exit_group_dead: u32,
    /// `sched_process_exec.filename` (a `__data_loc`).
    pub exec_filename: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.arg_start` and `.arg_end`: the new image's argv block.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// `file.f_path` and `file.f_mode` (LSM `file_open`).
    pub file_f_path: u32,
    pub file_f_mode: u32,
    /// `linux_binprm.file` (LSM `bprm_check_security`).
    pub bprm_file: u32,
    /// `task_struct.tgid` (LSM `task_kill`, `ptrace_access_check`).
    pub task_tgid: u32,
    /// `inode.i_sb` and `super_block.s_magic` (LSM `inode_unlink`: is the
    /// file on bpffs).
    pub inode_i_sb: u32,
    pub sb_s_magic: u32,
    // The path walk (agent-ebpf's resolve.rs): from a (mount, dentry) pair
    // up to the process's root, as the kernel's d_path does.
    /// `path.mnt` and `path.dentry`.
    pub path_mnt: u32,
    pub path_dentry: u32,
    /// `dentry.d_parent` and `dentry.d_name` (a `struct qstr`: the length
    /// in the upper half of its first u64, then the name pointer).
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    /// `mount.mnt` (the `vfsmount` inside it), `.mnt_parent` and
    /// `.mnt_mountpoint`; `vfsmount.mnt_root`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    /// `task_struct.fs`, `fs_struct.root` and `.pwd`.
    pub task_fs: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds` and
    /// `.fd`: from a descriptor to its `struct file`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `mm_struct.exe_file`: the image an exec loaded.
    pub mm_exe_file: u32,
    /// `dentry.d_inode`, `inode.i_ino` and `super_block.s_dev`: a file's
    /// identity for `KNOWN_INODES`.
    pub dentry_d_inode: u32,
    pub inode_i_ino: u32,
    pub sb_s_dev: u32,
}

/// Entries of `KNOWN_INODES`.
pub const KNOWN_INODES_LEN: u32 = 16384;

/// Key of `KNOWN_INODES`: a file by identity, whatever name reaches it.
/// `dev` is the kernel's own encoding (`major << 20 | minor`, as in
/// `super_block.s_dev`), not stat's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

/// Value of `KNOWN_INODES`: the path by which rules name a file they
/// protect. A call that reaches the file by another name (a hard link, a
/// bind mount) is judged by this one as well.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KnownName {
    /// Bytes of `path` before its NUL.
    pub len: u32,
    pub _pad: u32,
    pub path: [u8; RULE_PATH_LEN + 1],
}

// ---- the decision test harness (agent-ebpf's `decide-test` object) -----
//
// One raw tracepoint program, run by BPF_PROG_TEST_RUN and never attached:
// it reads a call from `DECIDE_INPUT[0]`, judges it with the real hooks'
// decision code against the maps the enforcer filled, commits the labels
// and leaves the judgement in `DECIDE_OUTPUT[0]` (tests/host/decide.rs).

/// Judge `path` for one [`Access`] (`access`), as the exec hooks do.
pub const DECIDE_PATH: u8 = 1;
/// Judge an open of `path` with the open flags in `arg`.
pub const DECIDE_OPEN: u8 = 2;
/// Judge a connect to the `struct sockaddr` in `sockaddr`, `arg` bytes
/// long.
pub const DECIDE_CONNECT: u8 = 3;

/// Room for a `struct sockaddr_un` (110 bytes) and more.
pub const DECIDE_SOCKADDR_LEN: usize = 128;

/// Value of `DECIDE_INPUT`: one call of a process in `session`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DecideInput {
    pub session: SessionId,
    /// `DECIDE_OPEN`: the open flags; `DECIDE_CONNECT`: the address length.
    pub arg: i64,
    /// One of `DECIDE_*`.
    pub kind: u8,
    /// `DECIDE_PATH`: the [`Access`].
    pub access: u8,
    /// Bytes of `path` before its NUL; what follows the NUL is left as the
    /// test put it (a record's stale bytes).
    pub path_len: u16,
    pub _pad: u32,
    pub sockaddr: [u8; DECIDE_SOCKADDR_LEN],
    pub path: [u8; PATH_MAX],
}

/// Value of `DECIDE_OUTPUT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecideOutput {
    pub rule: u32,
    /// A [`Verdict`].
    pub verdict: u8,
    /// `DECIDE_JUDGED`, `DECIDE_NO_SESSION` or `DECIDE_BAD_INPUT`; the
    /// test zeroes it before each run, so that a run that did not get to
    /// the end shows.
    pub status: u8,
    pub _pad: [u8; 2],
}

/// The call was judged.
pub const DECIDE_JUDGED: u8 = 1;
/// The session has no policy in the maps: not judged (`decide::session`).
pub const DECIDE_NO_SESSION: u8 = 2;
/// The input was unreadable or of an unknown kind.
pub const DECIDE_BAD_INPUT: u8 = 3;

/// Linux ABI values both sides use (the kernel crate has no libc): open
/// flags as the syscalls take them, the dirfd of "the cwd", bpffs's magic.
pub mod abi {
    pub const O_ACCMODE: i64 = 0o3;
    pub const O_WRONLY: i64 = 0o1;
    pub const O_RDWR: i64 = 0o2;
    pub const O_CREAT: i64 = 0o100;
    pub const O_TRUNC: i64 = 0o1000;
    pub const AT_FDCWD: i64 = -100;
    /// The superblock magic of bpffs.
    pub const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
}

/// The kernel object's maps, by the names user space takes them by: the
/// statics of agent-ebpf/src/maps.rs (a map's name is its static's). The
/// loader pins every one of [`map::PINNED`], so an object that lacks one
/// does not load.
pub mod map {
    pub const TAGS: &str = "TAGS";
    pub const CGROUP_SESSIONS: &str = "CGROUP_SESSIONS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const PATH_RULES: &str = "PATH_RULES";
    pub const PATH_SUFFIX_RULES: &str = "PATH_SUFFIX_RULES";
    pub const NET_RULES: &str = "NET_RULES";
    pub const SESSION_POLICY: &str = "SESSION_POLICY";
    pub const SESSION_LABELS: &str = "SESSION_LABELS";
    pub const SESSION_LOST: &str = "SESSION_LOST";
    pub const CONFIG: &str = "CONFIG";
    pub const KEY_SCRATCH: &str = "KEY_SCRATCH";
    pub const EXEC_VERDICTS: &str = "EXEC_VERDICTS";
    pub const KNOWN_INODES: &str = "KNOWN_INODES";
    pub const OPEN_FLAGS: &str = "OPEN_FLAGS";
    pub const CHANGE_ARGS: &str = "CHANGE_ARGS";
    pub const WALK_SCRATCH: &str = "WALK_SCRATCH";
    pub const LAYER_WALK: &str = "LAYER_WALK";
    /// aya-log's ring buffer.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Every map that holds state: pinned, so a restarted daemon (and the
    /// programs while none runs) keep them. The globals' maps (`.rodata`)
    /// are not: a program keeps the one it was loaded with.
    pub const PINNED: &[&str] = &[
        TAGS,
        CGROUP_SESSIONS,
        EVENTS,
        COUNTERS,
        SCRATCH,
        PATH_RULES,
        PATH_SUFFIX_RULES,
        NET_RULES,
        SESSION_POLICY,
        SESSION_LABELS,
        SESSION_LOST,
        CONFIG,
        KEY_SCRATCH,
        EXEC_VERDICTS,
        KNOWN_INODES,
        OPEN_FLAGS,
        CHANGE_ARGS,
        WALK_SCRATCH,
        LAYER_WALK,
        AYA_LOGS,
    ];
}

#[cfg(feature = "user")]
mod pod {
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every one of these is repr(C), built only of integers
            // and byte arrays, with explicit padding fields: every bit
            // pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        super::ProcTag,
        super::EventHeader,
        super::KernelLayout,
        super::PathRuleKey,
        super::NetRuleKey,
        super::RuleEntry,
        super::SessionPolicy,
        super::EnforceConfig,
        super::DecideInput,
        super::DecideOutput,
        super::InodeKey,
        super::KnownName,
    );
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
        // LPM key data: at most 256 bytes.
        assert_eq!(core::mem::size_of::<PathRuleKey>(), 256);
        assert_eq!(core::mem::size_of::<NetRuleKey>(), 24);
        assert_eq!(core::mem::size_of::<RuleSlot>(), 32);
        assert_eq!(core::mem::size_of::<Layer>(), 36);
        assert_eq!(core::mem::size_of::<SessionPolicy>(), 96);
        assert_eq!(
            core::mem::size_of::<DecideInput>(),
            3 * 8 + DECIDE_SOCKADDR_LEN + PATH_MAX
        );
        assert_eq!(core::mem::size_of::<DecideOutput>(), 8);
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
