//! Moving file content between agents. Small files travel inline with the index page;
//! larger ones are fetched with `GET /v1/file` and streamed into a temp file next to the
//! target while their BLAKE3 is checked; a large file that already exists locally in an
//! older version is fetched as an rsync-style delta (fast_rsync: rolling checksum + MD4
//! block signatures, maintained by Dropbox) and verified by BLAKE3 before use, falling
//! back to a full transfer if the delta does not reproduce the announced content.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::root::SyncRoot;
use crate::protocol::{Entry, RelPath};

/// Files at most this large travel inline with index pages.
pub const INLINE_MAX: u64 = 128 * 1024;
/// Inline content per page is capped so one page stays small.
pub const INLINE_BUDGET: u64 = 32 * 1024 * 1024;
/// Below this size a delta is not worth its round trip.
pub const DELTA_MIN: u64 = 1024 * 1024;

pub struct Fetched {
    pub file: File,
    pub tmp: PathBuf,
    pub wire_bytes: u64,
    pub delta: bool,
}

/// rsync's block size rule: about the square root of the file size, at least 700 bytes,
/// at most 128 KiB, a multiple of 8.
pub fn block_size(len: u64) -> u32 {
    let s = (len as f64).sqrt() as u64 / 8 * 8;
    s.clamp(700, 128 * 1024) as u32
}

pub fn query(path: &RelPath, hash: &[u8; 32]) -> String {
    format!("path={}&hash={}", urlencode(path.as_str()), hex::encode(hash))
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fetches `entry`'s content from the peer at `addr` into a temp file next to its path.
/// `base` is the local file to delta against, if there is one worth using.
pub async fn fetch(client: &reqwest::Client, addr: &str, root: &SyncRoot, entry: &Entry, base: Option<RelPath>) -> anyhow::Result<Fetched> {
    if let Some(base) = base {
        match fetch_delta(client, addr, root, entry, &base).await {
            Ok(f) => return Ok(f),
            Err(e) => tracing::debug!(path = %entry.path, error = %e, "delta transfer failed; fetching whole file"),
        }
    }
    let url = format!("https://{addr}/v1/file?{}", query(&entry.path, &entry.hash));
    let resp = client.get(url).send().await.with_context(|| format!("cannot reach {addr}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!("{addr} answered {status}: {}", text.trim());
    }
    let (std_file, tmp) = root.create_temp(&entry.path)?;
    let mut f = tokio::fs::File::from_std(std_file);
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    let res: anyhow::Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("transfer from {addr} broke off"))?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(|e| disk_error(&entry.path, e))?;
        }
        f.flush().await?;
        if *hasher.finalize().as_bytes() != entry.hash {
            bail!("content from {addr} does not match the announced hash (changed while sending); will retry");
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Fetched { file: f.into_std().await, tmp, wire_bytes: n, delta: false })
}

async fn fetch_delta(client: &reqwest::Client, addr: &str, root: &SyncRoot, entry: &Entry, base: &RelPath) -> anyhow::Result<Fetched> {
    let root2 = root.clone();
    let base2 = base.clone();
    let (base_data, sig) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut f = root2.open_read(&base2)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data)?;
        let opts = fast_rsync::SignatureOptions { block_size: block_size(data.len() as u64), crypto_hash_size: 4 };
        let sig = fast_rsync::Signature::calculate(&data, opts).into_serialized();
        Ok((data, sig))
    })
    .await??;
    let url = format!("https://{addr}/v1/delta?{}", query(&entry.path, &entry.hash));
    let sig_len = sig.len() as u64;
    let resp = client.post(url).body(sig).send().await?;
    if !resp.status().is_success() {
        bail!("{addr} answered {} to a delta request", resp.status());
    }
    let delta = resp.bytes().await?;
    let wire = sig_len + delta.len() as u64;
    let expected = entry.hash;
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        fast_rsync::apply(&base_data, &delta, &mut out).map_err(|e| anyhow::anyhow!("delta does not apply: {e}"))?;
        if *blake3::hash(&out).as_bytes() != expected {
            bail!("delta result does not match the announced hash");
        }
        Ok(out)
    })
    .await??;
    let (mut file, tmp) = root.create_temp(&entry.path)?;
    if let Err(e) = std::io::Write::write_all(&mut file, &out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(disk_error(&entry.path, e));
    }
    Ok(Fetched { file, tmp, wire_bytes: wire, delta: true })
}

fn disk_error(path: &RelPath, e: std::io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        anyhow::anyhow!("{path}: disk full (ENOSPC) on this node")
    } else {
        anyhow::anyhow!("{path}: cannot write: {e}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn block_size_follows_rsync() {
        assert_eq!(super::block_size(1000), 700);
        assert_eq!(super::block_size(256 << 20), 16384);
        assert_eq!(super::block_size(1 << 40), 128 * 1024);
    }
}
