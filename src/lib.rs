//! filesync: keeps the files of several app-server nodes identical.
//!
//! `protocol` is the shared vocabulary (no IO); `agent` is the node agent; `pki` issues
//! certificates; `cli` parses the command line; `demo` is the first-run experience.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod demo;
pub mod pki;
pub mod protocol;
