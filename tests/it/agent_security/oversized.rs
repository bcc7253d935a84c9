//! A malicious peer (a small TLS server with a certificate from the environment's CA, in
//! the agent's peer list) answers with a page of changes that never ends, or announces a
//! 1 MiB file and then streams 1 GiB for it. The agent stops reading at its limits
//! (64 MiB for a page, the announced size for a file), says why, and its peak memory stays
//! bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};

use super::rt;
use crate::support::cluster::{Cluster, Options, PORT};
use crate::support::poll::until;

const MIB: u64 = 1 << 20;
/// What the fake peer offers per request when nobody stops it.
const FLOOD: u64 = 1024 * MIB;
/// The announced size of the file the blob peer offers.
const ANNOUNCED: u64 = MIB;
/// The agent's peak resident memory must stay below this (measured: see the report).
const RSS_BOUND_KIB: u64 = 200 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    EndlessPage,
    OversizedFile,
}

/// Bytes the fake peer handed to its HTTP stack per request (at most; hyper only asks for
/// more when the client's flow-control window has room), the largest of them.
#[derive(Default)]
struct Counts {
    largest: AtomicU64,
    requests: AtomicU64,
}

fn junk(counts: Arc<Counts>) -> Body {
    counts.requests.fetch_add(1, Ordering::SeqCst);
    let sent = Arc::new(AtomicU64::new(0));
    let chunk = Bytes::from(vec![0xA5u8; MIB as usize]);
    let s = futures::stream::unfold(0u64, move |n| {
        let (chunk, sent, counts) = (chunk.clone(), sent.clone(), counts.clone());
        async move {
            if n >= FLOOD {
                return None;
            }
            let now = sent.fetch_add(MIB, Ordering::SeqCst) + MIB;
            counts.largest.fetch_max(now, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk), n + MIB))
        }
    });
    Body::from_stream(s)
}

fn announced_page(name: &str, since: u64) -> Vec<u8> {
    use filesync::protocol::wire::ChangesResponse;
    use filesync::protocol::{Entry, EntryKind, RelPath};
    let entries = if since == 0 {
        let content = vec![7u8; ANNOUNCED as usize];
        let e = Entry {
            path: RelPath::parse("big.bin").unwrap(),
            kind: EntryKind::File,
            deleted: false,
            size: ANNOUNCED,
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o644,
            hash: *blake3::hash(&content).as_bytes(),
            target: String::new(),
            version: filesync::protocol::VersionVector::new().bumped(99),
            modified_by: 99,
            modified_by_name: name.into(),
            origin: filesync::protocol::VersionVector::new().bumped(99),
        };
        vec![(1, e)]
    } else {
        vec![]
    };
    postcard::to_allocvec(&ChangesResponse { node_id: 99, node_name: name.into(), index_id: 1, entries, blobs: vec![], last_seq: since.max(1), more: false, folder: String::new() }).unwrap()
}

/// Serves the fake peer `name` on `addr` until the returned token is cancelled.
fn fake_peer(c: &Cluster, certs: &std::path::Path, name: &'static str, addr: SocketAddr, mode: Mode, counts: Arc<Counts>) -> tokio_util::sync::CancellationToken {
    let ca = filesync::pki::load_ca(&c.pki).unwrap();
    let cert = filesync::pki::issue(&ca, name, &[addr.ip()], &[]).unwrap();
    filesync::pki::write_private(&certs.join(format!("{name}.pem")), &cert.cert_pem).unwrap();
    filesync::pki::write_private(&certs.join(format!("{name}.key")), &cert.key_pem).unwrap();
    let tls = filesync::pki::tls::TlsFiles { ca: c.pki.join("ca.pem"), cert: certs.join(format!("{name}.pem")), key: certs.join(format!("{name}.key")) };
    filesync::pki::tls::install_crypto_provider();
    let acceptor = tokio_rustls::TlsAcceptor::from(filesync::pki::tls::server_config(&tls).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let stop2 = stop.clone();
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let c2 = counts.clone();
            let app = axum::Router::new()
                .route(
                    "/v1/changes",
                    post(move |body: Bytes| {
                        let counts = c2.clone();
                        async move {
                            if mode == Mode::EndlessPage {
                                return junk(counts);
                            }
                            let q: filesync::protocol::wire::ChangesQuery = postcard::from_bytes(&body).unwrap();
                            if q.since > 0 {
                                tokio::time::sleep(Duration::from_millis(q.wait_ms.min(5000))).await;
                            }
                            Body::from(announced_page(name, q.since))
                        }
                    }),
                )
                .route(
                    "/v1/file",
                    get(move || {
                        let counts = counts.clone();
                        async move { junk(counts) }
                    }),
                );
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                });
            }
        })
    });
    stop
}

fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[test]
fn an_endless_page_or_an_oversized_file_from_a_peer_is_refused_with_bounded_memory() {
    let mut c = Cluster::new(1, Options::default());
    let IpAddr::V4(ip) = c.nodes[0].ip else { unreachable!() };
    let [a, b, cc, _] = ip.octets();
    let page_addr = SocketAddr::from(([a, b, cc, 98], PORT));
    let blob_addr = SocketAddr::from(([a, b, cc, 99], PORT));
    let mut cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    cfg.push_str(&format!("\n[[peers]]\nname = \"evil-page\"\naddress = \"{page_addr}\"\n\n[[peers]]\nname = \"evil-blob\"\naddress = \"{blob_addr}\"\n"));
    std::fs::write(&c.nodes[0].config, cfg).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (page_counts, blob_counts) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let _page = fake_peer(&c, certs.path(), "evil-page", page_addr, Mode::EndlessPage, page_counts.clone());
    let _blob = fake_peer(&c, certs.path(), "evil-blob", blob_addr, Mode::OversizedFile, blob_counts.clone());
    c.start(0);
    let pid = c.nodes[0].child.as_ref().unwrap().id();

    let status = until("both refusals reported", Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&c.ctl(0, "status")).unwrap();
        let page_err = v["peers"]["evil-page"]["last_error"].as_str().unwrap_or_default().to_owned();
        let blob_err = v["pending_errors"].to_string();
        let enough = page_counts.requests.load(Ordering::SeqCst) >= 2 && blob_counts.requests.load(Ordering::SeqCst) >= 2;
        if page_err.contains("larger than the limit") && blob_err.contains("sent more than the 1048576 bytes") && enough { Ok(v) } else { Err(format!("page: {page_err}\nblob: {blob_err}")) }
    });
    let (page_max, blob_max) = (page_counts.largest.load(Ordering::SeqCst), blob_counts.largest.load(Ordering::SeqCst));
    let rss = peak_rss_kib(pid);
    eprintln!("largest page handed out {} MiB, largest file {} MiB, agent peak RSS {} MiB", page_max / MIB, blob_max / MIB, rss / 1024);
    assert!(page_max <= 80 * MIB, "the agent read {} MiB of one page", page_max / MIB);
    assert!(blob_max <= 16 * MIB, "the agent read {} MiB of a file announced as 1 MiB", blob_max / MIB);
    assert!(rss <= RSS_BOUND_KIB, "peak RSS {} MiB", rss / 1024);
    // Nothing of the oversized file is left behind, and nothing was applied.
    assert!(!c.nodes[0].path("big.bin").exists());
    let temps: Vec<_> = std::fs::read_dir(&c.nodes[0].root).unwrap().map(|e| e.unwrap()).filter(|e| e.metadata().unwrap().len() > ANNOUNCED).map(|e| e.file_name()).collect();
    assert!(temps.is_empty(), "{temps:?}; status {status}");
}
