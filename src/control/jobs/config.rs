//! The agent's `agent.toml` for one node, built from the typed contract
//! (`protocol::agent_toml`) and written with the `toml` serializer: node and peer
//! addresses resolved to IP addresses, the TLS files under the install prefix, the
//! `folder_id` of the installation's generation, and in two-environment mode the `[link]`
//! section with the unsealed shared password; `[versions]` and `[mass_delete]` from the
//! installation's safety settings (`control::safety`).

use std::net::SocketAddr;

use crate::control::agent_api::resolve_ip;
use crate::control::db::{EnvironmentRow, InstallationRow, NodeRow};
use crate::control::secrets::{Place, Secrets};
use crate::control::state::Mode;
use crate::protocol::agent_toml::{AgentToml, LinkConfig, PeerConfig, TlsConfig};

const HEADER: &str = "Written by the filesync control plane; edits are replaced on the next install.";

/// `<environment>:<sync path>:<generation>`: which folder a node syncs.
pub fn folder_id(env: &EnvironmentRow, inst: &InstallationRow) -> String {
    format!("{}:{}:{}", env.environment_id, inst.sync_path, inst.generation)
}

/// The node's sync root and install prefix.
pub fn paths(node: &NodeRow, inst: &InstallationRow) -> (String, String) {
    let root = format!("{}/{}", node.webroot.trim_end_matches('/'), inst.sync_path);
    (root, node.install_prefix.trim_end_matches('/').to_owned())
}

pub async fn socket_addr(n: &NodeRow, port: i32) -> Result<SocketAddr, String> {
    let ip = resolve_ip(&n.address).await.map_err(|e| format!("node {}: {e}", n.name))?;
    let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| format!("node {}: port {port} is not a port (1-65535)", n.name))?;
    Ok(SocketAddr::new(ip, port))
}

/// The whole config of `node` (peers: every other node of the layer that is not leaving).
pub async fn build(env: &EnvironmentRow, node: &NodeRow, peers: &[NodeRow], inst: &InstallationRow, link: Option<LinkConfig>) -> Result<AgentToml, String> {
    let (root, prefix) = paths(node, inst);
    let w = node.webroot.trim_end_matches('/');
    let tls = TlsConfig { ca: format!("{prefix}/tls/ca.pem").into(), cert: format!("{prefix}/tls/node.pem").into(), key: format!("{prefix}/tls/node.key").into() };
    let mut c = AgentToml::new(&node.name, socket_addr(node, node.agent_port).await?, root, tls);
    c.folder_id = Some(folder_id(env, inst));
    c.state_dir = Some(format!("{w}/lsyncd/var/state").into());
    c.log_dir = Some(format!("{w}/lsyncd/var/log").into());
    c.delay = inst.delay_seconds.max(0) as u64;
    for p in peers {
        c.peers.push(PeerConfig { name: p.name.clone(), address: socket_addr(p, p.agent_port).await? });
    }
    c.link = link;
    crate::control::safety::SafetySettings::from_stored(&inst.settings).apply(&mut c);
    Ok(c)
}

pub fn text(c: &AgentToml) -> Result<String, String> {
    c.to_toml(HEADER).map_err(|e| format!("cannot write agent.toml: {e}"))
}

/// The `[link]` section of a node in two-environment mode: its link port is the agent port
/// + 1 on its IP address; the password is unsealed from the installation.
pub async fn link(secrets: &Secrets, node: &NodeRow, inst: &InstallationRow) -> Result<Option<LinkConfig>, String> {
    if inst.mode != Mode::TwoEnvs {
        return Ok(None);
    }
    let remote =
        inst.settings.get("address").and_then(|a| a.as_str()).filter(|a| !a.is_empty()).ok_or("two-environment mode without the other environment's address: open the add-on dialog and set it")?;
    let sealed = inst.password_secret.as_deref().ok_or("two-environment mode without a shared password: open the add-on dialog and type the password (the same in both environments)")?;
    let password = secrets
        .open(sealed, &Place::installation_password(inst.layer_id))
        .map_err(|e| format!("cannot unseal the shared password ({e}): is FILESYNC_SECRET_KEY the one it was stored with? Otherwise type the password again in the add-on dialog"))?;
    let port = node.agent_port + 1;
    if !(1..=65535).contains(&port) {
        return Err(format!("the link port is the agent port + 1, but node {} has agent port {}: give it an agent port below 65535", node.name, node.agent_port));
    }
    let listen = socket_addr(node, port).await?;
    Ok(Some(LinkConfig { listen, remote: remote.to_owned(), password }))
}

/// Whether two agent configs differ only in what the agent reloads in place (peers, delay).
/// Anything else, the `[link]` section included, needs a restart.
pub fn reloadable(old: &str, new: &str) -> bool {
    let strip = |s: &str| -> Option<toml::Table> {
        let mut t: toml::Table = s.parse().ok()?;
        t.remove("peers");
        t.remove("delay");
        Some(t)
    };
    matches!((strip(old), strip(new)), (Some(a), Some(b)) if a == b)
}

