//! A tagged process may not step out from under its rules: new user or
//! mount namespaces, mounts, chroot, pivot_root and setns change what a path
//! names (a bind mount of `~/.ssh/id_rsa` onto `/tmp/x` reads as `/tmp/x`),
//! and so are refused outright. LSM mode refuses with EPERM where a hook
//! exists (`userns_create`, `sb_mount`, `move_mount`, in lsm.rs); the
//! syscall tracepoints here kill the caller at entry for the rest, and for
//! everything in fallback mode. A fork whose parent is killed before
//! `copy_process` runs is not created: the kernel gives up a fork when a
//! fatal signal is pending.
use agent_common::{
    ENFORCED_KILLED, ENFORCED_REFUSED, EventKind, Hook, MODE_LSM, PATH_MAX, ProcTag, Verdict,
};
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};

use crate::{decide, decide::Judgement, enforce, record::Record, syscall_arg, tagging};

const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_FILES: u64 = 0x0000_0400;
const CLONE_THREAD: u64 = 0x0001_0000;
/// Namespaces whose creation changes what paths name or what the process
/// may mount.
const ESCAPE_FLAGS: u64 = CLONE_NEWNS | CLONE_NEWUSER;

/// Reports an attempt a tagged process made on the guard or on its own
/// confinement; `what` goes in the record's path.
pub fn report(tag: &ProcTag, what: &[u8], enforced: u8) {
    if let Ok(mut rec) = Record::begin(Hook::Guard, EventKind::Guard, tag) {
        let n = what.len().min(PATH_MAX - 1);
        if let Some(dest) = rec.data().get_mut(..n) {
            dest.copy_from_slice(&what[..n]);
        }
        rec.header().path_len = n as u16;
        rec.judge(&Judgement::of(Verdict::Deny, 0), enforced);
        rec.emit(Hook::Guard);
    }
}

/// Refuses (for the LSM hooks): reports and returns the EPERM to give.
pub fn refuse(tag: &ProcTag, what: &[u8]) -> i32 {
    report(tag, what, ENFORCED_REFUSED);
    -enforce::EPERM
}

/// Kills a tagged caller at syscall entry, unless LSM mode refuses the same
/// call in a hook (`lsm_refuses`). Self-protection holds in audit-only mode
/// too: it guards agentgate, not the policy.
fn kill_escape(what: &[u8], lsm_refuses: bool) -> u32 {
    let Some(tag) = tagging::lookup_current() else {
        return 0;
    };
    if lsm_refuses && decide::config().mode == MODE_LSM {
        return 0;
    }
    enforce::kill_current();
    report(&tag, what, ENFORCED_KILLED);
    0
}

fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a syscall argument slot of the tracepoint record.
    unsafe { ctx.read_at::<u64>(syscall_arg(n)) }.unwrap_or(0)
}

#[tracepoint]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 0) & ESCAPE_FLAGS == 0 {
        return 0;
    }
    // userns_create refuses a new user namespace; a new mount namespace
    // has no hook of its own.
    kill_escape(b"unshare:namespace", arg(&ctx, 0) & CLONE_NEWNS == 0)
}

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    clone_with(arg(&ctx, 0), b"clone:namespace", b"clone:shared-files")
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    // clone3(struct clone_args *uargs, size_t size): flags come first.
    let uargs = arg(&ctx, 0) as *const u64;
    // SAFETY: a read of user memory, checked by the helper.
    let flags = unsafe { bpf_probe_read_user(uargs) }.unwrap_or(0);
    clone_with(flags, b"clone3:namespace", b"clone3:shared-files")
}

/// A new process (not a thread) that shares the caller's descriptor table
/// outlives a kill of the caller with its descriptors: a file the caller
/// was killed for opening stays open in it. Killed in both modes, before
/// the fork is made.
#[inline(always)]
fn clone_with(flags: u64, namespace: &[u8], shared_files: &[u8]) -> u32 {
    if flags & (CLONE_FILES | CLONE_THREAD) == CLONE_FILES {
        return kill_escape(shared_files, false);
    }
    if flags & ESCAPE_FLAGS == 0 {
        return 0;
    }
    kill_escape(namespace, flags & CLONE_NEWNS == 0)
}

#[tracepoint]
pub fn sys_enter_setns(_ctx: TracePointContext) -> u32 {
    kill_escape(b"setns", false)
}

#[tracepoint]
pub fn sys_enter_mount(_ctx: TracePointContext) -> u32 {
    kill_escape(b"mount", true)
}

#[tracepoint]
pub fn sys_enter_move_mount(_ctx: TracePointContext) -> u32 {
    kill_escape(b"move_mount", true)
}

#[tracepoint]
pub fn sys_enter_chroot(_ctx: TracePointContext) -> u32 {
    kill_escape(b"chroot", false)
}

#[tracepoint]
pub fn sys_enter_pivot_root(_ctx: TracePointContext) -> u32 {
    kill_escape(b"pivot_root", false)
}

// ---- ways around the file hooks ----------------------------------------
//
// io_uring submits opens, connects and renames from a kernel worker that
// no syscall tracepoint sees, and open_by_handle_at opens a file with no
// path at all. LSM mode judges their opens at `file_open` (and their
// connects at `socket_connect`), so only fallback mode refuses them.
// open_tree(OPEN_TREE_CLONE) and the new mount API make a detached copy of
// a tree whose files then read as `/name`: refused in both modes (no LSM
// hook sees a clone).

const OPEN_TREE_CLONE: u64 = 1;

#[tracepoint]
pub fn sys_enter_io_uring_setup(_ctx: TracePointContext) -> u32 {
    kill_escape(b"io_uring_setup", true)
}

#[tracepoint]
pub fn sys_enter_open_by_handle_at(_ctx: TracePointContext) -> u32 {
    kill_escape(b"open_by_handle_at", true)
}

#[tracepoint]
pub fn sys_enter_open_tree(ctx: TracePointContext) -> u32 {
    // open_tree(int dfd, const char *filename, unsigned int flags)
    if arg(&ctx, 2) & OPEN_TREE_CLONE == 0 {
        return 0;
    }
    kill_escape(b"open_tree:clone", false)
}

#[tracepoint]
pub fn sys_enter_fsopen(_ctx: TracePointContext) -> u32 {
    kill_escape(b"fsopen", false)
}
