//! Which session the current process belongs to, and keeping that true across
//! fork, exec and exit.
use agent_common::{EventKind, Hook, ProcTag};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;

use crate::{
    layout::get as layout,
    maps::{CGROUP_SESSIONS, TAGS},
    record::Record,
};

fn current_tgid_tid() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

/// The session of the calling process, if any. Untagged processes pay for this
/// and nothing else.
#[inline(always)]
pub fn lookup_current() -> Option<ProcTag> {
    let (tgid, _) = current_tgid_tid();
    // SAFETY: the value is copied out at once.
    if let Some(tag) = unsafe { TAGS.get(&tgid) } {
        return Some(*tag);
    }
    // SAFETY: helper without arguments; the value is copied out at once.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let session = *unsafe { CGROUP_SESSIONS.get(&cgroup) }?;
    // A process placed into a session's cgroup from outside (a container
    // runtime does this before exec): tag it so that its children inherit
    // the session even if they move to another cgroup.
    let tag = ProcTag {
        session,
        start_ns: unsafe { bpf_ktime_get_boot_ns() },
        ppid: 0,
        _pad: 0,
    };
    let _ = TAGS.insert(&tgid, &tag, 0);
    Some(tag)
}

/// `sched_process_fork` runs in the parent. A child of a tagged parent is
/// tagged here, before it can run a single instruction; any other child has
/// a stale tag of a dead process with the same pid removed.
pub fn on_fork(ctx: &TracePointContext) -> Result<u32, u32> {
    let off = layout().fork_child_pid as usize;
    if off == 0 {
        return Err(0);
    }
    // SAFETY: offset read from this kernel's tracefs format.
    let child: i32 = unsafe { ctx.read_at(off) }.map_err(|_| 0u32)?;
    let child = child as u32;
    let Some(parent) = lookup_current() else {
        let _ = TAGS.remove(&child);
        return Ok(0);
    };
    let (tgid, _) = current_tgid_tid();
    let tag = ProcTag {
        session: parent.session,
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_boot_ns() },
        ppid: tgid,
        _pad: 0,
    };
    // If this fails (map full) the child escapes observation: count it as a
    // drop so that the daemon reports it.
    if TAGS.insert(&child, &tag, 0).is_err() {
        crate::record::count(Hook::Fork, agent_common::Counter::Dropped);
        warn!(
            ctx,
            "TAGS is full: child {} of session {} is untagged", child, parent.session
        );
        return Ok(0);
    }
    let mut rec = Record::begin(Hook::Fork, EventKind::Fork, &parent)?;
    rec.header().arg0 = child as i64;
    rec.emit(Hook::Fork);
    Ok(0)
}

/// `sched_process_exit` runs once per exiting thread.
pub fn on_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let (tgid, tid) = current_tgid_tid();
    if tid != tgid {
        // A thread created inside a session left its own entry.
        let _ = TAGS.remove(&tid);
    }
    // SAFETY: the value is copied out at once.
    let Some(tag) = (unsafe { TAGS.get(&tgid) }).copied() else {
        return Ok(0);
    };
    let l = layout();
    let group_dead = if l.exit_group_dead != 0 {
        // SAFETY: offset read from this kernel's tracefs format.
        unsafe { ctx.read_at::<u8>(l.exit_group_dead as usize) }.unwrap_or(0) != 0
    } else {
        // No group_dead on this kernel: report the leader's exit, keep the
        // tag (see KernelLayout::exit_group_dead).
        tid == tgid
    };
    if !group_dead {
        return Ok(0);
    }
    let rec = Record::begin(Hook::Exit, EventKind::Exit, &tag)?;
    rec.emit(Hook::Exit);
    if l.exit_group_dead != 0 {
        let _ = TAGS.remove(&tgid);
    }
    Ok(0)
}
