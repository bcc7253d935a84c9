//! Environments, their layers, nodes and the add-on installation of a layer.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct EnvironmentRow {
    pub environment_id: Uuid,
    pub name: String,
    pub webroot: String,
    #[serde(skip)]
    pub ca_cert_pem: String,
    #[serde(skip)]
    pub ca_key_secret: String,
    #[serde(skip)]
    pub client_cert_pem: String,
    #[serde(skip)]
    pub client_key_secret: String,
}

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
    pub agent_state: String,
    #[serde(serialize_with = "super::ts_opt")]
    pub last_heartbeat_at: Option<time::OffsetDateTime>,
    pub last_status: Option<serde_json::Value>,
}

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct InstallationRow {
    pub installation_id: Uuid,
    pub layer_id: Uuid,
    pub mode: String,
    pub sync_path: String,
    pub delay_seconds: i32,
    pub settings: serde_json::Value,
    #[serde(skip)]
    pub password_secret: Option<String>,
    pub state: String,
}

pub struct NewEnvironment<'a> {
    pub name: &'a str,
    pub webroot: &'a str,
    pub ca_cert_pem: &'a str,
    pub ca_key_secret: &'a str,
    pub client_cert_pem: &'a str,
    pub client_key_secret: &'a str,
}

/// Creates the environment and its default `cp` layer; None when the name is taken.
pub async fn create(db: &PgPool, e: NewEnvironment<'_>) -> sqlx::Result<Option<Uuid>> {
    let id = Uuid::new_v4();
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "insert into environment (environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret) values ($1, $2, $3, $4, $5, $6, $7) on conflict (name) do nothing",
    )
    .bind(id)
    .bind(e.name)
    .bind(e.webroot)
    .bind(e.ca_cert_pem)
    .bind(e.ca_key_secret)
    .bind(e.client_cert_pem)
    .bind(e.client_key_secret)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query("insert into layer (layer_id, environment_id, name) values ($1, $2, 'cp')").bind(Uuid::new_v4()).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(id))
}

const ENV_COLS: &str = "environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret";

pub async fn list(db: &PgPool) -> sqlx::Result<Vec<EnvironmentRow>> {
    sqlx::query_as::<_, EnvironmentRow>("select environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret from environment order by name")
        .fetch_all(db)
        .await
}

pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<EnvironmentRow>> {
    let _ = ENV_COLS;
    sqlx::query_as::<_, EnvironmentRow>("select environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret from environment where environment_id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn delete(db: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from environment where environment_id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// The layer the add-on targets (`cp`, created with the environment).
pub async fn cp_layer(db: &PgPool, environment_id: Uuid) -> sqlx::Result<Uuid> {
    sqlx::query_scalar::<_, Uuid>("select layer_id from layer where environment_id = $1 and name = 'cp'").bind(environment_id).fetch_one(db).await
}

pub struct NewNode<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub ssh_port: i32,
    pub ssh_user: &'a str,
    pub webroot: &'a str,
    pub install_prefix: &'a str,
    pub agent_port: i32,
}

/// Adds several nodes in one transaction: all or none. `Err(name)` when a name is taken.
pub async fn add_nodes(db: &PgPool, layer_id: Uuid, nodes: &[NewNode<'_>]) -> sqlx::Result<Result<Vec<Uuid>, String>> {
    let mut tx = db.begin().await?;
    let mut ids = Vec::with_capacity(nodes.len());
    for n in nodes {
        let id = Uuid::new_v4();
        let r = sqlx::query(
            "insert into node (node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (layer_id, name) do nothing",
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

pub async fn set_layer_paused(db: &PgPool, layer_id: Uuid, paused: bool) -> sqlx::Result<()> {
    sqlx::query("update layer set paused = $2 where layer_id = $1").bind(layer_id).bind(paused).execute(db).await?;
    Ok(())
}

pub async fn layer_paused(db: &PgPool, layer_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("select paused from layer where layer_id = $1").bind(layer_id).fetch_one(db).await
}

const NODE_SELECT: &str = "select node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, host_key, host_key_fingerprint, agent_state, last_heartbeat_at, last_status from node";

pub async fn nodes(db: &PgPool, layer_id: Uuid) -> sqlx::Result<Vec<NodeRow>> {
    let _ = NODE_SELECT;
    sqlx::query_as::<_, NodeRow>("select node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, host_key, host_key_fingerprint, agent_state, last_heartbeat_at, last_status from node where layer_id = $1 order by name")
        .bind(layer_id)
        .fetch_all(db)
        .await
}

pub async fn node(db: &PgPool, node_id: Uuid) -> sqlx::Result<Option<NodeRow>> {
    sqlx::query_as::<_, NodeRow>("select node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, host_key, host_key_fingerprint, agent_state, last_heartbeat_at, last_status from node where node_id = $1")
        .bind(node_id)
        .fetch_optional(db)
        .await
}

pub async fn node_environment(db: &PgPool, node_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar::<_, Uuid>("select l.environment_id from node n join layer l using (layer_id) where n.node_id = $1").bind(node_id).fetch_optional(db).await
}

pub async fn remove_node(db: &PgPool, node_id: Uuid) -> sqlx::Result<()> {
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

pub async fn set_agent_state(db: &PgPool, node_id: Uuid, state: &str) -> sqlx::Result<()> {
    sqlx::query("update node set agent_state = $2 where node_id = $1").bind(node_id).bind(state).execute(db).await?;
    Ok(())
}

/// Sets the agent state only if it is still `from` (so a heartbeat never overwrites what a
/// job decided); true when it changed.
pub async fn transition_agent_state(db: &PgPool, node_id: Uuid, from: &str, to: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("update node set agent_state = $3 where node_id = $1 and agent_state = $2").bind(node_id).bind(from).bind(to).execute(db).await?;
    Ok(r.rows_affected() == 1)
}

/// Nodes whose agent should be answering (installed and not failed), with their environment.
pub async fn monitored_nodes(db: &PgPool) -> sqlx::Result<Vec<(NodeRow, Uuid)>> {
    let rows = sqlx::query_as::<_, NodeRow>(
        "select node_id, layer_id, name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port, host_key, host_key_fingerprint, agent_state, last_heartbeat_at, last_status from node where agent_state in ('running', 'unreachable')",
    )
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for n in rows {
        if let Some(env) = node_environment(db, n.node_id).await? {
            out.push((n, env));
        }
    }
    Ok(out)
}

pub async fn record_heartbeat(db: &PgPool, node_id: Uuid, status: &serde_json::Value) -> sqlx::Result<()> {
    sqlx::query("update node set last_heartbeat_at = now(), last_status = $2 where node_id = $1").bind(node_id).bind(status).execute(db).await?;
    Ok(())
}

pub async fn installation(db: &PgPool, layer_id: Uuid) -> sqlx::Result<Option<InstallationRow>> {
    sqlx::query_as::<_, InstallationRow>(
        "select installation_id, layer_id, mode, sync_path, delay_seconds, settings, password_secret, state from installation where layer_id = $1",
    )
    .bind(layer_id)
    .fetch_optional(db)
    .await
}

pub struct NewInstallation<'a> {
    pub mode: &'a str,
    pub sync_path: &'a str,
    pub delay_seconds: i32,
    pub settings: serde_json::Value,
    pub password_secret: Option<String>,
}

/// Creates or replaces the layer's installation settings (install and reconfigure).
pub async fn upsert_installation(db: &PgPool, layer_id: Uuid, i: NewInstallation<'_>, state: &str) -> sqlx::Result<()> {
    sqlx::query(
        "insert into installation (installation_id, layer_id, mode, sync_path, delay_seconds, settings, password_secret, state) values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (layer_id) do update set mode = excluded.mode, sync_path = excluded.sync_path, delay_seconds = excluded.delay_seconds,
           settings = excluded.settings, password_secret = excluded.password_secret, state = excluded.state, updated_at = now()",
    )
    .bind(Uuid::new_v4())
    .bind(layer_id)
    .bind(i.mode)
    .bind(i.sync_path)
    .bind(i.delay_seconds)
    .bind(i.settings)
    .bind(i.password_secret)
    .bind(state)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_installation_state(db: &PgPool, layer_id: Uuid, state: &str) -> sqlx::Result<()> {
    sqlx::query("update installation set state = $2, updated_at = now() where layer_id = $1").bind(layer_id).bind(state).execute(db).await?;
    Ok(())
}

pub async fn delete_installation(db: &PgPool, layer_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from installation where layer_id = $1").bind(layer_id).execute(db).await?;
    Ok(())
}
