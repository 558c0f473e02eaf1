//! Referrals and just-in-time grants. A `refer` verdict refuses the call now
//! and files a referral here; a human outside every session approves it
//! (for a while, for that exact target or everything under it) or rejects
//! it. An approval becomes a grant: kernel entries that let the call through
//! and a note the engine's verdict is checked against, both gone when the
//! grant expires. A referral nobody answers times out: the call stays
//! refused.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use agent_common::SessionId;

use crate::policy::{AccessMask, GrantTarget, RuleId, Subject};

/// How long a referral waits for an answer.
pub const REFERRAL_TIMEOUT: Duration = Duration::from_secs(600);

/// Rule ids of grants, as the kernel reports them: above every policy rule.
pub const GRANT_RULE_BASE: RuleId = 0x8000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    Rejected,
    /// Nobody answered in time: the call stayed refused.
    TimedOut,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::TimedOut => "timed out (denied)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Referral {
    pub id: u64,
    pub session: SessionId,
    pub pid: u32,
    /// exec, open, connect, or a change's op (rename, unlink, …).
    pub kind: &'static str,
    /// What was asked for, as shown to the human: the whole call (both
    /// paths of a rename, which may file a referral for each).
    pub target: String,
    /// The path or address a grant would cover.
    pub subject: GrantTarget,
    pub access: AccessMask,
    pub rule: String,
    pub reason: String,
    pub created: SystemTime,
    pub state: State,
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub id: u64,
    pub session: SessionId,
    pub target: GrantTarget,
    pub access: AccessMask,
    pub expires: SystemTime,
    /// The referral it answers.
    pub referral: u64,
}

impl Grant {
    pub fn rule(&self) -> RuleId {
        GRANT_RULE_BASE | (self.id as RuleId & !GRANT_RULE_BASE)
    }

    pub fn covers(&self, session: SessionId, subject: &Subject<'_>, access: AccessMask) -> bool {
        self.session == session && access.intersects(self.access) && self.target.covers(subject)
    }
}

#[derive(Debug, Default)]
pub struct Referrals {
    referrals: BTreeMap<u64, Referral>,
    grants: BTreeMap<u64, Grant>,
    next: u64,
}

impl Referrals {
    /// Files a referral, unless the same session already waits on the same
    /// target: repeated attempts are one question for the human.
    pub fn file(&mut self, mut r: Referral) -> u64 {
        if let Some(same) = self.referrals.values().find(|o| {
            o.state == State::Pending
                && o.session == r.session
                && o.subject == r.subject
                && o.access == r.access
        }) {
            return same.id;
        }
        self.next += 1;
        r.id = self.next;
        self.referrals.insert(r.id, r);
        self.next
    }

    pub fn all(&self) -> impl Iterator<Item = &Referral> {
        self.referrals.values()
    }

    pub fn get(&self, id: u64) -> Option<&Referral> {
        self.referrals.get(&id)
    }

    /// Answers a pending referral; an approval returns the new grant.
    pub fn answer(
        &mut self,
        id: u64,
        approve: Option<(Duration, bool)>,
        now: SystemTime,
    ) -> Result<Option<Grant>, String> {
        let r = self
            .referrals
            .get_mut(&id)
            .ok_or_else(|| format!("no referral {id}"))?;
        if r.state != State::Pending {
            return Err(format!("referral {id} is {} already", r.state.name()));
        }
        let Some((duration, prefix)) = approve else {
            r.state = State::Rejected;
            return Ok(None);
        };
        r.state = State::Approved;
        let target = match (&r.subject, prefix) {
            (GrantTarget::Path { path, .. }, true) => GrantTarget::Path {
                path: path.clone(),
                prefix: true,
            },
            (t, _) => t.clone(),
        };
        self.next += 1;
        let grant = Grant {
            id: self.next,
            session: r.session,
            target,
            access: r.access,
            expires: now + duration,
            referral: id,
        };
        self.grants.insert(grant.id, grant.clone());
        Ok(Some(grant))
    }

    /// The live grants of a session.
    /// Every live grant.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn grant_covering(
        &self,
        session: SessionId,
        subject: &Subject<'_>,
        access: AccessMask,
    ) -> Option<&Grant> {
        self.grants
            .values()
            .find(|g| g.covers(session, subject, access))
    }

    /// Ends what is past its time: grants past expiry (returned, for the
    /// kernel to forget) and referrals nobody answered.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Grant> {
        for r in self.referrals.values_mut() {
            if r.state == State::Pending && r.created + REFERRAL_TIMEOUT <= now {
                r.state = State::TimedOut;
            }
        }
        let gone: Vec<u64> = self
            .grants
            .values()
            .filter(|g| g.expires <= now)
            .map(|g| g.id)
            .collect();
        gone.iter()
            .filter_map(|id| self.grants.remove(id))
            .collect()
    }

    /// A session ended: its referrals and grants go with it.
    pub fn forget_session(&mut self, session: SessionId) {
        self.referrals.retain(|_, r| r.session != session);
        self.grants.retain(|_, g| g.session != session);
    }
}

#[cfg(test)]
mod tests {
    use agent_common::Access;

    use super::*;

    fn referral(session: SessionId, path: &[u8]) -> Referral {
        Referral {
            id: 0,
            session,
            pid: 1,
            kind: "exec",
            target: String::from_utf8_lossy(path).into_owned(),
            subject: GrantTarget::Path {
                path: path.to_vec(),
                prefix: false,
            },
            access: AccessMask::of(Access::Exec),
            rule: "r".into(),
            reason: "why".into(),
            created: SystemTime::UNIX_EPOCH,
            state: State::Pending,
        }
    }

    #[test]
    fn repeated_attempts_are_one_referral_and_answers_are_final() {
        let mut r = Referrals::default();
        let a = r.file(referral(7, b"/usr/bin/nc"));
        assert_eq!(r.file(referral(7, b"/usr/bin/nc")), a);
        let b = r.file(referral(8, b"/usr/bin/nc"));
        assert_ne!(a, b);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let g = r
            .answer(a, Some((Duration::from_secs(60), false)), now)
            .unwrap()
            .unwrap();
        assert!(r.answer(a, None, now).is_err(), "answered twice");
        assert_eq!(r.answer(b, None, now).unwrap().map(|g| g.id), None);
        let nc = Subject::Exec {
            path: b"/usr/bin/nc",
            argv: &[],
        };
        let exec = AccessMask::of(Access::Exec);
        assert!(r.grant_covering(7, &nc, exec).is_some());
        assert!(r.grant_covering(8, &nc, exec).is_none(), "another session");
        // The grant ends by itself.
        assert!(r.expire(now + Duration::from_secs(59)).is_empty());
        assert_eq!(r.expire(g.expires)[0].id, g.id);
        assert!(r.grant_covering(7, &nc, exec).is_none());
    }

    #[test]
    fn unanswered_referrals_time_out_to_deny() {
        let mut r = Referrals::default();
        let a = r.file(referral(7, b"/x"));
        r.expire(SystemTime::UNIX_EPOCH + REFERRAL_TIMEOUT);
        assert_eq!(r.get(a).unwrap().state, State::TimedOut);
        assert!(
            r.answer(a, Some((Duration::from_secs(1), false)), SystemTime::now())
                .is_err()
        );
    }
}
