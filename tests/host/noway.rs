//! No way out of a session: a tagged process tries to act through
//! something outside its session — another process, a local server's
//! socket, the network stack, the mount table — and fails (red-team
//! findings #10–#13, #19, #21, #22 on fallback mode). Each attempt runs
//! beside an untagged twin that is left alone.
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    enforce::{Mode, World, status_of, stdout},
    support::*,
};

/// `name=N` lines a script printed, as numbers.
fn value(o: &std::process::Output, name: &str) -> i64 {
    i64::from(status_of(o, name))
}

/// An untagged local server: a unix stream socket and a unix datagram
/// socket in `dir`, writing what they receive to `dir/got`.
fn unix_server(dir: &Path) -> Child {
    let script = format!(
        "import os, socket, threading\n\
         d = {dir:?}\n\
         st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); st.bind(d + '/s.sock'); st.listen()\n\
         dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); dg.bind(d + '/d.sock')\n\
         got = open(d + '/got', 'ab', buffering=0)\n\
         def stream():\n\
         \x20   while True:\n\
         \x20       c, _ = st.accept(); got.write(c.recv(99) + b'\\n'); c.close()\n\
         threading.Thread(target=stream, daemon=True).start()\n\
         open(d + '/ready', 'w').close()\n\
         while True: got.write(dg.recv(99) + b'\\n')\n",
        dir = path_str(dir)
    );
    let child = Command::new(python())
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() {
        assert!(Instant::now() < deadline, "the unix server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A client's script: connect to the stream socket and send `tag-stream`,
/// then send `tag-dgram` to the datagram socket without connecting; each
/// prints `stream=`/`dgram=` 0, or 13 when refused.
fn unix_client(dir: &Path, tag: &str) -> String {
    let d = path_str(dir);
    let try_ = |name: &str, body: String| {
        format!(
            "{py} -c 'import socket, sys\ntry:\n  {body}\nexcept PermissionError: sys.exit(13)'; \
             echo {name}=$?; ",
            py = python()
        )
    };
    try_(
        "stream",
        format!(
            "s = socket.socket(socket.AF_UNIX); s.connect(\"{d}/s.sock\"); s.send(b\"{tag}-stream\")"
        ),
    ) + &try_(
        "dgram",
        format!(
            "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"{tag}-dgram\", \"{d}/d.sock\")"
        ),
    )
}

/// A local server outside the session (tmux, docker, dbus) is a door out:
/// a unix connect, or a datagram sent to a unix address, reaches outside
/// the session's connect scope. LSM mode refuses both (`socket_connect`,
/// `socket_sendmsg`). Fallback mode kills the caller at `sys_enter_connect`
/// / `sys_enter_sendto`, before the call returns: nothing is ever sent on a
/// connection, but a datagram leaves in the very call that is judged —
/// and this test asserts that it does.
#[test]
fn unix_connects_and_datagrams_outside_the_scope_are_refused() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let w = World::with_policy(&repo.join("policies"));
    let dir = tempfile::tempdir().unwrap();
    let mut server = unix_server(dir.path());
    let out = w.tagged_with(
        &["--profile", "coding-agent"],
        &unix_client(dir.path(), "inside"),
    );
    let twin = w.untagged(&unix_client(dir.path(), "outside"));
    std::thread::sleep(Duration::from_millis(500));
    let got = fs::read_to_string(dir.path().join("got")).unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(status_of(&out, "stream"), w.refused(13), "{out:?}");
    assert_eq!(status_of(&out, "dgram"), w.refused(13), "{out:?}");
    assert!(
        !got.contains("inside-stream"),
        "sent on the connection: {got}"
    );
    match w.mode {
        Mode::Lsm => assert!(!got.contains("inside-dgram"), "delivered: {got}"),
        Mode::Fallback => assert!(
            got.contains("inside-dgram"),
            "fallback mode kills after the datagram left; it did not arrive: {got}"
        ),
    }
    assert_eq!(status_of(&twin, "stream"), 0, "{twin:?}");
    assert_eq!(status_of(&twin, "dgram"), 0, "{twin:?}");
    assert!(
        got.contains("outside-stream") && got.contains("outside-dgram"),
        "{got}"
    );

    let sock = format!("unix:{}/s.sock", path_str(dir.path()));
    let events = w.d.wait_for(Duration::from_secs(10), |ev| {
        ev.iter()
            .any(|e| s(e, "kind") == "connect" && s(e, "target") == sock)
    });
    assert!(
        events
            .iter()
            .any(|e| s(e, "kind") == "connect" && s(e, "target") == sock),
        "the connect was not reported"
    );
}

/// The seccomp layer `agentgate exec` puts under the agent: in both modes,
/// calls that reach other processes or the network stack's configuration
/// fail with EPERM before they run, and the session's root has given up the
/// capabilities they would need (so `ip addr add` fails too). The untagged
/// twin makes the same calls unhindered.
#[test]
fn the_seccomp_layer_refuses_calls_that_reach_outside_the_session() {
    let d = Daemon::start(&[]);
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id();
    let probe = format!(
        r#"import ctypes, socket, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, f):
    r = f()
    print(name + "=" + str(ctypes.get_errno() if r < 0 else 0))
    return r
def sock(name, *a):
    try:
        socket.socket(*a).close()
        print(name + "=0")
    except OSError as e:
        print(name + "=" + str(e.errno))
if call("ptrace", lambda: libc.ptrace(16, {pid}, 0, 0)) == 0:
    os.waitpid({pid}, 0)
    libc.ptrace(17, {pid}, 0, 0)
call("vmread", lambda: libc.process_vm_readv({pid}, None, 0, None, 0, 0))
call("umount", lambda: libc.umount2(b"/agentgate-no-such-mount", 0))
sock("raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
sock("packet", socket.AF_PACKET, socket.SOCK_RAW, 0)
sock("audit", socket.AF_NETLINK, socket.SOCK_RAW, 9)
sock("route", socket.AF_NETLINK, socket.SOCK_RAW, 0)
st = dict(l.split(":", 1) for l in open("/proc/self/status"))
print("netadmin=" + str(int(st["CapBnd"], 16) >> 12 & 1))
print("nnp=" + st["NoNewPrivs"].strip())
print("seccomp=" + st["Seccomp"].strip())"#
    );
    let script = format!(
        "{py} -c '{probe}'; ip addr add 127.0.0.77/32 dev lo 2>/dev/null; echo ip=$?",
        py = python()
    );
    let out = d.exec_sh(&script);
    // Only the twin's own address add may leave one behind.
    let twin = Command::new("sh").args(["-c", &script]).output().unwrap();
    let lo = Command::new("ip")
        .args(["-br", "addr", "show", "lo"])
        .output()
        .unwrap();
    let _ = Command::new("ip")
        .args(["addr", "del", "127.0.0.77/32", "dev", "lo"])
        .output();
    let traced = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0");
    let _ = victim.kill();
    let _ = victim.wait();

    let eperm = i64::from(libc::EPERM);
    for name in ["ptrace", "vmread", "umount", "raw", "packet", "audit"] {
        assert_eq!(
            value(&out, name),
            eperm,
            "{name} in the session: {}",
            stdout(&out)
        );
        assert_ne!(
            value(&twin, name),
            eperm,
            "{name} untagged: {}",
            stdout(&twin)
        );
    }
    assert_eq!(
        value(&out, "route"),
        0,
        "getaddrinfo needs NETLINK_ROUTE: {out:?}"
    );
    assert_eq!(value(&out, "netadmin"), 0, "CAP_NET_ADMIN kept: {out:?}");
    assert_eq!(value(&out, "nnp"), 1, "{out:?}");
    assert_eq!(value(&out, "seccomp"), 2, "{out:?}");
    assert_ne!(value(&out, "ip"), 0, "ip addr add went through: {out:?}");
    assert_eq!(value(&twin, "ip"), 0, "the twin's ip addr add: {twin:?}");
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("127.0.0.77"),
        "the twin's address is missing: {lo:?}"
    );
    assert!(!traced, "the victim is still traced");
}

/// `agentgate sessions end` of a top-level session kills what is left of
/// it: a leftover released untagged could read anything.
#[test]
fn ending_a_session_kills_its_leftovers() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let late = |who: &str| {
        format!(
            "setsid sh -c 'sleep 5; echo late > {}/{who}' </dev/null >/dev/null 2>&1 & echo pid=$!",
            path_str(dir.path())
        )
    };
    let out = d.exec_sh(&late("tagged"));
    let leftover = status_of(&out, "pid");
    let twin = Command::new("sh")
        .args(["-c", &late("untagged")])
        .output()
        .unwrap();
    let list = d.cli(&["sessions", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    let id = listed
        .lines()
        .filter_map(|l| l.split('\t').next())
        .next_back()
        .unwrap_or_else(|| panic!("no session listed: {list:?}"))
        .to_owned();
    let end = d.cli(&["sessions", "end", &id]);
    assert!(end.status.success(), "{end:?}");
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !Path::new(&format!("/proc/{leftover}")).exists(),
        "the leftover {leftover} still runs"
    );
    assert!(!dir.path().join("tagged").exists(), "the leftover ran on");
    assert!(
        dir.path().join("untagged").exists(),
        "the twin was touched: {twin:?}"
    );
    // The setsid'd shell and its sleep.
    assert!(
        d.log().contains(" 2 leftover process(es) killed"),
        "{}",
        d.log()
    );
}

/// `/proc/PID/environ` (and `mem`, `fd/`, `cwd`) of a process outside the
/// session — here, in another session: the kernel's ptrace-access check
/// guards them. LSM mode refuses
/// it (`ptrace_access_check` for every target outside the caller's session,
/// reported as `ptrace:outside-session`); fallback mode has no hook there
/// and the read goes through — the README says so and this test asserts
/// it. A process's own environ stays readable in both modes.
#[test]
fn the_environment_of_a_process_outside_the_session() {
    let d = Daemon::start(&[]);
    // The victim is in a session of its own: the same user with the same
    // capabilities as the reader (a root session gives up CAP_SYS_PTRACE,
    // so the kernel's capability check alone would refuse it a process
    // with more), which leaves only agentgate's hook to refuse.
    let mut victim = Command::new(AGENTGATE)
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "--intent", "test", "--", "sleep", "60"])
        .env("AGENTGATE_TEST_SECRET", "env-secret-4711")
        .spawn()
        .unwrap();
    let exe = format!("/proc/{}/exe", victim.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_link(&exe).map_or(true, |p| !p.ends_with("sleep")) {
        assert!(
            Instant::now() < deadline,
            "the victim's session did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = format!(
        "tr '\\0' '\\n' < /proc/{}/environ | grep AGENTGATE_TEST_SECRET; \
         AGENTGATE_TEST_OWN=own-4712 sh -c 'tr \"\\0\" \"\\n\" < /proc/$$/environ' | grep OWN",
        victim.id()
    );
    let out = d.exec_sh(&script);
    let twin = Command::new("sh").args(["-c", &script]).output().unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    let lsm = d.status().starts_with("mode: lsm");
    let text = stdout(&out);
    assert!(
        text.contains("own-4712"),
        "the session's own environ: {out:?}"
    );
    assert!(stdout(&twin).contains("env-secret-4711"), "{twin:?}");
    if lsm {
        assert!(!text.contains("env-secret-4711"), "read: {out:?}");
        let events = d.wait_for(Duration::from_secs(10), |ev| {
            ev.iter()
                .any(|e| s(e, "target") == "ptrace:outside-session")
        });
        assert!(
            events
                .iter()
                .any(|e| s(e, "target") == "ptrace:outside-session"),
            "the refusal was not reported"
        );
    } else {
        assert!(
            text.contains("env-secret-4711"),
            "fallback mode was expected not to refuse the read: {out:?}"
        );
    }
}

/// A process made with `clone(CLONE_FILES)` shares the caller's descriptor
/// table: it would keep a descriptor the caller was killed for opening.
/// The guard kills the caller at `sys_enter_clone`, in both modes, and the
/// sharer is never made; the untagged twin clones.
#[test]
fn a_process_sharing_the_descriptor_table_is_not_made() {
    let d = Daemon::start(&[]);
    let script = format!(
        "{py} -c 'import ctypes, os\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
r = libc.syscall({nr}, 0x400 | 17, 0, 0, 0, 0)\n\
if r == 0: os._exit(0)\n\
os.waitpid(r, 0); print(\"cloned\")'; echo clone=$?",
        py = python(),
        nr = libc::SYS_clone
    );
    let out = d.exec_sh(&script);
    let twin = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(status_of(&out, "clone"), 137, "{out:?}");
    assert!(!stdout(&out).contains("cloned"), "{out:?}");
    assert_eq!(status_of(&twin, "clone"), 0, "{twin:?}");
    assert!(stdout(&twin).contains("cloned"), "{twin:?}");
    let events = d.wait_for(Duration::from_secs(10), |ev| {
        ev.iter().any(|e| s(e, "target") == "clone:shared-files")
    });
    assert!(
        events
            .iter()
            .any(|e| s(e, "target") == "clone:shared-files"),
        "the attempt was not reported"
    );
}
