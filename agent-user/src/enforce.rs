//! The compiled policy in the kernel: installs each session's ruleset into
//! the rule maps, swaps it on reload, marks sessions expired, and tells the
//! programs how to enforce.
use std::{collections::HashMap, path::PathBuf};

use agent_common::{
    EnforceConfig, InodeKey, KNOWN_INODES_LEN, KnownName, Layer, NetRuleKey, PathRuleKey,
    RuleEntry, SESSION_EXPIRED, SESSION_EXPIRED_KILL, SessionId, SessionPolicy, map,
};
pub use agentgate_policy::KernelRuleset;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie},
};
use thiserror::Error;

use crate::identity;

#[derive(Debug, Error)]
pub enum EnforceError {
    #[error("the kernel object lacks map {0}")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("no ruleset installed for session {0}")]
    NoSession(SessionId),
    #[error("session {0} has no tool {1}")]
    NoTool(SessionId, String),
    #[error(
        "no kernel label bit is left for label {0:?}: the other 63 are the policy's or held by \
         sessions (labels a reload dropped keep their bit while a session holds them)"
    )]
    NoLabelBit(String),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> EnforceError {
    move |source| EnforceError::Map { map, source }
}

/// Keys of one installed ruleset, to take it out again.
struct InstalledRuleset {
    layer: Layer,
    path: Vec<Key<PathRuleKey>>,
    suffix: Vec<Key<PathRuleKey>>,
    net: Vec<Key<NetRuleKey>>,
}

/// A session's rulesets in the kernel: its rules, and one per tool of its
/// profile (a tool call points the session's tool layer at one of them).
struct Installed {
    rules: InstalledRuleset,
    tools: HashMap<String, InstalledRuleset>,
    /// The tool call in progress.
    active_tool: Option<String>,
    /// Grant id → the entries it put in, with what each one replaced.
    grants: HashMap<u64, GrantEntries>,
    /// Where the files its rules protect are (see `identity`).
    places: Vec<PathBuf>,
}

/// A grant's keys, each with the entry that was at that exact key before
/// (`None`: there was none, and revoking deletes the key).
#[derive(Default)]
struct GrantEntries {
    path: Vec<(Key<PathRuleKey>, Option<RuleEntry>)>,
    net: Vec<(Key<NetRuleKey>, Option<RuleEntry>)>,
}

impl Installed {
    /// The session's rulesets or grants put an entry at exactly `key`.
    fn holds_path(&self, key: &Key<PathRuleKey>) -> bool {
        let rulesets = std::iter::once(&self.rules).chain(self.tools.values());
        holds(rulesets.flat_map(|r| &r.path), key)
            || holds(
                self.grants
                    .values()
                    .flat_map(|g| g.path.iter().map(|(k, _)| k)),
                key,
            )
    }

    fn holds_net(&self, key: &Key<NetRuleKey>) -> bool {
        let rulesets = std::iter::once(&self.rules).chain(self.tools.values());
        holds(rulesets.flat_map(|r| &r.net), key)
            || holds(
                self.grants
                    .values()
                    .flat_map(|g| g.net.iter().map(|(k, _)| k)),
                key,
            )
    }
}

/// `key` is among `keys`, prefix length and all.
fn holds<'a, K: aya::Pod + PartialEq + 'a>(
    mut keys: impl Iterator<Item = &'a Key<K>>,
    key: &Key<K>,
) -> bool {
    keys.any(|k| k.prefix_len() == key.prefix_len() && k.data() == key.data())
}

