//! The programs and maps are pinned: while no daemon runs, the kernel keeps
//! enforcing the last rules for tagged processes (and only for them); a new
//! daemon on the same state and pin dirs adopts the sessions and goes on
//! judging and reporting. `agentgate unload` is what ends enforcement.
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::*;

const SECRET: &str = "top secret";

/// Exit statuses of the session loop's attempts so far, one per line.
fn attempts(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until the loop has made `more` attempts past `from`; returns them.
fn next_attempts(file: &Path, from: usize, more: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = attempts(file);
        if a.len() >= from + more {
            return a[from..].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "the session's loop stalled at {} attempts",
            a.len()
        );
        sleep(Duration::from_millis(100));
    }
}

fn open_events<'a>(events: &'a [Value], target: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| s(e, "kind") == "open" && s(e, "target") == target)
        .collect()
}

/// The forbidden file, read outside any session.
fn untagged_read(path: &Path) -> String {
    let out = Command::new("cat").arg(path).output().unwrap();
    assert!(out.status.success(), "untagged cat: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A session whose shell tries to read a forbidden file every 0.2 s and
/// writes each attempt's exit status to a file.
struct Loop {
    child: Child,
    ws: tempfile::TempDir,
    _home: tempfile::TempDir,
}

impl Loop {
    fn start(d: &Daemon) -> Self {
        let ws = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        fs::create_dir_all(ws.path().join("forbidden")).unwrap();
        let secret = ws.path().join("forbidden/secret.txt");
        fs::write(&secret, SECRET).unwrap();
        // Absolute paths: the kernel judges them in both modes, daemon or not.
        let script = format!(
            "while [ ! -e {stop} ]; do cat {secret} >/dev/null 2>&1; echo $? >> {log}; sleep 0.2; done",
            stop = path_str(&ws.path().join("stop")),
            secret = path_str(&secret),
            log = path_str(&ws.path().join("attempts")),
        );
        let child = Command::new(AGENTGATE)
            .arg("--socket")
            .arg(&d.socket)
            .args(["exec", "--workspace", path_str(ws.path())])
            .args(["--intent", "restart test", "--", "sh", "-c", &script])
            .env("HOME", home.path())
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(ws.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Loop {
            child,
            ws,
            _home: home,
        }
    }

    fn secret(&self) -> std::path::PathBuf {
        self.ws.path().join("forbidden/secret.txt")
    }

    fn log(&self) -> std::path::PathBuf {
        self.ws.path().join("attempts")
    }

    fn stop(&self) -> std::path::PathBuf {
        self.ws.path().join("stop")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = fs::write(self.stop(), "");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Exit status of a refused `cat`: EPERM (1) in lsm mode, SIGKILL in
/// fallback mode.
fn refused(d: &Daemon) -> i32 {
    if d.status().starts_with("mode: lsm") {
        1
    } else {
        137
    }
}

#[test]
fn enforcement_outlives_the_daemon_and_a_new_daemon_adopts_the_session() {
    let mut d = Daemon::start(&["--policy", path_str(&test_policy("enforce.yaml"))]);
    let refused = refused(&d);
    let mut session = Loop::start(&d);
    let (log, secret) = (session.log(), session.secret());

    let before = next_attempts(&log, 0, 3);
    assert!(before.iter().all(|s| *s == refused), "{before:?}");
    let listed = String::from_utf8(d.cli(&["sessions", "list"]).stdout).unwrap();
    assert!(listed.contains("restart test"), "{listed}");
    let target = path_str(&secret);
    let reported = open_events(&d.events(Duration::from_millis(500)), target).len();
    assert!(reported > 0, "no open event on {target}: {}", d.log());

    // No daemon: the pinned programs go on refusing, for the session only.
    d.stop();
    assert!(!d.alive());
    assert!(
        fs::read_dir(&d.pin_dir).unwrap().next().is_some(),
        "the pins stay"
    );
    let from = attempts(&log).len();
    let down = next_attempts(&log, from, 5);
    assert!(
        down.iter().all(|s| *s == refused),
        "attempts while no daemon ran: {down:?}"
    );
    assert!(session.alive(), "the session lives on");
    assert_eq!(untagged_read(&secret), SECRET);

    // A new daemon adopts the pins and the session.
    let t = Instant::now();
    d.restart();
    let took = t.elapsed();
    let log_text = d.log();
    assert!(
        log_text.contains("restart: adopted the pinned maps and programs of this same object"),
        "{log_text}"
    );
    eprintln!(
        "restart: the new daemon answered {} ms after it was started",
        took.as_millis()
    );
    let listed = String::from_utf8(d.cli(&["sessions", "list"]).stdout).unwrap();
    assert!(
        listed.contains("restart test"),
        "session not restored: {listed}\n{log_text}"
    );
    let from = attempts(&log).len();
    let after = next_attempts(&log, from, 3);
    assert!(after.iter().all(|s| *s == refused), "{after:?}");
    assert_eq!(untagged_read(&secret), SECRET);
    // Reporting goes on, including the calls made while no daemon ran:
    // their records waited in the pinned ring buffer.
    let total = attempts(&log).len();
    let events = d.wait_for(Duration::from_secs(20), |ev| {
        open_events(ev, target).len() >= total
    });
    let opens = open_events(&events, target);
    eprintln!(
        "restart: {} open events reported for {total} attempts ({reported} before the stop)",
        opens.len()
    );
    assert!(opens.len() > reported + down.len(), "{}", d.log());
    let last = opens.last().unwrap();
    assert_ne!(last["kernel"]["verdict"], "allow", "{last}");

    // Unload ends enforcement: the same loop now reads the file.
    d.stop();
    let out = d.cli(&["unload", "--pin-dir", path_str(&d.pin_dir)]);
    assert!(out.status.success(), "unload: {out:?}");
    assert!(!d.pin_dir.exists());
    let from = attempts(&log).len();
    let unloaded = next_attempts(&log, from + 1, 2);
    assert!(unloaded.iter().all(|s| *s == 0), "{unloaded:?}");
}

/// Another object (here: other load options, as after an upgrade) cannot
/// reuse the pinned maps: the new daemon loads fresh ones, attaches its
/// programs, carries the tags over, and only then removes the old pins.
#[test]
fn a_daemon_with_another_object_carries_the_session_over_without_a_gap() {
    let policy = test_policy("enforce.yaml");
    let mut d = Daemon::start(&["--policy", path_str(&policy)]);
    let refused = refused(&d);
    let session = Loop::start(&d);
    let log = session.log();
    next_attempts(&log, 0, 3);
    let old: Vec<_> = fs::read_dir(&d.pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    d.stop();
    d.restart_with(&["--policy", path_str(&policy), "--ring-bytes", "4194304"]);
    let log_text = d.log();
    assert!(
        log_text.contains("upgrade: earlier pins were of a different object"),
        "{log_text}"
    );
    let now: Vec<_> = fs::read_dir(&d.pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(now.len(), 1, "the old pins are gone: {now:?}");
    assert_ne!(now, old);
    let listed = String::from_utf8(d.cli(&["sessions", "list"]).stdout).unwrap();
    assert!(listed.contains("restart test"), "{listed}\n{log_text}");
    let from = attempts(&log).len();
    next_attempts(&log, from, 3);
    // Every attempt, before, during and after the swap, was refused.
    let all = attempts(&log);
    assert!(all.iter().all(|s| *s == refused), "{all:?}");
    assert_eq!(untagged_read(&session.secret()), SECRET);
}

/// The saved sessions cannot be read: the daemon does not start (it would
/// otherwise forget sessions whose processes the kernel still holds), and
/// says which file; the pinned programs keep enforcing meanwhile.
#[test]
fn a_corrupt_session_file_stops_the_start_with_its_path() {
    let mut d = Daemon::start(&[]);
    d.stop();
    let file = d.dir.path().join("state/sessions.json");
    fs::write(&file, "{\"version\": 1, \"sessions\": [").unwrap();
    let out = Command::new(AGENTGATE)
        .arg("daemon")
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.dir.path().join("state"))
        .arg("--pin-dir")
        .arg(&d.pin_dir)
        .arg("--policy")
        .arg(test_policy("observe.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(path_str(&file)) && err.contains("corrupt"),
        "{err}"
    );
    assert!(d.pin_dir.exists(), "the pins stay");
}

#[test]
fn unload_is_refused_inside_a_session_and_while_the_daemon_runs() {
    let mut d = Daemon::start(&[]);
    let pin_dir = path_str(&d.pin_dir).to_owned();
    let out = d.cli(&["unload", "--pin-dir", &pin_dir]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a daemon is running"), "{err}");

    // From inside a session, even with the daemon gone.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.1; done; \
         {AGENTGATE} --socket /nonexistent unload --pin-dir {pin_dir}; echo status=$?",
        go = path_str(&go)
    );
    let child = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--intent", "unload test", "--", "sh", "-c", &script])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&d.cli(&["sessions", "list"]).stdout).contains("unload test") {
        assert!(Instant::now() < deadline, "the session did not open");
        sleep(Duration::from_millis(100));
    }
    d.stop();
    fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("status=1"), "{text} {err}");
    // Fallback: the caller's tag is read from the pinned map; lsm: the
    // kernel refuses bpf() to a tagged process, so the tag cannot be read.
    assert!(
        err.contains("is inside session") || err.contains("cannot tell whether"),
        "{err}"
    );
    assert!(d.pin_dir.exists(), "the pins stay");
}

/// A session reads its key (the kernel sets `secret-read`), the daemon is
/// replaced (`restart_args`: `None` for the same object), then the session
/// connects: refused, by the label the kernel kept or the new daemon
/// carried over.
fn a_label_survives(restart_args: Option<&[&str]>) {
    let policy = test_policy("enforce.yaml");
    let mut d = Daemon::start(&["--policy", path_str(&policy)]);
    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_ed25519");
    fs::write(&key, "PRIVATE KEY").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let go = home.path().join("go");
    let script = format!(
        "cat {key} >/dev/null; echo read=$?; while [ ! -e {go} ]; do sleep 0.1; done; \
         {python} -c 'import socket; s=socket.socket(); print(\"errno=\" + str(s.connect_ex((\"127.0.0.1\", {port}))))'",
        key = path_str(&key),
        go = path_str(&go),
        python = python(),
    );
    let child = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--workspace", path_str(home.path())])
        .args(["--intent", "label test", "--", "sh", "-c", &script])
        .env("HOME", home.path())
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_for(Duration::from_secs(60), |ev| {
        ev.iter()
            .any(|e| s(e, "kind") == "open" && s(e, "target") == path_str(&key))
    });
    d.stop();
    match restart_args {
        None => d.restart(),
        Some(args) => {
            let mut all = vec!["--policy", path_str(&policy)];
            all.extend_from_slice(args);
            d.restart_with(&all);
        }
    }
    let listed = String::from_utf8(d.cli(&["sessions", "list"]).stdout).unwrap();
    assert!(listed.contains("label test"), "{listed}\n{}", d.log());
    fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_connect_refused_after_key_read(&out, &d.log());
    // Another session, without the label, connects.
    let out = d.exec_sh(&format!(
        "{} -c 'import socket; s=socket.socket(); print(\"errno=\" + str(s.connect_ex((\"127.0.0.1\", {port}))))'",
        python()
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("errno=0"));
}

#[test]
fn a_label_earned_before_a_restart_holds_after_it() {
    a_label_survives(None);
}

#[test]
fn a_label_earned_before_an_upgrade_holds_after_it() {
    a_label_survives(Some(&["--ring-bytes", "4194304"]));
}
