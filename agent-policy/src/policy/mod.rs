//! The YAML policy language (see `policies/README.md`): loading with
//! positions, checking, and compiling to kernel map contents.
//!
//! The daemon calls [`load`] at start and on reload, [`compile_session`]
//! for each new session, and hands events to [`crate::engine::Engine`].
mod compile;
mod context;
mod diagnostic;
mod document;
mod explain;
mod load;
mod matcher;
mod net;
mod pattern;
mod set;
mod yaml;

#[cfg(any(test, feature = "test-support"))]
pub use compile::corpus;
pub use compile::{
    CompileError, Compiled, GrantTarget, Placement, compile_session, compile_tool, compile_tools,
    kernel_tools, placement,
};
pub use context::SessionContext;
pub use diagnostic::{Diagnostic, Location, Pos};
pub use document::{API_VERSION, action_name, valid_name};
pub use explain::parse_event;
pub use load::{load, load_sources};
pub use matcher::{AccessMask, Kind, Subject, access_name};
pub use net::mapped;
pub use pattern::normalize;
pub use set::{After, LabelMap, Origin, PolicySet, Profile, Rule, RuleId, RuleInfo, Tool};
