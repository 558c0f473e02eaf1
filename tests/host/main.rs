//! Integration tests against the real host kernel (fallback mode: tracepoints).
//! They load the programs, so they need root; without it they fail, loudly.
mod inproc;
mod support;

mod agents;
mod bad_input;
mod decide;
mod enforce;
mod files;
mod grants;
mod guard;
mod labels;
mod noway;
mod pipeline;
mod probe;
mod restart;
mod trust;
