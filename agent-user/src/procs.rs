//! Process cache: what the daemon knows of each process in a session (exe,
//! cwd, parent), kept from fork/exec/exit records and /proc, so that events
//! of processes that have already exited are still enriched.
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use agent_common::{EventKind, FileOp, PATH_PARTIAL, PATH_RESOLVED, PATH_SECOND_PARTIAL};

use crate::events::{self, Event, Process, RawEvent, Target};

const AT_FDCWD: i32 = agent_common::abi::AT_FDCWD as i32;
/// Ancestors listed per event.
const MAX_ANCESTORS: usize = 16;

#[derive(Debug, Clone, Default)]
struct Known {
    ppid: u32,
    exe: Option<PathBuf>,
    cwd: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct ProcessCache {
    procs: HashMap<u32, Known>,
    /// Size after the last sweep.
    swept_at: usize,
}

/// Below twice this many entries the cache is never swept.
const SWEEP_FLOOR: usize = 512;

impl ProcessCache {
    /// Turns a kernel record into an event: resolves relative paths (those
    /// the kernel did not resolve), adds exe, cwd and ancestors. Keeps the
    /// cache in step with fork, exec and exit.
    pub fn enrich(&mut self, raw: RawEvent) -> Event {
        let h = &raw.header;
        let pid = h.pid;
        let live_cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let live_exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        let ppid = h.ppid;
        let parent = self.procs.get(&ppid).cloned();
        let known = self.procs.entry(pid).or_insert_with(|| Known {
            ppid,
            // A child starts where its parent was.
            cwd: parent.as_ref().and_then(|p| p.cwd.clone()),
            exe: parent.and_then(|p| p.exe),
        });
        if live_cwd.is_some() {
            known.cwd = live_cwd;
        }
        if live_exe.is_some() && raw.kind != EventKind::Exec {
            known.exe = live_exe;
        }
        let cwd = known.cwd.clone();

        let target = match raw.kind {
            EventKind::Exec => {
                let dirfd = h.arg0 as i32;
                let (path, raw_path) = match kernel_path(h.path_flags, &raw.path) {
                    Some(path) => (path.clone(), path),
                    None => {
                        let raw_path = bytes_path(&raw.path);
                        let base = base_dir(pid, dirfd, cwd.as_deref());
                        let joined = absolute(&raw_path, base.as_deref());
                        let path = fs::canonicalize(as_seen_by(pid, &joined)).unwrap_or(joined);
                        (path, raw_path)
                    }
                };
                // After this exec the process runs the new image.
                known.exe = Some(path.clone());
                let argv = raw
                    .argv
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                Target::Exec {
                    path,
                    raw_path,
                    argv,
                    dirfd,
                }
            }
            EventKind::Open => {
                let dirfd = h.arg0 as i32;
                let (path, raw_path) = match kernel_path(h.path_flags, &raw.path) {
                    Some(path) => (path.clone(), path),
                    None => {
                        let raw_path = bytes_path(&raw.path);
                        let base = base_dir(pid, dirfd, cwd.as_deref());
                        (absolute(&raw_path, base.as_deref()), raw_path)
                    }
                };
                Target::Open {
                    path,
                    raw_path,
                    dirfd,
                    flags: h.arg1 as i32,
                    mode: h.arg2 as u32,
                }
            }
            EventKind::Connect => Target::Connect {
                addr: events::connect_addr(h, &raw.path),
            },
            EventKind::Fork => {
                let child = h.arg0 as u32;
                // Only a live new process gets an entry. A new thread is
                // part of this process (threads send no exit record: an
                // entry each would grow the cache with every thread pool);
                // a child already gone needs none (its records still
                // queued start from its parent's entry all the same).
                let new_process = !Path::new(&format!("/proc/{pid}/task/{child}")).exists()
                    && Path::new(&format!("/proc/{child}")).exists();
                if new_process {
                    let inherited = self.procs.get(&pid).cloned().unwrap_or_default();
                    self.procs.insert(
                        child,
                        Known {
                            ppid: pid,
                            ..inherited
                        },
                    );
                }
                Target::Fork { child }
            }
            EventKind::Change => {
                let Some(change) = &raw.change else {
                    unreachable!("decode gives every change record its op");
                };
                // Every path of a change is absolute: resolved by the
                // kernel, or the kernel's path of the directory and the name
                // as written (fallback). One that is not, or that the
                // kernel marks so, is partial.
                let as_sent = |p: &[u8], partial: bool| {
                    if partial || !p.starts_with(b"/") {
                        partial_path(p)
                    } else {
                        bytes_path(p)
                    }
                };
                let to = change.second_path.as_deref().map(|p| {
                    if change.op == FileOp::Symlink {
                        // The link's contents as written: no path reached.
                        bytes_path(p)
                    } else {
                        as_sent(p, h.path_flags & PATH_SECOND_PARTIAL != 0)
                    }
                });
                Target::Change {
                    op: change.op,
                    path: as_sent(&raw.path, h.path_flags & PATH_PARTIAL != 0),
                    to,
                }
            }
            EventKind::Exit => Target::Exit,
            EventKind::Guard => Target::Guard {
                attempt: String::from_utf8_lossy(&raw.path).into_owned(),
            },
        };
        let exe = self.procs.get(&pid).and_then(|k| k.exe.clone());
        let ancestors = self.ancestors(pid);
        if raw.kind == EventKind::Exit {
            self.procs.remove(&pid);
        }
        Event {
            session: h.session,
            time_ns: h.time_ns,
            process: Process {
                pid,
                tid: h.tid,
                ppid,
                uid: h.uid,
                gid: h.gid,
                start_ns: h.start_ns,
                comm: events::comm(h),
                exe,
                cwd,
                cgroup_id: h.cgroup_id,
                ancestors,
            },
            target,
            kernel: events::KernelVerdict::of(h),
        }
    }

