//! What a session has done so far, as far as rules care: the labels it
//! holds and when each rule last matched a call that went through.
use super::Decision;
use crate::policy::{PolicySet, RuleId};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionHistory {
    labels: u64,
    /// By rule id: boot-clock time of the last match that went through, 0
    /// for never (a real match at time 0 is stored as 1).
    last: Vec<u64>,
}

impl SessionHistory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn labels(&self) -> u64 {
        self.labels
    }

    /// Labels the kernel set on its own (read back from its session mask).
    pub fn add_labels(&mut self, mask: u64) {
        self.labels |= mask;
    }

    pub fn last_match(&self, rule: RuleId) -> Option<u64> {
        self.last.get(rule as usize).copied().filter(|t| *t != 0)
    }

    /// Takes in a decision on a call made at `time_ns`. A blocked call
    /// changes nothing: it did not happen.
    pub fn record(&mut self, d: &Decision, time_ns: u64) {
        if d.verdict.blocks() {
            return;
        }
        self.labels |= d.set_labels;
        for m in &d.matched {
            self.note_match(m.rule, time_ns);
        }
    }

    /// Rule `rule` matched a call that went through at `time_ns`.
    pub fn note_match(&mut self, rule: RuleId, time_ns: u64) {
        let i = rule as usize;
        if self.last.len() <= i {
            self.last.resize(i + 1, 0);
        }
        self.last[i] = time_ns.max(1);
    }

    /// This history in the terms of a reloaded policy: labels by name,
    /// rule matches by rule name.
    pub fn carry_over(&self, old: &PolicySet, new: &PolicySet) -> Self {
        let mut out = Self {
            labels: old.labels().translate(self.labels, new.labels()),
            last: Vec::new(),
        };
        for (id, t) in self.last.iter().enumerate().filter(|(_, t)| **t != 0) {
            let new_id = old
                .rule_info(id as RuleId)
                .and_then(|info| new.rule_by_name(&info.name))
                .map(|info| info.id);
            if let Some(i) = new_id {
                out.note_match(i, *t);
            }
        }
        out
    }
}
