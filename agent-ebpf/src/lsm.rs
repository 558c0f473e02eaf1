//! BPF LSM hooks: the kernel asks before the exec, the open or the connect
//! happens, and a refusal is an EPERM the process sees. They judge resolved
//! objects (the file's own path via bpf_d_path), so symlinks, `..`, `//` and
//! `/proc/self/root` name the file they reach.
use agent_common::{AF_UNIX, Access, EventKind, FileOp, Hook, MODE_LSM, PATH_MAX, ProcTag};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_d_path, bpf_probe_read_kernel},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    change,
    decide::{self, Session},
    enforce, guard, layout,
    record::Record,
    resolve, tagging,
};

/// Argument `n` of the hook, read at a literal offset of the context (an
/// array of u64): the verifier types it from the hook's BTF (a `struct file
/// *` stays one) only for a read at the context pointer plus a constant,
/// which LLVM does not promise for a computed offset.
macro_rules! lsm_arg {
    ($ctx:expr, 0) => {
        lsm_arg!(@load $ctx, "0")
    };
    ($ctx:expr, 1) => {
        lsm_arg!(@load $ctx, "8")
    };
    ($ctx:expr, 2) => {
        lsm_arg!(@load $ctx, "16")
    };
    ($ctx:expr, 3) => {
        lsm_arg!(@load $ctx, "24")
    };
    ($ctx:expr, 4) => {
        lsm_arg!(@load $ctx, "32")
    };
    ($ctx:expr, 5) => {
        lsm_arg!(@load $ctx, "40")
    };
    (@load $ctx:expr, $off:literal) => {{
        let v: u64;
        // SAFETY: a read of the hook's arguments, inside the context.
        unsafe {
            core::arch::asm!(
                concat!("{0} = *(u64 *)({1} + ", $off, ")"),
                out(reg) v,
                in(reg) $ctx.as_ptr(),
            )
        };
        v
    }};
}

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_CREATED: u32 = 0x100000;
/// Set on files the kernel opens for itself underneath another open:
/// overlayfs's backing file (6.1: `open_with_fake_path`; later kernels add
/// FMODE_BACKING beside it). The outer open of the same path was judged.
const FMODE_NOACCOUNT: u32 = 0x20000000;
use agent_common::abi::{BPF_FS_MAGIC, O_CREAT, O_RDWR, O_WRONLY};

/// The tag of a tagged caller when LSM mode is on, unless a previous LSM
/// already refused (`retval`, which must stand), and its session's policy
/// (none yet: the call is reported, not judged).
#[inline(always)]
fn caller(retval: u64) -> Option<(ProcTag, Option<Session>)> {
    if retval as i32 != 0 {
        return None;
    }
    let tag = tagging::lookup_current()?;
    if decide::config().mode != MODE_LSM {
        return None;
    }
    Some((tag, decide::session(tag.session)))
}

