//! agentgate's kernel programs.
//!
//! Small and dumb on purpose: look the caller up, emit a record, count. Every
//! policy decision is made in user space and reaches the kernel as map
//! contents. An untagged process costs one hash look-up (two when cgroup
//! sessions exist) and nothing else.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod change;
mod decide;
mod enforce;
mod guard;
mod layout;
mod lsm;
mod maps;
mod object;
mod record;
mod resolve;
mod sock_addr;
mod tagging;

use agent_common::{
    AF_INET, AF_INET6, AF_UNIX, Access, ENFORCED_NONE, ENFORCED_REFUSED, EnforceConfig, EventKind,
    Hook, MODE_FALLBACK, MODE_LSM, PATH_RESOLVED, ProcTag, Verdict,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{decide::Judgement, maps::OPEN_FLAGS, record::Record};

/// Offsets of syscall arguments in a `syscalls:sys_enter_*` record: the
/// common header, `__syscall_nr`, padding, then one 8-byte slot per
/// argument. This layout is stable ABI (unlike the sched records).
const fn syscall_arg(n: usize) -> usize {
    16 + 8 * n
}

// ---- exec ---------------------------------------------------------------

/// Runs once the new image is loaded and before it runs an instruction: a
/// SIGKILL sent here (fallback) is delivered on the way back to user space,
/// so a refused program never runs. Only successful execs arrive, which
/// spares a shell's PATH search from judgement; the argv block is read from
/// the new mm.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let l = layout::get();
    let mut rec = Record::begin(Hook::Exec, EventKind::Exec, &tag)?;
    rec.header().arg0 = AT_FDCWD;
    // SAFETY: offsets from this kernel's tracefs format.
    let filename = unsafe {
        let loc: u32 = ctx.read_at(l.exec_filename as usize).map_err(|_| 0u32)?;
        (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize)
    };
    // SAFETY: offsets from this kernel's tracefs format and BTF.
    unsafe {
        rec.read_kernel_path(filename);
        let task = bpf_get_current_task() as *const u8;
        if let Ok(mm) = bpf_probe_read_kernel(task.add(l.task_mm as usize) as *const *const u8) {
            let start = bpf_probe_read_kernel(mm.add(l.mm_arg_start as usize) as *const u64);
            let end = bpf_probe_read_kernel(mm.add(l.mm_arg_end as usize) as *const u64);
            if let (Ok(start), Ok(end)) = (start, end) {
                rec.read_argv_block(start as *const u8, end.saturating_sub(start) as usize);
            }
        }
    }
    let cfg = decide::config();
    if cfg.mode == MODE_LSM {
        // bprm_check_security judged the resolved file; report its verdict.
        if let Some(j) = enforce::take_exec_verdict() {
            rec.judge(&j, ENFORCED_NONE);
        }
    } else if cfg.mode == MODE_FALLBACK
        && let Some(session) = decide::session(tag.session)
    {
        // The image the kernel loaded, by its own path (a symlink, a
        // relative name or /proc/self/exe reach the real file), and, for a
        // script, the path it was run by (which names the script, while the
        // image is its interpreter) when that path says what it names.
        let mut j = Judgement::NONE;
        if let Some(file) = resolve::exe_file() {
            // SAFETY: the new image's `struct file`.
            unsafe { resolve::into_record(&mut rec, resolve::path_of_file(file)) };
            if rec.header().path_flags == PATH_RESOLVED {
                let (path, len) = rec.path();
                j.merge(&session.path(Access::Exec, path, len));
            }
        }
        // SAFETY: as above.
        unsafe { rec.read_kernel_path(filename) };
        rec.header().path_flags = 0;
        let (path, len) = rec.path();
        if decide::is_plain_absolute(path, len) {
            j.merge(&session.path(Access::Exec, path, len));
        }
        let enforced = enforce::at_tracepoint(&cfg, &j);
        session.commit(&j);
        rec.judge(&j, enforced);
    }
    rec.emit(Hook::Exec);
    Ok(0)
}

// ---- open ---------------------------------------------------------------

