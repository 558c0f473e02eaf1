//! Verdicts to journald through the native protocol. (Issue 6.)
