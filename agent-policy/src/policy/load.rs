//! Reading policy files into a [`PolicySet`]: every error is collected with
//! its `file:line:col`, then names are resolved and rules checked against
//! each other.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::Verdict;

use super::{
    diagnostic::{Diagnostic, Location, Pos, pos_of_offset},
    document::{Decoder, Document, RawRule, Sp, action_name},
    set::{After, LabelMap, MAX_LABELS, Origin, PolicySet, Profile, Rule, RuleInfo, Tool},
    yaml,
};

/// Loads files and directories (their `*.yaml` and `*.yml` files, sorted by
/// name) in the order given: that order is the precedence tie-break.
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut diags);
    }
    let mut sources = Vec::new();
    for f in files {
        match std::fs::read(&f) {
            Ok(bytes) => sources.push((f.display().to_string(), bytes)),
            Err(e) => diags.push(io_diag(&f, &e)),
        }
    }
    if sources.is_empty() && diags.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        diags.push(Diagnostic::new(
            &Arc::from(names.join(" ")),
            Pos { line: 1, col: 1 },
            "no policy files (*.yaml, *.yml) found",
        ));
    }
    match load_sources(&sources) {
        Ok(set) if diags.is_empty() => Ok(set),
        Ok(_) => Err(diags),
        Err(more) => {
            diags.extend(more);
            Err(diags)
        }
    }
}

fn io_diag(path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::new(
        &Arc::from(path.display().to_string()),
        Pos { line: 1, col: 1 },
        format!("cannot read: {e}"),
    )
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    if !path.is_dir() {
        files.push(path.to_owned());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => return diags.push(io_diag(path, &e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    found.sort();
    for p in found {
        collect(&p, files, diags);
    }
}

struct Loaded {
    file: Arc<str>,
    doc: Document,
}

/// Loads in-memory sources `(name, bytes)`; never panics, whatever the bytes.
pub fn load_sources<N: AsRef<str>, B: AsRef<[u8]>>(
    sources: &[(N, B)],
) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut docs = Vec::new();
    for (name, bytes) in sources {
        let file: Arc<str> = Arc::from(name.as_ref());
        let bytes = bytes.as_ref();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let pos = pos_of_offset(bytes, e.valid_up_to());
                diags.push(Diagnostic::new(&file, pos, "not UTF-8"));
                continue;
            }
        };
        let nodes = match yaml::parse(text) {
            Ok(n) => n,
            Err((pos, msg)) => {
                diags.push(Diagnostic::new(&file, pos, format!("YAML syntax: {msg}")));
                continue;
            }
        };
        let mut dec = Decoder::new(&file);
        for node in &nodes {
            if let Some(doc) = dec.document(node) {
                docs.push(Loaded {
                    file: file.clone(),
                    doc,
                });
            }
        }
        diags.extend(dec.diags);
    }
    let mut set = assemble(docs, &mut diags);
    set.digest = digest(sources);
    if diags.is_empty() {
        Ok(set)
    } else {
        Err(diags)
    }
}