// Who writes a session's labels. The kernel's programs OR the labels a call
// earns into `SESSION_LABELS` (an atomic OR, decide.rs); the daemon never
// writes there: it reads, and deletes when the session ends. The labels the
// daemon decides go in the session's `SessionPolicy.labels`, a value only
// the daemon writes (whole); the kernel judges by the union of the two. So
// nothing the daemon writes can drop a bit the kernel set: a read, OR and
// write-back of one map value from user space is not atomic with the
// kernel's OR, and overwriting it (as a reload did) dropped bits outright.
// Chosen over an mmap-able array with user-space atomics because it needs
// no slot per session to allocate and keep across restarts, and costs the
// kernel no extra look-up (it reads the policy value anyway).
//
// Neither split maps nor atomics make a reload's renumbering race-free:
// between putting the new rules in force and rewriting the mask, the
// kernel judges (and sets bits) with one numbering against a mask in the
// other. So kernel bits are never renumbered: `LabelBits` gives each label
// a kernel bit for good (saved with the sessions, so it survives restarts)
// and translates the policy's numbering, which changes with reloads, at
// this boundary.

/// Bits of a label mask.
const MAX_LABEL_BITS: usize = 64;

/// Which label each bit of the kernel's label masks (rule entries,
/// `SESSION_LABELS`, `SessionPolicy.labels`) stands for, and the policy's
/// bits in those terms.
#[derive(Debug, Clone)]
struct LabelBits {
    /// Kernel bit → label name (`""`: none).
    names: Vec<String>,
    /// Policy bit → kernel bit.
    kernel_bit: Vec<u8>,
}

impl Default for LabelBits {
    /// No policy's labels given yet: the kernel's bits are the policy's.
    fn default() -> Self {
        Self {
            names: vec![String::new(); MAX_LABEL_BITS],
            kernel_bit: (0..MAX_LABEL_BITS as u8).collect(),
        }
    }
}

impl LabelBits {
    fn to_kernel(&self, mask: u64) -> u64 {
        self.kernel_bit
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .fold(0, |a, (_, k)| a | 1 << k)
    }

    fn to_policy(&self, mask: u64) -> u64 {
        self.kernel_bit
            .iter()
            .enumerate()
            .filter(|(_, k)| mask & (1 << **k) != 0)
            .fold(0, |a, (i, _)| a | 1 << i)
    }

    /// The table for a policy with labels `names` (in its bit order);
    /// `held`: the kernel bits some session holds, asked for only when no
    /// bit is free.
    fn with_policy(
        &self,
        names: &[String],
        held: impl FnOnce() -> u64,
    ) -> Result<LabelBits, EnforceError> {
        let mut table = self.names.clone();
        // The bits of the labels in force are not given away.
        let mut taken = 0u64;
        for &k in &self.kernel_bit {
            if !table[k as usize].is_empty() {
                taken |= 1 << k;
            }
        }
        let mut kernel_bit = vec![None; names.len()];
        for (i, name) in names.iter().enumerate() {
            if let Some(k) = table.iter().position(|n| n == name) {
                kernel_bit[i] = Some(k as u8);
                taken |= 1 << k;
            }
        }
        let mut held = Some(held);
        let mut held_bits = 0;
        for (i, name) in names.iter().enumerate() {
            if kernel_bit[i].is_some() {
                continue;
            }
            let free = (0..MAX_LABEL_BITS).find(|&k| taken & (1 << k) == 0 && table[k].is_empty());
            let k = match free {
                Some(k) => k,
                None => {
                    if let Some(h) = held.take() {
                        held_bits = h();
                    }
                    (0..MAX_LABEL_BITS)
                        .find(|&k| taken & (1 << k) == 0 && held_bits & (1 << k) == 0)
                        .ok_or_else(|| EnforceError::NoLabelBit(name.clone()))?
                }
            };
            table[k] = name.clone();
            taken |= 1 << k;
            kernel_bit[i] = Some(k as u8);
        }
        Ok(LabelBits {
            names: table,
            kernel_bit: kernel_bit.into_iter().map(|k| k.unwrap_or(0)).collect(),
        })
    }