/// Where an open-family syscall keeps its flags (openat2: in `struct
/// open_how`, whose first u64 they are).
struct OpenArgs {
    flags: Option<usize>,
}

use agent_common::abi::{AT_FDCWD, O_CREAT, O_TRUNC, O_WRONLY};
const O_WRONLY_CREAT_TRUNC: i64 = O_WRONLY | O_CREAT | O_TRUNC;

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let args = OpenArgs { flags: Some(2) };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // openat2(dfd, path, struct open_how *how, size)
    let args = OpenArgs { flags: None };
    match try_open(&ctx, &args, true) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let args = OpenArgs { flags: Some(1) };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let args = OpenArgs { flags: None };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

/// Entry: keep the flags for the exit, where the opened file is judged.
/// The path as written says nothing certain (a relative name, `..`, a
/// symlink, `/proc/self/fd/N/…`); the file the kernel reached does.
fn try_open(ctx: &TracePointContext, args: &OpenArgs, how: bool) -> Result<u32, u32> {
    if tagging::lookup_current().is_none() || decide::config().mode != MODE_FALLBACK {
        // LSM mode: file_open judges opens with the resolved path.
        return Ok(0);
    }
    // SAFETY: offsets are those of the matching sys_enter_* record.
    let flags = unsafe {
        let mut flags = match args.flags {
            Some(i) => ctx.read_at::<i64>(syscall_arg(i)).unwrap_or(0),
            None => O_WRONLY_CREAT_TRUNC,
        };
        if how {
            let how_ptr: *const u64 = ctx.read_at(syscall_arg(2)).map_err(|_| 0u32)?;
            if let Ok(f) = bpf_probe_read_user(how_ptr) {
                flags = f as i64;
            }
        }
        flags
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OPEN_FLAGS.insert(&tid, &flags, 0);
    Ok(0)
}

/// `ret` of a `syscalls:sys_exit_*` record: after the common header and
/// `__syscall_nr` (stable ABI, like the entry records).
pub const SYSCALL_RET: usize = 16;

/// The exit of every open-family syscall (openat, openat2, open, creat):
/// one program attached to each tracepoint, whose records are alike, so the
/// verifier walks it once (about 2.5 s a copy on 6.18).
#[tracepoint]
pub fn sys_exit_opens(ctx: TracePointContext) -> u32 {
    match try_open_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Exit: judge the file the call opened, by the path the kernel reaches it
/// by, and kill before the process returns to see the descriptor. A call
/// that opened nothing is not reported (as in LSM mode, where `file_open`
/// never runs for it).
fn try_open_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out at once.
    let Some(flags) = (unsafe { OPEN_FLAGS.get(&tid) }).copied() else {
        return Ok(0);
    };
    let _ = OPEN_FLAGS.remove(&tid);
    // SAFETY: the exit record's return value.
    let fd: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.map_err(|_| 0u32)?;
    let Some(file) = resolve::file_of_fd(fd) else {
        return Ok(0);
    };
    let mut rec = Record::begin(Hook::Open, EventKind::Open, &tag)?;
    let h = rec.header();
    h.arg0 = AT_FDCWD;
    h.arg1 = flags;
    let path = resolve::path_of_file(file);
    // SAFETY: a `struct file` of this process's descriptor table.
    unsafe { resolve::into_record(&mut rec, path) };
    let cfg = decide::config();
    if rec.header().path_flags == PATH_RESOLVED
        && let Some(session) = decide::session(tag.session)
    {
        // A file the rules protect is judged by the name they know it by,
        // whatever name reached it (one judgement: two would take the
        // verifier past its budget).
        resolve::known_name(&mut rec, resolve::dentry_of_path(path));
        let (p, len) = rec.path();
        let j = enforce::judge_open(&session, flags, p, len);
        let enforced = enforce::at_tracepoint(&cfg, &j);
        session.commit(&j);
        rec.judge(&j, enforced);
    }
    rec.emit(Hook::Open);
    Ok(0)
}

// ---- connect ------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match try_connect(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_connect(ctx: &TracePointContext) -> Result<u32, u32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let cfg = decide::config();
    if cfg.mode == MODE_LSM {
        // socket_connect reports and judges.
        return Ok(0);
    }
    let mut rec = Record::begin(Hook::Connect, EventKind::Connect, &tag)?;
    // SAFETY: offsets are those of sys_enter_connect(fd, uservaddr, addrlen).
    unsafe {
        rec.header().arg0 = ctx.read_at::<i64>(syscall_arg(0)).unwrap_or(-1);
        rec.header().arg2 = ctx.read_at::<i64>(syscall_arg(2)).unwrap_or(0);
        let sa: *const u8 = ctx.read_at(syscall_arg(1)).map_err(|_| 0u32)?;
        rec.read_sockaddr(sa);
    }
    judge_fallback_send(&cfg, &tag, &mut rec);
    rec.emit(Hook::Connect);
    Ok(0)
}

