//! A daemon for one xtask run (scenarios, bench): its own socket, state and
//! log in a temp dir, its own pin dir on bpffs; stopped (SIGTERM) and its
//! pins removed (`agentgate unload`) when dropped.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

pub struct Daemon {
    child: Child,
    agentgate: PathBuf,
    pub socket: PathBuf,
    pin_dir: PathBuf,
    /// Holds the socket, state, log and event lines.
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `agentgate daemon --policy POLICY` and waits for its socket.
    /// Event lines go to `events.jsonl` in the temp dir, or nowhere when
    /// they are not wanted (a benchmark should not time a log file).
    pub fn start(agentgate: &Path, policy: &Path, keep_events: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agentgate.sock");
        let log = dir.path().join("daemon.log");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/agentgate-xtask-{}",
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().trim_start_matches('.').to_owned())
                .unwrap_or_default()
        ));
        let child = Command::new(agentgate)
            .arg("daemon")
            .arg("--policy")
            .arg(policy)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--log", "json"])
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdout(if keep_events {
                std::fs::File::create(dir.path().join("events.jsonl"))?
            } else {
                std::fs::File::create("/dev/null")?
            })
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the daemon")?;
        let daemon = Daemon {
            child,
            agentgate: agentgate.to_owned(),
            socket,
            pin_dir,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new(&self.agentgate)
            .arg("--socket")
            .arg(&self.socket)
            .arg("unload")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output();
    }
}
