//! Topology scaling (DESIGN.md requirement 3): nodes added through the API are installed and
//! every existing agent learns about them without restarting; removed nodes leave the peer
//! lists at once (uninstalled when reachable, marked gone when not); sync pauses and resumes
//! around a redeploy; platform events map to these actions through the manifest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::control::{ControlPlane, describe, until};
use crate::support::tree;

fn pid(n: &filesync::sandbox::SshNode) -> String {
    std::fs::read_to_string(n.install_prefix().join("agent.pid")).unwrap().trim().to_owned()
}

fn node_json(n: &filesync::sandbox::SshNode) -> Value {
    json!({"name": n.spec.name, "address": n.spec.ip.to_string(), "ssh_port": 2222, "webroot": n.webroot().display().to_string(), "install_prefix": n.install_prefix().display().to_string()})
}

async fn node_id(cp: &ControlPlane, env: &str, name: &str) -> String {
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()["node_id"].as_str().unwrap().to_owned()
}

async fn events(cp: &ControlPlane, env: &str) -> String {
    cp.get(&format!("/api/v1/environments/{env}")).await["events"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_scale_out_under_writes_then_scale_in() {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let mut nodes = cp.nodes(5);
    let env = cp.environment("grow", &nodes[..2]).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    let pids_before: Vec<String> = nodes[..2].iter().map(pid).collect();
    // node4 already holds a file of its own: it must be reconciled, not wiped.
    std::fs::write(nodes[3].webroot().join("ROOT/own-file-of-node4.txt"), b"was here first").unwrap();

    // A writer keeps adding files on node 1 during the whole scale-out.
    let stop = Arc::new(AtomicBool::new(false));
    let root1 = nodes[0].webroot().join("ROOT");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut written = BTreeSet::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("w/f{i:05}.txt");
                std::fs::create_dir_all(root1.join("w")).unwrap();
                std::fs::write(root1.join(&name), format!("write {i}")).unwrap();
                written.insert(name);
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/nodes"), json!({"nodes": nodes[2..].iter().map(node_json).collect::<Vec<_>>()})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["result"].as_array().map(Vec::len), Some(3), "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    eprintln!("scale-out of 3 nodes: jobs done after {:?}", t.elapsed());
    for j in jobs.iter().filter(|j| j["node_name"] == "node1" || j["node_name"] == "node2") {
        let steps = j["steps"].to_string();
        assert!(steps.contains("without restarting") && steps.contains("reloaded its peer list"), "an existing agent was not reloaded in place: {}", describe(&jobs));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written.len() > 20, "the writer wrote only {} files", written.len());

    // All five converge on the same tree, with every write and node4's own file.
    until("five identical trees", Duration::from_secs(60), || {
        let first = tree::snapshot(&nodes[0].webroot().join("ROOT"));
        let missing: Vec<&String> = written.iter().filter(|w| !first.contains_key(w.as_str())).collect();
        if !missing.is_empty() {
            return Err(format!("node1 lacks {} written files, e.g. {:?}", missing.len(), missing.first()));
        }
        if !first.contains_key("own-file-of-node4.txt") {
            return Err("node4's own file did not spread".into());
        }
        for n in &nodes[1..] {
            let d = tree::diff("node1", &first, &n.spec.name, &tree::snapshot(&n.webroot().join("ROOT")));
            if !d.is_empty() {
                return Err(d.join("\n"));
            }
        }
        Ok(())
    })
    .await;
    let pids_after: Vec<String> = nodes[..2].iter().map(pid).collect();
    assert_eq!(pids_before, pids_after, "an existing agent was restarted");
    assert!(events(&cp, &env).await.contains("scale out: 3 nodes added"));

    // Scale in, reachable node: uninstalled, removed, and its peers drop it.
    let id5 = node_id(&cp, &env, "node5").await;
    let r = cp.http.delete(format!("{}/api/v1/nodes/{id5}", cp.url)).bearer_auth(&cp.token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(!v["jobs"].as_array().unwrap().is_empty(), "scale in answers with the jobs it queued: {v}");
    let status1 = nodes[0].webroot().join("lsyncd/var/log/lsyncd.status");
    until("node1 drops node5", Duration::from_secs(30), || {
        let s = std::fs::read_to_string(&status1).unwrap_or_default();
        if s.contains("node5") { Err(s) } else { Ok(()) }
    })
    .await;
    until("node5 uninstalled", Duration::from_secs(60), || if nodes[4].install_prefix().exists() { Err("prefix still there".into()) } else { Ok(()) }).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events(&cp, &env).await.contains("node node5 uninstalled and removed") {
        assert!(Instant::now() < deadline, "no removal event: {}", events(&cp, &env).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scale in, unreachable node (platform event): marked gone, not retried.
    nodes[3].stop_sshd();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/events/before-scale-in"), json!({"nodes": ["node4"]})).await;
    assert_eq!(s, 202, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        let n4 = v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node4").cloned().unwrap_or(Value::Null);
        if n4["agent_state"] == "gone" {
            assert!(v["events"].to_string().contains("marked gone"), "{v:#}");
            break;
        }
        assert!(Instant::now() < deadline, "node4 not marked gone: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until("node1 drops node4", Duration::from_secs(30), || {
        let s = std::fs::read_to_string(&status1).unwrap_or_default();
        if s.contains("node4") { Err(s) } else { Ok(()) }
    })
    .await;
    // The remaining three still replicate, and the installation is healthy.
    std::fs::write(nodes[1].webroot().join("ROOT/after-scale-in.txt"), b"x").unwrap();
    for n in [&nodes[0], &nodes[2]] {
        let p = n.webroot().join("ROOT/after-scale-in.txt");
        until("after-scale-in.txt replicated", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
    }
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    assert_eq!(v["installation"]["state"], "installed", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_pause_and_resume_around_a_redeploy() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(2);
    let env = cp.environment("redeploy", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));

    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/events/before-redeploy"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["not_reached"].as_array().map(Vec::len), Some(0), "{v}");
    // A half-deployed tree on node 1 must not travel while paused.
    for i in 0..20 {
        std::fs::create_dir_all(nodes[0].webroot().join("ROOT/app")).unwrap();
        std::fs::write(nodes[0].webroot().join(format!("ROOT/app/part{i}.php")), format!("part {i}")).unwrap();
    }
    let status1 = nodes[0].webroot().join("lsyncd/var/log/lsyncd.status");
    until("node1 reports PAUSED", Duration::from_secs(15), || {
        let s = std::fs::read_to_string(&status1).unwrap_or_default();
        if s.contains("PAUSED") { Ok(()) } else { Err(s) }
    })
    .await;
    // Absence can only be shown over a window: three seconds at delay 0 is ample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!nodes[1].webroot().join("ROOT/app").exists(), "files replicated while paused");

    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/events/after-redeploy"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let p = nodes[1].webroot().join("ROOT/app");
    until("the deployed tree after resume", Duration::from_secs(30), || {
        let n = std::fs::read_dir(&p).map(|d| d.count()).unwrap_or(0);
        if n == 20 { Ok(()) } else { Err(format!("{n} of 20 files")) }
    })
    .await;
    let ev = events(&cp, &env).await;
    assert!(ev.contains("sync paused on 2 node(s)") && ev.contains("sync resumed on 2 node(s)"), "{ev}");

    // Unknown events are refused with the list of known ones.
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/events/after-something"), json!({})).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("after-scale-out"), "{v}");
}
