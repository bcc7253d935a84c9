//! Which node this agent is, and whether the state dir it was given is its own.
//!
//! On first start the agent writes `identity.toml` into its state dir: its node name and a
//! fingerprint of the machine it runs on (machine-id, host name, the state dir's real path).
//! A later start compares:
//! - same name, same fingerprint: the normal case;
//! - same name, other fingerprint: this disk was cloned from an enrolled node. The agent
//!   refuses to act as that node (it would impersonate it) and enrolls itself instead
//!   (see [`super::enroll`]);
//! - other name: the control plane gave this node a new identity (after enrolling a clone):
//!   the index describes another node's history, so it is discarded and rebuilt by a scan
//!   (files on disk are kept and reconciled with the peers; identical content is no conflict).
//!
//! The check is also where the state dir is first opened at start-up: it is created and
//! verified (mode 0700, owned by the agent, never through a link; see `private_fs`)
//! before the index or anything else is put in it.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::Settings;
use crate::private_fs::PrivateDir;

const FILE: &str = "identity.toml";

#[derive(Debug, PartialEq)]
pub enum Identity {
    /// No identity recorded yet (first start, or an agent from before identities).
    Fresh,
    Same,
    /// The state dir belonged to a node of another name.
    Renamed {
        was: String,
    },
    /// The state dir (and config) were copied from node `of` on another machine.
    Clone {
        of: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Stored {
    node_name: String,
    fingerprint: String,
}

/// What distinguishes this machine and this state dir from a copy of them elsewhere.
pub fn fingerprint(state_dir: &Path) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let mut h = Sha256::new();
    for part in [machine.trim(), host.trim(), &dir.to_string_lossy()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

pub fn check(s: &Settings) -> anyhow::Result<Identity> {
    let path = s.state_dir.join(FILE);
    let dir = PrivateDir::state(&s.state_dir).with_context(|| format!("cannot use state dir {}", s.state_dir.display()))?;
    let text = match dir.read(FILE).with_context(|| format!("cannot read {}", path.display()))? {
        Some(t) => String::from_utf8_lossy(&t).into_owned(),
        None => return Ok(Identity::Fresh),
    };
    let stored: Stored = toml::from_str(&text).with_context(|| format!("{} is damaged; remove it to start afresh", path.display()))?;
    Ok(if stored.node_name != s.node_name {
        Identity::Renamed { was: stored.node_name }
    } else if stored.fingerprint != fingerprint(&s.state_dir) {
        Identity::Clone { of: stored.node_name }
    } else {
        Identity::Same
    })
}

pub fn record(s: &Settings) -> anyhow::Result<()> {
    let dir = PrivateDir::state(&s.state_dir).with_context(|| format!("cannot use state dir {}", s.state_dir.display()))?;
    let text = toml::to_string(&Stored { node_name: s.node_name.clone(), fingerprint: fingerprint(&s.state_dir) })?;
    dir.write_atomic(FILE, format!("# Written by the filesync agent: which node owns this state dir.\n{text}").as_bytes(), true)
        .with_context(|| format!("cannot write {}", s.state_dir.join(FILE).display()))
}

/// Drops another node's index (and the enrollment marker) so this node starts its own.
pub fn reset_state(s: &Settings) -> anyhow::Result<()> {
    let dir = PrivateDir::state(&s.state_dir).with_context(|| format!("cannot use state dir {}", s.state_dir.display()))?;
    for f in ["index.redb", super::enroll::MARKER] {
        dir.remove(f).with_context(|| format!("cannot remove {}", s.state_dir.join(f).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, name: &str) -> Settings {
        std::fs::create_dir_all(dir.join("root")).unwrap();
        for f in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let text = format!(
            "node_name = \"{name}\"\nlisten = \"127.0.0.1:7755\"\nroot = \"{}\"\nstate_dir = \"{}\"\n[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n",
            dir.join("root").display(),
            dir.join("state").display()
        );
        Settings::parse(&text, dir).unwrap()
    }

    #[test]
    fn same_renamed_and_cloned_state_dirs_are_told_apart() {
        let a = tempfile::tempdir().unwrap();
        let s = settings(a.path(), "node1");
        assert_eq!(check(&s).unwrap(), Identity::Fresh);
        record(&s).unwrap();
        assert_eq!(check(&s).unwrap(), Identity::Same);
        assert_eq!(check(&settings(a.path(), "node9")).unwrap(), Identity::Renamed { was: "node1".into() });
        // The same state dir copied elsewhere (another disk, another machine).
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(b.path().join("state")).unwrap();
        std::fs::copy(a.path().join("state").join(FILE), b.path().join("state").join(FILE)).unwrap();
        assert_eq!(check(&settings(b.path(), "node1")).unwrap(), Identity::Clone { of: "node1".into() });
    }
}
