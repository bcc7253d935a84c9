//! Hardening the agent (issue 12), with real agents: the agent's own files are never
//! written through a planted link; a CA-signed certificate is authorised by its name
//! (admin for the control plane and the node itself, replication for the current peers);
//! a node removed from the peer lists is refused at once; 2,000 idle sockets do not stop
//! replication; stalled handshakes and headers are closed; an oversized page or file from a
//! peer is refused without the agent's memory or disk growing with it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

mod oversized;

const T: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A certificate named `name` from the cluster's CA, in `dir`.
fn issue(c: &Cluster, dir: &Path, name: &str) -> filesync::pki::tls::TlsFiles {
    let ca = filesync::pki::load_ca(&c.pki).unwrap();
    let cert = filesync::pki::issue(&ca, name, &[], &[]).unwrap();
    filesync::pki::write_private(&dir.join(format!("{name}.pem")), &cert.cert_pem).unwrap();
    filesync::pki::write_private(&dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    filesync::pki::tls::TlsFiles { ca: c.pki.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

fn node_tls(c: &Cluster, i: usize) -> filesync::pki::tls::TlsFiles {
    filesync::pki::tls::TlsFiles { ca: c.pki.join("ca.pem"), cert: c.nodes[i].home.join("tls/node.pem"), key: c.nodes[i].home.join("tls/node.key") }
}

fn client(tls: &filesync::pki::tls::TlsFiles) -> reqwest::Client {
    filesync::pki::tls::install_crypto_provider();
    filesync::pki::tls::http_client(tls).unwrap()
}

/// Status codes of the routes a certificate may try: admin, status, metrics, changes, file, delta, healthz.
async fn probe(cl: &reqwest::Client, addr: &str) -> Vec<(&'static str, u16)> {
    let q = filesync::protocol::wire::ChangesQuery { since: 0, index_id: 0, wait_ms: 0, pending: 0, from: "x".into(), folder: String::new() };
    let zero = "0".repeat(64);
    let mut out = Vec::new();
    let r = cl.post(format!("https://{addr}/v1/admin/pause")).send().await.unwrap();
    out.push(("admin/pause", r.status().as_u16()));
    let r = cl.post(format!("https://{addr}/v1/admin/confirm-empty")).send().await.unwrap();
    out.push(("admin/confirm-empty", r.status().as_u16()));
    let r = cl.get(format!("https://{addr}/v1/status")).send().await.unwrap();
    out.push(("status", r.status().as_u16()));
    let r = cl.get(format!("https://{addr}/metrics")).send().await.unwrap();
    out.push(("metrics", r.status().as_u16()));
    let r = cl
        .post(format!("https://{addr}/v1/changes"))
        .header(filesync::protocol::wire::PROTOCOL_HEADER, filesync::protocol::wire::PROTOCOL.to_string())
        .body(postcard::to_allocvec(&q).unwrap())
        .send()
        .await
        .unwrap();
    out.push(("changes", r.status().as_u16()));
    let r = cl.get(format!("https://{addr}/v1/file?path=a.txt&hash={zero}")).send().await.unwrap();
    out.push(("file", r.status().as_u16()));
    let r = cl.post(format!("https://{addr}/v1/delta?path=a.txt&hash={zero}")).body(vec![0u8; 8]).send().await.unwrap();
    out.push(("delta", r.status().as_u16()));
    let r = cl.get(format!("https://{addr}/healthz")).send().await.unwrap();
    out.push(("healthz", r.status().as_u16()));
    out
}

fn codes(p: &[(&'static str, u16)], routes: &[&str]) -> Vec<u16> {
    routes.iter().map(|r| p.iter().find(|(n, _)| n == r).unwrap().1).collect()
}

#[test]
fn certificates_are_authorised_by_name_not_by_the_ca_alone() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    write(&c.nodes[0].path("a.txt"), b"x");
    c.converge("a file", T, |t| if t.contains_key("a.txt") { Ok(()) } else { Err("missing".into()) });
    let certs = tempfile::tempdir().unwrap();
    let intruder = client(&issue(&c, certs.path(), "intruder"));
    let control = client(&issue(&c, certs.path(), filesync::pki::CONTROL_PLANE_NAME));
    let peer = client(&node_tls(&c, 1));
    let addr = c.nodes[0].addr();
    let (i, p, cp) = rt().block_on(async { (probe(&intruder, &addr).await, probe(&peer, &addr).await, probe(&control, &addr).await) });
    let repl = ["changes", "file", "delta"];
    // A certificate from the CA that is in no peer list: nothing but /healthz.
    assert_eq!(codes(&i, &["admin/pause", "admin/confirm-empty", "status", "metrics"]), [403; 4], "{i:?}");
    assert_eq!(codes(&i, &repl), [403; 3], "{i:?}");
    assert_eq!(codes(&i, &["healthz"]), [200], "{i:?}");
    // A peer replicates and reads the status, but runs no admin command.
    assert_eq!(codes(&p, &["admin/pause", "admin/confirm-empty"]), [403; 2], "{p:?}");
    assert_eq!(codes(&p, &["status", "metrics", "changes"]), [200; 3], "{p:?}");
    assert_eq!(codes(&p, &["file"]), [409], "a peer gets past authorisation to the content check: {p:?}");
    // The control plane administers and observes, but does not replicate.
    assert_eq!(codes(&cp, &["admin/pause", "admin/confirm-empty", "status", "metrics"]), [200; 4], "{cp:?}");
    assert_eq!(codes(&cp, &repl), [403; 3], "{cp:?}");
    // The node's own certificate (`filesync ctl`) administers.
    assert!(c.ctl(0, "resume").contains("resumed"));
    // The refusal says why, to the client and (once a minute per certificate) in the log.
    let why = rt().block_on(async { intruder.get(format!("https://{addr}/v1/file?path=a.txt&hash={}", "0".repeat(64))).send().await.unwrap().text().await.unwrap() });
    assert!(why.contains("certificate \"intruder\" is not in this node's peer list"), "{why}");
    let log = c.nodes[0].log();
    assert!(log.contains("refused a request from certificate \"intruder\": certificate \"intruder\" may not run admin commands"), "{log}");
    assert!(log.contains("certificate \"node2\" may not run admin commands"), "{log}");
    assert!(log.contains("admin command Pause(true) from filesync-control-plane") && !log.contains("from intruder") && !log.contains("admin command Pause(true) from node2"), "{log}");
}

#[test]
fn a_node_removed_from_the_peer_lists_is_refused_by_every_agent_within_seconds() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    write(&c.nodes[0].path("before.txt"), b"all three");
    c.converge("a file on all three", T, |t| if t.contains_key("before.txt") { Ok(()) } else { Err("missing".into()) });
    let node3 = client(&node_tls(&c, 2));
    let status_codes =
        |rt: &tokio::runtime::Runtime| -> Vec<(&'static str, u16)> { rt.block_on(async { [probe(&node3, &c.nodes[0].addr()).await, probe(&node3, &c.nodes[1].addr()).await].concat() }) };
    let rt = rt();
    let before = status_codes(&rt);
    assert!(before.iter().filter(|(n, _)| *n == "changes").all(|(_, s)| *s == 200), "{before:?}");

    // Scale-in: node 3 leaves every peer list; each remaining agent reloads.
    for (i, text) in Cluster::peers_config_without(&c, 2).into_iter().enumerate() {
        std::fs::write(&c.nodes[i].config, text).unwrap();
    }
    let t0 = Instant::now();
    for i in 0..2 {
        assert!(c.ctl(i, "reload").contains("removed [\"node3\"]"));
    }
    until("node 3's certificate refused by both agents", Duration::from_secs(5), || {
        let s = status_codes(&rt);
        let refused = s.iter().filter(|(n, _)| ["changes", "file", "delta", "status", "metrics"].contains(n)).all(|(_, code)| *code == 403);
        if refused { Ok(()) } else { Err(format!("{s:?}")) }
    });
    eprintln!("node 3 refused by both agents {} ms after the reload began", t0.elapsed().as_millis());
    // Its own agent, still running, gets nothing more: its long-polls are refused too.
    write(&c.nodes[0].path("after.txt"), b"two only");
    until("the change reaches node 2", T, || if c.nodes[1].path("after.txt").exists() { Ok(()) } else { Err("missing".into()) });
    until("node 3 told it is refused", T, || {
        let log = c.nodes[2].log();
        if log.contains("403") { Ok(()) } else { Err(log) }
    });
    assert!(!c.nodes[2].path("after.txt").exists(), "a removed node still received a change");
}

/// Symlinks planted where the agent writes its own files: at `lsyncd.status.tmp`,
/// `lsyncd.log`, `lsyncd.log.1`, the state dir's temp names and `index.redb`, and in place
/// of the state dir itself. The targets are never written, the log says why.
#[test]
fn links_planted_in_the_agents_own_dirs_are_never_followed() {
    let mut c = Cluster::new(1, Options { delay: 0, extra: "log_max_bytes = 65536".into() });
    let n = &c.nodes[0];
    let lsyncd = n.home.join("webroot/lsyncd/var");
    let (log_dir, state_dir) = (lsyncd.join("log"), lsyncd.join("state"));
    // The directories exist (the installer makes them); links wait at the agent's names.
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = |name: &str| -> PathBuf {
        let p = outside.path().join(name);
        std::fs::write(&p, format!("precious {name}")).unwrap();
        p
    };
    let planted = [
        (log_dir.join("lsyncd.status.tmp"), victim("status-tmp")),
        (log_dir.join("lsyncd.log"), victim("log")),
        (log_dir.join("lsyncd.log.1"), victim("log-1")),
        (state_dir.join("identity.toml.tmp"), victim("identity-tmp")),
        (state_dir.join("index.redb"), victim("index")),
        (state_dir.join("link-pairing.json.tmp"), victim("pairing-tmp")),
    ];
    for (at, target) in &planted {
        std::os::unix::fs::symlink(target, at).unwrap();
    }
    let mtimes: Vec<i64> = planted.iter().map(|(_, t)| std::fs::metadata(t).unwrap().mtime_nsec()).collect();
    spawn_agent(&mut c, 0, None);
    // Many chances to write: a status rewrite after every change (the test keeps changing
    // the tree), a planted link again while running, and enough log lines for several
    // rotations.
    let own = client(&node_tls(&c, 0));
    let addr = c.nodes[0].addr();
    let rt = rt();
    let status_at = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    let first = until("a status written", T, || Some(status_at(&c.nodes[0].status_file())).filter(|s| !s.is_empty()).ok_or("none".to_owned()));
    // And once more while it runs (the agent may be between creating and renaming it).
    until("a link planted again at lsyncd.status.tmp", T, || std::os::unix::fs::symlink(&planted[0].1, &planted[0].0).map_err(|e| e.to_string()));
    let mut k = 0;
    until("the log rotated twice and the status was rewritten twice", Duration::from_secs(60), || {
        k += 1;
        std::fs::write(c.nodes[0].root.join(format!("change{k}.txt")), b"x").unwrap();
        // Two rotations, not more: the early lines must stay within the three generations.
        let mut rotated = log_dir.join("lsyncd.log.2").symlink_metadata().is_ok_and(|m| m.is_file());
        if !rotated {
            rt.block_on(async {
                for _ in 0..100 {
                    own.post(format!("https://{addr}/v1/admin/rescan")).send().await.unwrap();
                }
            });
            rotated = log_dir.join("lsyncd.log.2").symlink_metadata().is_ok_and(|m| m.is_file());
        }
        let status = status_at(&c.nodes[0].status_file());
        if rotated && status != first && !planted[0].0.exists() { Ok(()) } else { Err(format!("rotated {rotated}, status {status}")) }
    });
    for ((at, target), mtime) in planted.iter().zip(&mtimes) {
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(std::fs::read_to_string(target).unwrap(), format!("precious {name}"), "{} was written through", at.display());
        assert_eq!(std::fs::metadata(target).unwrap().mtime_nsec(), *mtime, "{} was touched", target.display());
    }
    let log = until("the log says why", T, || {
        let log = std::fs::read_dir(&log_dir).unwrap().filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok()).collect::<String>();
        let said = ["lsyncd.status.tmp", "lsyncd.log: it is a symlink", "lsyncd.log.1", "identity.toml.tmp", "index.redb"].iter().all(|w| log.contains(w));
        if said && log.contains("never followed") { Ok(log) } else { Err(log.lines().filter(|l| l.contains("refused to use")).collect::<Vec<_>>().join("\n")) }
    });
    assert!(log.contains(&format!("refused to use {}: it is a symlink to {}", planted[0].0.display(), planted[0].1.display())), "{log}");

    // Modes of the agent's own files.
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&log_dir), 0o755);
    assert_eq!(mode(&log_dir.join("lsyncd.log")), 0o640);
    assert_eq!(mode(&log_dir.join("lsyncd.status")), 0o640);
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&state_dir.join("index.redb")), 0o600);
    assert_eq!(mode(&state_dir.join("identity.toml")), 0o600);

    // The state dir itself replaced by a link to a directory elsewhere.
    c.stop(0);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(&state_dir, c.nodes[0].home.join("old-state")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &state_dir).unwrap();
    spawn_agent(&mut c, 0, None);
    assert!(state_dir.symlink_metadata().unwrap().is_dir(), "the state dir is a real directory again");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "the agent wrote through the link");
    assert!(c.nodes[0].log().contains(&format!("refused to use {}: it is a symlink to {}", state_dir.display(), elsewhere.path().display())));
}

