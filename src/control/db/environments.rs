//! Environments, their layers and the add-on installation of a layer.

use sqlx::PgPool;
use uuid::Uuid;

use crate::control::state::{InstallState, Mode};

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
pub struct InstallationRow {
    pub installation_id: Uuid,
    pub layer_id: Uuid,
    pub mode: Mode,
    pub sync_path: String,
    pub delay_seconds: i32,
    pub settings: serde_json::Value,
    #[serde(skip)]
    pub password_secret: Option<String>,
    pub state: InstallState,
    /// Grows by one each time the sync path changes (part of every agent's folder_id).
    pub generation: i32,
}

pub struct NewEnvironment<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub webroot: &'a str,
    pub ca_cert_pem: &'a str,
    pub ca_key_secret: &'a str,
    pub client_cert_pem: &'a str,
    pub client_key_secret: &'a str,
}

/// Creates the environment and its default `cp` layer; false when the name is taken.
pub async fn create(db: &PgPool, e: NewEnvironment<'_>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "insert into environment (environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret) values ($1, $2, $3, $4, $5, $6, $7) on conflict (name) do nothing",
    )
    .bind(e.id)
    .bind(e.name)
    .bind(e.webroot)
    .bind(e.ca_cert_pem)
    .bind(e.ca_key_secret)
    .bind(e.client_cert_pem)
    .bind(e.client_key_secret)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("insert into layer (layer_id, environment_id, name) values ($1, $2, 'cp')").bind(Uuid::new_v4()).bind(e.id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}

macro_rules! select_environments {
    ($rest:literal) => {
        concat!("select environment_id, name, webroot, ca_cert_pem, ca_key_secret, client_cert_pem, client_key_secret from environment ", $rest)
    };
}

pub async fn list(db: &PgPool) -> sqlx::Result<Vec<EnvironmentRow>> {
    sqlx::query_as::<_, EnvironmentRow>(select_environments!("order by name")).fetch_all(db).await
}

pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<EnvironmentRow>> {
    sqlx::query_as::<_, EnvironmentRow>(select_environments!("where environment_id = $1")).bind(id).fetch_optional(db).await
}

/// The layer the add-on targets (`cp`, created with the environment).
pub async fn cp_layer(db: &PgPool, environment_id: Uuid) -> sqlx::Result<Uuid> {
    sqlx::query_scalar::<_, Uuid>("select layer_id from layer where environment_id = $1 and name = 'cp'").bind(environment_id).fetch_one(db).await
}

pub async fn set_layer_paused(db: &PgPool, layer_id: Uuid, paused: bool) -> sqlx::Result<()> {
    sqlx::query("update layer set paused = $2 where layer_id = $1").bind(layer_id).bind(paused).execute(db).await?;
    Ok(())
}

pub async fn layer_paused(db: &PgPool, layer_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("select paused from layer where layer_id = $1").bind(layer_id).fetch_one(db).await
}

macro_rules! select_installations {
    ($rest:literal) => {
        concat!("select installation_id, layer_id, mode, sync_path, delay_seconds, settings, password_secret, state, generation from installation ", $rest)
    };
}

pub async fn installation(db: &PgPool, layer_id: Uuid) -> sqlx::Result<Option<InstallationRow>> {
    sqlx::query_as::<_, InstallationRow>(select_installations!("where layer_id = $1")).bind(layer_id).fetch_optional(db).await
}

pub struct NewInstallation<'a> {
    pub mode: Mode,
    pub sync_path: &'a str,
    pub delay_seconds: i32,
    pub settings: serde_json::Value,
    pub password_secret: Option<String>,
}

/// Creates or replaces the layer's installation settings (install and reconfigure). A new
/// sync path starts a new generation. Returns the stored row.
pub async fn upsert_installation(db: &PgPool, layer_id: Uuid, i: NewInstallation<'_>, state: InstallState) -> sqlx::Result<InstallationRow> {
    sqlx::query_as::<_, InstallationRow>(
        "insert into installation (installation_id, layer_id, mode, sync_path, delay_seconds, settings, password_secret, state) values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (layer_id) do update set mode = excluded.mode, sync_path = excluded.sync_path, delay_seconds = excluded.delay_seconds,
           settings = excluded.settings, password_secret = excluded.password_secret, state = excluded.state, updated_at = now(),
           generation = installation.generation + (installation.sync_path <> excluded.sync_path)::int
         returning installation_id, layer_id, mode, sync_path, delay_seconds, settings, password_secret, state, generation",
    )
    .bind(Uuid::new_v4())
    .bind(layer_id)
    .bind(i.mode)
    .bind(i.sync_path)
    .bind(i.delay_seconds)
    .bind(i.settings)
    .bind(i.password_secret)
    .bind(state)
    .fetch_one(db)
    .await
}

pub async fn set_installation_state(db: &PgPool, layer_id: Uuid, state: InstallState) -> sqlx::Result<()> {
    sqlx::query("update installation set state = $2, updated_at = now() where layer_id = $1").bind(layer_id).bind(state).execute(db).await?;
    Ok(())
}

/// Moves the installation from `from` to `to`; true when this call made the change (so
/// exactly one process runs what follows it).
pub async fn transition_installation(db: &PgPool, layer_id: Uuid, from: InstallState, to: InstallState) -> sqlx::Result<bool> {
    let r = sqlx::query("update installation set state = $3, updated_at = now() where layer_id = $1 and state = $2").bind(layer_id).bind(from).bind(to).execute(db).await?;
    Ok(r.rows_affected() == 1)
}

pub async fn delete_installation(db: &PgPool, layer_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from installation where layer_id = $1").bind(layer_id).execute(db).await?;
    Ok(())
}

/// Every sealed secret of the environments and installations, as (table, column, row key,
/// value), for the one-time re-sealing in `control::secrets`. The row key of an
/// installation is its layer (known before the row exists).
pub async fn sealed_values(db: &PgPool) -> sqlx::Result<Vec<(&'static str, &'static str, Uuid, String)>> {
    let mut out = Vec::new();
    for (id, ca, client) in sqlx::query_as::<_, (Uuid, String, String)>("select environment_id, ca_key_secret, client_key_secret from environment").fetch_all(db).await? {
        out.push(("environment", "ca_key_secret", id, ca));
        out.push(("environment", "client_key_secret", id, client));
    }
    for (id, pw) in sqlx::query_as::<_, (Uuid, String)>("select layer_id, password_secret from installation where password_secret is not null").fetch_all(db).await? {
        out.push(("installation", "password_secret", id, pw));
    }
    Ok(out)
}

/// Replaces one sealed value (see [`sealed_values`]); the table and column come from that
/// fixed list, never from input.
pub async fn reseal(tx: &mut sqlx::PgConnection, table: &str, column: &str, id: Uuid, value: &str) -> sqlx::Result<()> {
    let sql = match (table, column) {
        ("environment", "ca_key_secret") => "update environment set ca_key_secret = $2 where environment_id = $1",
        ("environment", "client_key_secret") => "update environment set client_key_secret = $2 where environment_id = $1",
        ("installation", "password_secret") => "update installation set password_secret = $2 where layer_id = $1",
        _ => return Err(sqlx::Error::Protocol(format!("BUG: no sealed column {table}.{column}"))),
    };
    sqlx::query(sql).bind(id).bind(value).execute(tx).await?;
    Ok(())
}
