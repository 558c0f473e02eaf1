//! The session registry: who opened which session, for what, until when.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::SessionId;

use crate::{
    enforce::KernelRuleset,
    engine::SessionHistory,
    policy::{AccessMask, Compiled, GrantTarget, RuleId, SessionContext},
};

#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub spec: NewSession,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    /// What the policy is specialised with for this session.
    pub ctx: SessionContext,
    /// Its rules as the kernel holds them (grants are computed from them).
    pub compiled: Compiled,
    /// The scope of each tool of its profile, compiled the same way.
    pub tools: Vec<(String, Compiled)>,
    /// The tool call in progress, as the agent runtime declared it.
    pub action: Option<Action>,
    /// The tool call before it, and when it ended (boot-clock ns): calls
    /// made during it may still be in the ring buffer when it ends.
    pub last_action: Option<(Action, u64)>,
    /// What it has done so far, as far as rules care.
    pub history: SessionHistory,
    /// Why the session may do nothing more (past its TTL, drifted too
    /// far): every further call is refused.
    pub ended: Option<Ended>,
    /// How far the session strays from its declared scope.
    pub drift: Drift,
}

/// A tool call of the agent runtime (`agentgate action begin`): the calls
/// made until it ends are attributed to it and judged by its tool's scope
/// as well as the session's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: u64,
    pub tool: String,
    /// The tool's parameters and the agent's rationale, as the runtime gave
    /// them (for the record).
    pub params: String,
    pub rationale: String,
    /// Boot-clock ns at which it began (the clock of event times).
    pub started_ns: u64,
}

impl Session {
    /// A grant's entries for each of the session's rulesets: its rules
    /// (`None`) and each tool's.
    pub fn grant_rules(
        &self,
        target: &GrantTarget,
        access: AccessMask,
        rule: RuleId,
    ) -> Vec<(Option<&str>, KernelRuleset)> {
        std::iter::once((None, self.compiled.grant(target, access, rule)))
            .chain(
                self.tools
                    .iter()
                    .map(|(n, c)| (Some(n.as_str()), c.grant(target, access, rule))),
            )
            .collect()
    }

    /// The tool call a call made at `time_ns` belongs to.
    pub fn action_at(&self, time_ns: u64) -> Option<&Action> {
        if let Some(a) = &self.action
            && time_ns >= a.started_ns
        {
            return Some(a);
        }
        self.last_action
            .as_ref()
            .filter(|(a, ended)| (a.started_ns..*ended).contains(&time_ns))
            .map(|(a, _)| a)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Past its TTL: refused from then on.
    Expired,
    /// Past its profile's drift threshold: killed from then on.
    Drifted,
}

impl Ended {
    /// The rule name and reason every later decision reports.
    pub fn rule_and_reason(self) -> (&'static str, &'static str) {
        match self {
            Ended::Expired => ("session-expired", "the session is past its TTL"),
            Ended::Drifted => (
                "session-drift",
                "the session strayed from its declared scope past its profile's drift threshold",
            ),
        }
    }
}

/// The share of out-of-scope calls (decided by the profile's default, not
/// by a scope or a rule) among a session's last [`Drift::WINDOW`] judged
/// calls. Past the profile's threshold the session is escalated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// Most recent last; `true` for out of scope.
    recent: std::collections::VecDeque<bool>,
    pub escalated: bool,
}

impl Drift {
    pub const WINDOW: usize = 50;
    /// Fewer calls than this say nothing yet.
    pub const MIN_CALLS: usize = 10;

    pub fn score(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.recent.iter().filter(|o| **o).count() as f64 / self.recent.len() as f64
    }

    /// Takes in one judged call; `true` when this call pushes the session
    /// past `threshold` (once: an escalated session stays escalated).
    pub fn observe(&mut self, out_of_scope: bool, threshold: Option<f64>) -> bool {
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(out_of_scope);
        let Some(t) = threshold else {
            return false;
        };
        if self.escalated || self.recent.len() < Self::MIN_CALLS || self.score() <= t {
            return false;
        }
        self.escalated = true;
        true
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    sessions: BTreeMap<SessionId, Session>,
    next: SessionId,
}

/// What a session is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The launcher: the first process of the session.
    pub pid: u32,
    pub uid: u32,
    /// The human the agent acts for.
    pub principal: String,
    pub profile: String,
    pub intent: String,
    pub workspace: String,
    pub command: Vec<String>,
    pub ttl: Option<Duration>,
    /// The agent: what the session's first process runs as the kernel
    /// reports its exec (until then, what the launcher said it would run),
    /// and the SHA-256 of that file (empty until hashed, or unreadable).
    pub agent_exe: String,
    pub agent_sha256: Vec<u8>,
    /// The agent's seccomp state as /proc showed it at that exec (see
    /// `procs::Seccomp`); empty until then.
    pub confinement: String,
    /// The session this one was opened from (delegation; 0: none). Every
    /// call is judged by both: the child's scope can only narrow.
    pub parent: SessionId,
}

