//! Secrets at rest and in the environment: with a key, nothing is stored in clear and every
//! sealed value is bound to its row (a value in clear or moved from another row is refused);
//! the key is in no child's environment (the embedded PostgreSQL, ssh); the embedded
//! database is durable and the control plane connects to it as a role that is not a
//! superuser; a wrong key stops `serve` at once; without a key, `serve` makes a private
//! key file and says where.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::control::{ControlPlane, Options, describe, node_json};

/// Processes (other than `except`) whose environment holds `marker`, as "pid cmdline".
fn processes_with(marker: &[u8], except: &[u32]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if except.contains(&pid) {
            continue;
        }
        // A child of `serve` between fork and exec is still serve's own image, and its
        // /proc environ is serve's initial one (which removing a variable does not wipe);
        // what matters is the environment of the programs it runs (postgres, ssh, sh).
        if std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == std::path::Path::new(env!("CARGO_BIN_EXE_filesync"))) {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        if env.windows(marker.len()).any(|w| w == marker) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default().iter().map(|&b| if b == 0 { ' ' } else { b as char }).collect::<String>();
            found.insert(format!("{pid} {cmd}"));
        }
    }
    found
}

fn embedded_url(data: &Path) -> String {
    format!("postgres:///filesync?host={}&user=postgres", data.join("postgres/sock").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_secrets_are_sealed_bound_to_their_rows_and_children_never_see_the_key() {
    let data = tempfile::Builder::new().prefix("filesync-it-data-").tempdir().unwrap();
    let key = format!("secret-key-marker-{}", uuid::Uuid::new_v4().simple());
    let opts = || Options { embedded_db: true, no_secret_key: true, vars: vec![("FILESYNC_SECRET_KEY", key.clone())], data_dir: Some(data.path().to_owned()), ..Options::default() };
    let cp = ControlPlane::start_opts(opts()).await;
    let nodes = cp.nodes(4);
    let env = cp.environment("sealed", &nodes[..2]).await;

    // Watch every process while agents are installed (ssh sessions come and go).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, marker, pid) = (stop.clone(), key.clone().into_bytes(), cp.pid());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let me = std::process::id();
            while !stop.load(Ordering::SeqCst) {
                seen.extend(processes_with(&marker, &[pid, me]));
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    let link = format!("{}:7756", cp.node_ip(250));
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/install"), json!({"mode": "two_envs", "address": link, "password": "a shared password 123", "path": "ROOT", "delay": "0"})).await;
    assert_eq!(s, 202, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", describe(&jobs));
    stop.store(true, Ordering::SeqCst);
    let leaked = watcher.join().unwrap();
    assert!(leaked.is_empty(), "the secret key is in the environment of: {leaked:?}");

    // Every secret is sealed; nothing in clear.
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&embedded_url(data.path())).await.unwrap();
    let mut values: Vec<(String, String)> = sqlx::query_as("select 'ssh_private_key', value from control_secret where name = 'ssh_private_key'").fetch_all(&mut db).await.unwrap();
    values.extend(sqlx::query_as::<_, (String, String)>("select 'ca of ' || name, ca_key_secret from environment union all select 'client of ' || name, client_key_secret from environment union all select 'link password', password_secret from installation").fetch_all(&mut db).await.unwrap());
    assert_eq!(values.len(), 4, "{values:?}");
    for (what, v) in &values {
        assert!(v.starts_with("v2:") && !v.contains("PRIVATE KEY") && !v.contains("a shared password"), "{what} is not sealed: {v}");
    }
    // Durable, and the control plane is not a superuser.
    let fsync: String = sqlx::query_scalar("show fsync").fetch_one(&mut db).await.unwrap();
    assert_eq!(fsync, "on");
    let roles: Vec<(String, bool)> =
        sqlx::query_as("select distinct a.usename::text, r.rolsuper from pg_stat_activity a join pg_roles r on r.rolname = a.usename where a.datname = 'filesync' and a.pid <> pg_backend_pid()")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(roles, vec![("filesync".to_owned(), false)], "the control plane's connections");

    // A sealed value moved to another row does not open: a new node (its certificate needs
    // the CA key) fails, saying why.
    sqlx::query("update environment set ca_key_secret = client_key_secret").execute(&mut db).await.unwrap();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/nodes"), node_json(&nodes[2])).await;
    assert_eq!(s, 201, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    let j = jobs.iter().find(|j| j["node_name"] == "node3").unwrap();
    assert!(j["error"].as_str().unwrap_or("").contains("moved from another row"), "{}", describe(&jobs));
    // A value written in clear (an attacker's CA key) is refused, not used.
    let attacker = filesync::pki::new_ca("attacker").unwrap();
    sqlx::query("update environment set ca_key_secret = $1").bind(format!("plain:{}", attacker.key_pem)).execute(&mut db).await.unwrap();
    let (s, v) = cp.post(&format!("/api/v1/environments/{env}/nodes"), node_json(&nodes[3])).await;
    assert_eq!(s, 201, "{v}");
    let jobs = cp.wait_jobs(&env, Duration::from_secs(180)).await;
    let j = jobs.iter().find(|j| j["node_name"] == "node4").unwrap();
    assert!(j["error"].as_str().unwrap_or("").contains("in clear"), "{}", describe(&jobs));
    assert!(!nodes[3].install_prefix().join("tls/node.pem").exists(), "a certificate was issued with a key stored in clear");
    db.close().await.unwrap();
    drop(nodes);
    drop(cp);

    // Another key on the same database: serve stops at once, saying so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesync"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("FILESYNC_SECRET_KEY", "not the key it was sealed with")
        .env("FILESYNC_ADMIN_PASSWORD", crate::support::control::ADMIN_PASSWORD)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not the key this database's secrets were sealed with"), "{}: {err}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_a_key_serve_creates_a_private_key_file() {
    use sqlx::Connection;
    let data = tempfile::Builder::new().prefix("filesync-it-data-").tempdir().unwrap();
    let cp = ControlPlane::start_opts(Options { no_secret_key: true, data_dir: Some(data.path().to_owned()), ..Options::default() }).await;
    let file = data.path().join("secret.key");
    assert!(cp.said().contains(&format!("created the secret key {}", file.display())) && cp.said().contains("back it up"), "{}", cp.said());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (s, v) = cp.post("/api/v1/environments", json!({"name": "keyfile"})).await;
    assert_eq!(s, 201, "{v}");
    let mut db = sqlx::PgConnection::connect(&crate::support::control::postgres().url(cp.database())).await.unwrap();
    let sealed: Vec<String> = sqlx::query_scalar("select ca_key_secret from environment union all select value from control_secret where name = 'ssh_private_key'").fetch_all(&mut db).await.unwrap();
    assert!(sealed.len() == 2 && sealed.iter().all(|v| v.starts_with("v2:")), "{sealed:?}");
}