/// Fallback: judges a connect or a datagram's address. The cgroup hooks
/// refuse inet addresses, so this one only reports those, and kills for
/// kill. No hook refuses a unix address: a blocking verdict kills here, on
/// the way back to user space — after a connect, before anything is sent on
/// it; a datagram sent in this same call is delivered first.
#[inline(always)]
fn judge_fallback_send(cfg: &EnforceConfig, tag: &ProcTag, rec: &mut Record) {
    if cfg.mode != MODE_FALLBACK {
        return;
    }
    let Some(session) = decide::session(tag.session) else {
        return;
    };
    let j = enforce::judge_connect(&session, rec);
    let inet = matches!(rec.header().family, AF_INET | AF_INET6);
    let enforced = if j.verdict == Verdict::Kill || !inet {
        enforce::at_tracepoint(cfg, &j)
    } else if cfg.block != 0 && j.verdict.blocks() {
        ENFORCED_REFUSED
    } else {
        ENFORCED_NONE
    };
    rec.judge(&j, enforced);
}

/// `sendto(fd, buf, len, flags, addr, addrlen)` and `sendmsg(fd, msg,
/// flags)` with an address: a unix datagram needs no connect. Only unix
/// addresses are reported here (the cgroup sendmsg hooks see inet ones).
#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets are those of sys_enter_sendto.
    let addr = unsafe { ctx.read_at::<u64>(syscall_arg(4)) }.unwrap_or(0);
    let len = unsafe { ctx.read_at::<i64>(syscall_arg(5)) }.unwrap_or(0);
    match try_send(&ctx, addr as *const u8, len) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // struct user_msghdr { void *msg_name; int msg_namelen; ... }
    // SAFETY: offsets are those of sys_enter_sendmsg; the header is user memory.
    let msg = unsafe { ctx.read_at::<u64>(syscall_arg(1)) }.unwrap_or(0) as *const u8;
    let name = unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(0);
    let len = unsafe { bpf_probe_read_user(msg.wrapping_add(8) as *const i32) }.unwrap_or(0);
    match try_send(&ctx, name as *const u8, len as i64) {
        Ok(v) | Err(v) => v,
    }
}

fn try_send(ctx: &TracePointContext, addr: *const u8, len: i64) -> Result<u32, u32> {
    if addr.is_null() {
        return Ok(0);
    }
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let cfg = decide::config();
    if cfg.mode != MODE_FALLBACK {
        return Ok(0);
    }
    // SAFETY: user memory, read with the checked helper.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.map_err(|_| 0u32)?;
    if family != AF_UNIX {
        return Ok(0);
    }
    let mut rec = Record::begin(Hook::Connect, EventKind::Connect, &tag)?;
    rec.header().arg0 = unsafe { ctx.read_at::<i64>(syscall_arg(0)) }.unwrap_or(-1);
    rec.header().arg2 = len;
    // SAFETY: as above.
    unsafe { rec.read_sockaddr(addr) };
    judge_fallback_send(&cfg, &tag, &mut rec);
    rec.emit(Hook::Connect);
    Ok(0)
}

// ---- process lifetime ---------------------------------------------------

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    match tagging::on_fork(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match tagging::on_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}
