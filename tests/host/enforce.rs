//! Enforcement on a real kernel: a tagged process doing the forbidden thing
//! is refused (LSM: EPERM) or killed (fallback: SIGKILL); its allowed
//! neighbour in the same session goes ahead; an untagged process doing the
//! forbidden thing is untouched. Each test reads the daemon's mode and holds
//! it to what that mode promises (README, threat model).
use std::{
    fs,
    net::{TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Lsm,
    Fallback,
}

/// A daemon with tests/host/policies/enforce.yaml, and a session's world:
/// a workspace with programs and files the policy names, and a home.
pub(crate) struct World {
    pub(crate) d: Daemon,
    pub(crate) mode: Mode,
    ws: tempfile::TempDir,
    home: tempfile::TempDir,
}

pub(crate) const SECRET: &str = "top secret";

impl World {
    pub(crate) fn new() -> Self {
        Self::with(&[])
    }

    fn with(extra: &[&str]) -> Self {
        Self::start(&test_policy("enforce.yaml"), extra)
    }

    pub(crate) fn with_policy(policy: &std::path::Path) -> Self {
        Self::start(policy, &[])
    }

    fn start(policy: &std::path::Path, extra: &[&str]) -> Self {
        let mut args = vec!["--policy", path_str(policy)];
        args.extend_from_slice(extra);
        let d = Daemon::start(&args);
        let status = d.status();
        let mode = if status.starts_with("mode: lsm") {
            Mode::Lsm
        } else if status.starts_with("mode: fallback") {
            Mode::Fallback
        } else {
            panic!("unexpected mode in: {status}")
        };
        let ws = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let bin = ws.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        for name in [
            "forbidden",
            "allowed",
            "killme",
            "refer-me",
            "submit-expense",
            "approve-expense",
        ] {
            let p = bin.join(name);
            fs::write(&p, "#!/bin/sh\necho ran\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(ws.path().join("forbidden")).unwrap();
        fs::write(ws.path().join("forbidden/secret.txt"), SECRET).unwrap();
        fs::write(ws.path().join("allowed.txt"), "fine\n").unwrap();
        fs::create_dir_all(home.path().join(".ssh")).unwrap();
        fs::write(home.path().join(".ssh/id_ed25519"), "PRIVATE KEY").unwrap();
        World { d, mode, ws, home }
    }

    pub(crate) fn ws(&self) -> &str {
        path_str(self.ws.path())
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.ws.path().join(rel)
    }

    /// `sh -c script` in a new session of this world (cwd: the workspace).
    pub(crate) fn tagged(&self, script: &str) -> Output {
        self.tagged_with(&[], script)
    }

    /// The same, with more `agentgate exec` options.
    pub(crate) fn tagged_with(&self, options: &[&str], script: &str) -> Output {
        self.session_command(options, script).output().unwrap()
    }

    fn session_command(&self, options: &[&str], script: &str) -> Command {
        let mut c = Command::new(AGENTGATE);
        c.arg("--socket")
            .arg(&self.d.socket)
            .args(["exec", "--workspace", self.ws()])
            .args(options)
            .args(["--", "sh", "-c", script])
            .env("HOME", self.home.path())
            // cargo's library path for the test binary: it would send every
            // program's loader probing through directories outside any scope.
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(self.ws.path());
        c
    }

    /// The same, outside any session.
    pub(crate) fn untagged(&self, script: &str) -> Output {
        Command::new("sh")
            .args(["-c", script])
            .env("HOME", self.home.path())
            .current_dir(self.ws.path())
            .output()
            .unwrap()
    }

    /// The exit status a shell reports for a refused exec or open: 126
    /// (exec, EPERM) or 1 (cat, EPERM) in LSM mode, 137 (SIGKILL) in
    /// fallback mode.
    pub(crate) fn refused(&self, lsm_status: i32) -> i32 {
        match self.mode {
            Mode::Lsm => lsm_status,
            Mode::Fallback => 137,
        }
    }

    /// The daemon's decision on the first `kind` event whose target is
    /// `target`.
    pub(crate) fn decision_on(&self, kind: &str, target: &str) -> serde_json::Value {
        let is = |e: &serde_json::Value| s(e, "kind") == kind && s(e, "target") == target;
        let events = self
            .d
            .wait_for(Duration::from_secs(10), |ev| ev.iter().any(is));
        events
            .into_iter()
            .find(is)
            .unwrap_or_else(|| panic!("no {kind} event on {target}"))
    }
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `name=STATUS` lines a script printed.
pub(crate) fn status_of(o: &Output, name: &str) -> i32 {
    let text = stdout(o);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no {name}= in output: {text}\nstderr: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
}

fn connect_script(addr: &str, port: u16) -> String {
    format!(
        "{} -c 'import socket,sys; s=socket.socket(socket.AF_INET6 if \":\" in \"{addr}\" else socket.AF_INET); \
         print(\"errno=\" + str(s.connect_ex((\"{addr}\", {port}))))'",
        python()
    )
}

#[test]
fn exec_of_a_forbidden_program_is_refused_and_the_neighbour_runs() {
    let w = World::new();
    // Absolute paths: fallback mode judges exec paths as written, and a
    // relative one only after the fact (see the path tricks below).
    let out = w.tagged(&format!(
        "{ws}/bin/forbidden; echo forbidden=$?; {ws}/bin/allowed; echo allowed=$?; \
         {ws}/bin/killme; echo killme=$?",
        ws = w.ws()
    ));
    assert_eq!(status_of(&out, "forbidden"), w.refused(126), "{out:?}");
    assert_eq!(status_of(&out, "allowed"), 0);
    // kill is SIGKILL in both modes.
    assert_eq!(status_of(&out, "killme"), 137);
    assert!(
        !stdout(&out).contains("ran\nforbidden"),
        "the forbidden program ran"
    );
    let d = w.decision_on("exec", path_str(&w.path("bin/forbidden")));
    assert_eq!(d["kernel"]["verdict"], "deny", "{d}");
    assert_eq!(d["decision"]["rule"], "no-forbidden-program", "{d}");
    assert_eq!(d["decision"]["outcome"], "forbidden", "{d}");

    let plain = w.untagged(&format!("{}/bin/forbidden; echo forbidden=$?", w.ws()));
    assert_eq!(
        status_of(&plain, "forbidden"),
        0,
        "untagged run was touched"
    );
}

#[test]
fn open_of_a_forbidden_file_is_refused_and_the_neighbour_reads() {
    let w = World::new();
    let secret = w.path("forbidden/secret.txt");
    let script = format!(
        "cat {} >/dev/null; echo secret=$?; cat allowed.txt >/dev/null; echo allowed=$?",
        path_str(&secret)
    );
    let out = w.tagged(&script);
    assert_eq!(status_of(&out, "secret"), w.refused(1), "{out:?}");
    assert_eq!(status_of(&out, "allowed"), 0);
    let d = w.decision_on("open", path_str(&secret));
    assert_eq!(d["decision"]["rule"], "no-forbidden-files", "{d}");

    let plain = w.untagged(&script);
    assert_eq!(status_of(&plain, "secret"), 0, "untagged read was touched");
}

#[test]
fn connect_to_a_forbidden_port_is_refused_and_the_neighbour_connects() {
    let w = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let out = w.tagged(&format!(
        "{}; {}",
        connect_script("127.0.0.1", 9),
        connect_script("127.0.0.1", open_port)
    ));
    let text = stdout(&out);
    let errnos: Vec<&str> = text.lines().filter(|l| l.starts_with("errno=")).collect();
    // EPERM from the LSM hook or the cgroup hook; the neighbour connects.
    assert_eq!(errnos, ["errno=1", "errno=0"], "{out:?}");

    let plain = w.untagged(&connect_script("127.0.0.1", 9));
    // ECONNREFUSED: nothing listens on 9, and nothing stopped the attempt.
    assert_eq!(stdout(&plain).trim(), "errno=111");
}

#[test]
fn a_read_secret_makes_the_next_connect_fail_and_only_in_that_session() {
    let w = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = w.home.path().join(".ssh/id_ed25519");
    let with_read = w.tagged(&format!(
        "cat {} >/dev/null; echo read=$?; {}",
        path_str(&key),
        connect_script("127.0.0.1", port)
    ));
    assert_eq!(
        status_of(&with_read, "read"),
        0,
        "the read itself is allowed"
    );
    assert_eq!(status_of(&with_read, "errno"), 1, "{with_read:?}");

    let without = w.tagged(&connect_script("127.0.0.1", port));
    assert_eq!(
        status_of(&without, "errno"),
        0,
        "another session holds no secret"
    );
}

#[test]
fn evasions_by_process_tricks_are_still_judged() {
    let w = World::new();
    let secret = path_str(&w.path("forbidden/secret.txt")).to_owned();
    // Double fork and setsid: the grandchild is still in the session.
    let out = w.tagged(&format!(
        "setsid sh -c '(cat {secret} >/dev/null; echo grandchild=$? > out.txt) &' ; sleep 1; cat out.txt"
    ));
    assert_eq!(status_of(&out, "grandchild"), w.refused(1), "{out:?}");
    // A renamed argv[0] changes nothing: the image is judged, not its name.
    let out = w.tagged(&format!(
        "bash -c 'exec -a innocent {}/bin/forbidden'; echo renamed=$?",
        w.ws()
    ));
    assert_eq!(status_of(&out, "renamed"), w.refused(126), "{out:?}");
}

#[test]
fn evasions_by_address_tricks_are_still_judged() {
    let w = World::new();
    // IPv4-mapped IPv6 is the same address.
    let out = w.tagged(&connect_script("::ffff:127.0.0.1", 9));
    assert_eq!(status_of(&out, "errno"), 1, "{out:?}");
    // A datagram sent without connect is judged at sendmsg.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = w.tagged(&format!(
        "{} -c 'import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"127.0.0.1\", 9)); print(\"sent=0\")\nexcept OSError as e: print(\"sent=\" + str(e.errno))'",
        python()
    ));
    assert_eq!(status_of(&out, "sent"), 1, "{out:?}");
    drop(sink);
}

/// Paths that name the forbidden file in another way are judged as the
/// file: LSM mode by its own path (bpf_d_path), fallback mode by the
/// kernel's walk of the opened file's dentries at the open's exit.
#[test]
fn evasions_by_path_tricks() {
    let w = World::new();
    fs::create_dir_all(w.path("other")).unwrap();
    std::os::unix::fs::symlink(w.path("forbidden/secret.txt"), w.path("link")).unwrap();
    let ws = w.ws().to_owned();
    let tricks = [
        ("relative", "cd forbidden && cat secret.txt".to_owned()),
        (
            "dotdot",
            "cd other && cat ../forbidden/secret.txt".to_owned(),
        ),
        ("slashes", format!("cat /{ws}///forbidden//secret.txt")),
        (
            "procroot",
            format!("cat /proc/self/root{ws}/forbidden/secret.txt"),
        ),
        ("symlink", "cat link".to_owned()),
    ];
    for (name, cmd) in tricks {
        let out = w.tagged(&format!("{cmd}; echo {name}=$?"));
        let status = status_of(&out, name);
        // Both modes judge the file reached: LSM refuses the open, fallback
        // kills the reader as the open returns, before it reads a byte.
        assert_eq!(status, w.refused(1), "{name}: {out:?}");
        assert!(!stdout(&out).contains(SECRET), "{name}: read: {out:?}");
    }
    let d = w.decision_on("open", path_str(&w.path("forbidden/secret.txt")));
    assert_eq!(d["kernel"]["verdict"], "deny", "{d}");
}

/// A write *through* a directory descriptor (`/proc/self/fd/N/x`, how Claude
/// Code writes beside a file) is in no shipped write scope, though reopening
/// a descriptor (`/proc/self/fd/N`) is. Both modes judge the file it
/// reaches: LSM mode refuses, fallback mode kills the writer as the open
/// returns.
#[test]
fn a_write_through_a_directory_descriptor_is_refused() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let w = World::with_policy(&repo.join("policies"));
    let outside = PathBuf::from(format!("/home/agentgate-test-dirfd-{}", std::process::id()));
    fs::create_dir_all(&outside).unwrap();
    let script = format!(
        "{} -c 'import os, sys, time\nd = os.open(\"{}\", os.O_PATH)\n\
         try:\n  os.close(os.open(\"/proc/self/fd/%d/x\" % d, os.O_WRONLY | os.O_CREAT))\n\
         except PermissionError: sys.exit(13)\ntime.sleep(5)'; echo through=$?",
        python(),
        outside.display()
    );
    let out = w.tagged_with(&["--profile", "coding-agent"], &script);
    let status = status_of(&out, "through");
    fs::remove_dir_all(&outside).unwrap();
    assert_eq!(status, w.refused(13), "{out:?}");
    // Refused for where it writes, not for anything else on the way.
    // LSM mode refuses the new file before it exists (`create`).
    let is = |e: &serde_json::Value| {
        ["open", "create"].contains(&s(e, "kind")) && s(e, "target").ends_with("/x")
    };
    let events =
        w.d.wait_for(Duration::from_secs(10), |ev| ev.iter().any(is));
    let open = events
        .iter()
        .find(|e| is(e))
        .expect("the daemon saw the open");
    assert_eq!(
        open["decision"]["rule"], "writes-stay-in-workspace",
        "{open}"
    );
}

/// A SIGKILL sent at syscall entry does not undo the syscall: in fallback
/// mode `open(O_TRUNC)` of a protected file truncates it before the process
/// dies. LSM mode refuses the open before it happens.
#[test]
fn truncating_open_of_a_protected_file() {
    let w = World::new();
    let target = w.path("forbidden/secret.txt");
    // A child shell does the truncating open, so that the outer one reports.
    let out = w.tagged(&format!("sh -c ': > {}'; echo trunc=$?", path_str(&target)));
    let left = fs::read_to_string(&target).unwrap();
    match w.mode {
        Mode::Lsm => {
            // The redirection failed with EPERM: the shell's status is 2.
            assert_eq!(status_of(&out, "trunc"), 2, "{out:?}");
            assert_eq!(left, SECRET, "LSM mode refused the open: content intact");
        }
        Mode::Fallback => {
            assert_eq!(status_of(&out, "trunc"), 137, "{out:?}");
            assert_eq!(left, "", "fallback mode: the truncation happened");
        }
    }
}

#[test]
fn the_kernel_programs_pass_the_verifier_in_this_mode() {
    let w = World::new();
    let status = w.d.status();
    let expected: &[&str] = match w.mode {
        Mode::Lsm => &[
            "lsm/bprm_check_security",
            "lsm/file_open",
            "lsm/socket_connect",
        ],
        Mode::Fallback => &[
            "cgroup_sock_addr/connect4",
            "tracepoint/sched:sched_process_exec",
        ],
    };
    for p in expected {
        assert!(status.contains(p), "{p} not attached:\n{status}");
    }
}

/// `--audit-only`: every verdict is computed and reported, nothing blocked.
#[test]
fn audit_only_reports_verdicts_and_blocks_nothing() {
    let w = World::with(&["--audit-only"]);
    assert!(w.d.status().contains("AUDIT-ONLY"), "{}", w.d.status());
    let secret = w.path("forbidden/secret.txt");
    let out = w.tagged(&format!(
        "{}/bin/forbidden; echo forbidden=$?; cat {} >/dev/null; echo secret=$?",
        w.ws(),
        path_str(&secret)
    ));
    assert_eq!(status_of(&out, "forbidden"), 0, "{out:?}");
    assert_eq!(status_of(&out, "secret"), 0, "{out:?}");
    let d = w.decision_on("open", path_str(&secret));
    assert_eq!(d["kernel"]["verdict"], "deny", "{d}");
    assert_eq!(d["kernel"]["enforced"], "none", "{d}");
    assert_eq!(d["decision"]["verdict"], "deny", "{d}");
    assert_eq!(d["decision"]["reaction"], "none", "{d}");
}

/// A session's TTL runs out while its process runs: the next call is refused.
#[test]
fn a_session_past_its_ttl_is_refused_everything() {
    let w = World::new();
    let out = w.tagged_with(
        &["--ttl", "2s"],
        // No redirections: the shell itself would open /dev/null, and be
        // refused (LSM) or killed (fallback) for it once expired.
        "cat allowed.txt; echo before=$?; sleep 3; /bin/cat allowed.txt; echo after=$?",
    );
    assert_eq!(status_of(&out, "before"), 0, "{out:?}");
    // The exec of cat is the first call past the TTL.
    assert_eq!(status_of(&out, "after"), w.refused(126), "{out:?}");
    assert!(w.d.log().contains("expired (TTL)"), "{}", w.d.log());
}

/// Referral end to end: an out-of-scope exec is refused and listed; a
/// human's approval lets the same exec through in that session until it
/// expires; an approval from inside a session is refused.
#[test]
fn a_referral_is_listed_granted_for_a_while_and_refused_again() {
    let w = World::new();
    let prog = format!("{}/bin/refer-me", w.ws());
    let go = w.path("approved");
    let script = format!(
        "{prog}; echo first=$?; while [ ! -e {go} ]; do sleep 0.1; done; \
         {prog}; echo second=$?; sleep 4; {prog}; echo third=$?",
        go = path_str(&go)
    );
    let session = w
        .session_command(&[], &script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The refusal is filed as a referral.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        let out = w.d.cli(&["referrals"]);
        let text = stdout(&out);
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(&prog) && l.contains("pending"))
        {
            break line.split('\t').next().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no referral listed: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Not from inside a session.
    let inside = w.tagged(&format!(
        "{AGENTGATE} --socket {} approve {id}; echo rc=$?",
        w.d.socket.display()
    ));
    assert!(stdout(&inside).contains("rc=1"), "{inside:?}");
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("inside session"),
        "{inside:?}"
    );
    let ok = w.d.cli(&["approve", &id, "--for", "3s"]);
    assert!(ok.status.success(), "{ok:?}");
    fs::write(&go, "").unwrap();
    let out = session.wait_with_output().unwrap();
    assert_eq!(status_of(&out, "first"), w.refused(126), "{out:?}");
    assert_eq!(status_of(&out, "second"), 0, "granted: {out:?}");
    assert_eq!(
        status_of(&out, "third"),
        w.refused(126),
        "grant expired: {out:?}"
    );
    let listed = stdout(&w.d.cli(&["referrals"]));
    assert!(listed.contains("approved"), "{listed}");
}

/// Separation of duties: a session that submitted an expense may not
/// approve one; two sessions may. The sequence is a label the submit sets in
/// the kernel, so the approve is refused synchronously.
#[test]
fn separation_of_duties_holds_within_a_session_only() {
    let w = World::new();
    let ws = w.ws();
    let one = w.tagged(&format!(
        "{ws}/bin/submit-expense; echo submit=$?; {ws}/bin/approve-expense; echo approve=$?"
    ));
    assert_eq!(status_of(&one, "submit"), 0, "{one:?}");
    assert_eq!(status_of(&one, "approve"), w.refused(126), "{one:?}");
    let submit = w.tagged(&format!("{ws}/bin/submit-expense; echo submit=$?"));
    let approve = w.tagged(&format!("{ws}/bin/approve-expense; echo approve=$?"));
    assert_eq!(status_of(&submit, "submit"), 0, "{submit:?}");
    assert_eq!(status_of(&approve, "approve"), 0, "{approve:?}");
}

/// Every decision is a receipt: the event line names its sequence number,
/// the chain verifies while the daemon runs, and the export holds the
/// refusal with its rule and the session's principal and intent.
#[test]
fn every_decision_is_a_receipt_that_verifies() {
    let w = World::new();
    let secret = w.path("forbidden/secret.txt");
    w.tagged(&format!("cat {} >/dev/null", path_str(&secret)));
    let d = w.decision_on("open", path_str(&secret));
    assert!(d["decision"]["receipt"].as_u64().is_some(), "{d}");
    let state = w.d.dir.path().join("state");
    let verify = Command::new(AGENTGATE)
        .args(["audit", "verify", "--state-dir", path_str(&state)])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let export = Command::new(AGENTGATE)
        .args(["audit", "export", "--json", "--state-dir", path_str(&state)])
        .args(["--session", &u(&d, "session").to_string()])
        .output()
        .unwrap();
    let text = stdout(&export);
    let refusal = text
        .lines()
        .find(|l| l.contains("no-forbidden-files"))
        .unwrap_or_else(|| panic!("no receipt of the refusal in {text}"));
    assert!(refusal.contains("deny"), "{refusal}");
    assert!(refusal.contains(path_str(&secret)), "{refusal}");
}

/// Reload on file change: a policy that fails its check leaves the previous
/// one enforcing, and the daemon says why; a good one takes over for the
/// running sessions too.
#[test]
fn a_bad_reload_keeps_the_old_policy_and_a_good_one_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let original = fs::read_to_string(test_policy("enforce.yaml")).unwrap();
    fs::write(&policy, &original).unwrap();
    let w = World::with_policy(&policy);
    let secret = path_str(&w.path("forbidden/secret.txt")).to_owned();
    let read = format!("cat {secret} >/dev/null; echo secret=$?");
    assert_eq!(status_of(&w.tagged(&read), "secret"), w.refused(1));

    // A broken file: refused, the old rules stay.
    fs::write(&policy, original.replace("action: deny", "action: deni")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !w.d.log().contains("previous policy stays in force") {
        assert!(std::time::Instant::now() < deadline, "{}", w.d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        w.d.log().contains("policy.yaml:"),
        "the reason names the place: {}",
        w.d.log()
    );
    assert_eq!(status_of(&w.tagged(&read), "secret"), w.refused(1));

    // A good file without the rule: in force at once.
    fs::write(
        &policy,
        original.replace(
            "path: ${workspace}/forbidden/**",
            "path: ${workspace}/elsewhere/**",
        ),
    )
    .unwrap();
    while !w.d.log().contains("policy reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", w.d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status_of(&w.tagged(&read), "secret"), 0);
}

/// Intent drift: a session whose calls stray from its declared scope more
/// often than its profile allows is ended: the kernel kills each process of
/// it at its next call, and the daemon kills those whose calls it judges
/// after that point.
#[test]
fn a_session_that_drifts_past_its_threshold_is_ended() {
    let w = World::with_policy(&test_policy("drift.yaml"));
    let out = w.tagged(
        "export LC_ALL=C; for i in $(seq 60); do /bin/cat allowed.txt >/dev/null; echo c=$?; \
         sleep 0.05; done",
    );
    let statuses: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("c="))
        .collect();
    assert_eq!(
        statuses.first(),
        Some(&"0"),
        "in scope at first: {out:?}\n{}",
        w.d.log()
    );
    // Ended: the loop never finishes (the shell itself, or each program it
    // starts, is killed).
    assert!(
        statuses.len() < 60 && (statuses.contains(&"137") || out.status.code().is_none()),
        "never ended: {statuses:?} {out:?}"
    );
    assert!(
        w.d.log().contains("past its profile's threshold"),
        "{}",
        w.d.log()
    );
}

/// `agentgate --socket S` as a script inside this world's sessions runs it.
fn agentgate_in(w: &World) -> String {
    format!("{AGENTGATE} --socket {}", path_str(&w.d.socket))
}

fn errnos(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .filter_map(|l| l.strip_prefix("errno="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_tool_call_narrows_the_session_to_the_tools_scope() {
    let w = World::new();
    let out4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_scope = TcpListener::bind("127.0.0.2:0").unwrap();
    let (p4, p2) = (
        out4.local_addr().unwrap().port(),
        in_scope.local_addr().unwrap().port(),
    );
    let ag = agentgate_in(&w);
    let outside = connect_script("127.0.0.1", p4);
    let inside = connect_script("127.0.0.2", p2);
    let out = w.tagged(&format!(
        "{outside}; id=$({ag} action begin run_tests --params '{{\"filter\":\"unit\"}}' \
         --rationale 'run the unit tests'); echo began=$?; \
         {ag} action begin run_tests; echo second=$?; \
         {outside}; {inside}; {ag} action end $id; echo ended=$?; {outside}"
    ));
    assert_eq!(status_of(&out, "began"), 0, "{out:?}");
    assert_ne!(
        status_of(&out, "second"),
        0,
        "a second open tool call was accepted"
    );
    assert_eq!(status_of(&out, "ended"), 0, "{out:?}");
    // Before: the profile allows it. During: outside the tool's scope
    // (EPERM in both modes: LSM or cgroup hook), inside it fine. After: the
    // profile alone again.
    assert_eq!(errnos(&out), ["0", "1", "0", "0"], "{out:?}");
    let target = format!("127.0.0.1:{p4}");
    let refused =
        w.d.wait_for(Duration::from_secs(10), |ev| {
            ev.iter()
                .any(|e| s(e, "target") == target && e["decision"]["verdict"] == "deny")
        })
        .into_iter()
        .find(|e| s(e, "target") == target && e["decision"]["verdict"] == "deny")
        .unwrap_or_else(|| panic!("no refused connect to {target}\n{}", w.d.log()));
    assert_eq!(
        refused["decision"]["rule"], "default.tool.run_tests.default",
        "{refused}"
    );
    assert_eq!(
        refused["decision"]["tool_call"]["tool"], "run_tests",
        "{refused}"
    );
    assert_eq!(refused["kernel"]["verdict"], "deny", "{refused}");

    // Only the runtime inside a session declares tool calls.
    let outsider = w.d.cli(&["action", "begin", "run_tests"]);
    assert!(!outsider.status.success());
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("inside its session"),
        "{outsider:?}"
    );
    let plain = w.untagged(&outside);
    assert_eq!(
        stdout(&plain).trim(),
        "errno=0",
        "untagged connect was touched"
    );
}

#[test]
fn a_session_opened_inside_a_session_can_only_narrow() {
    let w = World::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = connect_script("127.0.0.1", port);
    fs::write(w.path("connect.sh"), &connect).unwrap();
    let ag = agentgate_in(&w);
    let child = |profile: &str| {
        format!(
            "{ag} exec --profile {profile} --workspace {} --intent helper -- sh {}",
            w.ws(),
            path_str(&w.path("connect.sh"))
        )
    };
    // A narrow child of a broad session: the child may not connect; its
    // parent still may once the child is done.
    let out = w.tagged(&format!("{}; {connect}", child("narrow")));
    assert_eq!(errnos(&out), ["1", "0"], "{out:?}\n{}", w.d.log());
    // A broad child of a narrow session: its own profile would allow the
    // connect, the session it came from does not.
    let out = w.tagged_with(&["--profile", "narrow"], &child("default"));
    assert_eq!(errnos(&out), ["1"], "{out:?}\n{}", w.d.log());

    let list = stdout(&w.d.cli(&["sessions", "list"]));
    let delegated: Vec<(&str, &str)> = list
        .lines()
        .filter_map(|l| {
            let id = l.split('\t').next()?;
            let parent = l
                .split('\t')
                .find_map(|f| f.strip_prefix("from session "))?;
            Some((id, parent))
        })
        .collect();
    assert_eq!(delegated.len(), 2, "{list}");
    let (child_id, parent_id) = delegated[1];
    let show = stdout(&w.d.cli(&["sessions", "show", child_id]));
    assert!(
        show.contains(&format!("delegation: [{child_id}, {parent_id}]")),
        "{show}"
    );
    assert!(show.contains("profile:    default"), "{show}");
    let d = w.decision_on("connect", &format!("127.0.0.1:{port}"));
    assert_eq!(d["decision"]["verdict"], "deny", "{d}");
    // Ending a session ends the sessions opened from it.
    let end = w.d.cli(&["sessions", "end", parent_id]);
    assert!(end.status.success(), "{end:?}");
    let list = stdout(&w.d.cli(&["sessions", "list"]));
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with(&format!("{child_id}\t"))),
        "{list}"
    );

    let plain = w.untagged(&connect);
    assert_eq!(
        stdout(&plain).trim(),
        "errno=0",
        "untagged connect was touched"
    );
}
