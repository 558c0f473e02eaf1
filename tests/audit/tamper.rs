//! Tampering through RocksDB's own API, then `verify`.
use agentgate::audit::{
    Problem,
    receipt::{self, Receipt},
    sign::Verifier,
    store::{CF_CHECKPOINTS, CF_RECEIPTS, seq_key},
    verify::VerifyError,
};
use prost::Message;

use crate::common::{failure, filled, raw_db, verify};

fn get(db: &rocksdb::DB, seq: u64) -> Vec<u8> {
    db.get_cf(db.cf_handle(CF_RECEIPTS).unwrap(), seq_key(seq))
        .unwrap()
        .unwrap()
}

fn put(db: &rocksdb::DB, seq: u64, value: &[u8]) {
    db.put_cf(db.cf_handle(CF_RECEIPTS).unwrap(), seq_key(seq), value)
        .unwrap();
}

/// Rewrites a receipt's decision, keeping (`rehash: false`) or recomputing
/// its hash.
fn change(dir: &std::path::Path, seq: u64, rehash: bool) {
    let db = raw_db(dir);
    let mut r = Receipt::decode(get(&db, seq).as_slice()).unwrap();
    let decision = r.decision.as_mut().unwrap();
    decision.verdict = agentgate::audit::Verdict::Allow as i32;
    decision.reason = "nothing to see here".into();
    let bytes = if rehash {
        r.hash.clear();
        receipt::seal(&r).0
    } else {
        r.encode_to_vec()
    };
    put(&db, seq, &bytes);
}

#[test]
fn a_clean_store_verifies() {
    let dir = filled(100);
    let v = verify(dir.path()).unwrap();
    assert_eq!(v.range, Some((1, 100)));
    assert_eq!(v.receipts, 100);
    assert_eq!(v.checkpoints, 10);
    assert_eq!(v.signed_up_to, Some(100));
    assert_eq!(v.start, None);
}

#[test]
fn an_empty_store_verifies() {
    let dir = filled(0);
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.range, v.receipts, v.checkpoints), (None, 0, 0));
}

#[test]
fn a_changed_receipt_is_named() {
    let dir = filled(100);
    change(dir.path(), 37, false);
    let f = failure(dir.path());
    assert_eq!((f.seq, f.problem), (37, Problem::Changed));
}

#[test]
fn a_changed_and_rehashed_receipt_breaks_the_next_link() {
    let dir = filled(100);
    change(dir.path(), 37, true);
    let f = failure(dir.path());
    assert_eq!((f.seq, &f.problem), (38, &Problem::BrokenLink { prev: 37 }));
    assert!(
        f.to_string()
            .starts_with("receipt 38: does not link to receipt 37"),
        "{f}"
    );
}

#[test]
fn a_rehashed_last_receipt_contradicts_its_checkpoint() {
    let dir = filled(100);
    change(dir.path(), 100, true);
    let f = failure(dir.path());
    assert_eq!(
        (f.seq, f.problem),
        (100, Problem::CheckpointMismatch { seq: 100 })
    );
}

#[test]
fn a_deleted_receipt_is_missing() {
    let dir = filled(100);
    let db = raw_db(dir.path());
    db.delete_cf(db.cf_handle(CF_RECEIPTS).unwrap(), seq_key(50))
        .unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!((f.seq, f.problem), (50, Problem::Missing { next: 51 }));
}

#[test]
fn the_first_receipt_deleted_is_missing() {
    let dir = filled(20);
    let db = raw_db(dir.path());
    db.delete_cf(db.cf_handle(CF_RECEIPTS).unwrap(), seq_key(1))
        .unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!((f.seq, f.problem), (1, Problem::Missing { next: 2 }));
}

#[test]
fn two_swapped_receipts_are_reordered() {
    let dir = filled(100);
    let db = raw_db(dir.path());
    let (a, b) = (get(&db, 60), get(&db, 61));
    put(&db, 60, &b);
    put(&db, 61, &a);
    drop(db);
    let f = failure(dir.path());
    assert_eq!(
        (f.seq, f.problem),
        (60, Problem::Reordered { seq: 60, found: 61 })
    );
}

#[test]
fn a_cut_tail_is_truncated() {
    let dir = filled(100);
    let db = raw_db(dir.path());
    db.delete_range_cf(
        db.cf_handle(CF_RECEIPTS).unwrap(),
        seq_key(95),
        seq_key(101),
    )
    .unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!(
        (f.seq, f.problem),
        (
            95,
            Problem::Truncated {
                last: 94,
                signed: 100
            }
        )
    );
}

#[test]
fn a_forged_checkpoint_has_a_bad_signature() {
    let dir = filled(100);
    let db = raw_db(dir.path());
    let cf = db.cf_handle(CF_CHECKPOINTS).unwrap();
    let mut cp: agentgate::audit::sign::Checkpoint =
        Message::decode(db.get_cf(cf, seq_key(50)).unwrap().unwrap().as_slice()).unwrap();
    cp.hash = vec![0; 32];
    db.put_cf(cf, seq_key(50), cp.encode_to_vec()).unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!(f.seq, 50);
    assert!(matches!(f.problem, Problem::BadSignature { .. }), "{f}");
}

#[test]
fn a_wrong_public_key_fails() {
    let dir = filled(30);
    let other = tempfile::tempdir().unwrap();
    drop(agentgate::audit::AuditLog::open(crate::common::config(other.path())).unwrap());
    let wrong =
        Verifier::from_file(&other.path().join(agentgate::audit::sign::PUBLIC_KEY_FILE)).unwrap();
    let reader = agentgate::audit::Reader::open(dir.path()).unwrap();
    match agentgate::audit::verify(&reader, &wrong) {
        Err(VerifyError::Bad(f)) => {
            assert_eq!(f.seq, 10);
            assert!(matches!(f.problem, Problem::BadSignature { .. }), "{f}");
            assert!(f.to_string().contains("another key"), "{f}");
        }
        other => panic!("verified with the wrong key: {other:?}"),
    }
}

/// The CLI end to end: exit 0 on a clean store, 1 and one line naming the
/// sequence number on a tampered one.
#[test]
fn the_cli_exits_1_and_names_the_receipt() {
    let dir = filled(40);
    let bin = env!("CARGO_BIN_EXE_agentgate");
    let run = || {
        std::process::Command::new(bin)
            .args(["audit", "verify", "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let ok = run();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok: receipts 1..=40"));

    change(dir.path(), 12, false);
    let bad = run();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("receipt 12: changed"), "{err}");
}

/// `verify` reads a secondary instance: it works while the writer is open.
#[test]
fn verify_while_the_log_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = agentgate::audit::AuditLog::open(crate::common::config(dir.path())).unwrap();
    for n in 1..=55 {
        log.append(crate::common::record(n)).unwrap();
    }
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.range, v.signed_up_to), (Some((1, 55)), Some(50)));
    assert_eq!(log.checkpoint().wait().unwrap(), Some(55));
    assert_eq!(verify(dir.path()).unwrap().signed_up_to, Some(55));
}
