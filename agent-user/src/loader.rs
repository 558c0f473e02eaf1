//! Puts the kernel programs in place: mounts tracefs if needed, reads the
//! record layouts and struct offsets this kernel uses, loads and attaches
//! what the mode (decided by `probe`) needs, and pins maps and links so that
//! they outlive the daemon (see `pins`).
use std::{
    fs,
    path::{Path, PathBuf},
};

use agent_common::KernelLayout;
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Lsm, Program, ProgramError, TracePoint,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use thiserror::Error;

use crate::{
    btf, mount,
    pins::{self, Generation, PinError},
};

/// The kernel object built by build.rs from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTGATE_EBPF_OBJ"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// Tracepoint programs: (program name in the object, category, event).
/// A program named more than once is attached to each event.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    // Confinement (guard.rs): no new namespaces, mounts, chroot or setns.
    ("sys_enter_unshare", "syscalls", "sys_enter_unshare"),
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("sys_enter_setns", "syscalls", "sys_enter_setns"),
    ("sys_enter_mount", "syscalls", "sys_enter_mount"),
    ("sys_enter_move_mount", "syscalls", "sys_enter_move_mount"),
    ("sys_enter_chroot", "syscalls", "sys_enter_chroot"),
    ("sys_enter_pivot_root", "syscalls", "sys_enter_pivot_root"),
    ("sys_enter_open_tree", "syscalls", "sys_enter_open_tree"),
    ("sys_enter_fsopen", "syscalls", "sys_enter_fsopen"),
];

