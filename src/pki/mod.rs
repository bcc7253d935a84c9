//! Certificates: a CA per environment and a certificate per node, both with rcgen (a
//! maintained, pure-Rust certificate builder on the same `ring` provider as rustls).
//! Used by `filesync ca` for standalone set-ups and by the control plane, which is the CA
//! of every environment it manages. `tls` loads the material for rustls and builds the
//! HTTP client that talks to agents.

pub mod tls;

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// The certificate name of the control plane's client certificate. Agents give
/// `/v1/admin/*` to it (and to their own name) only, so no node may carry it.
pub const CONTROL_PLANE_NAME: &str = "filesync-control-plane";

pub struct CaFiles {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Creates a self-signed CA valid for 20 years.
pub fn new_ca(common_name: &str) -> anyhow::Result<CaFiles> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365 * 20);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CaFiles { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a node certificate (server and client auth) for `name`, valid for the given IP
/// addresses and DNS names, signed by the CA.
pub fn issue(ca: &CaFiles, name: &str, ips: &[IpAddr], dns: &[String]) -> anyhow::Result<CaFiles> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("CA key is not a valid PEM key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("CA certificate is not valid PEM")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let mut sans = vec![SanType::DnsName(name.to_owned().try_into()?)];
    for d in dns {
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365 * 5);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CaFiles { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The subject CN and IP addresses of a PEM certificate (None if it does not parse).
pub fn pem_identity(pem: &str) -> Option<(String, Vec<IpAddr>)> {
    use x509_parser::prelude::*;
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::IPAddress(b) = n {
                match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                    _ => {}
                }
            }
        }
    }
    Some((cn, ips))
}

/// Writes a file readable only by its owner (keys, and by habit certificates too): a temp
/// file created exclusively without following links, synced, renamed into place (see
/// `private_fs::write_private_file`).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    crate::private_fs::write_private_file(path, contents.as_bytes())
}

pub fn load_ca(dir: &Path) -> anyhow::Result<CaFiles> {
    let cert_pem = std::fs::read_to_string(dir.join("ca.pem")).with_context(|| format!("no CA in {} (create one with `filesync ca init --dir {}`)", dir.display(), dir.display()))?;
    let key_pem = std::fs::read_to_string(dir.join("ca.key")).with_context(|| format!("cannot read {}", dir.join("ca.key").display()))?;
    Ok(CaFiles { cert_pem, key_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_names_its_node() {
        let ca = new_ca("t").unwrap();
        let c = issue(&ca, "node7", &["10.1.2.3".parse().unwrap()], &[]).unwrap();
        assert_eq!(pem_identity(&c.cert_pem), Some(("node7".into(), vec!["10.1.2.3".parse().unwrap()])));
        assert_eq!(pem_identity("not a certificate"), None);
    }
}
