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
