//! The decision code of the real hooks, callable from user space: one raw
//! tracepoint program that is never attached, only run by
//! BPF_PROG_TEST_RUN (tests/host/decide.rs). It takes a call from
//! `DECIDE_INPUT`, decodes and judges it with the same functions the exec,
//! open and connect hooks use (`record`, `decide`, `enforce`) against the
//! same maps (`maps`,
//! which the daemon's `Enforcer` fills), commits the labels the call earns
//! and leaves the judgement in `DECIDE_OUTPUT`. A raw tracepoint because
//! both kernels run it (6.18 refuses LSM programs) and every helper the
//! hooks use is a tracing one.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
// The modules are the real programs' own: most of what they hold is for
// hooks this object does not have.
#![allow(dead_code)]

mod decide;
mod enforce;
mod maps;
mod object;
mod record;

use agent_common::{
    Access, DECIDE_BAD_INPUT, DECIDE_CONNECT, DECIDE_JUDGED, DECIDE_NO_SESSION, DECIDE_OPEN,
    DECIDE_PATH, DecideInput, DecideOutput, EventKind, Hook, PATH_MAX, ProcTag,
};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};

use crate::record::Record;

#[map]
static DECIDE_INPUT: Array<DecideInput> = Array::with_max_entries(1, 0);

#[map]
static DECIDE_OUTPUT: Array<DecideOutput> = Array::with_max_entries(1, 0);

#[raw_tracepoint]
pub fn decide_test(_ctx: RawTracePointContext) -> u32 {
    let Some(out) = DECIDE_OUTPUT.get_ptr_mut(0) else {
        return 1;
    };
    let o = run().unwrap_or(DecideOutput {
        status: DECIDE_BAD_INPUT,
        ..DecideOutput::default()
    });
    // SAFETY: the map's one slot; the test reads it after the run.
    unsafe { *out = o };
    0
}

fn run() -> Option<DecideOutput> {
    let input = DECIDE_INPUT.get(0)?;
    let tag = ProcTag {
        session: input.session,
        ..ProcTag::default()
    };
    let (hook, kind) = if input.kind == DECIDE_CONNECT {
        (Hook::Connect, EventKind::Connect)
    } else {
        (Hook::Open, EventKind::Open)
    };
    // The record the hooks judge from: the path in the scratch buffer
    // (bytes after its NUL included); a connect's address decoded from
    // its struct sockaddr, as the connect hooks decode theirs.
    let mut rec = Record::begin(hook, kind, &tag).ok()?;
    // SAFETY: both are map memory of PATH_MAX bytes.
    unsafe { bpf_probe_read_kernel_buf(input.path.as_ptr(), rec.data().get_mut(..PATH_MAX)?) }
        .ok()?;
    rec.header().path_len = input.path_len;
    if input.kind == DECIDE_CONNECT {
        rec.header().arg2 = input.arg;
        // SAFETY: map memory; the helpers fault safely past it.
        unsafe { rec.read_sockaddr(input.sockaddr.as_ptr()) };
    }
    let Some(session) = decide::session(input.session) else {
        return Some(DecideOutput {
            status: DECIDE_NO_SESSION,
            ..DecideOutput::default()
        });
    };
    let j = match input.kind {
        DECIDE_PATH => {
            let access = match input.access {
                0 => Access::Read,
                1 => Access::Write,
                2 => Access::Create,
                3 => Access::Exec,
                4 => Access::ConnectUnix,
                _ => return None,
            };
            let (path, len) = rec.path();
            session.path(access, path, len)
        }
        DECIDE_OPEN => {
            let (path, len) = rec.path();
            enforce::judge_open(&session, input.arg, path, len)
        }
        DECIDE_CONNECT => enforce::judge_connect(&session, &mut rec),
        _ => return None,
    };
    session.commit(&j);
    Some(DecideOutput {
        rule: j.rule,
        verdict: j.verdict as u8,
        status: DECIDE_JUDGED,
        _pad: [0; 2],
    })
}
