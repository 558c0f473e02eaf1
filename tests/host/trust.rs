//! What the root daemon takes on trust from its callers, and what it must
//! not: the files it reads, the principal it signs, the process it kills,
//! the connections it holds, and a client facing a daemon that does not
//! answer.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::support::*;

/// A user only the system's user database knows (nss-systemd's drop-in
/// records), not /etc/passwd: what an LDAP or sssd user looks like to
/// agentgate.
struct NssUser {
    name: &'static str,
    uid: u32,
}

impl NssUser {
    /// Each test its own user: tests run side by side, and one's clean-up
    /// must not take another's user away.
    fn create(name: &'static str, uid: u32) -> Self {
        fs::create_dir_all("/run/userdb").unwrap();
        let record = format!(
            r#"{{"userName":"{}","uid":{},"gid":{},"homeDirectory":"/home/{}","shell":"/bin/sh","disposition":"regular"}}"#,
            name, uid, uid, name
        );
        fs::write(format!("/run/userdb/{}.user", name), record).unwrap();
        let _ = fs::remove_file(format!("/run/userdb/{}.user", uid));
        std::os::unix::fs::symlink(
            format!("{}.user", name),
            format!("/run/userdb/{}.user", uid),
        )
        .unwrap();
        let passwd = fs::read_to_string("/etc/passwd").unwrap();
        assert!(
            !passwd.contains(name),
            "{} must not be in /etc/passwd",
            name
        );
        let out = Command::new("getent")
            .args(["passwd", &uid.to_string()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(name),
            "nss-systemd does not serve /run/userdb here (is `systemd` in /etc/nsswitch.conf?): {out:?}"
        );
        NssUser { name, uid }
    }

    /// `agentgate ARGS…` as this user.
    fn agentgate(&self, d: &Daemon) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.uid),
            "--clear-groups",
            AGENTGATE,
            "--socket",
        ])
        .arg(&d.socket)
        .current_dir("/tmp");
        c
    }
}

impl Drop for NssUser {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/run/userdb/{}.user", self.uid));
        let _ = fs::remove_file(format!("/run/userdb/{}.user", self.name));
    }
}