/// SHA-256 over the sources' names and bytes, in load order: the receipts
/// name the bytes the set was built from, not what the files hold later.
fn digest<N: AsRef<str>, B: AsRef<[u8]>>(sources: &[(N, B)]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, bytes) in sources {
        for part in [name.as_ref().as_bytes(), bytes.as_ref()] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// A rule of the set before ids are given: a written rule or scope, or a
/// profile's default.
enum Entry {
    Rule(Box<RawRule>, Origin),
    Default {
        profile: String,
        /// A tool's default (outside its scope) rather than the profile's.
        tool: Option<String>,
        pos: Pos,
        verdict: Verdict,
    },
}

impl Entry {
    fn name(&self) -> String {
        match self {
            Entry::Rule(r, _) => r.name.value.clone(),
            Entry::Default {
                profile,
                tool: None,
                ..
            } => format!("{profile}.default"),
            Entry::Default {
                profile,
                tool: Some(t),
                ..
            } => format!("{profile}.tool.{t}.default"),
        }
    }

    fn pos(&self) -> Pos {
        match self {
            Entry::Rule(r, _) => r.name.pos,
            Entry::Default { pos, .. } => *pos,
        }
    }
}

fn assemble(docs: Vec<Loaded>, diags: &mut Vec<Diagnostic>) -> PolicySet {
    let at = |file: &Arc<str>, pos: Pos| Location {
        file: file.clone(),
        pos,
    };
    let mut err =
        |file: &Arc<str>, pos: Pos, msg: String| diags.push(Diagnostic::new(file, pos, msg));

    // Labels, profiles and rule names first: rules may refer to any of them.
    let mut labels = LabelMap::default();
    let mut label_at: HashMap<String, Location> = HashMap::new();
    let mut profiles: Vec<Profile> = Vec::new();
    let mut entries: Vec<(Arc<str>, Entry)> = Vec::new();
    for Loaded { file, doc } in docs {
        match doc {
            Document::Policy(p) => {
                for (name, desc) in p.labels {
                    if let Some(prev) = label_at.get(&name.value) {
                        let msg = format!("label `{}` is already declared at {prev}", name.value);
                        err(&file, name.pos, msg);
                    } else if labels.len() == MAX_LABELS {
                        let msg =
                            format!("more than {MAX_LABELS} labels: they are the bits of a u64");
                        err(&file, name.pos, msg);
                    } else {
                        label_at.insert(name.value.clone(), at(&file, name.pos));
                        labels.push(name.value, desc);
                    }
                }
                entries.extend(
                    p.rules
                        .into_iter()
                        .map(|r| (file.clone(), Entry::Rule(Box::new(r), Origin::Rule))),
                );
            }
            Document::Profile(p) => {
                if let Some(prev) = profiles.iter().find(|q| q.name == p.name.value) {
                    let msg = format!(
                        "profile `{}` is already defined at {}",
                        p.name.value, prev.at
                    );
                    err(&file, p.name.pos, msg);
                    continue;
                }
                for r in p.scopes {
                    let origin = Origin::Scope {
                        profile: p.name.value.clone(),
                    };
                    entries.push((file.clone(), Entry::Rule(Box::new(r), origin)));
                }
                // The default takes the next id, after the profile's scopes.
                entries.push((
                    file.clone(),
                    Entry::Default {
                        profile: p.name.value.clone(),
                        tool: None,
                        pos: p.default.pos,
                        verdict: p.default.value,
                    },
                ));
                let default_rule = entries.len() as u32;
                let mut tools = Vec::new();
                for t in p.tools {
                    if tools.iter().any(|q: &Tool| q.name == t.name.value) {
                        let msg = format!("tool `{}` is already defined", t.name.value);
                        err(&file, t.name.pos, msg);
                        continue;
                    }
                    for r in t.scopes {
                        let origin = Origin::ToolScope {
                            profile: p.name.value.clone(),
                            tool: t.name.value.clone(),
                        };
                        entries.push((file.clone(), Entry::Rule(Box::new(r), origin)));
                    }
                    entries.push((
                        file.clone(),
                        Entry::Default {
                            profile: p.name.value.clone(),
                            tool: Some(t.name.value.clone()),
                            pos: t.name.pos,
                            verdict: p.default.value,
                        },
                    ));
                    tools.push(Tool {
                        name: t.name.value,
                        access: t.access,
                        default_rule: entries.len() as u32,
                    });
                }
                profiles.push(Profile {
                    default_rule,
                    tools,
                    at: at(&file, p.name.pos),
                    name: p.name.value,
                    description: p.description,
                    default: p.default.value,
                    ttl: p.ttl,
                    drift_threshold: p.drift_threshold,
                });
            }
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    for (i, (file, e)) in entries.iter().enumerate() {
        let name = e.name();
        if let Some(prev) = ids.get(&name) {
            let (pf, pe) = &entries[*prev as usize - 1];
            let msg = format!("rule `{name}` is already defined at {}", at(pf, pe.pos()));
            err(file, e.pos(), msg);
        } else {
            ids.insert(name, i as u32 + 1);
        }
    }
    let mask =
        |err: &mut dyn FnMut(&Arc<str>, Pos, String), file: &Arc<str>, names: &[Sp<String>]| {
            let mut m = 0u64;
            for n in names {
                match labels.bit(&n.value) {
                    Some(b) => m |= b,
                    None => err(
                        file,
                        n.pos,
                        format!("unknown label `{}` (declare it under `labels:`)", n.value),
                    ),
                }
            }
            m
        };

    let mut rules = Vec::new();
    let mut table = Vec::new();
    let mut rule_index = Vec::new();
    let mut by_canon: HashMap<&str, &(Arc<str>, Entry)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let id = i as u32 + 1;
        let (file, e) = entry;
        let (r, origin) = match e {
            Entry::Rule(r, origin) => (r, origin),
            Entry::Default {
                profile,
                tool,
                pos,
                verdict,
            } => {
                let (reason, origin) = match tool {
                    None => (
                        format!("outside every scope declared by profile {profile}"),
                        Origin::ProfileDefault {
                            profile: profile.clone(),
                        },
                    ),
                    Some(t) => (
                        format!(
                            "during a call of tool {t}, outside the scope profile {profile} \
                             declares for it"
                        ),
                        Origin::ToolDefault {
                            profile: profile.clone(),
                            tool: t.clone(),
                        },
                    ),
                };
                table.push(Arc::new(RuleInfo {
                    id,
                    name: e.name(),
                    reason,
                    action: *verdict,
                    at: at(file, *pos),
                    origin,
                }));
                rule_index.push(usize::MAX);
                continue;
            }
        };
        let info = Arc::new(RuleInfo {
            id,
            name: r.name.value.clone(),
            reason: r.reason.clone(),
            action: r.action,
            at: at(file, r.pos),
            origin: origin.clone(),
        });
        table.push(info.clone());
        for p in &r.profiles {
            if !profiles.iter().any(|q| q.name == p.value) {
                err(
                    file,
                    p.pos,
                    format!("unknown profile `{}`: the rule could never match", p.value),
                );
            }
        }
        let require = mask(&mut err, file, &r.labels);
        let forbid = mask(&mut err, file, &r.not_labels);
        let set_labels = mask(&mut err, file, &r.set_labels);
        if require & forbid != 0 {
            let pos = r.not_labels.first().map_or(r.pos, |n| n.pos);
            err(
                file,
                pos,
                "the same label is required and forbidden: the rule could never match".into(),
            );
        }
        let after = r.after.as_ref().and_then(|a| match ids.get(&a.value) {
            Some(&rid) if rid == id => {
                err(
                    file,
                    a.pos,
                    format!(
                        "`after: {}` names the rule itself: it could never match",
                        a.value
                    ),
                );
                None
            }
            Some(&rid) => Some(After {
                rule: rid,
                within: r.within,
            }),
            None => {
                err(
                    file,
                    a.pos,
                    format!("`after:` names unknown rule `{}`", a.value),
                );
                None
            }
        });
        if !r.canon.is_empty() {
            if let Some((pf, Entry::Rule(prev, _))) = by_canon.get(r.canon.as_str()).copied() {
                let kind = if prev.action.blocks() == r.action.blocks() {
                    "has the same match as"
                } else {
                    "contradicts"
                };
                let msg = format!(
                    "rule `{}` ({}) {kind} rule `{}` ({}) at {}: merge them or tell them apart",
                    r.name.value,
                    action_name(r.action),
                    prev.name.value,
                    action_name(prev.action),
                    at(pf, prev.pos)
                );
                err(file, r.pos, msg);
            } else {
                by_canon.insert(&r.canon, entry);
            }
        }
        rule_index.push(rules.len());
        rules.push(Rule {
            info,
            target: r.target.clone(),
            process: r.process.clone(),
            profiles: r.profiles.iter().map(|p| p.value.clone()).collect(),
            intent: r.intent.clone(),
            require,
            forbid,
            after,
            set_labels,
            tool: r.tool.clone(),
        });
    }
    sequences_as_labels(&mut rules, &rule_index, &table, &mut labels);
    let mut by_kind: [Vec<usize>; 3] = Default::default();
    for (i, r) in rules.iter().enumerate() {
        by_kind[r.target.kind() as usize].push(i);
    }
    let mut set = PolicySet {
        rules,
        table,
        rule_index,
        by_kind,
        profiles,
        labels,
        digest: Vec::new(),
    };
    set.resolve_undeclared();
    set
}

/// `after: X` with no time limit is a fact about the session — X let a call
/// through — so it becomes a hidden label that X sets and the rule
/// requires. The kernel can then refuse the second step synchronously, and
/// set the label itself when X is a rule it runs. `within:` needs a clock
/// and stays in user space, as do sequences past the 64 label bits.
fn sequences_as_labels(
    rules: &mut [Rule],
    rule_index: &[usize],
    table: &[Arc<RuleInfo>],
    labels: &mut LabelMap,
) {
    for i in 0..rules.len() {
        let Some(After {
            rule: x,
            within: None,
        }) = rules[i].after
        else {
            continue;
        };
        let (Some(&xi), Some(info)) = (rule_index.get(x as usize - 1), table.get(x as usize - 1))
        else {
            continue;
        };
        let name = format!("after:{}", info.name);
        let bit = match labels.bit(&name) {
            Some(b) => b,
            None if labels.len() < MAX_LABELS => {
                labels.push(
                    name.clone(),
                    format!("the session ran a call that matched rule `{}`", info.name),
                );
                labels.bit(&name).unwrap_or(0)
            }
            None => continue,
        };
        if xi >= rules.len() {
            continue;
        }
        rules[xi].set_labels |= bit;
        rules[i].require |= bit;
        rules[i].after = None;
    }
}

#[cfg(test)]
mod tests;