/// Fills the record's path with the resolved path of `path` (a `struct
/// path *` the verifier knows as such).
///
/// # Safety
/// `path` must point into a kernel object of the hook's arguments.
#[inline(always)]
unsafe fn resolve(rec: &mut Record, path: *mut u8) {
    let buf = &mut rec.data()[..PATH_MAX];
    // SAFETY: bpf_d_path writes at most PATH_MAX bytes into the record.
    let n = unsafe { bpf_d_path(path.cast(), buf.as_mut_ptr().cast(), PATH_MAX as u32) };
    rec.set_path_len(n);
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    match try_bprm(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_bprm(ctx: &LsmContext) -> Result<i32, i32> {
    let bprm = lsm_arg!(ctx, 0) as *const u8;
    let Some((tag, session)) = caller(lsm_arg!(ctx, 1)) else {
        return Ok(0);
    };
    let l = layout::get();
    let mut rec = Record::begin(Hook::Exec, EventKind::Exec, &tag).map_err(|_| 0)?;
    // SAFETY: `bprm` is the hook's argument; offsets from this kernel's BTF.
    unsafe {
        let file: *mut u8 = *(bprm.add(l.bprm_file as usize) as *const *mut u8);
        resolve(&mut rec, file.add(l.file_f_path as usize));
    }
    let Some(session) = session else {
        return Ok(0);
    };
    let (path, len) = rec.path();
    let j = session.path(Access::Exec, path, len);
    session.commit(&j);
    let ret = enforce::answer(&j, &mut rec);
    if ret != 0 {
        // sched_process_exec will not run: report the refusal here.
        rec.emit(Hook::Exec);
    } else {
        enforce::keep_exec_verdict(&j);
    }
    Ok(ret)
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    match try_file_open(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_file_open(ctx: &LsmContext) -> Result<i32, i32> {
    let file = lsm_arg!(ctx, 0) as *mut u8;
    let Some((tag, session)) = caller(lsm_arg!(ctx, 1)) else {
        return Ok(0);
    };
    let l = layout::get();
    // SAFETY: `file` is the hook's argument; offsets from this kernel's BTF.
    let mode = unsafe { bpf_probe_read_kernel(file.add(l.file_f_mode as usize) as *const u32) }
        .unwrap_or(0);
    if mode & FMODE_NOACCOUNT != 0 {
        return Ok(0);
    }
    let mut rec = Record::begin(Hook::Open, EventKind::Open, &tag).map_err(|_| 0)?;
    // SAFETY: as above.
    unsafe { resolve(&mut rec, file.add(l.file_f_path as usize)) };
    // The open flags are gone by now (O_CREAT and O_TRUNC are cleared):
    // rebuild the access from the file's mode.
    let mut flags = match (mode & FMODE_READ != 0, mode & FMODE_WRITE != 0) {
        (_, false) => 0,
        (false, true) => O_WRONLY,
        (true, true) => O_RDWR,
    };
    if mode & FMODE_CREATED != 0 {
        flags |= O_CREAT;
    }
    let h = rec.header();
    h.arg0 = -100;
    h.arg1 = flags;
    let mut ret = 0;
    // Pipes, sockets and anonymous inodes reopened through /proc/self/fd
    // resolve to `pipe:[N]` and the like: not files any rule names.
    let file_like = rec.path().0.first() == Some(&b'/');
    if let Some(session) = session
        && file_like
    {
        // Judged by its protected name, if it has one (see main.rs).
        let dentry = resolve::dentry_of_path(file.wrapping_add(l.file_f_path as usize));
        resolve::known_name(&mut rec, dentry);
        let (path, len) = rec.path();
        let j = enforce::judge_open(&session, flags, path, len);
        session.commit(&j);
        ret = enforce::answer(&j, &mut rec);
    }
    rec.emit(Hook::Open);
    Ok(ret)
}

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    match try_socket_connect(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_socket_connect(ctx: &LsmContext) -> Result<i32, i32> {
    let address = lsm_arg!(ctx, 1) as *const u8;
    let addrlen = lsm_arg!(ctx, 2) as i32;
    let Some((tag, session)) = caller(lsm_arg!(ctx, 3)) else {
        return Ok(0);
    };
    // SAFETY: the kernel's copy of the caller's sockaddr.
    unsafe { judge_address(&tag, session, address, addrlen) }
}

/// Reports and judges a connect to (or a datagram for) `address`, the
/// kernel's copy of a sockaddr of `addrlen` bytes.
///
/// # Safety
/// `address` must point at kernel memory of at least `addrlen` bytes.
#[inline(always)]
unsafe fn judge_address(
    tag: &ProcTag,
    session: Option<Session>,
    address: *const u8,
    addrlen: i32,
) -> Result<i32, i32> {
    let mut rec = Record::begin(Hook::Connect, EventKind::Connect, tag).map_err(|_| 0)?;
    rec.header().arg0 = -1;
    rec.header().arg2 = addrlen as i64;
    // SAFETY: the caller's promise.
    unsafe { rec.read_sockaddr(address) };
    let mut ret = 0;
    if let Some(session) = session {
        let j = enforce::judge_connect(&session, &mut rec);
        session.commit(&j);
        ret = enforce::answer(&j, &mut rec);
    }
    rec.emit(Hook::Connect);
    Ok(ret)
}

/// A datagram to a unix address needs no connect: it is judged as one. Inet
/// addresses are the cgroup sendmsg hooks'.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    match try_socket_sendmsg(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_socket_sendmsg(ctx: &LsmContext) -> Result<i32, i32> {
    let Some((tag, session)) = caller(lsm_arg!(ctx, 3)) else {
        return Ok(0);
    };
    let msg = lsm_arg!(ctx, 1) as *const u8;
    // struct msghdr { void *msg_name; int msg_namelen; ... }, the kernel's
    // copy; msg_name points at the kernel's copy of the address.
    // SAFETY: kernel pointers from the hook's arguments, read with the
    // checked helper.
    let name = unsafe { bpf_probe_read_kernel(msg as *const u64) }.map_err(|_| 0)? as *const u8;
    if name.is_null() {
        return Ok(0);
    }
    let family = unsafe { bpf_probe_read_kernel(name as *const u16) }.map_err(|_| 0)?;
    if family != AF_UNIX {
        return Ok(0);
    }
    let namelen = unsafe { bpf_probe_read_kernel(msg.add(8) as *const i32) }.map_err(|_| 0)?;
    // SAFETY: as above.
    unsafe { judge_address(&tag, session, name, namelen) }
}

// ---- self-protection ----------------------------------------------------
//
// A process inside a session may not stop, blind or reprogram its guard:
// no signal or ptrace aimed at the daemon, no bpf() at all. Refused whatever
// the policy says, and even with --audit-only: the audit itself is what
// they would disable.

/// Whether `task` (a `struct task_struct *` from the hook's arguments)
/// belongs to the daemon.
#[inline(always)]
fn is_guard(task: *const u8) -> bool {
    let guard = decide::config().guard_tgid;
    guard != 0 && tgid_of(task) == Some(guard)
}

/// The thread-group id of `task` (a `struct task_struct *` from the hook's
/// arguments).
#[inline(always)]
fn tgid_of(task: *const u8) -> Option<u32> {
    let l = layout::get();
    // SAFETY: a kernel pointer from the hook's arguments; offset from BTF.
    let tgid = unsafe { bpf_probe_read_kernel(task.add(l.task_tgid as usize) as *const i32) };
    tgid.ok().map(|t| t as u32)
}

#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    match try_task_kill(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_task_kill(ctx: &LsmContext) -> Result<i32, i32> {
    // task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //           const struct cred *cred), then the previous LSM's answer.
    let target = lsm_arg!(ctx, 0) as *const u8;
    let sig = lsm_arg!(ctx, 2) as i32;
    let previous = lsm_arg!(ctx, 4) as i32;
    if previous != 0 {
        return Ok(previous);
    }
    // Signal 0 only probes for existence.
    if sig == 0 {
        return Ok(0);
    }
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    if !is_guard(target) {
        return Ok(0);
    }
    Ok(guard::refuse(&tag, b"signal:agentgate"))
}

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    match try_ptrace(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_ptrace(ctx: &LsmContext) -> Result<i32, i32> {
    // ptrace_access_check(struct task_struct *child, unsigned int mode)
    let child = lsm_arg!(ctx, 0) as *const u8;
    let previous = lsm_arg!(ctx, 2) as i32;
    if previous != 0 {
        return Ok(previous);
    }
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    if is_guard(child) {
        return Ok(guard::refuse(&tag, b"ptrace:agentgate"));
    }
    // Any other process outside the caller's session: ptrace, and the
    // /proc/PID files behind the same check (environ, mem, fd, cwd, exe).
    if tag_of(child).is_some_and(|t| t.session == tag.session) {
        return Ok(0);
    }
    // NOAUDIT: a probe (ps reading /proc/PID/stat): refused, not reported.
    if lsm_arg!(ctx, 1) as u32 & PTRACE_MODE_NOAUDIT != 0 {
        return Ok(-enforce::EPERM);
    }
    Ok(guard::refuse(&tag, b"ptrace:outside-session"))
}

const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// The tag of `task` (a `struct task_struct *` from the hook's arguments).
#[inline(always)]
fn tag_of(task: *const u8) -> Option<ProcTag> {
    let tgid = tgid_of(task)?;
    // SAFETY: the value is copied out at once.
    unsafe { crate::maps::TAGS.get(&tgid) }.copied()
}

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    match try_bpf(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_bpf(ctx: &LsmContext) -> Result<i32, i32> {
    // bpf(int cmd, union bpf_attr *attr, unsigned int size)
    let previous = lsm_arg!(ctx, 3) as i32;
    if previous != 0 {
        return Ok(previous);
    }
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    Ok(guard::refuse(&tag, b"bpf()"))
}

// ---- confinement: no new user namespaces, no mounts ----------------------

#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    // userns_create(const struct cred *cred)
    refuse_tagged(lsm_arg!(ctx, 1) as i32, b"unshare:namespace")
}

#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    // sb_mount(const char *dev_name, const struct path *path,
    //          const char *type, unsigned long flags, void *data)
    refuse_tagged(lsm_arg!(ctx, 5) as i32, b"mount")
}

#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    // move_mount(const struct path *from_path, const struct path *to_path)
    refuse_tagged(lsm_arg!(ctx, 2) as i32, b"move_mount")
}

/// Refuses the hook's call for a tagged caller (keeping an earlier LSM's
/// refusal).
#[inline(always)]
fn refuse_tagged(previous: i32, what: &[u8]) -> i32 {
    if previous != 0 {
        return previous;
    }
    match tagging::lookup_current() {
        Some(tag) => guard::refuse(&tag, what),
        None => 0,
    }
}

/// Unpinning agentgate's programs or maps is an unlink on bpffs (the
/// `bpf()` refusal does not cover it).
#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    // inode_unlink(struct inode *dir, struct dentry *dentry)
    let previous = lsm_arg!(ctx, 2) as i32;
    if previous != 0 {
        return previous;
    }
    let Some(tag) = tagging::lookup_current() else {
        return 0;
    };
    let dir = lsm_arg!(ctx, 0) as *const u8;
    let l = layout::get();
    // SAFETY: kernel pointers from the hook's arguments; offsets from BTF.
    let magic = unsafe {
        bpf_probe_read_kernel(dir.add(l.inode_i_sb as usize) as *const *const u8)
            .and_then(|sb| bpf_probe_read_kernel(sb.add(l.sb_s_magic as usize) as *const u64))
    };
    if magic.is_ok_and(|m| m & 0xffff_ffff == u64::from(BPF_FS_MAGIC)) {
        return guard::refuse(&tag, b"unlink:bpffs");
    }
    0
}

// ---- changes to the file system other than opens (change.rs) -----------
//
// The dentry of a name to be created is negative but already hashed under
// its directory, so the walk from it gives the new path.

#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    // path_rename(const struct path *old_dir, struct dentry *old_dentry,
    //             const struct path *new_dir, struct dentry *new_dentry,
    //             unsigned int flags)
    let Some(tag) = change_caller(lsm_arg!(ctx, 5)) else {
        return 0;
    };
    let (old_dir, old) = (lsm_arg!(ctx, 0) as *const u8, lsm_arg!(ctx, 1) as *const u8);
    let (new_dir, new) = (lsm_arg!(ctx, 2) as *const u8, lsm_arg!(ctx, 3) as *const u8);
    change::judge(&tag, FileOp::Rename, |rec, second| {
        let (dir, dentry) = if second {
            (new_dir, new)
        } else {
            (old_dir, old)
        };
        // SAFETY: the hook's arguments.
        unsafe { resolve::dentry_into_record(rec, dir, dentry) };
        dentry
    })
}