/// Tracepoint programs only fallback mode needs (LSM mode judges the same
/// calls in its hooks, and these would only return): not loaded in LSM
/// mode, which spares their verification.
const FALLBACK_TRACEPOINTS: &[(&str, &str, &str)] = &[
    // Datagrams to a unix address (no connect; no cgroup hook sees them).
    ("sys_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("sys_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    // Opens: the flags at entry, the opened file judged at exit.
    ("sys_enter_openat", "syscalls", "sys_enter_openat"),
    ("sys_enter_openat2", "syscalls", "sys_enter_openat2"),
    ("sys_enter_open", "syscalls", "sys_enter_open"),
    ("sys_enter_creat", "syscalls", "sys_enter_creat"),
    ("sys_exit_opens", "syscalls", "sys_exit_openat"),
    ("sys_exit_opens", "syscalls", "sys_exit_openat2"),
    ("sys_exit_opens", "syscalls", "sys_exit_open"),
    ("sys_exit_opens", "syscalls", "sys_exit_creat"),
    // Other changes to files (change.rs): the arguments at entry, the
    // call judged at exit.
    ("sys_enter_renameat2", "syscalls", "sys_enter_renameat2"),
    ("sys_exit_renames", "syscalls", "sys_exit_renameat2"),
    ("sys_enter_renameat", "syscalls", "sys_enter_renameat"),
    ("sys_exit_renames", "syscalls", "sys_exit_renameat"),
    ("sys_enter_rename", "syscalls", "sys_enter_rename"),
    ("sys_exit_renames", "syscalls", "sys_exit_rename"),
    ("sys_enter_linkat", "syscalls", "sys_enter_linkat"),
    ("sys_exit_links", "syscalls", "sys_exit_linkat"),
    ("sys_enter_link", "syscalls", "sys_enter_link"),
    ("sys_exit_links", "syscalls", "sys_exit_link"),
    ("sys_enter_symlinkat", "syscalls", "sys_enter_symlinkat"),
    ("sys_exit_symlinks", "syscalls", "sys_exit_symlinkat"),
    ("sys_enter_symlink", "syscalls", "sys_enter_symlink"),
    ("sys_exit_symlinks", "syscalls", "sys_exit_symlink"),
    ("sys_enter_unlinkat", "syscalls", "sys_enter_unlinkat"),
    ("sys_exit_unlinks", "syscalls", "sys_exit_unlinkat"),
    ("sys_enter_unlink", "syscalls", "sys_enter_unlink"),
    ("sys_exit_unlinks", "syscalls", "sys_exit_unlink"),
    ("sys_enter_rmdir", "syscalls", "sys_enter_rmdir"),
    ("sys_exit_unlinks", "syscalls", "sys_exit_rmdir"),
    ("sys_enter_mkdirat", "syscalls", "sys_enter_mkdirat"),
    ("sys_exit_mkdirs", "syscalls", "sys_exit_mkdirat"),
    ("sys_enter_mkdir", "syscalls", "sys_enter_mkdir"),
    ("sys_exit_mkdirs", "syscalls", "sys_exit_mkdir"),
    ("sys_enter_mknodat", "syscalls", "sys_enter_mknodat"),
    ("sys_exit_mknods", "syscalls", "sys_exit_mknodat"),
    ("sys_enter_mknod", "syscalls", "sys_enter_mknod"),
    ("sys_exit_mknods", "syscalls", "sys_exit_mknod"),
    ("sys_enter_truncate", "syscalls", "sys_enter_truncate"),
    ("sys_exit_truncate", "syscalls", "sys_exit_truncate"),
    ("sys_enter_fchmodat", "syscalls", "sys_enter_fchmodat"),
    ("sys_exit_chmods", "syscalls", "sys_exit_fchmodat"),
    ("sys_enter_chmod", "syscalls", "sys_enter_chmod"),
    ("sys_exit_chmods", "syscalls", "sys_exit_chmod"),
    ("sys_enter_fchmod", "syscalls", "sys_enter_fchmod"),
    ("sys_exit_fchmod", "syscalls", "sys_exit_fchmod"),
    ("sys_enter_fchownat", "syscalls", "sys_enter_fchownat"),
    ("sys_exit_chowns", "syscalls", "sys_exit_fchownat"),
    ("sys_enter_chown", "syscalls", "sys_enter_chown"),
    ("sys_exit_chowns", "syscalls", "sys_exit_chown"),
    ("sys_enter_lchown", "syscalls", "sys_enter_lchown"),
    ("sys_exit_chowns", "syscalls", "sys_exit_lchown"),
    ("sys_enter_fchown", "syscalls", "sys_enter_fchown"),
    ("sys_exit_fchown", "syscalls", "sys_exit_fchown"),
    // Ways around the file hooks (guard.rs): LSM mode judges their opens.
    (
        "sys_enter_io_uring_setup",
        "syscalls",
        "sys_enter_io_uring_setup",
    ),
    (
        "sys_enter_open_by_handle_at",
        "syscalls",
        "sys_enter_open_by_handle_at",
    ),
];

/// Fallback tracepoints of syscalls that older kernels lack (fchmodat2:
/// 6.6): attached where tracefs has them, and listed in `attached` when
/// they are.
const TRACEPOINTS_IF_PRESENT: &[(&str, &str, &str)] = &[
    ("sys_enter_fchmodat2", "syscalls", "sys_enter_fchmodat2"),
    ("sys_exit_chmods", "syscalls", "sys_exit_fchmodat2"),
];

/// cgroup v2 socket-address programs, attached to the root cgroup.
const SOCK_ADDR: &[&str] = &["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// BPF LSM programs: (program name, hook).
const LSM_HOOKS: &[(&str, &str)] = &[
    ("bprm_check_security", "bprm_check_security"),
    ("file_open", "file_open"),
    ("socket_connect", "socket_connect"),
    ("socket_sendmsg", "socket_sendmsg"),
    // Self-protection: the guard cannot be signalled, traced or reprogrammed
    // from inside a session.
    ("task_kill", "task_kill"),
    ("ptrace_access_check", "ptrace_access_check"),
    ("bpf", "bpf"),
    // Confinement: no new user namespaces, no mounts; no unpinning.
    ("userns_create", "userns_create"),
    ("inode_unlink", "inode_unlink"),
    ("sb_mount", "sb_mount"),
    ("move_mount", "move_mount"),
    // Changes to files other than opens (change.rs).
    ("path_rename", "path_rename"),
    ("path_link", "path_link"),
    ("path_symlink", "path_symlink"),
    ("path_unlink", "path_unlink"),
    ("path_rmdir", "path_rmdir"),
    ("path_mkdir", "path_mkdir"),
    ("path_mknod", "path_mknod"),
    ("path_truncate", "path_truncate"),
    ("path_chmod", "path_chmod"),
    ("path_chown", "path_chown"),
];

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/mounts): connect rules need one")]
    NoCgroup2,
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
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
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("program {name}: its link cannot be pinned: {source}")]
    Link {
        name: &'static str,
        source: LinkError,
    },
    #[error("program {name}: pinning its link at {path}: {source}")]
    PinLink {
        name: &'static str,
        path: PathBuf,
        source: aya::pin::PinError,
    },
}

