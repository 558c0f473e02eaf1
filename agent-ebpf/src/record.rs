//! Building one ring-buffer record in per-CPU scratch space and sending the
//! used part of it.
use agent_common::{
    AF_INET, AF_INET6, AF_UNIX, ARGV_MAX, Counter, ENFORCED_NONE, EVENT_BUF_LEN, EVENT_DATA_LEN,
    EVENT_HEADER_LEN, EventBuf, EventHeader, EventKind, Hook, PATH_MAX, PATH_PARTIAL,
    PATH_SECOND_PARTIAL, ProcTag, SessionId, Verdict, counter_index,
};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read, bpf_probe_read_buf,
    bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
    bpf_probe_read_user_str_bytes,
};

use crate::{
    decide::Judgement,
    maps::{COUNTERS, EVENTS, SCRATCH, SESSION_LOST, session_word},
};

/// Longest `sun_path`.
const UNIX_PATH_MAX: usize = 108;

pub fn count(hook: Hook, counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(hook, counter)) {
        // SAFETY: per-CPU slot; no other program runs on this CPU meanwhile.
        unsafe { *c += 1 };
    }
}

pub struct Record {
    buf: *mut EventBuf,
}

impl Record {
    /// Counts the call as seen and starts a record for the current task.
    pub fn begin(hook: Hook, kind: EventKind, tag: &ProcTag) -> Result<Self, u32> {
        count(hook, Counter::Seen);
        let buf = SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        // SAFETY: `buf` is this CPU's scratch slot.
        let h = unsafe { &mut (*buf).header };
        h.kind = kind as u32;
        h.verdict = Verdict::None as u8;
        h.enforced = ENFORCED_NONE;
        h.path_flags = 0;
        h._pad0 = 0;
        h.pid = (pid_tgid >> 32) as u32;
        h.tid = pid_tgid as u32;
        h.ppid = tag.ppid;
        h.uid = uid_gid as u32;
        h.gid = (uid_gid >> 32) as u32;
        h.rule = 0;
        h.session = tag.session;
        h.start_ns = tag.start_ns;
        // SAFETY: plain helpers without arguments.
        unsafe {
            h.time_ns = bpf_ktime_get_boot_ns();
            h.cgroup_id = bpf_get_current_cgroup_id();
        }
        h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        h.arg0 = 0;
        h.arg1 = 0;
        h.arg2 = 0;
        h.family = 0;
        h.port = 0;
        h.path_len = 0;
        h.argv_len = 0;
        h.addr = [0; 16];
        Ok(Self { buf })
    }

    pub fn header(&mut self) -> &mut EventHeader {
        // SAFETY: see `begin`.
        unsafe { &mut (*self.buf).header }
    }

    pub fn data(&mut self) -> &mut [u8] {
        // SAFETY: see `begin`.
        unsafe { &mut (*self.buf).data }
    }

    /// The path area (`PATH_MAX` bytes) and the path's length in it.
    pub fn path(&mut self) -> (&[u8], usize) {
        let len = self.header().path_len as usize;
        (&self.data()[..PATH_MAX], len)
    }

    /// Records the kernel's judgement and what was done about it.
    pub fn judge(&mut self, j: &Judgement, enforced: u8) {
        let h = self.header();
        h.verdict = j.verdict as u8;
        h.rule = j.rule;
        h.enforced = enforced;
    }

    /// Copies a NUL-terminated user string into the path area.
    ///
    /// # Safety
    /// `path` is a user-space pointer; the helper faults safely on bad ones.
    pub unsafe fn read_path(&mut self, path: *const u8) {
        let dest = &mut self.data()[..PATH_MAX];
        let len = match unsafe { bpf_probe_read_user_str_bytes(path, dest) } {
            Ok(s) => s.len(),
            Err(_) => 0,
        };
        self.header().path_len = len as u16;
    }

    /// Copies a NUL-terminated kernel string into the path area.
    ///
    /// # Safety
    /// `path` is a kernel pointer; the helper faults safely on bad ones.
    pub unsafe fn read_kernel_path(&mut self, path: *const u8) {
        let dest = &mut self.data()[..PATH_MAX];
        let len = match unsafe { bpf_probe_read_kernel_str_bytes(path, dest) } {
            Ok(s) => s.len(),
            Err(_) => 0,
        };
        self.header().path_len = len as u16;
    }

    /// Sets the path length after a helper (bpf_d_path) filled the area;
    /// `written` counts the NUL.
    pub fn set_path_len(&mut self, written: i64) {
        self.header().path_len = if written > 0 {
            ((written - 1) as usize & (PATH_MAX - 1)) as u16
        } else {
            0
        };
    }

    /// Sets the path's length and flags after `resolve` wrote it.
    pub fn set_resolved_path(&mut self, len: usize, flags: u8) {
        let h = self.header();
        h.path_len = (len & (PATH_MAX - 1)) as u16;
        h.path_flags = (h.path_flags & PATH_SECOND_PARTIAL) | flags;
    }

