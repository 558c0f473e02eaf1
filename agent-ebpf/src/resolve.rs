//! The path of a file as the kernel reaches it: a walk from a (mount,
//! dentry) pair up through parents and mount points to the process's root,
//! as the kernel's `d_path` does (and Tetragon's `prepend_path`). Syscall
//! tracepoints cannot call `bpf_d_path`, so fallback mode walks by hand; the
//! LSM path hooks use the same walk for names that do not exist yet (the
//! new end of a rename, a new directory).
//!
//! The walk reads live kernel structures without their locks, like any
//! tracing program: a rename racing the walk can give a mix of old and new
//! names. It never reads out of bounds; at worst the path is wrong for a
//! file that was being renamed at that moment.
use agent_common::{InodeKey, KernelLayout, PATH_MAX, PATH_PARTIAL, PATH_RESOLVED, RULE_PATH_LEN};
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_task, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
};

use crate::{
    layout,
    maps::{KNOWN_INODES, WALK_SCRATCH, WalkState},
    record::Record,
};

/// Longest name of one path component.
const NAME_MAX: u64 = 255;
/// Steps of one walk: each component of a path that fits `PATH_MAX` takes
/// at least two bytes, and each mount crossed one more step.
const MAX_STEPS: u32 = (PATH_MAX / 2) as u32 + 64;

/// Reads a kernel pointer at `base + off` (null when unreadable).
///
/// # Safety
/// None beyond the helper's: it faults safely on any address.
#[inline(always)]
unsafe fn ptr_at(base: *const u8, off: u32) -> *const u8 {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const *const u8) }
        .unwrap_or(core::ptr::null())
}

extern "C" fn walk_step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(walk) = WALK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot; nothing else runs on it meanwhile.
    let walk = unsafe { &mut *walk };
    let (st, buf) = (&mut walk.state, &mut walk.buf);
    let l: KernelLayout = layout::get();
    let (mount, dentry) = (st.mount as *const u8, st.dentry as *const u8);
    let vfsmount = mount.wrapping_add(l.mount_mnt as usize);
    if dentry as u64 == st.root_dentry && vfsmount as u64 == st.root_mnt {
        st.done = 1;
        return 1;
    }
    // SAFETY: kernel pointers read through the checked helper.
    unsafe {
        if dentry == ptr_at(vfsmount, l.vfsmount_mnt_root) {
            // At the root of this mount: continue from where it is mounted.
            let parent = ptr_at(mount, l.mount_mnt_parent);
            if parent.is_null() || parent == mount {
                // The namespace's root mount (or a detached one).
                st.done = 1;
                return 1;
            }
            st.dentry = ptr_at(mount, l.mount_mnt_mountpoint) as u64;
            st.mount = parent as u64;
            return 0;
        }
        let parent = ptr_at(dentry, l.dentry_d_parent);
        if parent.is_null() || parent == dentry {
            // Its own parent but no mount's root: a pipe, socket or
            // anonymous inode (reopened through /proc/self/fd), or a
            // dentry cut off from the tree. No path names it.
            st.done = 3;
            return 1;
        }
        // struct qstr: { u32 hash; u32 len } then the name pointer.
        let name = dentry.wrapping_add(l.dentry_d_name as usize);
        let len = bpf_probe_read_kernel(name as *const u64).unwrap_or(0) >> 32;
        let len = if len > NAME_MAX { NAME_MAX } else { len };
        let text = ptr_at(name, 8);
        // Keep at least one byte in front: the path and its NUL must fit
        // PATH_MAX.
        if len + 1 >= st.off {
            st.done = 2;
            return 1;
        }
        st.off -= len + 1;
        let at = st.off as usize & (PATH_MAX - 1);
        if let Some(slash) = buf.get_mut(at) {
            *slash = b'/';
        }
        let n = len as usize & NAME_MAX as usize;
        if let Some(dest) = buf.get_mut(at + 1..at + 1 + n)
            && bpf_probe_read_kernel_buf(text, dest).is_err()
        {
            st.done = 2;
            return 1;
        }
        st.dentry = parent as u64;
    }
    0
}

/// The process's root, `(vfsmount, dentry)`.
fn current_root(l: &KernelLayout) -> (*const u8, *const u8) {
    // SAFETY: the current task, and pointers read through the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fs = ptr_at(task, l.task_fs);
        let root = fs.wrapping_add(l.fs_root as usize);
        (ptr_at(root, l.path_mnt), ptr_at(root, l.path_dentry))
    }
}

/// Writes the path of `dentry` on `vfsmount` into `dest` (at least
/// `PATH_MAX` bytes), NUL-terminated; returns its length and `PATH_*` flags
/// (none, and no path, for a file no path names: a pipe, a socket).
///
/// # Safety
/// `vfsmount` and `dentry` are kernel pointers (read through the checked
/// helper only).
#[inline(always)]
pub unsafe fn dentry_path(vfsmount: *const u8, dentry: *const u8, dest: &mut [u8]) -> (usize, u8) {
    let l = layout::get();
    let (root_mnt, root_dentry) = current_root(&l);
    let Some(walk) = WALK_SCRATCH.get_ptr_mut(0) else {
        return (0, PATH_PARTIAL);
    };
    // SAFETY: this CPU's scratch slot; the loop's steps use it in turn.
    let walk = unsafe { &mut *walk };
    walk.state = WalkState {
        mount: vfsmount.wrapping_sub(l.mount_mnt as usize) as u64,
        dentry: dentry as u64,
        root_mnt: root_mnt as u64,
        root_dentry: root_dentry as u64,
        off: PATH_MAX as u64,
        done: 0,
    };
    // The state lives in the map, not on the stack: the verifier then
    // checks the step once for any state instead of following the walk
    // iteration by iteration (which it gives up on: "too complex").
    // SAFETY: the callback takes no context.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if walk.state.done == 3 {
        if let Some(nul) = dest.first_mut() {
            *nul = 0;
        }
        return (0, 0);
    }
    let flags = if walk.state.done == 1 {
        PATH_RESOLVED
    } else {
        PATH_PARTIAL
    };
    if walk.state.off as usize == PATH_MAX {
        // The root itself: "/".
        walk.state.off = PATH_MAX as u64 - 1;
        if let Some(slash) = walk.buf.get_mut(PATH_MAX - 1) {
            *slash = b'/';
        }
    }
    let off = walk.state.off as usize & (PATH_MAX - 1);
    let n = (PATH_MAX - off) & (PATH_MAX - 1);
    if let (Some(src), Some(d)) = (walk.buf.get(off..), dest.get_mut(..n)) {
        // SAFETY: both are map memory; the helper copies `n` bytes.
        let _ = unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), d) };
    }
    if let Some(nul) = dest.get_mut(n) {
        *nul = 0;
    }
    (n, flags)
}

