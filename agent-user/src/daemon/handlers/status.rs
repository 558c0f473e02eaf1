//! `agentgate status`: the mode, what is attached, the kernel's counters.
use std::sync::atomic::Ordering;

use agent_common::{Counter, Hook};

use crate::{
    control::{self, HookCounters},
    daemon::shared::Shared,
};

pub fn status(shared: &Shared) -> control::Status {
    let facts = &shared.facts;
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
        sessions: shared.lock().registry.len() as u32,
        events_read: shared.reader.read.load(Ordering::Relaxed),
        events_malformed: shared.reader.malformed.load(Ordering::Relaxed),
        cached_processes: shared.reader.cached_processes.load(Ordering::Relaxed),
    }
}
