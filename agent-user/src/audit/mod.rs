//! Tamper-evident decision receipts (issue 6).
//!
//! Every decision becomes a [`Receipt`](receipt::Receipt) chained to the one
//! before by SHA-256 and stored in RocksDB under `<state-dir>/audit`; signed
//! checkpoints (Ed25519) fix the chain every N receipts or T seconds.
//! `agentgate audit verify` checks it all offline.
//!
//! - [`receipt`]: the prost messages, the daemon's input [`Record`], the hash.
//! - [`sign`]: the key pair in the state directory, signed checkpoints.
//! - [`store`]: the RocksDB layout and a read-only [`Reader`].
//! - [`log`]: [`AuditLog`], the writer (group commit, recovery, timers).
//! - [`retention`]: deleting the oldest receipts behind a signed start.
//! - [`verify`], [`export`], [`cli`].
pub mod cli;
pub mod export;
pub mod log;
pub mod receipt;
mod retention;
pub mod sign;
pub mod store;
pub mod verify;

pub use log::{AppendError, AuditLog, Config, OpenError, Pending, Receipted, Retention};
pub use receipt::{
    Action, ActionKind, Agent, Decision, Outcome, Process, Record, Session, Verdict,
};
pub use sign::Verifier;
pub use store::Reader;
pub use verify::{Failure, Problem, Verified, verify};
