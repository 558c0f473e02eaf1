//! Stage 1: what the session and the sessions it was delegated from decide
//! on one call, in their context.
use agent_common::{SessionId, Verdict};

use crate::{
    daemon::shared::State,
    engine::{Decision, Outcome, with_subject},
    events::{Event, Target},
    output,
    sessions::Ended,
};

pub(super) enum Decided {
    /// A process in a session tried to stop, blind or leave its guard; the
    /// kernel refused it.
    Guard,
    /// The session (or one it was delegated from) may do nothing more.
    Ended(Ended),
    Judged(Judgement),
}

pub(super) struct Judgement {
    /// The strongest decision of the chain.
    pub decision: Decision,
    /// Whether that decision refused the call before any grant: a refused
    /// call earns no labels.
    pub blocked: bool,
    /// Each session's own decision, the call's session first.
    pub levels: Vec<(SessionId, Decision)>,
    /// The labels the kernel held for each level when the call was judged.
    pub kernel_labels: Vec<u64>,
    /// The human's grant that lets a referred call through.
    pub grant: Option<u64>,
    pub tool_call: Option<output::ToolCall>,
}

/// `None` for fork and exit, and for calls of sessions no longer known.
pub(super) fn decide(st: &mut State, ev: &Event) -> Option<Decided> {
    match &ev.target {
        Target::Fork { .. } | Target::Exit => return None,
        Target::Guard { .. } => return Some(Decided::Guard),
        // open("") names no file and fails with ENOENT: nothing to judge.
        Target::Open { raw_path, .. } if raw_path.as_os_str().is_empty() => return None,
        _ => {}
    }
    let engine = st.engine.clone();
    // The session, then each one it was delegated from: every one of them
    // judges the call, as in the kernel.
    let chain = st.registry.chain(ev.session);
    if chain.is_empty() {
        return None;
    }
    // Labels the kernel set on its own since the last event.
    let kernel_labels: Vec<u64> = chain.iter().map(|id| st.enforcer.labels(*id)).collect();
    let mut levels = Vec::with_capacity(chain.len());
    let mut tool_call = None;
    for (id, labels) in chain.iter().zip(&kernel_labels) {
        let Some(s) = st.registry.get_mut(*id) else {
            continue;
        };
        s.history.add_labels(*labels);
        if let Some(why) = s.ended {
            return Some(Decided::Ended(why));
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
    let mut decision = levels.first()?.1.clone();
    for (_, l) in &levels[1..] {
        decision.narrow(l.clone());
    }
    let blocked = decision.verdict.blocks();
    let grant = (decision.verdict == Verdict::Refer)
        .then(|| granted(st, ev))
        .flatten();
    if grant.is_some() {
        decision.verdict = Verdict::Allow;
        decision.outcome = Outcome::ContextAllow;
    }
    Some(Decided::Judged(Judgement {
        decision,
        blocked,
        levels,
        kernel_labels,
        grant,
        tool_call,
    }))
}

/// The live grant that lets this call through, if a human gave one.
fn granted(st: &State, ev: &Event) -> Option<u64> {
    with_subject(ev, |s, access| {
        st.referrals
            .grant_covering(ev.session, s, access)
            .map(|g| g.id)
    })
    .ok()
    .flatten()
}