    /// Processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Forgets processes that are gone. Their exit records normally do
    /// that; this catches the ones whose exit was never seen (a full ring
    /// buffer, a process tagged from outside). Called between batches, so
    /// that no record still waiting names a forgotten process. Sweeps only
    /// when the cache has doubled since the last sweep: amortised O(1).
    pub fn sweep(&mut self) {
        if self.procs.len() < self.swept_at.max(SWEEP_FLOOR) * 2 {
            return;
        }
        self.procs
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        self.swept_at = self.procs.len();
    }

    fn ancestors(&self, pid: u32) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|k| k.ppid);
        while let Some(p) = cur {
            if out.len() >= MAX_ANCESTORS || p == pid {
                break;
            }
            let Some(k) = self.procs.get(&p) else { break };
            if let Some(exe) = &k.exe {
                out.push(exe.clone());
            }
            cur = Some(k.ppid).filter(|pp| *pp != p);
        }
        out
    }
}

fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// The path as the kernel resolved it, to be taken as is (not resolved
/// again against a cwd or dirfd): the file reached (`PATH_RESOLVED`), or a
/// partial path (`PATH_PARTIAL`, see [`partial_path`]). `None` when the
/// kernel sent the path as the process passed it.
fn kernel_path(flags: u8, raw: &[u8]) -> Option<PathBuf> {
    if flags & PATH_PARTIAL != 0 {
        Some(partial_path(raw))
    } else if flags & PATH_RESOLVED != 0 {
        Some(bytes_path(raw))
    } else {
        None
    }
}

/// Marks a path of which the kernel has only the last components (its walk
/// stopped before the root, and the kernel did not judge the call): `…`
/// stands for the part not known. Such a path is judged as given: it lies
/// under no directory a rule names (`/…/x` is under `/` only), so it gets
/// what rules on any path say (writes outside the workspace are refused),
/// and it shows as partial wherever the event is written out. It is not
/// made up into a whole path: none would be honest.
fn partial_path(raw: &[u8]) -> PathBuf {
    let sep: &[u8] = if raw.starts_with(b"/") { b"" } else { b"/" };
    bytes_path(&["…".as_bytes(), sep, raw].concat())
}

