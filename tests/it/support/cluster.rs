//! A cluster of real agents: a CA, one home per node (webroot/ROOT, lsyncd/var/log,
//! state), configs, and `filesync agent` child processes on 127.<a>.<b>.<node>.
//! Dropping the cluster kills every agent it started.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::poll::until;
use super::tree::{Tree, diff, snapshot};

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

pub const PORT: u16 = 7755;

pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub home: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    starts: usize,
}

impl Node {
    pub fn log_path(&self) -> PathBuf {
        self.home.join("webroot/lsyncd/var/log/lsyncd.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn status_file(&self) -> String {
        std::fs::read_to_string(self.home.join("webroot/lsyncd/var/log/lsyncd.status")).unwrap_or_default()
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn addr(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub pki: PathBuf,
}

#[derive(Default)]
pub struct Options {
    pub delay: u64,
    pub extra: String,
}

impl Cluster {
    /// Creates `n` nodes (not started), full mesh.
    pub fn new(n: usize, opts: Options) -> Cluster {
        let dir = tempfile::Builder::new().prefix("filesync-it-").disable_cleanup(std::env::var_os("FILESYNC_KEEP_TEST_DIRS").is_some()).tempdir().unwrap();
        let net = NEXT_NET.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 200) * 40;
        let (a, b) = (30 + (net / 250) % 200, net % 250 + 1);
        let pki = dir.path().join("pki");
        let ca = filesync::pki::new_ca("test CA").unwrap();
        filesync::pki::write_private(&pki.join("ca.pem"), &ca.cert_pem).unwrap();
        filesync::pki::write_private(&pki.join("ca.key"), &ca.key_pem).unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let ip: IpAddr = format!("127.{a}.{b}.{}", i + 1).parse().unwrap();
            let home = dir.path().join(&name);
            let root = home.join("webroot/ROOT");
            std::fs::create_dir_all(&root).unwrap();
            let cert = filesync::pki::issue(&ca, &name, &[ip], &[]).unwrap();
            filesync::pki::write_private(&home.join("tls/node.pem"), &cert.cert_pem).unwrap();
            filesync::pki::write_private(&home.join("tls/node.key"), &cert.key_pem).unwrap();
            nodes.push(Node { name, ip, home: home.clone(), root, config: home.join("agent.toml"), child: None, starts: 0 });
        }
        let c = Cluster { dir, nodes, pki };
        for i in 0..n {
            c.write_config(i, &opts);
        }
        c
    }

    pub fn write_config(&self, i: usize, opts: &Options) {
        let n = &self.nodes[i];
        let mut cfg = format!(
            "node_name = \"{}\"\nlisten = \"{}\"\nroot = \"{}\"\ndelay = {}\nwrite_quiet = 2\n{}\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            n.name,
            n.addr(),
            n.root.display(),
            opts.delay,
            opts.extra,
            self.pki.join("ca.pem").display(),
            n.home.join("tls/node.pem").display(),
            n.home.join("tls/node.key").display()
        );
        for p in self.nodes.iter().filter(|p| p.name != n.name) {
            cfg.push_str(&format!("\n[[peers]]\nname = \"{}\"\naddress = \"{}\"\n", p.name, p.addr()));
        }
        std::fs::write(&n.config, cfg).unwrap();
    }

    /// Configs for every node but `excluded`, each listing only the others but `excluded`.
    pub fn peers_config_without(c: &Cluster, excluded: usize) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..c.nodes.len() {
            if i == excluded {
                continue;
            }
            c.write_config(i, &Options::default());
            let text = std::fs::read_to_string(&c.nodes[i].config).unwrap();
            let drop = format!("\n[[peers]]\nname = \"{}\"\naddress = \"{}\"\n", c.nodes[excluded].name, c.nodes[excluded].addr());
            out.push(text.replace(&drop, ""));
        }
        out
    }

    /// Starts a node's agent and waits until it has completed its start-up.
    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} already running", n.name);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(n.home.join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_filesync")).args(["agent", "--config"]).arg(&n.config).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        n.child = Some(child);
        n.starts += 1;
        let want = n.starts;
        let name = n.name.clone();
        let log = n.log_path();
        let stderr_path = n.home.join("stderr.log");
        until(&format!("{name} start-up"), Duration::from_secs(30), || {
            let s = std::fs::read_to_string(&log).unwrap_or_default();
            if s.matches("startup complete").count() >= want { Ok(()) } else { Err(format!("log: {s}\nstderr: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default())) }
        });
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL: no clean-up at all.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn root(&self, i: usize) -> &Path {
        &self.nodes[i].root
    }

    pub fn snapshot(&self, i: usize) -> Tree {
        snapshot(&self.nodes[i].root)
    }

    /// Waits until every node's tree equals node `reference`'s and `check` accepts it.
    #[track_caller]
    pub fn converge(&self, what: &str, timeout: Duration, check: impl Fn(&Tree) -> Result<(), String>) -> Tree {
        until(what, timeout, || {
            let first = self.snapshot(0);
            check(&first)?;
            for i in 1..self.nodes.len() {
                if self.nodes[i].child.is_none() {
                    continue;
                }
                let t = self.snapshot(i);
                let d = diff(&self.nodes[0].name, &first, &self.nodes[i].name, &t);
                if !d.is_empty() {
                    return Err(d.into_iter().take(10).collect::<Vec<_>>().join("\n"));
                }
            }
            Ok(first)
        })
    }

    /// Runs `filesync ctl` against node `i`.
    pub fn ctl(&self, i: usize, cmd: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_filesync")).args(["ctl", "--config"]).arg(&self.nodes[i].config).arg(cmd).output().unwrap();
        assert!(out.status.success(), "ctl {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if std::thread::panicking() {
            eprintln!("cluster files in {} (set FILESYNC_KEEP_TEST_DIRS=1 to keep them)", self.dir.path().display());
            for n in &self.nodes {
                eprintln!("---- {} lsyncd.status ----\n{}", n.name, n.status_file());
                eprintln!("---- {} lsyncd.log ----\n{}", n.name, n.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
    }
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}
