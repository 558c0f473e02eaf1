//! Judging an event in its session's context against the policy set: the
//! user-space source of truth, which the compiled kernel tables agree with
//! on everything they cover.
mod history;

use std::{os::unix::ffi::OsStrExt, path::Path, sync::Arc};

use agent_common::{Access, FileOp, Verdict};
use serde::Serialize;

pub use history::SessionHistory;

use crate::{
    event::{ConnectAddr, Event, Process, Target},
    policy::{
        AccessMask, Origin, PolicySet, RuleId, RuleInfo, SessionContext, Subject, mapped, normalize,
    },
};

/// The AARM outcome class of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A static deny: the policy forbids this whatever the context.
    Forbidden,
    /// Inside the declared intent (or allowed and recorded).
    ContextAllow,
    /// The session's labels or history make it suspicious.
    ContextDeny,
    /// Ambiguous: a human decides.
    Refer,
}

impl Outcome {
    fn of(verdict: Verdict, contextual: bool) -> Self {
        match verdict {
            Verdict::Refer => Self::Refer,
            Verdict::Deny | Verdict::Kill if contextual => Self::ContextDeny,
            Verdict::Deny | Verdict::Kill => Self::Forbidden,
            Verdict::None | Verdict::Allow | Verdict::Audit => Self::ContextAllow,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::ContextAllow => "context-allow",
            Self::ContextDeny => "context-deny",
            Self::Refer => "refer",
        }
    }
}

/// A rule that matched the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    pub rule: RuleId,
    pub verdict: Verdict,
    /// The accesses of the call it matched.
    pub access: AccessMask,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// The deciding rule (a profile's default when no rule matched); `None`
    /// for calls that are not judged.
    pub rule: Option<Arc<RuleInfo>>,
    /// Labels the session gains when the call goes through: those of every
    /// rule that matched (0 when it is blocked).
    pub set_labels: u64,
    /// Every rule that matched, in precedence (file) order.
    pub matched: Vec<Matched>,
    note: &'static str,
}

impl Decision {
    fn unjudged(verdict: Verdict, note: &'static str) -> Self {
        Self {
            verdict,
            outcome: Outcome::of(verdict, false),
            rule: None,
            set_labels: 0,
            matched: Vec::new(),
            note,
        }
    }

    /// The deciding rule's id (0: none), as the kernel reports it.
    pub fn rule_id(&self) -> RuleId {
        self.rule.as_ref().map_or(0, |r| r.id)
    }

    pub fn rule_name(&self) -> &str {
        self.rule.as_ref().map_or("", |r| &r.name)
    }

    /// The deciding rule's one-line reason.
    pub fn reason(&self) -> &str {
        self.rule.as_ref().map_or(self.note, |r| &r.reason)
    }

    /// Folds in the decision of another layer on the same call (a tool
    /// call's scope, a delegating session): the stronger verdict stands,
    /// and a call that is refused earns no labels.
    pub fn narrow(&mut self, other: Decision) {
        if stronger(
            (other.verdict, other.rule_id()),
            (self.verdict, self.rule_id()),
        ) {
            self.verdict = other.verdict;
            self.outcome = other.outcome;
            self.rule = other.rule;
            self.note = other.note;
        }
        self.matched.extend(other.matched);
        self.set_labels = if self.verdict.blocks() {
            0
        } else {
            self.set_labels | other.set_labels
        };
    }

    /// Decided by a profile's or a tool's default: the call was outside
    /// the declared scope.
    pub fn out_of_scope(&self) -> bool {
        self.rule.as_ref().is_some_and(|r| {
            matches!(
                r.origin,
                Origin::ProfileDefault { .. } | Origin::ToolDefault { .. }
            )
        })
    }
}

/// The accesses an `open` with these flags asks for, as the kernel counts
/// them.
pub fn open_access(flags: i32) -> AccessMask {
    let mut m = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => AccessMask::of(Access::Write),
        libc::O_RDWR => AccessMask::of(Access::Read).with(Access::Write),
        // O_RDONLY, and the odd 3 (no data access), which the kernel counts as read.
        _ => AccessMask::of(Access::Read),
    };
    if flags & libc::O_CREAT != 0 {
        m = m.with(Access::Create);
    }
    if flags & libc::O_TRUNC != 0 {
        m = m.with(Access::Write);
    }
    m
}

/// `a` wins over `b` (see [`Verdict::wins`]).
pub fn stronger(a: (Verdict, RuleId), b: (Verdict, RuleId)) -> bool {
    a.0.wins(a.1, b.0, b.1)
}

/// The strongest verdict over `accesses`: per access, the strongest rule
/// that matched it, else `default`. `None` when there is no access.
fn strongest(
    matched: &[Matched],
    accesses: impl Iterator<Item = Access>,
    default: (Verdict, RuleId),
) -> Option<(Verdict, RuleId)> {
    accesses
        .map(|a| {
            matched
                .iter()
                .filter(|m| m.access.has(a))
                .map(|m| (m.verdict, m.rule))
                .reduce(|x, y| if stronger(y, x) { y } else { x })
                .unwrap_or(default)
        })
        .reduce(|x, y| if stronger(y, x) { y } else { x })
}

