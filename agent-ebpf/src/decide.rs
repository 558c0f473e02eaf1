//! The verdict on one call of a tagged process: look the call up in every
//! layer (rules, tool call) of its session and of the sessions that
//! delegated to it, take the strongest verdict that applies, each layer
//! falling back to its default for that access. No policy logic lives here — only look-ups of
//! what the daemon compiled (agent_common's enforcement section).
use agent_common::{
    Access, EnforceConfig, Layer, MAX_CHAIN, MODE_OBSERVE, PATH_MAX, RULE_PATH_LEN, RuleEntry,
    SESSION_EXPIRED, SESSION_EXPIRED_KILL, SessionId, SessionPolicy, Verdict, net_prefix_bits,
    path_prefix_bits,
};
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_loop, bpf_probe_read_kernel_buf},
};

use crate::maps::{
    CONFIG, KEY_SCRATCH, NET_RULES, PATH_RULES, PATH_SUFFIX_RULES, SCRATCH, SESSION_LABELS,
    SESSION_POLICY,
};

/// The verdict reached, the rule behind it, and the labels the call earns
/// if it goes through, per session of the chain.
#[derive(Clone, Copy)]
pub struct Judgement {
    pub verdict: Verdict,
    pub rule: u32,
    pub set_labels: [u64; MAX_CHAIN],
}

impl Judgement {
    pub const NONE: Self = Self::of(Verdict::None, 0);

    /// A verdict that earns no labels.
    pub const fn of(verdict: Verdict, rule: u32) -> Self {
        Self {
            verdict,
            rule,
            set_labels: [0; MAX_CHAIN],
        }
    }

    pub fn merge(&mut self, other: &Judgement) {
        self.prefer(other.verdict, other.rule);
        for (mine, theirs) in self.set_labels.iter_mut().zip(other.set_labels.iter()) {
            *mine |= *theirs;
        }
    }

    /// Folds in one layer's verdict, earned by the session at `level`.
    fn add(&mut self, level: usize, found: &Found) {
        self.prefer(found.verdict, found.rule);
        if let Some(l) = self.set_labels.get_mut(level) {
            *l |= found.set_labels;
        }
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

/// What one layer says about a call.
struct Found {
    verdict: Verdict,
    rule: u32,
    set_labels: u64,
}

impl Found {
    const NONE: Self = Self {
        verdict: Verdict::None,
        rule: 0,
        set_labels: 0,
    };

    /// Folds in the slots of `entry` that apply to `labels`.
    fn take(&mut self, entry: &RuleEntry, labels: u64) {
        for slot in &entry.slots {
            if slot.applies(labels) {
                let v = Verdict::from_u8(slot.verdict);
                if v > self.verdict || (v == self.verdict && slot.rule < self.rule) {
                    self.verdict = v;
                    self.rule = slot.rule;
                }
                self.set_labels |= slot.set_labels;
            }
        }
    }

    /// The layer's default when none of its rules matched.
    fn settle(mut self, layer: &Layer, access: Access) -> Self {
        if self.verdict == Verdict::None {
            let i = access as usize;
            if let (Some(v), Some(r)) = (layer.defaults.get(i), layer.default_rules.get(i)) {
                self.verdict = Verdict::from_u8(*v);
                self.rule = *r;
            }
        }
        self
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

/// The sessions a call of a tagged process is judged by: its own, then
/// each one that delegated to the one before.
pub struct Session {
    chain: [SessionId; MAX_CHAIN],
}

/// The session's chain, or `None` while the daemon has installed no policy
/// for it.
pub fn session(id: SessionId) -> Option<Session> {
    let mut s = Session {
        chain: [0; MAX_CHAIN],
    };
    let mut next = id;
    for slot in s.chain.iter_mut() {
        // SAFETY: only `parent` is read, at once.
        let Some(p) = (unsafe { SESSION_POLICY.get(&next) }) else {
            break;
        };
        *slot = next;
        next = p.parent;
        if next == 0 {
            break;
        }
    }
    (s.chain[0] != 0).then_some(s)
}

/// Past its TTL (or its drift threshold), a session may do nothing at all,
/// and neither may the sessions it delegated to.
fn expired(policy: &SessionPolicy) -> Option<Judgement> {
    if policy.flags & SESSION_EXPIRED_KILL != 0 {
        Some(Judgement::of(Verdict::Kill, 0))
    } else if policy.flags & SESSION_EXPIRED != 0 {
        Some(Judgement::of(Verdict::Deny, 0))
    } else {
        None
    }
}

impl Session {
    /// Calls `f` with each session of the chain: its level, policy and labels.
    #[inline(always)]
    fn each(&self, j: &mut Judgement, mut f: impl FnMut(&mut Judgement, usize, &SessionPolicy, u64)) {
        for (level, id) in self.chain.iter().enumerate() {
            if *id == 0 {
                break;
            }
            // SAFETY: map values, read during this call only.
            let Some(policy) = (unsafe { SESSION_POLICY.get(id) }) else {
                break;
            };
            if let Some(e) = expired(policy) {
                j.merge(&e);
                continue;
            }
            let labels = unsafe { SESSION_LABELS.get(id) }.copied().unwrap_or(0);
            f(j, level, policy, labels);
        }
    }

    /// Verdict on the path in this CPU's record (`path`, `len` bytes and a
    /// NUL) for one access.
    pub fn path(&self, access: Access, path: &[u8], len: usize) -> Judgement {
        let mut j = Judgement::NONE;
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return j;
        };
        // SAFETY: this CPU's scratch slot; nothing else runs on it meanwhile.
        let keys = unsafe { &mut *keys };
        keys.path.prefix_len = path_prefix_bits(RULE_PATH_LEN);
        keys.path.data.access = access as u8;
        keys.suffix.prefix_len = path_prefix_bits(RULE_PATH_LEN);
        keys.suffix.data.access = access as u8;
        // The copy carries the path's NUL when it is shorter than the key:
        // rule paths hold no NUL but an exact one's last byte, so whatever
        // follows in the key cannot make a longer rule match.
        let Some(src) = path.get(..RULE_PATH_LEN) else {
            return j;
        };
        // SAFETY: both are map memory of at least RULE_PATH_LEN bytes.
        let forward =
            unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), &mut keys.path.data.path) }.is_ok();
        // The same path, reversed: suffix rules are prefixes of it.
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
        self.each(&mut j, |j, level, policy, labels| {
            for layer in [&policy.rules, &policy.tool] {
                if layer.ruleset == 0 {
                    continue;
                }
                keys.path.data.ruleset = layer.ruleset;
                keys.suffix.data.ruleset = layer.ruleset;
                let mut found = Found::NONE;
                if forward && let Some(entry) = PATH_RULES.get(&keys.path) {
                    found.take(entry, labels);
                }
                if let Some(entry) = PATH_SUFFIX_RULES.get(&keys.suffix) {
                    found.take(entry, labels);
                }
                j.add(level, &found.settle(layer, access));
            }
        });
        j
    }

