//! The control plane's background work: heartbeats that follow each agent's health without
//! anyone watching the dashboard, and jobs that survive the death of the `filesync serve`
//! process running them (a second process on the same database takes them over).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::control::{ControlPlane, describe};

async fn node_state(cp: &ControlPlane, env: &str, name: &str) -> (String, Value) {
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    let n = v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).cloned().unwrap_or(Value::Null);
    (n["agent_state"].as_str().unwrap_or("").to_owned(), v)
}

async fn wait_state(cp: &ControlPlane, env: &str, name: &str, want: &str, timeout: Duration) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (state, v) = node_state(cp, env, name).await;
        if state == want {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{name} did not become {want} within {timeout:?}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(pid_file: &std::path::Path, sig: &str) {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.trim()).status().unwrap();
    assert!(ok.success(), "kill -{sig} {}", pid.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_heartbeats_follow_agent_health() {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let nodes = cp.nodes(2);
    let env = cp.environment("beats", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));

    // Heartbeats keep coming: the recorded status follows a change nobody asked about.
    std::fs::write(nodes[0].webroot().join("ROOT/a.txt"), b"one").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = node_state(&cp, &env, "node2").await;
        let n = v["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node2").unwrap();
        if n["last_status"]["files"].as_u64() == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node2's heartbeat never showed the replicated file: {n:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A frozen agent turns unreachable (one event), and running again when it answers.
    let pid = nodes[1].install_prefix().join("agent.pid");
    signal(&pid, "STOP");
    let v = wait_state(&cp, &env, "node2", "unreachable", Duration::from_secs(30)).await;
    assert!(v["events"].to_string().contains("node2: the agent stopped answering"), "{v:#}");
    assert_eq!(node_state(&cp, &env, "node1").await.0, "running");
    signal(&pid, "CONT");
    let v = wait_state(&cp, &env, "node2", "running", Duration::from_secs(30)).await;
    assert!(v["events"].to_string().contains("node2: the agent answers again"), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_job_of_a_crashed_worker_is_taken_over() {
    let vars = [("FILESYNC_JOB_STALE_SECONDS", "5")];
    let mut first = ControlPlane::start_with(None, &vars).await;
    let nodes = first.nodes(2);
    let env = first.environment("takeover", &nodes).await;
    first.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    // Crash the worker as soon as it has started a job.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = first.get(&format!("/api/v1/environments/{env}")).await;
        if v["jobs"].as_array().unwrap().iter().any(|j| j["state"] == "running") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no job started: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.crash();

    let second = ControlPlane::start_with(Some(&first), &vars).await;
    let jobs = second.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    assert!(jobs.iter().any(|j| j["attempts"].as_i64() == Some(2)), "the interrupted job was not retried: {}", describe(&jobs));

    std::fs::write(nodes[0].webroot().join("ROOT/after.txt"), b"taken over").unwrap();
    let p = nodes[1].webroot().join("ROOT/after.txt");
    crate::support::control::until("after.txt replicated", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
}
