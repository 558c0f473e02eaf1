//! A loaded, checked policy set: rules in precedence order, profiles,
//! labels, and the rule table that explains kernel verdicts.
use std::{sync::Arc, time::Duration};

use agent_common::Verdict;
use serde::Serialize;

use super::{
    context::SessionContext,
    diagnostic::Location,
    matcher::{AccessMask, ConnectMatch, Declared, Kind, ProcessMatch, Subject, TargetMatch},
};

/// A rule's id: its 1-based position in load order (file order), which is
/// also the tie-break between equal verdicts. 0 is "no rule".
pub type RuleId = u32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "origin", rename_all = "kebab-case")]
pub enum Origin {
    /// A rule of a `Policy` document.
    Rule,
    /// A scope (`exec`, `read`, `write`, `connect`) of a profile.
    Scope { profile: String },
    /// What a profile does outside its scopes.
    ProfileDefault { profile: String },
    /// A scope of one of a profile's tools.
    ToolScope { profile: String, tool: String },
    /// What a profile does, during a call of this tool, outside the tool's
    /// scope.
    ToolDefault { profile: String, tool: String },
}

/// What the daemon needs to explain a verdict that names this rule.
#[derive(Clone, Debug, Serialize)]
pub struct RuleInfo {
    pub id: RuleId,
    pub name: String,
    pub reason: String,
    #[serde(serialize_with = "verdict_name")]
    pub action: Verdict,
    #[serde(serialize_with = "location")]
    pub at: Location,
    #[serde(flatten)]
    pub origin: Origin,
}

fn verdict_name<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(super::document::action_name(*v))
}

fn location<S: serde::Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(l)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct After {
    pub rule: RuleId,
    pub within: Option<Duration>,
}

#[derive(Debug)]
pub struct Rule {
    pub info: Arc<RuleInfo>,
    pub target: TargetMatch,
    pub process: ProcessMatch,
    /// Profiles the rule is limited to (empty: every profile).
    pub profiles: Vec<String>,
    /// Intent tags of which the session must have one (empty: any session).
    pub intent: Vec<String>,
    /// Labels the session must hold.
    pub require: u64,
    /// Labels the session must not hold.
    pub forbid: u64,
    pub after: Option<After>,
    pub set_labels: u64,
    /// The tool whose scope this is: judged only during that tool's calls.
    pub tool: Option<String>,
}

impl Rule {
    pub fn id(&self) -> RuleId {
        self.info.id
    }

    pub fn action(&self) -> Verdict {
        self.info.action
    }

    /// Whether the rule depends on the session's history.
    pub fn contextual(&self) -> bool {
        self.require | self.forbid != 0 || self.after.is_some()
    }

    /// The static part of the session filter: profile and intent. Tool
    /// scopes are not part of the session's rules (see [`Rule::in_tool`]).
    pub fn in_session(&self, ctx: &SessionContext) -> bool {
        self.tool.is_none()
            && (self.profiles.is_empty() || self.profiles.contains(&ctx.profile))
            && (self.intent.is_empty() || self.intent.iter().any(|t| ctx.intent_tags.contains(t)))
    }

    /// A scope of `tool` of the session's profile.
    pub fn in_tool(&self, ctx: &SessionContext, tool: &str) -> bool {
        self.tool.as_deref() == Some(tool) && self.profiles.contains(&ctx.profile)
    }

