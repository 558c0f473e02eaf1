//! The kernel feature probe, and the mode it decides: what the kernel
//! *does*, not what it lists. A kernel may list `bpf` among its LSMs and
//! still refuse LSM programs (lockdown), or load and attach one that never
//! runs (`bpf` missing from `lsm=`). So lsm mode is chosen only after a
//! minimal LSM program (agent-ebpf/src/lsm_probe.rs) was loaded, attached,
//! and seen to run; the program types fallback mode needs are probed by
//! loading too (aya's `is_program_supported`). The answer, and why, is
//! logged at start and shown by `agentgate status`.
use std::{fs, io};

use agent_common::{MODE_FALLBACK, MODE_LSM};
use anyhow::bail;
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{Lsm, ProgramError, ProgramType},
    sys::{SyscallError, is_program_supported},
};

use crate::{loader, mount};

/// The probe's own object: one `lsm/file_open` program and a hit counter.
static LSM_PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGATE_LSM_PROBE_OBJ"));

const SECURITYFS: &str = "/sys/kernel/security";
const LSM_LIST: &str = "/sys/kernel/security/lsm";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Lsm,
    Fallback,
}

/// What became of the minimal LSM program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LsmProbe {
    /// Loaded, attached, and it ran on a `file_open`.
    Works,
    /// The kernel refused it at `step` (load or attach).
    Refused {
        step: &'static str,
        errno: Option<i32>,
        error: String,
    },
    /// Loaded and attached, but it never ran: the BPF LSM is not active,
    /// so its hooks are never called.
    NeverRan,
    /// It could not even be tried (no BTF, no `bpf_lsm_file_open` in it).
    Untried(String),
}

/// What the kernel can do, and so which mode the daemon runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub lsm: LsmProbe,
    /// The active LSM list, as the kernel reports it (informative only).
    pub lsm_list: String,
    /// The kernel's lockdown level (`integrity`, `confidentiality`), if any.
    pub lockdown: Option<String>,
    /// Fallback mode's program types: (name, loadable or why not).
    pub fallback_types: Vec<(&'static str, Result<(), String>)>,
    /// `sched_process_exit` reports `group_dead` (6.16+).
    pub exit_group_dead: bool,
}

pub fn probe() -> Probe {
    // The list and the lockdown level are only shown, never decided on,
    // but a reason that says "LSMs: " with nothing after misleads.
    let _ = mount::ensure("securityfs", SECURITYFS, || {
        std::path::Path::new(LSM_LIST).exists()
    });
    let lsm_list = fs::read_to_string(LSM_LIST)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let lockdown = fs::read_to_string(LOCKDOWN)
        .ok()
        .and_then(|s| parse_lockdown(&s));
    let fallback_types = [
        ("tracepoint", ProgramType::TracePoint),
        ("cgroup_sock_addr", ProgramType::CgroupSockAddr),
    ]
    .into_iter()
    .map(|(name, ty)| {
        let answer = match is_program_supported(ty) {
            Ok(true) => Ok(()),
            Ok(false) => Err("the kernel does not know this program type".to_owned()),
            Err(e) => Err(errno_text(program_errno(&e), &e.to_string())),
        };
        (name, answer)
    })
    .collect();
    Probe {
        lsm: probe_lsm(),
        lsm_list,
        lockdown,
        fallback_types,
        exit_group_dead: loader::tracepoint_has_field("sched", "sched_process_exit", "group_dead"),
    }
}

/// Loads, attaches and triggers the probe program; dropping `ebpf` at the
/// end detaches and unloads it.
fn probe_lsm() -> LsmProbe {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => return LsmProbe::Untried(format!("the kernel's BTF cannot be read: {e}")),
    };
    let mut ebpf = match Ebpf::load(LSM_PROBE_OBJECT) {
        Ok(ebpf) => ebpf,
        Err(e) => return LsmProbe::Untried(format!("the probe object does not load: {e}")),
    };
    let Some(Ok(prog)) = ebpf.program_mut("lsm_probe").map(<&mut Lsm>::try_from) else {
        return LsmProbe::Untried("the probe object lacks its program".to_owned());
    };
    if let Err(e) = prog.load("file_open", &btf) {
        return match e {
            ProgramError::Btf(e) => LsmProbe::Untried(format!(
                "the kernel's BTF has no bpf_lsm_file_open (no CONFIG_BPF_LSM): {e}"
            )),
            e => refused("load", &e),
        };
    }
    if let Err(e) = prog.attach() {
        return refused("attach", &e);
    }
    // Any open runs the hook, ours included.
    drop(fs::File::open("/proc/self/stat"));
    let hits = ebpf
        .map("LSM_PROBE_HITS")
        .and_then(|m| Array::<_, u64>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok());
    match hits {
        Some(n) if n > 0 => LsmProbe::Works,
        Some(_) => LsmProbe::NeverRan,
        None => LsmProbe::Untried("the probe's counter cannot be read".to_owned()),
    }
}