/// Whether the value of `key` differs between two configs (for the step's message).
pub fn changed(old: &str, new: &str, key: &str) -> bool {
    let get = |s: &str| s.parse::<toml::Table>().ok().and_then(|mut t| t.remove(key));
    get(old) != get(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::{AgentState, InstallState};

    fn node(name: &str, address: &str, agent_port: i32) -> NodeRow {
        NodeRow {
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
            agent_state: AgentState::Running,
            last_heartbeat_at: None,
            last_status: None,
            config_generation: 0,
            clone_of: None,
            health: crate::control::state::Health::Unknown,
            health_error: None,
            health_checked_at: None,
            last_report: None,
        }
    }

    fn env() -> EnvironmentRow {
        EnvironmentRow {
            environment_id: uuid::Uuid::nil(),
            name: "env".into(),
            webroot: "/var/www/webroot".into(),
            ca_cert_pem: String::new(),
            ca_key_secret: String::new(),
            client_cert_pem: String::new(),
            client_key_secret: String::new(),
        }
    }

    fn inst(mode: Mode, secrets: &Secrets, pw: &str) -> InstallationRow {
        InstallationRow {
            installation_id: uuid::Uuid::nil(),
            layer_id: uuid::Uuid::nil(),
            mode,
            sync_path: "ROOT".into(),
            delay_seconds: 1,
            settings: serde_json::json!({"address": "203.0.113.7:7756"}),
            password_secret: Some(secrets.seal(pw, &Place::installation_password(uuid::Uuid::nil())).unwrap()),
            state: InstallState::Installing,
            generation: 3,
        }
    }

    async fn config(secrets: &Secrets, pw: &str) -> String {
        let i = inst(Mode::TwoEnvs, secrets, pw);
        let n = node("web1", "10.0.0.11", 7755);
        let l = link(secrets, &n, &i).await.unwrap();
        text(&build(&env(), &n, &[node("web2", "10.0.0.12", 7755)], &i, l).await.unwrap()).unwrap()
    }

    fn secrets() -> Secrets {
        Secrets::derive("a test key of sixteen+", b"0123456789abcdef").unwrap()
    }

    #[tokio::test]
    async fn the_config_round_trips_through_the_agent_contract() {
        let s = secrets();
        for pw in ["correct horse battery", "a \"quoted\" pass", "back\\slash\\", "multi\nline\r\npass", "tab\tand 'single' and \"\"\"", "unicode \u{e9}\u{1F511} \u{7f}\u{1b}[0m"] {
            let text = config(&s, pw).await;
            let c = AgentToml::from_toml(&text).unwrap_or_else(|e| panic!("{pw:?}: {e}\n{text}"));
            assert_eq!(c.link.as_ref().unwrap().password, pw);
            assert_eq!(c.link.as_ref().unwrap().listen, "10.0.0.11:7756".parse().unwrap());
            assert_eq!((c.peers.len(), c.node_name.as_str(), c.delay), (1, "web1", 1));
            assert_eq!(c.folder_id.as_deref(), Some("00000000-0000-0000-0000-000000000000:ROOT:3"));
            assert_eq!(c.root.to_str(), Some("/var/www/webroot/ROOT"));
        }
    }

    #[tokio::test]
    async fn host_names_become_addresses_the_agent_can_use() {
        let s = secrets();
        let i = inst(Mode::OneEnv, &s, "x");
        let c = build(&env(), &node("web1", "localhost", 7755), &[node("web2", "127.0.0.2", 7755)], &i, None).await.unwrap();
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 7755, "{c:?}");
        let e = build(&env(), &node("web1", "10.0.0.1", 7755), &[node("web2", "no-such-host.invalid", 7755)], &i, None).await.unwrap_err();
        assert!(e.contains("web2") && e.contains("does not resolve"), "{e}");
    }

    #[tokio::test]
    async fn a_changed_link_or_root_restarts_the_agent_peers_and_delay_reload() {
        let s = secrets();
        let a = config(&s, "first password").await;
        assert!(!reloadable(&a, &config(&s, "second password").await), "a new password must restart the agent");
        assert!(!reloadable(&a, &a.replace("203.0.113.7:7756", "203.0.113.8:7756")));
        assert!(!reloadable(&a, &a.replace("/var/www/webroot/ROOT", "/var/www/webroot/ROOT2")));
        assert!(reloadable(&a, &a.replace("delay = 1", "delay = 5")));
        assert!(changed(&a, &config(&s, "second password").await, "link") && !changed(&a, &a, "link"));
        assert!(!reloadable("", &a));
        let one = text(&build(&env(), &node("web1", "10.0.0.11", 7755), &[], &inst(Mode::OneEnv, &s, "x"), None).await.unwrap()).unwrap();
        assert!(!reloadable(&one, &a) && !one.contains("[link]"));
    }

    #[tokio::test]
    async fn link_settings_come_from_the_installation() {
        let s = secrets();
        let i = inst(Mode::TwoEnvs, &s, "the shared one");
        assert!(link(&s, &node("web1", "10.0.0.11", 65535), &i).await.unwrap_err().contains("65535"));
        let mut no_pw = i.clone();
        no_pw.password_secret = None;
        assert!(link(&s, &node("web1", "10.0.0.11", 7755), &no_pw).await.unwrap_err().contains("password"));
        let other = Secrets::derive("another key of sixteen", b"0123456789abcdef").unwrap();
        assert!(link(&other, &node("web1", "10.0.0.11", 7755), &i).await.unwrap_err().contains("FILESYNC_SECRET_KEY"));
        assert!(link(&s, &node("web1", "10.0.0.11", 7755), &inst(Mode::OneEnv, &s, "x")).await.unwrap().is_none());
    }
}
