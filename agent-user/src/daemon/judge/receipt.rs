//! Stage 3: a decision as an audit record — who, what, and the decision.
use agent_common::Verdict;

use super::Judged;
use crate::{
    audit,
    daemon::shared::State,
    engine::Outcome,
    events::{Event, Target},
    output,
    sessions::{Registry, Session},
};

pub(super) fn record(st: &State, ev: &Event, j: &Judged) -> audit::Record {
    let session = st
        .registry
        .get(ev.session)
        .map(|s| session(s, &st.registry));
    let p = &ev.process;
    let (kind, argv) = match &ev.target {
        Target::Exec { argv, .. } => (audit::ActionKind::Exec, argv.clone()),
        Target::Open { .. } => (audit::ActionKind::Open, Vec::new()),
        Target::Connect { .. } => (audit::ActionKind::Connect, Vec::new()),
        Target::Change { .. } => (audit::ActionKind::Change, Vec::new()),
        _ => (audit::ActionKind::Other, Vec::new()),
    };
    // A change names its paths apart: the object, and its second path.
    let (target, op, to) = match &ev.target {
        Target::Change { op, path, to } => (
            path.display().to_string(),
            op.name().to_owned(),
            to.as_ref()
                .map(|t| t.display().to_string())
                .unwrap_or_default(),
        ),
        t => (output::target_string(t), String::new(), String::new()),
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
            target,
            op,
            to,
            tool_call: j.tool_call.as_ref().map_or(0, |t| t.id),
            tool: j
                .tool_call
                .as_ref()
                .map(|t| t.tool.clone())
                .unwrap_or_default(),
        },
        decision: audit::Decision {
            verdict: verdict(j.verdict) as i32,
            outcome: outcome(j.outcome) as i32,
            rule: j.rule.clone(),
            reason: j.reason.clone(),
            policy_hash: st.engine.policy().digest().to_vec(),
        },
    }
}

/// The session as a receipt names it. The delegation chain runs from the
/// human through each agent that opened a session down to this one.
fn session(s: &Session, registry: &Registry) -> audit::Session {
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

fn verdict(v: Verdict) -> audit::Verdict {
    match v {
        Verdict::None => audit::Verdict::Unspecified,
        Verdict::Allow => audit::Verdict::Allow,
        Verdict::Audit => audit::Verdict::Audit,
        Verdict::Refer => audit::Verdict::Refer,
        Verdict::Deny => audit::Verdict::Deny,
        Verdict::Kill => audit::Verdict::Kill,
    }
}

fn outcome(o: Outcome) -> audit::Outcome {
    match o {
        Outcome::Forbidden => audit::Outcome::Forbidden,
        Outcome::ContextAllow => audit::Outcome::ContextAllow,
        Outcome::ContextDeny => audit::Outcome::ContextDeny,
        Outcome::Refer => audit::Outcome::Refer,
    }
}