fn refused(step: &'static str, e: &ProgramError) -> LsmProbe {
    LsmProbe::Refused {
        step,
        errno: program_errno(e),
        error: e.to_string(),
    }
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::LoadError { io_error, .. }
        | ProgramError::SyscallError(SyscallError { io_error, .. })
        | ProgramError::IOError(io_error) => io_error.raw_os_error(),
        _ => None,
    }
}

/// `EPERM`, `EINVAL`…: the name a kernel developer searches for.
fn errno_text(errno: Option<i32>, fallback: &str) -> String {
    let name = match errno {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(524) => "ENOTSUPP",
        Some(n) => return format!("{} ({fallback})", io::Error::from_raw_os_error(n)),
        None => return fallback.to_owned(),
    };
    name.to_owned()
}

/// The bracketed level of `none [integrity] confidentiality`, unless none.
fn parse_lockdown(text: &str) -> Option<String> {
    let level = text.split('[').nth(1)?.split(']').next()?;
    (level != "none").then(|| level.to_owned())
}

impl Probe {
    pub fn lsm_works(&self) -> bool {
        self.lsm == LsmProbe::Works
    }

    fn bpf_listed(&self) -> bool {
        self.lsm_list.split(',').any(|l| l == "bpf")
    }

    /// One sentence: whether lsm mode can run here, and why.
    pub fn lsm_reason(&self) -> String {
        let list = &self.lsm_list;
        match &self.lsm {
            LsmProbe::Works => {
                "BPF LSM works: a probe program on file_open loaded, attached and ran".to_owned()
            }
            LsmProbe::Refused { step, errno, error } => {
                let what = errno_text(*errno, error);
                let hint = match (&self.lockdown, errno) {
                    (Some(level), Some(libc::EPERM)) => format!(" (lockdown={level}?)"),
                    _ => String::new(),
                };
                if self.bpf_listed() {
                    format!(
                        "bpf is in the LSM list ({list}) but the kernel refused an LSM program \
                         at {step}: {what}{hint}"
                    )
                } else {
                    format!(
                        "BPF LSM is not active (LSMs: {list}) and the kernel refused an LSM \
                         program at {step}: {what}{hint}"
                    )
                }
            }
            LsmProbe::NeverRan if self.bpf_listed() => {
                format!("bpf is in the LSM list ({list}) but an attached LSM program never ran")
            }
            LsmProbe::NeverRan => format!(
                "BPF LSM is not active: an LSM program loaded and attached but never ran \
                 (LSMs: {list}); add `bpf` to the kernel command line, e.g. lsm={list},bpf, \
                 and reboot"
            ),
            LsmProbe::Untried(why) => format!("BPF LSM cannot be used: {why}"),
        }
    }

    /// The probe's findings, one line per program type.
    pub fn findings(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "lsm: {}",
            match &self.lsm {
                LsmProbe::Works => "works".to_owned(),
                LsmProbe::Refused { step, errno, error } =>
                    format!("refused at {step}: {}", errno_text(*errno, error)),
                LsmProbe::NeverRan => "attached but never ran".to_owned(),
                LsmProbe::Untried(why) => format!("not tried: {why}"),
            }
        )];
        for (name, answer) in &self.fallback_types {
            lines.push(match answer {
                Ok(()) => format!("{name}: works"),
                Err(why) => format!("{name}: refused: {why}"),
            });
        }
        lines
    }
}

/// The mode the daemon runs in, and what it does and does not guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChoice {
    /// `MODE_LSM` or `MODE_FALLBACK`.
    pub kernel_mode: u32,
    pub name: &'static str,
    /// Why this mode, and what it guarantees.
    pub detail: String,
}

