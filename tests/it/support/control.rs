//! A control plane under test: one embedded PostgreSQL per test process (a fresh database
//! per test, owned by a role that is not a superuser, as in production), a real
//! `filesync serve` child process (plain HTTP, or HTTPS with its self-signed certificate),
//! and real sshd nodes on 127.<240-249>.<n>.<i> (a range the agent tests do not use), one
//! of them possibly a clone of another's machine. HTTP helpers for the API.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use filesync::sandbox::{Postgres, SshNode, SshNodeSpec};
use serde_json::{Value, json};

static PG: OnceLock<(Postgres, tempfile::TempDir)> = OnceLock::new();
static NEXT_NET: AtomicU32 = AtomicU32::new(1);
pub const ADMIN_PASSWORD: &str = "test-admin-password";
pub const SECRET_KEY: &str = "test secret key, long enough";
/// The role every test database belongs to (not a superuser).
pub const APP_ROLE: &str = "filesync_it";

pub fn postgres() -> &'static Postgres {
    &PG.get_or_init(|| {
        remove_stale_clusters();
        let dir = tempfile::Builder::new().prefix("filesync-it-pg-").tempdir().unwrap();
        (Postgres::start(&dir.path().join("pg"), false, false).expect("embedded PostgreSQL"), dir)
    })
    .0
}

/// Removes the clusters earlier test runs left in the temp dir (about 490 MB each: the
/// cluster lives in a static, which is never dropped) whose server is not running: repeated
/// runs filled the disk until agents stopped keeping versions and tests about them failed.
fn remove_stale_clusters() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("filesync-it-pg-") {
            continue;
        }
        let pid = std::fs::read_to_string(e.path().join("pg/postmaster.pid")).ok().and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        // A cluster another test run is using, or is creating right now (no pid file yet).
        let young = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_none_or(|age| age < std::time::Duration::from_secs(600));
        if young || pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
            continue;
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// How to start a `filesync serve` under test.
#[derive(Default)]
pub struct Options<'a> {
    /// Share this control plane's database (a fresh one when None).
    pub shared: Option<&'a ControlPlane>,
    /// Extra environment variables.
    pub vars: Vec<(&'a str, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Leave DATABASE_URL unset: `serve` starts its own embedded PostgreSQL in its data dir.
    pub embedded_db: bool,
    /// Do not set FILESYNC_SECRET_KEY (the key file in the data dir is used).
    pub no_secret_key: bool,
    /// The data dir (default: one inside this control plane's own temp dir).
    pub data_dir: Option<std::path::PathBuf>,
}

