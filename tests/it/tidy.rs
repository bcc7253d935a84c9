//! Repository rules checked by `cargo test`: every module under src/ starts with a `//!`
//! doc comment saying what it owns, and ARCHITECTURE.md names every directory under src/.

use std::path::Path;

#[test]
fn every_module_has_a_doc_comment() {
    let mut missing = Vec::new();
    for e in walkdir::WalkDir::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !first.starts_with("//!") {
                missing.push(e.path().display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "Missing module docs (start the file with //!): {missing:?}");
}

#[test]
fn architecture_names_every_source_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    for e in std::fs::read_dir(root.join("src")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            let name = format!("src/{}/", e.file_name().to_string_lossy());
            assert!(arch.contains(&name), "ARCHITECTURE.md does not mention {name}");
        }
    }
}

/// The agent runs as root next to files other users control: under src/agent/ only
/// `root` (the sync folder) creates or writes files; the agent's own files (log, status,
/// state, index) go through `private_fs` (no links followed, verified directories).
#[test]
fn the_agent_writes_files_only_through_root_and_private_fs() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent");
    let mut offenders = Vec::new();
    for e in walkdir::WalkDir::new(&agent) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&agent).unwrap().to_string_lossy().into_owned();
        if e.path().extension().is_none_or(|x| x != "rs") || rel == "root.rs" || rel.starts_with("root/") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for pat in ["fs::write(", "File::create(", "OpenOptions::new(", "create_dir_all(", "set_permissions("] {
            if code.contains(pat) {
                offenders.push(format!("src/agent/{rel}: {pat}"));
            }
        }
    }
    assert!(offenders.is_empty(), "write the agent's own files through private_fs (or the sync folder through agent::root): {offenders:?}");
}

/// Every module stays one concept that fits in a reader's head: at most 500 lines, except
/// the files listed here with the reason they are still larger.
#[test]
fn modules_stay_small() {
    const LARGER: &[(&str, &str)] = &[
        ("src/control/jobs/install.rs", "the installer's steps; being split into a service layer (issue 13)"),
        ("src/control/http/pages.rs", "the dashboard pages; being split with the service layer (issue 13)"),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut big = Vec::new();
    for e in walkdir::WalkDir::new(root.join("src")) {
        let e = e.unwrap();
        if e.path().extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let lines = std::fs::read_to_string(e.path()).unwrap().lines().count();
        if lines > 500 && !LARGER.iter().any(|(f, _)| *f == rel) {
            big.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(big.is_empty(), "split these modules (one concept each, ~500 lines at most): {big:?}");
}

/// Dependencies point down: `protocol` (pure) and `pki` are shared; the agent and the
/// control plane use them and never each other.
#[test]
fn dependencies_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: &[(&str, &[&str])] = &[
        ("agent", &["crate::control", "crate::demo", "crate::sandbox", "crate::cli"]),
        ("control", &["crate::agent", "crate::demo", "crate::cli"]),
        ("protocol", &["crate::agent", "crate::control", "crate::pki", "crate::sandbox", "tokio", "std::fs", "std::net::Tcp", "reqwest", "sqlx", "redb"]),
        ("pki", &["crate::agent", "crate::control", "crate::demo", "crate::sandbox"]),
    ];
    let mut bad = Vec::new();
    for (dir, forbidden) in rules {
        for e in walkdir::WalkDir::new(root.join(dir)) {
            let e = e.unwrap();
            if e.path().extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            for f in *forbidden {
                if text.lines().any(|l| !l.trim_start().starts_with("//") && l.contains(f)) {
                    bad.push(format!("{} uses {f}", e.path().strip_prefix(&root).unwrap().display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "dependencies must point down (protocol and pki are shared; agent and control never use each other): {bad:?}");
}

/// Only `agent::root` renames, deletes or links inside the sync folder; the inbound path
/// reaches the disk through it (and the agent's own files through `private_fs`).
#[test]
fn the_sync_folder_is_changed_only_through_root() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent");
    let mut offenders = Vec::new();
    for e in walkdir::WalkDir::new(&agent) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&agent).unwrap().to_string_lossy().into_owned();
        if e.path().extension().is_none_or(|x| x != "rs") || rel.starts_with("root/") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for pat in ["fs::rename(", "remove_file(", "remove_dir(", "remove_dir_all(", "fs::symlink(", "hard_link(", "renameat", "unlinkat"] {
            if code.contains(pat) {
                offenders.push(format!("src/agent/{rel}: {pat}"));
            }
        }
    }
    assert!(offenders.is_empty(), "change the sync folder only through agent::root: {offenders:?}");
}
