//! Decoding YAML documents into policy and profile definitions, with a
//! diagnostic at the position of every wrong, unknown or missing value.
//! References between documents (labels, `after:`, profiles) are resolved
//! by `load`, once every file is read.
use std::{sync::Arc, time::Duration};

use agent_common::{Access, Verdict};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{
    diagnostic::{Diagnostic, Pos},
    matcher::{AccessMask, ConnectMatch, Declared, ExecMatch, PathSet, ProcessMatch, TargetMatch},
    net::{InetMatch, parse_net, parse_ports},
    pattern::PathPattern,
    yaml::{Node, NodeKind},
};

pub const API_VERSION: &str = "agentgate.dev/v1";

/// The fields of a connect matcher, in a rule or a scope entry
/// (`undeclared` is refused in a scope with a reason of its own).
const CONNECT_FIELDS: &[&str] = &["addr", "port", "unix", "undeclared"];

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sp<T> {
    pub pos: Pos,
    pub value: T,
}

pub enum Document {
    Policy(PolicyDoc),
    Profile(ProfileDoc),
}

pub struct PolicyDoc {
    pub labels: Vec<(Sp<String>, String)>,
    pub rules: Vec<RawRule>,
}

pub struct ProfileDoc {
    pub name: Sp<String>,
    pub description: String,
    pub default: Sp<Verdict>,
    pub ttl: Option<Duration>,
    pub drift_threshold: Option<f64>,
    /// The scopes, as allow rules limited to this profile.
    pub scopes: Vec<RawRule>,
    pub tools: Vec<ToolDoc>,
}

/// A tool's scope (`tools: {NAME: {exec, read, write, connect}}`): while the
/// agent runtime says a call of this tool is in progress, the session's
/// calls must be inside it as well as inside the profile's.
pub struct ToolDoc {
    pub name: Sp<String>,
    /// The accesses the tool's scope speaks for; the others are left to the
    /// profile.
    pub access: AccessMask,
    /// Its scopes, as allow rules limited to this profile and tool.
    pub scopes: Vec<RawRule>,
}

/// A rule as written; names still unresolved.
pub struct RawRule {
    pub pos: Pos,
    pub name: Sp<String>,
    pub reason: String,
    pub action: Verdict,
    pub target: TargetMatch,
    pub process: ProcessMatch,
    pub profiles: Vec<Sp<String>>,
    pub intent: Vec<String>,
    pub labels: Vec<Sp<String>>,
    pub not_labels: Vec<Sp<String>>,
    pub after: Option<Sp<String>>,
    pub within: Option<Duration>,
    pub set_labels: Vec<Sp<String>>,
    /// The tool whose scope this rule is (profile scopes only).
    pub tool: Option<String>,
    /// The match and sequence in a canonical text form: two rules with the
    /// same `canon` match the same calls.
    pub canon: String,
}

pub struct Decoder<'a> {
    file: &'a Arc<str>,
    pub diags: Vec<Diagnostic>,
}

/// The entries of a mapping, checked against the fields it may have.
struct Fields<'n> {
    pos: Pos,
    entries: Vec<(&'n str, &'n Node)>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

fn scalar(node: &Node) -> Option<&str> {
    match &node.kind {
        NodeKind::Scalar { value, .. } if !node.is_null() => Some(value),
        _ => None,
    }
}

fn canon(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { value, .. } => format!("{value:?}"),
        // A single value where a list may stand is a list of one.
        NodeKind::Seq(items) if items.len() == 1 => canon(&items[0]),
        NodeKind::Seq(items) => {
            let mut v: Vec<String> = items.iter().map(canon).collect();
            v.sort();
            v.dedup();
            format!("[{}]", v.join(","))
        }
        NodeKind::Map(entries) => {
            let mut v: Vec<String> = entries
                .iter()
                .map(|(k, val)| format!("{}:{}", canon(k), canon(val)))
                .collect();
            v.sort();
            format!("{{{}}}", v.join(","))
        }
    }
}

fn action(s: &str) -> Option<Verdict> {
    Some(match s {
        "allow" => Verdict::Allow,
        "audit" => Verdict::Audit,
        "refer" => Verdict::Refer,
        "deny" => Verdict::Deny,
        "kill" => Verdict::Kill,
        _ => return None,
    })
}

pub fn action_name(v: Verdict) -> &'static str {
    v.name()
}

