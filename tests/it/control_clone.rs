//! A node cloned from an enrolled node's disk (DESIGN.md requirement 3): the copy notices it
//! is a clone, refuses to act as the original, and enrolls itself with an environment join
//! token; wrong and revoked tokens are refused with a clear reason.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::control::{ControlPlane, describe, until};

fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    for e in walkdir::WalkDir::new(from).into_iter().flatten() {
        let rel = e.path().strip_prefix(from).unwrap();
        if skip.iter().any(|s| rel.file_name().is_some_and(|n| n == *s)) {
            continue;
        }
        let dst = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_cloned_node_enrolls_with_a_join_token() {
    let cp = ControlPlane::start().await;
    let mut nodes = cp.nodes(2);
    let env = cp.environment("clones", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    std::fs::write(nodes[0].webroot().join("ROOT/before.txt"), b"before the clone").unwrap();
    let p = nodes[1].webroot().join("ROOT/before.txt");
    until("before.txt replicated", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;

    // Join tokens: one good, one revoked; unknown and revoked ones are refused with a reason.
    let (s, good) = cp.post(&format!("/api/v1/environments/{env}/join-tokens"), json!({"name": "autoscaler", "valid_hours": 2})).await;
    assert_eq!(s, 201, "{good}");
    let (_, bad) = cp.post(&format!("/api/v1/environments/{env}/join-tokens"), json!({"name": "old image"})).await;
    let r = cp.http.delete(format!("{}/api/v1/join-tokens/{}", cp.url, bad["join_token"]["join_token_id"].as_str().unwrap())).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let probe = |token: &str| json!({"token": token, "clone_of": "node1", "address": "127.0.0.99", "webroot": "/x", "install_prefix": "/y"});
    let r = cp.http.post(format!("{}/api/v1/enroll", cp.url)).json(&probe("fsj_guessed")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("not valid for any environment"));

    // Clone node1's disk onto node3: a machine of its own (address, host name, disk) that
    // sees node1's files at node1's paths, with the same config and state and no process.
    nodes.push(cp.clone_node(3, &nodes[0]));
    let (w1, w3) = (nodes[0].webroot(), nodes[2].webroot());
    let (p1, p3) = (nodes[0].install_prefix(), nodes[2].install_prefix());
    copy_tree(&w1, &w3, &[]);
    copy_tree(&p1, &p3, &["agent.pid", "watchdog.pid", "agent.err"]);
    let _ = std::fs::remove_file(w3.join("lsyncd/var/log/lsyncd.log"));
    let enroll = |token: &str| format!("control_plane = \"{}\"\ntoken = \"{token}\"\naddress = \"{}\"\n", cp.url, nodes[2].spec.ip);
    std::fs::write(p3.join("enroll.toml"), enroll(bad["token"].as_str().unwrap())).unwrap();
    // The clone boots: its watchdog starts at node1's path, on the clone's own disk.
    let mut boot = nodes[2].command("setsid").arg("sh").arg(p1.join("run-agent.sh")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || boot.wait());

    let log3 = w3.join("lsyncd/var/log/lsyncd.log");
    until("the clone reports the revoked token", Duration::from_secs(30), || {
        let l = std::fs::read_to_string(&log3).unwrap_or_default();
        if l.contains("copied from node node1") && l.contains("was revoked") { Ok(()) } else { Err(l) }
    })
    .await;
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "a refused clone was enrolled: {v:#}");
    // While refused it never acted as node1: no TLS listener of its own, node1 untouched.
    assert!(std::fs::read_to_string(&log3).unwrap().lines().all(|l| !l.contains("startup complete")));

    // With a valid token it enrolls, gets installed under its own name, and syncs.
    std::fs::write(p3.join("enroll.toml"), enroll(good["token"].as_str().unwrap())).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let clone_name = loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        if let Some(n) = v["nodes"].as_array().unwrap().iter().find(|n| n["name"].as_str().unwrap().starts_with("node1-clone-")) {
            break n["name"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the clone did not enroll: {v:#}\n{}", std::fs::read_to_string(&log3).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    let (cn, _) = filesync::pki::pem_identity(&std::fs::read_to_string(p3.join("tls/node.pem")).unwrap()).unwrap();
    assert_eq!(cn, clone_name, "the clone still holds another node's certificate");
    let (cn1, _) = filesync::pki::pem_identity(&std::fs::read_to_string(p1.join("tls/node.pem")).unwrap()).unwrap();
    assert_eq!(cn1, "node1");

    std::fs::write(w3.join("ROOT/from-clone.txt"), b"hello from the clone").unwrap();
    std::fs::write(w1.join("ROOT/from-original.txt"), b"the original still works").unwrap();
    let w2 = nodes[1].webroot();
    for (w, f) in [(&w1, "from-clone.txt"), (&w2, "from-clone.txt"), (&w3, "from-original.txt")] {
        let p = w.join("ROOT").join(f);
        until(&format!("{f} at {}", p.display()), Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
    }
    let status3 = std::fs::read_to_string(w3.join("lsyncd/var/log/lsyncd.status")).unwrap();
    assert!(status3.contains(&format!("Node: {clone_name}")), "{status3}");
    let ev = cp.get(&format!("/api/v1/environments/{env}")).await["events"].to_string();
    assert!(ev.contains(&format!("clone of node1 enrolled as {clone_name}")), "{ev}");
}
