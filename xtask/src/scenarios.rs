//! Real agent workloads under agentgate: the shared corpus of benign coding
//! workloads (../shared/scenarios/benign.yaml) and our attacks
//! (tests/scenarios/attacks.yaml), each run plain and under `agentgate exec
//! --profile coding-agent` against a daemon with the shipped policies. Every
//! benign workload must stay intact and every valid attack must be stopped.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{target_dir, workspace_root};

/// The daemon for the run; stopped (SIGTERM) when dropped.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `attacks stopped S/N …, benign intact B/M, invalid K` → (S, N, B, M, K).
fn summary(out: &str) -> Option<(u32, u32, u32, u32, u32)> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("attacks stopped"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [s, n, b, m, k] => Some((s, n, b, m, k)),
        _ => None,
    }
}

pub fn run() -> anyhow::Result<()> {
    let corpus = workspace_root().join("../shared/scenarios");
    let harness = corpus.join("run_scenarios.py");
    if !harness.exists() {
        bail!(
            "{} is missing: the scenario corpus comes with ../shared beside the checkout",
            harness.display()
        );
    }
    crate::cargo(&["build", "-p", "agent-user", "--bin", "agentgate"])?;
    let agentgate = target_dir().join("debug/agentgate");
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("agentgate.sock");
    let log = dir.path().join("daemon.log");
    let daemon = Daemon(
        Command::new(&agentgate)
            .arg("daemon")
            .arg("--policy")
            .arg(workspace_root().join("policies"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--log", "json"])
            .stdout(std::fs::File::create(dir.path().join("events.jsonl"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the daemon")?,
    );
    wait_for(&socket, &log)?;
    let wrap = format!(
        "{} --socket {} exec --profile coding-agent --intent 'fix the failing test' --",
        agentgate.display(),
        socket.display()
    );
    println!("scenarios: benign corpus and attacks, plain and under: {wrap}");
    let out = Command::new("python3")
        .arg(&harness)
        .arg(corpus.join("benign.yaml"))
        .arg(workspace_root().join("tests/scenarios/attacks.yaml"))
        .args(["--netns", "--compare", "--wrap", &wrap])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .context("running the scenario harness")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    drop(daemon);
    let (stopped, attacks, intact, benign, invalid) = summary(&text)
        .context("the scenario harness printed no summary line (see its output above)")?;
    if intact != benign || stopped != attacks || benign == 0 || attacks == 0 {
        bail!(
            "scenarios: benign intact {intact}/{benign}, attacks stopped {stopped}/{attacks} \
             (invalid {invalid}): every benign workload must be intact and every attack stopped"
        );
    }
    if invalid > 0 {
        println!("scenarios: {invalid} entries did not work even without agentgate (see above)");
    }
    println!("scenarios: {} passed, 0 failed", benign + stopped);
    Ok(())
}

fn wait_for(socket: &Path, log: &PathBuf) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "the daemon did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn reads_the_harness_summary() {
        let out = "x\nattacks stopped 6/7 (effect absent under wrap, present without), \
                   benign intact 24/24, invalid 1\n";
        assert_eq!(summary(out), Some((6, 7, 24, 24, 1)));
        assert_eq!(summary("nothing"), None);
    }
}