/// Decides the mode from the probe, and says so: no silent fail-open.
pub fn choose_mode(requested: Mode, audit_only: bool, probe: &Probe) -> anyhow::Result<ModeChoice> {
    // Both modes load tracepoints and cgroup programs.
    for (name, answer) in &probe.fallback_types {
        if let Err(why) = answer {
            bail!(
                "this kernel refuses {name} programs ({why}): agentgate needs them in every mode \
                 (run as root, on Linux ≥ 5.7 with cgroup v2)"
            );
        }
    }
    if requested == Mode::Lsm && !probe.lsm_works() {
        bail!(
            "--mode lsm: {} — or use --mode fallback",
            probe.lsm_reason()
        );
    }
    let lsm = requested == Mode::Lsm || (requested == Mode::Auto && probe.lsm_works());
    let (kernel_mode, guarantees) = if lsm {
        (
            MODE_LSM,
            "BPF LSM hooks refuse exec, open, connect and changes to files (rename, link, \
             unlink, truncate, chmod, …) with EPERM before they happen (kill: SIGKILL as well), \
             judging resolved paths (symlinks, `..`, /proc/self/root)",
        )
    } else {
        (
            MODE_FALLBACK,
            "syscall tracepoints SIGKILL a refused exec (before the new image runs), open \
             (judged by the opened file's own path as it returns: the open itself, O_CREAT or \
             O_TRUNC, has happened; the process never sees the descriptor) or change to a file \
             (rename, unlink, …: judged as it returns, and it has happened); cgroup \
             connect/sendmsg hooks refuse with EPERM",
        )
    };
    let why = match requested {
        Mode::Auto => probe.lsm_reason(),
        Mode::Lsm | Mode::Fallback => format!("as requested ({})", probe.lsm_reason()),
    };
    let blocking = if audit_only {
        "AUDIT-ONLY: verdicts are computed and logged, nothing is blocked"
    } else {
        guarantees
    };
    let detail = format!(
        "{why}; {blocking}; exit tracking: {}",
        if probe.exit_group_dead {
            "per thread group"
        } else {
            "leader exit (no group_dead on this kernel)"
        }
    );
    Ok(ModeChoice {
        kernel_mode,
        name: match (lsm, audit_only) {
            (true, true) => "lsm (audit-only)",
            (false, true) => "fallback (audit-only)",
            (true, false) => "lsm",
            (false, false) => "fallback",
        },
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(lsm: LsmProbe, list: &str, lockdown: Option<&str>) -> Probe {
        Probe {
            lsm,
            lsm_list: list.to_owned(),
            lockdown: lockdown.map(str::to_owned),
            fallback_types: vec![("tracepoint", Ok(())), ("cgroup_sock_addr", Ok(()))],
            exit_group_dead: true,
        }
    }

    fn eperm_at_load() -> LsmProbe {
        LsmProbe::Refused {
            step: "load",
            errno: Some(libc::EPERM),
            error: "the BPF_PROG_LOAD syscall returned Operation not permitted".to_owned(),
        }
    }

    #[test]
    fn listed_but_refused_runs_fallback_and_says_why() {
        let p = probe(
            eperm_at_load(),
            "lockdown,capability,landlock,bpf",
            Some("integrity"),
        );
        let m = choose_mode(Mode::Auto, false, &p).unwrap();
        assert_eq!((m.kernel_mode, m.name), (MODE_FALLBACK, "fallback"));
        assert!(
            m.detail.starts_with(
                "bpf is in the LSM list (lockdown,capability,landlock,bpf) but the kernel \
                 refused an LSM program at load: EPERM (lockdown=integrity?)"
            ),
            "{}",
            m.detail
        );
        let e = choose_mode(Mode::Lsm, false, &p).unwrap_err().to_string();
        assert!(e.contains("refused an LSM program at load: EPERM"), "{e}");
        assert!(
            !e.contains("lsm=lockdown"),
            "the lsm= hint is wrong here: {e}"
        );
    }

    #[test]
    fn not_listed_and_never_ran_gives_the_command_line_hint() {
        let p = probe(LsmProbe::NeverRan, "lockdown,capability,apparmor", None);
        let e = choose_mode(Mode::Lsm, false, &p).unwrap_err().to_string();
        assert!(e.contains("lsm=lockdown,capability,apparmor,bpf"), "{e}");
        assert_eq!(
            choose_mode(Mode::Auto, false, &p).unwrap().kernel_mode,
            MODE_FALLBACK
        );
    }

    #[test]
    fn works_chooses_lsm_and_fallback_stays_available() {
        let p = probe(LsmProbe::Works, "capability,bpf", None);
        assert_eq!(choose_mode(Mode::Auto, false, &p).unwrap().name, "lsm");
        assert_eq!(
            choose_mode(Mode::Auto, true, &p).unwrap().name,
            "lsm (audit-only)"
        );
        let m = choose_mode(Mode::Fallback, false, &p).unwrap();
        assert_eq!(m.kernel_mode, MODE_FALLBACK);
        assert!(
            m.detail.starts_with("as requested (BPF LSM works"),
            "{}",
            m.detail
        );
    }

    #[test]
    fn a_refused_fallback_type_stops_every_mode() {
        let mut p = probe(LsmProbe::Works, "bpf", None);
        p.fallback_types[1].1 = Err("EPERM".to_owned());
        let e = choose_mode(Mode::Auto, false, &p).unwrap_err().to_string();
        assert!(
            e.contains("refuses cgroup_sock_addr programs (EPERM)"),
            "{e}"
        );
    }

    #[test]
    fn lockdown_level_is_the_bracketed_one() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown("[none] integrity confidentiality\n"), None);
    }
}
