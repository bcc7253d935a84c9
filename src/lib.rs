//! filesync: keeps the files of several app-server nodes identical.
//!
//! `protocol` is the shared vocabulary (no IO); `agent` is the node agent; `pki` issues
//! certificates and loads TLS material; `private_fs` writes the process's own files without
//! following links; `control` is the control plane (`filesync serve`); `sandbox` runs local
//! PostgreSQL and sshd nodes for `demo` and tests; `cli` parses the command line; `demo` is the first-run experience.
// Denied, not forbidden: `cli::take_secret_env` removes secrets from the environment at
// start (std::env::remove_var is unsafe in edition 2024) and `agent::memory::give_back`
// calls glibc's malloc_trim; the two reviewed exceptions.
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod control;
pub mod demo;
pub mod pki;
pub mod private_fs;
pub mod protocol;
pub mod sandbox;
