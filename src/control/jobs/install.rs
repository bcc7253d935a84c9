//! The steps of install / reconfigure / uninstall / verify on one node (DESIGN.md
//! requirement 1): reachable → host key pinned → authenticated → OS and architecture →
//! sync path present (created when missing) → inotify watches → agent uploaded →
//! configured → running → healthy. Each step is idempotent and says `ok` when nothing had
//! to change, so a re-run of a healthy installation changes nothing. How the agent is
//! supervised is in `supervise`, what its config says in `config`.

use std::time::{Duration, Instant};

use super::supervise::{self, HAS_SYSTEMD, q};
use super::{StepLog, StepResult, config};
use crate::control::AppState;
use crate::control::agent_api::{AdminCommand, AgentApi};
use crate::control::db::{self, EnvironmentRow, InstallationRow, JobRow, NodeRow};
use crate::control::secrets::Place;
use crate::control::ssh::{self, Conn, Target};
use crate::control::state::InstallState;

pub(crate) struct Ctx {
    pub env: EnvironmentRow,
    pub node: NodeRow,
    pub peers: Vec<NodeRow>,
    pub inst: Option<InstallationRow>,
}

pub(crate) async fn load(st: &AppState, job: &JobRow) -> Result<Ctx, String> {
    let e = |e: sqlx::Error| format!("database: {e}");
    let node_id = job.node_id.ok_or("the node was removed")?;
    let node = db::nodes::get(&st.pool, node_id).await.map_err(e)?.ok_or("the node was removed")?;
    let env = db::environments::get(&st.pool, job.environment_id).await.map_err(e)?.ok_or("the environment was removed")?;
    let peers = db::nodes::list(&st.pool, node.layer_id).await.map_err(e)?.into_iter().filter(|n| n.node_id != node.node_id && !n.agent_state.leaving()).collect();
    let inst = db::environments::installation(&st.pool, node.layer_id).await.map_err(e)?;
    Ok(Ctx { env, node, peers, inst })
}

/// reachable → host key → authenticated: the common start of every job.
async fn login(st: &AppState, node: &NodeRow, log: &mut StepLog) -> Result<Conn, String> {
    let t = Target { address: node.address.clone(), port: node.ssh_port as u16, user: node.ssh_user.clone(), pinned: node.host_key.clone() };
    log.run("reachable", async { ssh::reachable(&t).await.map(|_| (false, format!("{}:{} answers", t.address, t.port))).map_err(|e| e.to_string()) }).await?;
    let pool = st.pool.clone();
    let node_id = node.node_id;
    let mut pinned_line = String::new();
    log.run("host key", async {
        let (line, new) = ssh::check_host_key(&t).await.map_err(|e| e.to_string())?;
        let fp = ssh::fingerprint(&line).await;
        pinned_line = line.clone();
        if new {
            db::nodes::pin_host_key(&pool, node_id, &line, &fp).await.map_err(|e| e.to_string())?;
            Ok((true, format!("pinned on first contact: {fp}")))
        } else {
            Ok((false, format!("matches the pinned key {fp}")))
        }
    })
    .await?;
    let mut conn = None;
    log.run("authenticated", async {
        let c = ssh::connect(&t, &st.ssh_keyfile, &pinned_line).await.map_err(|e| e.to_string())?;
        let who = c.sh_ok("id -un").await.map_err(|e| e.to_string())?;
        conn = Some(c);
        Ok((false, format!("logged in as {}", who.trim())))
    })
    .await?;
    Ok(conn.expect("BUG: authenticated step returned Ok without a connection"))
}

