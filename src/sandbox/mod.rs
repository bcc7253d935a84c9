//! Local stand-ins for the real parts, used by `filesync demo` AND by the tests: a private
//! PostgreSQL cluster from the system's binaries (`postgres.rs`) and real `sshd` processes
//! on 127.0.x.y loopback addresses acting as nodes (`sshd.rs`). Nothing here is used by
//! `filesync serve` in production except the embedded-PostgreSQL default.

pub mod postgres;
pub mod sshd;

pub use postgres::Postgres;
pub use sshd::{SshNode, SshNodeSpec};

/// Runs a command and turns a non-zero exit into an error that carries its stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(out.status.success(), "{:?} failed ({}): {}{}", cmd.get_program(), out.status, String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
