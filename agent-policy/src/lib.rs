//! agentgate's policy language and decision engine, as plain logic: no
//! kernel, no async runtime, no store, so it builds and tests in seconds.
//!
//! `policy` loads the YAML policies with positions, checks them and compiles
//! each session's rules to kernel map contents (a [`KernelRuleset`]);
//! `engine` judges an [`event::Event`] in its session's context against the
//! loaded policy set. The daemon (agent-user) decodes kernel records into
//! events, installs rulesets in the maps and acts on the engine's decisions.
// Here, not in [workspace.lints]: agent-user has many types without Debug.
#![warn(missing_debug_implementations)]
pub mod engine;
pub mod event;
pub mod policy;
mod ruleset;

pub use ruleset::KernelRuleset;
