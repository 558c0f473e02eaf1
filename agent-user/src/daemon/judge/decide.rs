//! Stage 1: what the session and the sessions it was delegated from decide
//! on one call, in their context.
use agent_common::{SessionId, Verdict};

use crate::{
    daemon::shared::State,
    engine::{Decision, Outcome, PerSubject, each_subject},
    events::{Event, Target},
    output,
    policy::{AccessMask, GrantTarget, Subject},
    referrals::Referrals,
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
    /// The subjects the chain referred, when that is the verdict.
    pub referred: Vec<Referred>,
    pub tool_call: Option<output::ToolCall>,
}

/// A subject of the call (a path or an address) the chain referred to a
/// human.
pub(super) struct Referred {
    pub target: GrantTarget,
    pub access: AccessMask,
    /// The chain's decision on this subject.
    pub decision: Decision,
    /// The live grant that lets it through, if a human gave one.
    pub grant: Option<u64>,
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
        let tool = s.action_at(ev.time_ns);
        if *id == ev.session {
            tool_call = tool.map(|a| output::ToolCall {
                id: a.id,
                tool: a.tool.clone(),
            });
        }
        let each = engine.decide_each(ev, &s.ctx, &s.history, tool.map(|a| a.tool.as_str()));
        levels.push((*id, each));
    }
    // Each subject's decision over the whole chain, then the call's.
    let mut subjects = levels.first()?.1.clone();
    for (_, l) in &levels[1..] {
        subjects.narrow(l.clone());
    }
    let mut decision = subjects.clone().narrowed();
    let blocked = decision.verdict.blocks();
    let referred = if decision.verdict == Verdict::Refer {
        referred(&st.referrals, ev, subjects)
    } else {
        Vec::new()
    };
    let grant = granted(&referred);
    if grant.is_some() {
        decision.verdict = Verdict::Allow;
        decision.outcome = Outcome::ContextAllow;
    }
    Some(Decided::Judged(Judgement {
        decision,
        blocked,
        levels: levels
            .into_iter()
            .map(|(id, each)| (id, each.narrowed()))
            .collect(),
        kernel_labels,
        grant,
        referred,
        tool_call,
    }))
}

/// The subjects of the call whose decision is a referral, each with the
/// live grant that covers it, if a human gave one.
fn referred(referrals: &Referrals, ev: &Event, subjects: PerSubject<Decision>) -> Vec<Referred> {
    let Ok(found) = each_subject(ev, |s, access| {
        let grant = referrals.grant_covering(ev.session, s, access);
        (grant_target(s), access, grant.map(|g| g.id))
    }) else {
        return Vec::new();
    };
    found
        .into_iter()
        .zip(subjects)
        .filter(|(_, d)| d.verdict == Verdict::Refer)
        .map(|((target, access, grant), decision)| Referred {
            target,
            access,
            decision,
            grant,
        })
        .collect()
}

/// The grant that lets a referred call through: there is one for each
/// subject that was referred (a rename may need two).
fn granted(referred: &[Referred]) -> Option<u64> {
    let grants: Option<Vec<u64>> = referred.iter().map(|r| r.grant).collect();
    grants?.first().copied()
}

/// What a grant on `subject` lets through: that exact path or address.
fn grant_target(subject: &Subject<'_>) -> GrantTarget {
    match subject {
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
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration, time::SystemTime};

    use agent_common::FileOp;

    use super::*;
    use crate::{
        engine::{Engine, SessionHistory},
        events::{KernelVerdict, Process},
        policy::{SessionContext, load_sources},
        referrals::{Referral, State as ReferralState},
    };

    const PROFILE: &str = "apiVersion: agentgate.dev/v1\nkind: Profile\nmetadata: {name: p}\n\
                           spec:\n  read: [/**]\n  default: refer\n";

    fn approve(referrals: &mut Referrals, ev: &Event, r: &Referred) {
        let id = referrals.file(Referral {
            id: 0,
            session: ev.session,
            pid: 1,
            kind: "rename",
            target: String::new(),
            subject: r.target.clone(),
            access: r.access,
            rule: String::new(),
            reason: String::new(),
            created: SystemTime::now(),
            state: ReferralState::Pending,
        });
        let now = SystemTime::now();
        referrals
            .answer(id, Some((Duration::from_secs(60), false)), now)
            .unwrap();
    }

    #[test]
    fn a_referred_rename_needs_a_grant_for_each_path() {
        let set = Arc::new(load_sources(&[("p.yaml", PROFILE)]).unwrap());
        let engine = Engine::new(set);
        let ctx = SessionContext::resolved("p", vec![b"/ws".to_vec()], vec![], 1000, vec![]);
        let ev = Event {
            session: 1,
            time_ns: 1,
            process: Process::default(),
            target: Target::Change {
                op: FileOp::Rename,
                path: "/x/a".into(),
                to: Some("/x/b".into()),
            },
            kernel: KernelVerdict {
                verdict: "none",
                enforced: "none",
                rule: 0,
            },
        };
        let subjects = engine.decide_each(&ev, &ctx, &SessionHistory::new(), None);
        let mut referrals = Referrals::default();
        let asked = referred(&referrals, &ev, subjects.clone());
        let paths: Vec<&GrantTarget> = asked.iter().map(|r| &r.target).collect();
        assert_eq!(
            paths,
            [
                &GrantTarget::Path {
                    path: b"/x/a".to_vec(),
                    prefix: false
                },
                &GrantTarget::Path {
                    path: b"/x/b".to_vec(),
                    prefix: false
                }
            ]
        );
        assert_eq!(granted(&asked), None);
        // The new name approved, the source not yet: still refused.
        approve(&mut referrals, &ev, &asked[1]);
        let now = referred(&referrals, &ev, subjects.clone());
        assert!(now[0].grant.is_none() && now[1].grant.is_some());
        assert_eq!(granted(&now), None);
        approve(&mut referrals, &ev, &asked[0]);
        let now = referred(&referrals, &ev, subjects);
        assert_eq!(granted(&now), now[0].grant);
        assert!(granted(&now).is_some());
    }
}
