//! Secrets at rest (CA keys, the control plane's SSH key and dashboard TLS key, link
//! passwords): sealed with ChaCha20-Poly1305.
//!
//! - The key is derived with argon2id from a passphrase and a random salt kept in the
//!   database (`control_secret.kdf_salt`). The passphrase is `FILESYNC_SECRET_KEY`, or the
//!   key file `serve` creates in its data dir (mode 0600) when that variable is not set.
//! - Every ciphertext is bound to its place (table, column and row) as associated data:
//!   a sealed value copied into another row does not open.
//! - A sealed value carries `v2:`. Older formats (`plain:`, and `v1:` under an unsalted
//!   SHA-256 of the passphrase) are re-sealed once at start, after which anything but `v2:`
//!   is refused: a value written into the database in clear (say, an attacker's CA key)
//!   is never used.
//! - `control_secret.key_check` holds a sealed known text, so a process started with a
//!   different key stops at once with a clear message instead of failing job by job.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use sqlx::PgPool;
use uuid::Uuid;

use super::db;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const CHECK_TEXT: &str = "filesync secret key check";
/// `pg_advisory_lock` key of the one-time re-sealing ("fs" "sk").
const MIGRATION_LOCK: i64 = 0x6673_736b;
/// `control_secret` rows whose value is sealed.
pub const SEALED_SETTINGS: &[&str] = &["ssh_private_key", "dashboard_tls_key"];

/// Where a sealed value lives; it is the associated data of its ciphertext.
#[derive(Debug, Clone)]
pub struct Place {
    table: &'static str,
    column: &'static str,
    row: String,
}

impl Place {
    pub fn new(table: &'static str, column: &'static str, row: impl ToString) -> Place {
        Place { table, column, row: row.to_string() }
    }

    /// A row of `control_secret`, by name.
    pub fn setting(name: &str) -> Place {
        Place::new("control_secret", "value", name)
    }

    pub fn environment(id: Uuid, column: &'static str) -> Place {
        Place::new("environment", column, id)
    }

    /// An installation's shared password, keyed by its layer.
    pub fn installation_password(layer: Uuid) -> Place {
        Place::new("installation", "password_secret", layer)
    }

    fn aad(&self) -> Vec<u8> {
        format!("filesync:v2:{}.{}:{}", self.table, self.column, self.row).into_bytes()
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} of {}", self.table, self.column, self.row)
    }
}

#[derive(Clone)]
pub struct Secrets {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(***)")
    }
}

impl Secrets {
    /// Derives the key from `passphrase` and `salt` (argon2id, the crate's default cost).
    pub fn derive(passphrase: &str, salt: &[u8]) -> anyhow::Result<Secrets> {
        let mut key = [0u8; 32];
        argon2::Argon2::default().hash_password_into(passphrase.as_bytes(), salt, &mut key).map_err(|e| anyhow::anyhow!("cannot derive the secret key: {e}"))?;
        Ok(Secrets { key: Arc::new(key) })
    }

    /// The key for this database: the salt is created on first use, the key is checked
    /// against `key_check`, and values in older formats are re-sealed once.
    pub async fn init(pool: &PgPool, passphrase: &str) -> anyhow::Result<Secrets> {
        anyhow::ensure!(passphrase.len() >= 16, "the secret key must be at least 16 characters long");
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let salt = hex::decode(db::put_secret_once(pool, "kdf_salt", &hex::encode(salt)).await?).context("control_secret.kdf_salt is not hex")?;
        let passphrase = passphrase.to_owned();
        let s = tokio::task::spawn_blocking(move || Secrets::derive(&passphrase, &salt).map(|s| (s, passphrase))).await??;
        let (secrets, passphrase) = s;
        let check = Place::setting("key_check");
        let stored = db::put_secret_once(pool, "key_check", &secrets.seal(CHECK_TEXT, &check)?).await?;
        if secrets.open(&stored, &check).ok().as_deref() != Some(CHECK_TEXT) {
            bail!("FILESYNC_SECRET_KEY (or the key file) is not the key this database's secrets were sealed with; start with the original key");
        }
        secrets.migrate(pool, &passphrase).await?;
        Ok(secrets)
    }

    pub fn seal(&self, plain: &str, place: &Place) -> anyhow::Result<String> {
        let cipher = ChaCha20Poly1305::new_from_slice(&self.key[..]).map_err(|_| anyhow::anyhow!("bad secret key"))?;
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let aad = place.aad();
        let ct = cipher.encrypt(&nonce.into(), Payload { msg: plain.as_bytes(), aad: &aad }).map_err(|_| anyhow::anyhow!("cannot encrypt a secret"))?;
        let mut all = nonce.to_vec();
        all.extend(ct);
        Ok(format!("v2:{}", B64.encode(all)))
    }

    pub fn open(&self, sealed: &str, place: &Place) -> anyhow::Result<String> {
        let Some(b) = sealed.strip_prefix("v2:") else {
            let kind = if sealed.starts_with("plain:") { "in clear (plain:)" } else { "in an unknown or outdated format" };
            bail!("refused the secret {place}: it is stored {kind}, not sealed with the control plane's key (was it written into the database directly?)");
        };
        let all = B64.decode(b).with_context(|| format!("the secret {place} is damaged"))?;
        anyhow::ensure!(all.len() > 12, "the secret {place} is damaged");
        let cipher = ChaCha20Poly1305::new_from_slice(&self.key[..]).map_err(|_| anyhow::anyhow!("bad secret key"))?;
        let nonce: [u8; 12] = all[..12].try_into()?;
        let aad = place.aad();
        let pt = cipher
            .decrypt(&nonce.into(), Payload { msg: &all[12..], aad: &aad })
            .map_err(|_| anyhow::anyhow!("cannot open the secret {place}: sealed under another key, or moved from another row"))?;
        Ok(String::from_utf8(pt)?)
    }

