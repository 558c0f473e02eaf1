//! Verdicts through a real systemd-journald, read back with journalctl.
//!
//! The test re-runs itself under `unshare -m --propagation private`; inside,
//! tmpfs on /run/systemd, /run/log and /var/log/journal give journald a
//! journal of its own, and nothing outside the namespace is touched. If
//! journald cannot start, the test fails (it does not skip).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentgate::{
    audit::{Outcome, Verdict},
    journal::{DEFAULT_SOCKET, LogTarget, Sink},
};
use serde_json::Value;

use crate::common::record;

const INSIDE_ENV: &str = "AGENTGATE_JOURNALD_NAMESPACE";
const JOURNALD: &str = "/lib/systemd/systemd-journald";

#[test]
fn verdicts_reach_journald() {
    for tool in [JOURNALD, "/usr/bin/journalctl", "/usr/bin/unshare"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install -y systemd util-linux"
        );
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "journald::inside_namespace",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(text.contains("journald: all fields back"), "{text}");
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

/// journalctl's JSON gives a field as a string, or as an array of bytes when
/// it is not printable.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().unwrap() as u8 as char)
            .collect(),
        other => panic!("unexpected journal value {other}"),
    }
}

fn query(filter: &str) -> Vec<Value> {
    let out = Command::new("journalctl")
        .args([
            "-t",
            "agentgate",
            filter,
            "-o",
            "json",
            "--all",
            "--no-pager",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for journald to have written `n` entries matching `filter`.
fn wait_for(filter: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = query(filter);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops journald however the test ends.
struct Journald(std::process::Child);

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "helper: run by journald::verdicts_reach_journald inside a private mount namespace"]
fn inside_namespace() {
    if std::env::var_os(INSIDE_ENV).is_none() {
        eprintln!(
            "{INSIDE_ENV} not set: this only runs inside verdicts_reach_journald's namespace"
        );
        return;
    }
    for dir in ["/run/systemd", "/run/log", "/var/log/journal"] {
        std::fs::create_dir_all(dir).unwrap();
        sh("mount", &["-t", "tmpfs", "tmpfs", dir]);
    }
    // journald's own output goes to a file, not to the pipes the parent
    // test reads (it would hold them open).
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut journald = Journald(
        Command::new(JOURNALD)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {JOURNALD}: {e}")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(DEFAULT_SOCKET).exists() {
        if let Some(st) = journald.0.try_wait().unwrap() {
            panic!(
                "systemd-journald exited ({st}) before creating {DEFAULT_SOCKET}: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "systemd-journald did not create {DEFAULT_SOCKET} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let sink = Sink::open(LogTarget::Journald, Path::new(DEFAULT_SOCKET), false).unwrap();
    assert_eq!(sink.kind(), "journald");
    let mut deny = record(5);
    deny.decision.reason = "curl is not part of the intent\nsecond line".into();
    let mut kill = record(10);
    kill.decision.verdict = Verdict::Kill as i32;
    kill.decision.outcome = Outcome::ContextDeny as i32;
    let mut refer = record(15);
    refer.decision.verdict = Verdict::Refer as i32;
    refer.decision.outcome = Outcome::Refer as i32;
    let allow = record(1);
    // Larger than a datagram may be: goes through a sealed memfd.
    let mut big = record(20);
    big.process.argv = vec!["x".repeat(400_000)];
    for (r, seq) in [(&deny, 1), (&kill, 2), (&refer, 3), (&big, 4)] {
        assert!(sink.verdict(r, Some(seq)).unwrap());
    }
    assert!(
        !sink.verdict(&allow, None).unwrap(),
        "allow is not logged by default"
    );

    let denies = wait_for("DECISION=deny", 2);
    assert_eq!(denies.len(), 2, "deny entries: {denies:?}");
    let d = denies
        .iter()
        .find(|e| text(&e["RECEIPT"]) == "1")
        .expect("the deny with receipt 1");
    let want = [
        ("SESSION", deny.session.id.to_string()),
        ("PRINCIPAL", "alice".into()),
        ("AGENT", "/usr/local/bin/agent".into()),
        ("INTENT", "fix the failing test".into()),
        ("ACTION", "connect".into()),
        ("TARGET", deny.action.target.clone()),
        ("DECISION", "deny".into()),
        ("OUTCOME", "forbidden".into()),
        ("RULE", deny.decision.rule.clone()),
        (
            "REASON",
            "curl is not part of the intent\nsecond line".into(),
        ),
        ("PID", deny.process.pid.to_string()),
        ("EXE", "/usr/bin/bash".into()),
        ("PRIORITY", "4".into()),
        ("SYSLOG_IDENTIFIER", "agentgate".into()),
    ];
    for (field, value) in want {
        assert_eq!(text(&d[field]), value, "{field} in {d}");
    }
    assert!(
        text(&d["MESSAGE"]).starts_with("deny connect 10.0.0.5:443 by pid 1005"),
        "{d}"
    );

    let b = denies
        .iter()
        .find(|e| text(&e["RECEIPT"]) == "4")
        .expect("the 400 kB entry (memfd)");
    assert_eq!(text(&b["ARGV"]).len(), 400_000);

    let kills = wait_for("DECISION=kill", 1);
    assert_eq!(kills.len(), 1);
    assert_eq!(text(&kills[0]["PRIORITY"]), "2");
    assert_eq!(text(&kills[0]["OUTCOME"]), "context-deny");
    let refers = wait_for("DECISION=refer", 1);
    assert_eq!(refers.len(), 1);
    assert_eq!(text(&refers[0]["PRIORITY"]), "5");
    assert!(query("DECISION=allow").is_empty());

    drop(journald);
    println!("journald: all fields back");
}
