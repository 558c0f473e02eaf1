//! The smallest BPF LSM program, loaded by the daemon's mode probe before it
//! decides on a mode (agent-user/src/probe.rs). A kernel can list `bpf` among
//! its LSMs and still refuse LSM programs (lockdown), or accept and attach one
//! that never runs (`bpf` missing from `lsm=`): only loading it, attaching it
//! and seeing it run tells. It counts the calls it sees and allows them all.
#![no_std]
#![no_main]

mod object;

use aya_ebpf::{
    macros::{lsm, map},
    maps::Array,
    programs::LsmContext,
};

/// Index 0: how many `file_open`s the program saw.
#[map]
static LSM_PROBE_HITS: Array<u64> = Array::with_max_entries(1, 0);

#[lsm(hook = "file_open")]
pub fn lsm_probe(_ctx: LsmContext) -> i32 {
    if let Some(hits) = LSM_PROBE_HITS.get_ptr_mut(0) {
        // SAFETY: the map's one slot; a lost increment under a race is
        // harmless (the probe asks only "did it run at all").
        unsafe { *hits += 1 };
    }
    0
}
