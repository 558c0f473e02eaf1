//! Tamper-evident decision receipts. (Issue 6.)
pub mod cli;
