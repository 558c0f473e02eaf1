//! Acting on a judgement, per kind of hook: a syscall tracepoint can only
//! kill; a cgroup hook and an LSM hook can refuse.
use agent_common::{
    AF_INET, AF_INET6, AF_UNIX, Access, ENFORCED_KILLED, ENFORCED_NONE, ENFORCED_REFUSED,
    EnforceConfig, FileOp, MODE_FALLBACK, Verdict,
};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_send_signal};

use crate::{
    decide::{Judgement, Session},
    maps::EXEC_VERDICTS,
    record::Record,
};

const SIGKILL: u32 = 9;
pub const EPERM: i32 = 1;

use agent_common::abi::{O_ACCMODE, O_CREAT, O_TRUNC, O_WRONLY};

/// Fallback: a blocking verdict at a syscall tracepoint is a SIGKILL — the
/// call itself still runs, but the process never sees its result.
pub fn at_tracepoint(cfg: &EnforceConfig, j: &Judgement) -> u8 {
    if cfg.mode != MODE_FALLBACK || cfg.block == 0 || !j.verdict.blocks() {
        return ENFORCED_NONE;
    }
    kill_current();
    ENFORCED_KILLED
}

/// LSM and cgroup hooks: refuse a blocking verdict, and kill for kill.
/// Returns what was done.
pub fn refuse(cfg: &EnforceConfig, j: &Judgement) -> u8 {
    if cfg.block == 0 || !j.verdict.blocks() {
        return ENFORCED_NONE;
    }
    if j.verdict == Verdict::Kill {
        kill_current();
        return ENFORCED_KILLED;
    }
    ENFORCED_REFUSED
}

/// An LSM hook's answer to a judgement: records what was done, and returns
/// 0 or -EPERM.
#[inline(always)]
pub fn answer(j: &Judgement, rec: &mut Record) -> i32 {
    let enforced = refuse(&crate::decide::config(), j);
    rec.judge(j, enforced);
    if enforced == ENFORCED_NONE { 0 } else { -EPERM }
}

pub fn kill_current() {
    // SAFETY: helper with a plain integer argument.
    unsafe { bpf_send_signal(SIGKILL) };
}

/// Every access the open flags ask for, strongest verdict first.
pub fn judge_open(session: &Session, flags: i64, path: &[u8], len: usize) -> Judgement {
    // Which accesses, as 0/1 by arithmetic rather than by branches: each
    // branch on the flags would have the verifier check the look-ups below
    // once more per way of reaching them (over its budget at the open's
    // exit, where the flags are any value).
    let flags = flags as u64;
    let acc = flags & O_ACCMODE as u64;
    // O_RDONLY (0), O_RDWR (2) and the odd 3 read; O_WRONLY (1) does not.
    let read = (((acc ^ O_WRONLY as u64) + 3) >> 2) & 1;
    // O_WRONLY and O_RDWR write, and so does O_TRUNC with any mode.
    let write = (((acc + 1) >> 1) & 1) | ((flags >> O_TRUNC.trailing_zeros()) & 1);
    let create = (flags >> O_CREAT.trailing_zeros()) & 1;
    let mut j = Judgement::NONE;
    if read != 0 {
        j.merge(&session.path(Access::Read, path, len));
    }
    if write != 0 {
        j.merge(&session.path(Access::Write, path, len));
    }
    if create != 0 {
        j.merge(&session.path(Access::Create, path, len));
    }
    j
}

/// The verdict on one end of a file change (the path in the record):
/// `second` is a rename's or link's new name. The same accesses as the
/// daemon's engine asks for (agent-policy's `change_access`).
pub fn judge_change(
    session: &Session,
    op: FileOp,
    second: bool,
    path: &[u8],
    len: usize,
) -> Judgement {
    let (read, write, create) = match (op, second) {
        (FileOp::Rename, false) => (false, true, false),
        (FileOp::Rename, true) => (false, true, true),
        // A new name for a file reaches it: read and write, as if opened.
        (FileOp::Link, false) => (true, true, false),
        (FileOp::Link | FileOp::Symlink | FileOp::Mkdir | FileOp::Mknod | FileOp::Create, _) => {
            (false, false, true)
        }
        (FileOp::Unlink | FileOp::Rmdir | FileOp::Truncate | FileOp::Chmod | FileOp::Chown, _) => {
            (false, true, false)
        }
    };
    let mut j = Judgement::NONE;
    if read {
        j.merge(&session.path(Access::Read, path, len));
    }
    if write {
        j.merge(&session.path(Access::Write, path, len));
    }
    if create {
        j.merge(&session.path(Access::Create, path, len));
    }
    j
}

/// The verdict on the address a record was filled with by `read_sockaddr`.
pub fn judge_connect(session: &Session, rec: &mut Record) -> Judgement {
    let h = *rec.header();
    match h.family {
        AF_INET => session.net(&v4_mapped(&h.addr), h.port),
        AF_INET6 => session.net(&h.addr, h.port),
        AF_UNIX => {
            let (path, len) = rec.path();
            // Abstract names (leading NUL) have no path to judge.
            if path.first().is_some_and(|b| *b == b'/') {
                session.path(Access::ConnectUnix, path, len)
            } else {
                Judgement::NONE
            }
        }
        _ => Judgement::NONE,
    }
}

/// `a.b.c.d` as `::ffff:a.b.c.d`, the form rule keys use.
pub fn v4_mapped(v4: &[u8; 16]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12] = v4[0];
    a[13] = v4[1];
    a[14] = v4[2];
    a[15] = v4[3];
    a
}

/// LSM: `bprm_check_security` leaves its verdict for `sched_process_exec`,
/// which reports the exec with its argv.
pub fn keep_exec_verdict(j: &Judgement) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = EXEC_VERDICTS.insert(&tid, &(j.verdict as u64 | (j.rule as u64) << 32), 0);
}

pub fn take_exec_verdict() -> Option<Judgement> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out at once.
    let v = *unsafe { EXEC_VERDICTS.get(&tid) }?;
    let _ = EXEC_VERDICTS.remove(&tid);
    Some(Judgement::of(Verdict::from_u8(v as u8), (v >> 32) as u32))
}