pub async fn install(st: &AppState, job: &JobRow, log: &mut StepLog) -> Result<(), String> {
    let ctx = load(st, job).await?;
    let inst = ctx.inst.clone().ok_or("the add-on is not installed on this environment (no settings)")?;
    let link = config::link(&st.secrets, &ctx.node, &inst).await?;
    let conf = config::build(&ctx.env, &ctx.node, &ctx.peers, &inst, link).await?;
    let conn = login(st, &ctx.node, log).await?;
    let r = install_steps(st, &ctx, &inst, &config::text(&conf)?, &conn, log).await;
    conn.close().await;
    r?;
    // A node installed (or restarted) while its layer is paused for a redeploy stays
    // paused; during a sync path change every node stays paused until all have the new
    // path (the agent just restarted, unpaused).
    let changing = inst.state == InstallState::ChangingPath;
    if changing || db::environments::layer_paused(&st.pool, ctx.node.layer_id).await.unwrap_or(false) {
        let why = if changing { "until every node has the new path" } else { "until the layer is resumed" };
        log.run("paused", async {
            let api = AgentApi::new(agent_client(st, &ctx.env).map_err(|e| e.to_string())?, &ctx.node.address, ctx.node.agent_port);
            api.admin(AdminCommand::Pause, Duration::from_secs(10)).await.map_err(|e| format!("cannot pause the agent: {e}"))?;
            Ok((true, format!("sync paused on this node {why}")))
        })
        .await?;
    }
    db::nodes::set_config_generation(&st.pool, ctx.node.node_id, inst.generation).await.map_err(|e| format!("database: {e}"))?;
    Ok(())
}

