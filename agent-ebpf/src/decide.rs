//! The verdict on one call of a tagged process: look the session's compiled
//! rules up, take the strongest verdict that applies, else the session's
//! default for that access. No policy logic lives here — only look-ups of
//! what the daemon compiled (agent_common's enforcement section).
use agent_common::{
    Access, EnforceConfig, MODE_OBSERVE, PATH_MAX, RULE_PATH_LEN, RuleEntry, SESSION_EXPIRED,
    SESSION_EXPIRED_KILL, SessionId, SessionPolicy, Verdict, net_prefix_bits, path_prefix_bits,
};
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_loop, bpf_probe_read_kernel_buf},
};

use crate::maps::{
    CONFIG, KEY_SCRATCH, NET_RULES, PATH_RULES, PATH_SUFFIX_RULES, SCRATCH, SESSION_LABELS,
    SESSION_POLICY,
};

/// The verdict reached, the rule behind it, and the labels the call earns if
/// it goes through.
#[derive(Clone, Copy)]
pub struct Judgement {
    pub verdict: Verdict,
    pub rule: u32,
    pub set_labels: u64,
}

impl Judgement {
    pub const NONE: Self = Self {
        verdict: Verdict::None,
        rule: 0,
        set_labels: 0,
    };

    /// Folds in the slots of `entry` that apply to `labels`.
    fn take(&mut self, entry: &RuleEntry, labels: u64) {
        for slot in &entry.slots {
            if slot.applies(labels) {
                self.prefer(Verdict::from_u8(slot.verdict), slot.rule);
                self.set_labels |= slot.set_labels;
            }
        }
    }

    pub fn merge(&mut self, other: &Judgement) {
        self.prefer(other.verdict, other.rule);
        self.set_labels |= other.set_labels;
    }

    /// The stronger verdict wins; between equals, the rule written first
    /// (lower id), as the engine reports it.
    fn prefer(&mut self, v: Verdict, rule: u32) {
        if v > self.verdict || (v == self.verdict && rule < self.rule) {
            self.verdict = v;
            self.rule = rule;
        }
    }
}

pub fn config() -> EnforceConfig {
    CONFIG.get(0).copied().unwrap_or(EnforceConfig {
        mode: MODE_OBSERVE,
        block: 0,
        guard_tgid: 0,
        _pad: 0,
    })
}

/// A session's compiled policy and the labels it holds right now.
pub struct Session {
    pub id: SessionId,
    policy: SessionPolicy,
    labels: u64,
}

/// The session's policy, or `None` while the daemon has installed none.
pub fn session(id: SessionId) -> Option<Session> {
    // SAFETY: values are copied out at once.
    let policy = *unsafe { SESSION_POLICY.get(&id) }?;
    let labels = unsafe { SESSION_LABELS.get(&id) }.copied().unwrap_or(0);
    Some(Session { id, policy, labels })
}

impl Session {
    /// Past its TTL, a session may do nothing at all.
    fn expired(&self) -> Option<Judgement> {
        let verdict = if self.policy.flags & SESSION_EXPIRED_KILL != 0 {
            Verdict::Kill
        } else if self.policy.flags & SESSION_EXPIRED != 0 {
            Verdict::Deny
        } else {
            return None;
        };
        Some(Judgement {
            verdict,
            rule: 0,
            set_labels: 0,
        })
    }

    /// The session's default when no rule matched.
    fn settle(&self, mut j: Judgement, access: Access) -> Judgement {
        if j.verdict == Verdict::None {
            let i = access as usize;
            if let (Some(v), Some(r)) = (
                self.policy.defaults.get(i),
                self.policy.default_rules.get(i),
            ) {
                j.verdict = Verdict::from_u8(*v);
                j.rule = *r;
            }
        }
        j
    }