/// The accesses a change asks of its object and, for a rename or a link,
/// of its new name. The object of a rename goes away (written); a link's
/// new name reaches the file as it is, so the file is judged as read and
/// written; a symlink's contents are not judged, only its new name.
pub fn change_access(op: FileOp) -> (AccessMask, Option<AccessMask>) {
    let write = AccessMask::of(Access::Write);
    let create = AccessMask::of(Access::Create);
    match op {
        FileOp::Rename => (write, Some(write.with(Access::Create))),
        FileOp::Link => (
            AccessMask::of(Access::Read).with(Access::Write),
            Some(create),
        ),
        FileOp::Symlink | FileOp::Mkdir | FileOp::Mknod | FileOp::Create => (create, None),
        FileOp::Unlink | FileOp::Rmdir | FileOp::Truncate | FileOp::Chmod | FileOp::Chown => {
            (write, None)
        }
    }
}

/// One result for each subject of a call: its object, and the new name of a
/// rename or a link, which is judged on its own accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerSubject<R> {
    pub object: R,
    pub new_name: Option<R>,
}

impl<R> PerSubject<R> {
    fn one(object: R) -> Self {
        Self {
            object,
            new_name: None,
        }
    }

    /// The object's result, folded with the new name's if there is one.
    pub fn reduce(self, f: impl FnOnce(R, R) -> R) -> R {
        match self.new_name {
            Some(n) => f(self.object, n),
            None => self.object,
        }
    }
}

impl<R> IntoIterator for PerSubject<R> {
    type Item = R;
    type IntoIter = std::iter::Chain<std::iter::Once<R>, std::option::IntoIter<R>>;

    /// The object's result, then the new name's.
    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.object).chain(self.new_name)
    }
}

impl PerSubject<Decision> {
    /// Folds in another layer's decisions on the same call, subject by
    /// subject (see [`Decision::narrow`]).
    pub fn narrow(&mut self, other: PerSubject<Decision>) {
        self.object.narrow(other.object);
        if let (Some(mine), Some(theirs)) = (&mut self.new_name, other.new_name) {
            mine.narrow(theirs);
        }
    }

    /// The decision on the call: its subjects' folded, the stronger
    /// verdict standing.
    pub fn narrowed(self) -> Decision {
        self.reduce(|mut d, other| {
            d.narrow(other);
            d
        })
    }
}

/// Calls `f` with each subject the event acts on (paths normalised) and the
/// accesses it asks of it; events that are not judged give a note instead.
pub fn each_subject<R>(
    ev: &Event,
    mut f: impl FnMut(&Subject<'_>, AccessMask) -> R,
) -> Result<PerSubject<R>, &'static str> {
    // Opens and changes are judged by the same (open) path rules.
    let mut on_path = |path: &Path, access| {
        let path = normalize(path.as_os_str().as_bytes());
        f(&Subject::Open { path: &path }, access)
    };
    match &ev.target {
        Target::Open { path, flags, .. } => Ok(PerSubject::one(on_path(path, open_access(*flags)))),
        Target::Change { op, path, to } => {
            let (object, new_name) = change_access(*op);
            Ok(PerSubject {
                object: on_path(path, object),
                new_name: new_name
                    .zip(to.as_deref())
                    .map(|(access, to)| on_path(to, access)),
            })
        }
        Target::Exec { path, argv, .. } => {
            let path = normalize(path.as_os_str().as_bytes());
            Ok(PerSubject::one(f(
                &Subject::Exec { path: &path, argv },
                AccessMask::of(Access::Exec),
            )))
        }
        Target::Connect {
            addr: ConnectAddr::Inet(sa),
        } => {
            let s = Subject::Inet {
                ip: mapped(sa.ip()),
                port: sa.port(),
            };
            Ok(PerSubject::one(f(&s, AccessMask::of(Access::ConnectInet))))
        }
        Target::Connect {
            addr: ConnectAddr::Unix(p),
        } => {
            let raw = p.as_os_str().as_bytes();
            // Abstract names (`@name`) are not paths: no normalising.
            let path = if raw.starts_with(b"@") {
                raw.into()
            } else {
                normalize(raw)
            };
            Ok(PerSubject::one(f(
                &Subject::Unix { path: &path },
                AccessMask::of(Access::ConnectUnix),
            )))
        }
        Target::Connect {
            addr: ConnectAddr::Other(_),
        } => Err("connects of this address family are not judged"),
        Target::Fork { .. } | Target::Exit => Err("fork and exit are not judged"),
        Target::Guard { .. } => Err("attempts on agentgate itself are refused by the kernel"),
    }
}

#[derive(Debug)]
pub struct Engine {
    set: Arc<PolicySet>,
}

