//! Installing, reconfiguring and uninstalling the add-on through the API on real sshd
//! nodes (DESIGN.md requirement 1), and the failures an operator must be told how to fix.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::control::{ControlPlane, describe, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_install_on_three_nodes_replicates_then_reconfigure_uninstall_reinstall() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(3);
    let env = cp.environment("shop", &nodes).await;

    let t = Instant::now();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    eprintln!("install on 3 nodes took {:?}", t.elapsed());

    // A change on node 1 reaches nodes 2 and 3.
    std::fs::write(nodes[0].webroot().join("ROOT/hello.txt"), b"hello").unwrap();
    for n in &nodes[1..] {
        let p = n.webroot().join("ROOT/hello.txt");
        until("hello.txt replicated", Duration::from_secs(30), || std::fs::read(&p).map_err(|e| e.to_string()).and_then(|d| if d == b"hello" { Ok(()) } else { Err("wrong content".into()) })).await;
    }

    // Re-running is idempotent: every step after the login says ok.
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{}", describe(&jobs));
        assert!(j["steps"].as_array().unwrap().iter().all(|s| s["status"] == "ok"), "re-run changed something: {}", describe(&jobs));
    }

    // Reconfigure: a new path inside the webroot.
    for n in &nodes {
        std::fs::create_dir_all(n.webroot().join("ROOT2")).unwrap();
    }
    let (s, _) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT2", "delay": "1"})).await;
    assert_eq!(s, 202);
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded" && j["kind"] == "reconfigure"), "{}", describe(&jobs));
    std::fs::write(nodes[2].webroot().join("ROOT2/moved.txt"), b"x").unwrap();
    let p = nodes[0].webroot().join("ROOT2/moved.txt");
    until("moved.txt replicated on the new path", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;

    // Uninstall stops agents and removes their files; user files stay.
    cp.post(&format!("/api/v1/environments/{env}/uninstall"), json!({})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded" && j["kind"] == "uninstall"), "{}", describe(&jobs));
    for n in &nodes {
        assert!(!n.install_prefix().exists(), "{} still has {}", n.spec.name, n.install_prefix().display());
        assert!(n.webroot().join("ROOT/hello.txt").exists());
    }
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    assert!(v["installation"].is_null(), "{v:#}");

    // Reinstall works from scratch.
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded" && j["kind"] == "install"), "{}", describe(&jobs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_install_failures_say_what_to_fix() {
    let cp = ControlPlane::start().await;
    let mut nodes = cp.nodes(6);
    // node1: its webroot is missing (a sync path below an existing webroot is created, see
    // control_install_creates_a_missing_sync_path); node2: auth refused; node3: unreachable;
    // node4 fine at first; node5: its install prefix is a 2 MiB disk; node6: its install
    // prefix is read-only.
    std::fs::remove_dir_all(nodes[0].webroot()).unwrap();
    let _full = Mount::tmpfs(&nodes[4].install_prefix(), "size=2m");
    let _ro = Mount::tmpfs(&nodes[5].install_prefix(), "ro");
    nodes[1].set_authorized_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEw3bFhMxbvnLxqDMOXq1d1vVUxMvR1CrL3aHCXbOIJj stranger").unwrap();
    nodes[2].stop_sshd();
    let env = cp.environment("broken", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    let by = |n: &str| jobs.iter().find(|j| j["node_name"] == n).unwrap()["error"].as_str().unwrap_or("").to_owned();
    assert!(by("node1").contains("the webroot") && by("node1").contains("does not exist on node1"), "{}", describe(&jobs));
    assert!(!nodes[0].webroot().exists(), "a missing webroot was created");
    assert!(by("node2").contains("refused our SSH key") && by("node2").contains("authorized_keys"), "{}", describe(&jobs));
    assert!(by("node3").contains("cannot reach"), "{}", describe(&jobs));
    assert_eq!(by("node4"), "", "{}", describe(&jobs));
    assert!(by("node5").contains("not enough disk space") && by("node5").contains("MiB free"), "{}", describe(&jobs));
    assert!(by("node6").contains("read-only file system"), "{}", describe(&jobs));
    assert!(!nodes[0].install_prefix().join("agent.pid").exists(), "a failed node was left with an agent");
    for n in &nodes[4..] {
        let left: Vec<_> = walk(&n.install_prefix()).into_iter().filter(|p| p.is_file()).collect();
        assert!(left.is_empty(), "{} was left with {left:?}", n.spec.name);
    }

    // Host key changed: refused, with both fingerprints.
    nodes[3].regenerate_host_key().unwrap();
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    let e = by_name(&jobs, "node4");
    assert!(e.contains("CHANGED") && e.matches("SHA256:").count() == 2, "{}", describe(&jobs));
}

fn by_name(jobs: &[serde_json::Value], n: &str) -> String {
    jobs.iter().find(|j| j["node_name"] == n).unwrap()["error"].as_str().unwrap_or("").to_owned()
}

/// A tmpfs mounted over a directory for the length of a test (the tests run as root).
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &std::path::Path, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(dir).status().unwrap();
        assert!(ok.success(), "this test needs root to mount a tmpfs on {}", dir.display());
        Mount(dir.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir).into_iter().flatten().map(|e| e.into_path()).collect()
}