    /// Verdict on the path in this CPU's record (`path`, `len` bytes and a
    /// NUL) for one access.
    pub fn path(&self, access: Access, path: &[u8], len: usize) -> Judgement {
        if let Some(j) = self.expired() {
            return j;
        }
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return Judgement::NONE;
        };
        // SAFETY: this CPU's scratch slot; nothing else runs on it meanwhile.
        let key = unsafe { &mut (*keys).path };
        key.prefix_len = path_prefix_bits(RULE_PATH_LEN);
        key.data.ruleset = self.policy.ruleset;
        key.data.access = access as u8;
        let mut j = Judgement::NONE;
        // The copy carries the path's NUL when it is shorter than the key:
        // rule paths hold no NUL but an exact one's last byte, so whatever
        // follows in the key cannot make a longer rule match.
        let Some(src) = path.get(..RULE_PATH_LEN) else {
            return j;
        };
        // SAFETY: both are map memory of at least RULE_PATH_LEN bytes.
        if unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), &mut key.data.path) }.is_ok() {
            if let Some(entry) = PATH_RULES.get(&*key) {
                j.take(entry, self.labels);
            }
        }
        // The same key, reversed: suffix rules are prefixes of it.
        let mut rev = Reverse {
            len: len as u64,
            n: len.min(RULE_PATH_LEN) as u64,
        };
        // SAFETY: the callback gets `rev` back and nothing else.
        unsafe {
            bpf_loop(
                RULE_PATH_LEN as u32 + 1,
                reverse_step as *mut c_void,
                (&mut rev as *mut Reverse).cast(),
                0,
            )
        };
        if let Some(entry) = PATH_SUFFIX_RULES.get(&*key) {
            j.take(entry, self.labels);
        }
        self.settle(j, access)
    }

    /// Verdict on a connect to `addr` (IPv6, or IPv4-mapped) and `port`.
    pub fn net(&self, addr: &[u8; 16], port: u16) -> Judgement {
        if let Some(j) = self.expired() {
            return j;
        }
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return Judgement::NONE;
        };
        // SAFETY: this CPU's scratch slot.
        let key = unsafe { &mut (*keys).net };
        key.prefix_len = net_prefix_bits(128);
        key.data.ruleset = self.policy.ruleset;
        key.data._pad = 0;
        key.data.addr = *addr;
        let mut j = Judgement::NONE;
        for p in [port, 0] {
            key.data.port = p;
            if let Some(entry) = NET_RULES.get(&*key) {
                j.take(entry, self.labels);
            }
        }
        self.settle(j, Access::ConnectInet)
    }

    /// Adds the labels a call earned once it is let through: later calls of
    /// the session see them at once, with no round trip to the daemon.
    pub fn commit(&self, j: &Judgement) {
        if j.verdict.blocks() || j.set_labels & !self.labels == 0 {
            return;
        }
        match SESSION_LABELS.get_ptr_mut(&self.id) {
            // SAFETY: a map value. An atomic OR, so that two CPUs setting
            // different labels of one session both keep theirs (the BPF
            // target has no Rust atomics with read-modify-write).
            Some(p) => unsafe {
                core::arch::asm!(
                    "lock *(u64 *)({0} + 0) |= {1}",
                    in(reg) p,
                    in(reg) j.set_labels,
                );
            },
            None => {
                let _ = SESSION_LABELS.insert(&self.id, &(self.labels | j.set_labels), 0);
            }
        }
    }
}

/// State of the loop that writes the record's path, reversed, into the
/// suffix key.
#[repr(C)]
struct Reverse {
    len: u64,
    n: u64,
}

// Loops over path bytes run under bpf_loop: the verifier checks the body
// once instead of walking every iteration (an unrolled 4096-byte scan
// exceeds its 1M-instruction budget). The bodies reach the record and the
// key through their per-CPU maps.
extern "C" fn reverse_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Reverse`.
    let st = unsafe { &*(ctx as *const Reverse) };
    let (Some(buf), Some(keys)) = (SCRATCH.get_ptr(0), KEY_SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    let i = i as usize;
    // SAFETY: this CPU's scratch slots.
    let (data, key) = unsafe { (&(*buf).data, &mut (*keys).path.data.path) };
    let Some(d) = key.get_mut(i) else {
        return 1;
    };
    if i as u64 >= st.n {
        // Ends the key: no rule can match past the path.
        *d = 0;
        return 1;
    }
    let from = (st.len as usize).wrapping_sub(1 + i) & (PATH_MAX - 1);
    *d = data.get(from).copied().unwrap_or(0);
    0
}

#[repr(C)]
struct PlainScan {
    len: u64,
    seg: u64,
    dots: u64,
    bad: u64,
}

extern "C" fn plain_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `PlainScan`.
    let st = unsafe { &mut *(ctx as *mut PlainScan) };
    if i as u64 >= st.len {
        return 1;
    }
    let Some(buf) = SCRATCH.get_ptr(0) else {
        st.bad = 1;
        return 1;
    };
    // SAFETY: this CPU's scratch slot.
    let data = unsafe { &(*buf).data };
    let c = data.get(i as usize & (PATH_MAX - 1)).copied().unwrap_or(0);
    if c == b'/' {
        if i > 0 && (st.seg == 0 || (st.seg == st.dots && st.dots <= 2)) {
            st.bad = 1;
            return 1;
        }
        st.seg = 0;
        st.dots = 0;
    } else {
        st.seg += 1;
        if c == b'.' {
            st.dots += 1;
        }
    }
    0
}

/// Whether the record's path is absolute and free of `//`, `.` and `..`
/// segments: the only kind whose text says which file it names. Fallback
/// mode leaves others to user space (judged after the fact); LSM mode sees
/// resolved paths and never needs this.
pub fn is_plain_absolute(path: &[u8], len: usize) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut st = PlainScan {
        len: len as u64,
        seg: 0,
        dots: 0,
        bad: 0,
    };
    // SAFETY: the callback gets `st` back and nothing else.
    unsafe {
        bpf_loop(
            PATH_MAX as u32,
            plain_step as *mut c_void,
            (&mut st as *mut PlainScan).cast(),
            0,
        )
    };
    st.bad == 0 && !(st.seg > 0 && st.seg == st.dots && st.dots <= 2)
}
