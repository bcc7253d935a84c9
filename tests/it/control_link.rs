//! Cross-environment sync (DESIGN.md requirement 4) end to end: two control planes on one
//! PostgreSQL server (two databases), two environments of two sshd nodes each, installed in
//! two-environment mode through the API, linked through TCP fault proxies that add 80 ms
//! each way.

use std::collections::BTreeMap;
use std::time::Duration;

use filesync::sandbox::SshNode;
use serde_json::{Value, json};

use crate::support::control::{ControlPlane, until};
use crate::support::proxy::FaultProxy;

const LATENCY: Duration = Duration::from_millis(80);
const T: Duration = Duration::from_secs(90);
const PASSWORD: &str = "Moscow-Amsterdam shared secret 42";

/// Fields drop in order: the nodes (and their agents) before the control plane, whose
/// directory holds theirs.
struct Side {
    nodes: Vec<SshNode>,
    cp: ControlPlane,
    env: String,
}

async fn side(name: &str) -> Side {
    let cp = ControlPlane::start_with(None, &[("FILESYNC_HEARTBEAT_SECONDS", "1")]).await;
    let nodes = cp.nodes(2);
    let env = cp.environment(name, &nodes).await;
    Side { nodes, cp, env }
}

async fn install(s: &Side, address: &str, password: &str) {
    let (st, v) = s.cp.post(&format!("/api/v1/environments/{}/install", s.env), json!({"mode": "two_envs", "path": "ROOT", "delay": "0", "address": address, "password": password})).await;
    assert_eq!(st, 202, "{v}");
    let jobs = s.cp.wait_jobs(&s.env, Duration::from_secs(120)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", crate::support::control::describe(&jobs));
}

fn link_port(n: &SshNode) -> std::net::SocketAddr {
    format!("{}:7756", n.spec.ip).parse().unwrap()
}

fn root(n: &SshNode) -> std::path::PathBuf {
    n.webroot().join("ROOT")
}

fn put(n: &SshNode, rel: &str, data: &[u8]) {
    let p = root(n).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every regular file under the root (lsyncd/ is outside it), with its content.
fn tree(n: &SshNode) -> BTreeMap<String, Vec<u8>> {
    let r = root(n);
    walkdir::WalkDir::new(&r)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with(".filesync."))
        .map(|e| (e.path().strip_prefix(&r).unwrap().display().to_string(), std::fs::read(e.path()).unwrap_or_default()))
        .collect()
}

/// Ok when both nodes hold the same files, else the paths that differ (for the failure message).
fn differences(x: &SshNode, y: &SshNode) -> Result<(), String> {
    let (tx, ty) = (tree(x), tree(y));
    let diff: Vec<String> = tx
        .keys()
        .chain(ty.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| tx.get(*k) != ty.get(*k))
        .map(|k| format!("{k}: {} {}, {} {}", x.spec.name, if tx.contains_key(k) { "has it" } else { "lacks it" }, y.spec.name, if ty.contains_key(k) { "has it" } else { "lacks it" }))
        .collect();
    if diff.is_empty() {
        return Ok(());
    }
    let tail = |n: &SshNode| {
        let log = std::fs::read_to_string(n.webroot().join("lsyncd/var/log/lsyncd.log")).unwrap_or_default();
        log.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    Err(format!("{}\n--- {} lsyncd.log ---\n{}\n--- {} lsyncd.log ---\n{}", diff.join("; "), x.spec.name, tail(x), y.spec.name, tail(y)))
}

async fn links(s: &Side) -> Vec<Value> {
    let v = s.cp.get(&format!("/api/v1/environments/{}", s.env)).await;
    v["nodes"].as_array().cloned().unwrap_or_default().iter().map(|n| n["link"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_two_environments_sync_through_a_slow_link_and_survive_a_cut() {
    let a = side("moscow").await;
    let b = side("amsterdam").await;
    // Each side names the other's first node, through a proxy that adds 80 ms each way.
    let to_b = FaultProxy::start(format!("{}:7756", a.cp.node_ip(200)).parse().unwrap(), link_port(&b.nodes[0]), LATENCY);
    let to_a = FaultProxy::start(format!("{}:7756", b.cp.node_ip(200)).parse().unwrap(), link_port(&a.nodes[0]), LATENCY);
    install(&a, &to_b.addr().to_string(), PASSWORD).await;
    install(&b, &to_a.addr().to_string(), PASSWORD).await;

    // A write on A's second node reaches B's second node, and back.
    let secret_content = b"content that must never cross in clear: 7f3a9c1e".repeat(50);
    put(&a.nodes[1], "from-a/report.txt", &secret_content);
    until("A2's file on B2", T, || if tree(&b.nodes[1]).get("from-a/report.txt") == Some(&secret_content) { Ok(()) } else { Err(format!("{:?}", tree(&b.nodes[1]).keys().collect::<Vec<_>>())) }).await;
    put(&b.nodes[1], "from-b/photo.bin", &vec![0xAB; 200_000]);
    until("B2's file on A2", T, || if tree(&a.nodes[1]).get("from-b/photo.bin").map(Vec::len) == Some(200_000) { Ok(()) } else { Err("not yet".into()) }).await;

    // Both dashboards show the link: the leader connected with a measured latency, the other on standby.
    for s in [&a, &b] {
        let deadline = std::time::Instant::now() + T;
        loop {
            let l = links(s).await;
            let leader = l.iter().find(|x| x["leader"] == true && x["state"] == "connected");
            if let Some(x) = leader
                && x["latency_ms"].as_f64().is_some_and(|ms| ms >= 2.0 * LATENCY.as_millis() as f64)
                && x["bytes_in"].as_u64().unwrap_or(0) > 0
                && l.iter().any(|x| x["state"] == "standby")
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "link state: {l:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The link is cut while both sides write and delete; after it heals everything converges,
    // nothing is lost and nothing deleted comes back.
    put(&a.nodes[0], "doomed-a.txt", b"deleted on A during the cut");
    put(&b.nodes[0], "doomed-b.txt", b"deleted on B during the cut");
    until("doomed files on both sides", T, || if root(&b.nodes[1]).join("doomed-a.txt").exists() && root(&a.nodes[1]).join("doomed-b.txt").exists() { Ok(()) } else { Err("not yet".into()) }).await;
    to_b.cut();
    to_a.cut();
    for i in 0..20 {
        put(&a.nodes[i % 2], &format!("during-cut/a{i}.txt"), format!("A wrote {i}").as_bytes());
        put(&b.nodes[i % 2], &format!("during-cut/b{i}.txt"), format!("B wrote {i}").as_bytes());
    }
    std::fs::remove_file(root(&a.nodes[1]).join("doomed-a.txt")).unwrap();
    std::fs::remove_file(root(&b.nodes[1]).join("doomed-b.txt")).unwrap();
    std::fs::remove_file(root(&a.nodes[0]).join("from-b/photo.bin")).unwrap();
    // While cut, each side still syncs internally, and nothing crosses.
    until("A's nodes agree during the cut", T, || differences(&a.nodes[0], &a.nodes[1])).await;
    until("B's nodes agree during the cut", T, || differences(&b.nodes[0], &b.nodes[1])).await;
    assert!(!root(&b.nodes[0]).join("during-cut/a0.txt").exists(), "a file crossed a cut link");
    to_b.heal();
    to_a.heal();
    until("all four nodes converge after the cut", T, || {
        let t = tree(&a.nodes[0]);
        for n in a.nodes.iter().chain(b.nodes.iter()) {
            if tree(n) != t {
                return Err(format!("{} differs", n.spec.name));
            }
        }
        Ok(t)
    })
    .await;
    let t = tree(&b.nodes[1]);
    for i in 0..20 {
        assert_eq!(t.get(&format!("during-cut/a{i}.txt")).map(Vec::as_slice), Some(format!("A wrote {i}").as_bytes()), "a{i} lost");
        assert_eq!(t.get(&format!("during-cut/b{i}.txt")).map(Vec::as_slice), Some(format!("B wrote {i}").as_bytes()), "b{i} lost");
    }
    for gone in ["doomed-a.txt", "doomed-b.txt", "from-b/photo.bin"] {
        assert!(!t.contains_key(gone), "{gone} came back after the cut");
    }
    assert!(t.contains_key("from-a/report.txt"));

    // What the proxies saw: TLS only, neither the password nor file content in clear.
    for p in [&to_b, &to_a] {
        let seen = p.seen();
        assert!(seen.len() > 10_000, "the proxy saw only {} bytes", seen.len());
        for needle in [PASSWORD.as_bytes(), b"content that must never cross in clear".as_slice(), b"A wrote 1".as_slice(), b"during-cut".as_slice()] {
            assert!(!seen.windows(needle.len()).any(|w| w == needle), "the proxy saw {:?} in clear", String::from_utf8_lossy(needle));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_two_environments_with_different_passwords_are_refused_on_both_dashboards() {
    let a = side("east").await;
    let b = side("west").await;
    install(&a, &link_port(&b.nodes[0]).to_string(), "password of east").await;
    install(&b, &link_port(&a.nodes[0]).to_string(), "password of west").await;
    put(&a.nodes[0], "east-only.txt", b"stays in east");
    for s in [&a, &b] {
        let deadline = std::time::Instant::now() + T;
        loop {
            let l = links(s).await;
            if l.iter().any(|x| x["state"] == "refused" && x["error"].as_str().is_some_and(|e| e.contains("different password"))) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no refusal shown: {l:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(!root(&b.nodes[0]).join("east-only.txt").exists() && !root(&b.nodes[1]).join("east-only.txt").exists(), "a file crossed with different passwords");
    // The password is never shown back.
    for (s, pw) in [(&a, "password of east"), (&b, "password of west")] {
        let v = s.cp.get(&format!("/api/v1/environments/{}", s.env)).await;
        assert!(!v.to_string().contains(pw), "the API showed the password: {v}");
    }
}
