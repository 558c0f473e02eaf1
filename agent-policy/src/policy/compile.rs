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
//! engine would let through. A rule that refuses at least as strongly as
//! the default may instead reach the kernel narrowed (`connect:
//! {undeclared: true}` where the profile declares addresses for some ports
//! only): the kernel then refuses a subset of what the engine refuses.
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
use crate::{KernelRuleset, engine::stronger};

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
    /// The rules with network exceptions, as compiled: a grant's entry (one
    /// address, one port) is given their slots where they apply, since the
    /// any-port entry it would copy them from may leave them out.
    pub net_excepted: Vec<KernelRule>,
}

#[derive(Clone, Debug)]
enum Key {
    Path(KernelPath),
    Net { net: Ipv6Net, port: u16 },
}

/// A rule as the kernel holds it: its keys, and the keys where it is left
/// out (paths: exceptions; networks: `(net, port)`, port 0 for any).
#[derive(Clone, Debug)]
pub struct KernelRule {
    access: AccessMask,
    keys: Vec<Key>,
    except: Vec<Key>,
    slot: RuleSlot,
}

/// The `(net, port)` pairs among `keys`.
fn net_keys(keys: &[Key]) -> impl Iterator<Item = (Ipv6Net, u16)> + '_ {
    keys.iter().filter_map(|k| match k {
        Key::Net { net, port } => Some((*net, *port)),
        Key::Path(_) => None,
    })
}

/// The paths among `keys`.
fn path_keys(keys: &[Key]) -> impl Iterator<Item = &KernelPath> {
    keys.iter().filter_map(|k| match k {
        Key::Path(p) => Some(p),
        Key::Net { .. } => None,
    })
}

impl KernelRule {
    /// Whether the rule belongs on the net entry `(net, port)`: a key of it
    /// covers the entry (port-specific entries carry the any-port rules too,
    /// so that one look-up answers) and no exception does. An entry for
    /// port 0 answers for every port (the kernel looks it up beside the
    /// exact port), so there an exception on the network leaves the rule
    /// out whatever its port: the rule is then judged exactly only on
    /// port-specific entries, and `undeclared_form` says it is not exact.
    fn on_net(&self, net: Ipv6Net, port: u16) -> bool {
        net_keys(&self.keys).any(|(n, p)| (p == port || p == 0) && n.contains(&net))
            && !net_keys(&self.except)
                .any(|(n, p)| n.contains(&net) && (port == 0 || p == 0 || p == port))
    }
}

/// The accesses a rule is compiled for, one part at a time: `undeclared`
/// is exact on inet addresses and on unix sockets independently (each has
/// its own declarations).
fn parts(rule: &Rule) -> Vec<AccessMask> {
    let access = rule.target.access();
    match &rule.target {
        TargetMatch::Connect(ConnectMatch::Undeclared(_)) => {
            access.iter().map(AccessMask::of).collect()
        }
        _ => vec![access],
    }
}

/// Where a rule runs in this session, on `access` (one of its [`parts`]):
/// its kernel keys and exceptions, or why it stays in user space.
fn exact_form(
    rule: &Rule,
    ctx: &SessionContext,
    access: AccessMask,
) -> Result<(Vec<Key>, Vec<Key>), String> {
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
            path_form(&m.path, ctx, false)
        }
        TargetMatch::Open { path, .. } => path_form(path, ctx, false),
        TargetMatch::Connect(ConnectMatch::Any) => Ok((any_connect(), vec![])),
        TargetMatch::Connect(ConnectMatch::Undeclared(d)) => {
            let (keys, except, why) = undeclared_form(d.of(&ctx.profile), ctx, access);
            match why {
                None => Ok((keys, except)),
                Some(why) => Err(why),
            }
        }
        TargetMatch::Connect(ConnectMatch::Unix(p)) => path_form(p, ctx, false),
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
            Ok((keys, vec![]))
        }
    }
}

