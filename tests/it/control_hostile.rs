//! A hostile agent cannot spend the control plane's memory: a server holding a node's own
//! certificate answers the control plane's heartbeats with an endless status, a status
//! with a 2 MiB warning, then a small status and an endless report. Every answer is read up
//! to its limit and no further (`pki::tls::read_limited`); the node shows why it is not
//! trusted, and the control plane's resident memory stays bounded (it grew by ~900 MiB in
//! 3 s when answers were read whole).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::control_dashboard::installed;
use crate::support::control::ControlPlane;

fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024
}

const ENDLESS: u8 = 0;
const BIG_WARNING: u8 = 1;
const ENDLESS_REPORT: u8 = 2;

fn endless(head: &'static [u8]) -> axum::body::Body {
    let start = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from_static(head)) });
    let chunk = bytes::Bytes::from(vec![b'a'; 1 << 20]);
    let tail = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
    axum::body::Body::from_stream(futures::StreamExt::chain(start, tail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_hostile_agent_cannot_exhaust_the_control_planes_memory() {
    let (cp, nodes, env) = installed("hostile", 1).await;
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    let port = v["nodes"][0]["agent_port"].as_u64().unwrap();
    let pid = cp.pid();
    let before = rss_mib(pid);

    // The node's agent stops; a server with its certificate takes its port.
    nodes[0].kill_agent();
    let tls = nodes[0].install_prefix().join("tls");
    let cfg = filesync::pki::tls::server_config(&filesync::pki::tls::TlsFiles { ca: tls.join("ca.pem"), cert: tls.join("node.pem"), key: tls.join("node.key") }).unwrap();
    let mode = Arc::new(AtomicU8::new(ENDLESS));
    let name = nodes[0].spec.name.clone();
    let status = {
        let mode = mode.clone();
        move || {
            let (mode, name) = (mode.clone(), name.clone());
            async move {
                match mode.load(Ordering::SeqCst) {
                    ENDLESS => endless(b"{\"node_name\":\""),
                    BIG_WARNING => axum::body::Body::from(format!("{{\"node_name\":\"{name}\",\"startup_complete\":true,\"warnings\":[\"{}\"]}}", "w".repeat(2 << 20))),
                    _ => axum::body::Body::from(format!("{{\"node_name\":\"{name}\",\"startup_complete\":true}}")),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/v1/status", axum::routing::get(status))
        .route("/v1/report", axum::routing::get(|| async { endless(b"{\"changes\":[") }))
        .route("/v1/report/conflicts", axum::routing::get(|| async { endless(b"{\"copies\":[") }))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let addr: std::net::SocketAddr = format!("{}:{port}", nodes[0].spec.ip).parse().unwrap();
    let rc = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
    let server = tokio::spawn(async move {
        // Until the killed agent's port is free.
        loop {
            let _ = axum_server::bind_rustls(addr, rc.clone()).serve(app.clone().into_make_service()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let mut peak = before;

    // An endless status: refused at its limit, the node says so.
    node_until(&cp, &env, "the endless status refused", |n| n["health_error"].as_str().unwrap_or("").contains("larger than the limit")).await;
    watch(pid, Duration::from_secs(8), &mut peak).await;

    // A well-formed status carrying 2 MiB: refused too, never stored for every page to load.
    mode.store(BIG_WARNING, Ordering::SeqCst);
    watch(pid, Duration::from_secs(6), &mut peak).await;
    let v = cp.get(&format!("/api/v1/environments/{env}")).await;
    let size = v.to_string().len();
    assert!(size < 1 << 20, "the environment's answer is {size} bytes: an agent's oversized status was stored");
    assert!(v["nodes"][0]["health_error"].as_str().unwrap_or("").contains("larger than the limit"), "{:#}", v["nodes"][0]);

    // A small status, then an endless report and conflict list: read up to their limit.
    mode.store(ENDLESS_REPORT, Ordering::SeqCst);
    node_until(&cp, &env, "the small status accepted", |n| n["health"] == "up").await;
    watch(pid, Duration::from_secs(8), &mut peak).await;
    server.abort();

    eprintln!("control plane RSS {before} MiB before, {peak} MiB at most while a hostile agent answered");
    assert!(peak < before + 200, "the control plane grew from {before} MiB to {peak} MiB on a hostile agent's answers");
    assert!(cp.http.get(format!("{}/login", cp.url)).send().await.unwrap().status().is_success());
}

/// Samples the control plane's resident memory for `span`.
async fn watch(pid: u32, span: Duration, peak: &mut u64) {
    let t = Instant::now();
    while t.elapsed() < span {
        *peak = (*peak).max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the environment's first node object until `ok` holds (30 s at most).
async fn node_until(cp: &ControlPlane, env: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cp.get(&format!("/api/v1/environments/{env}")).await;
        if ok(&v["nodes"][0]) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#}", v["nodes"][0]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