/// Creates the sync path when it is missing, below an existing webroot: each missing
/// directory gets the owner, group and mode of the nearest existing parent. Prints
/// `created <owner> <group> <mode>` when it created something.
fn ensure_path_script(webroot: &str, root: &str) -> String {
    format!(
        r#"set -f; w={w}; p={p}
[ -d "$w" ] || {{ echo "the webroot $w does not exist (or is not a directory)" >&2; exit 3; }}
[ -d "$p" ] && exit 0
d="$p"; while [ ! -e "$d" ]; do d=$(dirname "$d"); done
[ -d "$d" ] || {{ echo "$d is not a directory" >&2; exit 4; }}
own=$(stat -c %U "$d"); grp=$(stat -c %G "$d"); ids=$(stat -c %u:%g "$d"); mode=$(stat -c %a "$d")
rest=${{p#"$d"}}; c="${{d%/}}"; IFS=/
for part in $rest; do [ -z "$part" ] && continue; c="$c/$part"; mkdir "$c" && chown "$ids" "$c" && chmod "$mode" "$c" || exit 5; done
echo "created $own $grp $mode""#,
        w = q(webroot),
        p = q(root)
    )
}

async fn install_steps(st: &AppState, ctx: &Ctx, inst: &InstallationRow, config: &str, conn: &Conn, log: &mut StepLog) -> Result<(), String> {
    let (root, prefix) = config::paths(&ctx.node, inst);
    let node = &ctx.node;
    let sh = |s: String| async move { conn.sh_ok(&s).await.map_err(|e| e.to_string()) };

    log.run("OS and architecture", async {
        let out = sh("uname -sm".into()).await?;
        let want = format!("Linux {}", std::env::consts::ARCH);
        if out.trim() == want { Ok((false, out.trim().to_owned())) } else { Err(format!("node runs {:?}; this control plane's agent needs {want}", out.trim())) }
    })
    .await?;

    log.run("sync path present", async {
        let o = conn.sh(&ensure_path_script(node.webroot.trim_end_matches('/'), &root)).await.map_err(|e| e.to_string())?;
        match (o.status, o.stdout.split_whitespace().collect::<Vec<_>>().as_slice()) {
            (0, []) => Ok((false, format!("{root} is a directory"))),
            (0, ["created", own, grp, mode]) => {
                let group = if grp == own { String::new() } else { format!(", group {grp}") };
                Ok((true, format!("created {root} on {} (owner {own}{group}, mode {mode:0>4})", node.name)))
            }
            (3, _) => Err(format!("the webroot {} does not exist on {}: check the node's webroot", node.webroot, node.name)),
            _ => Err(format!("cannot create {root} on {}: {}", node.name, o.stderr.trim())),
        }
    })
    .await?;

    log.run("inotify watches", async {
        let out = sh(format!("find {} -type d 2>/dev/null | wc -l; cat /proc/sys/fs/inotify/max_user_watches", q(&root))).await?;
        let mut it = out.split_whitespace().map(|s| s.parse::<u64>().unwrap_or(0));
        let (dirs, max) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        if dirs + 1000 > max {
            Err(format!("{dirs} directories to watch but fs.inotify.max_user_watches = {max}; raise it on the node: sysctl -w fs.inotify.max_user_watches=524288 (and persist it in /etc/sysctl.d/)"))
        } else {
            Ok((false, format!("{dirs} directories, limit {max}")))
        }
    })
    .await?;

    let binary_changed = log.run("agent uploaded", upload_agent(st, node, &prefix, conn)).await?;

    let mut reload_needed = false;
    let config_changed = log
        .run("configured", async {
            let old = conn.sh(&format!("cat {}/agent.toml 2>/dev/null", q(&prefix))).await.map_err(|e| e.to_string())?.stdout;
            let mut changed = ensure_certificate(st, ctx, &prefix, conn).await?;
            let script = supervise::watchdog_script(&prefix);
            let old_script = conn.sh(&format!("cat {}/run-agent.sh 2>/dev/null", q(&prefix))).await.map_err(|e| e.to_string())?.stdout;
            if old_script != script {
                // The running watchdog keeps its copy; the agent needs no restart for it.
                conn.upload(&format!("{prefix}/run-agent.sh"), script.as_bytes(), 0o700).await.map_err(|e| e.to_string())?;
            }
            sh(format!("mkdir -p {w}/lsyncd/var/log {w}/lsyncd/var/state", w = q(node.webroot.trim_end_matches('/')))).await?;
            if old == config {
                return Ok((changed, format!("{prefix}/agent.toml is current")));
            }
            conn.upload(&format!("{prefix}/agent.toml"), config.as_bytes(), 0o600).await.map_err(|e| e.to_string())?;
            if !changed && !old.is_empty() && config::reloadable(&old, config) {
                // Only the peer list or the delay changed: the agent reloads them in
                // place, keeping its connections and pending changes.
                reload_needed = true;
                return Ok((true, format!("wrote {prefix}/agent.toml ({} peers); the agent reloads it without restarting", ctx.peers.len())));
            }
            changed = true;
            let note = if old.is_empty() {
                ""
            } else if config::changed(&old, config, "root") {
                "; the sync path changed, the agent restarts"
            } else if config::changed(&old, config, "link") {
                "; the cross-environment link settings changed (mode, address or password), the agent restarts"
            } else {
                ""
            };
            Ok((changed, format!("wrote {prefix}/agent.toml ({} peers){note}", ctx.peers.len())))
        })
        .await?;
    let restart_needed = binary_changed || (config_changed && !reload_needed);

    let systemd = conn.sh(HAS_SYSTEMD).await.map_err(|e| e.to_string())?.status == 0;
    // The node's clock before a (re)start: the health check waits for an agent started
    // since, not the old one still answering while it shuts down.
    let node_now: i64 = sh("date +%s".into()).await?.trim().parse().map_err(|e| format!("cannot read the node's clock: {e}"))?;
    let mut fresh = false;
    log.run("running", async {
        let (r, started) = if systemd { run_systemd(conn, &prefix, restart_needed, reload_needed).await? } else { run_watchdog(conn, &prefix, restart_needed, reload_needed).await? };
        fresh = started;
        Ok(r)
    })
    .await?;
    let healthy = log.run("healthy", health_check(st, ctx, fresh.then_some(node_now))).await;
    if healthy.is_err() {
        // No half-installed node left running: stop what we started.
        let _ = conn.sh(&supervise::stop_script(&prefix)).await;
    }
    healthy.map(|_| ())
}

/// Uploads the agent binary unless the node has it; true when it uploaded.
async fn upload_agent(st: &AppState, node: &NodeRow, prefix: &str, conn: &Conn) -> StepResult {
    let bin = format!("{prefix}/bin/filesync");
    let have = conn.sh(&format!("sha256sum {} 2>/dev/null", q(&bin))).await.map_err(|e| e.to_string())?;
    if have.stdout.split_whitespace().next() == Some(st.agent.sha256.as_str()) {
        return Ok((false, format!("{bin} is current (sha256 {})", &st.agent.sha256[..16])));
    }
    let need_kib = st.agent.bytes.len() as u64 / 1024 + 1024;
    let probe = conn.sh(&format!("mkdir -p {p}/bin && touch {p}/bin/.write-test && rm -f {p}/bin/.write-test && df -Pk {p}/bin | tail -n 1", p = q(prefix))).await.map_err(|e| e.to_string())?;
    if probe.status != 0 {
        let err = probe.stderr.trim();
        if err.contains("Read-only file system") {
            return Err(format!("{prefix} is on a read-only file system on {}: remount it read-write or set another install prefix for this node", node.name));
        }
        return Err(format!("cannot write to {prefix} on {}: {err}", node.name));
    }
    let free_kib = probe.stdout.split_whitespace().nth(3).and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
    if free_kib < need_kib {
        return Err(format!(
            "not enough disk space on {}: {} MiB free in {prefix}, the agent needs {} MiB; free some space there or set another install prefix for this node",
            node.name,
            free_kib / 1024,
            need_kib.div_ceil(1024)
        ));
    }
    conn.upload(&bin, &st.agent.bytes, 0o755).await.map_err(|e| format!("{e} (is the disk full or read-only?)"))?;
    let check = conn.sh_ok(&format!("sha256sum {}", q(&bin))).await.map_err(|e| e.to_string())?;
    if check.split_whitespace().next() != Some(st.agent.sha256.as_str()) {
        return Err(format!("uploaded {bin} but its checksum differs (disk full?): {}", check.trim()));
    }
    Ok((true, format!("uploaded {} bytes to {bin}, sha256 {} verified", st.agent.bytes.len(), &st.agent.sha256[..16])))
}

/// Installs the CA and a certificate of the node's own (re-issued when the node holds
/// another node's, as a clone does); true when it wrote them.
async fn ensure_certificate(st: &AppState, ctx: &Ctx, prefix: &str, conn: &Conn) -> Result<bool, String> {
    let node = &ctx.node;
    let have_ca = conn.sh(&format!("cat {p}/tls/ca.pem 2>/dev/null; test -s {p}/tls/node.pem && test -s {p}/tls/node.key", p = q(prefix))).await.map_err(|e| e.to_string())?;
    let have_cert = conn.sh(&format!("cat {}/tls/node.pem 2>/dev/null", q(prefix))).await.map_err(|e| e.to_string())?.stdout;
    let ip = config::socket_addr(node, node.agent_port).await?.ip();
    let own_cert = crate::pki::pem_identity(&have_cert).is_some_and(|(cn, ips)| cn == node.name && ips.contains(&ip));
    if have_ca.status == 0 && have_ca.stdout.trim() == ctx.env.ca_cert_pem.trim() && own_cert {
        return Ok(false);
    }
    let key = st.secrets.open(&ctx.env.ca_key_secret, &Place::environment(ctx.env.environment_id, "ca_key_secret")).map_err(|e| e.to_string())?;
    let ca = crate::pki::CaFiles { cert_pem: ctx.env.ca_cert_pem.clone(), key_pem: key };
    let dns: Vec<String> = if node.address.parse::<std::net::IpAddr>().is_ok() { vec![] } else { vec![node.address.clone()] };
    let cert = crate::pki::issue(&ca, &node.name, &[ip], &dns).map_err(|e| e.to_string())?;
    let up = |p: String, d: String| async move { conn.upload(&p, d.as_bytes(), 0o600).await.map_err(|e| e.to_string()) };
    up(format!("{prefix}/tls/ca.pem"), ctx.env.ca_cert_pem.clone()).await?;
    up(format!("{prefix}/tls/node.pem"), cert.cert_pem).await?;
    up(format!("{prefix}/tls/node.key"), cert.key_pem).await?;
    Ok(true)
}

/// Starts, restarts or reloads the agent as needed; also says whether a new agent process
/// was started.
async fn run_systemd(conn: &Conn, prefix: &str, restart: bool, reload: bool) -> Result<((bool, String), bool), String> {
    let sh = |s: String| async move { conn.sh_ok(&s).await.map_err(|e| e.to_string()) };
    let (unit, path) = (supervise::unit_name(prefix), supervise::unit_path(prefix));
    sh(supervise::remove_legacy_unit(prefix)).await?;
    let text = supervise::unit_text(prefix);
    let old = conn.sh(&format!("cat {} 2>/dev/null", q(&path))).await.map_err(|e| e.to_string())?.stdout;
    let mut changed = false;
    if old != text {
        conn.upload(&path, text.as_bytes(), 0o644).await.map_err(|e| e.to_string())?;
        sh("systemctl daemon-reload".into()).await?;
        changed = true;
    }
    let active = conn.sh(&format!("systemctl is-active --quiet {}", q(&unit))).await.map_err(|e| e.to_string())?.status == 0;
    if !active {
        sh(format!("systemctl enable --now {}", q(&unit))).await?;
        return Ok(((true, format!("started {unit} under systemd (enabled at boot)")), true));
    }
    if restart || changed {
        sh(format!("systemctl restart {}", q(&unit))).await?;
        return Ok(((true, format!("restarted {unit} to apply the new binary or config")), true));
    }
    if reload {
        sh(format!("systemctl reload {}", q(&unit))).await?;
        return Ok(((true, format!("{unit} reloaded its peer list (no restart)")), false));
    }
    Ok(((false, format!("{unit} is active")), false))
}

async fn run_watchdog(conn: &Conn, prefix: &str, restart: bool, reload: bool) -> Result<((bool, String), bool), String> {
    let sh = |s: String| async move { conn.sh_ok(&s).await.map_err(|e| e.to_string()) };
    let p = q(prefix);
    let alive = format!("kill -0 \"$(cat {p}/watchdog.pid 2>/dev/null)\" 2>/dev/null && kill -0 \"$(cat {p}/agent.pid 2>/dev/null)\" 2>/dev/null");
    if conn.sh(&alive).await.map_err(|e| e.to_string())?.status != 0 {
        sh(format!("rm -f {p}/stopped; setsid nohup sh {p}/run-agent.sh >/dev/null 2>&1 < /dev/null &")).await?;
        return Ok(((true, "started the agent under its watchdog (no systemd)".into()), true));
    }
    if restart {
        // The watchdog restarts the agent with the new binary or config within a second.
        sh(format!("kill -TERM \"$(cat {p}/agent.pid)\"")).await?;
        return Ok(((true, "restarted the agent to apply the new binary or config".into()), true));
    }
    if reload {
        sh(format!("kill -HUP \"$(cat {p}/agent.pid)\"")).await?;
        return Ok(((true, "the agent reloaded its peer list (no restart)".into()), false));
    }
    Ok(((false, "agent and watchdog are running".into()), false))
}

/// Polls the agent's `/healthz` over mutual TLS, then records its `/v1/status`. With
/// `started_since` (the node's clock before a restart), only an agent started since counts.
async fn health_check(st: &AppState, ctx: &Ctx, started_since: Option<i64>) -> StepResult {
    let api = AgentApi::new(agent_client(st, &ctx.env).map_err(|e| e.to_string())?, &ctx.node.address, ctx.node.agent_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match api.healthz(Duration::from_secs(5)).await {
            Ok(()) => match api.status(Duration::from_secs(5)).await {
                Ok(s) if started_since.is_none_or(|t| s.started_at >= t) => {
                    let _ = db::nodes::record_heartbeat(&st.pool, ctx.node.node_id, &s).await;
                    return Ok((false, format!("{}/healthz answers over mutual TLS", api.base())));
                }
                Ok(s) => last = format!("the agent started at {} still answers (it is being restarted)", s.started_at),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the agent did not answer {}/healthz within 30 s ({last}); see {}/lsyncd/var/log/lsyncd.log and {}/agent.err on the node", api.base(), ctx.node.webroot, ctx.node.install_prefix))
}

/// An mTLS client holding the environment's control-plane certificate.
pub fn agent_client(st: &AppState, env: &EnvironmentRow) -> anyhow::Result<reqwest::Client> {
    let dir = st.runtime_dir.path().join(env.environment_id.to_string());
    let tls = crate::pki::tls::TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("client.pem"), key: dir.join("client.key") };
    if !tls.key.exists() {
        crate::pki::write_private(&tls.ca, &env.ca_cert_pem)?;
        crate::pki::write_private(&tls.cert, &env.client_cert_pem)?;
        crate::pki::write_private(&tls.key, &st.secrets.open(&env.client_key_secret, &Place::environment(env.environment_id, "client_key_secret"))?)?;
    }
    crate::pki::tls::http_client(&tls)
}

/// Stops the agent and its watchdog; removes binary, config, TLS material and state.
/// The sync folder (user files) and lsyncd.log stay.
pub async fn uninstall(st: &AppState, job: &JobRow, log: &mut StepLog) -> Result<(), String> {
    let ctx = load(st, job).await?;
    let conn = login(st, &ctx.node, log).await?;
    let prefix = ctx.node.install_prefix.trim_end_matches('/').to_owned();
    let w = ctx.node.webroot.trim_end_matches('/').to_owned();
    let r = async {
        log.run("stopped", async { conn.sh_ok(&supervise::stop_script(&prefix)).await.map(|_| (true, "agent and watchdog stopped".into())).map_err(|e| e.to_string()) }).await?;
        log.run("removed", async {
            conn.sh_ok(&format!("rm -rf {} {}", q(&prefix), q(&format!("{w}/lsyncd/var/state"))))
                .await
                .map(|_| (true, format!("removed {prefix} and {w}/lsyncd/var/state; user files and lsyncd.log kept")))
                .map_err(|e| e.to_string())
        })
        .await?;
        Ok(())
    }
    .await;
    conn.close().await;
    r
}

/// Re-checks a node: logs in and asks the agent for its status.
pub async fn verify(st: &AppState, job: &JobRow, log: &mut StepLog) -> Result<(), String> {
    let ctx = load(st, job).await?;
    let conn = login(st, &ctx.node, log).await?;
    conn.close().await;
    log.run("healthy", health_check(st, &ctx, None)).await.map(|_| ())
}

/// Reads the node's lsyncd.log tail and lsyncd.status over SSH (works with the agent down).
pub async fn read_logs(st: &AppState, node: &NodeRow, lines: usize) -> Result<(String, String), String> {
    let pinned = node.host_key.clone().ok_or("this node was never contacted; install first so its host key is pinned")?;
    let t = Target { address: node.address.clone(), port: node.ssh_port as u16, user: node.ssh_user.clone(), pinned: Some(pinned.clone()) };
    ssh::reachable(&t).await.map_err(|e| e.to_string())?;
    ssh::check_host_key(&t).await.map_err(|e| e.to_string())?;
    let conn = ssh::connect(&t, &st.ssh_keyfile, &pinned).await.map_err(|e| e.to_string())?;
    let dir = format!("{}/lsyncd/var/log", node.webroot.trim_end_matches('/'));
    let log = conn.sh(&format!("tail -n {lines} {} 2>&1", q(&format!("{dir}/lsyncd.log")))).await.map_err(|e| e.to_string())?.stdout;
    let status = conn.sh(&format!("cat {} 2>&1", q(&format!("{dir}/lsyncd.status")))).await.map_err(|e| e.to_string())?.stdout;
    conn.close().await;
    Ok((log, status))
}
