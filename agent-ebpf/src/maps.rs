//! The maps shared with the daemon. Names are the daemon's contract: it finds
//! them by these names in the object and pins them under /sys/fs/bpf/agentgate.
use agent_common::{COUNTERS_LEN, EventBuf, ProcTag, SessionId};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
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
