//! agentgate's kernel programs.
//!
//! Small and dumb on purpose: look the caller up, emit a record, count. Every
//! policy decision is made in user space and reaches the kernel as map
//! contents. An untagged process costs one hash look-up (two when cgroup
//! sessions exist) and nothing else.
#![no_std]
#![no_main]

mod maps;
mod record;
mod tagging;

use agent_common::{ARG_MAX_EACH, ARGC_MAX, ARGV_MAX, EventKind, Hook, PATH_MAX};
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
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

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx, None) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx, Some(0)) {
        Ok(v) | Err(v) => v,
    }
}

/// `at` is `Some(first argument index)` for execveat (dfd, path, argv, envp, flags).
fn try_exec(ctx: &TracePointContext, at: Option<usize>) -> Result<u32, u32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(0);
    };
    let base = if at.is_some() { 1 } else { 0 };
    let mut rec = Record::begin(Hook::Exec, EventKind::Exec, &tag)?;
    // SAFETY: offsets are those of sys_enter_execve/execveat.
    unsafe {
        rec.header().arg0 = AT_FDCWD;
        if at.is_some() {
            rec.header().arg0 = ctx.read_at::<i64>(syscall_arg(0)).unwrap_or(-1) as i32 as i64;
            rec.header().arg1 = ctx.read_at::<i64>(syscall_arg(4)).unwrap_or(0);
        }
        let path: *const u8 = ctx.read_at(syscall_arg(base)).map_err(|_| 0u32)?;
        rec.read_path(path);
        let argv: *const *const u8 = ctx.read_at(syscall_arg(base + 1)).map_err(|_| 0u32)?;
        read_argv(&mut rec, argv);
    }
    rec.emit(Hook::Exec);
    Ok(0)
}

/// Copies up to `ARGC_MAX` arguments, NUL-separated, into `data[PATH_MAX..]`.
unsafe fn read_argv(rec: &mut Record, argv: *const *const u8) {
    if argv.is_null() {
        return;
    }
    let mut used: usize = 0;
    let mut argc: i64 = 0;
    for i in 0..ARGC_MAX {
        // SAFETY: reads user memory through the helper, which faults safely.
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.add(i)) }) else {
            break;
        };
        if arg.is_null() || used >= ARGV_MAX {
            break;
        }
        // The mask makes the start provably inside the buffer; `used <
        // ARGV_MAX` (a power of two) makes it a no-op.
        let start = PATH_MAX + (used & (ARGV_MAX - 1));
        let Some(dest) = rec.data().get_mut(start..start + ARG_MAX_EACH) else {
            break;
        };
        let Ok(s) = (unsafe { bpf_probe_read_user_str_bytes(arg, dest) }) else {
            break;
        };
        used += s.len() + 1;
        argc += 1;
    }
    rec.header().argv_len = used.min(ARGV_MAX) as u16;
    rec.header().arg2 = argc;
}

// ---- open ---------------------------------------------------------------

/// Where each open-family syscall keeps its arguments.
struct OpenArgs {
    dirfd: Option<usize>,
    path: usize,
    flags: Option<usize>,
    mode: Option<usize>,
}

const AT_FDCWD: i64 = -100;
const O_WRONLY_CREAT_TRUNC: i64 = 0o1 | 0o100 | 0o1000;

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
    let mut rec = Record::begin(Hook::Connect, EventKind::Connect, &tag)?;
    // SAFETY: offsets are those of sys_enter_connect(fd, uservaddr, addrlen).
    unsafe {
        rec.header().arg0 = ctx.read_at::<i64>(syscall_arg(0)).unwrap_or(-1);
        rec.header().arg2 = ctx.read_at::<i64>(syscall_arg(2)).unwrap_or(0);
        let sa: *const u8 = ctx.read_at(syscall_arg(1)).map_err(|_| 0u32)?;
        rec.read_sockaddr(sa);
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
