//! Test harness: clusters of real agent processes, a control plane with sshd nodes, a
//! headless browser, tree snapshots, polling with deadlines.

pub mod browser;
pub mod cluster;
pub mod control;
pub mod poll;
pub mod proxy;
pub mod tree;
