//! Enrollment that cannot be abused: a join token only lets a clone of a node in its own
//! environment enroll at an address no node has, with the original's stored webroot and
//! install prefix (what the request says about those is ignored), for a limited number of
//! clones. Nothing runs on any node for a refused request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::control::{ControlPlane, describe, until};

async fn enroll(cp: &ControlPlane, token: &str, clone_of: &str, address: &str, prefix: &str, webroot: &str) -> (u16, Value) {
    let body = json!({"token": token, "clone_of": clone_of, "address": address, "webroot": webroot, "install_prefix": prefix, "hostname": "attacker"});
    let r = cp.http.post(format!("{}/api/v1/enroll", cp.url)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn env_nodes(cp: &ControlPlane, env: &str) -> Vec<Value> {
    cp.get(&format!("/api/v1/environments/{env}")).await["nodes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_enrollment_with_another_prefix_or_address_is_refused_and_nothing_runs() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(2);
    let env = cp.environment("enroll", &nodes).await;
    cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    let pid1 = std::fs::read_to_string(nodes[0].install_prefix().join("agent.pid")).unwrap();
    // Another environment's node: a join token of this one must not reach it.
    let (_, other) = cp.post("/api/v1/environments", json!({"name": "other"})).await;
    let other = other["result"].as_str().unwrap().to_owned();
    let other_ip = cp.node_ip(50);
    let (s, v) = cp.post(&format!("/api/v1/environments/{other}/nodes"), json!({"name": "theirs", "address": other_ip, "webroot": "/var/www/webroot"})).await;
    assert_eq!(s, 201, "{v}");

    let (s, tok) = cp.post(&format!("/api/v1/environments/{env}/join-tokens"), json!({"name": "clone hook"})).await;
    assert_eq!(s, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    assert_eq!((tok["join_token"]["max_uses"].as_i64(), tok["join_token"]["uses"].as_i64()), (Some(1), Some(0)), "{tok}");
    let marker = std::env::temp_dir().join(format!("filesync-pwned-{}", uuid::Uuid::new_v4().simple()));
    let hostile = format!("/x/sh -c \"touch {}\" /x/y", marker.display());

    // At the original's own address (taking its place): refused, nothing recorded.
    let (s, v) = enroll(&cp, &token, "node1", &nodes[0].spec.ip.to_string(), &hostile, "/").await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is node node1's"), "{v}");
    // At another environment's node: refused.
    let (s, v) = enroll(&cp, &token, "node1", &other_ip, &hostile, "/").await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("theirs"), "{v}");
    assert_eq!(env_nodes(&cp, &env).await.len(), 2, "a refused clone was recorded");

    // At an address of its own: recorded with node1's stored webroot and prefix, not the
    // ones it asked for.
    let clone_ip = cp.node_ip(99);
    let (s, v) = enroll(&cp, &token, "node1", &clone_ip, &hostile, "/etc").await;
    assert_eq!(s, 201, "{v}");
    let name = v["name"].as_str().unwrap().to_owned();
    let all = env_nodes(&cp, &env).await;
    let (n1, clone) = (all.iter().find(|n| n["name"] == "node1").unwrap(), all.iter().find(|n| n["name"] == name.as_str()).unwrap());
    for k in ["webroot", "install_prefix", "ssh_port", "ssh_user", "agent_port"] {
        assert_eq!(clone[k], n1[k], "{k}: {clone:#}");
    }
    assert_eq!(clone["address"], clone_ip.as_str());
    let events = cp.get(&format!("/api/v1/environments/{env}")).await["events"].to_string();
    assert!(events.contains(&format!("enrolled as {name}")) && events.contains("it asked for another install prefix and webroot, ignored"), "{events}");
    // Its install runs against the address it named (nothing listens there): it stops at
    // the first step.
    let jobs = cp.wait_jobs(&env, Duration::from_secs(120)).await;
    let j = jobs.iter().find(|j| j["node_name"] == name.as_str()).unwrap();
    assert_eq!(j["state"], "failed", "{}", describe(&jobs));
    assert_eq!(j["steps"].as_array().unwrap().len(), 1, "{}", describe(&jobs));

    // The token is spent: a second clone is refused.
    let (s, v) = enroll(&cp, &token, "node1", &cp.node_ip(98), "/opt/filesync", "/var/www/webroot").await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("used for 1 clone"), "{v}");

    // Nothing ran: no marker, node1's agent was not touched, and the two nodes still sync.
    assert!(!marker.exists(), "the injected command ran");
    assert_eq!(std::fs::read_to_string(nodes[0].install_prefix().join("agent.pid")).unwrap(), pid1, "node1's agent was restarted");
    std::fs::write(nodes[0].webroot().join("ROOT/after.txt"), b"still fine").unwrap();
    let p = nodes[1].webroot().join("ROOT/after.txt");
    until("after.txt replicated", Duration::from_secs(30), || if p.exists() { Ok(()) } else { Err("missing".into()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_join_token_used_beyond_its_limit_is_refused() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(1);
    let env = cp.environment("limits", &nodes).await;
    let path = format!("/api/v1/environments/{env}/join-tokens");
    let create = |body: Value| cp.post(&path, body);
    for bad in [json!({"valid_hours": 25}), json!({"valid_hours": 0}), json!({"max_uses": 0}), json!({"max_uses": 101}), json!({"max_uses": "two"})] {
        let (s, v) = create(bad.clone()).await;
        assert_eq!(s, 422, "{bad} was accepted: {v}");
    }
    let (s, tok) = create(json!({"name": "two clones", "valid_hours": 2, "max_uses": 2})).await;
    assert_eq!(s, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    let prefix = nodes[0].install_prefix().display().to_string();
    let webroot = nodes[0].webroot().display().to_string();
    let (a, b, c) = (cp.node_ip(97), cp.node_ip(96), cp.node_ip(95));
    let (s, first) = enroll(&cp, &token, "node1", &a, &prefix, &webroot).await;
    assert_eq!(s, 201, "{first}");
    // The same clone asking again (it restarted before its install) gets the same answer
    // and uses nothing.
    let (s, again) = enroll(&cp, &token, "node1", &a, &prefix, &webroot).await;
    assert_eq!((s, &again["name"]), (201, &first["name"]), "{again}");
    let (s, v) = enroll(&cp, &token, "node1", &b, &prefix, &webroot).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = enroll(&cp, &token, "node1", &c, &prefix, &webroot).await;
    assert_eq!(s, 403, "a third clone enrolled with a two-clone token: {v}");
    let listed = cp.get(&format!("/api/v1/environments/{env}/join-tokens")).await;
    assert_eq!((listed[0]["uses"].as_i64(), listed[0]["max_uses"].as_i64()), (Some(2), Some(2)), "{listed}");
    assert_eq!(env_nodes(&cp, &env).await.len(), 3);
}
