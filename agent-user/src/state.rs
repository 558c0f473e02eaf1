//! The session registry on disk (`<state dir>/sessions.json`), so that a
//! restarted daemon knows the sessions whose processes the pinned maps still
//! tag. Written whole, atomically (temporary file, fsync, rename), whenever
//! a session opens, ends, expires or drifts out. Pending referrals and
//! grants are not kept: they are lost with the daemon.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::SessionId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    policy::SessionContext,
    sessions::{Ended, NewSession, Session},
};

pub const FILE_NAME: &str = "sessions.json";
const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has version {found}; this agentgate reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    /// The policy's label names in bit order when the file was written: the
    /// kernel's label masks are read back in these terms.
    pub labels: Vec<String>,
    pub sessions: Vec<SavedSession>,
}

/// Enough to rebuild a `Session`; its rules are compiled again at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    pub id: SessionId,
    pub pid: u32,
    pub uid: u32,
    pub principal: String,
    pub profile: String,
    pub intent: String,
    pub workspace: String,
    pub command: Vec<String>,
    pub ttl_secs: Option<u64>,
    pub agent_exe: String,
    pub agent_sha256: Vec<u8>,
    #[serde(default)]
    pub confinement: String,
    pub created_unix_ns: u64,
    pub expires_unix_ns: Option<u64>,
    /// `expired` or `drifted`.
    pub ended: Option<String>,
    pub context: SavedContext,
    /// The session it was opened from (delegation; 0: none).
    #[serde(default)]
    pub parent: SessionId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedContext {
    pub profile: String,
    pub uid: u32,
    pub intent_tags: Vec<String>,
    /// Paths as bytes: they need not be UTF-8.
    pub workspaces: Vec<Vec<u8>>,
    pub homes: Vec<Vec<u8>>,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn from_unix_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl SavedSession {
    pub fn of(s: &Session) -> Self {
        let spec = &s.spec;
        Self {
            id: s.id,
            pid: spec.pid,
            uid: spec.uid,
            principal: spec.principal.clone(),
            profile: spec.profile.clone(),
            intent: spec.intent.clone(),
            workspace: spec.workspace.clone(),
            command: spec.command.clone(),
            ttl_secs: spec.ttl.map(|t| t.as_secs()),
            agent_exe: spec.agent_exe.clone(),
            agent_sha256: spec.agent_sha256.clone(),
            confinement: spec.confinement.clone(),
            created_unix_ns: unix_ns(s.created),
            expires_unix_ns: s.expires.map(unix_ns),
            ended: s.ended.map(|e| {
                match e {
                    Ended::Expired => "expired",
                    Ended::Drifted => "drifted",
                }
                .to_owned()
            }),
            parent: spec.parent,
            context: SavedContext {
                profile: s.ctx.profile.clone(),
                uid: s.ctx.uid,
                intent_tags: s.ctx.intent_tags.clone(),
                workspaces: s.ctx.workspaces().to_vec(),
                homes: s.ctx.homes().to_vec(),
            },
        }
    }

    pub fn spec(&self) -> NewSession {
        NewSession {
            pid: self.pid,
            uid: self.uid,
            principal: self.principal.clone(),
            profile: self.profile.clone(),
            intent: self.intent.clone(),
            workspace: self.workspace.clone(),
            command: self.command.clone(),
            ttl: self.ttl_secs.map(Duration::from_secs),
            agent_exe: self.agent_exe.clone(),
            agent_sha256: self.agent_sha256.clone(),
            confinement: self.confinement.clone(),
            parent: self.parent,
        }
    }

    pub fn context(&self) -> SessionContext {
        let c = &self.context;
        SessionContext::resolved(
            c.profile.clone(),
            c.workspaces.clone(),
            c.homes.clone(),
            c.uid,
            c.intent_tags.clone(),
        )
    }

    pub fn created(&self) -> SystemTime {
        from_unix_ns(self.created_unix_ns)
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.expires_unix_ns.map(from_unix_ns)
    }

    /// An unknown word is read as drifted: the stricter end.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.as_deref().map(|e| match e {
            "expired" => Ended::Expired,
            _ => Ended::Drifted,
        })
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The saved registry; `None` when there is no file (a first start).
pub fn load(state_dir: &Path) -> Result<Option<Saved>, StateError> {
    let path = path(state_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let saved: Saved = serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    if saved.version != VERSION {
        return Err(StateError::Version {
            path,
            found: saved.version,
        });
    }
    Ok(Some(saved))
}

/// Writes the registry: a reader (or a crash) sees the old file or the new
/// one, never a part.
pub fn save<'a>(
    state_dir: &Path,
    labels: &[String],
    sessions: impl Iterator<Item = &'a Session>,
) -> Result<(), StateError> {
    let path = path(state_dir);
    let saved = Saved {
        version: VERSION,
        labels: labels.to_vec(),
        sessions: sessions.map(SavedSession::of).collect(),
    };
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut f, &saved)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| StateError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{engine::SessionHistory, policy::Compiled, sessions::Drift};

    fn session(id: SessionId, ended: Option<Ended>) -> Session {
        let created = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        Session {
            id,
            spec: NewSession {
                pid: 42,
                uid: 1000,
                principal: "alice".into(),
                profile: "coding-agent".into(),
                intent: "fix the failing test".into(),
                workspace: "/tmp/w".into(),
                command: vec!["sh".into(), "-c".into(), "true".into()],
                ttl: Some(Duration::from_secs(600)),
                agent_exe: "/bin/sh".into(),
                agent_sha256: vec![1, 2, 3],
                confinement: "seccomp: 1 filter, no_new_privs".into(),
                parent: 7,
            },
            created,
            expires: Some(created + Duration::from_secs(600)),
            ctx: SessionContext::resolved(
                "coding-agent",
                vec![b"/tmp/w".to_vec(), b"/tmp/\xffodd".to_vec()],
                vec![b"/home/alice".to_vec()],
                1000,
                vec!["expenses".into()],
            ),
            compiled: Compiled {
                kernel: Default::default(),
                exact: [true; agent_common::ACCESS_COUNT],
                net_excepted: Vec::new(),
            },
            tools: vec![],
            action: None,
            last_action: None,
            history: SessionHistory::new(),
            ended,
            drift: Drift::default(),
        }
    }

    #[test]
    fn sessions_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None, "no file: a first start");
        let a = session(7, None);
        let b = session(8, Some(Ended::Drifted));
        let labels = vec!["secret-read".to_owned(), "hot".to_owned()];
        save(dir.path(), &labels, [&a, &b].into_iter()).unwrap();
        let saved = load(dir.path()).unwrap().unwrap();
        assert_eq!(saved.labels, labels);
        assert_eq!(saved.sessions.len(), 2);
        for (s, orig) in saved.sessions.iter().zip([&a, &b]) {
            assert_eq!(s.id, orig.id);
            assert_eq!(s.spec(), orig.spec);
            assert_eq!(s.context(), orig.ctx);
            assert_eq!(s.created(), orig.created);
            assert_eq!(s.expires(), orig.expires);
            assert_eq!(s.ended(), orig.ended);
        }
        assert!(
            !dir.path().join(format!(".{FILE_NAME}.tmp")).exists(),
            "the temporary file is renamed into place"
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{\"version\": 1, \"sessions\": [tru").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }));
        assert!(
            e.to_string()
                .contains(&path(dir.path()).display().to_string()),
            "{e}"
        );
        std::fs::write(
            path(dir.path()),
            b"{\"version\": 9, \"labels\": [], \"sessions\": []}",
        )
        .unwrap();
        assert!(matches!(
            load(dir.path()).unwrap_err(),
            StateError::Version { found: 9, .. }
        ));
    }
}