    /// A rule entry with its label masks in kernel bits.
    fn entry(&self, e: &RuleEntry) -> RuleEntry {
        let mut out = *e;
        for slot in &mut out.slots {
            slot.require = self.to_kernel(slot.require);
            slot.forbid = self.to_kernel(slot.forbid);
            slot.set_labels = self.to_kernel(slot.set_labels);
        }
        out
    }
}

pub struct Enforcer {
    path: LpmTrie<MapData, PathRuleKey, RuleEntry>,
    suffix: LpmTrie<MapData, PathRuleKey, RuleEntry>,
    net: LpmTrie<MapData, NetRuleKey, RuleEntry>,
    policy: BpfHashMap<MapData, SessionId, SessionPolicy>,
    /// `SESSION_LABELS`: the kernel's to write (see [`Enforcer::labels`]).
    kernel_labels: BpfHashMap<MapData, SessionId, u64>,
    /// `SESSION_LOST`: the kernel's to write (see [`Enforcer::lost`]).
    lost: BpfHashMap<MapData, SessionId, u64>,
    config: Array<MapData, EnforceConfig>,
    installed: HashMap<SessionId, Installed>,
    next_ruleset: u32,
    label_bits: LabelBits,
    /// `KNOWN_INODES`, and what this daemon put in it.
    known: BpfHashMap<MapData, InodeKey, KnownName>,
    known_now: HashMap<InodeKey, PathBuf>,
}

