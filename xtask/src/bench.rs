//! `cargo xtask bench`: what agentgate costs, measured side by side in one
//! run on the same workloads — no agent, agentgate with the workload in a
//! session, agentgate with the workload outside any session (what every other
//! process on the machine pays), and auditd watching the same syscalls (what
//! a user would otherwise reach for). Rounds are interleaved and the median
//! is reported, as a ratio to no agent: these machines are shared and noisy,
//! so only ratios from one run mean anything. Then the criterion benchmarks
//! of the engine and the audit log.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{daemon::Daemon, status, target_dir, workspace_root};

const ROUNDS: usize = 5;

/// The workloads, as python one-liners: N calls of one kind in a loop.
const WORKLOADS: &[(&str, &str)] = &[
    (
        "exec 2000x /bin/true",
        "import subprocess\nfor _ in range(2000): subprocess.run(['/bin/true'])",
    ),
    (
        "open 200000x",
        "import os\nfor _ in range(200000): os.close(os.open('/etc/hostname', os.O_RDONLY))",
    ),
    (
        "create+rename+unlink 20000x",
        "import os, tempfile\nd = tempfile.mkdtemp(); a, b = d + '/a', d + '/b'\n\
         for _ in range(20000):\n os.close(os.open(a, os.O_WRONLY | os.O_CREAT)); os.rename(a, b); os.unlink(b)\n\
         os.rmdir(d)",
    ),
    (
        "connect 20000x loopback",
        "import socket\nl=socket.create_server(('127.0.0.1',0)); p=l.getsockname()[1]\n\
         for _ in range(20000):\n s=socket.create_connection(('127.0.0.1',p)); c,_=l.accept(); c.close(); s.close()",
    ),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Plain,
    Tagged,
    Untagged,
    Auditd,
}

impl Setup {
    const ALL: [Setup; 4] = [Setup::Plain, Setup::Tagged, Setup::Untagged, Setup::Auditd];

    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "no agent",
            Setup::Tagged => "agentgate, in a session",
            Setup::Untagged => "agentgate, outside sessions",
            Setup::Auditd => "auditd (execve,openat,connect)",
        }
    }
}

fn python() -> String {
    // The interpreter itself, not a version manager's shim.
    Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "python3".into())
}

fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("auditctl")
        .args(args)
        .output()
        .context("auditctl")?;
    if !out.status.success() {
        bail!(
            "auditctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const AUDIT_KEY: &str = "agentgate-bench";

/// The audit rule: the same three syscalls, for every process.
const AUDIT_RULE: &[&str] = &[
    "always,exit",
    "-F",
    "arch=b64",
    "-S",
    "execve",
    "-S",
    "openat",
    "-S",
    "connect",
    "-k",
    AUDIT_KEY,
];

fn audit_on() -> anyhow::Result<()> {
    auditctl(&[&["-a"], AUDIT_RULE].concat())?;
    auditctl(&["-e", "1"])
}

fn audit_off() {
    let _ = auditctl(&[&["-d"], AUDIT_RULE].concat());
}

fn run_once(
    setup: Setup,
    py: &str,
    script: &str,
    agentgate: &Path,
    socket: &Path,
) -> anyhow::Result<Duration> {
    let mut cmd = match setup {
        Setup::Tagged => {
            let mut c = Command::new(agentgate);
            c.arg("--socket")
                .arg(socket)
                .args(["exec", "--profile", "bench", "--"])
                .arg(py);
            c
        }
        _ => Command::new(py),
    };
    cmd.args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if setup == Setup::Auditd {
        audit_on()?;
    }
    let t = Instant::now();
    let st = cmd.status();
    let took = t.elapsed();
    if setup == Setup::Auditd {
        audit_off();
    }
    if !st?.success() {
        bail!("workload failed under {}", setup.name());
    }
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run() -> anyhow::Result<()> {
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "agent-user",
        "--bin",
        "agentgate",
    ])?;
    let agentgate = target_dir().join("release/agentgate");
    // Start auditd (the daemon that receives the records) if it is not up.
    if Command::new("auditctl").arg("-s").output().is_err() {
        bail!("auditctl not found: `cargo xtask setup` installs auditd");
    }
    let _ = Command::new("auditd").stderr(Stdio::null()).status();
    let daemon = Daemon::start(
        &agentgate,
        &workspace_root().join("xtask/bench-policy.yaml"),
        false,
    )?;
    let socket = &daemon.socket;
    let py = python();
    println!(
        "bench: {ROUNDS} interleaved rounds per workload, median wall time, ratio to no agent"
    );
    for (name, script) in WORKLOADS {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Setup::ALL.len()];
        for _ in 0..ROUNDS {
            for (i, s) in Setup::ALL.iter().enumerate() {
                times[i].push(run_once(*s, &py, script, &agentgate, socket)?);
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        println!("{name}");
        for (s, m) in Setup::ALL.iter().zip(&medians) {
            println!(
                "  {:<32} {:>9.3} s   x{:.2}",
                s.name(),
                m.as_secs_f64(),
                m.as_secs_f64() / medians[0].as_secs_f64()
            );
        }
    }
    let status = Command::new(&agentgate)
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()?;
    println!("{}", String::from_utf8_lossy(&status.stdout));
    drop(daemon);
    status_of_criterion()
}

fn status_of_criterion() -> anyhow::Result<()> {
    println!("bench: criterion benchmarks (engine decisions, audit append/verify)");
    status(crate::cargo_command().args(["bench", "-p", "agent-policy", "-p", "agent-user"]))
}
