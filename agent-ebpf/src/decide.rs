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
    macros::map,
    maps::PerCpuArray,
};

use crate::maps::{
    CONFIG, KEY_SCRATCH, LEVEL_LABELS, NET_RULES, PATH_RULES, PATH_SUFFIX_RULES, SCRATCH,
    SESSION_LABELS, SESSION_POLICY, session_word,
};

/// The verdict reached and the rule behind it. The labels the call earns
/// wait in `LEVEL_LABELS` until [`Session::commit`].
#[derive(Clone, Copy)]
pub struct Judgement {
    pub verdict: Verdict,
    pub rule: u32,
}

impl Judgement {
    pub const NONE: Self = Self::of(Verdict::None, 0);

    pub const fn of(verdict: Verdict, rule: u32) -> Self {
        Self { verdict, rule }
    }

    pub fn merge(&mut self, other: &Judgement) {
        self.prefer(other.verdict, other.rule);
    }

    fn prefer(&mut self, v: Verdict, rule: u32) {
        if v.wins(rule, self.verdict, self.rule) {
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
                if v.wins(slot.rule, self.verdict, self.rule) {
                    self.verdict = v;
                    self.rule = slot.rule;
                }
                self.set_labels |= slot.set_labels;
            }
        }
    }

    /// The layer's default for access `i` when none of its rules matched.
    fn settle(mut self, layer: &Layer, i: usize) -> Self {
        if self.verdict == Verdict::None {
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
/// for it. Starts the judgement of one call: no labels earned yet.
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
    if s.chain[0] == 0 {
        return None;
    }
    for level in 0..MAX_CHAIN as u32 {
        if let Some(l) = LEVEL_LABELS.get_ptr_mut(level) {
            // SAFETY: this CPU's slot.
            unsafe { *l = 0 };
        }
    }
    Some(s)
}

/// Past its TTL (or its drift threshold), a session may do nothing at all,
/// and neither may the sessions it delegated to.
fn expired(policy: &SessionPolicy) -> Option<Verdict> {
    if policy.flags & SESSION_EXPIRED_KILL != 0 {
        Some(Verdict::Kill)
    } else if policy.flags & SESSION_EXPIRED != 0 {
        Some(Verdict::Deny)
    } else {
        None
    }
}

/// State of the loop over the layers of a chain (two per session: its
/// rules, its tool call) for one call, whose keys are in this CPU's
/// `KEY_SCRATCH`.
#[repr(C)]
struct Walk {
    /// The session whose layers are next (0: the chain is done).
    current: SessionId,
    rule: u32,
    verdict: u8,
    /// The [`Access`] judged.
    access: u8,
    /// Look up `NET_RULES` (with `port`, then any port), not the path maps.
    net: u8,
    /// The forward path key is filled in.
    forward: u8,
    port: u16,
    _pad: [u8; 6],
}

impl Walk {
    fn new(first: SessionId, access: Access) -> Self {
        Self {
            current: first,
            rule: 0,
            verdict: Verdict::None as u8,
            access: access as u8,
            net: 0,
            forward: 0,
            port: 0,
            _pad: [0; 6],
        }
    }

    fn prefer(&mut self, v: Verdict, rule: u32) {
        let mine = Verdict::from_u8(self.verdict);
        if v > mine || (v == mine && rule < self.rule) {
            self.verdict = v as u8;
            self.rule = rule;
        }
    }

    /// Runs the walk: one step per layer.
    fn run(self) -> Judgement {
        let Some(slot) = LAYER_WALK.get_ptr_mut(0) else {
            return Judgement::NONE;
        };
        // SAFETY: this CPU's scratch slot; the steps below use it in turn.
        unsafe { *slot = self };
        // Layers are judged under bpf_loop: the verifier checks the step
        // once, where unrolling chain × layers × slots × look-ups for every
        // access of an open exceeds its 1M-instruction budget. The walk's
        // state is in a map, not on the stack, so that the verifier (which
        // checks a callback again for as long as the state it is given
        // changes) sees one state, not each verdict reached so far.
        // SAFETY: the callback takes no context.
        unsafe {
            bpf_loop(
                (MAX_CHAIN * 2) as u32,
                layer_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
        // SAFETY: as above.
        let w = unsafe { &*slot };
        Judgement::of(Verdict::from_u8(w.verdict), w.rule)
    }
}

/// The [`Walk`] in progress on this CPU.
#[map]
static LAYER_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Step `i` of a [`Walk`]: layer `i % 2` (rules, tool call) of the session
/// at level `i / 2` of the chain.
extern "C" fn layer_step(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(w) = LAYER_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, set by `Walk::run`.
    let w = unsafe { &mut *w };
    if w.current == 0 {
        return 1;
    }
    // SAFETY: a map value, read during this step only.
    let Some(policy) = (unsafe { SESSION_POLICY.get(&w.current) }) else {
        return 1;
    };
    let tool = i % 2 == 1;
    judge_layer(w, i / 2, policy, tool);
    if tool {
        w.current = policy.parent;
    }
    0
}

fn judge_layer(w: &mut Walk, level: u32, policy: &SessionPolicy, tool: bool) {
    if let Some(v) = expired(policy) {
        w.prefer(v, 0);
        return;
    }
    let layer = if tool { &policy.tool } else { &policy.rules };
    if layer.ruleset == 0 {
        return;
    }
    // The kernel's labels and the daemon's (see SessionPolicy::labels).
    // SAFETY: a map value, copied out.
    let labels = unsafe { SESSION_LABELS.get(&w.current) }
        .copied()
        .unwrap_or(0)
        | policy.labels;
    let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else runs on it meanwhile.
    let keys = unsafe { &mut *keys };
    let mut found = Found::NONE;
    let access = if w.net != 0 {
        keys.net.data.ruleset = layer.ruleset;
        for p in [w.port, 0] {
            keys.net.data.port = p;
            if let Some(entry) = NET_RULES.get(&keys.net) {
                found.take(entry, labels);
            }
        }
        Access::ConnectInet as usize
    } else {
        keys.path.data.ruleset = layer.ruleset;
        keys.suffix.data.ruleset = layer.ruleset;
        if w.forward != 0
            && let Some(entry) = PATH_RULES.get(&keys.path)
        {
            found.take(entry, labels);
        }
        if let Some(entry) = PATH_SUFFIX_RULES.get(&keys.suffix) {
            found.take(entry, labels);
        }
        w.access as usize
    };
    let found = found.settle(layer, access);
    w.prefer(found.verdict, found.rule);
    if found.set_labels != 0
        && let Some(l) = LEVEL_LABELS.get_ptr_mut(level)
    {
        // SAFETY: this CPU's slot.
        unsafe { *l |= found.set_labels };
    }
}

impl Session {
    /// Verdict on the path in this CPU's record (`path`, `len` bytes and a
    /// NUL) for one access.
    pub fn path(&self, access: Access, path: &[u8], len: usize) -> Judgement {
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return Judgement::NONE;
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
            return Judgement::NONE;
        };
        let mut walk = Walk::new(self.chain[0], access);
        // SAFETY: both are map memory of at least RULE_PATH_LEN bytes.
        walk.forward = unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), &mut keys.path.data.path) }
            .is_ok() as u8;
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
        walk.run()
    }

    /// Verdict on a connect to `addr` (IPv6, or IPv4-mapped) and `port`.
    pub fn net(&self, addr: &[u8; 16], port: u16) -> Judgement {
        let Some(keys) = KEY_SCRATCH.get_ptr_mut(0) else {
            return Judgement::NONE;
        };
        // SAFETY: this CPU's scratch slot.
        let key = unsafe { &mut (*keys).net };
        key.prefix_len = net_prefix_bits(128);
        key.data._pad = 0;
        key.data.addr = *addr;
        let mut walk = Walk::new(self.chain[0], Access::ConnectInet);
        walk.net = 1;
        walk.port = port;
        walk.run()
    }

    /// Adds the labels a call earned, once it is let through, to each
    /// session of the chain: later calls see them at once, with no round
    /// trip to the daemon.
    pub fn commit(&self, j: &Judgement) {
        if j.verdict.blocks() {
            return;
        }
        for (level, id) in self.chain.iter().enumerate() {
            if *id == 0 {
                break;
            }
            let bits = LEVEL_LABELS.get(level as u32).copied().unwrap_or(0);
            if bits == 0 {
                continue;
            }
            let Some(p) = session_word(&SESSION_LABELS, id) else {
                continue;
            };
            // SAFETY: a map value. An atomic OR, so that two CPUs setting
            // different labels of one session both keep theirs (the BPF
            // target has no Rust atomics with read-modify-write).
            unsafe {
                if *p & bits != bits {
                    core::arch::asm!(
                        "lock *(u64 *)({0} + 0) |= {1}",
                        in(reg) p,
                        in(reg) bits,
                    );
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