    /// Verdict on a connect to `addr` (IPv6, or IPv4-mapped) and `port`.
    pub fn net(&self, addr: &[u8; 16], port: u16) -> Judgement {
        let mut j = Judgement::NONE;
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return j;
        };
        // SAFETY: this CPU's scratch slot.
        let key = unsafe { &mut (*keys).net };
        key.prefix_len = net_prefix_bits(128);
        key.data._pad = 0;
        key.data.addr = *addr;
        self.each(&mut j, |j, level, policy, labels| {
            for layer in [&policy.rules, &policy.tool] {
                if layer.ruleset == 0 {
                    continue;
                }
                key.data.ruleset = layer.ruleset;
                let mut found = Found::NONE;
                for p in [port, 0] {
                    key.data.port = p;
                    if let Some(entry) = NET_RULES.get(&*key) {
                        found.take(entry, labels);
                    }
                }
                j.add(level, &found.settle(layer, Access::ConnectInet));
            }
        });
        j
    }

    /// Adds the labels a call earned, once it is let through, to each
    /// session of the chain: later calls see them at once, with no round
    /// trip to the daemon.
    pub fn commit(&self, j: &Judgement) {
        if j.verdict.blocks() {
            return;
        }
        for (id, bits) in self.chain.iter().zip(j.set_labels.iter()) {
            let bits = *bits;
            if *id == 0 {
                break;
            }
            if bits == 0 {
                continue;
            }
            match SESSION_LABELS.get_ptr_mut(id) {
                // SAFETY: a map value. An atomic OR, so that two CPUs setting
                // different labels of one session both keep theirs (the BPF
                // target has no Rust atomics with read-modify-write).
                Some(p) => unsafe {
                    if *p & bits != bits {
                        core::arch::asm!(
                            "lock *(u64 *)({0} + 0) |= {1}",
                            in(reg) p,
                            in(reg) bits,
                        );
                    }
                },
                None => {
                    let _ = SESSION_LABELS.insert(id, &bits, 0);
                }
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
    let (data, key) = unsafe { (&(*buf).data, &mut (*keys).suffix.data.path) };
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