/// The directory a relative path is resolved against: the cwd, or the dirfd.
fn base_dir(pid: u32, dirfd: i32, cwd: Option<&Path>) -> Option<PathBuf> {
    if dirfd == AT_FDCWD {
        cwd.map(Path::to_path_buf)
    } else {
        fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()
    }
}

/// `path` as process `pid` names it, for resolving here: `/proc/self`,
/// `/proc/thread-self` and `/dev/fd` mean the daemon in the daemon (a
/// runtime re-executing `/proc/self/exe` would be judged as agentgate).
fn as_seen_by(pid: u32, path: &Path) -> PathBuf {
    let own = Path::new("/proc").join(pid.to_string());
    for (alias, real) in [
        ("/proc/self", own.clone()),
        ("/proc/thread-self", own.clone()),
        ("/dev/fd", own.join("fd")),
    ] {
        if let Ok(rest) = path.strip_prefix(alias) {
            return real.join(rest);
        }
    }
    path.to_path_buf()
}

/// `path` made absolute against `base`, with `.`, `..` and repeated slashes
/// removed lexically (symlinks are not followed: this is what was named).
pub fn absolute(path: &Path, base: Option<&Path>) -> PathBuf {
    let joined = match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.to_path_buf(),
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A process's seccomp state, from `/proc/PID/status`. `agentgate exec`
/// installs its layer (confine.rs) before the agent runs; a session opened
/// another way has none unless something else installed one, and /proc
/// cannot tell whose filters they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seccomp {
    /// 0: none, 1: strict, 2: filters.
    pub mode: u8,
    pub filters: u32,
    pub no_new_privs: bool,
}

impl Seccomp {
    pub fn of(pid: u32) -> io::Result<Self> {
        Self::parse(&fs::read_to_string(format!("/proc/{pid}/status"))?).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no Seccomp line in /proc/{pid}/status"),
            )
        })
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(':')?;
                v.trim().parse::<u32>().ok()
            })
        };
        Some(Self {
            mode: u8::try_from(field("Seccomp")?).ok()?,
            // Seccomp_filters: 5.9+.
            filters: field("Seccomp_filters").unwrap_or(0),
            no_new_privs: field("NoNewPrivs") == Some(1),
        })
    }
}

impl std::fmt::Display for Seccomp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nnp = if self.no_new_privs {
            ", no_new_privs"
        } else {
            ""
        };
        match self.mode {
            0 => write!(
                f,
                "no seccomp filter{nnp}: the session lacks the seccomp layer (README: what only it refuses)"
            ),
            1 => write!(f, "seccomp strict mode{nnp}"),
            _ => write!(f, "seccomp: {} filter(s){nnp}", self.filters),
        }
    }
}

/// Start time (boot-clock ns, at clock-tick resolution) and ppid of a live
/// process, from /proc.
pub fn start_and_ppid(pid: u32) -> io::Result<(u64, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable /proc/{pid}/stat"),
        )
    };
    // Fields after the last ')' (comm may contain spaces and parentheses).
    let (_, rest) = stat.rsplit_once(')').ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let ticks: u64 = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks * (1_000_000_000 / hz), ppid))
}