/// Keys and exceptions that cover at most what the rule matches, for a rule
/// the kernel cannot take exactly; `None` when there are none to give.
fn narrowed_form(
    rule: &Rule,
    ctx: &SessionContext,
    access: AccessMask,
) -> Option<(Vec<Key>, Vec<Key>)> {
    if !rule.process.is_empty() || rule.after.is_some() {
        return None;
    }
    match &rule.target {
        TargetMatch::Connect(ConnectMatch::Undeclared(d)) => {
            let (keys, except, _) = undeclared_form(d.of(&ctx.profile), ctx, access);
            Some((keys, except))
        }
        TargetMatch::Exec(m) if m.args.is_none() && m.argv_regex.is_none() => {
            path_form(&m.path, ctx, true).ok()
        }
        TargetMatch::Open { path, .. } => path_form(path, ctx, true).ok(),
        TargetMatch::Connect(ConnectMatch::Unix(p)) => path_form(p, ctx, true).ok(),
        _ => None,
    }
}

/// `connect: {undeclared: true}` in a session of a profile that declares
/// `declared`: every connect, except on the keys of each declared entry.
/// The third value says why that is not exact on `access`; the exceptions
/// are then at least as wide as the declarations (a declared port range too
/// wide to list: the whole address; a socket pattern the kernel cannot
/// key: its widened prefix), so the keys cover at most what the rule
/// matches.
fn undeclared_form(
    declared: &[ConnectMatch],
    ctx: &SessionContext,
    access: AccessMask,
) -> (Vec<Key>, Vec<Key>, Option<String>) {
    if declared.iter().any(|m| matches!(m, ConnectMatch::Any)) {
        // The profile declares every connect: none is undeclared.
        return (vec![], vec![], None);
    }
    let profile = &ctx.profile;
    let (mut why, mut why_unix): (Option<String>, Option<String>) = (None, None);
    let mut nets: Vec<(Ipv6Net, u16)> = Vec::new();
    let mut paths: Vec<KernelPath> = Vec::new();
    for m in declared {
        match m {
            ConnectMatch::Inet(m) => {
                let ports = m.kernel_ports().unwrap_or_else(|| {
                    why.get_or_insert_with(|| {
                        format!(
                            "profile {profile} declares a port range wider than {} ports: the daemon \
                             judges connects to those addresses",
                            super::net::KERNEL_PORTS_MAX
                        )
                    });
                    vec![0]
                });
                for net in m.kernel_nets() {
                    nets.extend(ports.iter().map(|&port| (net, port)));
                }
            }
            ConnectMatch::Unix(set) => {
                // The kernel does not judge abstract names (`@name`): a
                // declared one needs no exception there.
                for p in set.patterns.iter().filter(|p| !p.is_abstract()) {
                    match p.kernel_keys(ctx) {
                        Ok(keys) if !keys.iter().any(|k| matches!(k, KernelPath::Suffix(_))) => {
                            paths.extend(keys);
                        }
                        found => {
                            why_unix.get_or_insert_with(|| match found {
                                Err(e) => format!(
                                    "profile {profile} declares a socket the kernel cannot \
                                     look up ({e}): the daemon judges unix connects there"
                                ),
                                Ok(_) => format!(
                                    "profile {profile} declares the suffix `{}`: the kernel \
                                     leaves out exact paths and dir/** only, so the daemon \
                                     judges unix connects",
                                    p.text
                                ),
                            });
                            paths.extend(p.widened_keys(ctx).into_iter().map(|k| match k {
                                KernelPath::Suffix(_) => KernelPath::Prefix(Vec::new()),
                                k => k,
                            }));
                        }
                    }
                }
            }
            ConnectMatch::Any | ConnectMatch::Undeclared(_) => {}
        }
    }
    // A port-specific entry inside an address declared for any port adds
    // nothing. The others cannot be exact: the any-port entry the kernel
    // looks up beside the exact port answers for every port, so on those
    // addresses it leaves the rule out (`KernelRule::on_net`) and only the
    // port-specific entries the table holds carry it.
    let any_port: Vec<Ipv6Net> = nets
        .iter()
        .filter(|(_, p)| *p == 0)
        .map(|(n, _)| *n)
        .collect();
    nets.retain(|(n, p)| *p == 0 || !any_port.iter().any(|a| a.contains(n)));
    if let Some((net, _)) = nets.iter().find(|(_, p)| *p != 0) {
        why.get_or_insert_with(|| {
            format!(
                "profile {profile} declares {} for some ports only: the kernel cannot leave \
                 out one port of an address, so the daemon judges connects there to its other \
                 ports",
                super::net::show(net)
            )
        });
    }
    let except = nets
        .into_iter()
        .map(|(net, port)| Key::Net { net, port })
        .chain(paths.into_iter().map(Key::Path))
        .collect();
    let why = why
        .filter(|_| access.has(Access::ConnectInet))
        .or(why_unix.filter(|_| access.has(Access::ConnectUnix)));
    (any_connect(), except, why)
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

/// The rule's paths as kernel keys and exceptions. With `widen_globs`, a
/// general glob among the exceptions is left out by its literal prefix
/// (`/proc/self/fd/*` by `/proc/self/fd/`): more than the glob names, so
/// the keys cover at most what the rule matches (a narrowed form).
fn path_form(
    set: &PathSet,
    ctx: &SessionContext,
    widen_globs: bool,
) -> Result<(Vec<Key>, Vec<Key>), String> {
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
    for p in &set.except {
        let ks = match p.kernel_keys(ctx) {
            Err(_) if widen_globs && p.is_glob() => p.widened_keys(ctx),
            Err(e) => {
                return Err(format!(
                    "`except: {}`: {e}; the daemon judges the calls under `{}`",
                    p.text,
                    String::from_utf8_lossy(p.literal())
                ));
            }
            Ok(ks) => ks,
        };
        for k in ks {
            if matches!(k, KernelPath::Suffix(_)) {
                return Err(format!(
                    "`except: {}` is a suffix: the kernel takes exact paths and dir/** there",
                    p.text
                ));
            }
            except.push(Key::Path(k));
        }
    }
    if !except.is_empty()
        && keys
            .iter()
            .any(|k| matches!(k, Key::Path(KernelPath::Suffix(_))))
    {
        return Err("`except` with a suffix pattern is checked in user space".into());
    }
    Ok((keys, except))
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
        TargetMatch::Connect(ConnectMatch::Any | ConnectMatch::Undeclared(_)) => any_connect(),
        TargetMatch::Connect(ConnectMatch::Unix(p)) => paths(p),
        TargetMatch::Connect(ConnectMatch::Inet(m)) => m
            .kernel_nets()
            .into_iter()
            .map(|net| Key::Net { net, port: 0 })
            .collect(),
    }
}

