//! Test harness: clusters of real agent processes, tree snapshots, polling with deadlines.

pub mod cluster;
pub mod control;
pub mod poll;
pub mod tree;