/// Starts node `i`'s agent (with at most `fds` open descriptors, hard limit, if given) and
/// waits for one more "startup complete" in its current `lsyncd.log` (which may have been
/// rotated or replaced since an earlier start, unlike what `Cluster::start` expects).
fn spawn_agent(c: &mut Cluster, i: usize, fds: Option<u32>) {
    let n = &mut c.nodes[i];
    let log = n.log_path();
    let before = std::fs::read_to_string(&log).unwrap_or_default().matches("startup complete").count();
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(n.home.join("stderr.log")).unwrap();
    let limit = fds.map(|f| format!("ulimit -n {f} && ")).unwrap_or_default();
    let child =
        Command::new("sh").args(["-c", &format!("{limit}exec \"$0\" agent --config \"$1\"")]).arg(env!("CARGO_BIN_EXE_filesync")).arg(&n.config).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
    n.child = Some(child);
    let stderr_path = n.home.join("stderr.log");
    until("start-up", T, || {
        let now = std::fs::read_to_string(&log).unwrap_or_default().matches("startup complete").count();
        if now > before { Ok(()) } else { Err(std::fs::read_to_string(&stderr_path).unwrap_or_default()) }
    });
}

#[test]
fn two_thousand_idle_sockets_do_not_stop_replication() {
    let mut c = Cluster::new(2, Options::default());
    spawn_agent(&mut c, 0, Some(1024));
    c.start(1);
    write(&c.nodes[0].path("warm.txt"), b"up");
    c.converge("connected", T, |t| if t.contains_key("warm.txt") { Ok(()) } else { Err("missing".into()) });

    // 2,000 idle TCP connections to node 1's peer port from 20 addresses, reopened as soon
    // as the agent closes them, until the test ends.
    let target: std::net::SocketAddr = c.nodes[0].addr().parse().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let mut socks: Vec<Option<tokio::net::TcpStream>> = (0..2000).map(|_| None).collect();
                while !stop.is_cancelled() {
                    for (k, s) in socks.iter_mut().enumerate() {
                        let closed = s.as_ref().is_none_or(|t| {
                            let mut b = [0u8; 64];
                            match t.try_read(&mut b) {
                                Ok(0) => true,
                                Ok(_) => false,
                                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                            }
                        });
                        if closed {
                            let sock = tokio::net::TcpSocket::new_v4().unwrap();
                            sock.bind(std::net::SocketAddr::new(std::net::Ipv4Addr::new(127, 0, 9, 1 + (k % 20) as u8).into(), 0)).unwrap();
                            *s = tokio::time::timeout(Duration::from_millis(200), sock.connect(target)).await.ok().and_then(|r| r.ok());
                            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        })
    };
    // Let it run past the handshake timeout, so the agent has closed and the flood reopened
    // sockets many times, before and while the checks below run.
    let started = Instant::now();
    until("the flood is on for 10 s", T, || {
        let n = opened.load(std::sync::atomic::Ordering::Relaxed);
        if n >= 2000 && started.elapsed() >= Duration::from_secs(10) { Ok(()) } else { Err(format!("{n} sockets opened")) }
    });
    // Replication goes on both ways, and the agent's own control still answers.
    for round in 0..3 {
        write(&c.nodes[1].path(&format!("from-2-{round}.txt")), b"during the flood");
        write(&c.nodes[0].path(&format!("from-1-{round}.txt")), b"during the flood");
        c.converge("replication during the flood", T, |t| {
            if t.contains_key(&format!("from-2-{round}.txt")) && t.contains_key(&format!("from-1-{round}.txt")) { Ok(()) } else { Err(format!("{:?}", t.keys().collect::<Vec<_>>())) }
        });
    }
    assert!(c.ctl(0, "status").contains("\"node_name\""));
    let total = opened.load(std::sync::atomic::Ordering::Relaxed);
    stop.cancel();
    flood.join().unwrap();
    // Refusals are aggregated: one line per source at first, then a count per minute.
    let log = until("the aggregated refusal lines", Duration::from_secs(90), || {
        let log = c.nodes[0].log();
        if log.lines().any(|l| l.contains("connections from 127.0.9.") && l.contains("in the last minute")) { Ok(log) } else { Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n")) }
    });
    let lines = log.lines().filter(|l| l.contains("refused")).count();
    eprintln!("{total} connections opened by the flood; {lines} refusal lines in lsyncd.log");
    assert!(lines <= 60, "{lines} refusal lines for 20 sources:\n{log}");
}

/// A connection that never finishes its TLS handshake, or its request headers, is closed
/// by the agent (5 s and 10 s) instead of holding a descriptor for ever.
#[test]
fn stalled_handshakes_and_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = Cluster::new(1, Options::default());
    c.start(0);
    let addr: std::net::SocketAddr = c.nodes[0].addr().parse().unwrap();
    let tls = node_tls(&c, 0);
    let (handshake, headers) = rt().block_on(async move {
        // Connect and say nothing.
        let t0 = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1024];
        while tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await.expect("still open after 20 s").unwrap() > 0 {}
        let handshake = t0.elapsed();
        // A valid certificate, HTTP/1.1, and headers that never end.
        let mut cfg = filesync::pki::tls::client_config(&tls).unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = connector.connect(rustls::pki_types::ServerName::IpAddress(addr.ip().into()), tcp).await.unwrap();
        let t1 = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await.expect("still open after 30 s") {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        (handshake, t1.elapsed())
    });
    eprintln!("silent connection closed after {} ms, unfinished headers after {} ms", handshake.as_millis(), headers.as_millis());
    assert!(handshake < Duration::from_secs(8), "{handshake:?}");
    assert!(headers < Duration::from_secs(15), "{headers:?}");
}