impl Registry {
    /// Ids start from the wall clock so that a restarted daemon does not hand
    /// out an id that is still in a pinned map or an audit record.
    pub fn new() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self {
            sessions: BTreeMap::new(),
            next: secs << 16,
        }
    }

    /// The id the next session will get: its rules go into the kernel
    /// before the session exists here.
    pub fn next_id(&self) -> SessionId {
        self.next + 1
    }

    pub fn open(
        &mut self,
        s: NewSession,
        ctx: SessionContext,
        compiled: Compiled,
        tools: Vec<(String, Compiled)>,
    ) -> &Session {
        self.next += 1;
        let id = self.next;
        let created = SystemTime::now();
        let session = Session {
            id,
            expires: s.ttl.map(|t| created + t),
            spec: s,
            created,
            ctx,
            compiled,
            tools,
            action: None,
            last_action: None,
            history: SessionHistory::new(),
            ended: None,
            drift: Drift::default(),
        };
        self.sessions.entry(id).or_insert(session)
    }

    /// Takes back a session a previous daemon opened (its id is kept: the
    /// pinned maps tag its processes with it).
    pub fn restore(&mut self, session: Session) {
        self.next = self.next.max(session.id);
        self.sessions.insert(session.id, session);
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.sessions.values_mut()
    }

    /// `id` and the sessions it was delegated from, innermost first.
    pub fn chain(&self, id: SessionId) -> Vec<SessionId> {
        let mut out = Vec::new();
        let mut next = id;
        while let Some(s) = self.sessions.get(&next) {
            if out.contains(&next) {
                break;
            }
            out.push(next);
            next = s.spec.parent;
        }
        out
    }

    /// The sessions opened from `id`, from theirs, and so on.
    pub fn descendants(&self, id: SessionId) -> Vec<SessionId> {
        let mut out = Vec::new();
        let mut todo = vec![id];
        while let Some(p) = todo.pop() {
            for s in self.sessions.values() {
                if s.spec.parent == p && !out.contains(&s.id) {
                    out.push(s.id);
                    todo.push(s.id);
                }
            }
        }
        out
    }

    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        self.sessions.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(pid: u32) -> NewSession {
        NewSession {
            pid,
            uid: 1000,
            principal: "alice".into(),
            profile: "coding-agent".into(),
            intent: "fix the failing test".into(),
            workspace: "/tmp/w".into(),
            command: vec!["sh".into()],
            ttl: Some(Duration::from_secs(60)),
            agent_exe: "/bin/sh".into(),
            agent_sha256: Vec::new(),
            confinement: String::new(),
            parent: 0,
        }
    }

    fn compiled() -> Compiled {
        Compiled {
            kernel: Default::default(),
            exact: [true; agent_common::ACCESS_COUNT],
            net_excepted: Vec::new(),
        }
    }

    fn ctx() -> SessionContext {
        SessionContext::resolved(
            "coding-agent",
            vec![b"/tmp/w".to_vec()],
            vec![],
            1000,
            vec![],
        )
    }

    #[test]
    fn drift_escalates_once_past_the_threshold_over_a_full_enough_window() {
        let mut d = Drift::default();
        // In scope only: never.
        for _ in 0..Drift::WINDOW * 2 {
            assert!(!d.observe(false, Some(0.3)));
        }
        assert_eq!(d.score(), 0.0);
        // The window slides: out-of-scope calls push the share up.
        let mut fired = 0;
        for _ in 0..Drift::WINDOW {
            if d.observe(true, Some(0.3)) {
                fired += 1;
                assert!(d.score() > 0.3);
            }
        }
        assert_eq!(fired, 1, "escalates once");
        assert!(d.escalated);
        // Without a threshold nothing escalates; few calls say nothing.
        let mut d = Drift::default();
        for _ in 0..Drift::MIN_CALLS - 1 {
            assert!(!d.observe(true, Some(0.1)));
        }
        assert!(d.observe(true, Some(0.1)));
        let mut d = Drift::default();
        for _ in 0..Drift::WINDOW {
            assert!(!d.observe(true, None));
        }
    }

    #[test]
    fn ids_are_distinct_nonzero_and_kept() {
        let mut r = Registry::new();
        let expected = r.next_id();
        let a = r.open(new(10), ctx(), compiled(), vec![]).id;
        assert_eq!(a, expected);
        let b = r.open(new(11), ctx(), compiled(), vec![]).id;
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(r.get(a).unwrap().spec.pid, 10);
        assert!(r.get(a).unwrap().expires.is_some());
        assert_eq!(r.remove(b).unwrap().spec.pid, 11);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn chains_and_descendants_follow_parents() {
        let mut r = Registry::new();
        let a = r.open(new(10), ctx(), compiled(), vec![]).id;
        let b = r
            .open(
                NewSession {
                    parent: a,
                    ..new(11)
                },
                ctx(),
                compiled(),
                vec![],
            )
            .id;
        let c = r
            .open(
                NewSession {
                    parent: b,
                    ..new(12)
                },
                ctx(),
                compiled(),
                vec![],
            )
            .id;
        let d = r.open(new(13), ctx(), compiled(), vec![]).id;
        assert_eq!(r.chain(c), vec![c, b, a]);
        assert_eq!(r.chain(d), vec![d]);
        let mut desc = r.descendants(a);
        desc.sort();
        assert_eq!(desc, vec![b, c]);
        assert!(r.descendants(c).is_empty());
    }

    #[test]
    fn calls_belong_to_the_tool_call_they_were_made_in() {
        let mut r = Registry::new();
        let id = r.open(new(10), ctx(), compiled(), vec![]).id;
        let s = r.get_mut(id).unwrap();
        let act = |id, started_ns| Action {
            id,
            tool: "run_tests".into(),
            params: String::new(),
            rationale: String::new(),
            started_ns,
        };
        s.action = Some(act(1, 100));
        assert_eq!(s.action_at(99), None);
        assert_eq!(s.action_at(100).map(|a| a.id), Some(1));
        s.last_action = Some((act(1, 100), 200));
        s.action = Some(act(2, 300));
        assert_eq!(s.action_at(150).map(|a| a.id), Some(1));
        assert_eq!(s.action_at(250), None);
        assert_eq!(s.action_at(300).map(|a| a.id), Some(2));
    }
}
