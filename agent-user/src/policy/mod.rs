//! The YAML policy language: parsing with positions, checking, compiling to
//! kernel map contents. (Issue 3.)
pub mod cli;