/// Sends `signal` to `pid` only if `still_same` says, once a pidfd holds
/// the process, that it is the one meant: a pid may have been reused since
/// the call that earned the signal. Holding the pidfd first means the
/// process `still_same` looks at (its tag, say) cannot change under it
/// before the signal. `Ok(false)`: gone, or a stranger.
pub fn signal_if(pid: u32, signal: i32, still_same: impl FnOnce() -> bool) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if !still_same() {
        return Ok(false);
    }
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Agent images larger than this are not hashed (no coding agent is near
/// it; reading more would let one session keep the daemon busy).
pub const MAX_HASHED: u64 = 1 << 30;

/// SHA-256 of the image process `pid` runs, read through `/proc/PID/exe`
/// (the file the kernel mapped, whatever its path now names) in 1 MiB
/// chunks, at most `max` bytes ([`MAX_HASHED`] for the daemon). Refused
/// unless the image is still the one exec'd at `expected`.
pub fn exe_sha256(pid: u32, expected: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let link = format!("/proc/{pid}/exe");
    if fs::read_link(&link)? != expected {
        return Err(io::Error::other(format!(
            "pid {pid} runs another image by now"
        )));
    }
    let file = fs::File::open(&link)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > max {
        return Err(io::Error::other(format!(
            "not a regular file of at most {max} bytes ({} bytes)",
            meta.len()
        )));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut chunk = vec![0u8; 1 << 20];
    let mut reader = file.take(max);
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        ctx.update(&chunk[..n]);
    }
    Ok(ctx.finish().as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use agent_common::EventHeader;

    use super::*;
    use crate::events::{
        decode,
        tests::{change_record, header, record},
    };

    #[test]
    fn seccomp_state_is_read_from_status() {
        let confined = "Name:\tsh\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let sc = Seccomp::parse(confined).unwrap();
        assert_eq!(
            sc,
            Seccomp {
                mode: 2,
                filters: 1,
                no_new_privs: true
            }
        );
        assert_eq!(sc.to_string(), "seccomp: 1 filter(s), no_new_privs");
        let bare = Seccomp::parse("NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n").unwrap();
        assert!(bare.to_string().starts_with("no seccomp filter:"), "{bare}");
        assert_eq!(Seccomp::parse("Name:\tsh\n"), None);
        // This test process: whatever it is, it is read.
        assert!(Seccomp::of(std::process::id()).is_ok());
    }

    /// An open or exec record of this test process.
    fn raw(kind: EventKind, path: &str, flags: u8, dirfd: i32) -> RawEvent {
        let mut h: EventHeader = header(kind);
        h.pid = std::process::id();
        h.path_flags = flags;
        h.arg0 = dirfd.into();
        h.path_len = path.len() as u16;
        decode(&record(&h, path.as_bytes())).unwrap()
    }

    fn target(raw: RawEvent) -> Target {
        ProcessCache::default().enrich(raw).target
    }

    #[test]
    fn a_path_the_kernel_resolved_is_taken_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("true");
        std::os::unix::fs::symlink("/bin/true", &link).unwrap();
        let link = link.to_str().unwrap();
        let cwd = std::env::current_dir().unwrap();
        // Sent as passed: made absolute against the cwd, an exec's image
        // followed to its file.
        match target(raw(EventKind::Open, "x/../y", 0, AT_FDCWD)) {
            Target::Open { path, raw_path, .. } => {
                assert_eq!(path, cwd.join("y"));
                assert_eq!(raw_path, Path::new("x/../y"));
            }
            other => panic!("{other:?}"),
        }
        match target(raw(EventKind::Exec, link, 0, AT_FDCWD)) {
            Target::Exec { path, .. } => assert_eq!(path, fs::canonicalize("/bin/true").unwrap()),
            other => panic!("{other:?}"),
        }
        // Resolved by the kernel: neither the dirfd nor a symlink is
        // followed again (the kernel's walk already did).
        match target(raw(EventKind::Open, "/work/ws/y", PATH_RESOLVED, 0)) {
            Target::Open {
                path,
                raw_path,
                dirfd,
                ..
            } => {
                assert_eq!(path, Path::new("/work/ws/y"));
                assert_eq!(raw_path, path);
                assert_eq!(dirfd, 0);
            }
            other => panic!("{other:?}"),
        }
        match target(raw(EventKind::Exec, link, PATH_RESOLVED, AT_FDCWD)) {
            Target::Exec { path, raw_path, .. } => {
                assert_eq!(path, Path::new(link));
                assert_eq!(raw_path, path);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn change_records_become_changes() {
        let change = |op, path: &str, second: &str, flags| {
            let raw = decode(&change_record(
                op,
                path.as_bytes(),
                second.as_bytes(),
                flags,
            ));
            match target(raw.unwrap()) {
                Target::Change { op, path, to } => (op, path, to),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            change(FileOp::Rename, "/tmp/x", "/home/u/.bashrc", PATH_RESOLVED),
            (
                FileOp::Rename,
                "/tmp/x".into(),
                Some("/home/u/.bashrc".into())
            )
        );
        assert_eq!(
            change(FileOp::Chmod, "/etc/passwd", "", PATH_RESOLVED),
            (FileOp::Chmod, "/etc/passwd".into(), None)
        );
        // The walk stopped short on one end: that end says so; a
        // symlink's contents are as written either way.
        assert_eq!(
            change(FileOp::Link, "/d/e/key", "/f/k", PATH_PARTIAL),
            (FileOp::Link, "…/d/e/key".into(), Some("/f/k".into()))
        );
        assert_eq!(
            change(FileOp::Rename, "/d/e", "/f/k", PATH_SECOND_PARTIAL),
            (FileOp::Rename, "/d/e".into(), Some("…/f/k".into()))
        );
        // Fallback: the kernel's directory and the name as written.
        assert_eq!(
            change(FileOp::Unlink, "/home/u/x", "", 0),
            (FileOp::Unlink, "/home/u/x".into(), None)
        );
        assert_eq!(
            change(FileOp::Symlink, "/d/s", "../etc/shadow", PATH_PARTIAL),
            (
                FileOp::Symlink,
                "…/d/s".into(),
                Some("../etc/shadow".into())
            )
        );
        // A path that is not absolute is only partial.
        assert_eq!(
            change(FileOp::Unlink, "x", "", 0),
            (FileOp::Unlink, "…/x".into(), None)
        );
        // Opens and execs the walk stopped short on, too.
        match target(raw(EventKind::Open, "/d/e", PATH_PARTIAL, AT_FDCWD)) {
            Target::Open { path, .. } => assert_eq!(path, Path::new("…/d/e")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_base() {
        let etc = Path::new("/etc");
        assert_eq!(
            absolute(Path::new("hostname"), Some(etc)),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            absolute(Path::new("../etc/./shadow"), Some(etc)),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            absolute(Path::new("//etc///shadow"), None),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            absolute(Path::new("/../../etc/shadow"), Some(etc)),
            Path::new("/etc/shadow")
        );
        // Without a base a relative path stays relative: nothing is invented.
        assert_eq!(absolute(Path::new("x/y"), None), Path::new("x/y"));
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_signal_goes_only_where_the_check_says() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = sleeper();
        assert!(!signal_if(child.id(), libc::SIGKILL, || false).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "a stranger was killed");
        assert!(signal_if(child.id(), libc::SIGKILL, || true).unwrap());
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Reaped: gone, whatever the check says.
        assert!(!signal_if(child.id(), libc::SIGKILL, || true).unwrap());
    }

    #[test]
    fn the_image_is_hashed_within_its_bound() {
        let mut child = sleeper();
        let exe = fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        let bytes = fs::read(&exe).unwrap();
        let want = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let len = bytes.len() as u64;
        assert_eq!(
            exe_sha256(child.id(), &exe, len).unwrap(),
            want.as_ref().to_vec()
        );
        // One byte past the bound: not read at all.
        assert!(exe_sha256(child.id(), &exe, len - 1).is_err());
        // Another image by now: refused.
        assert!(exe_sha256(child.id(), Path::new("/bin/true"), MAX_HASHED).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn self_links_are_the_callers_not_the_daemons() {
        assert_eq!(
            as_seen_by(42, Path::new("/proc/self/exe")),
            Path::new("/proc/42/exe")
        );
        assert_eq!(
            as_seen_by(42, Path::new("/proc/thread-self/cwd/x")),
            Path::new("/proc/42/cwd/x")
        );
        assert_eq!(
            as_seen_by(42, Path::new("/dev/fd/3")),
            Path::new("/proc/42/fd/3")
        );
        assert_eq!(
            as_seen_by(42, Path::new("/usr/bin/git")),
            Path::new("/usr/bin/git")
        );
        assert_eq!(
            as_seen_by(42, Path::new("/proc/selfish")),
            Path::new("/proc/selfish")
        );
    }
}
