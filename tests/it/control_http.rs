//! The dashboard and API facing strangers: security headers on every response, JSON errors
//! under /api that never carry internal text, slow or piled-up connections closed, and
//! node fields that either are refused (422) or give every agent a working configuration.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::control::{ControlPlane, Options, describe, free_port, node_json, until};

fn assert_security_headers(r: &reqwest::Response, what: &str) {
    let h = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let csp = h("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
}

async fn json_error(r: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{what}");
    assert_security_headers(&r, what);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{what}: {:?}", r.headers()["content-type"]);
    let v: Value = r.json().await.unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    assert!(v["error"].is_string(), "{what}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_every_response_carries_security_headers_and_api_errors_are_json() {
    let cp = ControlPlane::start().await;
    for (path, status) in [("/login", 200), ("/", 303), ("/static/app.js", 200), ("/static/app.css", 200), ("/no/such/page", 404), ("/environments/not-a-uuid", 303)] {
        let r = cp.http.get(format!("{}{path}", cp.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_security_headers(&r, path);
    }
    let api = |m: reqwest::Method, p: &str| cp.http.request(m, format!("{}/api/v1{p}", cp.url));
    json_error(api(reqwest::Method::GET, "/environments").send().await.unwrap(), 401, "no token").await;
    json_error(api(reqwest::Method::GET, "/no-such-route").bearer_auth(&cp.token).send().await.unwrap(), 404, "unknown route").await;
    json_error(api(reqwest::Method::DELETE, "/environments").bearer_auth(&cp.token).send().await.unwrap(), 405, "wrong method").await;
    let v = json_error(api(reqwest::Method::POST, "/environments").bearer_auth(&cp.token).header("content-type", "application/json").body("{not json").send().await.unwrap(), 400, "bad JSON").await;
    assert!(v["error"].as_str().unwrap().contains("JSON"), "{v}");
    json_error(api(reqwest::Method::GET, "/jobs/not-a-uuid").bearer_auth(&cp.token).send().await.unwrap(), 400, "bad id").await;

    // Text the database would refuse (a NUL byte) is refused before it gets there, as a
    // field error; no database message reaches the client.
    let (s, env) = cp.post("/api/v1/environments", json!({"name": "hdr"})).await;
    assert_eq!(s, 201, "{env}");
    let env = env["result"].as_str().unwrap();
    for (path, body) in [
        (format!("/environments/{env}/join-tokens"), json!({"name": "a\u{0}b"})),
        ("/tokens".into(), json!({"username": "admin", "password": crate::support::control::ADMIN_PASSWORD, "name": "x\u{0}"})),
    ] {
        let r = cp.http.post(format!("{}/api/v1{path}", cp.url)).bearer_auth(&cp.token).json(&body).send().await.unwrap();
        let v = json_error(r, 422, &path).await;
        let text = v.to_string();
        assert!(v["errors"]["name"].as_str().is_some_and(|e| e.contains("control characters")), "{path}: {v}");
        assert!(!text.contains("0x00") && !text.contains("byte sequence") && !text.contains("database"), "{path}: {v}");
    }
}

/// Opens a TCP connection from `from` (a 127.0.0.0/8 address) to the control plane.
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// How long until the server closes `c` (EOF or reset), at most `limit`.
async fn closed_within(c: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), c.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            // A 408 or similar before closing is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_slow_loris_is_closed_and_strangers_cannot_fill_the_server() {
    let cp = ControlPlane::start_opts(Options { args: vec!["--header-timeout-seconds".into(), "2".into()], ..Options::default() }).await;
    let addr: std::net::SocketAddr = cp.url.trim_start_matches("http://").parse().unwrap();

    // Half a request, then nothing: closed after the header deadline, not kept forever.
    let mut slow = connect_from("127.0.0.2", addr).await;
    slow.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut idle = connect_from("127.0.0.2", addr).await;
    let t = closed_within(&mut slow, Duration::from_secs(8)).await.expect("a slow-loris connection was still open after 8 s");
    assert!(t >= Duration::from_millis(1500), "closed after {t:?}, before the 2 s deadline");
    closed_within(&mut idle, Duration::from_secs(8)).await.expect("an idle connection was still open after 8 s");
    eprintln!("slow-loris connection closed after {t:?} (deadline 2 s)");

    // 150 half-open connections from one stranger: at most 64 are kept, the rest closed at
    // once, and the dashboard still answers someone else at once.
    let mut held = Vec::new();
    for _ in 0..150 {
        let mut c = connect_from("127.0.0.3", addr).await;
        let _ = c.write_all(b"GET / HTTP/1.1\r\n").await;
        held.push(c);
    }
    // Watched together for half a second, well within the 2 s header deadline.
    let closed_at_once = futures::future::join_all(held.iter_mut().map(|c| closed_within(c, Duration::from_millis(500)))).await.into_iter().filter(Option::is_some).count();
    assert!(closed_at_once >= 150 - 64, "only {closed_at_once} of 150 connections from one address were refused");
    let http = reqwest::Client::builder().local_address("127.0.0.4".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let t = Instant::now();
    let r = http.get(format!("{}/login", cp.url)).timeout(Duration::from_secs(3)).send().await.expect("the login page did not answer another client");
    assert_eq!(r.status(), 200);
    eprintln!("{closed_at_once} of 150 connections from one address closed at once; /login answered another address in {:?}", t.elapsed());
    assert!(cp.log().contains("connection limit reached"), "{}", cp.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_node_fields_are_refused_or_give_a_working_configuration() {
    let cp = ControlPlane::start().await;
    let nodes = cp.nodes(1);
    let env = cp.environment("fields", &nodes).await;
    let n = &nodes[0];
    let nodes_path = format!("/api/v1/environments/{env}/nodes");
    let add = |fields: Value| cp.post(&nodes_path, fields);
    let with = |k: &str, v: &str| {
        let mut b = json!({"name": "x", "address": "127.0.0.77", "ssh_port": 2222, "webroot": n.webroot().display().to_string(), "install_prefix": "/opt/other"});
        b[k] = json!(v);
        b
    };
    for (k, v) in [
        ("install_prefix", "/opt/a\"b"),
        ("install_prefix", "/x/sh -c \"touch /tmp/pwned\" /x/y"),
        ("install_prefix", "/opt/%h"),
        ("install_prefix", "/"),
        ("webroot", "/var/www/a\"b"),
        ("webroot", "/var/www/a\\tb"),
        ("name", "filesync-control-plane"),
        ("address", "no-such-host.invalid"),
    ] {
        let (s, v2) = add(with(k, v)).await;
        assert_eq!(s, 422, "{k} = {v:?} was accepted: {v2}");
        assert!(v2["errors"][k].is_string(), "{k} = {v:?}: {v2}");
    }

    // A node added by host name: the agents get its resolved address and everything works.
    let local = cp.node_at("bynamenode", "127.0.0.1", free_port());
    let agent_port = free_port();
    let mut body = node_json(&local);
    body["address"] = json!("localhost");
    body["agent_port"] = json!(agent_port);
    let (s, v) = add(body).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"path": "ROOT", "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    let toml = std::fs::read_to_string(n.install_prefix().join("agent.toml")).unwrap();
    let c = filesync::protocol::agent_toml::AgentToml::from_toml(&toml).unwrap();
    assert_eq!(c.peers[0].address, format!("127.0.0.1:{agent_port}").parse().unwrap(), "{toml}");
    std::fs::write(local.webroot().join("ROOT/by-name.txt"), b"reached by name").unwrap();
    let p = n.webroot().join("ROOT/by-name.txt");
    until("by-name.txt replicated", Duration::from_secs(30), || std::fs::read(&p).map_err(|e| e.to_string()).and_then(|d| if d == b"reached by name" { Ok(()) } else { Err("wrong content".into()) }))
        .await;
    drop(local);
}
