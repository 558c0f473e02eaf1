//! What the daemon's tasks share: facts fixed at start, and the one lock
//! over everything that changes.
//!
//! One lock, not one per part: every request and every event touches the
//! registry, the kernel maps and the referrals together, and a second lock
//! would need an order every caller keeps. Nothing slow runs under it (no
//! socket I/O, no waiting for the audit log); the state file is written
//! under it so that two saves never interleave.
//!
//! A panic anywhere ends the daemon (see [`super::exit_on_panic`]), so the
//! lock is never seen poisoned: a daemon that went on after a panic would
//! judge what only user space judges with half its state.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::{Counter, Hook, ProcTag, SessionId, counter_index};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};

use crate::{
    enforce::Enforcer, engine::Engine, observer::ReaderStats, referrals::Referrals,
    sessions::Registry, state,
};

/// Fixed at start: how the daemon runs.
#[derive(Debug)]
pub struct Facts {
    pub mode: String,
    pub mode_detail: String,
    /// What the kernel probe found, one line per program type.
    pub probe: Vec<String>,
    pub programs: Vec<String>,
    pub policy_paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub audit_only: bool,
}

/// Everything that changes while the daemon runs.
pub struct State {
    /// The policy in force: replaced whole on a good reload.
    pub engine: Arc<Engine>,
    pub registry: Registry,
    pub enforcer: Enforcer,
    pub referrals: Referrals,
    /// `TAGS`: pid → session, as the kernel keeps it.
    pub tags: BpfHashMap<MapData, u32, ProcTag>,
}

impl State {
    /// The session a live process is tagged with, if any.
    pub fn session_of(&self, pid: u32) -> Option<SessionId> {
        self.tags.get(&pid, 0).ok().map(|t| t.session)
    }

    /// Saves the registry for the next daemon (see `state`).
    pub fn persist(&self, facts: &Facts) {
        if let Err(e) = state::save(
            &facts.state_dir,
            &self.enforcer.label_names(),
            self.registry.iter(),
        ) {
            log::error!("saving the sessions: {e}");
        }
    }
}

pub struct Shared {
    pub facts: Facts,
    counters: PerCpuArray<MapData, u64>,
    pub reader: Arc<ReaderStats>,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(
        facts: Facts,
        counters: PerCpuArray<MapData, u64>,
        reader: Arc<ReaderStats>,
        state: State,
    ) -> Self {
        Self {
            facts,
            counters,
            reader,
            state: Mutex::new(state),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|_| {
            unreachable!("a panic ends the daemon before a lock is seen poisoned")
        })
    }

    /// A kernel counter summed over CPUs.
    pub fn counter(&self, hook: Hook, counter: Counter) -> u64 {
        self.counters
            .get(&counter_index(hook, counter), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
