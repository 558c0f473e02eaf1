//! A real daemon per test, on its own control socket and pin dir: each
//! daemon loads its own programs and maps, so tests running side by side see
//! only their own sessions; its pins are removed (`agentgate unload`) when
//! the test's `Daemon` is dropped, so no test leaves programs attached.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const AGENTGATE: &str = env!("CARGO_BIN_EXE_agentgate");

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel tests load eBPF programs and must run as root (cargo xtask test does this)"
    );
}

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// On bpffs: `/sys/fs/bpf/agentgate-test-<temp dir name>`.
    pub pin_dir: PathBuf,
    args: Vec<String>,
}

/// A test's own policy file, under tests/host/policies.
pub fn test_policy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/host/policies")
        .join(name)
}

impl Daemon {
    /// A daemon with `extra` arguments; without `--policy`, with the
    /// everything-in-scope policy of the pipeline tests.
    pub fn start(extra: &[&str]) -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agentgate.sock");
        let name = dir.path().file_name().unwrap().to_string_lossy();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/agentgate-test-{}",
            name.trim_start_matches('.')
        ));
        let mut args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        if !extra.contains(&"--policy") {
            args.push("--policy".into());
            args.push(path_str(&test_policy("observe.yaml")).to_owned());
        }
        let child = Self::spawn(dir.path(), &socket, &pin_dir, &args);
        let mut d = Daemon {
            child,
            dir,
            socket,
            pin_dir,
            args,
        };
        d.wait_ready();
        d
    }

    fn spawn(dir: &Path, socket: &Path, pin_dir: &Path, args: &[String]) -> Child {
        // Appended to: a restarted daemon writes on after the first one.
        let append = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        Command::new(AGENTGATE)
            .arg("daemon")
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(["--log", "json"])
            .args(args)
            .stdout(append("events.jsonl"))
            .stderr(append("daemon.log"))
            .spawn()
            .expect("start agentgate daemon")
    }

    fn wait_ready(&mut self) {
        // Under TCG emulation (the VM suite) loading and verifying the
        // programs alone takes tens of seconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not open its socket: {}",
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and waits for the daemon to exit; its pins stay.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new daemon with the same arguments, state dir, socket and pin dir
    /// (the previous one stopped); returns once its socket is open.
    pub fn restart(&mut self) {
        let args = self.args.clone();
        self.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// The same with other arguments.
    pub fn restart_with(&mut self, args: &[&str]) {
        assert!(!self.alive(), "restart: the daemon still runs");
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.child = Self::spawn(self.dir.path(), &self.socket, &self.pin_dir, &self.args);
        self.wait_ready();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `agentgate ARGS…` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(AGENTGATE)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `sh -c script` inside a new session; returns its output.
    pub fn exec_sh(&self, script: &str) -> Output {
        let out = self.cli(&["exec", "--intent", "test", "--", "sh", "-c", script]);
        assert!(
            out.status.success(),
            "tagged run failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// Every event written so far, once the daemon has had `settle` to catch up.
    pub fn events(&self, settle: Duration) -> Vec<Value> {
        sleep(settle);
        let text = fs::read_to_string(self.dir.path().join("events.jsonl")).unwrap();
        // The daemon may be half-way through a line: read complete ones.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }

    /// Waits until `count` events satisfy `pred`, or `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events(Duration::from_millis(100));
            if pred(&ev) || Instant::now() > deadline {
                return ev;
            }
        }
    }

    pub fn status(&self) -> String {
        let out = self.cli(&["status"]);
        assert!(
            out.status.success(),
            "status ({}): {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let out = Command::new(AGENTGATE)
            .arg("--socket")
            .arg(&self.socket)
            .arg("unload")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "agentgate unload {}: {}",
                self.pin_dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A counter from `agentgate status` output: row `hook`, column `col`.
pub fn counter(status: &str, hook: &str, col: usize) -> u64 {
    status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(hook))
        .and_then(|l| l.split_whitespace().nth(col))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {hook} counters in:\n{status}"))
}

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

pub fn python() -> String {
    // The real interpreter, not a version manager's shim script: the flood
    // test counts this process's opens.
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A session's output says it read the key (`read=0`) and its connect
/// after that was refused (`errno=1`).
pub fn assert_connect_refused_after_key_read(out: &Output, log: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read=0"), "{text}");
    assert!(
        text.contains("errno=1"),
        "the connect after the key read went through: {text}\n{log}"
    );
}
