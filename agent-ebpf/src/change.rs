//! Changes to the file system other than opens: rename, link, symlink,
//! unlink, rmdir, mkdir, mknod, truncate, chmod, chown. LSM mode judges
//! them in the `path_*` hooks (lsm.rs) and refuses with EPERM; fallback
//! mode judges them at the syscall's entry here and kills a refused caller,
//! which stops the process but not that one call: the kernel completes it
//! before the signal is delivered (README, "What fallback mode cannot
//! refuse").
//!
//! Fallback paths: an absolute name is judged as written when it is plain
//! (no `.`, `..` or `//`); a relative one is put after the kernel's own path
//! of its directory (the dirfd's file, or the working directory), so
//! `cd /etc && mv x passwd` and dirfd-relative calls are judged by where they
//! are. A symlink inside the name is not followed at entry.
use agent_common::{
    ENFORCED_NONE, EventKind, FileOp, Hook, MODE_FALLBACK, MODE_LSM, PATH_MAX, PATH_PARTIAL,
    PATH_RESOLVED, ProcTag, abi::AT_FDCWD as AT_FDCWD_I64,
};
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    decide::{self, Judgement},
    enforce::{self, EPERM},
    record::Record,
    resolve, syscall_arg, tagging,
};

/// Judges and reports one change by a tagged process. `fill(rec, second)`
/// writes one end's path into the record's path area: the second end (a
/// rename's or link's new name, a symlink's contents) first, which is then
/// moved to the record's second-path area. Returns what an LSM hook
/// returns (0 or -EPERM).
#[inline(always)]
pub fn judge(tag: &ProcTag, op: FileOp, mut fill: impl FnMut(&mut Record, bool)) -> i32 {
    let Ok(mut rec) = Record::begin(Hook::Change, EventKind::Change, tag) else {
        return 0;
    };
    rec.header().arg1 = op as i64;
    let session = decide::session(tag.session);
    let mut j = Judgement::NONE;
    if op.has_second_path() {
        fill(&mut rec, true);
        // A symlink's contents are not a path it writes.
        if op != FileOp::Symlink
            && let Some(session) = &session
            && judgeable(&mut rec)
        {
            let (path, len) = rec.path();
            j.merge(&enforce::judge_change(session, op, true, path, len));
        }
        rec.keep_as_second_path();
    }
    fill(&mut rec, false);
    if let Some(session) = &session
        && judgeable(&mut rec)
    {
        let (path, len) = rec.path();
        j.merge(&enforce::judge_change(session, op, false, path, len));
    }
    let cfg = decide::config();
    let (enforced, ret) = if cfg.mode == MODE_LSM {
        let enforced = enforce::refuse(&cfg, &j);
        (enforced, if enforced == ENFORCED_NONE { 0 } else { -EPERM })
    } else {
        (enforce::at_tracepoint(&cfg, &j), 0)
    };
    if let Some(session) = &session {
        session.commit(&j);
    }
    rec.judge(&j, enforced);
    rec.emit(Hook::Change);
    ret
}

/// Whether the kernel can judge the path in the record: resolved by the
/// kernel, or absolute and plain as written.
#[inline(always)]
fn judgeable(rec: &mut Record) -> bool {
    let flags = rec.header().path_flags;
    if flags == PATH_RESOLVED {
        return true;
    }
    let (path, len) = rec.path();
    flags & PATH_PARTIAL == 0 && decide::is_plain_absolute(path, len)
}

// ---- fallback: the syscalls -------------------------------------------

/// Where one path argument is: its dirfd's slot (None: relative to the
/// working directory) and the name's.
#[derive(Clone, Copy)]
struct Arg {
    dirfd: Option<usize>,
    name: usize,
}

const fn at(dirfd: usize, name: usize) -> Arg {
    Arg {
        dirfd: Some(dirfd),
        name,
    }
}

const fn cwd(name: usize) -> Arg {
    Arg { dirfd: None, name }
}

/// Fills the record's path with where `arg` names, as described at the top.
#[inline(always)]
fn fill_arg(ctx: &TracePointContext, rec: &mut Record, arg: Arg) {
    // SAFETY: a syscall argument slot of the tracepoint record.
    let Ok(name) = (unsafe { ctx.read_at::<*const u8>(syscall_arg(arg.name)) }) else {
        rec.set_resolved_path(0, PATH_PARTIAL);
        return;
    };
    // SAFETY: user memory, read through the checked helper.
    let first = unsafe { bpf_probe_read_user(name) }.unwrap_or(0);
    if first == b'/' {
        // SAFETY: as above.
        unsafe { rec.read_path(name) };
        return;
    }
    let dirfd = match arg.dirfd {
        // SAFETY: as above.
        Some(i) => unsafe { ctx.read_at::<i64>(syscall_arg(i)) }.unwrap_or(AT_FDCWD_I64) as i32,
        None => AT_FDCWD_I64 as i32,
    };
    let dir = if i64::from(dirfd) == AT_FDCWD_I64 {
        Some(resolve::cwd())
    } else {
        resolve::file_of_fd(i64::from(dirfd)).map(resolve::path_of_file)
    };
    let Some(dir) = dir else {
        rec.set_resolved_path(0, PATH_PARTIAL);
        return;
    };
    // SAFETY: a `struct path` of this process.
    unsafe { resolve::into_record(rec, dir) };
    if rec.header().path_flags != PATH_RESOLVED || first == 0 {
        // Unresolvable, or an empty name (AT_EMPTY_PATH): the dirfd itself.
        return;
    }
    let n = rec.header().path_len as usize;
    // The root is "/": no second slash after it.
    let start = if n == 1 { 1 } else { n + 1 } & (PATH_MAX - 1);
    if let Some(slash) = rec.data().get_mut(n & (PATH_MAX - 1)) {
        *slash = b'/';
    }
    // At most half a PATH_MAX of name, so that the verifier sees the read
    // end inside the record. A name reaching past PATH_MAX may overwrite
    // the start of the second-path area; it is then partial (not judged).
    let Some(dest) = rec.data().get_mut(start..start + PATH_MAX / 2) else {
        return;
    };
    // SAFETY: as above.
    let k = match unsafe { bpf_probe_read_user_str_bytes(name, dest) } {
        Ok(s) => s.len(),
        Err(_) => 0,
    };
    let total = start + k;
    if total >= PATH_MAX {
        rec.set_resolved_path(0, PATH_PARTIAL);
    } else {
        // The directory is the kernel's, the name as written.
        rec.set_resolved_path(total, 0);
    }
}

