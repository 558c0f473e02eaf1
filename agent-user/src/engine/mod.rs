//! Judging an event in its session's context against the compiled policy.
//! (Issue 3.)
