//! Stage 2: what a decision changes — the sessions' histories and labels,
//! drift, referrals — and the kill of a process whose refused call the
//! kernel let through.
use agent_common::Verdict;

use super::{
    Judged,
    decide::{Decided, Judgement, Referred},
};
use crate::{
    daemon::shared::{Facts, Shared, State},
    engine::{Decision, Outcome},
    events::{Event, Target},
    procs,
    referrals::{Referral, State as ReferralState},
    sessions::Ended,
};

pub(super) fn react(facts: &Facts, st: &mut State, ev: &Event, decided: Decided) -> Judged {
    match decided {
        Decided::Guard => Judged {
            verdict: Verdict::Deny,
            outcome: Outcome::Forbidden,
            rule: "guard-self-protection".into(),
            reason: "a process in a session may not signal, trace or reprogram agentgate, nor \
                     step out from under its rules (new namespaces, mounts, chroot, setns)"
                .into(),
            reaction: "none",
            tool_call: None,
        },
        Decided::Ended(why) => ended(facts, st, ev, why),
        Decided::Judged(j) => judged(facts, st, ev, j),
    }
}

fn judged(facts: &Facts, st: &mut State, ev: &Event, j: Judgement) -> Judged {
    let Judgement {
        decision: d,
        blocked,
        levels,
        kernel_labels,
        grant,
        referred,
        tool_call,
    } = j;
    let mut gained = Vec::new();
    for ((id, mut level), kernel) in levels.into_iter().zip(&kernel_labels) {
        if blocked {
            level.set_labels = 0;
        }
        if let Some(s) = st.registry.get_mut(id) {
            s.history.record(&level, ev.time_ns);
            gained.push((id, s.history.labels() & !kernel));
        }
    }
    // The kernel's next judgement must see the labels user space granted.
    for (id, bits) in gained.into_iter().filter(|(_, b)| *b != 0) {
        if let Err(e) = st.enforcer.add_labels(id, bits) {
            log::error!("session {id}: labels to the kernel: {e}");
        }
    }
    drift(facts, st, ev, &d);
    if let Some(g) = grant {
        return Judged {
            verdict: Verdict::Allow,
            outcome: Outcome::ContextAllow,
            rule: format!("grant:{g}"),
            reason: "approved by a human, for a while (agentgate approve)".into(),
            reaction: "none",
            tool_call,
        };
    }
    for r in referred.into_iter().filter(|r| r.grant.is_none()) {
        refer(st, ev, r);
    }
    // A refusal the kernel did not carry out (it could not judge the call,
    // or only user space knows the rule): kill the process, unless the
    // daemon only audits.
    let reaction = if d.verdict.blocks() && ev.kernel.enforced == "none" && !facts.audit_only {
        kill(st, ev, d.rule_name(), d.reason())
    } else {
        "none"
    };
    Judged {
        verdict: d.verdict,
        outcome: d.outcome,
        rule: d.rule_name().to_owned(),
        reason: d.reason().to_owned(),
        reaction,
        tool_call,
    }
}

/// A session past its profile's drift threshold is ended: from its next
/// call on, the kernel kills the process that makes it.
fn drift(facts: &Facts, st: &mut State, ev: &Event, d: &Decision) {
    let threshold = st
        .registry
        .get(ev.session)
        .and_then(|s| st.engine.policy().profile(&s.ctx.profile))
        .and_then(|p| p.drift_threshold);
    let Some(session) = st.registry.get_mut(ev.session) else {
        return;
    };
    if !session.drift.observe(d.out_of_scope(), threshold) {
        return;
    }
    log::warn!(
        "session {}: drift {:.2} is past its profile's threshold: every further call kills the \
         process that makes it",
        ev.session,
        session.drift.score()
    );
    if facts.audit_only {
        return;
    }
    session.ended = Some(Ended::Drifted);
    if let Err(e) = st.enforcer.expire(ev.session, true) {
        log::error!("session {}: escalating: {e}", ev.session);
    }
    st.persist(facts);
}

/// Files the referral a human will answer for one subject of the call.
fn refer(st: &mut State, ev: &Event, r: Referred) {
    let (kind, target) = (
        crate::output::kind_name(&ev.target),
        crate::output::target_string(&ev.target),
    );
    let d = r.decision;
    let id = st.referrals.file(Referral {
        id: 0,
        session: ev.session,
        pid: ev.process.pid,
        kind,
        target: target.clone(),
        subject: r.target,
        access: r.access,
        rule: d.rule_name().to_owned(),
        reason: d.reason().to_owned(),
        created: std::time::SystemTime::now(),
        state: ReferralState::Pending,
    });
    log::warn!(
        "referral {id}: session {} asks for {kind} {target} ({}); `agentgate approve {id}` or \
         `agentgate reject {id}`",
        ev.session,
        d.reason()
    );
}

/// Any call of an ended session is refused; what the kernel could not
/// judge is killed here.
fn ended(facts: &Facts, st: &State, ev: &Event, why: Ended) -> Judged {
    let (rule, reason) = why.rule_and_reason();
    let reaction = if ev.kernel.enforced == "none" && !facts.audit_only {
        kill(st, ev, rule, reason)
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

/// Kills the process that made the call — never a stranger that reused
/// its pid: the pid's tag must still be the one the call was made under
/// (the kernel stamps each tag with the boot-clock ns it was made, at fork,
/// session open or first sight in a session's cgroup).
fn kill(st: &State, ev: &Event, rule: &str, reason: &str) -> &'static str {
    let pid = ev.process.pid;
    let same = || {
        st.tags
            .get(&pid, 0)
            .is_ok_and(|t| t.session == ev.session && t.start_ns == ev.process.start_ns)
    };
    match procs::signal_if(pid, libc::SIGKILL, same) {
        Ok(true) => {
            log::warn!(
                "session {}: killed pid {pid} ({}): {rule} — {reason}",
                ev.session,
                ev.process.comm,
            );
            "killed"
        }
        Ok(false) => "gone",
        Err(e) => {
            log::error!("session {}: killing pid {pid}: {e}", ev.session);
            "gone"
        }
    }
}

/// The session's first process has exec'd: what the kernel says it runs is
/// the agent (not what the launcher claimed). The file is hashed off the
/// event path, through `/proc/PID/exe` — the image the kernel mapped, not
/// a path any caller names.
pub(super) fn note_agent(shared: &std::sync::Arc<Shared>, st: &mut State, ev: &Event) {
    let Target::Exec { path, .. } = &ev.target else {
        return;
    };
    let Some(s) = st.registry.get_mut(ev.session) else {
        return;
    };
    if s.spec.pid != ev.process.pid {
        return;
    }
    s.spec.agent_exe = path.display().to_string();
    s.spec.agent_sha256.clear();
    // Read now, while the agent is surely alive (a procfs read, no wait).
    s.spec.confinement = match procs::Seccomp::of(ev.process.pid) {
        Ok(sc) => sc.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let (shared, session, pid, exe) = (shared.clone(), s.id, ev.process.pid, path.clone());
    tokio::task::spawn_blocking(move || {
        let hash = match procs::exe_sha256(pid, &exe, procs::MAX_HASHED) {
            Ok(h) => h,
            Err(e) => {
                log::warn!(
                    "session {session}: hashing its agent {}: {e}",
                    exe.display()
                );
                return;
            }
        };
        let mut st = shared.lock();
        if let Some(s) = st.registry.get_mut(session)
            && s.spec.agent_exe == exe.display().to_string()
        {
            s.spec.agent_sha256 = hash;
            st.persist(&shared.facts);
        }
    });
}
