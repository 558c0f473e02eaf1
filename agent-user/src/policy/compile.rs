//! Compiling a policy set, for one session, into the kernel's map contents
//! (see "enforcement" in `agent-common`).
//!
//! The kernel takes the longest match only, so every entry carries the
//! verdicts of all the less specific rules that cover its key; a rule with
//! `except` puts an entry on each exception so that the longest match there
//! leaves the rule out. Rules the kernel cannot decide stay in user space;
//! when such a rule could let through what the profile's default refuses,
//! the kernel gets a widened copy of it that allows (rule id kept), and the
//! daemon's engine gives the real verdict: the kernel never refuses what the
//! engine would let through.
use std::{cmp::Reverse, collections::BTreeSet, net::Ipv6Addr};

use agent_common::{
    ACCESS_COUNT, Access, Layer, NetRuleKey, PathRuleKey, RULE_PATH_LEN, RULE_SLOTS, RuleEntry,
    RuleSlot, Verdict, net_prefix_bits, path_prefix_bits,
};
use ipnet::Ipv6Net;
use thiserror::Error;

use super::{
    context::SessionContext,
    matcher::{AccessMask, ConnectMatch, PathSet, Subject, TargetMatch},
    pattern::KernelPath,
    set::{PolicySet, Profile, Rule, RuleId},
};
use crate::{enforce::KernelRuleset, engine::stronger};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("unknown profile `{0}`")]
    UnknownProfile(String),
    #[error("profile `{0}` declares no tool `{1}`")]
    UnknownTool(String, String),
}

/// One session's ruleset (keys carry ruleset 0: the enforcer gives the
/// real id when it installs them), and how far it goes.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub kernel: KernelRuleset,
    /// Per [`Access`]: the kernel's verdict is the engine's (no rule on this
    /// access is left to user space and no entry overflowed its slots).
    pub exact: [bool; ACCESS_COUNT],
}

#[derive(Clone, Debug)]
enum Key {
    Path(KernelPath),
    Net { net: Ipv6Net, port: u16 },
}

struct KernelRule {
    access: AccessMask,
    keys: Vec<Key>,
    except: Vec<KernelPath>,
    slot: RuleSlot,
}

/// A rule as the kernel runs it.
struct KernelForm {
    keys: Vec<Key>,
    except: Vec<KernelPath>,
    /// The kernel refuses less than the rule (a general glob among the
    /// exceptions of a refusing rule, left out under its literal prefix):
    /// why. The daemon judges those calls.
    approximate: Option<String>,
}

/// Where a rule runs in this session: its kernel keys and exceptions, or
/// why it stays in user space.
fn exact_form(rule: &Rule, ctx: &SessionContext) -> Result<KernelForm, String> {
    if !rule.process.is_empty() {
        return Err(
            "process conditions (uid, comm, exe, ancestor) are checked in user space".into(),
        );
    }
    if rule.after.is_some() {
        return Err("sequences (`after:`) are checked in user space".into());
    }
    match &rule.target {
        TargetMatch::Exec(m) => {
            if m.args.is_some() || m.argv_regex.is_some() {
                return Err("argv patterns are checked in user space".into());
            }
            path_form(&m.path, rule, ctx)
        }
        TargetMatch::Open { path, .. } => path_form(path, rule, ctx),
        TargetMatch::Connect(ConnectMatch::Any) => Ok(KernelForm {
            keys: any_connect(),
            except: vec![],
            approximate: None,
        }),
        TargetMatch::Connect(ConnectMatch::Unix(p)) => path_form(p, rule, ctx),
        TargetMatch::Connect(ConnectMatch::Inet(m)) => {
            let ports = m.kernel_ports().ok_or_else(|| {
                format!(
                    "port ranges wider than {} ports are checked in user space",
                    super::net::KERNEL_PORTS_MAX
                )
            })?;
            let keys = m
                .kernel_nets()
                .into_iter()
                .flat_map(|net| ports.iter().map(move |&port| Key::Net { net, port }))
                .collect();
            Ok(KernelForm {
                keys,
                except: vec![],
                approximate: None,
            })
        }
    }
}

