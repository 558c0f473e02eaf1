//! Offsets that differ between kernels, patched in by the loader before load
//! (tracefs formats and BTF; TOOLCHAIN.md §4).
use agent_common::KernelLayout;

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    fork_child_pid: 0,
    exit_group_dead: 0,
    exec_filename: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    file_f_path: 0,
    file_f_mode: 0,
    bprm_file: 0,
    task_tgid: 0,
    inode_i_sb: 0,
    sb_s_magic: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    task_fs: 0,
    fs_root: 0,
    fs_pwd: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    mm_exe_file: 0,
    dentry_d_inode: 0,
    inode_i_ino: 0,
    sb_s_dev: 0,
};

#[inline(always)]
pub fn get() -> KernelLayout {
    // SAFETY: a constant the loader patched; volatile so that the compiler
    // does not fold the zeros above into the code. The verifier still sees
    // constants: .rodata is frozen before the programs load.
    unsafe { core::ptr::read_volatile(&LAYOUT) }
}
