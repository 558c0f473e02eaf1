//! Process cache: what the daemon knows of each process in a session (exe,
//! cwd, parent), kept from fork/exec/exit records and /proc, so that events
//! of processes that have already exited are still enriched.
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use agent_common::EventKind;

use crate::events::{self, Event, Process, RawEvent, Target};

const AT_FDCWD: i32 = -100;
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
}

impl ProcessCache {
    /// Turns a kernel record into an event: resolves relative paths, adds exe,
    /// cwd and ancestors. Keeps the cache in step with fork, exec and exit.
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
                let raw_path = bytes_path(&raw.path);
                let dirfd = h.arg0 as i32;
                let base = base_dir(pid, dirfd, cwd.as_deref());
                let joined = absolute(&raw_path, base.as_deref());
                let path = fs::canonicalize(as_seen_by(pid, &joined)).unwrap_or(joined);
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
                let raw_path = bytes_path(&raw.path);
                let dirfd = h.arg0 as i32;
                let base = base_dir(pid, dirfd, cwd.as_deref());
                Target::Open {
                    path: absolute(&raw_path, base.as_deref()),
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
                let inherited = self.procs.get(&pid).cloned().unwrap_or_default();
                self.procs.insert(
                    child,
                    Known {
                        ppid: pid,
                        ..inherited
                    },
                );
                Target::Fork { child }
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

#[cfg(test)]
mod tests {
    use super::*;

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
