//! The kernel programs loaded into the test process itself, with the
//! daemon's `Enforcer` driven directly: for tests that must act on the maps
//! at a chosen moment (a race, a snapshot before and after), which a daemon
//! behind its control socket cannot give. In the mode the daemon would
//! choose by itself: BPF LSM where it works (the VM), the tracepoints
//! otherwise (the host). Its own pin dir, removed on drop.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use agent_common::{
    Access, MODE_FALLBACK, MODE_LSM, PathRuleKey, ProcTag, RULE_PATH_LEN, RuleEntry, RuleSlot,
    SessionId, Verdict, path_prefix_bits,
};
use agentgate::{
    enforce::Enforcer,
    loader::{self, Loaded},
    pins, probe,
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, lpm_trie::LpmTrie};

use crate::support::require_root;

pub struct Kernel {
    pub enforcer: Enforcer,
    tags: BpfHashMap<MapData, u32, ProcTag>,
    loaded: Loaded,
    pin_dir: PathBuf,
}

impl Kernel {
    pub fn load() -> Self {
        require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/agentgate-test-inproc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let lsm = probe::probe().lsm_works();
        let mut loaded = loader::load(&loader::Options {
            ring_bytes: 1 << 16,
            lsm,
            pin_dir: pin_dir.clone(),
        })
        .expect("loading the kernel programs");
        let mut enforcer = Enforcer::take(&mut loaded.ebpf).expect("the rule maps");
        let mode = if lsm { MODE_LSM } else { MODE_FALLBACK };
        enforcer.configure(mode, true).unwrap();
        let tags = BpfHashMap::try_from(loaded.ebpf.take_map("TAGS").unwrap()).unwrap();
        Kernel {
            enforcer,
            tags,
            loaded,
            pin_dir,
        }
    }

    /// Puts process `pid` in `session` (what `agentgate exec` has the
    /// daemon do); its children inherit it.
    pub fn tag(&mut self, pid: u32, session: SessionId) {
        let tag = ProcTag {
            session,
            start_ns: 0,
            ppid: std::process::id(),
            _pad: 0,
        };
        self.tags.insert(pid, tag, 0).unwrap();
    }

    /// Every entry of the rule map `name` (`PATH_RULES`, …), read through its
    /// pin, sorted.
    pub fn path_rules(&self, name: &str) -> Vec<(u32, PathRuleKey, RuleEntry)> {
        let data = MapData::from_pin(self.loaded.generation.map(name)).unwrap();
        let trie: LpmTrie<MapData, PathRuleKey, RuleEntry> =
            LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
        let mut out: Vec<_> = trie
            .iter()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.prefix_len(), k.data(), v)
            })
            .collect();
        out.sort_by(|a, b| {
            (a.0, a.1.ruleset, a.1.access, a.1.path).cmp(&(b.0, b.1.ruleset, b.1.access, b.1.path))
        });
        out
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for g in pins::generations(&self.pin_dir) {
            if let Err(e) = g.remove() {
                eprintln!("removing {}: {e}", g.dir.display());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

/// A `PATH_RULES` key for `path`: an exact path (its NUL counts) or, when it
/// ends in `/`, everything under it.
pub fn path_key(path: &str, access: Access) -> (u32, PathRuleKey) {
    let mut key = PathRuleKey {
        ruleset: 0,
        access: access as u8,
        path: [0; RULE_PATH_LEN],
    };
    key.path[..path.len()].copy_from_slice(path.as_bytes());
    let bytes = if path.ends_with('/') {
        path.len()
    } else {
        path.len() + 1
    };
    (path_prefix_bits(bytes), key)
}

/// An entry with one slot: `verdict` by rule `rule`, setting `set_labels`.
pub fn entry(verdict: Verdict, rule: u32, set_labels: u64) -> RuleEntry {
    let mut e = RuleEntry::default();
    e.slots[0] = RuleSlot {
        require: 0,
        forbid: 0,
        set_labels,
        rule,
        verdict: verdict as u8,
        _pad: [0; 3],
    };
    e
}
