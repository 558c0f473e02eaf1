//! The policy compiler's output: plain data over agent-common types, which
//! the daemon's enforcer (agent-user's `enforce`) writes into the maps.
use agent_common::{Layer, NetRuleKey, PathRuleKey, RuleEntry};

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
