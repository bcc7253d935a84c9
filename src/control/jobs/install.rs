//! The steps of install / reconfigure / uninstall / verify on one node (DESIGN.md
//! requirement 1): reachable → host key pinned → authenticated → OS and architecture →
//! sync path present → inotify watches → agent uploaded → configured → running → healthy.
//! Each step is idempotent and says `ok` when nothing had to change, so a re-run of a
//! healthy installation changes nothing.
//!
//! Supervision: a node that runs systemd gets the unit `filesync-agent.service` (enabled,
//! `Restart=always`); nodes without systemd (the PaaS containers of the seeds, and the
//! sandbox) get a detached watchdog shell loop (`run-agent.sh`) that restarts the agent
//! when it exits; a `stopped` file tells it to stop.

use std::time::{Duration, Instant};

use super::{StepLog, StepResult};
use crate::control::AppState;
use crate::control::db::{self, EnvironmentRow, InstallationRow, JobRow, NodeRow};
use crate::control::ssh::{self, Conn, Target};

struct Ctx {
    env: EnvironmentRow,
    node: NodeRow,
    peers: Vec<NodeRow>,
    inst: Option<InstallationRow>,
}

async fn load(st: &AppState, job: &JobRow) -> Result<Ctx, String> {
    let e = |e: sqlx::Error| format!("database: {e}");
    let node_id = job.node_id.ok_or("the node was removed")?;
    let node = db::environments::node(&st.pool, node_id).await.map_err(e)?.ok_or("the node was removed")?;
    let env = db::environments::get(&st.pool, job.environment_id).await.map_err(e)?.ok_or("the environment was removed")?;
    let peers = db::environments::nodes(&st.pool, node.layer_id).await.map_err(e)?.into_iter().filter(|n| n.node_id != node.node_id && !crate::control::http::actions::leaving(n)).collect();
    let inst = db::environments::installation(&st.pool, node.layer_id).await.map_err(e)?;
    Ok(Ctx { env, node, peers, inst })
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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
            db::environments::pin_host_key(&pool, node_id, &line, &fp).await.map_err(|e| e.to_string())?;
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

fn paths(node: &NodeRow, inst: &InstallationRow) -> (String, String) {
    let root = format!("{}/{}", node.webroot.trim_end_matches('/'), inst.sync_path);
    (root, node.install_prefix.trim_end_matches('/').to_owned())
}

pub async fn install(st: &AppState, job: &JobRow, log: &mut StepLog) -> Result<(), String> {
    let ctx = load(st, job).await?;
    let inst = ctx.inst.clone().ok_or("the add-on is not installed on this environment (no settings)")?;
    let link = link_settings(st, &ctx.node, &inst)?;
    let conn = login(st, &ctx.node, log).await?;
    let r = install_steps(st, &ctx, &inst, link.as_ref(), &conn, log).await;
    conn.close().await;
    r?;
    // A node installed (or restarted) while its layer is paused for a redeploy stays paused.
    if db::environments::layer_paused(&st.pool, ctx.node.layer_id).await.unwrap_or(false) {
        log.run("paused like its layer", async {
            let client = agent_client(st, &ctx.env).map_err(|e| e.to_string())?;
            let url = format!("https://{}:{}/v1/admin/pause", ctx.node.address, ctx.node.agent_port);
            match client.post(&url).send().await {
                Ok(r) if r.status().is_success() => Ok((true, "sync paused on this node until the layer is resumed".into())),
                Ok(r) => Err(format!("the agent answered {} to pause", r.status())),
                Err(e) => Err(format!("cannot pause the agent: {e}")),
            }
        })
        .await?;
    }
    Ok(())
}

async fn install_steps(st: &AppState, ctx: &Ctx, inst: &InstallationRow, link: Option<&LinkSettings>, conn: &Conn, log: &mut StepLog) -> Result<(), String> {
    let (root, prefix) = paths(&ctx.node, inst);
    let node = &ctx.node;
    let sh = |s: String| async move { conn.sh_ok(&s).await.map_err(|e| e.to_string()) };

    log.run("OS and architecture", async {
        let out = sh("uname -sm".into()).await?;
        let want = format!("Linux {}", std::env::consts::ARCH);
        if out.trim() == want { Ok((false, out.trim().to_owned())) } else { Err(format!("node runs {:?}; this control plane's agent needs {want}", out.trim())) }
    })
    .await?;

    log.run("sync path present", async {
        let o = conn.sh(&format!("test -d {}", q(&root))).await.map_err(|e| e.to_string())?;
        if o.status == 0 {
            Ok((false, format!("{root} is a directory")))
        } else {
            Err(format!("{root} does not exist on {}: create it (mkdir -p {root}) or choose another path in the add-on settings", node.name))
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

    let bin = format!("{prefix}/bin/filesync");
    let binary_changed = log
        .run("agent uploaded", async {
            let have = conn.sh(&format!("sha256sum {} 2>/dev/null", q(&bin))).await.map_err(|e| e.to_string())?;
            if have.stdout.split_whitespace().next() == Some(st.agent.sha256.as_str()) {
                return Ok((false, format!("{bin} is current (sha256 {})", &st.agent.sha256[..16])));
            }
            let need_kib = st.agent.bytes.len() as u64 / 1024 + 1024;
            let probe = conn
                .sh(&format!("mkdir -p {p}/bin && touch {p}/bin/.write-test && rm -f {p}/bin/.write-test && df -Pk {p}/bin | tail -n 1", p = q(&prefix)))
                .await
                .map_err(|e| e.to_string())?;
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
            let check = sh(format!("sha256sum {}", q(&bin))).await?;
            if check.split_whitespace().next() != Some(st.agent.sha256.as_str()) {
                return Err(format!("uploaded {bin} but its checksum differs (disk full?): {}", check.trim()));
            }
            Ok((true, format!("uploaded {} bytes to {bin}, sha256 {} verified", st.agent.bytes.len(), &st.agent.sha256[..16])))
        })
        .await?;

    let config = agent_config(ctx, inst, link, &root, &prefix)?;
    let mut restart_needed = binary_changed;
    let mut reload_needed = false;
    let config_changed = log
        .run("configured", async {
            let old = conn.sh(&format!("cat {}/agent.toml 2>/dev/null", q(&prefix))).await.map_err(|e| e.to_string())?.stdout;
            let have_ca = conn.sh(&format!("cat {}/tls/ca.pem 2>/dev/null; test -s {p}/tls/node.pem && test -s {p}/tls/node.key", q(&prefix), p = q(&prefix))).await.map_err(|e| e.to_string())?;
            // The certificate must be this node's own: a node cloned from another one
            // carries the original's certificate, which it must never present.
            let have_cert = conn.sh(&format!("cat {}/tls/node.pem 2>/dev/null", q(&prefix))).await.map_err(|e| e.to_string())?.stdout;
            let own_cert = crate::pki::pem_identity(&have_cert).is_some_and(|(cn, ips)| cn == node.name && node.address.parse::<std::net::IpAddr>().map_or(true, |ip| ips.contains(&ip)));
            let mut changed = false;
            if have_ca.status != 0 || have_ca.stdout.trim() != ctx.env.ca_cert_pem.trim() || !own_cert {
                let ca = crate::pki::CaFiles { cert_pem: ctx.env.ca_cert_pem.clone(), key_pem: st.secrets.open(&ctx.env.ca_key_secret).map_err(|e| e.to_string())? };
                let ip: Vec<std::net::IpAddr> = node.address.parse().into_iter().collect();
                let dns: Vec<String> = if ip.is_empty() { vec![node.address.clone()] } else { vec![] };
                let cert = crate::pki::issue(&ca, &node.name, &ip, &dns).map_err(|e| e.to_string())?;
                let up = |p: String, d: String| async move { conn.upload(&p, d.as_bytes(), 0o600).await.map_err(|e| e.to_string()) };
                up(format!("{prefix}/tls/ca.pem"), ctx.env.ca_cert_pem.clone()).await?;
                up(format!("{prefix}/tls/node.pem"), cert.cert_pem).await?;
                up(format!("{prefix}/tls/node.key"), cert.key_pem).await?;
                changed = true;
            }
            let script = watchdog_script(&prefix);
            let old_script = conn.sh(&format!("cat {}/run-agent.sh 2>/dev/null", q(&prefix))).await.map_err(|e| e.to_string())?.stdout;
            if old_script != script {
                // The running watchdog keeps its copy; the agent needs no restart for it.
                conn.upload(&format!("{prefix}/run-agent.sh"), script.as_bytes(), 0o700).await.map_err(|e| e.to_string())?;
            }
            sh(format!("mkdir -p {w}/lsyncd/var/log {w}/lsyncd/var/state", w = q(node.webroot.trim_end_matches('/')))).await?;
            if old != config {
                conn.upload(&format!("{prefix}/agent.toml"), config.as_bytes(), 0o600).await.map_err(|e| e.to_string())?;
                if !changed && !old.is_empty() && reloadable(&old, &config) {
                    // Only the peer list or the delay changed: the agent reloads them in
                    // place, keeping its connections and pending changes.
                    reload_needed = true;
                    return Ok((true, format!("wrote {prefix}/agent.toml ({} peers); the agent reloads it without restarting", ctx.peers.len())));
                }
                let root_moved = !old.contains(&format!("root = {:?}", root));
                let note = if old.is_empty() {
                    ""
                } else if root_moved {
                    "; the sync path changed, the agent restarts"
                } else if link_changed(&old, &config) {
                    "; the cross-environment link settings changed (mode, address or password), the agent restarts"
                } else {
                    ""
                };
                return Ok((true, format!("wrote {prefix}/agent.toml ({} peers){note}", ctx.peers.len())));
            }
            Ok((changed, format!("{prefix}/agent.toml is current")))
        })
        .await?;
    if config_changed && !reload_needed {
        restart_needed = true;
    }

    let systemd = conn.sh(HAS_SYSTEMD).await.map_err(|e| e.to_string())?.status == 0;
    if systemd {
        log.run("running", async {
            let unit = systemd_unit(&prefix);
            let old = conn.sh(&format!("cat {UNIT_PATH} 2>/dev/null")).await.map_err(|e| e.to_string())?.stdout;
            let mut changed = false;
            if old != unit {
                conn.upload(UNIT_PATH, unit.as_bytes(), 0o644).await.map_err(|e| e.to_string())?;
                sh("systemctl daemon-reload".into()).await?;
                changed = true;
            }
            let active = conn.sh(&format!("systemctl is-active --quiet {UNIT}")).await.map_err(|e| e.to_string())?.status == 0;
            if !active {
                sh(format!("systemctl enable --now {UNIT}")).await?;
                return Ok((true, format!("started {UNIT} under systemd (enabled at boot)")));
            }
            if restart_needed || changed {
                sh(format!("systemctl restart {UNIT}")).await?;
                return Ok((true, format!("restarted {UNIT} to apply the new binary or config")));
            }
            if reload_needed {
                sh(format!("systemctl reload {UNIT}")).await?;
                return Ok((true, format!("{UNIT} reloaded its peer list (no restart)")));
            }
            Ok((false, format!("{UNIT} is active")))
        })
        .await?;
        let healthy = log.run("healthy", health_check(st, ctx)).await;
        if healthy.is_err() {
            let _ = conn.sh(&stop_script(&prefix)).await;
        }
        return healthy.map(|_| ());
    }

    let alive = format!("kill -0 \"$(cat {p}/watchdog.pid 2>/dev/null)\" 2>/dev/null && kill -0 \"$(cat {p}/agent.pid 2>/dev/null)\" 2>/dev/null", p = q(&prefix));
    log.run("running", async {
        let running = conn.sh(&alive).await.map_err(|e| e.to_string())?.status == 0;
        if !running {
            sh(format!("rm -f {p}/stopped; setsid nohup sh {p}/run-agent.sh >/dev/null 2>&1 < /dev/null &", p = q(&prefix))).await?;
            return Ok((true, "started the agent under its watchdog (no systemd)".into()));
        }
        if restart_needed {
            // The watchdog restarts the agent with the new binary or config within a second.
            sh(format!("kill -TERM \"$(cat {p}/agent.pid)\"", p = q(&prefix))).await?;
            return Ok((true, "restarted the agent to apply the new binary or config".into()));
        }
        if reload_needed {
            sh(format!("kill -HUP \"$(cat {p}/agent.pid)\"", p = q(&prefix))).await?;
            return Ok((true, "the agent reloaded its peer list (no restart)".into()));
        }
        Ok((false, "agent and watchdog are running".into()))
    })
    .await?;

    let healthy = log.run("healthy", health_check(st, ctx)).await;
    if healthy.is_err() {
        // No half-installed node left running: stop what we started.
        let _ = conn.sh(&stop_script(&prefix)).await;
    }
    healthy.map(|_| ())
}

/// Whether two agent configs differ only in what the agent reloads in place (peers, delay).
/// Anything else, the `[link]` section included (address, password, or the mode switch
/// that adds or removes it), needs a restart.
fn reloadable(old: &str, new: &str) -> bool {
    let strip = |s: &str| -> Option<toml::Table> {
        let mut t: toml::Table = s.parse().ok()?;
        t.remove("peers");
        t.remove("delay");
        Some(t)
    };
    matches!((strip(old), strip(new)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_and_delay_changes_are_reloadable_others_are_not() {
        let base = "node_name = \"n1\"\nroot = \"/w/ROOT\"\ndelay = 1\n\n[[peers]]\nname = \"n2\"\naddress = \"10.0.0.2:7755\"\n";
        let more = format!("{base}\n[[peers]]\nname = \"n3\"\naddress = \"10.0.0.3:7755\"\n");
        assert!(super::reloadable(base, &more));
        assert!(super::reloadable(base, &base.replace("delay = 1", "delay = 10")));
        assert!(!super::reloadable(base, &base.replace("/w/ROOT", "/w/ROOT2")));
        assert!(!super::reloadable("", base));
    }

    fn ctx(agent_port: i32) -> super::Ctx {
        let node = |name: &str, address: &str| crate::control::db::NodeRow {
            node_id: uuid::Uuid::new_v4(),
            layer_id: uuid::Uuid::nil(),
            name: name.into(),
            address: address.into(),
            ssh_port: 22,
            ssh_user: "root".into(),
            webroot: "/var/www/webroot".into(),
            install_prefix: "/opt/filesync".into(),
            agent_port,
            host_key: None,
            host_key_fingerprint: None,
            agent_state: "running".into(),
            last_heartbeat_at: None,
            last_status: None,
        };
        let env = crate::control::db::EnvironmentRow {
            environment_id: uuid::Uuid::nil(),
            name: "env".into(),
            webroot: "/var/www/webroot".into(),
            ca_cert_pem: String::new(),
            ca_key_secret: String::new(),
            client_cert_pem: String::new(),
            client_key_secret: String::new(),
        };
        super::Ctx { env, node: node("web1", "10.0.0.11"), peers: vec![node("web2", "10.0.0.12")], inst: None }
    }

    fn inst(mode: &str) -> crate::control::db::InstallationRow {
        crate::control::db::InstallationRow {
            installation_id: uuid::Uuid::nil(),
            layer_id: uuid::Uuid::nil(),
            mode: mode.into(),
            sync_path: "ROOT".into(),
            delay_seconds: 1,
            settings: serde_json::json!({"mode": mode, "address": "203.0.113.7:7756"}),
            password_secret: Some("plain:unused".into()),
            state: "installing".into(),
        }
    }

    fn config(pw: &str) -> String {
        let c = ctx(7755);
        let link = super::LinkSettings { listen: "10.0.0.11:7756".into(), remote: "203.0.113.7:7756".into(), password: pw.into() };
        super::agent_config(&c, &inst("two_envs"), Some(&link), "/var/www/webroot/ROOT", "/opt/filesync").unwrap()
    }

    #[test]
    fn the_link_section_round_trips_any_password() {
        for pw in ["correct horse battery", "a \"quoted\" pass", "back\\slash\\", "multi\nline\r\npass", "tab\tand 'single' and \'\'\'triple\'\'\' and \"\"\"", "unicode \u{e9}\u{1F511} \u{7f}\u{1b}[0m", "ends with backslash\\"] {
            let text = config(pw);
            let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{pw:?}: {e}\n{text}"));
            let link = t["link"].as_table().unwrap();
            assert_eq!(link["password"].as_str(), Some(pw), "{text}");
            assert_eq!(link["listen"].as_str(), Some("10.0.0.11:7756"));
            assert_eq!(link["remote"].as_str(), Some("203.0.113.7:7756"));
            // Nothing else moved: the peers are still peers, the [link] section did not
            // swallow them.
            assert_eq!(t["peers"].as_array().map(Vec::len), Some(1), "{text}");
            assert_eq!(t["node_name"].as_str(), Some("web1"));
        }
        let one: toml::Table = super::agent_config(&ctx(7755), &inst("one_env"), None, "/r", "/p").unwrap().parse().unwrap();
        assert!(!one.contains_key("link"));
    }

    #[test]
    fn a_changed_link_restarts_the_agent() {
        let a = config("first password");
        assert!(!super::reloadable(&a, &config("second password")), "a new password must restart the agent");
        assert!(!super::reloadable(&a, &a.replace("203.0.113.7:7756", "203.0.113.8:7756")), "a new address must restart the agent");
        let one = super::agent_config(&ctx(7755), &inst("one_env"), None, "/var/www/webroot/ROOT", "/opt/filesync").unwrap();
        assert!(!super::reloadable(&one, &a) && !super::reloadable(&a, &one), "switching modes must restart the agent");
        assert!(super::link_changed(&a, &config("second password")) && !super::link_changed(&a, &a));
        // Peers and delay stay reloadable next to an unchanged link.
        assert!(super::reloadable(&a, &a.replace("delay = 1", "delay = 5")));
    }

    #[test]
    fn link_settings_come_from_the_installation() {
        let st = crate::control::secrets::Secrets::new(Some("k"));
        let i = inst_with(&st, "the shared one");
        let l = super::link_from(&st, &ctx(7755).node, &i).unwrap().unwrap();
        assert_eq!((l.listen.as_str(), l.remote.as_str(), l.password.as_str()), ("10.0.0.11:7756", "203.0.113.7:7756", "the shared one"));
        // The debug form of the settings never prints the password.
        assert!(!format!("{l:?}").contains("shared one"));
        assert!(super::link_from(&st, &ctx(7755).node, &inst("one_env")).unwrap().is_none());
        let e = super::link_from(&st, &ctx(65535).node, &i).unwrap_err();
        assert!(e.contains("65535"), "{e}");
        let mut named = ctx(7755).node;
        named.address = "web1.example.com".into();
        assert!(super::link_from(&st, &named, &i).unwrap_err().contains("IP"));
        let mut no_pw = i.clone();
        no_pw.password_secret = None;
        assert!(super::link_from(&st, &ctx(7755).node, &no_pw).unwrap_err().contains("password"));
        let other_key = crate::control::secrets::Secrets::new(Some("another key"));
        assert!(super::link_from(&other_key, &ctx(7755).node, &i).unwrap_err().contains("FILESYNC_SECRET_KEY"));
    }

    fn inst_with(st: &crate::control::secrets::Secrets, pw: &str) -> crate::control::db::InstallationRow {
        let mut i = inst("two_envs");
        i.password_secret = Some(st.seal(pw).unwrap());
        i
    }
}

/// The `[link]` section of a node in two-environment mode (the agent's side of the
/// interface: `listen` is this node's link port, the agent port + 1).
pub(crate) struct LinkSettings {
    listen: String,
    remote: String,
    password: String,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings").field("listen", &self.listen).field("remote", &self.remote).field("password", &"(hidden)").finish()
    }
}

fn link_settings(st: &AppState, node: &NodeRow, inst: &InstallationRow) -> Result<Option<LinkSettings>, String> {
    link_from(&st.secrets, node, inst)
}

fn link_from(secrets: &crate::control::secrets::Secrets, node: &NodeRow, inst: &InstallationRow) -> Result<Option<LinkSettings>, String> {
    if inst.mode != "two_envs" {
        return Ok(None);
    }
    let remote = inst.settings.get("address").and_then(|a| a.as_str()).filter(|a| !a.is_empty()).ok_or("two-environment mode without the other environment's address: open the add-on dialog and set it")?;
    let sealed = inst.password_secret.as_deref().ok_or("two-environment mode without a shared password: open the add-on dialog and type the password (the same in both environments)")?;
    let password = secrets.open(sealed).map_err(|e| format!("cannot unseal the shared password ({e}): is FILESYNC_SECRET_KEY the one it was stored with? Otherwise type the password again in the add-on dialog"))?;
    let port = node.agent_port + 1;
    if !(1..=65535).contains(&port) {
        return Err(format!("the link port is the agent port + 1, but node {} has agent port {}: give it an agent port below 65535", node.name, node.agent_port));
    }
    // The agent binds its link port to this address, so it must be an IP address.
    let listen = match node.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => return Err(format!("two-environment mode: node {} has the address {:?}, but its link port listens on an IP address; set the node's address to its IP", node.name, node.address)),
    };
    Ok(Some(LinkSettings { listen, remote: remote.to_owned(), password }))
}

/// Whether the `[link]` sections of two configs differ (for the step's message).
fn link_changed(old: &str, new: &str) -> bool {
    let link = |s: &str| s.parse::<toml::Table>().ok().and_then(|mut t| t.remove("link"));
    link(old) != link(new)
}

/// Polls the agent's `/healthz` over mutual TLS, then records its `/v1/status`.
async fn health_check(st: &AppState, ctx: &Ctx) -> StepResult {
    let client = agent_client(st, &ctx.env).map_err(|e| e.to_string())?;
    let base = format!("https://{}:{}", ctx.node.address, ctx.node.agent_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => {
                if let Ok(r) = client.get(format!("{base}/v1/status")).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                {
                    let _ = db::environments::record_heartbeat(&st.pool, ctx.node.node_id, &v).await;
                }
                return Ok((false, format!("{base}/healthz answers over mutual TLS")));
            }
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = format!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the agent did not answer {base}/healthz within 30 s ({last}); see {}/lsyncd/var/log/lsyncd.log and {}/agent.err on the node", ctx.node.webroot, ctx.node.install_prefix))
}

/// An mTLS client holding the environment's control-plane certificate.
pub fn agent_client(st: &AppState, env: &EnvironmentRow) -> anyhow::Result<reqwest::Client> {
    let dir = st.runtime_dir.path().join(env.environment_id.to_string());
    let tls = crate::pki::tls::TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("client.pem"), key: dir.join("client.key") };
    if !tls.key.exists() {
        crate::pki::write_private(&tls.ca, &env.ca_cert_pem)?;
        crate::pki::write_private(&tls.cert, &env.client_cert_pem)?;
        crate::pki::write_private(&tls.key, &st.secrets.open(&env.client_key_secret)?)?;
    }
    crate::pki::tls::http_client(&tls)
}

fn agent_config(ctx: &Ctx, inst: &InstallationRow, link: Option<&LinkSettings>, root: &str, prefix: &str) -> Result<String, String> {
    let w = ctx.node.webroot.trim_end_matches('/');
    let mut s = format!(
        "# Written by the filesync control plane; edits are replaced on the next install.\nnode_name = {:?}\nlisten = \"{}:{}\"\nroot = {:?}\nstate_dir = \"{w}/lsyncd/var/state\"\nlog_dir = \"{w}/lsyncd/var/log\"\ndelay = {}\n\n[tls]\nca = \"{prefix}/tls/ca.pem\"\ncert = \"{prefix}/tls/node.pem\"\nkey = \"{prefix}/tls/node.key\"\n",
        ctx.node.name, ctx.node.address, ctx.node.agent_port, root, inst.delay_seconds
    );
    for p in &ctx.peers {
        s.push_str(&format!("\n[[peers]]\nname = {:?}\naddress = \"{}:{}\"\n", p.name, p.address, p.agent_port));
    }
    if let Some(l) = link {
        // Written with the toml crate's own string encoding: the password is arbitrary text
        // (quotes, backslashes, newlines, control characters) and must reach the agent
        // byte for byte. The file is uploaded with mode 0600.
        #[derive(serde::Serialize)]
        struct Section<'a> {
            listen: &'a str,
            remote: &'a str,
            password: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            link: Section<'a>,
        }
        let section = toml::to_string(&Doc { link: Section { listen: &l.listen, remote: &l.remote, password: &l.password } }).map_err(|e| format!("cannot write the [link] section: {e}"))?;
        s.push_str("\n# Two-environment mode: this node's link port, the other environment's address and the\n# shared password (never sent over the wire; see the README).\n");
        s.push_str(&section);
    }
    Ok(s)
}

fn watchdog_script(prefix: &str) -> String {
    format!(
        "#!/bin/sh\n# filesync watchdog (no systemd on this node): restarts the agent when it exits.\n# Stop: touch {p}/stopped, then kill the pids in watchdog.pid and agent.pid.\nP={p}\necho $$ > \"$P/watchdog.pid\"\nwhile [ ! -e \"$P/stopped\" ]; do\n  \"$P/bin/filesync\" agent --config \"$P/agent.toml\" >>\"$P/agent.err\" 2>&1 &\n  echo $! > \"$P/agent.pid\"\n  wait $!\n  [ -e \"$P/stopped\" ] && break\n  sleep 1\ndone\n",
        p = q(prefix)
    )
}

/// True (exit 0) when the node runs systemd as its init.
const HAS_SYSTEMD: &str = "test -d /run/systemd/system && command -v systemctl >/dev/null";
const UNIT: &str = "filesync-agent.service";
const UNIT_PATH: &str = "/etc/systemd/system/filesync-agent.service";

fn systemd_unit(prefix: &str) -> String {
    format!(
        "# Written by the filesync control plane; edits are replaced on the next install.\n[Unit]\nDescription=filesync agent (File Synchronization add-on)\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nExecStart={prefix}/bin/filesync agent --config {prefix}/agent.toml\nExecReload=/bin/kill -HUP $MAINPID\nRestart=always\nRestartSec=1\nTimeoutStopSec=15\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// Stops the agent whichever way it runs: the systemd unit (disabled and removed) and/or
/// the watchdog loop.
fn stop_script(prefix: &str) -> String {
    format!(
        "if [ -f {UNIT_PATH} ] && command -v systemctl >/dev/null; then systemctl disable --now {UNIT} 2>/dev/null; rm -f {UNIT_PATH}; systemctl daemon-reload 2>/dev/null; fi; P={p}; touch \"$P/stopped\" 2>/dev/null; for f in watchdog.pid agent.pid; do pid=$(cat \"$P/$f\" 2>/dev/null) && kill -TERM \"$pid\" 2>/dev/null; done; for i in $(seq 50); do pid=$(cat \"$P/agent.pid\" 2>/dev/null) && kill -0 \"$pid\" 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL \"$(cat \"$P/agent.pid\")\" 2>/dev/null; exit 0",
        p = q(prefix)
    )
}

/// Stops the agent and its watchdog; removes binary, config, TLS material and state.
/// The sync folder (user files) and lsyncd.log stay.
pub async fn uninstall(st: &AppState, job: &JobRow, log: &mut StepLog) -> Result<(), String> {
    let ctx = load(st, job).await?;
    let conn = login(st, &ctx.node, log).await?;
    let prefix = ctx.node.install_prefix.trim_end_matches('/').to_owned();
    let w = ctx.node.webroot.trim_end_matches('/').to_owned();
    let r = async {
        log.run("stopped", async { conn.sh_ok(&stop_script(&prefix)).await.map(|_| (true, "agent and watchdog stopped".into())).map_err(|e| e.to_string()) }).await?;
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
    log.run("healthy", health_check(st, &ctx)).await.map(|_| ())
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