    /// Whether the rule only says what a scope lets through.
    pub fn is_scope(&self) -> bool {
        matches!(
            self.info.origin,
            Origin::Scope { .. } | Origin::ToolScope { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// For calls outside every scope: deny, refer or audit.
    pub default: Verdict,
    /// The rule id that reports `default`.
    pub default_rule: RuleId,
    pub ttl: Option<Duration>,
    pub drift_threshold: Option<f64>,
    pub at: Location,
    /// Per-tool scopes, which narrow the profile's during a tool call.
    pub tools: Vec<Tool>,
}

impl Profile {
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    /// The accesses its scope speaks for; the others are the profile's alone.
    pub access: AccessMask,
    /// The rule id that reports the profile's default outside the tool's
    /// scope.
    pub default_rule: RuleId,
}

/// Label names and their bits in the session's `u64` mask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelMap {
    names: Vec<String>,
    descriptions: Vec<String>,
}

pub const MAX_LABELS: usize = 64;

impl LabelMap {
    pub(super) fn push(&mut self, name: String, description: String) {
        self.names.push(name);
        self.descriptions.push(description);
    }

    pub fn bit(&self, name: &str) -> Option<u64> {
        self.names.iter().position(|n| n == name).map(|i| 1u64 << i)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names of the labels in `mask`, in bit order.
    pub fn names(&self, mask: u64) -> Vec<&str> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1u64 << i) != 0)
            .map(|(_, n)| n.as_str())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.descriptions.iter().map(String::as_str))
    }

    /// `mask` of this map in the bits of `to` (a reloaded set); labels that
    /// `to` no longer declares are dropped.
    pub fn translate(&self, mask: u64, to: &LabelMap) -> u64 {
        self.names(mask)
            .into_iter()
            .filter_map(|n| to.bit(n))
            .fold(0, |a, b| a | b)
    }
}

#[derive(Debug)]
pub struct PolicySet {
    pub(super) rules: Vec<Rule>,
    /// Index: id - 1. Rules and profile defaults.
    pub(super) table: Vec<Arc<RuleInfo>>,
    /// Index in `rules` by id - 1 (`usize::MAX` for profile defaults).
    pub(super) rule_index: Vec<usize>,
    pub(super) by_kind: [Vec<usize>; 3],
    pub(super) profiles: Vec<Profile>,
    pub(super) labels: LabelMap,
    /// SHA-256 of the sources it was loaded from (see `load_sources`).
    pub(super) digest: Vec<u8>,
}

impl PolicySet {
    /// SHA-256 of the policy sources this set was built from.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Gives every `connect: {undeclared: true}` matcher what each profile
    /// declares: the connect matchers of its `PROFILE.connect.N` scopes.
    /// Tool scopes declare nothing (they only narrow the profile's).
    pub(super) fn resolve_undeclared(&mut self) {
        let mut declared: Vec<(String, Vec<ConnectMatch>)> = self
            .profiles
            .iter()
            .map(|p| (p.name.clone(), Vec::new()))
            .collect();
        for r in &self.rules {
            if let (Origin::Scope { profile }, TargetMatch::Connect(m)) =
                (&r.info.origin, &r.target)
                && let Some((_, list)) = declared.iter_mut().find(|(p, _)| p == profile)
            {
                list.push(m.clone());
            }
        }
        let declared = Declared(Arc::new(declared));
        for r in &mut self.rules {
            if let TargetMatch::Connect(ConnectMatch::Undeclared(d)) = &mut r.target {
                *d = declared.clone();
            }
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        let i = *self.rule_index.get((id as usize).checked_sub(1)?)?;
        self.rules.get(i)
    }

    pub(crate) fn rules_of(&self, kind: Kind) -> impl Iterator<Item = &Rule> {
        self.by_kind[kind as usize].iter().map(|i| &self.rules[*i])
    }

    /// Rule id → name, reason, place: every id a verdict can carry.
    pub fn rule_table(&self) -> &[Arc<RuleInfo>] {
        &self.table
    }

    pub fn rule_info(&self, id: RuleId) -> Option<&Arc<RuleInfo>> {
        self.table.get((id as usize).checked_sub(1)?)
    }

    /// The first entry of the `connect:` scope of `ctx`'s profile that
    /// covers a connect to `s`: `None` is what `connect: {undeclared: true}`
    /// matches.
    pub fn declared_by(&self, s: &Subject<'_>, ctx: &SessionContext) -> Option<&Arc<RuleInfo>> {
        self.rules_of(Kind::Connect)
            .find(|r| {
                matches!(&r.info.origin, Origin::Scope { profile } if *profile == ctx.profile)
                    && r.target.matches(s, ctx)
            })
            .map(|r| &r.info)
    }

    pub fn rule_by_name(&self, name: &str) -> Option<&Arc<RuleInfo>> {
        self.table.iter().find(|r| r.name == name)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    pub fn labels(&self) -> &LabelMap {
        &self.labels
    }
}
