//! Real agent workloads under agentgate: the shared corpus of benign coding
//! workloads (../shared/scenarios/benign.yaml) and our attacks
//! (tests/scenarios/attacks.yaml), each run plain and under `agentgate exec
//! --profile coding-agent` against a daemon with the shipped policies. Every
//! benign workload must stay intact and every valid attack must be stopped.
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{daemon::Daemon, target_dir, workspace_root};

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
    // The binary `cargo test` builds for the kernel tests: a plain `cargo
    // build` resolves other dependency features (no dev-dependencies) and
    // would compile RocksDB a second time.
    crate::cargo(&["test", "-p", "agent-user", "--test", "host", "--no-run"])?;
    let agentgate = target_dir().join("debug/agentgate");
    let daemon = Daemon::start(&agentgate, &workspace_root().join("policies"), true)?;
    let wrap = format!(
        "{} --socket {} exec --profile coding-agent --intent 'fix the failing test' --",
        agentgate.display(),
        daemon.socket.display()
    );
    println!("scenarios: benign corpus and attacks, plain and under: {wrap}");
    let out = Command::new("python3")
        .arg(&harness)
        .arg(corpus.join("benign.yaml"))
        .arg(workspace_root().join("tests/scenarios/attacks.yaml"))
        .args(["--netns", "--compare", "--wrap", &wrap])
        // Attacks that call agentgate themselves (delegation) find it and
        // this daemon.
        .env("AGENTGATE_SOCKET", &daemon.socket)
        .env("PATH", {
            let mut paths = vec![target_dir().join("debug")];
            paths.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            std::env::join_paths(paths).context("PATH")?
        })
        .current_dir(daemon.dir.path())
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
