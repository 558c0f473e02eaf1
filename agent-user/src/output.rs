//! One JSON line per event (`--log json`): the form a DaemonSet's log
//! collector and `jq` read.
use std::{io::Write, time::Duration};

use serde::Serialize;

use crate::events::{ConnectAddr, Event, Target};

/// Converts the kernel's boot-clock nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in nanoseconds, measured once at start.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Boot-clock nanoseconds now: the clock of event times.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> std::time::SystemTime {
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u64;
        std::time::UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    time: String,
    session: u64,
    exec_id: String,
    pid: u32,
    tid: u32,
    ppid: u32,
    uid: u32,
    comm: &'a str,
    exe: Option<&'a std::path::Path>,
    cwd: Option<&'a std::path::Path>,
    cgroup_id: u64,
    kind: &'static str,
    target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_path: Option<&'a std::path::Path>,
    /// A change's path (`target` is `path -> to` when it has two).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a std::path::Path>,
    /// A rename's or a link's new name, a symlink's contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a std::path::Path>,
    kernel: crate::events::KernelVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'a Verdict>,
}

/// The daemon's decision on an event, as it is written out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// allow, audit, refer, deny or kill.
    pub verdict: &'static str,
    /// The AARM outcome class.
    pub outcome: &'static str,
    pub rule: String,
    pub reason: String,
    /// What the daemon did beyond the kernel: `none`, or `killed` when only
    /// user space could judge the call and it was refused.
    pub reaction: &'static str,
    /// Sequence number of the decision's audit receipt, once durable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<u64>,
    /// The agent runtime's tool call the call was made in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCall>,
}

/// A tool call as event lines and receipts name it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: u64,
    pub tool: String,
}

/// The call's kind: `exec`, `open`, …, a change by its op (`rename`, …).
pub fn kind_name(t: &Target) -> &'static str {
    match t {
        Target::Exec { .. } => "exec",
        Target::Open { .. } => "open",
        Target::Change { op, .. } => op.name(),
        Target::Connect { .. } => "connect",
        Target::Fork { .. } => "fork",
        Target::Exit => "exit",
        Target::Guard { .. } => "guard",
    }
}

/// The object of the call as one string: a path, `FROM -> TO` for a change
/// with a second path (a symlink: `NEWNAME -> CONTENTS`, as `ls -l` shows
/// it), `addr:port`, or a pid.
pub fn target_string(t: &Target) -> String {
    match t {
        Target::Exec { path, .. }
        | Target::Open { path, .. }
        | Target::Change { path, to: None, .. } => path.display().to_string(),
        Target::Change {
            path, to: Some(to), ..
        } => format!("{} -> {}", path.display(), to.display()),
        Target::Connect {
            addr: ConnectAddr::Inet(sa),
        } => sa.to_string(),
        Target::Connect {
            addr: ConnectAddr::Unix(p),
        } => format!("unix:{}", p.display()),
        Target::Connect {
            addr: ConnectAddr::Other(f),
        } => format!("family:{f}"),
        Target::Fork { child } => child.to_string(),
        Target::Exit => String::new(),
        Target::Guard { attempt } => attempt.clone(),
    }
}

/// `O_RDONLY|O_CREAT|…` for the flags that matter to a reader.
pub fn open_flags(flags: i32) -> String {
    let mut out = vec![match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
    ] {
        if flags & bit == bit {
            out.push(name);
        }
    }
    out.join("|")
}

/// `--log json`: one line per event on stdout, flushed when the reader has
/// drained the ring buffer (not per line: a flood must not stall the reader).
pub struct JsonLines<W: Write> {
    out: std::io::BufWriter<W>,
    clock: Clock,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: std::io::BufWriter::with_capacity(1 << 16, out),
            clock: Clock::new(),
        }
    }
}

impl<W: Write> JsonLines<W> {
    pub fn write(&mut self, event: &Event, decision: Option<&Verdict>) {
        if let Err(e) = write_json(&mut self.out, &self.clock, event, decision) {
            log::error!("writing an event: {e}");
        }
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            log::error!("flushing events: {e}");
        }
    }
}

pub fn write_json(
    out: &mut impl Write,
    clock: &Clock,
    ev: &Event,
    decision: Option<&Verdict>,
) -> std::io::Result<()> {
    let p = &ev.process;
    let (flags, argv, raw_path) = match &ev.target {
        Target::Open {
            flags, raw_path, ..
        } => (Some(open_flags(*flags)), None, Some(raw_path.as_path())),
        Target::Exec { argv, raw_path, .. } => {
            (None, Some(argv.as_slice()), Some(raw_path.as_path()))
        }
        _ => (None, None, None),
    };
    let (path, to) = match &ev.target {
        Target::Change { path, to, .. } => (Some(path.as_path()), to.as_deref()),
        _ => (None, None),
    };
    let line = JsonEvent {
        time: humantime::format_rfc3339_nanos(clock.wall(ev.time_ns)).to_string(),
        session: ev.session,
        exec_id: p.exec_id(),
        pid: p.pid,
        tid: p.tid,
        ppid: p.ppid,
        uid: p.uid,
        comm: &p.comm,
        exe: p.exe.as_deref(),
        cwd: p.cwd.as_deref(),
        cgroup_id: p.cgroup_id,
        kind: kind_name(&ev.target),
        target: target_string(&ev.target),
        flags,
        argv,
        raw_path,
        path,
        to,
        kernel: ev.kernel,
        decision,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use agent_common::FileOp;

    use super::*;

    #[test]
    fn flags_read_like_the_man_page() {
        assert_eq!(open_flags(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(
            open_flags(libc::O_RDWR | libc::O_DIRECTORY),
            "O_RDWR|O_DIRECTORY"
        );
    }

    #[test]
    fn a_change_is_named_by_its_op_and_shows_both_paths() {
        let change = |op, to: Option<&str>| Target::Change {
            op,
            path: "/tmp/x".into(),
            to: to.map(Into::into),
        };
        let rename = change(FileOp::Rename, Some("/home/u/.bashrc"));
        assert_eq!(kind_name(&rename), "rename");
        assert_eq!(target_string(&rename), "/tmp/x -> /home/u/.bashrc");
        let unlink = change(FileOp::Unlink, None);
        assert_eq!(kind_name(&unlink), "unlink");
        assert_eq!(target_string(&unlink), "/tmp/x");
        let ev = Event {
            session: 1,
            time_ns: 0,
            process: crate::events::Process::default(),
            target: rename,
            kernel: crate::events::KernelVerdict {
                verdict: "none",
                enforced: "none",
                rule: 0,
            },
        };
        let mut out = Vec::new();
        write_json(&mut out, &Clock::new(), &ev, None).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["kind"], "rename");
        assert_eq!(line["path"], "/tmp/x");
        assert_eq!(line["to"], "/home/u/.bashrc");
    }
}
