//! The maps shared with the daemon. Names are the daemon's contract: it finds
//! them by these names in the object and pins them under /sys/fs/bpf/agentgate.
use agent_common::{
    COUNTERS_LEN, EnforceConfig, EventBuf, InodeKey, KNOWN_INODES_LEN, KnownName, NetRuleKey,
    PATH_MAX, PathRuleKey, ProcTag, RuleEntry, SessionId, SessionPolicy,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};

/// tgid (or tid, see `ProcTag`) → session of a process that belongs to one.
#[map]
pub static TAGS: HashMap<u32, ProcTag> = HashMap::with_max_entries(65536, 0);

/// cgroup v2 id → session, for agents that run in their own cgroup (pods).
#[map]
pub static CGROUP_SESSIONS: HashMap<u64, SessionId> = HashMap::with_max_entries(4096, 0);

/// Records for the daemon. The daemon may resize it before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// `counter_index(hook, counter)` → count, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Scratch space to build one record: too big for the 512-byte stack.
#[map]
pub static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

// ---- the compiled policy (see agent_common's enforcement section) -------

/// Path prefixes and exact paths, per ruleset and access.
#[map]
pub static PATH_RULES: LpmTrie<PathRuleKey, RuleEntry> = LpmTrie::with_max_entries(65536, 0);

/// Path suffixes (`*.pem`, `**/.env`), keyed by the reversed path.
#[map]
pub static PATH_SUFFIX_RULES: LpmTrie<PathRuleKey, RuleEntry> = LpmTrie::with_max_entries(65536, 0);

/// CIDRs (IPv4-mapped for v4) with a port or any port.
#[map]
pub static NET_RULES: LpmTrie<NetRuleKey, RuleEntry> = LpmTrie::with_max_entries(65536, 0);

/// session → its ruleset, defaults and state.
#[map]
pub static SESSION_POLICY: HashMap<SessionId, SessionPolicy> = HashMap::with_max_entries(4096, 0);

/// session → labels it has earned (bitmask), set by rules as calls go
/// through. The programs' alone to write (an atomic OR, `decide::commit`);
/// the daemon reads it and deletes a session's entry when the session
/// ends. Labels the daemon decides are in `SessionPolicy::labels`.
#[map]
pub static SESSION_LABELS: HashMap<SessionId, u64> = HashMap::with_max_entries(4096, 0);

/// session → records of it the ring buffer had no room for (the daemon
/// never saw those calls; the kernel's verdict on them stood alone). The
/// programs' alone to write (an atomic add, `record::emit`); the daemon
/// reports them and deletes a session's entry when the session ends.
#[map]
pub static SESSION_LOST: HashMap<SessionId, u64> = HashMap::with_max_entries(4096, 0);

/// The session's word in one of the maps above that the programs update in
/// place (`SESSION_LABELS`, `SESSION_LOST`), for an atomic update. A
/// session's first entry is made 0, never over one another CPU has just
/// made (BPF_NOEXIST).
#[inline(always)]
pub fn session_word(map: &HashMap<SessionId, u64>, id: &SessionId) -> Option<*mut u64> {
    if let Some(p) = map.get_ptr_mut(id) {
        return Some(p);
    }
    let _ = map.insert(id, &0, BPF_NOEXIST as u64);
    map.get_ptr_mut(id)
}

/// `[0]`: how to enforce. All zero (audit-only) until the daemon says otherwise.
#[map]
pub static CONFIG: Array<EnforceConfig> = Array::with_max_entries(1, 0);

/// Labels each session of the chain (by level: the caller's session
/// first) earns with the call being judged, kept until the verdict says
/// whether the call goes through. Indexed through a map so that the level
/// is no array index the verifier must track exactly.
#[map]
pub static LEVEL_LABELS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(agent_common::MAX_CHAIN as u32, 0);

/// Room to build rule keys: 260 bytes each, too big for the stack. `path`
/// holds a path as written, `suffix` the same path reversed.
#[map]
pub static KEY_SCRATCH: PerCpuArray<RuleKeys> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct RuleKeys {
    pub path: Key<PathRuleKey>,
    pub suffix: Key<PathRuleKey>,
    pub net: Key<NetRuleKey>,
}

/// Files that rules protect, by identity → the path rules name them by
/// (the daemon's to write, from the rulesets it installs): a call that
/// reaches one by another name is judged by that path too.
#[map]
pub static KNOWN_INODES: HashMap<InodeKey, KnownName> =
    HashMap::with_max_entries(KNOWN_INODES_LEN, 0);

/// The path walk's state and room (resolve.rs).
#[map]
pub static WALK_SCRATCH: PerCpuArray<PathWalk> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct PathWalk {
    pub state: WalkState,
    /// The path is built backwards from `PATH_MAX`; a name's worth of
    /// slack after it lets the verifier see every write inside.
    pub buf: [u8; 2 * PATH_MAX],
}

/// Where a walk is: the current (mount, dentry), the process's root where
/// it stops (as `d_path` does for a chrooted process or a container), the
/// path so far (`buf[off..PATH_MAX]`) and whether it is done (0: walking;
/// 1: at the root; 2: gave up, too long; 3: not in the tree at all).
/// Kernel addresses are kept as integers (a map value must be `Sync`).
#[repr(C)]
pub struct WalkState {
    pub mount: u64,
    pub dentry: u64,
    pub root_mnt: u64,
    pub root_dentry: u64,
    pub off: u64,
    pub done: u64,
}

/// Fallback mode: tid → the flags of an open in flight, from the syscall's
/// entry to its exit (where the file it opened is judged).
#[map]
pub static OPEN_FLAGS: LruHashMap<u32, i64> = LruHashMap::with_max_entries(16384, 0);

/// LSM mode: tid → verdict (low byte) and rule (high half) of an exec that
/// `bprm_check_security` let through, for `sched_process_exec` to report.
#[map]
pub static EXEC_VERDICTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);
