//! A control plane under test: one embedded PostgreSQL per test process (a fresh database
//! per test), a real `filesync serve` child process, and real sshd nodes on
//! 127.<240-249>.<n>.<i> (a range the agent tests do not use). HTTP helpers for the API.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use filesync::sandbox::{Postgres, SshNode, SshNodeSpec};
use serde_json::{Value, json};

static PG: OnceLock<(Postgres, tempfile::TempDir)> = OnceLock::new();
static NEXT_NET: AtomicU32 = AtomicU32::new(1);
pub const ADMIN_PASSWORD: &str = "test-admin-password";

fn postgres() -> &'static Postgres {
    &PG.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("filesync-it-pg-").tempdir().unwrap();
        (Postgres::start(&dir.path().join("pg"), false).expect("embedded PostgreSQL"), dir)
    })
    .0
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
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(None, &[]).await
    }

    /// A `filesync serve` on the database of `shared` (a fresh database when None), with
    /// extra environment variables (e.g. FILESYNC_HEARTBEAT_SECONDS).
    pub async fn start_with(shared: Option<&ControlPlane>, vars: &[(&str, &str)]) -> ControlPlane {
        filesync::pki::tls::install_crypto_provider();
        let pg = postgres();
        let db = match shared {
            Some(cp) => cp.db.clone(),
            None => {
                let db = format!("it_{}", uuid::Uuid::new_v4().simple());
                pg.create_database(&db).unwrap();
                db
            }
        };
        let dir = tempfile::Builder::new().prefix("filesync-it-cp-").tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_filesync"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(vars.iter().copied())
            .env("DATABASE_URL", pg.url(&db))
            .env("FILESYNC_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("FILESYNC_SECRET_KEY", "test secret key")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://"), "serve printed {line:?}: {}", std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default());
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r: Value = http.post(format!("{url}/api/v1/tokens")).json(&json!({"username": "admin", "password": ADMIN_PASSWORD})).send().await.unwrap().json().await.unwrap();
        let token = r["token"].as_str().unwrap().to_owned();
        let k: Value = http.get(format!("{url}/api/v1/ssh-key")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        ControlPlane { url, token, http, public_key: k["public_key"].as_str().unwrap().to_owned(), dir, child, net: (240 + std::process::id() % 10, n % 250 + 1), db }
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
                })
                .unwrap()
            })
            .collect()
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
