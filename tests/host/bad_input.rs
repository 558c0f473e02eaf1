//! What a user sees when they get it wrong: one clear line, non-zero exit,
//! and nothing run.
use std::{io::Write, os::unix::net::UnixStream, process::Command};

use crate::support::*;

fn one_line_failure(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

#[test]
fn exec_without_a_daemon_says_how_to_start_it_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("ran");
    let out = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(dir.path().join("no.sock"))
        .args(["exec", "--", "touch"])
        .arg(&witness)
        .output()
        .unwrap();
    one_line_failure(&out, "daemon is not running");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agentgate daemon"));
    assert!(
        !witness.exists(),
        "the command must not run without a session"
    );
}

#[test]
fn exec_with_a_missing_command() {
    let out = Command::new(AGENTGATE)
        .args(["--socket", "/nonexistent", "exec", "--", "no-such-cmd-xyz"])
        .output()
        .unwrap();
    one_line_failure(&out, "command not found: no-such-cmd-xyz");
    let out = Command::new(AGENTGATE)
        .args(["exec", "--"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn exec_of_a_non_executable_file() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "#!/bin/sh").unwrap();
    let path = f.path().to_str().unwrap();
    let out = Command::new(AGENTGATE)
        .args(["--socket", "/nonexistent", "exec", "--", path])
        .output()
        .unwrap();
    one_line_failure(&out, "is not executable");
}

#[test]
fn malformed_control_messages_are_refused_and_the_daemon_lives_on() {
    let d = Daemon::start(&[]);
    // A frame that is not a Request, then an oversized length prefix.
    let mut sock = UnixStream::connect(&d.socket).unwrap();
    sock.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    let mut reply = vec![0u8; 256];
    let n = std::io::Read::read(&mut sock, &mut reply).unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).contains("malformed request"),
        "{:?}",
        &reply[..n]
    );
    let mut sock = UnixStream::connect(&d.socket).unwrap();
    sock.write_all(&[0x7f, 0xff, 0xff, 0xff]).unwrap();
    let n = std::io::Read::read(&mut sock, &mut reply).unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).contains("malformed frame"),
        "{:?}",
        &reply[..n]
    );
    // Still serving.
    assert!(d.status().contains("mode: "));
}

#[test]
fn a_tagged_process_cannot_use_the_control_socket() {
    let d = Daemon::start(&[]);
    let out = d.exec_sh(&format!(
        "{AGENTGATE} --socket {} status; echo rc=$?",
        d.socket.display()
    ));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("refused: the caller") && all.contains("rc=1"),
        "{all}"
    );
}
