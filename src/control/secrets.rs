//! Secrets at rest (CA keys, the control plane's SSH key, cross-environment passwords):
//! sealed with ChaCha20-Poly1305 under a key derived from `FILESYNC_SECRET_KEY` when it is
//! set, so a database dump alone does not give them away. Without that variable they are
//! stored marked `plain:` (the README says to set it in production).

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use sha2::Digest;

#[derive(Clone)]
pub struct Secrets {
    key: Option<[u8; 32]>,
}

impl Secrets {
    pub fn from_env() -> Secrets {
        Secrets::new(std::env::var("FILESYNC_SECRET_KEY").ok().filter(|s| !s.is_empty()).as_deref())
    }

    pub fn new(passphrase: Option<&str>) -> Secrets {
        Secrets { key: passphrase.map(|p| sha2::Sha256::digest(p.as_bytes()).into()) }
    }

    pub fn seal(&self, plain: &str) -> anyhow::Result<String> {
        let Some(key) = &self.key else { return Ok(format!("plain:{plain}")) };
        let cipher = ChaCha20Poly1305::new_from_slice(key).map_err(|_| anyhow::anyhow!("bad secret key"))?;
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let ct = cipher.encrypt(&nonce.into(), plain.as_bytes()).map_err(|_| anyhow::anyhow!("cannot encrypt a secret"))?;
        let mut all = nonce.to_vec();
        all.extend(ct);
        Ok(format!("v1:{}", base64::engine::general_purpose::STANDARD.encode(all)))
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<String> {
        if let Some(p) = sealed.strip_prefix("plain:") {
            return Ok(p.to_owned());
        }
        let b = sealed.strip_prefix("v1:").ok_or_else(|| anyhow::anyhow!("unknown secret format"))?;
        let key = self.key.as_ref().ok_or_else(|| anyhow::anyhow!("a secret is encrypted but FILESYNC_SECRET_KEY is not set"))?;
        let all = base64::engine::general_purpose::STANDARD.decode(b)?;
        anyhow::ensure!(all.len() > 12, "secret too short");
        let cipher = ChaCha20Poly1305::new_from_slice(key).map_err(|_| anyhow::anyhow!("bad secret key"))?;
        let nonce: [u8; 12] = all[..12].try_into()?;
        let pt = cipher.decrypt(&nonce.into(), &all[12..]).map_err(|_| anyhow::anyhow!("cannot decrypt a secret: wrong FILESYNC_SECRET_KEY?"))?;
        Ok(String::from_utf8(pt)?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sealed_secrets_open_only_with_the_key() {
        let s = super::Secrets::new(Some("k1"));
        let sealed = s.seal("hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open(&sealed).unwrap(), "hunter2");
        assert!(super::Secrets::new(Some("k2")).open(&sealed).is_err());
        assert_eq!(super::Secrets::new(None).open(&super::Secrets::new(None).seal("x").unwrap()).unwrap(), "x");
    }
}
