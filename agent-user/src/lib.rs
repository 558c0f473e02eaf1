//! agentgate's daemon and command-line client, one module per concern.
//!
//! Data path: `probe` decides the mode from what the kernel does; `loader`
//! puts the kernel programs in place; `observer` reads their ring buffer;
//! `events` decodes; `procs` enriches from /proc; `sessions` knows who is in
//! which session; `engine` judges against `policy`; `enforce` installs the
//! compiled rulesets in the kernel's maps; `audit` and `journal` record;
//! `control` is the socket the CLI (`cli`; `policy_cli` for `agentgate
//! policy`) talks to; `confine` is the seccomp layer `agentgate exec` puts
//! under an agent.
//!
//! `policy`, `engine` and the event model (`events::Event` and its parts)
//! live in the `agent-policy` crate (lib `agentgate_policy`), re-exported here:
//! plain logic without aya, tokio or RocksDB, so it builds and tests alone
//! in seconds.
pub mod adopt;
pub mod audit;
pub mod btf;
pub mod cli;
pub mod confine;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod events;
pub mod identity;
pub mod journal;
pub mod loader;
pub mod mount;
pub mod observer;
pub mod output;
pub mod pins;
pub mod policy_cli;
pub mod probe;
pub mod procs;
pub mod referrals;
pub mod sessions;
pub mod state;
pub mod users;

pub use agentgate_policy::{engine, policy};
