//! Audit log throughput: appends acknowledged only after fsync (group commit
//! and one-at-a-time), and offline verification.
//!
//! The stores live on the same filesystem as the state directory would
//! (`TMPDIR`, default /tmp); fsync there must be real for the figures to mean
//! anything.
use std::time::Duration;

use agentgate::audit::{
    Action, ActionKind, Agent, AuditLog, Config, Decision, Outcome, Process, Reader, Record,
    Session, Verdict, verify,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn record(n: u64) -> Record {
    Record {
        session: Session {
            id: 1 + n % 8,
            principal: "alice".into(),
            agent: Some(Agent {
                exe: "/usr/local/bin/claude".into(),
                sha256: vec![0x5a; 32],
            }),
            intent: "fix the failing test in crates/parser".into(),
            delegation: vec!["alice".into(), "claude".into()],
            profile: "coding-agent".into(),
        },
        process: Process {
            pid: 4000 + (n % 64) as u32,
            start_ns: 1_700_000_000_000 + n,
            exe: "/usr/bin/bash".into(),
            argv: vec!["bash".into(), "-c".into(), "cargo test -p parser".into()],
            uid: 1000,
            ppid: 3999,
        },
        action: Action {
            kind: ActionKind::Open as i32,
            target: format!(
                "/home/alice/src/project/crates/parser/src/file{}.rs",
                n % 1000
            ),
            ..Default::default()
        },
        decision: Decision {
            verdict: Verdict::Allow as i32,
            outcome: Outcome::ContextAllow as i32,
            rule: "workspace-read".into(),
            reason: "inside the workspace".into(),
            policy_hash: vec![0x11; 32],
        },
    }
}

const BATCH: u64 = 20_000;

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(Config::new(dir.path())).unwrap();
    let template: Vec<Record> = (0..BATCH).map(record).collect();

    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(15));
    // The daemon's pattern: submit as decisions come, await the acks.
    g.bench_function("group_commit_20k", |b| {
        b.iter_batched(
            || template.clone(),
            |records| {
                let pending: Vec<_> = records.into_iter().map(|r| log.submit(r)).collect();
                for p in pending {
                    p.wait().unwrap();
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    // One append at a time: every ack waits for its own fsync.
    g.bench_function("one_at_a_time", |b| {
        b.iter_batched(
            || record(7),
            |r| log.append(r).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

const VERIFY_N: u64 = 200_000;

fn verify_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(Config::new(dir.path())).unwrap();
        let pending: Vec<_> = (0..VERIFY_N).map(|n| log.submit(record(n))).collect();
        for p in pending {
            p.wait().unwrap();
        }
    }
    let key = agentgate::audit::Verifier::from_file(
        &dir.path().join(agentgate::audit::sign::PUBLIC_KEY_FILE),
    )
    .unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(VERIFY_N));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("200k", |b| {
        b.iter(|| {
            let v = verify(&reader, &key).unwrap();
            assert_eq!(v.receipts, VERIFY_N);
        })
    });
    g.finish();
}

criterion_group!(benches, append, verify_bench);
criterion_main!(benches);
