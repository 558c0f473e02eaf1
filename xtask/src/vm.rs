//! The kernel tests again, inside a Debian kernel booted with BPF LSM
//! (virtme-ng over qemu, TCG: nested KVM hangs here; see TOOLCHAIN.md §3).
//! One boot runs the whole suite; the VM's exit status is the suite's. A boot
//! that hangs is killed and tried again; a guest that goes silent mid-suite
//! is killed and the suite fails.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{status, workspace_root};

/// The newest Debian kernel image installed under /boot.
fn debian_kernel() -> anyhow::Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .context("no kernel in /boot: `apt-get install linux-image-amd64` (cargo xtask setup does)")
}

/// Builds the host test binary and returns its path.
fn test_binary() -> anyhow::Result<PathBuf> {
    let out = crate::cargo_command()
        .args([
            "test",
            "-p",
            "agent-user",
            "--test",
            "host",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the kernel tests")?;
    if !out.status.success() {
        bail!(
            "building the kernel tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"executable\":\"") && l.contains("\"name\":\"host\""))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            Some(PathBuf::from(&l[start..start + l[start..].find('"')?]))
        })
        .context("cargo did not report the kernel test binary")
}

/// Tests whose outcome is the same in both modes: the daemon's side
/// (receipts, reloads, referrals, audit-only, drift, ending a session, the
/// session file, unload's checks, labels kept across a restart or a
/// renumbering reload) or kernel decisions that `decide::` already runs on
/// both kernels (labels for separation of duties, tool layers, delegation
/// chains, expiry). The host runs them. Each daemon start costs the guest
/// about 30 s under TCG (the verifier alone 12 s), so a test earns its place
/// in the guest only by what lsm mode does differently.
const SAME_IN_BOTH_MODES: &[&str] = &[
    "enforce::audit_only_reports_verdicts_and_blocks_nothing",
    "enforce::a_referral_is_listed_granted_for_a_while_and_refused_again",
    "enforce::separation_of_duties_holds_within_a_session_only",
    "enforce::every_decision_is_a_receipt_that_verifies",
    "enforce::a_bad_reload_keeps_the_old_policy_and_a_good_one_takes_over",
    "enforce::a_tool_call_narrows_the_session_to_the_tools_scope",
    "enforce::a_session_opened_inside_a_session_can_only_narrow",
    "enforce::a_session_past_its_ttl_is_refused_everything",
    "enforce::a_session_that_drifts_past_its_threshold_is_ended",
    "noway::ending_a_session_kills_its_leftovers",
    "restart::a_corrupt_session_file_stops_the_start_with_its_path",
    "restart::unload_is_refused_inside_a_session_and_while_the_daemon_runs",
    "restart::a_label_earned_before_a_restart_holds_after_it",
    "restart::a_label_earned_before_an_upgrade_holds_after_it",
    "labels::",
];

/// The account the real-agent sessions run as in the guest (see
/// tests/host/agents.rs): made here, since the guest cannot add one.
const RIG_USER: &str = "agentgate-rig";

