//! Every event of a session, in order: judged by the engine against the
//! session's context, recorded in its history, acted on, made a receipt,
//! written out.
//!
//! The kernel has already decided what its maps cover. What only user space
//! can judge (argument patterns, general globs, paths fallback mode cannot
//! read as written) is decided here, after the call: a refusal then means
//! SIGKILL for the process, and labels the engine grants go to the kernel at
//! once so that its next judgement sees them.
//!
//! Receipts are queued as events arrive and waited for once the ring buffer
//! is drained: one group commit per batch, and every line written out (JSON
//! or journald) names a receipt that is already durable.
use std::sync::Arc;

use agent_common::Verdict;

use crate::{
    audit::{self, AuditLog, Pending},
    daemon::Shared,
    engine::{Decision, Outcome, with_subject},
    events::{Event, Target},
    journal,
    observer::EventSink,
    output::{self, JsonLines},
    policy::{GrantTarget, Subject},
    referrals::{Referral, State},
    sessions::{Ended, Registry, Session},
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

impl Judged {
    fn of(d: &Decision, reaction: &'static str, tool_call: Option<output::ToolCall>) -> Self {
        Judged {
            verdict: d.verdict,
            outcome: d.outcome,
            rule: d.rule_name().to_owned(),
            reason: d.reason().to_owned(),
            reaction,
            tool_call,
        }
    }

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

/// An event waiting for its receipt to be durable.
struct Queued {
    event: Event,
    judged: Option<Judged>,
    receipt: Option<(audit::Record, Pending)>,
}

pub struct Judge<W: std::io::Write> {
    shared: Arc<Shared>,
    /// Every event as a JSON line (`--log json`).
    out: Option<JsonLines<W>>,
    /// Verdicts to journald (`--log journald`).
    journald: Option<journal::Sink>,
    audit: AuditLog,
    queue: Vec<Queued>,
}

impl<W: std::io::Write> Judge<W> {
    pub fn new(
        shared: Arc<Shared>,
        out: Option<JsonLines<W>>,
        journald: Option<journal::Sink>,
        audit: AuditLog,
    ) -> Self {
        Self {
            shared,
            out,
            journald,
            audit,
            queue: Vec::new(),
        }
    }

    /// The decision on a call of a live session; `None` for fork and exit,
    /// and for sessions already ended.
    fn decide(&self, ev: &Event) -> Option<Judged> {
        match &ev.target {
            Target::Fork { .. } | Target::Exit => return None,
            Target::Guard { .. } => {
                return Some(Judged {
                    verdict: Verdict::Deny,
                    outcome: Outcome::Forbidden,
                    rule: "guard-self-protection".into(),
                    reason: "a process in a session may not signal, trace or reprogram agentgate, \
                             nor step out from under its rules (new namespaces, mounts, chroot, \
                             setns)"
                        .into(),
                    reaction: "none",
                    tool_call: None,
                });
            }
            // open("") names no file and fails with ENOENT: nothing to judge.
            Target::Open { raw_path, .. } if raw_path.as_os_str().is_empty() => return None,
            _ => {}
        }
        let engine = self.shared.engine.read().unwrap().clone();
        let mut registry = self.shared.registry.lock().unwrap();
        // The session, then each one it was delegated from: every one of
        // them judges the call, as in the kernel.
        let chain = registry.chain(ev.session);
        if chain.is_empty() {
            return None;
        }
        // Labels the kernel set on its own since the last event.
        let kernel_labels: Vec<u64> = {
            let enforcer = self.shared.enforcer.lock().unwrap();
            chain.iter().map(|id| enforcer.labels(*id)).collect()
        };
        let mut levels = Vec::with_capacity(chain.len());
        let mut tool_call = None;
        for (id, labels) in chain.iter().zip(&kernel_labels) {
            let Some(s) = registry.get_mut(*id) else {
                continue;
            };
            s.history.add_labels(*labels);
            if let Some(why) = s.ended {
                drop(registry);
                return Some(self.ended(ev, why));
            }
            let mut d = engine.decide(ev, &s.ctx, &s.history);
            if let Some(a) = s.action_at(ev.time_ns) {
                if let Some(t) = engine.decide_tool(ev, &s.ctx, &a.tool) {
                    d.narrow(t);
                }
                if *id == ev.session {
                    tool_call = Some(output::ToolCall {
                        id: a.id,
                        tool: a.tool.clone(),
                    });
                }
            }
            levels.push((*id, d));
        }
        let mut d = levels[0].1.clone();
        for (_, l) in &levels[1..] {
            d.narrow(l.clone());
        }
        let blocked = d.verdict.blocks();
        let grant = (d.verdict == Verdict::Refer)
            .then(|| self.granted(ev))
            .flatten();
        if grant.is_some() {
            d.verdict = Verdict::Allow;
            d.outcome = Outcome::ContextAllow;
        }
        let mut gained = Vec::new();
        for ((id, mut level), kernel) in levels.into_iter().zip(&kernel_labels) {
            if blocked {
                level.set_labels = 0;
            }
            if let Some(s) = registry.get_mut(id) {
                s.history.record(&level, ev.time_ns);
                gained.push((id, s.history.labels() & !kernel));
            }
        }
        let session = registry.get_mut(ev.session)?;
        let threshold = engine
            .policy()
            .profile(&session.ctx.profile)
            .and_then(|p| p.drift_threshold);
        let escalate = session.drift.observe(d.out_of_scope(), threshold);
        let score = session.drift.score();
        drop(registry);
        if escalate {
            self.escalate(ev.session, score);
        }
        for (id, bits) in gained.into_iter().filter(|(_, b)| *b != 0) {
            if let Err(e) = self.shared.enforcer.lock().unwrap().add_labels(id, bits) {
                log::error!("session {id}: labels to the kernel: {e}");
            }
        }
        if let Some(g) = grant {
            return Some(Judged {
                verdict: Verdict::Allow,
                outcome: Outcome::ContextAllow,
                rule: format!("grant:{g}"),
                reason: "approved by a human, for a while (agentgate approve)".into(),
                reaction: "none",
                tool_call,
            });
        }
        if d.verdict == Verdict::Refer {
            self.refer(ev, &d);
        }
        let reaction = self.react(ev, &d);
        Some(Judged::of(&d, reaction, tool_call))
    }

    /// A session past its profile's drift threshold is ended: from its next
    /// call on, the kernel kills the process that makes it.
    fn escalate(&self, session: u64, score: f64) {
        log::warn!(
            "session {session}: drift {score:.2} is past its profile's threshold: every further \
             call kills the process that makes it"
        );
        if self.shared.audit_only {
            return;
        }
        if let Err(e) = self.shared.enforcer.lock().unwrap().expire(session, true) {
            log::error!("session {session}: escalating: {e}");
        }
        let mut registry = self.shared.registry.lock().unwrap();
        if let Some(s) = registry.get_mut(session) {
            s.ended = Some(Ended::Drifted);
        }
        self.shared.persist(&registry);
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
        let Ok((subject, access)) = with_subject(ev, |s, access| {
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
            (target, access)
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
            "referral {id}: session {} asks for {} {} ({}); `agentgate approve {id}` or \
             `agentgate reject {id}`",
            ev.session,
            output::kind_name(&ev.target),
            output::target_string(&ev.target),
            d.reason()
        );
    }

    /// Any call of an ended session is refused; what the kernel could not
    /// judge is killed here.
    fn ended(&self, ev: &Event, why: Ended) -> Judged {
        let (rule, reason) = why.rule_and_reason();
        let reaction = if ev.kernel.enforced == "none" && !self.shared.audit_only {
            self.kill(ev, rule, reason)
        } else {
            "none"
        };
        Judged {
            verdict: if why == Ended::Drifted {
                Verdict::Kill
            } else {
                Verdict::Deny
            },
            outcome: Outcome::ContextDeny,
            rule: rule.into(),
            reason: reason.into(),
            reaction,
            tool_call: None,
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

    /// The receipt's content: who, what, and the decision.
    fn record(&self, ev: &Event, j: &Judged) -> audit::Record {
        let registry = self.shared.registry.lock().unwrap();
        let session = registry
            .get(ev.session)
            .map(|s| receipt_session(s, &registry));
        drop(registry);
        let p = &ev.process;
        let (kind, argv) = match &ev.target {
            Target::Exec { argv, .. } => (audit::ActionKind::Exec, argv.clone()),
            Target::Open { .. } => (audit::ActionKind::Open, Vec::new()),
            Target::Connect { .. } => (audit::ActionKind::Connect, Vec::new()),
            _ => (audit::ActionKind::Other, Vec::new()),
        };
        audit::Record {
            session: session.unwrap_or_else(|| audit::Session {
                id: ev.session,
                ..Default::default()
            }),
            process: audit::Process {
                pid: p.pid,
                start_ns: p.start_ns,
                exe: p
                    .exe
                    .as_ref()
                    .map(|e| e.display().to_string())
                    .unwrap_or_default(),
                argv,
                uid: p.uid,
                ppid: p.ppid,
            },
            action: audit::Action {
                kind: kind as i32,
                target: output::target_string(&ev.target),
                tool_call: j.tool_call.as_ref().map_or(0, |t| t.id),
                tool: j
                    .tool_call
                    .as_ref()
                    .map(|t| t.tool.clone())
                    .unwrap_or_default(),
            },
            decision: audit::Decision {
                verdict: receipt_verdict(j.verdict) as i32,
                outcome: receipt_outcome(j.outcome) as i32,
                rule: j.rule.clone(),
                reason: j.reason.clone(),
                policy_hash: self.shared.policy_hash.read().unwrap().clone(),
            },
        }
    }
}

/// The session as a receipt names it. The delegation chain runs from the
/// human through each agent that opened a session down to this one.
fn receipt_session(s: &Session, registry: &Registry) -> audit::Session {
    let agent_name = |s: &Session| {
        std::path::Path::new(&s.spec.agent_exe)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut delegation = vec![s.spec.principal.clone()];
    delegation.extend(
        registry
            .chain(s.id)
            .iter()
            .rev()
            .filter_map(|id| registry.get(*id))
            .map(agent_name),
    );
    audit::Session {
        id: s.id,
        principal: s.spec.principal.clone(),
        agent: Some(audit::Agent {
            exe: s.spec.agent_exe.clone(),
            sha256: s.spec.agent_sha256.clone(),
        }),
        intent: s.spec.intent.clone(),
        delegation,
        profile: s.spec.profile.clone(),
    }
}

fn receipt_verdict(v: Verdict) -> audit::Verdict {
    match v {
        Verdict::None => audit::Verdict::Unspecified,
        Verdict::Allow => audit::Verdict::Allow,
        Verdict::Audit => audit::Verdict::Audit,
        Verdict::Refer => audit::Verdict::Refer,
        Verdict::Deny => audit::Verdict::Deny,
        Verdict::Kill => audit::Verdict::Kill,
    }
}

fn receipt_outcome(o: Outcome) -> audit::Outcome {
    match o {
        Outcome::Forbidden => audit::Outcome::Forbidden,
        Outcome::ContextAllow => audit::Outcome::ContextAllow,
        Outcome::ContextDeny => audit::Outcome::ContextDeny,
        Outcome::Refer => audit::Outcome::Refer,
    }
}

impl<W: std::io::Write> EventSink for Judge<W> {
    fn event(&mut self, event: Event) {
        let judged = self.decide(&event);
        let receipt = judged.as_ref().map(|j| {
            let record = self.record(&event, j);
            let pending = self.audit.submit(record.clone());
            (record, pending)
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
        tokio::task::block_in_place(|| self.write_out(queue));
    }
}

impl<W: std::io::Write> Judge<W> {
    /// Waits for the receipts of a batch, then writes each event out with
    /// its receipt number.
    fn write_out(&mut self, queue: Vec<Queued>) {
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
            if let Some(out) = &mut self.out {
                let decision = q.judged.as_ref().map(|j| j.output(seq));
                out.write(&q.event, decision.as_ref());
            }
        }
        if let Some(out) = &mut self.out {
            out.flush();
        }
    }
}