/// The record of tracepoint `group/event` has `field` on this kernel.
pub fn tracepoint_has_field(group: &str, event: &str, field: &'static str) -> bool {
    field_offset(group, event, field).is_ok()
}

/// Mounts tracefs unless it is there: the probe and the loader read
/// tracepoint formats from it.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    mount::ensure("tracefs", TRACEFS, || {
        Path::new(TRACEFS).join("events").is_dir()
    })
    .map_err(LoadError::Tracefs)
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

pub fn kernel_layout() -> Result<KernelLayout, LoadError> {
    let btf = btf::Btf::from_kernel().map_err(|e| LoadError::Btf(e.to_string()))?;
    let member = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .map_err(|e| LoadError::Btf(e.to_string()))
    };
    Ok(KernelLayout {
        fork_child_pid: field_offset("sched", "sched_process_fork", "child_pid")?,
        exit_group_dead: field_offset("sched", "sched_process_exit", "group_dead").unwrap_or(0),
        exec_filename: field_offset("sched", "sched_process_exec", "filename")?,
        task_mm: member("task_struct", "mm")?,
        mm_arg_start: member("mm_struct", "arg_start")?,
        mm_arg_end: member("mm_struct", "arg_end")?,
        file_f_path: member("file", "f_path")?,
        file_f_mode: member("file", "f_mode")?,
        bprm_file: member("linux_binprm", "file")?,
        task_tgid: member("task_struct", "tgid")?,
        inode_i_sb: member("inode", "i_sb")?,
        sb_s_magic: member("super_block", "s_magic")?,
        path_mnt: member("path", "mnt")?,
        path_dentry: member("path", "dentry")?,
        dentry_d_parent: member("dentry", "d_parent")?,
        dentry_d_name: member("dentry", "d_name")?,
        mount_mnt: member("mount", "mnt")?,
        mount_mnt_parent: member("mount", "mnt_parent")?,
        mount_mnt_mountpoint: member("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: member("vfsmount", "mnt_root")?,
        task_fs: member("task_struct", "fs")?,
        fs_root: member("fs_struct", "root")?,
        fs_pwd: member("fs_struct", "pwd")?,
        task_files: member("task_struct", "files")?,
        files_fdt: member("files_struct", "fdt")?,
        fdt_max_fds: member("fdtable", "max_fds")?,
        fdt_fd: member("fdtable", "fd")?,
        mm_exe_file: member("mm_struct", "exe_file")?,
        dentry_d_inode: member("dentry", "d_inode")?,
        inode_i_ino: member("inode", "i_ino")?,
        sb_s_dev: member("super_block", "s_dev")?,
    })
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
fn cgroup2_root() -> Result<String, LoadError> {
    fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
            })
        })
        .ok_or(LoadError::NoCgroup2)
}

pub struct Options {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Attach the BPF LSM hooks (the probe saw BPF LSM work and the mode is lsm).
    pub lsm: bool,
    /// Where maps and links are pinned, on bpffs.
    pub pin_dir: PathBuf,
}

/// The loaded and attached programs. Maps and links are pinned: dropping
/// this detaches nothing.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub layout: KernelLayout,
    /// `type/where` of every attached program.
    pub attached: Vec<String>,
    /// Where this object's maps and links are pinned.
    pub generation: Generation,
    /// The pins of this very object were there already: its maps (tags,
    /// sessions' rules and labels, counters, unread events) were adopted and
    /// so were its attached programs.
    pub adopted: bool,
    /// Pins of other objects (an earlier version, other load options),
    /// still attached: the daemon carries their sessions over, then removes
    /// them.
    pub previous: Vec<Generation>,
}

/// The program `name` of the object, as the type its section says it is.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(failed(name))
}

fn failed(name: &'static str) -> impl Fn(ProgramError) -> LoadError {
    move |source| LoadError::Program { name, source }
}

