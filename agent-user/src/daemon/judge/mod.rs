//! Every event of a session, in order, through one pipeline:
//!
//! 1. [`decide`]: the session and each one it was delegated from judge the
//!    call against their context (the engine), a human's grant may let it
//!    through;
//! 2. [`react`]: the decision lands in the sessions' histories, earned
//!    labels go to the kernel, drift escalates, a referral is filed, a
//!    refusal the kernel did not carry out kills the process;
//! 3. [`receipt`]: the decision becomes an audit record, submitted at once;
//! 4. [`export`]: once the batch's receipts are durable, each event is
//!    written out (JSON lines, journald) naming its receipt.
//!
//! Stages 1 and 2 run under one hold of the state lock, so that the
//! decision and what it changes are one step for every other task.
//!
//! The kernel has already decided what its maps cover. What only user space
//! can judge (argument patterns, general globs, paths fallback mode cannot
//! read as written) is decided here, after the call: a refusal then means
//! SIGKILL for the process.
mod decide;
mod export;
mod react;
mod receipt;

use std::sync::Arc;

use agent_common::Verdict;

use super::shared::Shared;
use crate::{
    audit::{self, AuditLog, Pending},
    engine::Outcome,
    events::Event,
    journal,
    observer::EventSink,
    output::{self, JsonLines},
};

/// A decision, in the terms every output shares.
struct Judged {
    verdict: Verdict,
    outcome: Outcome,
    rule: String,
    reason: String,
    /// What the daemon did beyond the kernel.
    reaction: &'static str,
    /// The agent runtime's tool call the call was made in.
    tool_call: Option<output::ToolCall>,
}

/// An event waiting for its receipt to be durable.
struct Queued {
    event: Event,
    judged: Option<Judged>,
    receipt: Option<(audit::Record, Pending)>,
}

pub struct Judge<W: std::io::Write> {
    shared: Arc<Shared>,
    out: export::Outputs<W>,
    audit: AuditLog,
    queue: Vec<Queued>,
}

impl<W: std::io::Write> Judge<W> {
    /// `json`: every event as a JSON line (`--log json`); `journald`:
    /// verdicts to journald (`--log journald`).
    pub fn new(
        shared: Arc<Shared>,
        json: Option<JsonLines<W>>,
        journald: Option<journal::Sink>,
        audit: AuditLog,
    ) -> Self {
        Self {
            shared,
            out: export::Outputs { json, journald },
            audit,
            queue: Vec::new(),
        }
    }
}

impl<W: std::io::Write> EventSink for Judge<W> {
    fn event(&mut self, event: Event) {
        let (judged, record) = {
            let mut st = self.shared.lock();
            react::note_agent(&self.shared, &mut st, &event);
            let judged = decide::decide(&mut st, &event)
                .map(|d| react::react(&self.shared.facts, &mut st, &event, d));
            let record = judged.as_ref().map(|j| receipt::record(&st, &event, j));
            (judged, record)
        };
        let receipt = record.map(|r| {
            let pending = self.audit.submit(r.clone());
            (r, pending)
        });
        if let Some(j) = &judged
            && j.verdict != Verdict::Allow
        {
            log::info!(
                "session {} pid {} {}: {} ({}, rule {}: {})",
                event.session,
                event.process.pid,
                output::target_string(&event.target),
                j.verdict.name(),
                j.outcome.name(),
                j.rule,
                j.reason
            );
        }
        self.queue.push(Queued {
            event,
            judged,
            receipt,
        });
    }

    fn drained(&mut self) {
        // The reader runs on a runtime worker; waiting for the disk must not
        // stall the other tasks (control socket, timers) queued on it.
        let queue = std::mem::take(&mut self.queue);
        tokio::task::block_in_place(|| self.out.write(queue));
    }
}