fn any_connect() -> Vec<Key> {
    vec![
        Key::Net {
            net: Ipv6Net::default(),
            port: 0,
        },
        Key::Path(KernelPath::Prefix(Vec::new())),
    ]
}

fn path_form(set: &PathSet, rule: &Rule, ctx: &SessionContext) -> Result<KernelForm, String> {
    if !set.regexes.is_empty() {
        return Err("path regexes are checked in user space".into());
    }
    let mut keys = Vec::new();
    for p in &set.patterns {
        keys.extend(p.kernel_keys(ctx)?.into_iter().map(Key::Path));
    }
    if set.patterns.is_empty() {
        keys.push(Key::Path(KernelPath::Prefix(Vec::new())));
    }
    let mut except = Vec::new();
    let mut approximate = Vec::new();
    for p in &set.except {
        match p.kernel_keys(ctx) {
            Ok(ks) => {
                if ks.iter().any(|k| matches!(k, KernelPath::Suffix(_))) {
                    return Err(format!(
                        "`except: {}` is a suffix: the kernel takes exact paths and dir/** there",
                        p.text
                    ));
                }
                except.extend(ks);
            }
            // Leaving a refusing rule out under more paths than the glob
            // names makes the kernel refuse less, never more: safe, and
            // the rule keeps its kernel entries everywhere else.
            Err(_) if p.is_glob() && rule.action().blocks() => {
                except.extend(p.widened_keys(ctx));
                approximate.push(format!("`{}`", p.text));
            }
            Err(e) => return Err(e),
        }
    }
    if !except.is_empty()
        && keys
            .iter()
            .any(|k| matches!(k, Key::Path(KernelPath::Suffix(_))))
    {
        return Err("`except` with a suffix pattern is checked in user space".into());
    }
    Ok(KernelForm {
        keys,
        except,
        approximate: (!approximate.is_empty()).then(|| {
            format!(
                "the general-glob exceptions {} are left out by their literal prefix; \
                 the daemon judges the calls under it",
                approximate.join(", ")
            )
        }),
    })
}

/// Keys that cover at least every call the rule matches.
fn widened_form(rule: &Rule, ctx: &SessionContext) -> Vec<Key> {
    let paths = |set: &PathSet| -> Vec<Key> {
        if !set.regexes.is_empty() || set.patterns.is_empty() {
            return vec![Key::Path(KernelPath::Prefix(Vec::new()))];
        }
        set.patterns
            .iter()
            .flat_map(|p| p.widened_keys(ctx))
            .map(Key::Path)
            .collect()
    };
    match &rule.target {
        TargetMatch::Exec(m) => paths(&m.path),
        TargetMatch::Open { path, .. } => paths(path),
        TargetMatch::Connect(ConnectMatch::Any) => any_connect(),
        TargetMatch::Connect(ConnectMatch::Unix(p)) => paths(p),
        TargetMatch::Connect(ConnectMatch::Inet(m)) => m
            .kernel_nets()
            .into_iter()
            .map(|net| Key::Net { net, port: 0 })
            .collect(),
    }
}

/// Whether the rule runs in the kernel (for a session like `ctx`), or why
/// not; `Ok(Some(why))` when the kernel runs it only approximately.
pub fn placement(rule: &Rule, ctx: &SessionContext) -> Result<Option<String>, String> {
    exact_form(rule, ctx).map(|f| f.approximate)
}

fn covers(rule_key: &KernelPath, key: &KernelPath) -> bool {
    match (rule_key, key) {
        (KernelPath::Exact(a), KernelPath::Exact(b)) => a == b,
        (KernelPath::Prefix(a), KernelPath::Exact(b) | KernelPath::Prefix(b)) => b.starts_with(a),
        (KernelPath::Suffix(a), KernelPath::Suffix(b)) => b.ends_with(a),
        _ => false,
    }
}

