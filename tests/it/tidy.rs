//! Repository rules checked by `cargo test`: every module under src/ starts with a `//!`
//! doc comment saying what it owns, ARCHITECTURE.md names every directory under src/,
//! dependencies point one way (control and agent share only `protocol` and `pki`; the
//! protocol does no IO; no cycles between the control plane's parts or cli and demo; their
//! contracts are serde types declared once, in `protocol`), only `control::db` holds SQL,
//! and modules stay under 500 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(&src) {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "rs") {
            let rel = e.path().strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Lines that are code (not comments), with their numbers.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim_start().starts_with("//"))
}

#[test]
fn every_module_has_a_doc_comment() {
    let missing: Vec<String> = sources().into_iter().filter(|(_, text)| !text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").starts_with("//!")).map(|(p, _)| p).collect();
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

/// Lines allowed to break the dependency rule while a move is in progress (none now).
const PENDING_TLS_MOVE: &[(&str, &str)] = &[];

#[test]
fn control_and_agent_share_only_protocol_and_pki() {
    let mut bad = Vec::new();
    for (path, text) in sources() {
        let forbidden: &[&str] = if path.starts_with("control/") {
            &["crate::agent", "crate::cli", "crate::demo"]
        } else if path.starts_with("agent/") {
            &["crate::control", "crate::cli", "crate::demo", "crate::sandbox"]
        } else if path.starts_with("pki/") {
            &["crate::agent", "crate::control", "crate::cli", "crate::demo", "crate::sandbox"]
        } else if path.starts_with("protocol/") {
            &["crate::agent", "crate::control", "crate::pki", "crate::sandbox", "crate::cli", "crate::demo", "tokio", "std::fs", "std::net::Tcp", "std::net::Udp", "std::process", "reqwest", "sqlx"]
        } else {
            &[]
        };
        for (n, line) in code_lines(&text) {
            for f in forbidden {
                if line.contains(f) && !PENDING_TLS_MOVE.iter().any(|(p, l)| *p == path && line.contains(l)) {
                    bad.push(format!("src/{path}:{n}: {f} in `{}`", line.trim()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "dependencies must point one way (control and agent share only protocol and pki; protocol does no IO):\n{}", bad.join("\n"));
}

#[test]
fn only_control_db_holds_sql() {
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("control/db/"))
        .flat_map(|(p, text)| code_lines(&text).filter(|(_, l)| l.contains("sqlx::query")).map(|(n, l)| format!("src/{p}:{n}: {}", l.trim())).collect::<Vec<_>>())
        .collect();
    assert!(bad.is_empty(), "SQL outside control::db:\n{}", bad.join("\n"));
}

/// The unit a source file belongs to: `cli`, `demo`, a top-level module, or one part of
/// the control plane (`control::http`, `control::jobs`, ...; `control` itself is their parent).
fn unit_of_module(module: &[&str]) -> String {
    match module {
        ["control", child, ..] if child.starts_with(|c: char| c.is_ascii_lowercase()) => format!("control::{child}"),
        [top, ..] => (*top).to_owned(),
        [] => "crate".into(),
    }
}

/// The module path of a file: `control/jobs/install.rs` → [control, jobs, install].
fn module_of(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

/// Every unit a file refers to with `crate::a::b` or `super::...` paths.
fn references(path: &str, text: &str) -> BTreeSet<String> {
    let me = module_of(path);
    let mut out = BTreeSet::new();
    for (_, line) in code_lines(text) {
        for (i, _) in line.match_indices("crate::") {
            let rest: Vec<&str> = line[i + 7..].split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).next().unwrap_or("").split("::").collect();
            out.insert(unit_of_module(&rest));
        }
        for (i, _) in line.match_indices("super::") {
            if i > 0 && line[..i].ends_with("super::") {
                continue;
            }
            let mut base = me.clone();
            let mut rest = &line[i..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let next = rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
            let mut m: Vec<&str> = base.iter().map(String::as_str).collect();
            if !next.is_empty() && next.chars().next().is_some_and(|c| c.is_lowercase()) {
                m.push(next);
            }
            out.insert(unit_of_module(&m));
        }
    }
    out
}

#[test]
fn no_dependency_cycles_between_parts() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let unit = unit_of_module(&module_of(&path).iter().map(String::as_str).collect::<Vec<_>>());
        let refs = references(&path, &text);
        let e = graph.entry(unit.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != unit && r != "control" && r != "crate"));
    }
    graph.remove("control");
    // Depth-first search for a back edge.
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            panic!("dependency cycle: {}\n(graph: {graph:#?})", cycle.join(" -> "));
        }
    }
    // The specific cycles this rule was written for.
    assert!(!graph["cli"].contains("demo") || !graph["demo"].contains("cli"));
    assert!(graph.get("control::jobs").is_some_and(|d| !d.contains("control::http") && !d.contains("control::ops")), "{:?}", graph.get("control::jobs"));
}

#[test]
fn every_source_file_is_a_declared_module() {
    let files = sources();
    let text_of = |p: &str| files.iter().find(|(f, _)| f == p).map(|(_, t)| t.as_str());
    let mut orphans = Vec::new();
    for (path, _) in &files {
        if path == "lib.rs" || path == "main.rs" {
            continue;
        }
        let module = module_of(path);
        let (name, parent) = module.split_last().expect("BUG: a source file names a module");
        let parent_dir = parent.join("/");
        let candidates: Vec<String> = if parent.is_empty() { vec!["lib.rs".into()] } else { vec![format!("{parent_dir}/mod.rs"), format!("{parent_dir}.rs")] };
        let declared = candidates.iter().filter_map(|c| text_of(c)).any(|t| {
            code_lines(t).any(|(_, l)| {
                let l = l.trim();
                l == format!("mod {name};") || l == format!("pub mod {name};") || l == format!("pub(crate) mod {name};")
            })
        });
        if !declared {
            orphans.push(format!("src/{path}"));
        }
    }
    assert!(orphans.is_empty(), "source files no module declares (dead code nobody compiles): {orphans:?}");
}

#[test]
fn modules_stay_small() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let big: Vec<String> = sources().into_iter().filter(|(_, t)| t.lines().count() > 500).map(|(p, t)| format!("{} ({} lines)", root.join(p).display(), t.lines().count())).collect();
    assert!(big.is_empty(), "modules over 500 lines (split them by concept): {big:?}");
}

#[test]
fn the_rules_see_what_they_should() {
    let r = references("control/jobs/install.rs", "use super::config;\nuse crate::control::db::x;\nlet a = super::super::ops::y;\n// crate::agent in a comment\n");
    assert_eq!(r, ["control::db", "control::jobs", "control::ops"].into_iter().map(String::from).collect());
    let r = references("control/monitor.rs", "use super::db;\nuse super::AppState;\n");
    assert_eq!(r, ["control", "control::db"].into_iter().map(String::from).collect());
}

/// The agent runs as root next to files other users control: under src/agent/ only
/// `root` (the sync folder) creates or writes files; the agent's own files (log, status,
/// state, index) go through `private_fs` (no links followed, verified directories).
#[test]
fn the_agent_writes_files_only_through_root_and_private_fs() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        if !path.starts_with("agent/") || path.starts_with("agent/root/") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for pat in ["fs::write(", "File::create(", "OpenOptions::new(", "create_dir_all(", "set_permissions("] {
            if code.contains(pat) {
                offenders.push(format!("src/{path}: {pat}"));
            }
        }
    }
    assert!(offenders.is_empty(), "write the agent's own files through private_fs (or the sync folder through agent::root): {offenders:?}");
}