fn ensure_rig_user() -> anyhow::Result<()> {
    let known = Command::new("id")
        .arg(RIG_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !known {
        status(Command::new("useradd").args([
            "-M",
            "-d",
            &format!("/home/{RIG_USER}"),
            "-s",
            "/bin/bash",
            "-c",
            "agentgate agent-rig VM user",
            RIG_USER,
        ]))?;
    }
    Ok(())
}

/// The VM suite, ready to boot: the kernel, the rig user and the test
/// binary are in place (built before anything runs beside it).
pub struct Prepared {
    kernel: PathBuf,
    tests: PathBuf,
}

pub fn prepare() -> anyhow::Result<Prepared> {
    let kernel = debian_kernel()?;
    ensure_rig_user()?;
    let tests = test_binary()?;
    Ok(Prepared { kernel, tests })
}

pub fn run() -> anyhow::Result<()> {
    prepare()?.boot(None)
}

/// The guest's first line must come within this (a quiet boot takes ~20 s
/// under TCG, a loaded host's a few minutes).
const BOOT_LIMIT: Duration = Duration::from_secs(360);
/// Boots tried before the suite fails, should a guest hang in its boot,
/// idle, never printing (as one did with a cut command line, see `boot`).
const BOOTS: u32 = 2;
/// Once running, the suite prints at least a line per test (tests time out
/// well before this): silence this long is a hung guest.
const SILENCE_LIMIT: Duration = Duration::from_secs(20 * 60);
/// What the guest prints first (see the script).
const GUEST_UP: &str = "vm-test: guest ";

impl Prepared {
    /// Boots the guest and runs the suite in it; with `log`, its output goes
    /// there (the host suite may be printing meanwhile), without, to ours.
    pub fn boot(self, log: Option<&Path>) -> anyhow::Result<()> {
        let Prepared { kernel, tests } = self;
        println!(
            "vm-test: booting {} with lsm=…,bpf (TCG, ~20 s) to run {}",
            kernel.display(),
            tests.display()
        );
        // The guest reads its script from the target dir it is shown: vng
        // passes `--exec` on the kernel command line, which x86 cuts at 2048
        // bytes, and a cut script leaves the guest idle forever (this
        // suite's skip list once passed that length, and CI ran out of time).
        let script_path = crate::target_dir().join("vm-guest.sh");
        std::fs::write(&script_path, guest_script(&tests))
            .with_context(|| format!("{}", script_path.display()))?;
        let script = format!("sh {}", script_path.display());
        let own_log = std::env::temp_dir().join("agentgate-vm-test.log");
        let (log, echo) = match log {
            Some(l) => (l, false),
            None => (own_log.as_path(), true),
        };
        for boot in 1..=BOOTS {
            match run_guest(&kernel, &script, log, echo)? {
                Guest::Finished(st) if st.success() => return Ok(()),
                Guest::Finished(st) => {
                    bail!("the VM suite failed ({st}); its output: {}", log.display())
                }
                Guest::NeverUp if boot < BOOTS => println!(
                    "vm-test: the guest printed nothing in {} s: booting again ({} of {BOOTS})",
                    BOOT_LIMIT.as_secs(),
                    boot + 1
                ),
                Guest::NeverUp => bail!(
                    "the guest never came up in {BOOTS} boots of {} s each",
                    BOOT_LIMIT.as_secs()
                ),
                Guest::Silent => bail!(
                    "the guest printed nothing for {} min: hung (killed); its output: {}",
                    SILENCE_LIMIT.as_secs() / 60,
                    log.display()
                ),
            }
        }
        unreachable!("every boot returns or fails")
    }
}

enum Guest {
    Finished(std::process::ExitStatus),
    /// No first line within [`BOOT_LIMIT`]: killed.
    NeverUp,
    /// Up, then silent for [`SILENCE_LIMIT`]: killed.
    Silent,
}

/// One boot: vng (and its qemu, in their own process group) watched
/// through the log it writes.
fn run_guest(kernel: &Path, script: &str, log: &Path, echo: bool) -> anyhow::Result<Guest> {
    let file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    let mut vng = Command::new("vng");
    vng.stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .arg("--run")
        .arg(kernel)
        .args(["--disable-kvm", "--cpus", "2", "--memory", "2G"])
        // virtme-ng hides /var/cache and /tmp behind tmpfs; the binaries
        // live in the target dir, so show it to the guest read-only.
        .arg("--rodir")
        .arg(crate::target_dir())
        // The real-agent sessions (tests/host/agents.rs) add a throwaway
        // user with a home: writable in the guest, untouched on the host.
        .args(["--overlay-rwdir", "/etc", "--overlay-rwdir", "/home"])
        .args([
            "--append",
            "lsm=lockdown,capability,landlock,yama,apparmor,bpf",
        ])
        .args(["--exec", script])
        .current_dir(std::env::temp_dir());
    let mut child = vng.spawn().context("running vng (virtme-ng)")?;
    let started = Instant::now();
    let (mut shown, mut last_growth, mut up) = (0usize, Instant::now(), false);
    loop {
        let finished = child.try_wait()?;
        // Bytes, not text: the log may end in the middle of a character.
        let bytes = std::fs::read(log).unwrap_or_default();
        if bytes.len() > shown {
            if echo {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&bytes[shown..]);
                let _ = std::io::stdout().flush();
            }
            shown = bytes.len();
            last_growth = Instant::now();
            up = up
                || bytes
                    .windows(GUEST_UP.len())
                    .any(|w| w == GUEST_UP.as_bytes());
        }
        if let Some(st) = finished {
            return Ok(Guest::Finished(st));
        }
        let verdict = if !up && started.elapsed() > BOOT_LIMIT {
            Some(Guest::NeverUp)
        } else if up && last_growth.elapsed() > SILENCE_LIMIT {
            Some(Guest::Silent)
        } else {
            None
        };
        if let Some(v) = verdict {
            // SAFETY: kill(2) on the process group vng leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(v);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What the guest runs: a check that BPF LSM is on, then the suite.
fn guest_script(tests: &Path) -> String {
    // `trust::` (what the daemon takes from its callers), `bad_input::`
    // (what a user sees when they get it wrong), `pipeline::` (records to
    // events) and `grants::` (map entries in and out) are the same in both
    // modes: the host run covers them, and every test is slow under TCG.
    // The guest checks that BPF LSM is listed before it runs anything, and
    // the probe test that the daemon chose lsm mode by loading: a VM that
    // silently ran the suite in fallback mode would prove nothing.
    format!(
        "set -e; grep -qw bpf /sys/kernel/security/lsm || {{ echo 'vm-test: BPF LSM is not active in the guest'; exit 1; }}; \
         echo \"{GUEST_UP}$(uname -r), LSMs $(cat /sys/kernel/security/lsm)\"; \
         cd {root}; AGENTGATE_EXPECT_MODE=lsm AGENTGATE_RIG_USER={RIG_USER} AGENTGATE_AGENT_RUNS=wrapped \
         {tests} --test-threads=1 --skip trust:: --skip bad_input:: --skip pipeline:: --skip grants:: {same}",
        same = SAME_IN_BOTH_MODES
            .iter()
            .map(|t| format!("--skip {t}"))
            .collect::<Vec<_>>()
            .join(" "),
        root = workspace_root().display(),
        tests = tests.display()
    )
}