impl<'a> Decoder<'a> {
    pub fn new(file: &'a Arc<str>) -> Self {
        Self {
            file,
            diags: Vec::new(),
        }
    }

    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
    }

    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.err(
                node.pos,
                format!("{what} must be a mapping, not {}", node.describe()),
            );
            return None;
        };
        let mut out: Vec<(&str, &Node)> = Vec::new();
        for (k, v) in entries {
            let Some(key) = scalar(k) else {
                self.err(k.pos, format!("keys of {what} must be plain names"));
                continue;
            };
            if !allowed.contains(&key) {
                self.err(
                    k.pos,
                    format!(
                        "unknown field `{key}` in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            } else if out.iter().any(|(o, _)| *o == key) {
                self.err(k.pos, format!("duplicate field `{key}` in {what}"));
            } else {
                out.push((key, v));
            }
        }
        Some(Fields {
            pos: node.pos,
            entries: out,
        })
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<Sp<String>> {
        match scalar(node) {
            Some(s) => Some(Sp {
                pos: node.pos,
                value: s.to_owned(),
            }),
            None => {
                self.err(
                    node.pos,
                    format!("{what} must be a string, not {}", node.describe()),
                );
                None
            }
        }
    }

    fn required<'n>(&mut self, f: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let found = f.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if found.is_none() {
            self.err(f.pos, format!("{what} has no `{key}`"));
        }
        found
    }

    /// A list of strings; a single string is a list of one. An empty list is
    /// refused: it would match nothing.
    fn strings(&mut self, node: &Node, what: &str) -> Vec<Sp<String>> {
        let items: Vec<&Node> = match &node.kind {
            NodeKind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        if items.is_empty() {
            self.err(
                node.pos,
                format!("empty `{what}` list: the rule could never match"),
            );
        }
        items
            .into_iter()
            .filter_map(|n| self.string(n, &format!("an entry of `{what}`")))
            .collect()
    }

    pub fn document(&mut self, node: &Node) -> Option<Document> {
        let f = self.fields(
            node,
            "a document",
            &["apiVersion", "kind", "metadata", "labels", "rules", "spec"],
        )?;
        let api = self.required(&f, "apiVersion", "the document")?;
        let api = self.string(api, "apiVersion")?;
        if api.value != API_VERSION {
            self.err(
                api.pos,
                format!(
                    "unsupported apiVersion `{}` (expected {API_VERSION})",
                    api.value
                ),
            );
            return None;
        }
        let kind = self.required(&f, "kind", "the document")?;
        let kind = self.string(kind, "kind")?;
        let (name, description) = self.metadata(&f)?;
        let misplaced = |k: &str| {
            matches!(
                (kind.value.as_str(), k),
                ("Policy", "spec") | ("Profile", "labels" | "rules")
            )
        };
        for (k, _) in &f.entries {
            if misplaced(k) {
                let pos = node_key_pos(node, k).unwrap_or(f.pos);
                self.err(
                    pos,
                    format!("unknown field `{k}` in a {} document", kind.value),
                );
            }
        }
        match kind.value.as_str() {
            "Policy" => Some(Document::Policy(self.policy(&f))),
            "Profile" => self.profile(&f, name, description).map(Document::Profile),
            other => {
                self.err(
                    kind.pos,
                    format!("unknown kind `{other}` (expected Policy or Profile)"),
                );
                None
            }
        }
    }

    fn metadata(&mut self, f: &Fields<'_>) -> Option<(Sp<String>, String)> {
        let m = self.required(f, "metadata", "the document")?;
        let m = self.fields(m, "metadata", &["name", "description"])?;
        let name = self.required(&m, "name", "metadata")?;
        let name = self.string(name, "metadata.name")?;
        let description = match m.get("description") {
            Some(d) => self.string(d, "metadata.description")?.value,
            None => String::new(),
        };
        Some((name, description))
    }

    fn policy(&mut self, f: &Fields<'_>) -> PolicyDoc {
        let mut labels = Vec::new();
        if let Some(l) = f.get("labels") {
            if let NodeKind::Map(entries) = &l.kind {
                for (k, v) in entries {
                    let (Some(name), Some(desc)) = (
                        self.string(k, "a label name"),
                        self.string(v, "a label description"),
                    ) else {
                        continue;
                    };
                    if !valid_name(&name.value) {
                        self.err(
                            name.pos,
                            format!(
                                "bad label name `{}` (letters, digits, `-` and `_`)",
                                name.value
                            ),
                        );
                        continue;
                    }
                    labels.push((name, desc.value));
                }
            } else {
                self.err(l.pos, "labels must be a mapping of name: description");
            }
        }
        let mut rules = Vec::new();
        if let Some(r) = f.get("rules") {
            match &r.kind {
                NodeKind::Seq(items) => {
                    rules.extend(items.iter().filter_map(|n| self.rule(n)));
                }
                _ => self.err(r.pos, format!("rules must be a list, not {}", r.describe())),
            }
        }
        PolicyDoc { labels, rules }
    }

    fn rule(&mut self, node: &Node) -> Option<RawRule> {
        let f = self.fields(
            node,
            "a rule",
            &[
                "name",
                "reason",
                "match",
                "action",
                "set_labels",
                "after",
                "within",
            ],
        )?;
        let name = self
            .required(&f, "name", "the rule")
            .and_then(|n| self.string(n, "name"));
        let what = name
            .as_ref()
            .map_or_else(|| "the rule".to_owned(), |n| format!("rule `{}`", n.value));
        let reason = self.required(&f, "reason", &format!("{what} (every rule must say why)"));
        let reason = reason.and_then(|r| self.string(r, "reason"));
        let action = self.required(&f, "action", &what).and_then(|a| {
            let s = self.string(a, "action")?;
            let v = action(&s.value);
            if v.is_none() {
                self.err(
                    s.pos,
                    format!(
                        "unknown action `{}` (allow, deny, kill, refer or audit)",
                        s.value
                    ),
                );
            }
            v
        });
        let m = self.required(&f, "match", &what);
        let matched = m.and_then(|m| self.match_block(m));
        let after = f.get("after").and_then(|a| self.string(a, "after"));
        let within = match f.get("within") {
            Some(w) => {
                let d = self.duration(w, "within");
                if after.is_none() {
                    self.err(w.pos, "`within` needs `after`");
                }
                d
            }
            None => None,
        };
        let set_labels = f
            .get("set_labels")
            .map(|n| self.strings(n, "set_labels"))
            .unwrap_or_default();
        let (name, reason, action, (target, process, session), m) =
            (name?, reason?, action?, matched?, m?);
        if !valid_name(&name.value) {
            self.err(
                name.pos,
                format!(
                    "bad rule name `{}` (letters, digits, `-` and `_`)",
                    name.value
                ),
            );
        }
        if reason.value.trim().is_empty() {
            self.err(reason.pos, format!("{what} has an empty reason"));
        }
        if !set_labels.is_empty() && matches!(action, Verdict::Deny | Verdict::Kill) {
            self.err(set_labels[0].pos, "set_labels on a rule that denies has no effect: labels are set when a call goes through");
        }
        let mut canon = canon(m);
        canon.push_str(&format!(
            "|after={:?}|within={:?}",
            after.as_ref().map(|a| &a.value),
            within
        ));
        Some(RawRule {
            pos: node.pos,
            name,
            reason: reason.value,
            action,
            target,
            process,
            profiles: session.profiles,
            intent: session.intent,
            labels: session.labels,
            not_labels: session.not_labels,
            after,
            within,
            set_labels,
            tool: None,
            canon,
        })
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = self.string(node, what)?;
        match humantime::parse_duration(&s.value) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(
                    s.pos,
                    format!("bad duration `{}`: must be more than zero", s.value),
                );
                None
            }
            Err(e) => {
                self.err(
                    s.pos,
                    format!("bad duration `{}`: {e} (e.g. 90s, 10m, 2h)", s.value),
                );
                None
            }
        }
    }

    fn match_block(&mut self, node: &Node) -> Option<(TargetMatch, ProcessMatch, SessionMatch)> {
        let f = self.fields(
            node,
            "match",
            &["exec", "open", "connect", "process", "session"],
        )?;
        let kinds: Vec<(&str, &Node)> = f
            .entries
            .iter()
            .filter(|(k, _)| matches!(*k, "exec" | "open" | "connect"))
            .copied()
            .collect();
        let target = match kinds.as_slice() {
            [] => {
                self.err(f.pos, "match needs one of `exec`, `open` or `connect`");
                None
            }
            [(k, n)] => match *k {
                "exec" => self.exec(n),
                "open" => self.open(n),
                _ => self.connect(n),
            },
            [_, (k, n), ..] => {
                let pos = node_key_pos(node, k).unwrap_or(n.pos);
                self.err(
                    pos,
                    format!(
                        "a rule matches one kind of call: `{k}` and `{}` together",
                        kinds[0].0
                    ),
                );
                None
            }
        };
        let process = match f.get("process") {
            Some(p) => self.process(p)?,
            None => ProcessMatch::default(),
        };
        let session = match f.get("session") {
            Some(s) => self.session(s)?,
            None => SessionMatch::default(),
        };
        Some((target?, process, session))
    }

    fn path_set(&mut self, f: &Fields<'_>, socket: bool) -> Option<PathSet> {
        let mut set = PathSet::default();
        let mut ok = true;
        let mut parse = |dec: &mut Self, key: &str, out: &mut Vec<PathPattern>| {
            for s in f.get(key).map(|n| dec.strings(n, key)).unwrap_or_default() {
                match PathPattern::parse(&s.value, socket) {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        dec.err(s.pos, e);
                        ok = false;
                    }
                }
            }
        };
        parse(self, "path", &mut set.patterns);
        parse(self, "except", &mut set.except);
        for s in f
            .get("path_regex")
            .map(|n| self.strings(n, "path_regex"))
            .unwrap_or_default()
        {
            match regex::bytes::Regex::new(&s.value) {
                Ok(r) => set.regexes.push(r),
                Err(e) => {
                    self.err(
                        s.pos,
                        format!("bad regex `{}`: {}", s.value, first_line(&e.to_string())),
                    );
                    ok = false;
                }
            }
        }
        let covered = |p: &PathPattern| set.except.iter().any(|e| p.within(e));
        if ok
            && set.regexes.is_empty()
            && !set.patterns.is_empty()
            && set.patterns.iter().all(covered)
        {
            let pos = f.get("except").map_or(f.pos, |n| n.pos);
            self.err(
                pos,
                "`except` covers every `path`: the rule can never match",
            );
            ok = false;
        }
        ok.then_some(set)
    }

    fn exec(&mut self, node: &Node) -> Option<TargetMatch> {
        let f = self.fields(
            node,
            "exec",
            &["path", "path_regex", "except", "args", "argv_regex"],
        )?;
        let path = self.path_set(&f, false);
        let args = match f.get("args") {
            Some(n) => Some(self.globs(n, "args", false)?),
            None => None,
        };
        let argv_regex = match f.get("argv_regex") {
            Some(n) => {
                let s = self.string(n, "argv_regex")?;
                match regex::Regex::new(&s.value) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.err(
                            s.pos,
                            format!("bad regex `{}`: {}", s.value, first_line(&e.to_string())),
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        Some(TargetMatch::Exec(ExecMatch {
            path: path?,
            args,
            argv_regex,
        }))
    }

    fn open(&mut self, node: &Node) -> Option<TargetMatch> {
        let f = self.fields(node, "open", &["path", "path_regex", "except", "access"])?;
        let path = self.path_set(&f, false);
        let mut access = AccessMask::default();
        match f.get("access") {
            None => {
                access = AccessMask::of(Access::Read)
                    .with(Access::Write)
                    .with(Access::Create);
            }
            Some(n) => {
                for s in self.strings(n, "access") {
                    match s.value.as_str() {
                        "read" => access = access.with(Access::Read),
                        "write" => access = access.with(Access::Write),
                        "create" => access = access.with(Access::Create),
                        other => {
                            self.err(
                                s.pos,
                                format!("unknown access `{other}` (read, write or create)"),
                            );
                            return None;
                        }
                    }
                }
            }
        }
        Some(TargetMatch::Open {
            path: path?,
            access,
        })
    }

    fn connect(&mut self, node: &Node) -> Option<TargetMatch> {
        if node.is_null() {
            return Some(TargetMatch::Connect(ConnectMatch::Any));
        }
        let f = self.fields(node, "connect", CONNECT_FIELDS)?;
        self.connect_fields(&f, None).map(TargetMatch::Connect)
    }

    /// The fields of a connect matcher; `scope` names the scope they are an
    /// entry of (`None`: a rule's match).
    fn connect_fields(&mut self, f: &Fields<'_>, scope: Option<&str>) -> Option<ConnectMatch> {
        if let Some(n) = f.get("undeclared") {
            return self.undeclared(f, n, scope);
        }
        if f.get("unix").is_some() {
            if let Some(n) = f.get("addr").or(f.get("port")) {
                self.err(n.pos, "`unix` and `addr`/`port` together: a connect goes to one or the other, so the rule could never match");
                return None;
            }
            let u = f.get("unix")?;
            let mut set = PathSet::default();
            for s in self.strings(u, "unix") {
                match PathPattern::parse(&s.value, true) {
                    Ok(p) => set.patterns.push(p),
                    Err(e) => self.err(s.pos, e),
                }
            }
            return Some(ConnectMatch::Unix(set));
        }
        if f.entries.is_empty() {
            return Some(ConnectMatch::Any);
        }
        let mut m = InetMatch::default();
        let mut ok = true;
        for s in f
            .get("addr")
            .map(|n| self.strings(n, "addr"))
            .unwrap_or_default()
        {
            match parse_net(&s.value) {
                Ok(nets) => m.nets.extend(nets),
                Err(e) => {
                    self.err(s.pos, e);
                    ok = false;
                }
            }
        }
        for s in f
            .get("port")
            .map(|n| self.strings(n, "port"))
            .unwrap_or_default()
        {
            match parse_ports(&s.value) {
                Ok(r) => m.ports.push(r),
                Err(e) => {
                    self.err(s.pos, e);
                    ok = false;
                }
            }
        }
        ok.then_some(ConnectMatch::Inet(m))
    }

    /// `undeclared: true`, alone, in a rule: resolved against the profiles
    /// when the set is assembled.
    fn undeclared(
        &mut self,
        f: &Fields<'_>,
        n: &Node,
        scope: Option<&str>,
    ) -> Option<ConnectMatch> {
        if let Some(whose) = scope {
            self.err(
                n.pos,
                format!(
                    "`undeclared` in the connect scope of {whose}: a scope says where the session \
                     may connect; `undeclared` is for a rule's match (a connect that no entry of \
                     the profile's connect scope covers)"
                ),
            );
            return None;
        }
        match scalar(n) {
            Some("true") => {}
            Some("false") => {
                self.err(
                    n.pos,
                    "`undeclared: false` adds nothing: leave `undeclared` out (a connect matcher \
                     without it matches declared and undeclared connects alike)",
                );
                return None;
            }
            _ => {
                self.err(
                    n.pos,
                    format!("`undeclared` must be `true`, not {}", n.describe()),
                );
                return None;
            }
        }
        if let Some(other) = ["addr", "port", "unix"]
            .into_iter()
            .find(|k| f.get(k).is_some())
        {
            self.err(
                n.pos,
                format!(
                    "`undeclared` and `{other}` together: `undeclared: true` stands alone (every \
                     connect the session's profile does not declare); put `{other}` in a rule of \
                     its own"
                ),
            );
            return None;
        }
        Some(ConnectMatch::Undeclared(Declared::default()))
    }

    fn globs(&mut self, node: &Node, what: &str, separator: bool) -> Option<GlobSet> {
        let mut b = GlobSetBuilder::new();
        let mut ok = true;
        for s in self.strings(node, what) {
            match GlobBuilder::new(&s.value)
                .literal_separator(separator)
                .build()
            {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => {
                    self.err(s.pos, format!("bad glob `{}`: {}", s.value, e.kind()));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        match b.build() {
            Ok(set) => Some(set),
            Err(e) => {
                self.err(node.pos, format!("bad glob: {}", e.kind()));
                None
            }
        }
    }

    fn paths_only(&mut self, node: &Node, what: &str) -> Option<PathSet> {
        let mut set = PathSet::default();
        for s in self.strings(node, what) {
            match PathPattern::parse(&s.value, false) {
                Ok(p) => set.patterns.push(p),
                Err(e) => {
                    self.err(s.pos, e);
                    return None;
                }
            }
        }
        Some(set)
    }

    fn process(&mut self, node: &Node) -> Option<ProcessMatch> {
        let f = self.fields(node, "process", &["uid", "comm", "exe", "ancestor"])?;
        let mut p = ProcessMatch::default();
        for s in f
            .get("uid")
            .map(|n| self.strings(n, "uid"))
            .unwrap_or_default()
        {
            match s.value.parse::<u32>() {
                Ok(u) => p.uids.push(u),
                Err(_) => {
                    self.err(s.pos, format!("bad uid `{}`: expected a number", s.value));
                    return None;
                }
            }
        }
        if let Some(n) = f.get("comm") {
            p.comm = Some(self.globs(n, "comm", false)?);
        }
        if let Some(n) = f.get("exe") {
            p.exe = Some(self.paths_only(n, "exe")?);
        }
        if let Some(n) = f.get("ancestor") {
            p.ancestor = Some(self.paths_only(n, "ancestor")?);
        }
        Some(p)
    }

    fn session(&mut self, node: &Node) -> Option<SessionMatch> {
        let f = self.fields(
            node,
            "session",
            &["profile", "intent", "labels", "not_labels"],
        )?;
        let get = |dec: &mut Self, k: &str| f.get(k).map(|n| dec.strings(n, k)).unwrap_or_default();
        Some(SessionMatch {
            profiles: get(self, "profile"),
            intent: get(self, "intent").into_iter().map(|s| s.value).collect(),
            labels: get(self, "labels"),
            not_labels: get(self, "not_labels"),
        })
    }

    fn profile(
        &mut self,
        f: &Fields<'_>,
        name: Sp<String>,
        description: String,
    ) -> Option<ProfileDoc> {
        let spec = self.required(f, "spec", "a Profile")?;
        let s = self.fields(
            spec,
            "spec",
            &[
                "exec",
                "read",
                "write",
                "connect",
                "ttl",
                "drift_threshold",
                "default",
                "tools",
            ],
        )?;
        if !valid_name(&name.value) {
            self.err(
                name.pos,
                format!(
                    "bad profile name `{}` (letters, digits, `-` and `_`)",
                    name.value
                ),
            );
        }
        let default = self
            .required(&s, "default", "spec (what happens outside the scope)")
            .and_then(|n| {
                let v = self.string(n, "default")?;
                match v.value.as_str() {
                    "deny" => Some(Verdict::Deny),
                    "refer" => Some(Verdict::Refer),
                    "audit" => Some(Verdict::Audit),
                    other => {
                        self.err(
                            v.pos,
                            format!("bad default `{other}` (deny, refer or audit)"),
                        );
                        None
                    }
                }
                .map(|value| Sp { pos: v.pos, value })
            });
        let ttl = s.get("ttl").and_then(|n| self.duration(n, "ttl"));
        let drift_threshold = s.get("drift_threshold").and_then(|n| {
            let v = self.string(n, "drift_threshold")?;
            match v.value.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Some(x),
                _ => {
                    self.err(
                        v.pos,
                        format!("bad drift_threshold `{}`: a number from 0 to 1", v.value),
                    );
                    None
                }
            }
        });
        let scopes = self.scopes(&s, &name.value, None);
        let mut tools = Vec::new();
        if let Some(t) = s.get("tools") {
            match &t.kind {
                NodeKind::Map(entries) => {
                    for (k, v) in entries {
                        let Some(tool) = self.string(k, "a tool name") else {
                            continue;
                        };
                        if !valid_name(&tool.value) {
                            self.err(
                                tool.pos,
                                format!(
                                    "bad tool name `{}` (letters, digits, `-`, `_` and `.`)",
                                    tool.value
                                ),
                            );
                        }
                        let Some(f) =
                            self.fields(v, "a tool scope", &["exec", "read", "write", "connect"])
                        else {
                            continue;
                        };
                        if matches!(&v.kind, NodeKind::Map(m) if m.is_empty()) {
                            self.err(
                                v.pos,
                                format!(
                                    "tool `{}` has an empty scope: give it exec, read, write or \
                                     connect (an empty list there allows nothing)",
                                    tool.value
                                ),
                            );
                        }
                        let access = f
                            .entries
                            .iter()
                            .map(|(k, v)| scope_access(k, v))
                            .fold(AccessMask(0), |a, b| AccessMask(a.0 | b.0));
                        let scopes = self.scopes(&f, &name.value, Some(&tool.value));
                        tools.push(ToolDoc {
                            name: tool,
                            access,
                            scopes,
                        });
                    }
                }
                _ if t.is_null() => {}
                _ => self.err(
                    t.pos,
                    "tools must be a map: tool name → {exec, read, write, connect}",
                ),
            }
        }
        Some(ProfileDoc {
            name,
            description,
            default: default?,
            ttl,
            drift_threshold,
            scopes,
            tools,
        })
    }

    /// The `exec`, `read`, `write` and `connect` scopes in `s`, as allow
    /// rules limited to `profile` (and `tool`). In a tool's scope an empty
    /// list is allowed: the tool may do none of that.
    fn scopes(&mut self, s: &Fields<'_>, profile: &str, tool: Option<&str>) -> Vec<RawRule> {
        let mut scopes = Vec::new();
        let prefix = match tool {
            Some(t) => format!("{profile}.tool.{t}"),
            None => profile.to_owned(),
        };
        let whose = match tool {
            Some(t) => format!("tool {t} of profile {profile}"),
            None => format!("profile {profile}"),
        };
        let mut scope = |key: &str, target: Option<TargetMatch>, pos: Pos| {
            if let Some(target) = target {
                scopes.push(RawRule {
                    pos,
                    name: Sp {
                        pos,
                        value: format!("{prefix}.{key}"),
                    },
                    reason: format!(
                        "inside the declared {} scope of {whose}",
                        key.split('.').next().unwrap_or(key)
                    ),
                    action: Verdict::Allow,
                    target,
                    process: ProcessMatch::default(),
                    profiles: vec![Sp {
                        pos,
                        value: profile.to_owned(),
                    }],
                    intent: vec![],
                    labels: vec![],
                    not_labels: vec![],
                    after: None,
                    within: None,
                    set_labels: vec![],
                    tool: tool.map(str::to_owned),
                    canon: String::new(),
                });
            }
        };
        let empty_ok =
            |n: &Node| tool.is_some() && matches!(&n.kind, NodeKind::Seq(i) if i.is_empty());
        for (key, access) in [
            ("exec", None),
            ("read", Some(AccessMask::of(Access::Read))),
            (
                "write",
                Some(AccessMask::of(Access::Write).with(Access::Create)),
            ),
        ] {
            if let Some(n) = s.get(key) {
                if empty_ok(n) {
                    continue;
                }
                let paths = self.paths_only(n, key);
                let target = paths.map(|path| match access {
                    None => TargetMatch::Exec(ExecMatch {
                        path,
                        ..ExecMatch::default()
                    }),
                    Some(access) => TargetMatch::Open { path, access },
                });
                scope(key, target, n.pos);
            }
        }
        if let Some(n) = s.get("connect") {
            match &n.kind {
                NodeKind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let c = self
                            .fields(item, "a connect scope", CONNECT_FIELDS)
                            .and_then(|f| self.connect_fields(&f, Some(&whose)))
                            .map(TargetMatch::Connect);
                        scope(&format!("connect.{}", i + 1), c, item.pos);
                    }
                }
                _ => self.err(
                    n.pos,
                    "connect must be a list of {addr, port} or {unix} entries",
                ),
            }
        }
        scopes
    }
}

/// The accesses a tool's scope key speaks for. `connect` speaks for inet
/// addresses unless it lists only `unix:` entries, and for unix sockets
/// only when it lists some: a tool that says where it may connect on the
/// network still reaches the sockets its profile allows (agentgate's own,
/// to end the tool call, among them).
fn scope_access(key: &str, node: &Node) -> AccessMask {
    match key {
        "exec" => AccessMask::of(Access::Exec),
        "read" => AccessMask::of(Access::Read),
        "write" => AccessMask::of(Access::Write).with(Access::Create),
        _ => {
            let items = match &node.kind {
                NodeKind::Seq(items) => items.as_slice(),
                _ => &[],
            };
            let unix = |n: &Node| node_key_pos(n, "unix").is_some();
            let mut m = AccessMask(0);
            if items.is_empty() || items.iter().any(|n| !unix(n)) {
                m = m.with(Access::ConnectInet);
            }
            if items.iter().any(unix) {
                m = m.with(Access::ConnectUnix);
            }
            m
        }
    }
}

#[derive(Default)]
struct SessionMatch {
    profiles: Vec<Sp<String>>,
    intent: Vec<String>,
    labels: Vec<Sp<String>>,
    not_labels: Vec<Sp<String>>,
}

fn node_key_pos(node: &Node, key: &str) -> Option<Pos> {
    match &node.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .find(|(k, _)| scalar(k) == Some(key))
            .map(|(k, _)| k.pos),
        _ => None,
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| s.lines().last().unwrap_or(s))
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
