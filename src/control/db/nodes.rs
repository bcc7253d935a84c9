//! Nodes of a layer: their SSH coordinates, pinned host key, agent state and the status of
//! their last heartbeat.

use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::control::agent_api::AgentStatus;
use crate::control::state::AgentState;

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct NodeRow {
    pub node_id: Uuid,
    pub layer_id: Uuid,
    pub name: String,
    pub address: String,
    pub ssh_port: i32,
    pub ssh_user: String,
    pub webroot: String,
    pub install_prefix: String,
    pub agent_port: i32,
    #[serde(skip)]
    pub host_key: Option<String>,
    pub host_key_fingerprint: Option<String>,
    pub agent_state: AgentState,
    #[serde(serialize_with = "super::ts_opt")]
    pub last_heartbeat_at: Option<time::OffsetDateTime>,
    pub last_status: Option<Json<AgentStatus>>,
    /// The installation generation of the last configuration written to the node.
    pub config_generation: i32,
    /// The node it was cloned from, for nodes enrolled with a join token.
    pub clone_of: Option<String>,
}

impl NodeRow {
    pub fn status(&self) -> Option<&AgentStatus> {
        self.last_status.as_ref().map(|j| &j.0)
    }
}

macro_rules! select_nodes {
    ($rest:literal) => {
        concat!("select node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, host_key, host_key_fingerprint, agent_state, last_heartbeat_at, last_status, config_generation, clone_of from node ", $rest)
    };
}

pub struct NewNode<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub ssh_port: i32,
    pub ssh_user: &'a str,
    pub webroot: &'a str,
    pub install_prefix: &'a str,
    pub agent_port: i32,
    /// For a clone: (the join token that enrolled it, the node it was cloned from).
    pub enrolled: Option<(Uuid, &'a str)>,
}

/// Adds several nodes in one transaction: all or none. `Err(name)` when a name is taken.
pub async fn add(db: &PgPool, layer_id: Uuid, nodes: &[NewNode<'_>]) -> sqlx::Result<Result<Vec<Uuid>, String>> {
    let mut tx = db.begin().await?;
    let mut ids = Vec::with_capacity(nodes.len());
    for n in nodes {
        let id = Uuid::new_v4();
        let r = sqlx::query(
            "insert into node (node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, enrolled_by, clone_of)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict (layer_id, name) do nothing",
        )
        .bind(id)
        .bind(layer_id)
        .bind(n.name)
        .bind(n.address)
        .bind(n.ssh_port)
        .bind(n.ssh_user)
        .bind(n.webroot)
        .bind(n.install_prefix)
        .bind(n.agent_port)
        .bind(n.enrolled.map(|e| e.0))
        .bind(n.enrolled.map(|e| e.1))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(Err(n.name.to_owned()));
        }
        ids.push(id);
    }
    tx.commit().await?;
    Ok(Ok(ids))
}

pub async fn list(db: &PgPool, layer_id: Uuid) -> sqlx::Result<Vec<NodeRow>> {
    sqlx::query_as::<_, NodeRow>(select_nodes!("where layer_id = $1 order by name")).bind(layer_id).fetch_all(db).await
}

pub async fn get(db: &PgPool, node_id: Uuid) -> sqlx::Result<Option<NodeRow>> {
    sqlx::query_as::<_, NodeRow>(select_nodes!("where node_id = $1")).bind(node_id).fetch_optional(db).await
}

/// The clone a join token already enrolled at `address` (an agent asking again).
pub async fn enrolled_at(db: &PgPool, token: Uuid, address: &str) -> sqlx::Result<Option<NodeRow>> {
    sqlx::query_as::<_, NodeRow>(select_nodes!("where enrolled_by = $1 and address = $2")).bind(token).bind(address).fetch_optional(db).await
}

/// Nodes of any environment at `address` (not counting nodes marked gone), as
/// (environment name, node name).
pub async fn at_address(db: &PgPool, address: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as::<_, (String, String)>(
        "select e.name, n.name from node n join layer l using (layer_id) join environment e using (environment_id) where n.address = $1 and n.agent_state <> 'gone' order by e.name, n.name",
    )
    .bind(address)
    .fetch_all(db)
    .await
}

pub async fn environment_of(db: &PgPool, node_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar::<_, Uuid>("select l.environment_id from node n join layer l using (layer_id) where n.node_id = $1").bind(node_id).fetch_optional(db).await
}

pub async fn remove(db: &PgPool, node_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from node where node_id = $1").bind(node_id).execute(db).await?;
    Ok(())
}

pub async fn pin_host_key(db: &PgPool, node_id: Uuid, line: &str, fingerprint: &str) -> sqlx::Result<()> {
    sqlx::query("update node set host_key = $2, host_key_fingerprint = $3 where node_id = $1").bind(node_id).bind(line).bind(fingerprint).execute(db).await?;
    Ok(())
}

/// Forgets the pinned key (an operator confirmed the node was legitimately reinstalled).
pub async fn unpin_host_key(db: &PgPool, node_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update node set host_key = null, host_key_fingerprint = null where node_id = $1").bind(node_id).execute(db).await?;
    Ok(())
}

pub async fn set_state(db: &PgPool, node_id: Uuid, state: AgentState) -> sqlx::Result<()> {
    sqlx::query("update node set agent_state = $2 where node_id = $1").bind(node_id).bind(state).execute(db).await?;
    Ok(())
}

/// Sets the agent state only if it is still `from` (so a heartbeat never overwrites what a
/// job decided); true when it changed.
pub async fn transition_state(db: &PgPool, node_id: Uuid, from: AgentState, to: AgentState) -> sqlx::Result<bool> {
    let r = sqlx::query("update node set agent_state = $3 where node_id = $1 and agent_state = $2").bind(node_id).bind(from).bind(to).execute(db).await?;
    Ok(r.rows_affected() == 1)
}

/// Records that the node's agent now runs the configuration of `generation`.
pub async fn set_config_generation(db: &PgPool, node_id: Uuid, generation: i32) -> sqlx::Result<()> {
    sqlx::query("update node set config_generation = $2 where node_id = $1").bind(node_id).bind(generation).execute(db).await?;
    Ok(())
}

/// Nodes whose agent should be answering, with their environment.
pub async fn monitored(db: &PgPool) -> sqlx::Result<Vec<(NodeRow, Uuid)>> {
    let rows = sqlx::query_as::<_, NodeRow>(select_nodes!("where agent_state in ('running', 'unreachable', 'paused')")).fetch_all(db).await?;
    let mut out = Vec::with_capacity(rows.len());
    for n in rows {
        if let Some(env) = environment_of(db, n.node_id).await? {
            out.push((n, env));
        }
    }
    Ok(out)
}

pub async fn record_heartbeat(db: &PgPool, node_id: Uuid, status: &AgentStatus) -> sqlx::Result<()> {
    sqlx::query("update node set last_heartbeat_at = now(), last_status = $2 where node_id = $1").bind(node_id).bind(Json(status)).execute(db).await?;
    Ok(())
}
