//! The session registry: who opened which session, for what, until when.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::SessionId;

use crate::{
    engine::SessionHistory,
    policy::{Compiled, SessionContext},
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
    /// What it has done so far, as far as rules care.
    pub history: SessionHistory,
    /// Past its TTL: every call is refused.
    pub expired: bool,
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
    /// The agent: the program the session was opened to run, and the
    /// SHA-256 of its file at that moment (empty when unreadable).
    pub agent_exe: String,
    pub agent_sha256: Vec<u8>,
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

    pub fn open(&mut self, s: NewSession, ctx: SessionContext, compiled: Compiled) -> &Session {
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
            history: SessionHistory::new(),
            expired: false,
        };
        self.sessions.entry(id).or_insert(session)
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
        }
    }

    fn compiled() -> Compiled {
        Compiled {
            kernel: Default::default(),
            exact: [true; agent_common::ACCESS_COUNT],
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
    fn ids_are_distinct_nonzero_and_kept() {
        let mut r = Registry::new();
        let expected = r.next_id();
        let a = r.open(new(10), ctx(), compiled()).id;
        assert_eq!(a, expected);
        let b = r.open(new(11), ctx(), compiled()).id;
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(r.get(a).unwrap().spec.pid, 10);
        assert!(r.get(a).unwrap().expires.is_some());
        assert_eq!(r.remove(b).unwrap().spec.pid, 11);
        assert_eq!(r.len(), 1);
    }
}
