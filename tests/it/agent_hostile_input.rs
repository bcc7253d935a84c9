//! Hostile peers and hostile trees: path escapes in requests, connections without a
//! certificate or with one from another CA, and a symlink planted where a peer's directory
//! should go. Nothing is served or written outside the root.

use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};

fn client(c: &Cluster, cert_dir: &std::path::Path, name: &str, ca: &std::path::Path) -> reqwest::Client {
    filesync::pki::tls::install_crypto_provider();
    let _ = c;
    let tls = filesync::pki::tls::TlsFiles { ca: ca.to_owned(), cert: cert_dir.join(format!("{name}.pem")), key: cert_dir.join(format!("{name}.key")) };
    filesync::pki::tls::http_client(&tls).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn path_escapes_and_strangers_are_refused() {
    // Node 2 is in node 1's peer list but not running: its certificate is a peer's (a
    // CA-signed certificate outside the peer list gets 403, see agent_security).
    let mut c = Cluster::new(2, Options::default());
    c.start(0);
    write(&c.nodes[0].path("ok.txt"), b"fine");
    let member = client(&c, &c.nodes[1].home.join("tls"), "node", &c.pki.join("ca.pem"));
    let addr = c.nodes[0].addr();
    let zero = "0".repeat(64);
    rt().block_on(async {
        for bad in ["../../../../etc/passwd", "/etc/passwd", "a/../../x", "a%00b"] {
            let r = member.get(format!("https://{addr}/v1/file?path={bad}&hash={zero}")).send().await.unwrap();
            assert_eq!(r.status(), 400, "{bad} was not refused");
        }
        // A valid path with the wrong hash is not served either.
        let r = member.get(format!("https://{addr}/v1/file?path=ok.txt&hash={zero}")).send().await.unwrap();
        assert_eq!(r.status(), 409);

        // No client certificate: the TLS handshake fails.
        let anon = reqwest::Client::builder()
            .use_preconfigured_tls(
                rustls::ClientConfig::builder()
                    .with_root_certificates({
                        let mut r = rustls::RootCertStore::empty();
                        for cert in rustls_pemfile::certs(&mut std::fs::read(c.pki.join("ca.pem")).unwrap().as_slice()) {
                            r.add(cert.unwrap()).unwrap();
                        }
                        r
                    })
                    .with_no_client_auth(),
            )
            .build()
            .unwrap();
        assert!(anon.get(format!("https://{addr}/v1/status")).send().await.is_err(), "no-certificate request succeeded");

        // A certificate from another CA: refused too.
        let other_dir = tempfile::tempdir().unwrap();
        let other = filesync::pki::new_ca("other").unwrap();
        let cert = filesync::pki::issue(&other, "stranger", &[], &[]).unwrap();
        filesync::pki::write_private(&other_dir.path().join("stranger.pem"), &cert.cert_pem).unwrap();
        filesync::pki::write_private(&other_dir.path().join("stranger.key"), &cert.key_pem).unwrap();
        let stranger = client(&c, other_dir.path(), "stranger", &c.pki.join("ca.pem"));
        assert!(stranger.get(format!("https://{addr}/v1/status")).send().await.is_err(), "foreign-CA request succeeded");
    });
    let log = c.nodes[0].log();
    assert!(log.contains("refused request from node2"), "{log}");
    assert!(log.contains("TLS handshake failed"), "{log}");
}

#[test]
fn symlink_planted_in_place_of_a_directory_is_never_written_through() {
    let mut c = Cluster::new(2, Options::default());
    let outside = tempfile::tempdir().unwrap();
    // Node 1 has a real uploads/ directory; node 2 has uploads -> a folder outside its root.
    write(&c.nodes[0].path("uploads/a.txt"), b"payload");
    std::os::unix::fs::symlink(outside.path(), c.nodes[1].path("uploads")).unwrap();
    c.start_all();
    let t = c.converge("directory wins over the planted link", Duration::from_secs(30), |t| match t.get("uploads") {
        Some(i) if i.kind == 'd' && t.contains_key("uploads/a.txt") => Ok(()),
        other => Err(format!("uploads: {other:?}")),
    });
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "something was written outside the root");
    assert!(t.keys().any(|k| k.starts_with("uploads.sync-conflict-")), "the link survives as a conflict copy: {:?}", t.keys());
}
