//! Stage 4: events written out once their receipts are durable, so that
//! every line (JSON or journald) names a receipt that exists. One group
//! commit per ring-buffer batch.
use super::{Judged, Queued};
use crate::{
    journal,
    output::{self, JsonLines},
};

pub(super) struct Outputs<W: std::io::Write> {
    /// Every event as a JSON line (`--log json`).
    pub json: Option<JsonLines<W>>,
    /// Verdicts to journald (`--log journald`).
    pub journald: Option<journal::Sink>,
}

impl Judged {
    fn output(&self, receipt: Option<u64>) -> output::Verdict {
        output::Verdict {
            verdict: self.verdict.name(),
            outcome: self.outcome.name(),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            reaction: self.reaction,
            receipt,
            tool_call: self.tool_call.clone(),
        }
    }
}

impl<W: std::io::Write> Outputs<W> {
    /// Waits for the receipts of a batch, then writes each event out with
    /// its receipt number.
    pub(super) fn write(&mut self, queue: Vec<Queued>) {
        for q in queue {
            let seq = match q.receipt {
                Some((record, pending)) => {
                    let seq = match pending.wait() {
                        Ok(r) => Some(r.seq),
                        Err(e) => {
                            log::error!("audit receipt lost: {e}");
                            None
                        }
                    };
                    if let Some(sink) = &self.journald
                        && let Err(e) = sink.verdict(&record, seq)
                    {
                        log::error!("{e}");
                    }
                    seq
                }
                None => None,
            };
            if let Some(out) = &mut self.json {
                let decision = q.judged.as_ref().map(|j| j.output(seq));
                out.write(&q.event, decision.as_ref());
            }
        }
        if let Some(out) = &mut self.json {
            out.flush();
        }
    }
}
