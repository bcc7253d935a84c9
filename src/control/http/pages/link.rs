//! The "Cross-environment link" table of a two-environment installation, built from each
//! node's `link` in its last heartbeat (pure: the heartbeat already stored the status).

use super::{ago, human_bytes};
use crate::control::agent_api::LinkState;
use crate::control::db;

/// The link as the nodes reported it.
pub struct LinkView {
    /// The other environment's address from the add-on settings.
    pub remote: String,
    pub nodes: Vec<LinkNodeView>,
    /// One line for the whole environment ("connected through web1", ...).
    pub summary: String,
}

pub struct LinkNodeView {
    pub name: String,
    pub state: String,
    pub role: String,
    pub remote: String,
    pub serving_node: String,
    pub last_exchange: String,
    pub latency: String,
    pub bytes_in: String,
    pub bytes_out: String,
    pub error: String,
}

fn state_word(s: LinkState) -> String {
    s.to_string()
}

pub fn link_view(remote: &str, rows: &[db::NodeRow]) -> LinkView {
    let nodes: Vec<LinkNodeView> = rows
        .iter()
        .filter(|n| !n.agent_state.leaving())
        .map(|n| {
            let empty = |state: &str| LinkNodeView {
                name: n.name.clone(),
                state: state.into(),
                role: String::new(),
                remote: String::new(),
                serving_node: String::new(),
                last_exchange: String::new(),
                latency: String::new(),
                bytes_in: String::new(),
                bytes_out: String::new(),
                error: String::new(),
            };
            let Some(status) = n.status() else { return empty("no report yet") };
            let Some(l) = &status.link else { return empty("no link (agent without link support, or not configured yet)") };
            let role = if l.leader {
                "carries the link".to_owned()
            } else if l.state == LinkState::Standby {
                "standby (another node carries the link)".to_owned()
            } else {
                String::new()
            };
            LinkNodeView {
                name: n.name.clone(),
                state: state_word(l.state),
                role,
                remote: l.remote.clone(),
                serving_node: l.serving_node.clone().unwrap_or_default(),
                last_exchange: l.last_exchange.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()).map(|t| ago(Some(t))).unwrap_or_else(|| "never".into()),
                latency: l.latency_ms.map(|ms| format!("{ms:.0} ms")).unwrap_or_default(),
                bytes_in: human_bytes(l.bytes_in),
                bytes_out: human_bytes(l.bytes_out),
                error: l.error.clone().unwrap_or_default(),
            }
        })
        .collect();
    let carrier = nodes.iter().find(|n| n.state == "connected" && n.role == "carries the link");
    let summary = if let Some(c) = carrier {
        if c.serving_node.is_empty() { format!("connected through {}", c.name) } else { format!("connected through {} (with {} on the other side)", c.name, c.serving_node) }
    } else if let Some(r) = nodes.iter().find(|n| n.state == "refused") {
        format!("refused: {}", if r.error.is_empty() { "the two environments were given different passwords" } else { &r.error })
    } else if let Some(p) = nodes.iter().find(|n| n.state == "pairing") {
        format!("pairing ({})", p.name)
    } else if let Some(u) = nodes.iter().find(|n| n.state == "unreachable") {
        format!("not connected: {}", if u.error.is_empty() { format!("no answer from {remote}") } else { u.error.clone() })
    } else {
        "no node reports the link yet".into()
    };
    LinkView { remote: remote.to_owned(), nodes, summary }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::state::AgentState;

    pub(crate) fn node(name: &str, status: Option<serde_json::Value>) -> db::NodeRow {
        db::NodeRow {
            node_id: uuid::Uuid::new_v4(),
            layer_id: uuid::Uuid::nil(),
            name: name.into(),
            address: "10.0.0.1".into(),
            ssh_port: 22,
            ssh_user: "root".into(),
            webroot: "/w".into(),
            install_prefix: "/p/q".into(),
            agent_port: 7755,
            host_key: None,
            host_key_fingerprint: None,
            agent_state: AgentState::Running,
            last_heartbeat_at: None,
            last_status: status.map(|v| sqlx::types::Json(serde_json::from_value(v).unwrap())),
            config_generation: 1,
            clone_of: None,
            health: crate::control::state::Health::Unknown,
            health_error: None,
            health_checked_at: None,
            last_report: None,
        }
    }

    #[test]
    fn link_table_in_words() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let rows = vec![
            node(
                "web1",
                Some(
                    serde_json::json!({"link": {"state": "connected", "leader": true, "remote": "203.0.113.7:7756", "serving_node": "ams1", "last_exchange": now - 5, "latency_ms": 81.4, "bytes_in": 2048, "bytes_out": 3 * 1024 * 1024, "error": null}}),
                ),
            ),
            node(
                "web2",
                Some(
                    serde_json::json!({"link": {"state": "standby", "leader": false, "remote": "203.0.113.7:7756", "serving_node": null, "last_exchange": null, "latency_ms": null, "bytes_in": 0, "bytes_out": 0, "error": null}}),
                ),
            ),
            node("web3", None),
            node("web4", Some(serde_json::json!({"link": null}))),
        ];
        let v = link_view("203.0.113.7:7756", &rows);
        assert_eq!(v.summary, "connected through web1 (with ams1 on the other side)");
        let w1 = &v.nodes[0];
        assert_eq!((w1.state.as_str(), w1.role.as_str(), w1.latency.as_str(), w1.bytes_in.as_str(), w1.bytes_out.as_str()), ("connected", "carries the link", "81 ms", "2.0 KiB", "3.0 MiB"));
        assert!(w1.last_exchange.ends_with("s ago"), "{}", w1.last_exchange);
        assert_eq!((v.nodes[1].role.as_str(), v.nodes[1].last_exchange.as_str()), ("standby (another node carries the link)", "never"));
        assert_eq!(v.nodes[2].state, "no report yet");
        assert!(v.nodes[3].state.starts_with("no link"));

        let refused = vec![node(
            "web1",
            Some(serde_json::json!({"link": {"state": "refused", "leader": true, "remote": "x:1", "bytes_in": 0, "bytes_out": 0, "error": "the other environment refused the password"}})),
        )];
        assert_eq!(link_view("x:1", &refused).summary, "refused: the other environment refused the password");
    }
}
