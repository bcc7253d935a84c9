//! Enrollment of a cloned node (`POST /api/v1/enroll`, credential: a join token).
//!
//! The join token is the only thing checked about the requester, so it decides nothing
//! but the new node's address: the clone is recorded from the original node's stored row
//! (webroot, install prefix, SSH port and user, agent port). What the request says about
//! those is ignored (and mentioned in the event). The address must be an IP address no
//! node of any environment has. A token is tied to one environment, valid for at
//! most 24 hours and for `max_uses` clones (one by default); a use is taken atomically.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Outcome;
use super::nodes::NodeFields;
use super::tokens::token_hash;
use crate::control::AppState;
use crate::control::db;
use crate::control::state::AgentState;

/// What a cloned node's agent sends.
#[derive(Deserialize, Debug)]
pub struct EnrollRequest {
    pub token: String,
    /// The node name found in the copied config (the node it was cloned from).
    pub clone_of: String,
    /// How peers reach the clone: an IP address.
    pub address: String,
    /// Sent by agents; ignored (the original's values are used).
    #[serde(default)]
    pub webroot: String,
    #[serde(default)]
    pub install_prefix: String,
    #[serde(default)]
    pub hostname: String,
}

#[derive(Serialize, Debug)]
pub struct EnrollResponse {
    pub node_id: Uuid,
    pub name: String,
}

/// Why an enrollment was refused, in words for both logs.
#[derive(Debug)]
pub enum Refusal {
    /// 403: the token does not allow it.
    Refused(String),
    /// 422: the request cannot be honoured.
    Invalid(String),
}

pub async fn enroll(st: &AppState, r: &EnrollRequest) -> anyhow::Result<Result<EnrollResponse, Refusal>> {
    let refused = |m: String| Ok(Err(Refusal::Refused(m)));
    let Some((tok, expired)) = db::join_tokens::by_hash(&st.pool, &token_hash(r.token.trim())).await? else {
        return refused("the join token is not valid for any environment (check it on the environment page)".into());
    };
    if let Some(at) = tok.revoked_at {
        return refused(format!("the join token {:?} was revoked at {at}; create a new one on the environment page", tok.name));
    }
    if expired {
        return refused(format!("the join token {:?} expired at {}; create a new one on the environment page", tok.name, tok.expires_at));
    }
    // The agent asked again (a restart before its install job ran): the same answer.
    if let Some(same) = db::nodes::enrolled_at(&st.pool, tok.join_token_id, r.address.trim()).await? {
        return Ok(Ok(EnrollResponse { node_id: same.node_id, name: same.name }));
    }
    if tok.uses >= tok.max_uses {
        return refused(format!("the join token {:?} has been used for {} clone(s), its limit; create a new one on the environment page", tok.name, tok.max_uses));
    }
    let env_id = tok.environment_id;
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return refused("the join token's environment was removed".into()) };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let nodes = db::nodes::list(&st.pool, layer).await?;
    let Some(original) = nodes.iter().find(|n| n.name == r.clone_of && !n.agent_state.leaving()) else {
        return Ok(Err(Refusal::Invalid(format!("environment {} has no node {:?} to be a clone of", env.name, r.clone_of))));
    };
    let address = match r.address.trim().parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => ip.to_string(),
        _ => return Ok(Err(Refusal::Invalid(format!("address {:?}: a clone enrolls with its own IP address", r.address)))),
    };
    if let Some(other) = nodes.iter().find(|n| n.address == address && n.agent_state != AgentState::Gone) {
        return refused(format!("address {address} is node {}'s; a clone enrolls with its own address", other.name));
    }
    // Nor may it name a node of another environment (the control plane's SSH key is
    // trusted there too).
    if let Some((e, n)) = db::nodes::at_address(&st.pool, &address).await?.into_iter().next() {
        return refused(format!("address {address} is node {n}'s in another environment ({e}); a clone enrolls with its own address"));
    }
    let fields = NodeFields {
        name: format!("{}-clone-{}", r.clone_of.chars().take(50).collect::<String>(), &Uuid::new_v4().simple().to_string()[..4]),
        address: address.clone(),
        ssh_port: original.ssh_port,
        ssh_user: original.ssh_user.clone(),
        webroot: original.webroot.clone(),
        install_prefix: original.install_prefix.clone(),
        agent_port: original.agent_port,
    };
    if let Err(e) = super::check_abs_path(&fields.install_prefix, 2).and(super::check_abs_path(&fields.webroot, 1)) {
        return Ok(Err(Refusal::Invalid(format!("node {}'s webroot or install prefix is not accepted any more ({e}); fix that node first", original.name))));
    }
    if !db::join_tokens::take_use(&st.pool, tok.join_token_id).await? {
        return refused(format!("the join token {:?} is spent, expired or revoked; create a new one on the environment page", tok.name));
    }
    match super::nodes::insert(st, &env, std::slice::from_ref(&fields), Some((tok.join_token_id, &original.name))).await {
        Ok(Outcome::Done(ids)) => {
            let host = if r.hostname.is_empty() { String::new() } else { format!(", host {}", r.hostname.chars().filter(|c| !c.is_control()).take(100).collect::<String>()) };
            let mut asked = Vec::new();
            if !r.install_prefix.is_empty() && r.install_prefix != fields.install_prefix {
                asked.push("install prefix");
            }
            if !r.webroot.is_empty() && r.webroot != fields.webroot {
                asked.push("webroot");
            }
            let note = if asked.is_empty() { String::new() } else { format!("; it asked for another {}, ignored", asked.join(" and ")) };
            db::add_event(
                &st.pool,
                Some(env_id),
                &format!(
                    "clone of {} enrolled as {} ({address}{host}) with join token {:?} (use {} of {}); webroot and install prefix copied from {}{note}",
                    r.clone_of,
                    fields.name,
                    tok.name,
                    tok.uses + 1,
                    tok.max_uses,
                    original.name
                ),
            )
            .await?;
            Ok(Ok(EnrollResponse { node_id: ids[0], name: fields.name }))
        }
        Ok(Outcome::Invalid(e)) => {
            db::join_tokens::give_back(&st.pool, tok.join_token_id).await?;
            Ok(Err(Refusal::Invalid(e.into_iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "))))
        }
        Err(e) => {
            db::join_tokens::give_back(&st.pool, tok.join_token_id).await?;
            Err(e)
        }
    }
}