#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    // path_link(struct dentry *old_dentry, const struct path *new_dir,
    //           struct dentry *new_dentry)
    let Some(tag) = change_caller(lsm_arg!(ctx, 3)) else {
        return 0;
    };
    let (old, new_dir, new) = (
        lsm_arg!(ctx, 0) as *const u8,
        lsm_arg!(ctx, 1) as *const u8,
        lsm_arg!(ctx, 2) as *const u8,
    );
    change::judge(&tag, FileOp::Link, |rec, second| {
        // A hard link stays on one mount: the source is on new_dir's.
        let dentry = if second { new } else { old };
        // SAFETY: the hook's arguments.
        unsafe { resolve::dentry_into_record(rec, new_dir, dentry) };
        dentry
    })
}

#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    // path_symlink(const struct path *dir, struct dentry *dentry,
    //              const char *old_name)
    let Some(tag) = change_caller(lsm_arg!(ctx, 3)) else {
        return 0;
    };
    let (dir, dentry, contents) = (
        lsm_arg!(ctx, 0) as *const u8,
        lsm_arg!(ctx, 1) as *const u8,
        lsm_arg!(ctx, 2) as *const u8,
    );
    change::judge(&tag, FileOp::Symlink, |rec, second| {
        // SAFETY: the hook's arguments (the contents are a kernel copy).
        unsafe {
            if second {
                rec.read_kernel_path(contents);
            } else {
                resolve::dentry_into_record(rec, dir, dentry);
            }
        }
        // A new name: no file behind it yet.
        core::ptr::null()
    })
}