/// Fills the record's path with the path of the file behind descriptor
/// slot `fd`.
#[inline(always)]
fn fill_fd(ctx: &TracePointContext, rec: &mut Record, fd: usize) {
    // SAFETY: a syscall argument slot of the tracepoint record.
    let fd = unsafe { ctx.read_at::<i64>(syscall_arg(fd)) }.unwrap_or(-1) as i32;
    match resolve::file_of_fd(i64::from(fd)) {
        // SAFETY: a `struct file` of this process's descriptor table.
        Some(file) => unsafe { resolve::into_record(rec, resolve::path_of_file(file)) },
        None => rec.set_resolved_path(0, PATH_PARTIAL),
    }
}

/// A tagged caller in fallback mode (LSM mode judges in the path hooks).
#[inline(always)]
fn fallback_caller() -> Option<ProcTag> {
    let tag = tagging::lookup_current()?;
    (decide::config().mode == MODE_FALLBACK).then_some(tag)
}

/// One path (`first`) and, for rename and link, the new name (`second`).
#[inline(always)]
fn on_paths(ctx: &TracePointContext, op: FileOp, first: Arg, second: Option<Arg>) -> u32 {
    let Some(tag) = fallback_caller() else {
        return 0;
    };
    judge(&tag, op, |rec, is_second| match (is_second, second) {
        (true, Some(arg)) => fill_arg(ctx, rec, arg),
        _ => fill_arg(ctx, rec, first),
    });
    0
}

/// symlink: the contents (as written, not judged) and the new name.
#[inline(always)]
fn on_symlink(ctx: &TracePointContext, contents: usize, new: Arg) -> u32 {
    let Some(tag) = fallback_caller() else {
        return 0;
    };
    judge(&tag, FileOp::Symlink, |rec, is_second| {
        if is_second {
            // SAFETY: a syscall argument slot, then user memory read
            // through the checked helper.
            unsafe {
                if let Ok(p) = ctx.read_at::<*const u8>(syscall_arg(contents)) {
                    rec.read_path(p);
                }
            }
        } else {
            fill_arg(ctx, rec, new);
        }
    });
    0
}

/// fchmod, fchown: the file behind a descriptor.
#[inline(always)]
fn on_fd(ctx: &TracePointContext, op: FileOp, fd: usize) -> u32 {
    let Some(tag) = fallback_caller() else {
        return 0;
    };
    judge(&tag, op, |rec, _| fill_fd(ctx, rec, fd));
    0
}

fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a syscall argument slot of the tracepoint record.
    unsafe { ctx.read_at::<u64>(syscall_arg(n)) }.unwrap_or(0)
}

const AT_REMOVEDIR: u64 = 0x200;

#[tracepoint]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Rename, at(0, 1), Some(at(2, 3)))
}

#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Rename, at(0, 1), Some(at(2, 3)))
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Rename, cwd(0), Some(cwd(1)))
}

#[tracepoint]
pub fn sys_enter_linkat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Link, at(0, 1), Some(at(2, 3)))
}

#[tracepoint]
pub fn sys_enter_link(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Link, cwd(0), Some(cwd(1)))
}

#[tracepoint]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    on_symlink(&ctx, 0, at(1, 2))
}

#[tracepoint]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    on_symlink(&ctx, 0, cwd(1))
}

#[tracepoint]
pub fn sys_enter_unlinkat(ctx: TracePointContext) -> u32 {
    let op = if arg(&ctx, 2) & AT_REMOVEDIR != 0 {
        FileOp::Rmdir
    } else {
        FileOp::Unlink
    };
    on_paths(&ctx, op, at(0, 1), None)
}

#[tracepoint]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Unlink, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Rmdir, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_mkdirat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Mkdir, at(0, 1), None)
}

#[tracepoint]
pub fn sys_enter_mkdir(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Mkdir, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_mknodat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Mknod, at(0, 1), None)
}

#[tracepoint]
pub fn sys_enter_mknod(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Mknod, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Truncate, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_fchmodat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chmod, at(0, 1), None)
}

/// fchmodat2 (6.6+): attached where the kernel has it.
#[tracepoint]
pub fn sys_enter_fchmodat2(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chmod, at(0, 1), None)
}

#[tracepoint]
pub fn sys_enter_chmod(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chmod, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_fchmod(ctx: TracePointContext) -> u32 {
    on_fd(&ctx, FileOp::Chmod, 0)
}

#[tracepoint]
pub fn sys_enter_fchownat(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chown, at(0, 1), None)
}

#[tracepoint]
pub fn sys_enter_chown(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chown, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_lchown(ctx: TracePointContext) -> u32 {
    on_paths(&ctx, FileOp::Chown, cwd(0), None)
}

#[tracepoint]
pub fn sys_enter_fchown(ctx: TracePointContext) -> u32 {
    on_fd(&ctx, FileOp::Chown, 0)
}