fn sessions_list(d: &Daemon) -> String {
    let out = d.cli(&["sessions", "list"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmd` in the background until the session it opens shows in the
/// list; returns the list then.
fn listed_while_running(d: &Daemon, mut cmd: Command, intent: &str) -> String {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = sessions_list(d);
        if list.contains(intent) || Instant::now() > deadline {
            break list;
        }
        sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    list
}

#[test]
fn only_root_may_name_another_principal_and_users_come_from_nss() {
    let d = Daemon::start(&["--policy", path_str(&test_policy("trust.yaml"))]);
    let user = NssUser::create("agentgate-nss", 61234);
    // A user who claims to act for alice acts for themself. The name comes
    // from the user database (this user is not in /etc/passwd).
    let mut cmd = user.agentgate(&d);
    cmd.args(["exec", "--intent", "claims-alice", "--", "sleep", "20"])
        .env("SUDO_USER", "alice");
    let list = listed_while_running(&d, cmd, "claims-alice");
    let line = list
        .lines()
        .find(|l| l.contains("claims-alice"))
        .unwrap_or_else(|| panic!("no session in:\n{list}\n{}", d.log()));
    assert!(line.contains(user.name), "{line}");
    assert!(
        !line.contains("alice "),
        "a user named another principal: {line}"
    );
    assert!(
        d.log().contains("only root may name another user"),
        "{}",
        d.log()
    );
    // Root (sudo agentgate exec) may: SUDO_USER names the human.
    let mut cmd = Command::new(AGENTGATE);
    cmd.arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--intent", "sudo-alice", "--", "sleep", "20"])
        .env("SUDO_USER", "alice");
    let list = listed_while_running(&d, cmd, "sudo-alice");
    let line = list.lines().find(|l| l.contains("sudo-alice")).unwrap();
    assert!(line.contains("alice"), "{line}");
}

/// Opens a session for itself on the control socket (argv[1]) naming
/// argv[2] as its program: the request, protobuf by hand.
const OPEN_SESSION_CLIENT: &str = r#"
import os, socket, struct, sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field(tag, wire, payload):
    return varint(tag << 3 | wire) + payload
def text(tag, s):
    b = s.encode() if isinstance(s, str) else s
    return field(tag, 2, varint(len(b)) + b)
open_session = (field(1, 0, varint(os.getpid())) + text(2, "default") + text(3, "named-fifo")
                + text(4, "/tmp") + text(10, sys.argv[2]))
request = text(1, open_session)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(struct.pack(">I", len(request)) + request)
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
reply = s.recv(n, socket.MSG_WAITALL)
# Response.body: tag 2 is SessionOpened, tag 1 an error string.
print("opened" if reply[0] == (2 << 3 | 2) else "refused: %r" % reply)
"#;

#[test]
fn the_daemon_never_reads_the_program_a_caller_names() {
    let d = Daemon::start(&["--policy", path_str(&test_policy("trust.yaml"))]);
    // A FIFO named as the program, by a client of its own (`agentgate
    // exec` would not send it): a daemon that read it would block (and
    // /dev/zero would fill its memory). The session opens at once.
    let fifo = d.dir.path().join("agent.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["20", &python(), "-c", OPEN_SESSION_CLIENT])
        .arg(&d.socket)
        .arg(&fifo)
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(124),
        "the daemon did not answer: {}",
        d.log()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "opened",
        "{out:?}\n{}",
        d.log()
    );
    d.status();
    // The agent is what the kernel says the session's first process runs,
    // hashed from the image it mapped.
    let mut child = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--intent", "sleeper", "--", "sleep", "20"])
        .spawn()
        .unwrap();
    let sleep_bin = fs::canonicalize(
        String::from_utf8(Command::new("which").arg("sleep").output().unwrap().stdout)
            .unwrap()
            .trim(),
    )
    .unwrap();
    let expected = String::from_utf8(
        Command::new("sha256sum")
            .arg(&sleep_bin)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .split_whitespace()
    .next()
    .unwrap()
    .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let list = sessions_list(&d);
        let id = list
            .lines()
            .find(|l| l.contains("sleeper"))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned));
        let shown = id
            .map(|id| d.cli(&["sessions", "show", &id]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if shown.contains(&expected) || Instant::now() > deadline {
            break shown;
        }
        sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        shown.contains(&format!("{} sha256:{expected}", sleep_bin.display())),
        "{shown}\n{}",
        d.log()
    );
    // What /proc said of the agent when it started: `agentgate exec` put
    // the seccomp layer (a filter, no_new_privs) under it.
    let confined = shown.lines().find(|l| l.contains("confined:"));
    assert!(
        confined.is_some_and(|l| l.contains("seccomp: ") && l.ends_with("filter(s), no_new_privs")),
        "{shown}"
    );
}

#[test]
fn a_kill_never_reaches_a_process_that_reused_the_pid() {
    let d = Daemon::start(&["--policy", path_str(&test_policy("trust.yaml"))]);
    // In the session: A makes a call only user space refuses and exits;
    // with the daemon stopped, its event waits in the ring buffer. B, of
    // the same session, is then given A's pid. When the daemon reads A's
    // event, the pid is tagged with the same session — but B is a stranger.
    let script = r#"
import os, sys, time
sys.stdin.readline()
a = os.fork()
if a == 0:
    os.execv("/bin/sh", ["sh", "-c", "exit 0", "sh", "--forbidden-arg"])
os.waitpid(a, 0)
print("A", a, flush=True)
sys.stdin.readline()
b = os.fork()
if b == 0:
    time.sleep(30)
    os._exit(0)
print("B", b, flush=True)
sys.stdin.readline()
alive = os.waitpid(b, os.WNOHANG) == (0, 0)
print("ALIVE", alive, flush=True)
if alive:
    os.kill(b, 9)
    os.waitpid(b, 0)
"#;
    for attempt in 0..5 {
        let mut session = Command::new(AGENTGATE)
            .arg("--socket")
            .arg(&d.socket)
            .args([
                "exec",
                "--intent",
                "pid-reuse",
                "--",
                &python(),
                "-c",
                script,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = session.stdin.take().unwrap();
        let mut lines = BufReader::new(session.stdout.take().unwrap()).lines();
        let mut next = |tag: &str| -> String {
            let line = lines.next().unwrap().unwrap();
            line.strip_prefix(&format!("{tag} "))
                .unwrap_or_else(|| panic!("expected {tag}, got {line:?}"))
                .to_owned()
        };
        // The session is open once python reads its first line.
        sleep(Duration::from_secs(1));
        // SAFETY: signalling the test's own daemon child.
        unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
        writeln!(stdin).unwrap();
        let a: u32 = next("A").parse().unwrap();
        fs::write("/proc/sys/kernel/ns_last_pid", (a - 1).to_string()).unwrap();
        writeln!(stdin).unwrap();
        let b: u32 = next("B").parse().unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
        if b != a {
            // Another process on the machine took the pid first: again.
            writeln!(stdin).unwrap();
            next("ALIVE");
            let _ = session.wait();
            eprintln!("attempt {attempt}: pid {a} went to another process");
            continue;
        }
        // The daemon judges A's exec: refused, and A is gone.
        let events = d.wait_for(Duration::from_secs(20), |ev| {
            ev.iter().any(|e| {
                s(e, "kind") == "exec"
                    && u(e, "pid") == u64::from(a)
                    && e["decision"]["rule"] == "no-forbidden-arg"
            })
        });
        let decision = events
            .iter()
            .find(|e| {
                s(e, "kind") == "exec"
                    && u(e, "pid") == u64::from(a)
                    && e["decision"]["rule"] == "no-forbidden-arg"
            })
            .unwrap_or_else(|| panic!("A's exec was not judged: {}", d.log()))["decision"]
            .clone();
        sleep(Duration::from_millis(500));
        writeln!(stdin).unwrap();
        let alive = next("ALIVE");
        let _ = session.wait();
        assert_eq!(
            alive,
            "True",
            "B, a stranger with A's pid, was killed: {decision}\n{}",
            d.log()
        );
        assert_eq!(decision["reaction"], "gone", "{decision}");
        return;
    }
    panic!("could not hand B the pid of A in 5 attempts");
}

#[test]
fn thread_pools_do_not_grow_the_process_cache() {
    let d = Daemon::start(&[]);
    // 400 threads, one after another, each gone before the next starts.
    let out = d.exec_sh(&format!(
        "{} -c 'import threading\nfor _ in range(400):\n  t = threading.Thread(target=lambda: open(\"/dev/null\").close()); t.start(); t.join()'; sleep 1",
        python()
    ));
    assert!(out.status.success());
    sleep(Duration::from_secs(1));
    let status = d.status();
    let cached: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("processes cached: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process cache size in:\n{status}"));
    assert!(
        cached < 100,
        "{cached} processes cached after 400 threads:\n{status}"
    );
}

#[test]
fn a_client_of_a_stopped_daemon_says_so_instead_of_hanging() {
    let d = Daemon::start(&[]);
    // SAFETY: signalling the test's own daemon child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["60", AGENTGATE, "--socket"])
        .arg(&d.socket)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
    assert_ne!(
        out.status.code(),
        Some(124),
        "agentgate exec hung on a stopped daemon"
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer"), "{err}");
}

#[test]
fn one_user_cannot_hold_every_connection() {
    let d = Daemon::start(&[]);
    let user = NssUser::create("agentgate-nss-conn", 61235);
    // The user's idle connections, as many as the daemon serves one user.
    let held: Vec<Child> = (0..16)
        .map(|_| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={}", user.uid),
                    &format!("--regid={}", user.uid),
                    "--clear-groups",
                    &python(),
                    "-c",
                    "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntime.sleep(60)",
                ])
                .arg(&d.socket)
                .spawn()
                .unwrap()
        })
        .collect();
    sleep(Duration::from_secs(2));
    // One more from that user is told to retry...
    let out = user.agentgate(&d).arg("status").output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{out:?}"
    );
    // ...while root is served.
    d.status();
    let _ = UnixStream::connect(&d.socket).unwrap();
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn an_idle_connection_is_closed() {
    use std::io::Read;
    let d = Daemon::start(&[]);
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    // The daemon hangs up on a caller that sends nothing: the read ends.
    let n = idle.read(&mut [0u8; 16]).unwrap();
    assert_eq!(n, 0, "the daemon wrote to an idle connection");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(25)..Duration::from_secs(50)).contains(&waited),
        "closed after {waited:?}, not the 30 s idle timeout"
    );
}
