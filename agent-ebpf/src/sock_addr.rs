//! cgroup v2 socket-address hooks (attached to the root cgroup): they refuse
//! a connect or an unconnected UDP send with EPERM. In fallback mode they
//! are what makes connect rules bite; sendmsg runs in both modes, since no
//! other hook sees a datagram sent without connect.
use agent_common::{
    AF_INET, AF_INET6, ENFORCED_NONE, ENFORCED_REFUSED, EventKind, Hook, MODE_FALLBACK, MODE_LSM,
    Verdict,
};
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{decide, enforce, record::Record, tagging};

/// Reads a u32 field of `struct bpf_sock_addr` (UAPI, stable) at a literal
/// offset. The verifier wants every context read at the context pointer
/// plus a constant, and LLVM likes to share a moved base pointer between
/// reads: the load is written out by hand so that it cannot.
macro_rules! ctx_u32 {
    ($ctx:expr, $off:literal) => {{
        let v: u64;
        // SAFETY: a read of the context the kernel passed, at a field offset.
        unsafe {
            core::arch::asm!(
                concat!("{0} = *(u32 *)({1} + ", $off, ")"),
                out(reg) v,
                in(reg) $ctx.sock_addr,
            )
        };
        v as u32
    }};
}

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Connect,
    SendMsg,
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_sock_addr(&ctx, AF_INET, Call::Connect) {
        // `& 1`: the verifier must see the answer is 0 or 1.
        Ok(v) | Err(v) => v & 1,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    match try_sock_addr(&ctx, AF_INET6, Call::Connect) {
        Ok(v) | Err(v) => v & 1,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_sock_addr(&ctx, AF_INET, Call::SendMsg) {
        Ok(v) | Err(v) => v & 1,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    match try_sock_addr(&ctx, AF_INET6, Call::SendMsg) {
        Ok(v) | Err(v) => v & 1,
    }
}

#[inline(always)]
fn try_sock_addr(ctx: &SockAddrContext, family: u16, call: Call) -> Result<i32, i32> {
    let Some(tag) = tagging::lookup_current() else {
        return Ok(ALLOW);
    };
    let cfg = decide::config();
    let ours = match call {
        Call::Connect => cfg.mode == MODE_FALLBACK,
        Call::SendMsg => cfg.mode == MODE_FALLBACK || cfg.mode == MODE_LSM,
    };
    if !ours {
        return Ok(ALLOW);
    }
    let Some(session) = decide::session(tag.session) else {
        return Ok(ALLOW);
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&ctx_u32!(ctx, 4).to_ne_bytes());
        addr = enforce::v4_mapped(&v4);
    } else {
        let words = [
            ctx_u32!(ctx, 8),
            ctx_u32!(ctx, 12),
            ctx_u32!(ctx, 16),
            ctx_u32!(ctx, 20),
        ];
        for (i, w) in words.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
    let port = ctx_u32!(ctx, 24);
    let port = u16::from_be(port as u16);
    let j = session.net(&addr, port);
    // No signals from here: the syscall tracepoint (fallback) or the LSM
    // hook kills for kill; this one refuses.
    let refused = cfg.block != 0 && j.verdict.blocks();
    if call == Call::SendMsg
        && j.verdict.blocks()
        && let Ok(mut rec) = Record::begin(Hook::Connect, EventKind::Connect, &tag)
    {
        // A refused datagram is seen nowhere else: report it.
        let h = rec.header();
        h.family = AF_INET6;
        h.addr = addr;
        h.port = port;
        h.arg1 = 1; // sendmsg, not connect
        let enforced = if refused {
            ENFORCED_REFUSED
        } else {
            ENFORCED_NONE
        };
        rec.judge(&j, enforced);
        rec.emit(Hook::Connect);
    }
    if refused {
        return Ok(REFUSE);
    }
    if j.verdict != Verdict::None {
        session.commit(&j);
    }
    Ok(ALLOW)
}
