//! Session labels are written from both sides: the kernel adds the labels a
//! call earns as it lets the call through, the daemon adds those its engine
//! decides and carries them over a policy reload. Nothing the daemon writes
//! may take away a label the kernel set: it is what stops the connect after
//! a secret was read.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use agent_common::{Access, Verdict};
use agentgate::enforce::KernelRuleset;

use crate::{
    inproc::{Kernel, entry, path_key},
    support::*,
};

fn wait_for_file(p: &Path, what: &str) {
    // Minutes: under TCG (the VM suite) a shell loop of opens is slow.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never appeared",
            p.display()
        );
        sleep(Duration::from_millis(20));
    }
}

/// A session that reads one line from the test before each step.
fn session(d: &Daemon, home: &Path, intent: &str, script: &str) -> (Child, ChildStdin) {
    let mut child = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--workspace", path_str(home), "--intent", intent])
        .args(["--", "sh", "-c", script])
        .env("HOME", home)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Continues a stopped daemon however the test ends.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// The kernel sets `secret-read` while the daemon cannot see it happen (its
/// event is lost: the ring buffer is full, which the README counts as a
/// fault that happens, not one that cannot), then the policy is reloaded
/// with another label declared first, so `secret-read` changes bit. The
/// connect after that must still be refused: the daemon's reload may not
/// overwrite what the kernel set, and the kernel's bit must still mean
/// `secret-read` under the new rules.
#[test]
fn a_label_the_kernel_set_survives_a_reload_that_renumbers_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("labels.yaml");
    let original = fs::read_to_string(test_policy("labels.yaml")).unwrap();
    fs::write(&policy, &original).unwrap();
    let d = Daemon::start(&["--policy", path_str(&policy), "--ring-bytes", "65536"]);
    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_ed25519");
    fs::write(&key, "PRIVATE KEY").unwrap();
    let read_done = home.path().join("read-done");
    let flooded = home.path().join("flooded");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // Session A reads the key, then connects, each when told; between the
    // two it runs no program and opens nothing (`read` is a builtin).
    let (a, mut a_in) = session(
        &d,
        home.path(),
        "holds a secret",
        &format!(
            "read x; cat {key} >/dev/null; echo read=$?; : > {done}; read y; \
             {python} -c 'import socket; s=socket.socket(); \
             print(\"errno=\" + str(s.connect_ex((\"127.0.0.1\", {port}))))'",
            key = path_str(&key),
            done = path_str(&read_done),
            python = python(),
        ),
    );
    // Session B fills the ring buffer with opens when told (redirections of
    // the shell itself: no forks; 64 KiB hold a few hundred open records).
    let (b, mut b_in) = session(
        &d,
        home.path(),
        "floods",
        &format!(
            "read x; i=0; while [ $i -lt 4000 ]; do : < /etc/hostname; i=$((i+1)); done; \
             : > {flooded}; read y",
            flooded = path_str(&flooded),
        ),
    );
    // Both sessions started and their start-up read by the daemon.
    d.wait_for(Duration::from_secs(60), |ev| {
        ev.iter()
            .filter(|e| s(e, "kind") == "exec" && s(e, "comm") == "sh")
            .count()
            >= 2
    });
    sleep(Duration::from_secs(1));
    let before = d.events(Duration::ZERO).len();

    signal(d.pid(), libc::SIGSTOP);
    let stopped = Stopped(d.pid());
    b_in.write_all(b"go\n").unwrap();
    wait_for_file(&flooded, "the flood");
    a_in.write_all(b"go\n").unwrap();
    wait_for_file(&read_done, "the key read");
    drop(stopped);

    // The daemon reads what the ring kept (session B's opens); A's calls
    // since the stop were all lost.
    let mut seen = before;
    loop {
        let n = d.events(Duration::from_millis(500)).len();
        if n == seen {
            break;
        }
        seen = n;
    }
    let status = d.status();
    assert!(
        counter(&status, "open", 3) > 0,
        "premise: the flood was to overflow the ring: {status}"
    );
    assert!(
        !d.events(Duration::ZERO)
            .iter()
            .any(|e| s(e, "target") == path_str(&key)),
        "premise: the key read's event was to be lost with the full ring"
    );

    // Another label before secret-read: its bit changes.
    let renumbered = original
        .replace(
            "labels:\n  secret-read:",
            "labels:\n  note-read: The session has read its note.\n  secret-read:",
        )
        .replace(
            "rules:\n",
            "rules:\n  - name: note-read-marks-session\n    reason: A note.\n    match:\n      \
             open:\n        path: ~/note\n    action: allow\n    set_labels: [note-read]\n\n",
        );
    assert_ne!(renumbered, original);
    let reloads = |log: &str| log.matches("policy reloaded").count();
    let done_before = reloads(&d.log());
    fs::write(&policy, &renumbered).unwrap();
    signal(d.pid(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reloads(&d.log()) == done_before {
        assert!(Instant::now() < deadline, "no reload: {}", d.log());
        sleep(Duration::from_millis(100));
    }

    a_in.write_all(b"go\n").unwrap();
    let out = a.wait_with_output().unwrap();
    assert_connect_refused_after_key_read(&out, &d.log());
    drop(b_in);
    let _ = b.wait_with_output();
}

/// Round after round, the kernel sets 16 labels of a fresh session (one
/// for each of 16 files its process opens) while the daemon adds the other
/// 48, one by one: every round must end with all 64. It runs until 100
/// rounds had the kernel's writes fall among the daemon's (at least 300
/// rounds, at most two minutes: a loaded machine overlaps them less often). On a daemon that reads
/// the labels, adds its own and writes them back, a label the kernel sets
/// between that read and that write is lost; a kernel that creates the
/// session's entry by overwriting it loses the daemon's.
#[test]
fn labels_the_kernel_sets_are_not_lost_while_the_daemon_adds_labels() {
    const MIN_ROUNDS: u64 = 300;
    const RACES: u32 = 100;
    const FILES: usize = 16;
    const KERNEL_LABELS: u64 = (1 << FILES) - 1;
    let mut k = Kernel::load();
    let dir = tempfile::tempdir().unwrap();
    let mut rules = KernelRuleset::default();
    let mut files = Vec::new();
    for i in 0..FILES {
        let f = dir.path().join(format!("secret-{i}"));
        fs::write(&f, "x").unwrap();
        let (bits, key) = path_key(path_str(&f), Access::Read);
        rules
            .path
            .push((bits, key, entry(Verdict::Allow, 1 + i as u32, 1 << i)));
        files.push(path_str(&f).to_owned());
    }
    // Per round: told a path, it spins until the path exists (no wake-up
    // latency between the test's signal and the opens), opens each file
    // once, and says so. At a high priority, so that it runs as soon as told.
    let mut child = Command::new("nice")
        .args([
            "-n",
            "-10",
            &python(),
            "-c",
            &format!(
                "import os, sys\n\
                 files = {files:?}\n\
                 for line in sys.stdin:\n    \
                 go = line.strip()\n    \
                 print('armed', flush=True)\n    \
                 while not os.path.exists(go): pass\n    \
                 for f in files: os.close(os.open(f, os.O_RDONLY))\n    \
                 print('opened', flush=True)\n"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut next_line = |what: &str| {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), what);
    };
    let (mut lost, mut raced, mut rounds_lost, mut daemon_lost) = (0, 0, 0, 0);
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || (raced < RACES && start.elapsed() < Duration::from_secs(120)) {
        let round = rounds;
        rounds += 1;
        let session = 1_000_000 + round;
        let go = dir.path().join(format!("go-{round}"));
        k.enforcer.install(session, &rules, &[], 0).unwrap();
        k.tag(child.id(), session);
        writeln!(stdin, "{}", path_str(&go)).unwrap();
        stdin.flush().unwrap();
        next_line("armed");
        fs::write(&go, "").unwrap();
        let at_go = k.enforcer.labels(session) & KERNEL_LABELS;
        for bit in FILES..64 {
            k.enforcer.add_labels(session, 1 << bit).unwrap();
        }
        let at_end = k.enforcer.labels(session) & KERNEL_LABELS;
        next_line("opened");
        let labels = k.enforcer.labels(session);
        daemon_lost += (!labels & !KERNEL_LABELS).count_ones();
        // The kernel set labels while the daemon was writing.
        raced += (at_go != at_end) as u32;
        let missing = (!labels & KERNEL_LABELS).count_ones();
        lost += missing;
        rounds_lost += (missing > 0) as u32;
        k.enforcer.remove(session);
    }
    drop(stdin);
    let _ = child.wait();
    println!(
        "{rounds} rounds: the kernel set labels during the daemon's writes in {raced} rounds; \
         {lost} labels the kernel set were lost, in {rounds_lost} rounds; \
         {daemon_lost} labels the daemon added were lost"
    );
    assert_eq!(
        (lost, daemon_lost),
        (0, 0),
        "labels lost (the kernel's, the daemon's); the kernel's in {rounds_lost} of {rounds} \
         rounds ({raced} rounds raced)"
    );
    assert!(
        raced > 0,
        "the kernel never set a label while the daemon wrote: the race was not exercised"
    );
}