impl Engine {
    pub fn new(set: Arc<PolicySet>) -> Self {
        Self { set }
    }

    pub fn policy(&self) -> &Arc<PolicySet> {
        &self.set
    }

    pub fn decide(&self, ev: &Event, ctx: &SessionContext, hist: &SessionHistory) -> Decision {
        self.decide_each(ev, ctx, hist, None).narrowed()
    }

    /// The session's decision on each subject of the event, narrowed by
    /// the scope of `tool` when the call is made in a tool call. A call
    /// that is not judged has one subject, allowed.
    pub fn decide_each(
        &self,
        ev: &Event,
        ctx: &SessionContext,
        hist: &SessionHistory,
        tool: Option<&str>,
    ) -> PerSubject<Decision> {
        each_subject(ev, |s, access| {
            let mut d = self.judge(s, access, &ev.process, ev.time_ns, ctx, hist);
            if let Some(t) = tool.and_then(|t| self.judge_tool(s, access, ctx, t)) {
                d.narrow(t);
            }
            d
        })
        .unwrap_or_else(|note| PerSubject::one(Decision::unjudged(Verdict::Allow, note)))
    }

    /// The decision of tool `tool`'s scope on the event: `None` when the
    /// scope says nothing on what the call asks for (or the event is not
    /// judged).
    pub fn decide_tool(&self, ev: &Event, ctx: &SessionContext, tool: &str) -> Option<Decision> {
        each_subject(ev, |s, access| self.judge_tool(s, access, ctx, tool))
            .ok()?
            .into_iter()
            .flatten()
            .reduce(|mut d, other| {
                d.narrow(other);
                d
            })
    }

    /// Inside the tool's scope: allowed; outside it, on an access the
    /// scope speaks for: the profile's default.
    pub fn judge_tool(
        &self,
        subject: &Subject<'_>,
        access: AccessMask,
        ctx: &SessionContext,
        tool: &str,
    ) -> Option<Decision> {
        let profile = self.set.profile(&ctx.profile)?;
        let t = profile.tool(tool)?;
        let mut matched = Vec::new();
        for rule in self.set.rules_of(subject.kind()) {
            let acc = AccessMask(rule.target.access().0 & access.0 & t.access.0);
            if acc.0 != 0 && rule.in_tool(ctx, tool) && rule.target.matches(subject, ctx) {
                matched.push(Matched {
                    rule: rule.id(),
                    verdict: rule.action(),
                    access: acc,
                });
            }
        }
        let scoped = access.iter().filter(|a| t.access.has(*a));
        let (verdict, id) = strongest(&matched, scoped, (profile.default, t.default_rule))?;
        Some(Decision {
            verdict,
            outcome: Outcome::of(verdict, false),
            rule: self.set.rule_info(id).cloned(),
            set_labels: 0,
            matched,
            note: "",
        })
    }

    /// The decision on `subject`, asked with `access`, by `process`.
    pub fn judge(
        &self,
        subject: &Subject<'_>,
        access: AccessMask,
        process: &Process,
        time_ns: u64,
        ctx: &SessionContext,
        hist: &SessionHistory,
    ) -> Decision {
        let Some(profile) = self.set.profile(&ctx.profile) else {
            return Decision::unjudged(Verdict::Deny, "the session's profile is not in the policy");
        };
        let kind = subject.kind();
        let labels = hist.labels();
        let mut matched = Vec::new();
        for rule in self.set.rules_of(kind) {
            let acc = AccessMask(rule.target.access().0 & access.0);
            if acc.0 == 0
                || labels & rule.require != rule.require
                || labels & rule.forbid != 0
                || !rule.in_session(ctx)
            {
                continue;
            }
            if let Some(after) = rule.after {
                let Some(t) = hist.last_match(after.rule) else {
                    continue;
                };
                let too_old = after
                    .within
                    .is_some_and(|w| u128::from(time_ns.saturating_sub(t)) > w.as_nanos());
                if too_old {
                    continue;
                }
            }
            if !rule.process.is_empty() && !rule.process.matches(process, ctx) {
                continue;
            }
            if rule.target.matches(subject, ctx) {
                matched.push(Matched {
                    rule: rule.id(),
                    verdict: rule.action(),
                    access: acc,
                });
            }
        }
        let default = (profile.default, profile.default_rule);
        let (verdict, id) = strongest(&matched, access.iter(), default).unwrap_or(default);
        let rule = self.set.rule(id);
        Decision {
            verdict,
            outcome: Outcome::of(verdict, rule.is_some_and(|r| r.contextual())),
            rule: self.set.rule_info(id).cloned(),
            set_labels: if verdict.blocks() {
                0
            } else {
                matched
                    .iter()
                    .filter_map(|m| self.set.rule(m.rule))
                    .fold(0, |a, r| a | r.set_labels)
            },
            matched,
            note: "",
        }
    }
}

#[cfg(test)]
mod tests;