/// Pins a freshly attached link, so that it stays attached without us.
fn pin_link(
    name: &'static str,
    link: Result<FdLink, LinkError>,
    path: &Path,
) -> Result<(), LoadError> {
    link.map_err(|source| LoadError::Link { name, source })?
        .pin(path)
        .map_err(|source| LoadError::PinLink {
            name,
            path: path.to_owned(),
            source,
        })?;
    Ok(())
}

/// The program's link is pinned in this generation already (and so still
/// attached): it is adopted as it is.
fn adopt_link(generation: &Generation, name: &str) -> bool {
    PinnedLink::from_pin(generation.link(name)).is_ok()
}

pub fn load(opts: &Options) -> Result<Loaded, LoadError> {
    ensure_tracefs()?;
    let layout = kernel_layout()?;
    pins::ensure_dir(&opts.pin_dir)?;
    let layout_text = format!("{layout:?}");
    let generation = Generation::new(
        &opts.pin_dir,
        &pins::fingerprint(&[
            EBPF_OBJECT,
            layout_text.as_bytes(),
            &opts.ring_bytes.to_le_bytes(),
            &[opts.lsm as u8],
        ]),
    );
    let previous: Vec<Generation> = pins::generations(&opts.pin_dir)
        .into_iter()
        .filter(|g| *g != generation)
        .collect();
    let adopted = generation.links().is_dir();
    for dir in [generation.maps(), generation.links()] {
        fs::create_dir_all(&dir).map_err(|source| PinError::Io { path: dir, source })?;
    }
    let map_paths: Vec<(&str, PathBuf)> = agent_common::map::PINNED
        .iter()
        .map(|&m| (m, generation.map(m)))
        .collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("LAYOUT", &layout, true)
        .map_max_entries(agent_common::map::EVENTS, opts.ring_bytes);
    // An existing pin is opened and used as it is (aya does not create it
    // anew): that is how the maps are adopted.
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let mut attached = Vec::new();
    let fallback: &[_] = if opts.lsm { &[] } else { FALLBACK_TRACEPOINTS };
    let present = TRACEPOINTS_IF_PRESENT
        .iter()
        .filter(|(_, category, event)| {
            !opts.lsm
                && Path::new(TRACEFS)
                    .join("events")
                    .join(category)
                    .join(event)
                    .exists()
        });
    // One program may serve several tracepoints (a syscall family's exits):
    // it is loaded once, and each attachment is pinned by its event.
    for &(name, category, event) in TRACEPOINTS.iter().chain(fallback).chain(present) {
        if !adopt_link(&generation, event) {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(failed(name))?;
            }
            let id = prog.attach(category, event).map_err(failed(name))?;
            let link = prog.take_link(id).map_err(failed(name))?;
            pin_link(name, link.try_into(), &generation.link(event))?;
        }
        attached.push(format!("tracepoint/{category}:{event}"));
    }
    let root = cgroup2_root()?;
    let cgroup = fs::File::open(&root).map_err(|source| LoadError::Cgroup {
        path: root.clone(),
        source,
    })?;
    for &name in SOCK_ADDR {
        if !adopt_link(&generation, name) {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(failed(name))?;
            // Attached through a bpf_link (kernel ≥ 5.7), which always allows
            // several programs side by side and refuses any flag but 0
            // (`Single`): other daemons (tests) keep theirs, and each judges
            // only the processes in its own maps.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(failed(name))?;
            let link = prog.take_link(id).map_err(failed(name))?;
            pin_link(name, link.try_into(), &generation.link(name))?;
        }
        attached.push(format!("cgroup_sock_addr/{name}@{root}"));
    }
    if opts.lsm {
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
        for &(name, hook) in LSM_HOOKS {
            if !adopt_link(&generation, name) {
                let prog: &mut Lsm = program(&mut ebpf, name)?;
                prog.load(hook, &btf).map_err(failed(name))?;
                let id = prog.attach().map_err(failed(name))?;
                let link = prog.take_link(id).map_err(failed(name))?;
                pin_link(name, Ok(link.into()), &generation.link(name))?;
            }
            attached.push(format!("lsm/{hook}"));
        }
    }
    Ok(Loaded {
        ebpf,
        layout,
        attached,
        generation,
        adopted,
        previous,
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
