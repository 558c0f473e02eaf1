//! agentgate's daemon and command-line client, one module per concern.
//!
//! Data path: `probe` decides the mode from what the kernel does; `loader` puts the kernel programs in place; `observer` reads
//! their ring buffer; `events` decodes; `procs` enriches from /proc;
//! `sessions` knows who is in which session; `engine` judges against
//! `policy`; `audit` and `journal` record; `control` is the socket the CLI
//! (`cli`) talks to.
pub mod adopt;
pub mod audit;
pub mod btf;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod engine;
pub mod events;
pub mod journal;
pub mod loader;
pub mod mount;
pub mod observer;
pub mod output;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod procs;
pub mod referrals;
pub mod sessions;
pub mod state;
pub mod users;
