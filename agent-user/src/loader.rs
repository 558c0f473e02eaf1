//! Puts the kernel programs in place: mounts tracefs if needed, reads the
//! record layouts this kernel uses, probes for BPF LSM, loads and attaches.
use std::{fs, path::Path};

use agent_common::TracepointLayout;
use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use thiserror::Error;

/// The kernel object built by build.rs from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGATE_EBPF_OBJ"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// Tracepoint programs: (program name in the object, category, event).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_enter_openat", "syscalls", "sys_enter_openat"),
    ("sys_enter_openat2", "syscalls", "sys_enter_openat2"),
    ("sys_enter_open", "syscalls", "sys_enter_open"),
    ("sys_enter_creat", "syscalls", "sys_enter_creat"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
];

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (run as root, or `mount -t tracefs nodev {TRACEFS}`)"
    )]
    Tracefs(std::io::Error),
    #[error("cannot read the format of tracepoint {event}: {source}")]
    Format {
        event: String,
        source: std::io::Error,
    },
    #[error("tracepoint {event} has no field `{field}` on this kernel")]
    Field { event: String, field: &'static str },
    #[error(
        "loading the kernel programs failed: {0} (agentgate needs root or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the kernel object lacks program {0}")]
    Missing(&'static str),
}

/// What the kernel can do, and so which mode the daemon runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// BPF LSM is in the kernel's active LSM list.
    pub bpf_lsm: bool,
    /// The active LSM list, as the kernel reports it.
    pub lsm_list: String,
    /// `sched_process_exit` reports `group_dead` (6.16+).
    pub exit_group_dead: bool,
}

pub fn probe() -> Probe {
    let lsm_list = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let bpf_lsm = lsm_list.trim().split(',').any(|l| l == "bpf");
    let exit_group_dead = field_offset("sched", "sched_process_exit", "group_dead").is_ok();
    Probe {
        bpf_lsm,
        lsm_list: lsm_list.trim().to_owned(),
        exit_group_dead,
    }
}

fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .map_err(LoadError::Tracefs)?;
    if !status.success() || !Path::new(TRACEFS).join("events").is_dir() {
        return Err(LoadError::Tracefs(std::io::Error::other(format!(
            "mount exited with {status}"
        ))));
    }
    Ok(())
}

/// Offset of `field` in the record of tracepoint `group/event`, from tracefs.
fn field_offset(group: &str, event: &str, field: &'static str) -> Result<u32, LoadError> {
    let name = format!("{group}/{event}");
    let path = Path::new(TRACEFS).join("events").join(&name).join("format");
    let text = fs::read_to_string(&path).map_err(|source| LoadError::Format {
        event: name.clone(),
        source,
    })?;
    parse_field_offset(&text, field).ok_or(LoadError::Field { event: name, field })
}

/// Finds `offset:N;` on the line declaring `field` (`field:<type> <field>;`).
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.rsplit([' ', '*']).next()?;
        let ident = ident.split('[').next()?;
        if ident != field {
            return None;
        }
        let off = rest.trim().strip_prefix("offset:")?.split(';').next()?;
        off.trim().parse().ok()
    })
}

pub fn tracepoint_layout() -> Result<TracepointLayout, LoadError> {
    Ok(TracepointLayout {
        fork_child_pid: field_offset("sched", "sched_process_fork", "child_pid")?,
        exit_group_dead: field_offset("sched", "sched_process_exit", "group_dead").unwrap_or(0),
        _pad: [0; 2],
    })
}

pub struct Options {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub layout: TracepointLayout,
    /// `category:event` of every attached program.
    pub attached: Vec<String>,
}

pub fn load(opts: &Options) -> Result<Loaded, LoadError> {
    ensure_tracefs()?;
    let layout = tracepoint_layout()?;
    let mut ebpf = EbpfLoader::new()
        .override_global("LAYOUT", &layout, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .load(EBPF_OBJECT)?;
    let mut attached = Vec::new();
    for &(name, category, event) in TRACEPOINTS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(|source| LoadError::Program { name, source })?;
        prog.load()
            .map_err(|source| LoadError::Program { name, source })?;
        prog.attach(category, event)
            .map_err(|source| LoadError::Program { name, source })?;
        attached.push(format!("tracepoint/{category}:{event}"));
    }
    Ok(Loaded {
        ebpf,
        layout,
        attached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";
    const FORK_6_1: &str = "format:
\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn reads_offsets_of_both_kernel_layouts() {
        assert_eq!(parse_field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(FORK_6_1, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(FORK_6_1, "parent_comm"), Some(8));
        assert_eq!(parse_field_offset(FORK_6_18, "parent_comm"), Some(8));
        assert_eq!(parse_field_offset(FORK_6_18, "group_dead"), None);
    }
}