/// A hook on a name in a directory: `(const struct path *dir, struct dentry
/// *dentry, …)`, the previous LSM's answer at argument `previous`.
macro_rules! dir_entry_hook {
    ($name:ident, $hook:literal, $op:expr, $previous:tt) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            let Some(tag) = change_caller(lsm_arg!(ctx, $previous)) else {
                return 0;
            };
            let (dir, dentry) = (lsm_arg!(ctx, 0) as *const u8, lsm_arg!(ctx, 1) as *const u8);
            change::judge(&tag, $op, |rec, _| {
                // SAFETY: the hook's arguments.
                unsafe { resolve::dentry_into_record(rec, dir, dentry) };
                dentry
            })
        }
    };
}

#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    // path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
    //            unsigned int dev): also what an open with O_CREAT calls
    // (may_o_create) before it makes a regular file.
    let Some(tag) = change_caller(lsm_arg!(ctx, 4)) else {
        return 0;
    };
    let (dir, dentry) = (lsm_arg!(ctx, 0) as *const u8, lsm_arg!(ctx, 1) as *const u8);
    let kind = lsm_arg!(ctx, 2) as u32 & S_IFMT;
    let op = if kind == 0 || kind == S_IFREG {
        FileOp::Create
    } else {
        FileOp::Mknod
    };
    change::judge(&tag, op, |rec, _| {
        // SAFETY: the hook's arguments.
        unsafe { resolve::dentry_into_record(rec, dir, dentry) };
        dentry
    })
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// A hook on a file by its path: `(const struct path *path, …)`.
macro_rules! path_hook {
    ($name:ident, $hook:literal, $op:expr, $previous:tt) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            let Some(tag) = change_caller(lsm_arg!(ctx, $previous)) else {
                return 0;
            };
            let path = lsm_arg!(ctx, 0) as *const u8;
            change::judge(&tag, $op, |rec, _| {
                // SAFETY: the hook's argument.
                unsafe { resolve::into_record(rec, path) };
                resolve::dentry_of_path(path)
            })
        }
    };
}

dir_entry_hook!(path_unlink, "path_unlink", FileOp::Unlink, 2);
dir_entry_hook!(path_rmdir, "path_rmdir", FileOp::Rmdir, 2);
dir_entry_hook!(path_mkdir, "path_mkdir", FileOp::Mkdir, 3);
path_hook!(path_truncate, "path_truncate", FileOp::Truncate, 1);
path_hook!(path_chmod, "path_chmod", FileOp::Chmod, 2);
path_hook!(path_chown, "path_chown", FileOp::Chown, 3);

/// The tag of a tagged caller when LSM mode is on, unless a previous LSM
/// already refused.
#[inline(always)]
fn change_caller(previous: u64) -> Option<ProcTag> {
    caller(previous).map(|(tag, _)| tag)
}