/// The slots of one entry, strongest first and file order within a
/// verdict, without slots that can never decide. `false` when they did not
/// fit: then the entry ends with an allow for rule 0 (user space decides).
fn entry(mut slots: Vec<RuleSlot>) -> (RuleEntry, bool) {
    slots.sort_by_key(|s| (Reverse(s.verdict), s.rule));
    let mut kept: Vec<RuleSlot> = Vec::new();
    for s in slots {
        // An earlier slot that applies whenever `s` does always wins over it;
        // `s` still counts if it sets labels that one does not.
        let shadowed = kept.iter().any(|k| {
            k.require & !s.require == 0
                && k.forbid & !s.forbid == 0
                && s.set_labels & !k.set_labels == 0
        });
        if !shadowed {
            kept.push(s);
        }
    }
    let fits = kept.len() <= RULE_SLOTS;
    if !fits {
        kept.truncate(RULE_SLOTS - 1);
        kept.push(RuleSlot {
            verdict: Verdict::Allow as u8,
            ..RuleSlot::default()
        });
    }
    let mut e = RuleEntry::default();
    e.slots[..kept.len()].copy_from_slice(&kept);
    (e, fits)
}

fn path_key(ruleset: u32, access: Access, bytes: &[u8]) -> PathRuleKey {
    let mut path = [0u8; RULE_PATH_LEN];
    let n = bytes.len().min(RULE_PATH_LEN);
    path[..n].copy_from_slice(&bytes[..n]);
    PathRuleKey {
        ruleset,
        access: access as u8,
        path,
    }
}

fn reversed_tail(path: &[u8]) -> Vec<u8> {
    path[path.len().saturating_sub(RULE_PATH_LEN)..]
        .iter()
        .rev()
        .copied()
        .collect()
}

fn profile_of<'a>(set: &'a PolicySet, ctx: &SessionContext) -> Result<&'a Profile, CompileError> {
    set.profile(&ctx.profile)
        .ok_or_else(|| CompileError::UnknownProfile(ctx.profile.clone()))
}

pub fn compile_session(set: &PolicySet, ctx: &SessionContext) -> Result<Compiled, CompileError> {
    let profile = profile_of(set, ctx)?;
    let layer = Layer {
        ruleset: 0,
        defaults: [profile.default as u8; ACCESS_COUNT],
        _pad: [0; 2],
        default_rules: [profile.default_rule; ACCESS_COUNT],
    };
    let rules = set.rules().iter().filter(|r| r.in_session(ctx));
    Ok(compile_rules(rules, layer, profile.default, ctx))
}

/// One tool's scope in one session, as a layer of its own: the tool's
/// scopes allow, the profile's default refuses the rest of what the tool
/// speaks for, and the layer has no opinion on the other accesses. Judged
/// beside the session's rules, it can only narrow them.
pub fn compile_tool(
    set: &PolicySet,
    ctx: &SessionContext,
    tool: &str,
) -> Result<Compiled, CompileError> {
    let profile = profile_of(set, ctx)?;
    let t = profile
        .tool(tool)
        .ok_or_else(|| CompileError::UnknownTool(ctx.profile.clone(), tool.to_owned()))?;
    let mut layer = Layer::default();
    for a in t.access.iter() {
        layer.defaults[a as usize] = profile.default as u8;
        layer.default_rules[a as usize] = t.default_rule;
    }
    let rules = set.rules().iter().filter(|r| r.in_tool(ctx, tool));
    Ok(compile_rules(rules, layer, profile.default, ctx))
}

/// Every tool of the session's profile, compiled.
pub fn compile_tools(
    set: &PolicySet,
    ctx: &SessionContext,
) -> Result<Vec<(String, Compiled)>, CompileError> {
    let profile = profile_of(set, ctx)?;
    profile
        .tools
        .iter()
        .map(|t| Ok((t.name.clone(), compile_tool(set, ctx, &t.name)?)))
        .collect()
}

