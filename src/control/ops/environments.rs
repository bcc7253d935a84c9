//! Environments: each is created with its own CA and a client certificate for the control
//! plane (`filesync-control-plane`), both keys sealed at rest.

use uuid::Uuid;

use super::{CONTROL_PLANE_NAME, Outcome, check_abs_path, check_name, invalid};
use crate::control::AppState;
use crate::control::db::{self, environments::NewEnvironment};
use crate::control::secrets::Place;

pub async fn create(st: &AppState, name: &str, webroot: &str) -> anyhow::Result<Outcome<Uuid>> {
    let name = name.trim();
    if let Err(e) = check_name(name) {
        return invalid("name", e);
    }
    let webroot = match check_abs_path(if webroot.trim().is_empty() { "/var/www/webroot" } else { webroot.trim() }, 1) {
        Ok(w) => w,
        Err(e) => return invalid("webroot", e),
    };
    let ca = crate::pki::new_ca(&format!("filesync CA for {name}"))?;
    let client = crate::pki::issue(&ca, CONTROL_PLANE_NAME, &[], &[])?;
    let id = Uuid::new_v4();
    let created = db::environments::create(
        &st.pool,
        NewEnvironment {
            id,
            name,
            webroot: &webroot,
            ca_cert_pem: &ca.cert_pem,
            ca_key_secret: &st.secrets.seal(&ca.key_pem, &Place::environment(id, "ca_key_secret"))?,
            client_cert_pem: &client.cert_pem,
            client_key_secret: &st.secrets.seal(&client.key_pem, &Place::environment(id, "client_key_secret"))?,
        },
    )
    .await?;
    if !created {
        return invalid("name", format!("an environment named {name} exists"));
    }
    db::add_event(&st.pool, Some(id), &format!("environment {name} created")).await?;
    Ok(Outcome::Done(id))
}
