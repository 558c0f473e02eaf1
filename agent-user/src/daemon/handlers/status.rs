//! `agentgate status`: the mode, what is attached, the kernel's counters.
use std::sync::atomic::Ordering;

use agent_common::{Counter, Hook};

use crate::{
    control::{self, HookCounters},
    daemon::shared::Shared,
};

pub fn status(shared: &Shared) -> control::Status {
    let facts = &shared.facts;
    let (sessions, known_inodes) = {
        let st = shared.lock();
        (st.registry.len() as u32, st.enforcer.known_inodes() as u64)
    };
    control::Status {
        mode: facts.mode.clone(),
        mode_detail: facts.mode_detail.clone(),
        probe: facts.probe.clone(),
        programs: facts.programs.clone(),
        counters: Hook::ALL
            .iter()
            .map(|&h| HookCounters {
                hook: h.name().into(),
                seen: shared.counter(h, Counter::Seen),
                emitted: shared.counter(h, Counter::Emitted),
                dropped: shared.counter(h, Counter::Dropped),
                blocked: shared.counter(h, Counter::Blocked),
            })
            .collect(),
        sessions,
        known_inodes,
        events_read: shared.reader.read.load(Ordering::Relaxed),
        events_malformed: shared.reader.malformed.load(Ordering::Relaxed),
        cached_processes: shared.reader.cached_processes.load(Ordering::Relaxed),
    }
}
