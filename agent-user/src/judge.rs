//! Every event of a session, in order: judged by the engine against the
//! session's context, recorded in its history, acted on, written out.
//!
//! The kernel has already decided what its maps cover. What only user space
//! can judge (argument patterns, sequences, general globs, paths fallback
//! mode cannot read as written) is decided here, after the call: a refusal
//! then means SIGKILL for the process, and labels the engine grants go to
//! the kernel at once so that its next judgement sees them.
use std::sync::Arc;

use agent_common::Verdict;

use crate::{
    daemon::Shared,
    engine::{Decision, Outcome, with_subject},
    events::{Event, Target, verdict_name},
    observer::EventSink,
    output::{self, JsonLines},
    policy::{GrantTarget, Subject},
    referrals::{Referral, State},
};

pub struct Judge<W: std::io::Write> {
    shared: Arc<Shared>,
    out: JsonLines<W>,
}

impl<W: std::io::Write> Judge<W> {
    pub fn new(shared: Arc<Shared>, out: JsonLines<W>) -> Self {
        Self { shared, out }
    }

    /// The decision on a call of a live session; `None` for fork and exit,
    /// and for sessions already ended.
    fn decide(&self, ev: &Event) -> Option<output::Verdict> {
        match &ev.target {
            Target::Fork { .. } | Target::Exit => return None,
            Target::Guard { .. } => {
                return Some(output::Verdict {
                    verdict: verdict_name(Verdict::Deny),
                    outcome: Outcome::Forbidden.name(),
                    rule: "guard-self-protection".into(),
                    reason: "a process in a session may not signal, trace or reprogram agentgate"
                        .into(),
                    reaction: "none",
                });
            }
            // open("") names no file and fails with ENOENT: nothing to judge.
            Target::Open { raw_path, .. } if raw_path.as_os_str().is_empty() => return None,
            _ => {}
        }
        let engine = self.shared.engine.read().unwrap().clone();
        let mut registry = self.shared.registry.lock().unwrap();
        let session = registry.get_mut(ev.session)?;
        // Labels the kernel set on its own since the last event.
        let kernel_labels = self.shared.enforcer.lock().unwrap().labels(ev.session);
        session.history.add_labels(kernel_labels);
        if session.expired {
            drop(registry);
            return Some(self.expired(ev));
        }
        let mut d = engine.decide(ev, &session.ctx, &session.history);
        let grant = (d.verdict == Verdict::Refer)
            .then(|| self.granted(ev))
            .flatten();
        if grant.is_some() {
            d.verdict = Verdict::Allow;
            d.outcome = Outcome::ContextAllow;
        }
        session.history.record(&d, ev.time_ns);
        let gained = session.history.labels() & !kernel_labels;
        drop(registry);
        if gained != 0
            && let Err(e) = self
                .shared
                .enforcer
                .lock()
                .unwrap()
                .add_labels(ev.session, gained)
        {
            log::error!("session {}: labels to the kernel: {e}", ev.session);
        }
        if let Some(g) = grant {
            return Some(output::Verdict {
                verdict: verdict_name(Verdict::Allow),
                outcome: Outcome::ContextAllow.name(),
                rule: format!("grant:{g}"),
                reason: "approved by a human, for a while (agentgate approve)".into(),
                reaction: "none",
            });
        }
        if d.verdict == Verdict::Refer {
            self.refer(ev, &d);
        }
        let reaction = self.react(ev, &d);
        Some(output::Verdict {
            verdict: verdict_name(d.verdict),
            outcome: d.outcome.name(),
            rule: d.rule_name().to_owned(),
            reason: d.reason().to_owned(),
            reaction,
        })
    }

    /// The live grant that lets this call through, if a human gave one.
    fn granted(&self, ev: &Event) -> Option<u64> {
        let referrals = self.shared.referrals.lock().unwrap();
        with_subject(ev, |s, access| {
            referrals
                .grant_covering(ev.session, s, access)
                .map(|g| g.id)
        })
        .ok()
        .flatten()
    }

    /// Files the referral a human will answer.
    fn refer(&self, ev: &Event, d: &Decision) {
        let Ok(Some((subject, access))) = with_subject(ev, |s, access| {
            let target = match s {
                Subject::Exec { path, .. } | Subject::Open { path } | Subject::Unix { path } => {
                    GrantTarget::Path {
                        path: path.to_vec(),
                        prefix: false,
                    }
                }
                Subject::Inet { ip, port } => GrantTarget::Inet {
                    ip: *ip,
                    port: *port,
                },
            };
            Some((target, access))
        }) else {
            return;
        };
        let id = self.shared.referrals.lock().unwrap().file(Referral {
            id: 0,
            session: ev.session,
            pid: ev.process.pid,
            kind: output::kind_name(&ev.target),
            target: output::target_string(&ev.target),
            subject,
            access,
            rule: d.rule_name().to_owned(),
            reason: d.reason().to_owned(),
            created: std::time::SystemTime::now(),
            state: State::Pending,
        });
        log::warn!(
            "referral {id}: session {} asks for {} {} ({}); `agentgate approve {id}` or `agentgate reject {id}`",
            ev.session,
            output::kind_name(&ev.target),
            output::target_string(&ev.target),
            d.reason()
        );
    }

    /// Any call of an expired session is refused; what the kernel could not
    /// judge is killed here.
    fn expired(&self, ev: &Event) -> output::Verdict {
        let reaction = if ev.kernel.enforced == "none" && !self.shared.audit_only {
            self.kill(ev, "session-expired", "the session is past its TTL")
        } else {
            "none"
        };
        output::Verdict {
            verdict: verdict_name(Verdict::Deny),
            outcome: Outcome::ContextDeny.name(),
            rule: "session-expired".into(),
            reason: "the session is past its TTL".into(),
            reaction,
        }
    }

    /// A refusal the kernel did not carry out (it could not judge the call,
    /// or only user space knows the rule): kill the process, unless the
    /// daemon only audits.
    fn react(&self, ev: &Event, d: &Decision) -> &'static str {
        let kernel_acted = ev.kernel.enforced != "none";
        if !d.verdict.blocks() || kernel_acted || self.shared.audit_only {
            return "none";
        }
        self.kill(ev, d.rule_name(), d.reason())
    }

    fn kill(&self, ev: &Event, rule: &str, reason: &str) -> &'static str {
        let pid = ev.process.pid;
        // The pid must still be this session's: never kill a stranger that
        // reused it.
        if self.shared.session_of(pid) != Some(ev.session) {
            return "gone";
        }
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            log::warn!(
                "session {}: killed pid {pid} ({}): {rule} — {reason}",
                ev.session,
                ev.process.comm,
            );
            "killed"
        } else {
            "gone"
        }
    }
}

impl<W: std::io::Write> EventSink for Judge<W> {
    fn event(&mut self, event: Event) {
        let decision = self.decide(&event);
        if let Some(d) = &decision
            && d.verdict != verdict_name(Verdict::Allow)
        {
            log::info!(
                "session {} pid {} {}: {} ({}, rule {}: {})",
                event.session,
                event.process.pid,
                output::target_string(&event.target),
                d.verdict,
                d.outcome,
                d.rule,
                d.reason
            );
        }
        self.out.write(&event, decision.as_ref());
    }

    fn drained(&mut self) {
        self.out.flush();
    }
}