/// Fills the record's path with the path of `path` (a kernel `struct path
/// *`).
///
/// # Safety
/// `path` is a kernel pointer (read through the checked helper only).
#[inline(always)]
pub unsafe fn into_record(rec: &mut Record, path: *const u8) {
    // SAFETY: as the function's.
    unsafe { dentry_into_record(rec, path, dentry_of_path(path)) };
}

/// Fills the record's path with the path of `dentry` in the mount of `dir`
/// (a kernel `struct path *`): a name in that directory, or, for a link's
/// source, a file on the same mount.
///
/// # Safety
/// `dir` and `dentry` are kernel pointers (read through the checked helper
/// only).
#[inline(always)]
pub unsafe fn dentry_into_record(rec: &mut Record, dir: *const u8, dentry: *const u8) {
    let l = layout::get();
    // SAFETY: as the function's.
    let mnt = unsafe { ptr_at(dir, l.path_mnt) };
    // SAFETY: as the function's.
    let (n, flags) = unsafe { dentry_path(mnt, dentry, &mut rec.data()[..PATH_MAX + 1]) };
    rec.set_resolved_path(n, flags);
}

/// The `struct file *` behind descriptor `fd` of the current process.
pub fn file_of_fd(fd: i64) -> Option<*const u8> {
    let l = layout::get();
    if fd < 0 {
        return None;
    }
    // SAFETY: the current task, and pointers read through the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fdt = ptr_at(ptr_at(task, l.task_files), l.files_fdt);
        let max =
            bpf_probe_read_kernel(fdt.wrapping_add(l.fdt_max_fds as usize) as *const u32).ok()?;
        if fd as u64 >= u64::from(max) {
            return None;
        }
        let slots = ptr_at(fdt, l.fdt_fd);
        let file = ptr_at(slots, (fd as u32).wrapping_mul(8));
        (!file.is_null()).then_some(file)
    }
}

/// The `struct path *` inside `file`.
pub fn path_of_file(file: *const u8) -> *const u8 {
    file.wrapping_add(layout::get().file_f_path as usize)
}

/// The current process's working directory (`fs_struct.pwd`).
pub fn cwd() -> *const u8 {
    let l = layout::get();
    // SAFETY: the current task, read through the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        ptr_at(task, l.task_fs).wrapping_add(l.fs_pwd as usize)
    }
}

/// The image the current process runs (`mm_struct.exe_file`).
pub fn exe_file() -> Option<*const u8> {
    let l = layout::get();
    // SAFETY: the current task, read through the checked helper.
    let file = unsafe {
        let task = bpf_get_current_task() as *const u8;
        ptr_at(ptr_at(task, l.task_mm), l.mm_exe_file)
    };
    (!file.is_null()).then_some(file)
}

/// The dentry of a kernel `struct path *`.
pub fn dentry_of_path(path: *const u8) -> *const u8 {
    // SAFETY: read through the checked helper.
    unsafe { ptr_at(path, layout::get().path_dentry) }
}

/// When the file behind `dentry` is one that rules protect
/// (`KNOWN_INODES`), puts the path rules know it by in the record, in
/// place of the name that reached it: a hard link or a bind mount reaches
/// the same inode under another name.
pub fn known_name(rec: &mut Record, dentry: *const u8) {
    let l = layout::get();
    // SAFETY: kernel pointers read through the checked helper.
    let key = unsafe {
        let inode = ptr_at(dentry, l.dentry_d_inode);
        if inode.is_null() {
            // A name not created yet.
            return;
        }
        let ino = bpf_probe_read_kernel(inode.wrapping_add(l.inode_i_ino as usize) as *const u64);
        let sb = ptr_at(inode, l.inode_i_sb);
        let dev = bpf_probe_read_kernel(sb.wrapping_add(l.sb_s_dev as usize) as *const u32);
        let (Ok(ino), Ok(dev)) = (ino, dev) else {
            return;
        };
        InodeKey {
            dev: u64::from(dev),
            ino,
        }
    };
    // SAFETY: a map value, copied out below before anything else runs.
    let Some(known) = (unsafe { KNOWN_INODES.get(&key) }) else {
        return;
    };
    let n = (known.len as usize).min(RULE_PATH_LEN) & 0xff;
    let data = rec.data();
    if let (Some(src), Some(dest)) = (known.path.get(..n), data.get_mut(..n)) {
        // SAFETY: both are map memory; `n` bytes.
        let _ = unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), dest) };
    }
    if let Some(nul) = data.get_mut(n) {
        *nul = 0;
    }
    rec.set_resolved_path(n, PATH_RESOLVED);
}