    /// Re-seals `plain:` and `v1:` values once (a `secrets_format` row records it is done).
    async fn migrate(&self, pool: &PgPool, passphrase: &str) -> anyhow::Result<()> {
        if db::get_secret(pool, "secrets_format").await?.as_deref() == Some("v2") {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        db::advisory_xact_lock(&mut tx, MIGRATION_LOCK).await?;
        let v1 = legacy_v1_key(passphrase);
        let mut n = 0;
        for (name, value) in db::all_secrets(pool).await? {
            if SEALED_SETTINGS.contains(&name.as_str()) && !value.starts_with("v2:") {
                db::replace_secret(&mut tx, &name, &self.seal(&open_legacy(&value, &v1, &name)?, &Place::setting(&name))?).await?;
                n += 1;
            }
        }
        for (table, column, row, value) in db::environments::sealed_values(pool).await? {
            if !value.starts_with("v2:") {
                let place = Place::new(table, column, row);
                let plain = open_legacy(&value, &v1, &place.to_string())?;
                db::environments::reseal(&mut tx, table, column, row, &self.seal(&plain, &place)?).await?;
                n += 1;
            }
        }
        db::set_secret(&mut tx, "secrets_format", "v2").await?;
        tx.commit().await?;
        if n > 0 {
            println!("filesync: re-sealed {n} secret(s) stored in an older format (salted key, bound to their rows)");
        }
        Ok(())
    }
}

/// The key of the `v1:` format: an unsalted SHA-256 of the passphrase.
fn legacy_v1_key(passphrase: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(passphrase.as_bytes()).into()
}

fn open_legacy(value: &str, v1: &[u8; 32], what: &str) -> anyhow::Result<String> {
    if let Some(p) = value.strip_prefix("plain:") {
        return Ok(p.to_owned());
    }
    let b = value.strip_prefix("v1:").with_context(|| format!("the secret {what} has an unknown format"))?;
    let all = B64.decode(b)?;
    anyhow::ensure!(all.len() > 12, "the secret {what} is damaged");
    let cipher = ChaCha20Poly1305::new_from_slice(v1).map_err(|_| anyhow::anyhow!("bad secret key"))?;
    let nonce: [u8; 12] = all[..12].try_into()?;
    let pt = cipher.decrypt(&nonce.into(), &all[12..]).map_err(|_| anyhow::anyhow!("cannot re-seal the secret {what}: it was sealed under another FILESYNC_SECRET_KEY"))?;
    Ok(String::from_utf8(pt)?)
}

/// The passphrase from `<path>`, created (random, mode 0600) when missing. Returns it and
/// whether it was just created.
pub fn key_file(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => return Ok((s.trim().to_owned(), false)),
        Ok(_) => bail!("{} holds no usable key (at least 16 characters); restore it from your backup", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read the secret key file {}", path.display())),
    }
    let mut k = [0u8; 32];
    rand::fill(&mut k);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::pki::write_private(path, &format!("{key}\n"))?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_only_in_their_place() {
        let s = Secrets::derive("a passphrase of some length", b"salt-salt-salt-1").unwrap();
        let here = Place::environment(Uuid::nil(), "ca_key_secret");
        let sealed = s.seal("hunter2", &here).unwrap();
        assert!(sealed.starts_with("v2:") && !sealed.contains("hunter2"));
        assert_eq!(s.open(&sealed, &here).unwrap(), "hunter2");
        // Another key, another salt, another row or column: refused.
        assert!(Secrets::derive("another passphrase of length", b"salt-salt-salt-1").unwrap().open(&sealed, &here).is_err());
        assert!(Secrets::derive("a passphrase of some length", b"salt-salt-salt-2").unwrap().open(&sealed, &here).is_err());
        assert!(s.open(&sealed, &Place::environment(Uuid::new_v4(), "ca_key_secret")).is_err());
        assert!(s.open(&sealed, &Place::environment(Uuid::nil(), "client_key_secret")).is_err());
        // Values in clear are refused, and the message says why.
        let e = s.open("plain:attacker key", &here).unwrap_err().to_string();
        assert!(e.contains("in clear") && e.contains("environment.ca_key_secret"), "{e}");
    }

    #[test]
    fn legacy_values_open_for_the_migration_only() {
        let v1 = legacy_v1_key("old passphrase");
        let cipher = ChaCha20Poly1305::new_from_slice(&v1).unwrap();
        let nonce = [7u8; 12];
        let mut all = nonce.to_vec();
        all.extend(cipher.encrypt(&nonce.into(), b"old secret".as_slice()).unwrap());
        let old = format!("v1:{}", B64.encode(all));
        assert_eq!(open_legacy(&old, &v1, "x").unwrap(), "old secret");
        assert!(open_legacy(&old, &legacy_v1_key("wrong"), "x").is_err());
        assert_eq!(open_legacy("plain:p", &v1, "x").unwrap(), "p");
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/secret.key");
        let (k, created) = key_file(&p).unwrap();
        assert!(created && k.len() >= 40);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(key_file(&p).unwrap(), (k, false));
    }
}
