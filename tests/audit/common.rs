//! Helpers shared by the audit tests.
use std::path::Path;

use agentgate::audit::{
    Action, ActionKind, Agent, AuditLog, Config, Decision, Outcome, Process, Reader, Receipted,
    Record, Session, Verdict, Verified,
    sign::Verifier,
    store::{self, COLUMN_FAMILIES},
    verify::{Failure, VerifyError},
};

pub fn record(n: u64) -> Record {
    let kind = match n % 3 {
        0 => ActionKind::Exec,
        1 => ActionKind::Open,
        _ => ActionKind::Connect,
    };
    let target = match kind {
        ActionKind::Exec => format!("/usr/bin/tool{n}"),
        ActionKind::Open => format!("/home/alice/.ssh/id_{n}"),
        _ => format!("10.0.0.{}:443", n % 250),
    };
    Record {
        session: Session {
            id: 1 + n % 4,
            principal: "alice".into(),
            agent: Some(Agent {
                exe: "/usr/local/bin/agent".into(),
                sha256: vec![0x5a; 32],
            }),
            intent: "fix the failing test".into(),
            delegation: vec!["alice".into(), "agent".into()],
            profile: "coding-agent".into(),
        },
        process: Process {
            pid: 1000 + (n % 50) as u32,
            start_ns: 123_456_789 + n,
            exe: "/usr/bin/bash".into(),
            argv: vec!["bash".into(), "-c".into(), format!("step {n}")],
            uid: 1000,
            ppid: 999,
        },
        action: Action {
            kind: kind as i32,
            target,
            ..Default::default()
        },
        decision: Decision {
            verdict: if n.is_multiple_of(5) {
                Verdict::Deny
            } else {
                Verdict::Allow
            } as i32,
            outcome: if n.is_multiple_of(5) {
                Outcome::Forbidden
            } else {
                Outcome::ContextAllow
            } as i32,
            rule: format!("rule-{}", n % 7),
            reason: format!("because {n}"),
            policy_hash: vec![0x11; 32],
        },
    }
}

pub fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.checkpoint_every = 10;
    c
}

/// A store with `n` receipts, closed (its last checkpoint signed).
pub fn filled(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), 1..=n);
    dir
}

pub fn append(dir: &Path, range: std::ops::RangeInclusive<u64>) -> Vec<Receipted> {
    let log = AuditLog::open(config(dir)).unwrap();
    let pending: Vec<_> = range.map(|n| log.submit(record(n))).collect();
    pending.into_iter().map(|p| p.wait().unwrap()).collect()
}

pub fn own_key(dir: &Path) -> Verifier {
    Verifier::from_file(&dir.join(agentgate::audit::sign::PUBLIC_KEY_FILE)).unwrap()
}

pub fn verify(dir: &Path) -> Result<Verified, VerifyError> {
    agentgate::audit::verify(&Reader::open(dir).unwrap(), &own_key(dir))
}

pub fn failure(dir: &Path) -> Failure {
    match verify(dir) {
        Err(VerifyError::Bad(f)) => f,
        other => panic!("expected verify to fail, got {other:?}"),
    }
}

/// The store's RocksDB, opened directly (the log must be closed).
pub fn raw_db(dir: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(&opts, store::db_path(dir), COLUMN_FAMILIES).unwrap()
}
