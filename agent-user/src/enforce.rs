//! The compiled policy in the kernel: installs each session's ruleset into
//! the rule maps, swaps it on reload, marks sessions expired, and tells the
//! programs how to enforce.
use std::collections::HashMap;

use agent_common::{
    EnforceConfig, Layer, NetRuleKey, PathRuleKey, RuleEntry, SESSION_EXPIRED,
    SESSION_EXPIRED_KILL, SessionId, SessionPolicy,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie},
};
use thiserror::Error;

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
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> EnforceError {
    move |source| EnforceError::Map { map, source }
}

/// One session's compiled policy as kernel map contents (what
/// `policy::compile` produces). Keys carry ruleset 0: the enforcer assigns
/// the real id when it installs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelRuleset {
    /// `PATH_RULES`: (LPM prefix bits, key, entry).
    pub path: Vec<(u32, PathRuleKey, RuleEntry)>,
    /// `PATH_SUFFIX_RULES`: keys hold the path reversed.
    pub suffix: Vec<(u32, PathRuleKey, RuleEntry)>,
    /// `NET_RULES`.
    pub net: Vec<(u32, NetRuleKey, RuleEntry)>,
    /// Defaults per access (its `ruleset` is the enforcer's).
    pub layer: Layer,
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

pub struct Enforcer {
    path: LpmTrie<MapData, PathRuleKey, RuleEntry>,
    suffix: LpmTrie<MapData, PathRuleKey, RuleEntry>,
    net: LpmTrie<MapData, NetRuleKey, RuleEntry>,
    policy: BpfHashMap<MapData, SessionId, SessionPolicy>,
    labels: BpfHashMap<MapData, SessionId, u64>,
    config: Array<MapData, EnforceConfig>,
    installed: HashMap<SessionId, Installed>,
    next_ruleset: u32,
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
            labels: take(ebpf, "SESSION_LABELS")?,
            config: take(ebpf, "CONFIG")?,
            installed: HashMap::new(),
            next_ruleset,
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
                let _ = self.labels.remove(&id);
            }
        }
        let labelled: Vec<SessionId> = self.labels.keys().filter_map(Result::ok).collect();
        for id in labelled {
            if !keep(id) {
                let _ = self.labels.remove(&id);
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
        let flags = self.policy.get(&session, 0).map(|p| p.flags).unwrap_or(0);
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
        };
        if let Err(e) = self.policy.insert(session, policy, 0) {
            self.remove_installed(&added);
            return Err(map_err("SESSION_POLICY")(e));
        }
        if let Some(old) = self.installed.insert(session, added) {
            self.remove_installed(&old);
        }
        Ok(())
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
        for (bits, key, entry) in &rules.path {
            let key = Key::new(*bits, PathRuleKey { ruleset, ..*key });
            self.path
                .insert(&key, entry, 0)
                .map_err(map_err("PATH_RULES"))?;
            added.path.push(key);
        }
        for (bits, key, entry) in &rules.suffix {
            let key = Key::new(*bits, PathRuleKey { ruleset, ..*key });
            self.suffix
                .insert(&key, entry, 0)
                .map_err(map_err("PATH_SUFFIX_RULES"))?;
            added.suffix.push(key);
        }
        for (bits, key, entry) in &rules.net {
            let key = Key::new(*bits, NetRuleKey { ruleset, ..*key });
            self.net
                .insert(&key, entry, 0)
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
                if let Err(e) = self.path.insert(&key, entry, 0) {
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
                if let Err(e) = self.net.insert(&key, entry, 0) {
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

    /// Takes a session's rules and labels out of the kernel.
    pub fn remove(&mut self, session: SessionId) {
        let _ = self.policy.remove(&session);
        let _ = self.labels.remove(&session);
        if let Some(i) = self.installed.remove(&session) {
            self.remove_installed(&i);
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

    /// The labels the session holds (set by the kernel or the daemon).
    pub fn labels(&self, session: SessionId) -> u64 {
        self.labels.get(&session, 0).unwrap_or(0)
    }

    /// Replaces the session's labels (after a reload renumbered them).
    pub fn set_labels(&mut self, session: SessionId, bits: u64) -> Result<(), EnforceError> {
        self.labels
            .insert(session, bits, 0)
            .map_err(map_err("SESSION_LABELS"))
    }

    /// Adds labels decided in user space, so that the kernel's next
    /// judgement sees them.
    pub fn add_labels(&mut self, session: SessionId, bits: u64) -> Result<(), EnforceError> {
        let now = self.labels(session);
        if now & bits == bits {
            return Ok(());
        }
        self.labels
            .insert(session, now | bits, 0)
            .map_err(map_err("SESSION_LABELS"))
    }
}