    /// Moves the path (as judged) to the second-path area, where a change
    /// record keeps its other end, cut to what that area holds.
    pub fn keep_as_second_path(&mut self) {
        let len = self.header().path_len as usize;
        let n = if len < ARGV_MAX { len } else { ARGV_MAX - 1 } & (ARGV_MAX - 1);
        let data = self.data();
        let (path, rest) = data.split_at_mut(PATH_MAX);
        if let (Some(src), Some(dest)) = (path.get(..), rest.get_mut(..n)) {
            // SAFETY: both are this CPU's scratch slot; `n` bytes.
            let _ = unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), dest) };
        }
        let h = self.header();
        h.argv_len = n as u16;
        // The flags so far were the second path's; the first starts afresh.
        h.path_flags = if h.path_flags & PATH_PARTIAL != 0 {
            PATH_SECOND_PARTIAL
        } else {
            0
        };
    }

    /// Copies `len` bytes of the user argv block (NUL-separated) after the
    /// path area.
    ///
    /// # Safety
    /// `argv` is a user-space pointer; the helper faults safely on bad ones.
    pub unsafe fn read_argv_block(&mut self, argv: *const u8, len: usize) {
        // Bounded by the mask for the verifier: at most ARGV_MAX - 1 bytes.
        let n = if len < ARGV_MAX { len } else { ARGV_MAX - 1 } & (ARGV_MAX - 1);
        let Some(dest) = self.data().get_mut(PATH_MAX..PATH_MAX + n) else {
            return;
        };
        if unsafe { bpf_probe_read_user_buf(argv, dest) }.is_ok() {
            self.header().argv_len = n as u16;
            // The decoder counts the arguments itself.
            self.header().arg2 = -1;
        }
    }

    /// Decodes a `struct sockaddr` of `header.arg2` bytes, in user memory
    /// (syscall tracepoints) or kernel memory (LSM): family, address and
    /// port for inet, the path for unix sockets.
    ///
    /// # Safety
    /// `sa` is a pointer the probe-read helpers fault safely on.
    // Inlined: as a BPF subprogram its void return leaves a stack pointer
    // in r0, which the verifier refuses ("cannot return stack pointer").
    // The generic probe-read helpers, deprecated in aya-ebpf, since the
    // address is in user memory or in kernel memory, by hook.
    #[allow(deprecated)]
    #[inline(always)]
    pub unsafe fn read_sockaddr(&mut self, sa: *const u8) {
        let Ok(family) = (unsafe { bpf_probe_read(sa as *const u16) }) else {
            return;
        };
        let h = self.header();
        h.family = family;
        match family {
            AF_INET => {
                // struct sockaddr_in { family, port (BE), addr[4], zero[8] }
                if let Ok(raw) = unsafe { bpf_probe_read(sa as *const [u8; 8]) } {
                    h.port = u16::from_be_bytes([raw[2], raw[3]]);
                    h.addr[..4].copy_from_slice(&raw[4..8]);
                }
            }
            AF_INET6 => {
                // struct sockaddr_in6 { family, port (BE), flowinfo, addr[16], scope }
                if let Ok(raw) = unsafe { bpf_probe_read(sa as *const [u8; 24]) } {
                    h.port = u16::from_be_bytes([raw[2], raw[3]]);
                    h.addr.copy_from_slice(&raw[8..24]);
                }
            }
            AF_UNIX => {
                // sun_path need not be NUL-terminated (and abstract names start
                // with NUL), so copy exactly addrlen - 2 bytes.
                let n = (h.arg2 as usize).saturating_sub(2).min(UNIX_PATH_MAX);
                let Some(dest) = self.data().get_mut(..n) else {
                    return;
                };
                if unsafe { bpf_probe_read_buf(sa.add(2), dest) }.is_err() {
                    return;
                }
                let mut len = n;
                if dest.first().is_some_and(|b| *b != 0) {
                    // A path ends at its first NUL, as the kernel reads it,
                    // whether the length passed counts the NUL (Go), leaves
                    // it out (SUN_LEN) or covers all of sun_path: read it
                    // again as a string, which also ends it with the NUL an
                    // exact rule's key needs (tests/host/decide.rs).
                    if let Some(dest) = self.data().get_mut(..n + 1)
                        // SAFETY: as above, at most n bytes of it.
                        && let Ok(k) =
                            unsafe { aya_ebpf::helpers::bpf_probe_read_str(sa.add(2), dest) }
                    {
                        len = k.saturating_sub(1);
                    }
                }
                self.header().path_len = len as u16;
            }
            _ => {}
        }
    }

    /// Sends the header and the used part of the data; counts the outcome.
    pub fn emit(mut self, hook: Hook) {
        let h = *self.header();
        let used = if h.kind == EventKind::Exec as u32 || h.kind == EventKind::Change as u32 {
            PATH_MAX + h.argv_len as usize
        } else {
            h.path_len as usize
        };
        if used > EVENT_DATA_LEN {
            return;
        }
        // The mask is a no-op after the check above, but it is what the 6.1
        // verifier can follow (it loses a compare made before the add).
        let len = (EVENT_HEADER_LEN + used) & (EVENT_BUF_LEN - 1);
        // SAFETY: `len` < EVENT_BUF_LEN, the size of the scratch slot.
        let bytes = unsafe { core::slice::from_raw_parts(self.buf as *const u8, len) };
        if h.enforced != ENFORCED_NONE {
            count(hook, Counter::Blocked);
        }
        match EVENTS.output::<[u8]>(bytes, 0) {
            Ok(()) => count(hook, Counter::Emitted),
            Err(_) => {
                count(hook, Counter::Dropped);
                lost(h.session);
            }
        }
    }
}

/// Counts a record of `session` lost to a full ring buffer.
fn lost(session: SessionId) {
    let Some(p) = session_word(&SESSION_LOST, &session) else {
        return;
    };
    // SAFETY: a map value; an atomic add, as CPUs may lose records of one
    // session at once (the BPF target has no Rust read-modify-write atomics).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) p,
            in(reg) 1u64,
        );
    }
}
