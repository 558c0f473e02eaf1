//! Changes to the file system other than opens: rename, link, symlink,
//! unlink, rmdir, mkdir, mknod, truncate, chmod, chown. LSM mode judges
//! them in the `path_*` hooks (lsm.rs) and refuses with EPERM; fallback
//! mode judges them as the syscall returns, here, and kills a refused
//! caller, which stops the process but not that one call: the kernel has
//! completed it (README, threat model).
//!
//! Fallback paths: an absolute name is judged as written when it is plain
//! (no `.`, `..` or `//`); a relative one is put after the kernel's own path
//! of its directory (the dirfd's file, or the working directory), so
//! `cd /etc && mv x passwd` and dirfd-relative calls are judged by where they
//! are. A symlink inside the name is not followed at entry.
use agent_common::{
    EventKind, FileOp, Hook, MODE_FALLBACK, MODE_LSM, PATH_MAX, PATH_PARTIAL, PATH_RESOLVED,
    ProcTag, abi::AT_FDCWD as AT_FDCWD_I64,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::{
    SYSCALL_RET,
    decide::{self, Judgement, Session},
    enforce,
    record::Record,
    resolve, syscall_arg, tagging,
};

/// Judges and reports one change by a tagged process. `fill(rec, second)`
/// writes one end's path into the record's path area and returns the
/// dentry of the file it names (null: none yet, or not known): the second
/// end (a rename's or link's new name, a symlink's contents) first, which
/// is then moved to the record's second-path area. A file that rules
/// protect (`KNOWN_INODES`) is judged by the name they know it by instead.
/// Returns what an LSM hook returns (0 or -EPERM).
#[inline(always)]
pub fn judge(
    tag: &ProcTag,
    op: FileOp,
    mut fill: impl FnMut(&mut Record, bool) -> *const u8,
) -> i32 {
    let Ok(mut rec) = Record::begin(Hook::Change, EventKind::Change, tag) else {
        return 0;
    };
    rec.header().arg1 = op as i64;
    let session = decide::session(tag.session);
    let mut j = Judgement::NONE;
    if op.has_second_path() {
        let dentry = fill(&mut rec, true);
        // A symlink's contents are not a path it writes.
        if op != FileOp::Symlink
            && let Some(session) = &session
        {
            judge_end(&mut rec, session, op, true, dentry, &mut j);
        }
        rec.keep_as_second_path();
    }
    let dentry = fill(&mut rec, false);
    if let Some(session) = &session {
        judge_end(&mut rec, session, op, false, dentry, &mut j);
    }
    if let Some(session) = &session {
        session.commit(&j);
    }
    let cfg = decide::config();
    let ret = if cfg.mode == MODE_LSM {
        enforce::answer(&j, &mut rec)
    } else {
        rec.judge(&j, enforce::at_tracepoint(&cfg, &j));
        0
    };
    // A new file let through is reported by the open that made it.
    if op != FileOp::Create || j.verdict.blocks() {
        rec.emit(Hook::Change);
    }
    ret
}

/// Judges the end of a change whose path is in the record, or, when the
/// file behind `dentry` is one the rules protect, by the name they know it
/// by (whatever name reached it).
#[inline(always)]
fn judge_end(
    rec: &mut Record,
    session: &Session,
    op: FileOp,
    second: bool,
    dentry: *const u8,
    j: &mut Judgement,
) {
    if !dentry.is_null() {
        resolve::known_name(rec, dentry);
    }
    if judgeable(rec) {
        let (path, len) = rec.path();
        j.merge(&enforce::judge_change(session, op, second, path, len));
    }
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
//
// Entry keeps the call's arguments; exit judges the call if it succeeded
// and kills a refused caller before it returns. A call that failed changed
// nothing and is not judged (as in LSM mode, where `path_mkdir` never runs
// for a directory that exists, and where `mkdir -p` of `~` goes unseen).

/// tid → the arguments of a change syscall in flight.
#[map]
static CHANGE_ARGS: LruHashMap<u32, [u64; 6]> = LruHashMap::with_max_entries(16384, 0);

/// Entry: keep the arguments of a tagged caller's call in fallback mode,
/// in the shape `shape` gives them.
#[inline(always)]
fn keep_args(ctx: &TracePointContext, shape: impl FnOnce([u64; 6]) -> [u64; 6]) -> u32 {
    if tagging::lookup_current().is_none() || decide::config().mode != MODE_FALLBACK {
        return 0;
    }
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        // SAFETY: a syscall argument slot of the tracepoint record.
        *a = unsafe { ctx.read_at::<u64>(syscall_arg(i)) }.unwrap_or(0);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = CHANGE_ARGS.insert(&tid, &shape(args), 0);
    0
}

/// Exit: the tag and the kept arguments of a call that succeeded.
#[inline(always)]
fn succeeded(ctx: &TracePointContext) -> Option<(ProcTag, [u64; 6])> {
    let tag = tagging::lookup_current()?;
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out at once.
    let args = *unsafe { CHANGE_ARGS.get(&tid) }?;
    let _ = CHANGE_ARGS.remove(&tid);
    // SAFETY: the exit record's return value.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.ok()?;
    (ret == 0).then_some((tag, args))
}

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

/// Argument `i` of the kept ones.
#[inline(always)]
fn slot(args: &[u64; 6], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// Fills the record's path with where `arg` names, as described at the top.
#[inline(always)]
fn fill_arg(args: &[u64; 6], rec: &mut Record, arg: Arg) {
    let name = slot(args, arg.name) as *const u8;
    // SAFETY: user memory, read through the checked helper.
    let first = unsafe { bpf_probe_read_user(name) }.unwrap_or(0);
    if first == b'/' {
        // SAFETY: as above.
        unsafe { rec.read_path(name) };
        return;
    }
    let dirfd = match arg.dirfd {
        Some(i) => slot(args, i) as i32,
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
    if rec.header().path_flags & PATH_RESOLVED == 0 || first == 0 {
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

/// One path (`first`) and, for rename and link, the new name (`second`).
#[inline(always)]
fn on_paths(tag: &ProcTag, args: &[u64; 6], op: FileOp, first: Arg, second: Option<Arg>) {
    judge(tag, op, |rec, is_second| {
        match (is_second, second) {
            (true, Some(arg)) => fill_arg(args, rec, arg),
            _ => fill_arg(args, rec, first),
        }
        // A name as written has no dentry here.
        core::ptr::null()
    });
}

/// symlink: the contents (as written, not judged) and the new name.
#[inline(always)]
fn on_symlink(tag: &ProcTag, args: &[u64; 6], contents: usize, new: Arg) {
    judge(tag, FileOp::Symlink, |rec, is_second| {
        if is_second {
            // SAFETY: user memory read through the checked helper.
            unsafe { rec.read_path(slot(args, contents) as *const u8) };
        } else {
            fill_arg(args, rec, new);
        }
        core::ptr::null()
    });
}

/// fchmod, fchown: the file behind a descriptor.
#[inline(always)]
fn on_fd(tag: &ProcTag, args: &[u64; 6], op: FileOp, fd: usize) {
    judge(tag, op, |rec, _| {
        let Some(file) = resolve::file_of_fd(slot(args, fd) as i32 as i64) else {
            rec.set_resolved_path(0, PATH_PARTIAL);
            return core::ptr::null();
        };
        let path = resolve::path_of_file(file);
        // SAFETY: a `struct file` of this process's descriptor table.
        unsafe { resolve::into_record(rec, path) };
        resolve::dentry_of_path(path)
    });
}

const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
/// AT_FDCWD as a kept argument.
const CWD: u64 = AT_FDCWD_I64 as u64;

/// The entry program of each change syscall. Each keeps its arguments in
/// the shape of its `*at` sibling (`rename(a, b)` as `renameat(AT_FDCWD, a,
/// AT_FDCWD, b)`), so that one exit program judges the whole family: the
/// exits are the large programs, and the verifier walks each once per
/// family instead of once per syscall (1 to 2.5 s a copy on 6.18).
macro_rules! change_entries {
    ($($enter:ident => |$a:ident| $shape:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            keep_args(&ctx, |$a| $shape)
        }
    )*};
}

change_entries! {
    sys_enter_renameat2 => |a| a;
    sys_enter_renameat => |a| a;
    sys_enter_rename => |a| [CWD, a[0], CWD, a[1], 0, 0];
    sys_enter_linkat => |a| a;
    sys_enter_link => |a| [CWD, a[0], CWD, a[1], 0, 0];
    sys_enter_symlinkat => |a| a;
    sys_enter_symlink => |a| [a[0], CWD, a[1], 0, 0, 0];
    sys_enter_unlinkat => |a| a;
    sys_enter_unlink => |a| [CWD, a[0], 0, 0, 0, 0];
    sys_enter_rmdir => |a| [CWD, a[0], AT_REMOVEDIR, 0, 0, 0];
    sys_enter_mkdirat => |a| a;
    sys_enter_mkdir => |a| [CWD, a[0], a[1], 0, 0, 0];
    sys_enter_mknodat => |a| a;
    sys_enter_mknod => |a| [CWD, a[0], a[1], a[2], 0, 0];
    sys_enter_truncate => |a| a;
    sys_enter_fchmodat => |a| a;
    // fchmodat2 (6.6+): attached where the kernel has it.
    sys_enter_fchmodat2 => |a| a;
    sys_enter_chmod => |a| [CWD, a[0], a[1], 0, 0, 0];
    sys_enter_fchmod => |a| a;
    sys_enter_fchownat => |a| a;
    sys_enter_chown => |a| [CWD, a[0], a[1], a[2], 0, 0];
    sys_enter_lchown => |a| [CWD, a[0], a[1], a[2], AT_SYMLINK_NOFOLLOW, 0];
    sys_enter_fchown => |a| a;
}

/// The exit program of each family (the loader attaches it to the exit
/// tracepoint of every member); the expression after `=>` gets the tag
/// (`t`) and the kept arguments (`a`) of a call that succeeded.
macro_rules! change_exits {
    ($($exit:ident => |$t:ident, $a:ident| $judge:expr;)*) => {$(
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if let Some(($t, $a)) = succeeded(&ctx) {
                let ($t, $a) = (&$t, &$a);
                $judge;
            }
            0
        }
    )*};
}

change_exits! {
    sys_exit_renames => |t, a| on_paths(t, a, FileOp::Rename, at(0, 1), Some(at(2, 3)));
    sys_exit_links => |t, a| on_paths(t, a, FileOp::Link, at(0, 1), Some(at(2, 3)));
    sys_exit_symlinks => |t, a| on_symlink(t, a, 0, at(1, 2));
    sys_exit_unlinks => |t, a| {
        let op = if a[2] & AT_REMOVEDIR != 0 { FileOp::Rmdir } else { FileOp::Unlink };
        on_paths(t, a, op, at(0, 1), None)
    };
    sys_exit_mkdirs => |t, a| on_paths(t, a, FileOp::Mkdir, at(0, 1), None);
    sys_exit_mknods => |t, a| on_paths(t, a, FileOp::Mknod, at(0, 1), None);
    sys_exit_truncate => |t, a| on_paths(t, a, FileOp::Truncate, cwd(0), None);
    sys_exit_chmods => |t, a| on_paths(t, a, FileOp::Chmod, at(0, 1), None);
    sys_exit_fchmod => |t, a| on_fd(t, a, FileOp::Chmod, 0);
    sys_exit_chowns => |t, a| on_paths(t, a, FileOp::Chown, at(0, 1), None);
    sys_exit_fchown => |t, a| on_fd(t, a, FileOp::Chown, 0);
}