/// The tools' rulesets, as the enforcer installs them.
pub fn kernel_tools(tools: &[(String, Compiled)]) -> Vec<(&str, &KernelRuleset)> {
    tools.iter().map(|(n, c)| (n.as_str(), &c.kernel)).collect()
}

/// `rules` as one layer with `layer`'s defaults. Rules the kernel cannot
/// run and that are weaker than `default` reach it widened to allow.
fn compile_rules<'a>(
    rules: impl Iterator<Item = &'a Rule>,
    layer: Layer,
    default: Verdict,
    ctx: &SessionContext,
) -> Compiled {
    let ruleset = 0;
    let mut exact = [true; ACCESS_COUNT];
    let mut kernel_rules = Vec::new();
    for rule in rules {
        let access = rule.target.access();
        let slot = RuleSlot {
            require: rule.require,
            forbid: rule.forbid,
            set_labels: rule.set_labels,
            rule: rule.id(),
            verdict: rule.action() as u8,
            _pad: [0; 3],
        };
        match exact_form(rule, ctx) {
            Ok(form) => {
                if form.approximate.is_some() {
                    for a in access.iter() {
                        exact[a as usize] = false;
                    }
                }
                kernel_rules.push(KernelRule {
                    access,
                    keys: form.keys,
                    except: form.except,
                    slot,
                });
            }
            Err(_) => {
                for a in access.iter() {
                    exact[a as usize] = false;
                }
                if rule.action() < default {
                    kernel_rules.push(KernelRule {
                        access,
                        keys: widened_form(rule, ctx),
                        except: vec![],
                        slot: RuleSlot {
                            verdict: Verdict::Allow as u8,
                            set_labels: 0,
                            ..slot
                        },
                    });
                }
            }
        }
    }
    let rules = kernel_rules;
    let mut out = Compiled {
        kernel: KernelRuleset {
            path: vec![],
            suffix: vec![],
            net: vec![],
            layer,
        },
        exact,
    };
    for access in super::matcher::ALL_ACCESS {
        let here: Vec<&KernelRule> = rules.iter().filter(|r| r.access.has(access)).collect();
        if access == Access::ConnectInet {
            compile_net(&here, ruleset, &mut out);
        } else {
            compile_paths(&here, access, ruleset, &mut out);
        }
    }
    out
}

fn compile_paths(rules: &[&KernelRule], access: Access, ruleset: u32, out: &mut Compiled) {
    let mut keys: BTreeSet<KernelPath> = BTreeSet::new();
    for r in rules {
        keys.extend(r.keys.iter().filter_map(|k| match k {
            Key::Path(p) => Some(p.clone()),
            Key::Net { .. } => None,
        }));
        keys.extend(r.except.iter().cloned());
    }
    for key in keys {
        let slots = rules
            .iter()
            .filter(|r| {
                r.keys
                    .iter()
                    .any(|k| matches!(k, Key::Path(p) if covers(p, &key)))
                    && !r.except.iter().any(|e| covers(e, &key))
            })
            .map(|r| r.slot)
            .collect();
        let (e, fits) = entry(slots);
        out.exact[access as usize] &= fits;
        match &key {
            KernelPath::Exact(p) => out.kernel.path.push((
                path_prefix_bits(p.len() + 1),
                path_key(ruleset, access, p),
                e,
            )),
            KernelPath::Prefix(p) => {
                out.kernel
                    .path
                    .push((path_prefix_bits(p.len()), path_key(ruleset, access, p), e))
            }
            KernelPath::Suffix(s) => {
                let rev: Vec<u8> = s.iter().rev().copied().collect();
                out.kernel.suffix.push((
                    path_prefix_bits(s.len()),
                    path_key(ruleset, access, &rev),
                    e,
                ));
            }
        }
    }
}

