//! agentgate's kernel programs.
//!
//! Small and dumb on purpose: look the caller up, emit a record, count. Every
//! policy decision is made in user space and reaches the kernel as map
//! contents. An untagged process costs one hash look-up (two when cgroup
//! sessions exist) and nothing else.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod decide;
mod enforce;
mod guard;
mod layout;
mod lsm;
mod maps;
mod object;
mod record;
mod sock_addr;
mod tagging;

use agent_common::{
    Access, ENFORCED_NONE, ENFORCED_REFUSED, EventKind, Hook, MODE_FALLBACK, MODE_LSM, Verdict,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::record::Record;

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
    // SAFETY: offsets from this kernel's tracefs format and BTF.
    unsafe {
        let loc: u32 = ctx.read_at(l.exec_filename as usize).map_err(|_| 0u32)?;
        let filename = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
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
    } else if cfg.mode == MODE_FALLBACK {
        if let Some(session) = decide::session(tag.session) {
            let (path, len) = rec.path();
            if decide::is_plain_absolute(path, len) {
                let j = session.path(Access::Exec, path, len);
                let enforced = enforce::at_tracepoint(&cfg, &j);
                session.commit(&j);
                rec.judge(&j, enforced);
            }
        }
    }
    rec.emit(Hook::Exec);
    Ok(0)
}

// ---- open ---------------------------------------------------------------

/// Where each open-family syscall keeps its arguments.
struct OpenArgs {
    dirfd: Option<usize>,
    path: usize,
    flags: Option<usize>,
    mode: Option<usize>,
}

use agent_common::abi::{AT_FDCWD, O_CREAT, O_TRUNC, O_WRONLY};
const O_WRONLY_CREAT_TRUNC: i64 = O_WRONLY | O_CREAT | O_TRUNC;

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let args = OpenArgs {
        dirfd: Some(0),
        path: 1,
        flags: Some(2),
        mode: Some(3),
    };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // openat2(dfd, path, struct open_how *how, size): flags and mode are the
    // first two u64 of open_how.
    let args = OpenArgs {
        dirfd: Some(0),
        path: 1,
        flags: None,
        mode: None,
    };
    match try_open(&ctx, &args, true) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let args = OpenArgs {
        dirfd: None,
        path: 0,
        flags: Some(1),
        mode: Some(2),
    };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let args = OpenArgs {
        dirfd: None,
        path: 0,
        flags: None,
        mode: Some(1),
    };
    match try_open(&ctx, &args, false) {
        Ok(v) | Err(v) => v,
    }
}

fn try_open(ctx: &TracePointContext, args: &OpenArgs, how: bool) -> Result<u32, u32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let cfg = decide::config();
    if cfg.mode == MODE_LSM {
        // file_open reports opens with the resolved path.
        return Ok(0);
    }
    let mut rec = Record::begin(Hook::Open, EventKind::Open, &tag)?;
    // SAFETY: offsets are those of the matching sys_enter_* record.
    unsafe {
        let h = rec.header();
        h.arg0 = match args.dirfd {
            Some(i) => ctx.read_at::<i64>(syscall_arg(i)).unwrap_or(AT_FDCWD) as i32 as i64,
            None => AT_FDCWD,
        };
        h.arg1 = match args.flags {
            Some(i) => ctx.read_at::<i64>(syscall_arg(i)).unwrap_or(0),
            None => O_WRONLY_CREAT_TRUNC,
        };
        if let Some(i) = args.mode {
            h.arg2 = ctx.read_at::<i64>(syscall_arg(i)).unwrap_or(0);
        }
        if how {
            let how_ptr: *const [u64; 2] = ctx.read_at(syscall_arg(2)).map_err(|_| 0u32)?;
            if let Ok([flags, mode]) = bpf_probe_read_user(how_ptr) {
                h.arg1 = flags as i64;
                h.arg2 = mode as i64;
            }
        }
        let path: *const u8 = ctx.read_at(syscall_arg(args.path)).map_err(|_| 0u32)?;
        rec.read_path(path);
    }
    if cfg.mode == MODE_FALLBACK
        && let Some(session) = decide::session(tag.session)
    {
        let flags = rec.header().arg1;
        let (path, len) = rec.path();
        if decide::is_plain_absolute(path, len) {
            let j = enforce::judge_open(&session, flags, path, len);
            let enforced = enforce::at_tracepoint(&cfg, &j);
            session.commit(&j);
            rec.judge(&j, enforced);
        }
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
    if cfg.mode == MODE_FALLBACK
        && let Some(session) = decide::session(tag.session)
    {
        // The cgroup hook refuses; this one only reports, and kills for kill.
        let j = enforce::judge_connect(&session, &mut rec);
        let enforced = if j.verdict == Verdict::Kill {
            enforce::at_tracepoint(&cfg, &j)
        } else if cfg.block != 0 && j.verdict.blocks() {
            ENFORCED_REFUSED
        } else {
            ENFORCED_NONE
        };
        rec.judge(&j, enforced);
    }
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