impl Enforcer {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, EnforceError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, EnforceError> {
            let map = ebpf.take_map(name).ok_or(EnforceError::MissingMap(name))?;
            T::try_from(map).map_err(map_err(name))
        }
        let policy: BpfHashMap<MapData, SessionId, SessionPolicy> = take(ebpf, "SESSION_POLICY")?;
        // Adopted (pinned) maps hold a previous daemon's rulesets: new ids
        // start past theirs.
        let next_ruleset = policy
            .iter()
            .filter_map(Result::ok)
            .map(|(_, p)| p.rules.ruleset.max(p.tool.ruleset))
            .max()
            .unwrap_or(0)
            .wrapping_add(1)
            .max(1);
        Ok(Self {
            path: take(ebpf, "PATH_RULES")?,
            suffix: take(ebpf, "PATH_SUFFIX_RULES")?,
            net: take(ebpf, "NET_RULES")?,
            policy,
            kernel_labels: take(ebpf, "SESSION_LABELS")?,
            lost: take(ebpf, map::SESSION_LOST)?,
            config: take(ebpf, "CONFIG")?,
            installed: HashMap::new(),
            next_ruleset,
            label_bits: LabelBits::default(),
            known: take(ebpf, map::KNOWN_INODES)?,
            known_now: HashMap::new(),
        })
    }

    /// After adopting pinned maps: takes out the sessions `keep` rejects
    /// (their policy and labels) and every rule entry no remaining session
    /// points at (a previous daemon's rulesets, replaced since).
    pub fn sweep(&mut self, keep: impl Fn(SessionId) -> bool) -> usize {
        let sessions: Vec<(SessionId, SessionPolicy)> =
            self.policy.iter().filter_map(Result::ok).collect();
        let mut live = std::collections::HashSet::new();
        for (id, p) in sessions {
            if keep(id) {
                live.insert(p.rules.ruleset);
                live.insert(p.tool.ruleset);
            } else {
                let _ = self.policy.remove(&id);
                let _ = self.kernel_labels.remove(&id);
                let _ = self.lost.remove(&id);
            }
        }
        // The kernel's own maps may name sessions no policy entry does.
        for map in [&mut self.kernel_labels, &mut self.lost] {
            let ids: Vec<SessionId> = map.keys().filter_map(Result::ok).collect();
            for id in ids.into_iter().filter(|id| !keep(*id)) {
                let _ = map.remove(&id);
            }
        }
        let mut removed = 0;
        let stale: Vec<_> = self
            .path
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.data().ruleset))
            .collect();
        for k in stale {
            removed += self.path.remove(&k).is_ok() as usize;
        }
        let stale: Vec<_> = self
            .suffix
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.data().ruleset))
            .collect();
        for k in stale {
            removed += self.suffix.remove(&k).is_ok() as usize;
        }
        let stale: Vec<_> = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.data().ruleset))
            .collect();
        for k in stale {
            removed += self.net.remove(&k).is_ok() as usize;
        }
        removed
    }

    pub fn configure(&mut self, mode: u32, block: bool) -> Result<(), EnforceError> {
        let cfg = EnforceConfig {
            mode,
            block: block as u32,
            guard_tgid: std::process::id(),
            _pad: 0,
        };
        self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    /// The daemon is leaving: no pid is guarded any more (the number will
    /// be reused), the rest of the configuration stays in force.
    pub fn unguard(&mut self) -> Result<(), EnforceError> {
        let mut cfg = self.config.get(&0, 0).map_err(map_err("CONFIG"))?;
        cfg.guard_tgid = 0;
        self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    /// Puts `rules` (and a ruleset per tool) in force for `session`, opened
    /// from `parent` (0: none), replacing what it had. The new entries go in
    /// under fresh ruleset ids before the session is pointed at them, and
    /// the old ones come out after: a call is judged by one whole ruleset or
    /// the other, never a mix.
    pub fn install(
        &mut self,
        session: SessionId,
        rules: &KernelRuleset,
        tools: &[(&str, &KernelRuleset)],
        parent: SessionId,
    ) -> Result<(), EnforceError> {
        let mut added = Installed {
            rules: self.insert_ruleset(rules)?,
            tools: HashMap::new(),
            active_tool: None,
            grants: HashMap::new(),
            places: identity::protected_places(rules),
        };
        for (name, t) in tools {
            match self.insert_ruleset(t) {
                Ok(r) => {
                    added.tools.insert((*name).to_owned(), r);
                }
                Err(e) => {
                    self.remove_installed(&added);
                    return Err(e);
                }
            }
        }
        let old = self.installed.get(&session);
        // A tool call in progress carries over to the new rules.
        added.active_tool = old
            .and_then(|o| o.active_tool.clone())
            .filter(|t| added.tools.contains_key(t));
        let (flags, labels) = self
            .policy
            .get(&session, 0)
            .map_or((0, 0), |p| (p.flags, p.labels));
        let policy = SessionPolicy {
            rules: added.rules.layer,
            tool: added
                .active_tool
                .as_ref()
                .and_then(|t| added.tools.get(t))
                .map_or(Layer::default(), |t| t.layer),
            flags,
            _pad: 0,
            parent,
            labels,
        };
        if let Err(e) = self.policy.insert(session, policy, 0) {
            self.remove_installed(&added);
            return Err(map_err("SESSION_POLICY")(e));
        }
        if let Some(old) = self.installed.insert(session, added) {
            self.remove_installed(&old);
        }
        self.refresh_known_inodes();
        Ok(())
    }

    /// How many protected files the kernel knows by inode.
    pub fn known_inodes(&self) -> usize {
        self.known_now.len()
    }

    /// Brings `KNOWN_INODES` up to date with the files the installed rules
    /// protect, as they are on disk now.
    pub fn refresh_known_inodes(&mut self) {
        let mut places: Vec<PathBuf> = self
            .installed
            .values()
            .flat_map(|i| i.places.iter().cloned())
            .collect();
        places.sort();
        places.dedup();
        let now = identity::scan(&places, KNOWN_INODES_LEN as usize);
        for key in self.known_now.keys() {
            if !now.contains_key(key) {
                let _ = self.known.remove(key);
            }
        }
        for (key, path) in &now {
            if self.known_now.get(key) != Some(path)
                && let Err(e) = self.known.insert(key, identity::known_name(path), 0)
            {
                log::warn!("{}: not known by its inode: {e}", path.display());
            }
        }
        self.known_now = now;
    }

    /// Inserts one ruleset's entries under a fresh ruleset id.
    fn insert_ruleset(&mut self, rules: &KernelRuleset) -> Result<InstalledRuleset, EnforceError> {
        let ruleset = self.next_ruleset;
        self.next_ruleset = self.next_ruleset.wrapping_add(1).max(1);
        let mut added = InstalledRuleset {
            layer: Layer {
                ruleset,
                ..rules.layer
            },
            path: Vec::new(),
            suffix: Vec::new(),
            net: Vec::new(),
        };
        if let Err(e) = self.insert_all(ruleset, rules, &mut added) {
            self.remove_keys(&added);
            return Err(e);
        }
        Ok(added)
    }

    fn insert_all(
        &mut self,
        ruleset: u32,
        rules: &KernelRuleset,
        added: &mut InstalledRuleset,
    ) -> Result<(), EnforceError> {
        let bits_of = &self.label_bits;
        for (bits, key, entry) in &rules.path {
            let key = Key::new(*bits, PathRuleKey { ruleset, ..*key });
            self.path
                .insert(&key, bits_of.entry(entry), 0)
                .map_err(map_err("PATH_RULES"))?;
            added.path.push(key);
        }
        for (bits, key, entry) in &rules.suffix {
            let key = Key::new(*bits, PathRuleKey { ruleset, ..*key });
            self.suffix
                .insert(&key, bits_of.entry(entry), 0)
                .map_err(map_err("PATH_SUFFIX_RULES"))?;
            added.suffix.push(key);
        }
        for (bits, key, entry) in &rules.net {
            let key = Key::new(*bits, NetRuleKey { ruleset, ..*key });
            self.net
                .insert(&key, bits_of.entry(entry), 0)
                .map_err(map_err("NET_RULES"))?;
            added.net.push(key);
        }
        Ok(())
    }

    fn remove_installed(&mut self, i: &Installed) {
        for g in i.grants.values() {
            for (k, _) in &g.path {
                let _ = self.path.remove(k);
            }
            for (k, _) in &g.net {
                let _ = self.net.remove(k);
            }
        }
        self.remove_keys(&i.rules);
        for t in i.tools.values() {
            self.remove_keys(t);
        }
    }

    fn remove_keys(&mut self, keys: &InstalledRuleset) {
        debug_assert!(keys.layer.ruleset != 0);
        for k in &keys.path {
            let _ = self.path.remove(k);
        }
        for k in &keys.suffix {
            let _ = self.suffix.remove(k);
        }
        for k in &keys.net {
            let _ = self.net.remove(k);
        }
    }

    /// Points the session's tool layer at `tool`'s ruleset (`None`: no tool
    /// call, the session's rules alone).
    pub fn set_tool(&mut self, session: SessionId, tool: Option<&str>) -> Result<(), EnforceError> {
        let installed = self
            .installed
            .get_mut(&session)
            .ok_or(EnforceError::NoSession(session))?;
        let layer = match tool {
            None => Layer::default(),
            Some(t) => {
                installed
                    .tools
                    .get(t)
                    .ok_or_else(|| EnforceError::NoTool(session, t.to_owned()))?
                    .layer
            }
        };
        let mut p = self
            .policy
            .get(&session, 0)
            .map_err(|_| EnforceError::NoSession(session))?;
        p.tool = layer;
        self.policy
            .insert(session, p, 0)
            .map_err(map_err("SESSION_POLICY"))?;
        installed.active_tool = tool.map(str::to_owned);
        Ok(())
    }

    /// Adds a just-in-time grant's entries to the session's rulesets (its
    /// rules: `None`, and its tools by name); what they replace comes back
    /// when the grant is revoked.
    pub fn grant(
        &mut self,
        session: SessionId,
        grant: u64,
        rules: &[(Option<&str>, KernelRuleset)],
    ) -> Result<(), EnforceError> {
        let installed = self
            .installed
            .get(&session)
            .ok_or(EnforceError::NoSession(session))?;
        let mut entries = GrantEntries::default();
        let mut done = Ok(());
        'rules: for (tool, rules) in rules {
            let ruleset = match tool {
                None => installed.rules.layer.ruleset,
                Some(t) => match installed.tools.get(*t) {
                    Some(r) => r.layer.ruleset,
                    None => continue,
                },
            };
            // What was at this very key: an entry only if this enforcer
            // (the maps' one writer) put one there, for the session's
            // rulesets or an earlier grant. A look-up answers with the
            // longest match, which for a key nobody put in is a shorter
            // prefix's entry: writing that back on revoke would add a key
            // that was never there.
            for (bits, key, entry) in &rules.path {
                let key = Key::new(*bits, PathRuleKey { ruleset, ..*key });
                let before = (installed.holds_path(&key)
                    || holds(entries.path.iter().map(|(k, _)| k), &key))
                .then(|| self.path.get(&key, 0).ok())
                .flatten();
                if let Err(e) = self.path.insert(&key, self.label_bits.entry(entry), 0) {
                    done = Err(map_err("PATH_RULES")(e));
                    break 'rules;
                }
                entries.path.push((key, before));
            }
            for (bits, key, entry) in &rules.net {
                let key = Key::new(*bits, NetRuleKey { ruleset, ..*key });
                let before = (installed.holds_net(&key)
                    || holds(entries.net.iter().map(|(k, _)| k), &key))
                .then(|| self.net.get(&key, 0).ok())
                .flatten();
                if let Err(e) = self.net.insert(&key, self.label_bits.entry(entry), 0) {
                    done = Err(map_err("NET_RULES")(e));
                    break 'rules;
                }
                entries.net.push((key, before));
            }
        }
        if let Err(e) = done {
            self.restore(&entries);
            return Err(e);
        }
        if let Some(i) = self.installed.get_mut(&session) {
            i.grants.insert(grant, entries);
        }
        Ok(())
    }

    /// Takes a grant's entries out again, restoring what they replaced.
    pub fn revoke(&mut self, session: SessionId, grant: u64) {
        let Some(entries) = self
            .installed
            .get_mut(&session)
            .and_then(|i| i.grants.remove(&grant))
        else {
            return;
        };
        self.restore(&entries);
    }

    /// Puts back, last first, what each of a grant's keys held: its old
    /// entry, or nothing.
    fn restore(&mut self, entries: &GrantEntries) {
        for (key, before) in entries.path.iter().rev() {
            let _ = match before {
                Some(e) => self.path.insert(key, e, 0),
                None => self.path.remove(key),
            };
        }
        for (key, before) in entries.net.iter().rev() {
            let _ = match before {
                Some(e) => self.net.insert(key, e, 0),
                None => self.net.remove(key),
            };
        }
    }

    /// Takes a session's rules, labels and lost-record count out of the
    /// kernel.
    pub fn remove(&mut self, session: SessionId) {
        let _ = self.policy.remove(&session);
        let _ = self.kernel_labels.remove(&session);
        let _ = self.lost.remove(&session);
        if let Some(i) = self.installed.remove(&session) {
            self.remove_installed(&i);
            self.refresh_known_inodes();
        }
    }

    /// Past its TTL: from now on the kernel refuses (or kills) every call.
    pub fn expire(&mut self, session: SessionId, kill: bool) -> Result<(), EnforceError> {
        let mut p = self
            .policy
            .get(&session, 0)
            .map_err(|_| EnforceError::NoSession(session))?;
        p.flags |= if kill {
            SESSION_EXPIRED_KILL
        } else {
            SESSION_EXPIRED
        };
        self.policy
            .insert(session, p, 0)
            .map_err(map_err("SESSION_POLICY"))
    }

    /// Records of the session's calls that the ring buffer had no room for:
    /// the daemon never saw those calls (the kernel's verdict stood alone).
    pub fn lost(&self, session: SessionId) -> u64 {
        self.lost.get(&session, 0).unwrap_or(0)
    }

    /// The labels the session holds, set by the kernel or the daemon, in
    /// the policy's bits.
    pub fn labels(&self, session: SessionId) -> u64 {
        let kernel = self.kernel_labels.get(&session, 0).unwrap_or(0);
        let daemon = self.policy.get(&session, 0).map_or(0, |p| p.labels);
        self.label_bits.to_policy(kernel | daemon)
    }

    /// Adds labels decided in user space (the policy's bits), so that the
    /// kernel's next judgement sees them.
    pub fn add_labels(&mut self, session: SessionId, bits: u64) -> Result<(), EnforceError> {
        self.carry_labels(session, self.label_bits.to_kernel(bits))
    }

    /// Adds labels in the kernel's bits (an earlier object's masks, read in
    /// the numbering [`Enforcer::adopt_labels`] was given).
    pub fn carry_labels(&mut self, session: SessionId, bits: u64) -> Result<(), EnforceError> {
        let mut p = self
            .policy
            .get(&session, 0)
            .map_err(|_| EnforceError::NoSession(session))?;
        if p.labels & bits == bits {
            return Ok(());
        }
        p.labels |= bits;
        self.policy
            .insert(session, p, 0)
            .map_err(map_err("SESSION_POLICY"))
    }

    /// Makes the session hold exactly `bits` (the policy's): the kernel's
    /// own labels cleared, the daemon's set. Not atomic with the kernel's
    /// writes — for the kernel-decision tests (tests/host/decide.rs), which
    /// judge one call at a time; the daemon only ever adds.
    pub fn reset_labels(&mut self, session: SessionId, bits: u64) -> Result<(), EnforceError> {
        let _ = self.kernel_labels.remove(&session);
        let mut p = self
            .policy
            .get(&session, 0)
            .map_err(|_| EnforceError::NoSession(session))?;
        p.labels = self.label_bits.to_kernel(bits);
        self.policy
            .insert(session, p, 0)
            .map_err(map_err("SESSION_POLICY"))
    }

    /// What each bit of the kernel's label masks stands for, to save with
    /// the sessions (`""`: no label).
    pub fn label_names(&self) -> Vec<String> {
        let mut names = self.label_bits.names.clone();
        while names.last().is_some_and(String::is_empty) {
            names.pop();
        }
        names
    }

    /// After a restart: the kernel's masks (pinned maps, an earlier object's
    /// maps) are in the numbering an earlier daemon saved, `names[bit]`.
    /// Call before [`Enforcer::use_labels`] and before anything is installed.
    pub fn adopt_labels(&mut self, names: &[String]) {
        let mut table: Vec<String> = names.iter().take(MAX_LABEL_BITS).cloned().collect();
        table.resize(MAX_LABEL_BITS, String::new());
        self.label_bits = LabelBits {
            names: table,
            kernel_bit: (0..MAX_LABEL_BITS as u8).collect(),
        };
    }

    /// The policy's labels, in its bit order: rules installed from now on
    /// and masks passed in and out are in these bits. A label keeps the
    /// kernel bit it had; a new one takes a free bit, or the bit of a label
    /// no longer declared that no session holds. The labels of the policy in
    /// force keep theirs too, so that calling this again with them undoes
    /// it (a reload that fails half-way).
    pub fn use_labels(&mut self, names: &[String]) -> Result<(), EnforceError> {
        self.label_bits = self.label_bits.with_policy(names, || self.held_bits())?;
        Ok(())
    }

    /// Kernel bits some session holds.
    fn held_bits(&self) -> u64 {
        let kernel = self
            .kernel_labels
            .iter()
            .filter_map(Result::ok)
            .map(|(_, l)| l);
        let daemon = self
            .policy
            .iter()
            .filter_map(Result::ok)
            .map(|(_, p)| p.labels);
        kernel.chain(daemon).fold(0, |a, b| a | b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn policy(bits: &LabelBits, n: &[&str]) -> LabelBits {
        bits.with_policy(&names(n), || panic!("no bit was to be reused"))
            .unwrap()
    }

    #[test]
    fn before_any_policy_the_bits_are_the_policys() {
        let b = LabelBits::default();
        assert_eq!(b.to_kernel(0b1011), 0b1011);
        assert_eq!(b.to_policy(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_label_keeps_its_kernel_bit_when_a_reload_renumbers_it() {
        let first = policy(&LabelBits::default(), &["secret-read", "hot"]);
        assert_eq!(first.to_kernel(0b01), 0b01);
        assert_eq!(first.to_kernel(0b10), 0b10);
        // A label declared first: the policy's bits move, the kernel's stay.
        let second = policy(&first, &["note", "secret-read", "hot"]);
        assert_eq!(second.to_kernel(0b010), 0b001, "secret-read");
        assert_eq!(second.to_kernel(0b100), 0b010, "hot");
        assert_eq!(second.to_kernel(0b001), 0b100, "note: a fresh bit");
        assert_eq!(second.to_policy(0b001), 0b010);
        // A rule entry is translated slot by slot.
        let mut e = RuleEntry::default();
        e.slots[1].require = 0b010;
        e.slots[1].forbid = 0b100;
        e.slots[1].set_labels = 0b001;
        let k = second.entry(&e);
        assert_eq!(
            (k.slots[1].require, k.slots[1].forbid, k.slots[1].set_labels),
            (0b001, 0b010, 0b100)
        );
        assert_eq!(k.slots[0], e.slots[0]);
    }

    #[test]
    fn a_dropped_label_keeps_its_bit_and_a_failed_reload_is_undone() {
        let first = policy(&LabelBits::default(), &["a", "b"]);
        let second = policy(&first, &["b"]);
        assert_eq!(second.to_policy(0b11), 0b1, "a is no label of the policy");
        // Back again: under the same bit, so a session that held it still does.
        let third = policy(&second, &["a", "b", "c"]);
        assert_eq!(third.to_kernel(0b111), 0b111);
        // Undoing a reload: the old policy's labels have their old bits.
        let undone = policy(&third, &["b"]);
        assert_eq!(undone.kernel_bit, second.kernel_bit);
    }

    #[test]
    fn the_bits_a_previous_daemon_saved_are_kept() {
        let mut saved = LabelBits::default();
        saved.names[0] = "x".into();
        saved.names[2] = "secret-read".into();
        let b = policy(&saved, &["secret-read", "y"]);
        assert_eq!(b.to_kernel(0b01), 0b100);
        assert_eq!(b.to_kernel(0b10), 0b010, "the lowest free bit");
    }

    #[test]
    fn a_bit_is_reused_only_when_no_session_holds_it() {
        let all: Vec<String> = (0..64).map(|i| format!("l{i}")).collect();
        let full = LabelBits::default()
            .with_policy(&all, || unreachable!())
            .unwrap();
        // All 64 in force: none is given away, held or not.
        let e = full.with_policy(&names(&["l0", "new"]), || 0).unwrap_err();
        assert!(matches!(e, EnforceError::NoLabelBit(_)), "{e}");
        // Only l0 in force: the others' bits are free unless a session
        // holds them (l1 here).
        let small = full
            .with_policy(&names(&["l0"]), || unreachable!())
            .unwrap();
        let reused = small.with_policy(&names(&["l0", "new"]), || 0b10).unwrap();
        assert_eq!(reused.to_kernel(0b10), 0b100, "l1 is held: l2's bit");
        assert_eq!(reused.names[2], "new");
        let e = small
            .with_policy(&names(&["l0", "new"]), || !1)
            .unwrap_err();
        assert!(matches!(e, EnforceError::NoLabelBit(_)), "{e}");
    }
}
