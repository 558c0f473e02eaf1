//! The audit log and the journal against the real things: RocksDB on disk
//! (tampered with through RocksDB's own API), `kill -9` of a writing process,
//! and a real systemd-journald in a private mount namespace.
mod common;
mod crash;
mod export;
mod journald;
mod retention;
mod tamper;
