//! `kill -9` while appending: every acknowledged receipt survives, the chain
//! verifies, and appending continues from where it stopped.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
};

use agentgate::audit::{AuditLog, Reader, store};

use crate::common::{config, own_key, record, verify};

const DIR_ENV: &str = "AGENTGATE_AUDIT_CRASH_DIR";
const ACK: &str = "ACK ";

/// Run by `kill_9_mid_stream` in a child process: four threads append
/// forever, printing each acknowledged sequence number.
#[test]
#[ignore = "helper: run by crash::kill_9_mid_stream in a child process"]
fn child_appends_until_killed() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        eprintln!("{DIR_ENV} not set: nothing to do outside kill_9_mid_stream");
        return;
    };
    let log = Arc::new(AuditLog::open(config(std::path::Path::new(&dir))).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for n in (t..).step_by(4) {
                    let done = log.append(record(n)).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "\n{ACK}{}", done.seq).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill_9_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::child_appends_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let ack = |line: &str| {
        line.split_once(ACK)
            .map(|(_, n)| n.trim().parse::<u64>().unwrap())
    };
    while acked.len() < 3000 {
        let line = lines
            .next()
            .expect("the child stopped before 3000 acknowledgements")
            .unwrap();
        acked.extend(ack(&line));
    }
    child.kill().unwrap(); // SIGKILL
    // What it printed before it died was acknowledged too.
    for line in lines {
        acked.extend(ack(&line.unwrap()));
    }
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // Read the crashed store (no clean close: the WAL has to be replayed).
    let v = verify(dir.path()).expect("the store after kill -9 verifies");
    let (first, last) = v.range.unwrap();
    assert_eq!(first, 1);
    let reader = Reader::open(dir.path()).unwrap();
    for seq in &acked {
        assert!(
            *seq <= last,
            "acknowledged {seq} but the log ends at {last}"
        );
    }
    drop(reader);
    let db = crate::common::raw_db(dir.path());
    let cf = db.cf_handle(store::CF_RECEIPTS).unwrap();
    for seq in &acked {
        assert!(
            db.get_cf(cf, store::seq_key(*seq)).unwrap().is_some(),
            "acknowledged receipt {seq} is gone"
        );
    }
    drop(db);
    eprintln!(
        "kill -9: {} acknowledged, {} stored (max acknowledged {})",
        acked.len(),
        last,
        acked.iter().max().unwrap()
    );

    // Appending continues the chain.
    let log = AuditLog::open(config(dir.path())).unwrap();
    let more: Vec<_> = (0..100).map(|n| log.append(record(n)).unwrap()).collect();
    assert_eq!(more[0].seq, last + 1);
    drop(log);
    let v = agentgate::audit::verify(&Reader::open(dir.path()).unwrap(), &own_key(dir.path()))
        .expect("the continued store verifies");
    assert_eq!(v.range, Some((1, last + 100)));
    assert_eq!(v.signed_up_to, Some(last + 100));
}
