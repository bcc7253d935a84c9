//! The sync path on real nodes (issue 11, item 12): a path missing on a node is created
//! with the owner and mode of its nearest existing parent, and a change of the sync path
//! is one coordinated operation (pause every node, reconfigure every node, resume); a node
//! that cannot be reached stays paused on the old path, shown as such, and is brought to
//! the new path when it comes back.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use filesync::sandbox::SshNode;
use serde_json::{Value, json};

use crate::support::control::{ControlPlane, describe, until};

const UPLOADS: &str = "ROOT/wp-content/uploads";

fn put(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn step_output(jobs: &[Value], node: &str, step: &str) -> String {
    let j = jobs.iter().find(|j| j["node_name"] == node).unwrap();
    j["steps"].as_array().unwrap().iter().find(|s| s["name"] == step).map(|s| s["output"].as_str().unwrap_or("").to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_install_creates_a_missing_sync_path() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(3);
    // node1 has uploads; node2 has wp-content (www-data, 0750) but no uploads yet; node3
    // has neither.
    put(&nodes[0].webroot(), &format!("{UPLOADS}/2024/a.jpg"), "picture");
    let wp2 = nodes[1].webroot().join("ROOT/wp-content");
    std::fs::create_dir_all(&wp2).unwrap();
    std::os::unix::fs::chown(&wp2, Some(33), Some(33)).unwrap();
    std::fs::set_permissions(&wp2, std::fs::Permissions::from_mode(0o750)).unwrap();
    let env = cp.environment("uploads", &nodes).await;
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": UPLOADS, "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));

    let up2 = nodes[1].webroot().join(UPLOADS);
    assert_eq!(step_output(&jobs, "node2", "sync path present"), format!("created {} on node2 (owner www-data, mode 0750)", up2.display()), "{}", describe(&jobs));
    let m = std::fs::metadata(&up2).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (33, 33, 0o750));
    let up3 = nodes[2].webroot().join(UPLOADS);
    assert!(step_output(&jobs, "node3", "sync path present").starts_with(&format!("created {} on node3 (owner root", up3.display())), "{}", describe(&jobs));
    assert!(up3.is_dir() && nodes[2].webroot().join("ROOT/wp-content").is_dir());
    assert_eq!(step_output(&jobs, "node1", "sync path present"), format!("{} is a directory", nodes[0].webroot().join(UPLOADS).display()));
    for n in &nodes[1..] {
        let p = n.webroot().join(UPLOADS).join("2024/a.jpg");
        until(&format!("a.jpg on {}", n.spec.name), Duration::from_secs(30), || std::fs::read_to_string(&p).map_err(|e| e.to_string()).and_then(|d| if d == "picture" { Ok(()) } else { Err(d) }))
            .await;
    }
}

/// A WordPress-like webroot on every node: the same core files, and each node's own uploads.
fn wordpress(nodes: &[SshNode]) {
    for (i, n) in nodes.iter().enumerate() {
        let w = n.webroot();
        put(&w, "ROOT/index.php", "<?php require 'wp-blog-header.php';");
        put(&w, "ROOT/wp-includes/version.php", "<?php $wp_version = '6.5';");
        put(&w, &format!("{UPLOADS}/2024/photo-{}.jpg", i + 1), &format!("photo of node{}", i + 1));
    }
}

async fn node_view(cp: &ControlPlane, env: &str, name: &str) -> (Value, Value) {
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    let n = v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).cloned().unwrap_or(Value::Null);
    (n, v)
}