/// Only `agent::root` renames, deletes or links inside the sync folder; the inbound path
/// reaches the disk through it (and the agent's own files through `private_fs`).
#[test]
fn the_sync_folder_is_changed_only_through_root() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        if !path.starts_with("agent/") || path.starts_with("agent/root/") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for pat in ["fs::rename(", "remove_file(", "remove_dir(", "remove_dir_all(", "fs::symlink(", "hard_link(", "renameat", "unlinkat"] {
            if code.contains(pat) {
                offenders.push(format!("src/{path}: {pat}"));
            }
        }
    }
    assert!(offenders.is_empty(), "change the sync folder only through agent::root: {offenders:?}");
}

/// What another machine sends (a peer, an agent answering the control plane, the control
/// plane answering an enrolling agent) is read with a limit (`pki::tls::read_limited`),
/// never with reqwest's unbounded `json()`, `text()` or `bytes()`.
#[test]
fn answers_from_other_machines_are_read_with_a_limit() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        if !(path.starts_with("agent/") || path.starts_with("control/")) {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for pat in [".json().await", ".text().await", ".bytes().await", ".json::<"] {
            if code.contains(pat) {
                offenders.push(format!("src/{path}: {pat}"));
            }
        }
    }
    assert!(offenders.is_empty(), "read answers with pki::tls::read_limited: {offenders:?}");
}

/// Contracts between the agent and the control plane are one serde type in `protocol`, not a
/// copy on each side that drifts: no type with a serde derive is declared under the same
/// name in both `agent/` and `control/`.
#[test]
fn agent_and_control_plane_share_their_contracts_from_protocol() {
    let mut declared: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (path, text) in sources() {
        let Some(part) = ["agent/", "control/"].into_iter().find(|p| path.starts_with(p)) else { continue };
        let mut serde_derive = false;
        for (n, line) in code_lines(&text) {
            let t = line.trim_start();
            if t.starts_with("#[derive(") {
                serde_derive = t.contains("Serialize") || t.contains("Deserialize");
                continue;
            }
            if t.starts_with("#[") {
                continue;
            }
            let decl = t.trim_start_matches("pub ").trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ");
            if serde_derive && let Some(rest) = decl.strip_prefix("struct ").or_else(|| decl.strip_prefix("enum ")) {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                declared.entry(name).or_default().insert(part.to_owned(), format!("src/{path}:{n}"));
            }
            serde_derive = false;
        }
    }
    let both: Vec<String> = declared.iter().filter(|(_, at)| at.len() > 1).map(|(name, at)| format!("{name} ({})", at.values().cloned().collect::<Vec<_>>().join(", "))).collect();
    assert!(both.is_empty(), "declare these once in src/protocol and use them from both sides: {both:?}");
}