pub struct ControlPlane {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub public_key: String,
    pub dir: tempfile::TempDir,
    child: Child,
    net: (u32, u32),
    db: String,
    said: String,
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(None, &[]).await
    }

    /// A `filesync serve` on the database of `shared` (a fresh database when None), with
    /// extra environment variables (e.g. FILESYNC_HEARTBEAT_SECONDS).
    pub async fn start_with(shared: Option<&ControlPlane>, vars: &[(&str, &str)]) -> ControlPlane {
        ControlPlane::start_opts(Options { shared, vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(), ..Options::default() }).await
    }

    pub async fn start_opts(o: Options<'_>) -> ControlPlane {
        filesync::pki::tls::install_crypto_provider();
        let pg = postgres();
        let db = match o.shared {
            Some(cp) => cp.db.clone(),
            None => format!("it_{}", uuid::Uuid::new_v4().simple()),
        };
        let dir = tempfile::Builder::new().prefix("filesync-it-cp-").tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_filesync"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(o.data_dir.clone().unwrap_or_else(|| dir.path().join("data"))).args(&o.args);
        cmd.envs(o.vars.iter().map(|(k, v)| (*k, v.as_str()))).env("FILESYNC_ADMIN_PASSWORD", ADMIN_PASSWORD);
        if !o.no_secret_key {
            cmd.env("FILESYNC_SECRET_KEY", SECRET_KEY);
        }
        if !o.embedded_db {
            cmd.env("DATABASE_URL", pg.create_app_database(&db, APP_ROLE).unwrap());
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap()).spawn().unwrap();
        // Lines before "listening on" (a created key file, re-sealed secrets) are kept.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut said = String::new();
        let url = loop {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "serve exited before listening: {said}{}", std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default());
            said.push_str(&line);
            if line.contains("listening on ") {
                break line.trim().rsplit(' ').next().unwrap().to_owned();
            }
        };
        let mut line = String::new();
        if url.starts_with("https://") {
            std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            said.push_str(&line);
        }
        // Keep reading stdout so serve never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).danger_accept_invalid_certs(true).tls_info(true).build().unwrap();
        let r: Value = http.post(format!("{url}/api/v1/tokens")).json(&json!({"username": "admin", "password": ADMIN_PASSWORD})).send().await.unwrap().json().await.unwrap();
        let token = r["token"].as_str().unwrap_or_else(|| panic!("no token: {r}")).to_owned();
        let k: Value = http.get(format!("{url}/api/v1/ssh-key")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        ControlPlane { url, token, http, public_key: k["public_key"].as_str().unwrap().to_owned(), dir, child, net: (240 + std::process::id() % 10, n % 250 + 1), db, said }
    }

    /// What `serve` printed on stdout up to and including its "listening on" line (and the
    /// TLS line under HTTPS).
    pub fn said(&self) -> &str {
        &self.said
    }

    /// The database name (on [`postgres`]).
    pub fn database(&self) -> &str {
        &self.db
    }

    /// The process id of `serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `serve` wrote on stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default()
    }

    /// Kills this `filesync serve` process with SIGKILL (a crashed worker).
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn node_ip(&self, i: u32) -> String {
        format!("127.{}.{}.{}", self.net.0, self.net.1, i)
    }

    /// Starts `n` sshd nodes authorizing the control plane's key.
    pub fn nodes(&self, n: u32) -> Vec<SshNode> {
        (1..=n)
            .map(|i| {
                SshNode::start(SshNodeSpec {
                    name: format!("node{i}"),
                    ip: self.node_ip(i).parse().unwrap(),
                    port: 2222,
                    dir: self.dir.path().join(format!("node{i}")),
                    authorized_key: self.public_key.clone(),
                    view: Vec::new(),
                })
                .unwrap()
            })
            .collect()
    }

    /// A node named `name` listening on `ip` (e.g. 127.0.0.1 for a node reached as
    /// `localhost`) with SSH on `port`.
    pub fn node_at(&self, name: &str, ip: &str, port: u16) -> SshNode {
        SshNode::start(SshNodeSpec { name: name.into(), ip: ip.parse().unwrap(), port, dir: self.dir.path().join(name), authorized_key: self.public_key.clone(), view: Vec::new() }).unwrap()
    }

    /// Node `i` as a clone of `original`'s machine: its own disk (its own directories) seen
    /// at the original's webroot and install prefix, its own host name and address.
    pub fn clone_node(&self, i: u32, original: &SshNode) -> SshNode {
        let dir = self.dir.path().join(format!("node{i}"));
        SshNode::start(SshNodeSpec {
            name: format!("node{i}"),
            ip: self.node_ip(i).parse().unwrap(),
            port: 2222,
            dir: dir.clone(),
            authorized_key: self.public_key.clone(),
            view: vec![(original.webroot(), dir.join("webroot")), (original.install_prefix(), dir.join("opt/filesync"))],
        })
        .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap().json().await.unwrap()
    }

    /// Creates an environment with the given sandbox nodes; returns its id.
    pub async fn environment(&self, name: &str, nodes: &[SshNode]) -> String {
        let (s, v) = self.post("/api/v1/environments", json!({"name": name})).await;
        assert_eq!(s, 201, "{v}");
        let id = v["result"].as_str().unwrap().to_owned();
        for n in nodes {
            let (s, v) = self
                .post(
                    &format!("/api/v1/environments/{id}/nodes"),
                    json!({"name": n.spec.name, "address": n.spec.ip.to_string(), "ssh_port": 2222, "webroot": n.webroot().display().to_string(), "install_prefix": n.install_prefix().display().to_string()}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
        id
    }

    /// Waits until no job of the environment is queued or running and the installation's
    /// state has followed them (the worker updates it just after the last job ends);
    /// returns the latest jobs.
    pub async fn wait_jobs(&self, env: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.get(&format!("/api/v1/environments/{env}")).await;
            let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
            let inst = &v["installation"];
            let settled = inst.is_null() || inst["state"] == "installed" || inst["state"] == "failed";
            if settled && !jobs.is_empty() && jobs.iter().all(|j| j["state"] == "succeeded" || j["state"] == "failed") {
                return jobs;
            }
            assert!(Instant::now() < deadline, "jobs still running after {timeout:?}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP port on 127.0.0.1 nobody listens on right now (and the one after it).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The node body the API takes for a sandbox node.
pub fn node_json(n: &SshNode) -> Value {
    json!({"name": n.spec.name, "address": n.spec.ip.to_string(), "ssh_port": n.spec.port, "webroot": n.webroot().display().to_string(), "install_prefix": n.install_prefix().display().to_string()})
}

/// One line per job with its steps, for assertion messages.
pub fn describe(jobs: &[Value]) -> String {
    jobs.iter()
        .map(|j| {
            let steps: Vec<String> = j["steps"].as_array().unwrap().iter().map(|s| format!("{}={} ({})", s["name"], s["status"], s["output"])).collect();
            format!("{} {} {} err={}: {}", j["node_name"], j["kind"], j["state"], j["error"], steps.join("; "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("timed out after {timeout:?} waiting for {what}; last state: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGTERM first: serve finishes its requests, closes its SSH sessions (`ssh -O exit`)
        // and removes its runtime directory (private key included); SIGKILL left all three
        // behind. SIGKILL only if it has not exited after 10 s.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- serve stderr ----\n{}", std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default());
        }
    }
}