/// Waits until node `name` is in state `want` and the installation in state `inst`.
async fn wait_node_state(cp: &ControlPlane, env: &str, name: &str, want: &str, inst: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (n, v) = node_view(cp, env, name).await;
        if n["agent_state"] == want && v["installation"]["state"] == inst {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} did not become {want}: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn folder_id(n: &SshNode) -> String {
    let c = filesync::protocol::agent_toml::AgentToml::from_toml(&std::fs::read_to_string(n.install_prefix().join("agent.toml")).unwrap()).unwrap();
    c.folder_id.unwrap_or_default()
}

fn status_text(n: &SshNode) -> String {
    std::fs::read_to_string(n.webroot().join("lsyncd/var/log/lsyncd.status")).unwrap_or_default()
}

/// Sets up three installed nodes on `uploads`, stops node2's SSH, and changes the path to
/// ROOT; returns once the change has ended with node2 held paused.
async fn change_path_with_node2_unreachable(cp: &ControlPlane, nodes: &mut [SshNode]) -> String {
    wordpress(nodes);
    let env = cp.environment("wordpress", nodes).await;
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": UPLOADS, "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    for n in nodes.iter() {
        for i in 1..=3 {
            let p = n.webroot().join(UPLOADS).join(format!("2024/photo-{i}.jpg"));
            until("every upload on every node", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err(p.display().to_string()) }).await;
        }
    }
    nodes[1].stop_sshd();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    wait_node_state(cp, &env, "node2", "paused", "failed", Duration::from_secs(180)).await;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_path_change_holds_an_unreachable_node_paused_until_it_returns() {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let mut nodes = cp.nodes(3);
    let env = change_path_with_node2_unreachable(&cp, &mut nodes).await;
    let (n2, v) = node_view(&cp, &env, "node2").await;
    assert_eq!((v["installation"]["generation"].as_i64(), n2["config_generation"].as_i64()), (Some(2), Some(1)), "{v:#}");
    assert_eq!(v["installation"]["state"], "failed", "{v:#}");
    // The others have the new path and are not held (a heartbeat that times out on a busy
    // machine may call one unreachable for a moment).
    for other in ["node1", "node3"] {
        let (n, _) = node_view(&cp, &env, other).await;
        assert!(n["agent_state"] == "running" || n["agent_state"] == "unreachable", "{other}: {v:#}");
        assert_eq!(n["config_generation"].as_i64(), Some(2), "{other}: {v:#}");
    }
    // The installation is marked failed first; the events follow once the resumes of the
    // others have answered (a busy machine may take seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = cp.get(&format!("/api/v1/environments/{env}")).await["events"].to_string();
        let missing: Vec<&str> =
            ["sync path change wp-content", "paused 3 of 3 node(s) for the path change", "node2: could not be reconfigured for the new sync path", "paused on the old path: node2"]
                .into_iter()
                .filter(|want| !events.contains(&want.replace("wp-content", "ROOT/wp-content/uploads -> ROOT")))
                .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no event {missing:?}: {events}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every agent got the new folder identity except node2, whose agent is held paused.
    let env_id = env.as_str();
    assert_eq!(folder_id(&nodes[0]), format!("{env_id}:ROOT:2"));
    assert_eq!(folder_id(&nodes[2]), format!("{env_id}:ROOT:2"));
    assert_eq!(folder_id(&nodes[1]), format!("{env_id}:{UPLOADS}:1"));
    until("node2 reports itself paused", Duration::from_secs(15), || if status_text(&nodes[1]).contains("PAUSED") { Ok(()) } else { Err(status_text(&nodes[1])) }).await;
    for i in [0, 2] {
        let n = &nodes[i];
        until(&format!("{} resumed on ROOT", n.spec.name), Duration::from_secs(15), || {
            let s = status_text(n);
            if !s.contains("PAUSED") && s.contains(&format!("source={}/", n.webroot().join("ROOT").display())) { Ok(()) } else { Err(s) }
        })
        .await;
    }

    // node2's SSH comes back: the control plane notices, reconfigures it and resumes it.
    nodes[1].restart_sshd().unwrap();
    let v = wait_node_state(&cp, &env, "node2", "running", "installed", Duration::from_secs(120)).await;
    let events = v["events"].to_string();
    assert!(events.contains("node2: its SSH port answers again") && events.contains("node2: reconfigured for the current sync path; sync resumed"), "{events}");
    assert_eq!(folder_id(&nodes[1]), format!("{env_id}:ROOT:2"));
    until("node2 resumed on ROOT", Duration::from_secs(15), || {
        let s = status_text(&nodes[1]);
        if !s.contains("PAUSED") && s.contains(&format!("source={}/", nodes[1].webroot().join("ROOT").display())) { Ok(()) } else { Err(s) }
    })
    .await;
}

type Files = BTreeMap<PathBuf, String>;

/// Every regular file under a node's webroot (the agent's own folders left out).
fn files(n: &SshNode) -> Files {
    let w = n.webroot();
    walkdir::WalkDir::new(&w)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.path().starts_with(w.join("lsyncd")) && !e.file_name().to_string_lossy().starts_with(".filesync."))
        .map(|e| (e.path().strip_prefix(&w).unwrap().to_owned(), std::fs::read_to_string(e.path()).unwrap_or_default()))
        .collect()
}

/// Nothing that was there is gone or changed, and no core file is inside uploads.
fn nothing_lost_or_misplaced(before: &[Files], nodes: &[SshNode]) -> Result<(), String> {
    for (b, n) in before.iter().zip(nodes) {
        let now = files(n);
        for (p, data) in b {
            if now.get(p) != Some(data) {
                return Err(format!("{}: {} was deleted or changed", n.spec.name, p.display()));
            }
        }
        if let Some(p) =
            now.keys().find(|p| p.starts_with(UPLOADS) && (p.ends_with("index.php") || p.to_string_lossy().contains("wp-includes") || p.to_string_lossy().contains("wp-content/uploads/wp-content")))
        {
            return Err(format!("{}: {} was written into the old folder", n.spec.name, p.display()));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_path_change_uploads_to_root_deletes_nothing_and_writes_nothing_in_the_wrong_folder() {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let mut nodes = cp.nodes(3);
    // The state before the change (the uploads have already spread, see the helper).
    let env = change_path_with_node2_unreachable(&cp, &mut nodes).await;
    let before: Vec<Files> = nodes.iter().map(files).collect();
    // While node2 is held on the old path, the others sync ROOT.
    put(&nodes[0].webroot(), "ROOT/wp-includes/new-core.php", "<?php // 6.6");
    let p = nodes[2].webroot().join("ROOT/wp-includes/new-core.php");
    until("new-core.php on node3", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
    nothing_lost_or_misplaced(&before, &nodes).unwrap();

    // node2 comes back and is brought to ROOT: it gets the new file in ROOT, never in its
    // uploads, and nothing anywhere is lost.
    nodes[1].restart_sshd().unwrap();
    wait_node_state(&cp, &env, "node2", "running", "installed", Duration::from_secs(120)).await;
    let p = nodes[1].webroot().join("ROOT/wp-includes/new-core.php");
    until("new-core.php on node2", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
    until("three identical webroots, nothing lost", Duration::from_secs(30), || {
        nothing_lost_or_misplaced(&before, &nodes)?;
        let f: Vec<Files> = nodes.iter().map(files).collect();
        if f[0] == f[1] && f[1] == f[2] { Ok(()) } else { Err("the webroots differ".into()) }
    })
    .await;
}