fn compile_net(rules: &[&KernelRule], ruleset: u32, out: &mut Compiled) {
    let nets = |r: &KernelRule| -> Vec<(Ipv6Net, u16)> {
        r.keys
            .iter()
            .filter_map(|k| match k {
                Key::Net { net, port } => Some((*net, *port)),
                Key::Path(_) => None,
            })
            .collect()
    };
    let keys: BTreeSet<(u16, Ipv6Net)> = rules
        .iter()
        .flat_map(|r| nets(r))
        .map(|(n, p)| (p, n))
        .collect();
    for (port, net) in keys {
        // Port-specific entries also carry the any-port rules, so that one
        // look-up gives the whole answer (the kernel looks up port 0 too).
        let slots = rules
            .iter()
            .filter(|r| {
                nets(r)
                    .iter()
                    .any(|(n, p)| (*p == port || *p == 0) && n.contains(&net))
            })
            .map(|r| r.slot)
            .collect();
        let (e, fits) = entry(slots);
        out.exact[Access::ConnectInet as usize] &= fits;
        let key = NetRuleKey {
            ruleset,
            port,
            _pad: 0,
            addr: net.network().octets(),
        };
        out.kernel
            .net
            .push((net_prefix_bits(u32::from(net.prefix_len())), key, e));
    }
}

impl Compiled {
    /// What the kernel decides on `subject` asked with `access`, for a
    /// session holding `labels`, and the labels the call sets if it goes
    /// through: a model of its look-ups (longest prefix match in each map,
    /// every applicable slot, the strongest verdict with ties to the lower
    /// rule id, else the session default for that access).
    pub fn decide(
        &self,
        subject: &Subject<'_>,
        access: AccessMask,
        labels: u64,
    ) -> (Verdict, RuleId, u64) {
        let k = &self.kernel;
        let mut best: Option<(Verdict, RuleId)> = None;
        let mut set = 0;
        for a in access.iter() {
            let mut found: Vec<&RuleEntry> = Vec::new();
            match subject {
                // The kernel does not judge abstract socket names.
                Subject::Unix { path } if !path.starts_with(b"/") => return (Verdict::None, 0, 0),
                Subject::Exec { path, .. } | Subject::Open { path } | Subject::Unix { path } => {
                    found.extend(lpm(&k.path, k.layer.ruleset, a, &key_data(path)));
                    let rev = key_data(&reversed_tail(path));
                    found.extend(lpm(&k.suffix, k.layer.ruleset, a, &rev));
                }
                Subject::Inet { ip, port } => {
                    for p in [*port, 0] {
                        found.extend(lpm_net(&k.net, k.layer.ruleset, p, *ip));
                    }
                }
            }
            let applicable: Vec<&RuleSlot> = found
                .iter()
                .flat_map(|e| e.slots.iter().filter(|s| s.applies(labels)))
                .collect();
            set |= applicable.iter().fold(0, |m, s| m | s.set_labels);
            let this = applicable
                .iter()
                .map(|s| (Verdict::from_u8(s.verdict), s.rule))
                .reduce(|x, y| if stronger(y, x) { y } else { x })
                .unwrap_or((
                    Verdict::from_u8(k.layer.defaults[a as usize]),
                    k.layer.default_rules[a as usize],
                ));
            if best.is_none_or(|b| stronger(this, b)) {
                best = Some(this);
            }
        }
        let (v, id) = best.unwrap_or((Verdict::None, 0));
        (v, id, if v.blocks() { 0 } else { set })
    }
}

/// What a human's grant lets through: a path (exactly, or everything under
/// it) or an address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantTarget {
    Path { path: Vec<u8>, prefix: bool },
    Inet { ip: Ipv6Addr, port: u16 },
}

