//! Retention deletes the oldest receipts behind a signed start: the rest
//! still verifies, and tampering is still caught.
use std::time::Duration;

use agentgate::audit::{
    AuditLog, Problem,
    store::{CF_META, CF_RECEIPTS, START_KEY, seq_key},
};

use crate::common::{append, config, failure, filled, raw_db, record, verify};

fn compact(dir: &std::path::Path, keep: u64) -> Option<u64> {
    let log = AuditLog::open(config(dir)).unwrap();
    log.compact_before(keep).wait().unwrap()
}

#[test]
fn a_compacted_store_verifies_and_continues() {
    let dir = filled(100);
    assert_eq!(compact(dir.path(), 41), Some(41));
    let v = verify(dir.path()).unwrap();
    assert_eq!(
        (v.range, v.start, v.receipts),
        (Some((41, 100)), Some(41), 60)
    );
    // Older checkpoints went with their receipts.
    assert_eq!(v.checkpoints, 6);

    let more = append(dir.path(), 1..=5);
    assert_eq!(more[0].seq, 101);
    assert_eq!(verify(dir.path()).unwrap().range, Some((41, 105)));
}

#[test]
fn the_newest_receipt_is_always_kept() {
    let dir = filled(10);
    assert_eq!(compact(dir.path(), 1000), Some(10));
    assert_eq!(verify(dir.path()).unwrap().range, Some((10, 10)));
    assert_eq!(compact(dir.path(), 1000), None);
}

#[test]
fn deleting_the_first_kept_receipt_is_caught() {
    let dir = filled(100);
    compact(dir.path(), 41);
    let db = raw_db(dir.path());
    db.delete_cf(db.cf_handle(CF_RECEIPTS).unwrap(), seq_key(41))
        .unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!((f.seq, f.problem), (41, Problem::Missing { next: 42 }));
}

#[test]
fn a_removed_or_forged_start_is_caught() {
    let dir = filled(100);
    compact(dir.path(), 41);
    let db = raw_db(dir.path());
    let meta = db.cf_handle(CF_META).unwrap();
    let start = db.get_cf(meta, START_KEY).unwrap().unwrap();
    let mut forged = start.clone();
    let n = forged.len();
    forged[n - 1] ^= 1; // a signature byte
    db.put_cf(meta, START_KEY, &forged).unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!(f.seq, 41);
    assert!(matches!(f.problem, Problem::BadSignature { .. }), "{f}");

    let db = raw_db(dir.path());
    db.delete_cf(db.cf_handle(CF_META).unwrap(), START_KEY)
        .unwrap();
    drop(db);
    let f = failure(dir.path());
    assert_eq!((f.seq, f.problem), (1, Problem::Missing { next: 41 }));
}

#[test]
fn age_limit_deletes_old_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention.max_age = Some(Duration::from_millis(500));
    let log = AuditLog::open(cfg).unwrap();
    for n in 0..50 {
        log.append(record(n)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    for n in 50..100 {
        log.append(record(n)).unwrap();
    }
    assert_eq!(log.enforce_retention().wait().unwrap(), Some(51));
    drop(log);
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.range, v.start), (Some((51, 100)), Some(51)));
}

#[test]
fn size_limit_deletes_the_oldest_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention.max_bytes = Some(64 << 10);
    let log = AuditLog::open(cfg).unwrap();
    let pending: Vec<_> = (0..5000).map(|n| log.submit(record(n))).collect();
    for p in pending {
        p.wait().unwrap();
    }
    let start = log
        .enforce_retention()
        .wait()
        .unwrap()
        .expect("5000 receipts exceed 64 KiB");
    assert!(start > 1 && start < 5000, "new start {start}");
    drop(log);
    let v = verify(dir.path()).unwrap();
    assert_eq!(v.range, Some((start, 5000)));
}