/// Where a rule runs in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The kernel decides it alone.
    Kernel,
    /// The kernel refuses part of what it matches, synchronously; the daemon
    /// judges the rest (why).
    Partly(String),
    /// The daemon judges it (why).
    UserSpace(String),
}

/// Where the rule runs in a session like `ctx`, whose profile's default is
/// `default`.
pub fn placement(rule: &Rule, ctx: &SessionContext, default: Verdict) -> Placement {
    let (mut why, mut some_in_kernel) = (None, false);
    for access in parts(rule) {
        match exact_form(rule, ctx, access) {
            Ok(_) => some_in_kernel = true,
            Err(w) => {
                some_in_kernel |=
                    rule.action() >= default && narrowed_form(rule, ctx, access).is_some();
                why.get_or_insert(w);
            }
        }
    }
    match why {
        None => Placement::Kernel,
        Some(why) if some_in_kernel => Placement::Partly(why),
        Some(why) => Placement::UserSpace(why),
    }
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
    for (rule, access) in rules.flat_map(|r| parts(r).into_iter().map(move |a| (r, a))) {
        let slot = RuleSlot {
            require: rule.require,
            forbid: rule.forbid,
            set_labels: rule.set_labels,
            rule: rule.id(),
            verdict: rule.action() as u8,
            _pad: [0; 3],
        };
        match exact_form(rule, ctx, access) {
            Ok((keys, except)) => kernel_rules.push(KernelRule {
                access,
                keys,
                except,
                slot,
            }),
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
                } else if let Some((keys, except)) = narrowed_form(rule, ctx, access) {
                    // Where the kernel leaves it out, the default (or
                    // another rule) refuses no more than the engine does.
                    kernel_rules.push(KernelRule {
                        access,
                        keys,
                        except,
                        slot,
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
        net_excepted: rules
            .iter()
            .filter(|r| net_keys(&r.except).next().is_some())
            .cloned()
            .collect(),
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
    let keys: BTreeSet<KernelPath> = rules
        .iter()
        .flat_map(|r| path_keys(&r.keys).chain(path_keys(&r.except)))
        .cloned()
        .collect();
    let on = |keys: &[Key], key: &KernelPath| path_keys(keys).any(|p| covers(p, key));
    for key in keys {
        let slots = rules
            .iter()
            .filter(|r| on(&r.keys, &key) && !on(&r.except, &key))
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
    let mut keys: BTreeSet<(u16, Ipv6Net)> = rules
        .iter()
        .flat_map(|r| net_keys(&r.keys).chain(net_keys(&r.except)))
        .map(|(n, p)| (p, n))
        .collect();
    // An exception's network gets an entry at every port the table holds:
    // the longest match at a port is then never wider than an exception
    // that covers the address, and can leave the rule out.
    let ports: BTreeSet<u16> = keys.iter().map(|(p, _)| *p).chain([0]).collect();
    let excepted: BTreeSet<Ipv6Net> = rules
        .iter()
        .flat_map(|r| net_keys(&r.except))
        .map(|(n, _)| n)
        .collect();
    for net in excepted {
        keys.extend(ports.iter().map(|p| (*p, net)));
    }
    for (port, net) in keys {
        let slots = rules
            .iter()
            .filter(|r| r.on_net(net, port))
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
        let lift = |found: Option<&RuleEntry>, more: Vec<RuleSlot>| {
            let mut slots: Vec<RuleSlot> = found
                .map_or(&[][..], |e| &e.slots[..])
                .iter()
                .copied()
                .chain(more)
                .filter(|s| s.verdict != Verdict::None as u8)
                .filter(|s| s.require != 0 || s.forbid != 0 || s.verdict != Verdict::Refer as u8)
                .collect();
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
                    out.path.push((
                        path_prefix_bits(len),
                        path_key(0, a, path),
                        lift(found, vec![]),
                    ));
                }
            }
            GrantTarget::Inet { ip, port } => {
                let found = lpm_net(&k.net, k.layer.ruleset, *port, *ip)
                    .or_else(|| lpm_net(&k.net, k.layer.ruleset, 0, *ip));
                // The grant's entry is port-specific: the rules the any-port
                // entry leaves out for this address but that apply at this
                // port go on it again.
                let one = Ipv6Net::new(*ip, 128).unwrap_or_default();
                let more = self
                    .net_excepted
                    .iter()
                    .filter(|r| r.access.has(Access::ConnectInet) && r.on_net(one, *port))
                    .map(|r| r.slot)
                    .collect();
                out.net.push((
                    net_prefix_bits(128),
                    NetRuleKey {
                        ruleset: 0,
                        port: *port,
                        _pad: 0,
                        addr: ip.octets(),
                    },
                    lift(found, more),
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

#[cfg(any(test, feature = "test-support"))]
pub mod corpus;
#[cfg(test)]
mod tests;