impl GrantTarget {
    /// Whether a call on `subject` falls under the grant.
    pub fn covers(&self, subject: &Subject<'_>) -> bool {
        match (self, subject) {
            (
                GrantTarget::Path { path, prefix },
                Subject::Exec { path: p, .. }
                | Subject::Open { path: p }
                | Subject::Unix { path: p },
            ) => {
                if *prefix {
                    p.starts_with(path)
                } else {
                    p == path
                }
            }
            (GrantTarget::Inet { ip, port }, Subject::Inet { ip: i, port: p }) => {
                ip == i && port == p
            }
            _ => false,
        }
    }
}

impl Compiled {
    /// Kernel entries for a just-in-time grant (reported as rule `rule`):
    /// on the grant's own key, the slots the longest match gives today,
    /// with every unconditional refer replaced by an allow. Label-bound
    /// slots stay: a grant never lifts, say, the ban on connecting after a
    /// secret was read. Keys carry ruleset 0, like the session's own.
    pub fn grant(&self, target: &GrantTarget, access: AccessMask, rule: RuleId) -> KernelRuleset {
        let k = &self.kernel;
        let mut out = KernelRuleset::default();
        let lift = |found: Option<&RuleEntry>| {
            let mut slots: Vec<RuleSlot> = found
                .map(|e| {
                    e.slots
                        .iter()
                        .filter(|s| s.verdict != Verdict::None as u8)
                        .filter(|s| {
                            s.require != 0 || s.forbid != 0 || s.verdict != Verdict::Refer as u8
                        })
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            slots.push(RuleSlot {
                verdict: Verdict::Allow as u8,
                rule,
                ..RuleSlot::default()
            });
            entry(slots).0
        };
        match target {
            GrantTarget::Path { path, prefix } => {
                let len = path.len() + usize::from(!prefix);
                if len > RULE_PATH_LEN {
                    return out;
                }
                for a in access.iter() {
                    let found = lpm(&k.path, k.layer.ruleset, a, &key_data(path));
                    out.path
                        .push((path_prefix_bits(len), path_key(0, a, path), lift(found)));
                }
            }
            GrantTarget::Inet { ip, port } => {
                let found = lpm_net(&k.net, k.layer.ruleset, *port, *ip)
                    .or_else(|| lpm_net(&k.net, k.layer.ruleset, 0, *ip));
                out.net.push((
                    net_prefix_bits(128),
                    NetRuleKey {
                        ruleset: 0,
                        port: *port,
                        _pad: 0,
                        addr: ip.octets(),
                    },
                    lift(found),
                ));
            }
        }
        out
    }
}

/// A path as the kernel puts it in a key: its first bytes, NUL-padded.
fn key_data(path: &[u8]) -> [u8; RULE_PATH_LEN] {
    let mut d = [0u8; RULE_PATH_LEN];
    let n = path.len().min(RULE_PATH_LEN);
    d[..n].copy_from_slice(&path[..n]);
    d
}

fn lpm<'a>(
    map: &'a [(u32, PathRuleKey, RuleEntry)],
    ruleset: u32,
    access: Access,
    data: &[u8; RULE_PATH_LEN],
) -> Option<&'a RuleEntry> {
    map.iter()
        .filter(|(bits, k, _)| {
            let n = (*bits / 8) as usize - 5;
            k.ruleset == ruleset && k.access == access as u8 && k.path[..n] == data[..n]
        })
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, _, e)| e)
}

fn lpm_net(
    map: &[(u32, NetRuleKey, RuleEntry)],
    ruleset: u32,
    port: u16,
    ip: Ipv6Addr,
) -> Option<&RuleEntry> {
    map.iter()
        .filter(|(bits, k, _)| {
            let len = (*bits - 64) as u8;
            k.ruleset == ruleset
                && k.port == port
                && Ipv6Net::new(Ipv6Addr::from(k.addr), len).is_ok_and(|n| n.contains(&ip))
        })
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, _, e)| e)
}

#[cfg(test)]
mod tests;
