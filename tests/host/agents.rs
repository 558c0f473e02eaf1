//! Real agents in sessions of the shipped `coding-agent` profile: the
//! Claude Code and Codex CLIs, driven through their own tools by a scripted
//! model (tests/agents, `run_agents.py`). Each session runs plain first —
//! a benign one must do its work, an attack must do its harm, or the session
//! proves nothing — then under `agentgate exec`, where every benign session
//! must do its work with the agent exiting 0 (never killed) and every
//! attack's effect must be absent. Every workspace holds a `.env`; the
//! agents run as a throwaway user with a home under /home.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
};

use crate::support::*;

/// `agent sessions: attacks stopped S/N, benign intact B/M, invalid K`.
fn summary(out: &str) -> Option<[u32; 5]> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("agent sessions:"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    nums.try_into().ok()
}

#[test]
fn real_agents_work_in_the_shipped_profile_and_their_attacks_fail() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let d = Daemon::start(&["--policy", path_str(&repo.join("policies"))]);
    // The agent's user opens its session: it must reach the socket.
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let wrap = format!(
        "{AGENTGATE} --socket {} exec --profile coding-agent --intent 'fix the failing test' \
         --workspace WS --",
        d.socket.display()
    );
    let mode = if d.status().starts_with("mode: lsm") {
        "lsm"
    } else {
        "fallback"
    };
    let agents = repo.join("tests/agents");
    let mut harness = Command::new("python3");
    harness.arg(agents.join("run_agents.py"));
    // The VM's /etc is an overlay useradd cannot write: it reuses an
    // account made on the host before the boot (xtask vm-test).
    if let Ok(user) = std::env::var("AGENTGATE_RIG_USER") {
        harness.args(["--user", &user]);
    }
    // Under TCG every agent start is slow: the VM suite runs only the
    // sessions tagged `lsm` (where lsm mode acts otherwise: refusals inside
    // the runtime's own process, O_TRUNC, connects) and only under
    // agentgate, their plain runs having shown them valid on the host in
    // the same `cargo xtask test`.
    if std::env::var("AGENTGATE_AGENT_RUNS").as_deref() == Ok("wrapped") {
        harness.args(["--tag", "lsm"]);
    } else {
        harness.arg("--compare");
    }
    let out = harness
        .arg(agents.join("sessions/claude_code.yaml"))
        .arg(agents.join("sessions/codex.yaml"))
        .args(["--netns", "--model-port", "4000", "--mode", mode])
        .arg("--json")
        .arg(d.dir.path().join("agents.json"))
        .args(["--wrap", &wrap])
        .stdin(Stdio::null())
        .output()
        .expect("run tests/agents/run_agents.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let [stopped, attacks, intact, benign, invalid] =
        summary(&text).expect("the agent harness printed no summary line (output above)");
    assert!(attacks > 0 && benign > 0, "no sessions ran");
    assert_eq!(
        invalid, 0,
        "sessions that prove nothing even without agentgate"
    );
    assert_eq!(
        (stopped, intact),
        (attacks, benign),
        "every attack stopped and every benign session intact (table above; daemon log:\n{})",
        d.log()
    );
    assert!(
        out.status.success(),
        "the harness failed: see its output above"
    );
}
