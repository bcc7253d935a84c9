//! Moving file content between agents. Small files travel inline with the index page;
//! larger ones are fetched with `GET /v1/file` and streamed into a temp file next to the
//! target while their BLAKE3 is checked; a large file that already exists locally in an
//! older version is fetched as an rsync-style delta (fast_rsync: rolling checksum + MD4
//! block signatures, maintained by Dropbox) and verified by BLAKE3 before use, falling
//! back to a full transfer if the delta does not reproduce the announced content.
//!
//! A peer is not trusted with this node's memory or disk: every answer is read with a
//! limit ([`read_limited`]), a page may hold at most [`PAGE_ENTRIES`] entries in
//! [`MAX_PAGE_BYTES`], a file or a rebuilt delta may not grow past the size its entry
//! announced, and rsync deltas (which hold a file in memory) only for files up to
//! [`MAX_RSYNC_DELTA_FILE`].

use anyhow::{Context, bail};
use futures::StreamExt;

use std::fs::File;

use super::root::sink::{AsyncWriter, Writer};
use super::root::{RootError, SyncRoot, TempFile};
use crate::protocol::wire::ChangesResponse;
use crate::protocol::{Entry, RelPath};

/// Files at most this large travel inline with index pages.
pub const INLINE_MAX: u64 = 128 * 1024;
/// Inline content per page is capped so one page stays small.
pub const INLINE_BUDGET: u64 = 32 * 1024 * 1024;
/// Below this size a delta is not worth its round trip.
pub const DELTA_MIN: u64 = 1024 * 1024;
/// Entries per page of changes (the server's page size; a page with more is refused).
pub const PAGE_ENTRIES: usize = 2000;
/// A page's encoded size: the inline budget plus the entries (paths and symlink targets
/// of at most 4 KiB each), with room to spare. A larger answer is refused unread.
pub const MAX_PAGE_BYTES: u64 = 64 * 1024 * 1024;
/// rsync deltas only for files up to this size (both sides hold the file in memory).
pub const MAX_RSYNC_DELTA_FILE: u64 = 128 * 1024 * 1024;

pub use crate::pki::tls::read_limited;

/// Decodes a page of changes, refusing one with more entries than a page may have before
/// decoding them (small entries take more memory decoded than encoded).
pub fn decode_page(bytes: &[u8]) -> anyhow::Result<ChangesResponse> {
    // The fields before `entries` (node id, node name, index id), then the sequence length.
    let ((_, _, _, n), _): ((u64, String, u64, u64), _) = postcard::take_from_bytes(bytes).context("bad page of changes")?;
    if n > PAGE_ENTRIES as u64 {
        bail!("a page of {n} entries is more than the {PAGE_ENTRIES} a page may hold; refused");
    }
    postcard::from_bytes(bytes).context("bad page of changes")
}

pub struct Fetched {
    /// The verified content, in a temp file next to the path it was fetched for (removed
    /// if dropped).
    pub tmp: TempFile,
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

pub fn urlencode(s: &str) -> String {
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

/// Fetches `entry`'s content from the peer at `addr` into a temp file next to `dest`
/// (`entry.path`, or the name of a conflict copy of it). `base` is the local file to delta
/// against, if there is one worth using. A failure of this node's own disk is a
/// `RootError` (another peer would not help).
pub async fn fetch(client: &reqwest::Client, addr: &str, root: &SyncRoot, entry: &Entry, dest: &RelPath, base: Option<RelPath>) -> anyhow::Result<Fetched> {
    if let Some(base) = base {
        // Changed blocks in place first (cheap on both sides), then the rsync-style delta
        // that also finds shifted content, then the whole file.
        match fetch_blocks(client, addr, root, entry, dest, &base).await {
            Ok(f) => return Ok(f),
            Err(e) => tracing::debug!(path = %entry.path, error = %e, "block transfer failed; trying an rsync delta"),
        }
        match fetch_delta(client, addr, root, entry, dest, &base).await {
            Ok(f) => return Ok(f),
            Err(e) => tracing::debug!(path = %entry.path, error = %e, "delta transfer failed; fetching whole file"),
        }
    }
    let url = format!("https://{addr}/v1/file?{}", query(&entry.path, &entry.hash));
    let resp = client.get(url).send().await.with_context(|| format!("cannot reach {addr}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = read_limited(resp, 64 * 1024, "error answer").await.unwrap_or_default();
        bail!("{addr} answered {status}: {}", String::from_utf8_lossy(&text).trim());
    }
    if let Some(n) = resp.content_length()
        && n != entry.size
    {
        bail!("{addr} offered {n} bytes for {} where its entry announced {}; refused", entry.path, entry.size);
    }
    let tmp = root.create_temp(dest)?;
    // Hashed and written a buffer at a time on a blocking thread while the next one fills;
    // a large file goes past the page cache (`root::sink`).
    let mut w = AsyncWriter::new(&tmp, entry.size).map_err(|e| disk_error(dest, e))?;
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("transfer from {addr} broke off"))?;
        n += chunk.len() as u64;
        if n > entry.size {
            bail!("{addr} sent more than the {} bytes its entry for {} announced; refused (stopped reading)", entry.size, entry.path);
        }
        w.push(&chunk).await.map_err(|e| disk_error(dest, e))?;
    }
    let written = w.finish().await.map_err(|e| disk_error(dest, e))?;
    if written.hash != entry.hash {
        bail!("content from {addr} does not match the announced hash (changed while sending); will retry");
    }
    Ok(Fetched { tmp, wire_bytes: n, delta: false })
}

async fn fetch_delta(client: &reqwest::Client, addr: &str, root: &SyncRoot, entry: &Entry, dest: &RelPath, base: &RelPath) -> anyhow::Result<Fetched> {
    if entry.size > MAX_RSYNC_DELTA_FILE {
        bail!("{} bytes is too large for an rsync delta", entry.size);
    }
    let root2 = root.clone();
    let base2 = base.clone();
    let (base_data, sig) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let f = root2.open_read(&base2)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_RSYNC_DELTA_FILE + 1), &mut data)?;
        anyhow::ensure!(data.len() as u64 <= MAX_RSYNC_DELTA_FILE, "the local version is too large for an rsync delta");
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
    // A delta is at most the new content as literals plus its commands.
    let delta = read_limited(resp, entry.size + entry.size / 8 + (1 << 20), "rsync delta").await?;
    let wire = sig_len + delta.len() as u64;
    let (expected, size) = (entry.hash, entry.size as usize);
    let tmp = root.create_temp(dest)?;
    let path = dest.clone();
    // Rebuilt and written on a blocking thread (a large file is written past the page cache,
    // each write waiting for the disk); the writer's hash is the check.
    let tmp = tokio::task::spawn_blocking(move || -> anyhow::Result<TempFile> {
        let mut out = Vec::new();
        // Never rebuild more than the announced size.
        fast_rsync::apply_limited(&base_data, &delta, &mut out, size).map_err(|e| anyhow::anyhow!("delta does not apply: {e}"))?;
        let mut w = Writer::new(&tmp, out.len() as u64).map_err(|e| disk_error(&path, e))?;
        w.push(&out).map_err(|e| disk_error(&path, e))?;
        if w.finish().map_err(|e| disk_error(&path, e))?.hash != expected {
            bail!("delta result does not match the announced hash");
        }
        Ok(tmp)
    })
    .await??;
    Ok(Fetched { tmp, wire_bytes: wire, delta: true })
}

/// A `POST /v1/delta` body that starts with this asks for changed blocks instead of an
/// rsync delta (a fast_rsync signature starts with its own magic, so the two never mix; an
/// agent that does not know this form refuses it as a bad signature and the asker falls
/// back to the rsync delta).
pub const BLOCKS_MAGIC: &[u8; 4] = b"FSB1";

/// The asker's view of its older version: the file cut into `block`-sized pieces at fixed
/// offsets, each named by the first 8 bytes of its BLAKE3. The rebuilt file is checked
/// against the full BLAKE3 of the wanted version, so a (keyless, 64-bit) collision costs a
/// retry, never a wrong file.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BlockSig {
    pub block: u32,
    pub hashes: Vec<[u8; 8]>,
}

/// The answer: the wanted version's length and every block that differs from the asker's
/// (blocks past the asker's end included).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BlockDiff {
    pub len: u64,
    pub blocks: Vec<(u32, Vec<u8>)>,
}

/// Blocks of about sqrt(8 x size) bytes (a power of two, 4 KiB to 1 MiB): the 8-byte names
/// and one changed block then cost about the same on the wire, as with rsync's rule.
pub fn fixed_block_size(len: u64) -> u32 {
    let target = ((len as f64) * 8.0).sqrt() as u64;
    let mut b = 4096u64;
    while b * 2 <= target && b < (1 << 20) {
        b *= 2;
    }
    b as u32
}

fn block_name(data: &[u8]) -> [u8; 8] {
    blake3::hash(data).as_bytes()[..8].try_into().expect("BUG: 8 bytes")
}

fn read_block(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match std::io::Read::read(f, &mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Names the blocks of `f` (the asker's side).
pub fn block_sig(f: &mut File, block: u32) -> std::io::Result<BlockSig> {
    let mut buf = vec![0u8; block as usize];
    let mut hashes = Vec::new();
    loop {
        let n = read_block(f, &mut buf)?;
        if n == 0 {
            break;
        }
        hashes.push(block_name(&buf[..n]));
        if n < buf.len() {
            break;
        }
    }
    Ok(BlockSig { block, hashes })
}

/// The serving side: which blocks of `f` differ from the asker's. `None` when more than
/// half of the content differs (shifted content: an rsync delta does better).
pub fn block_diff(f: &mut File, sig: &BlockSig) -> std::io::Result<Option<BlockDiff>> {
    if !(4096..=(1 << 20)).contains(&sig.block) {
        return Err(std::io::Error::other("block size out of range"));
    }
    let mut buf = vec![0u8; sig.block as usize];
    let (mut len, mut changed) = (0u64, 0u64);
    let mut blocks = Vec::new();
    for i in 0u32.. {
        let n = read_block(f, &mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if sig.hashes.get(i as usize) != Some(&block_name(&buf[..n])) {
            changed += n as u64;
            blocks.push((i, buf[..n].to_vec()));
        }
        if n < buf.len() {
            break;
        }
    }
    if changed > len / 2 && changed > 0 {
        return Ok(None);
    }
    Ok(Some(BlockDiff { len, blocks }))
}

async fn fetch_blocks(client: &reqwest::Client, addr: &str, root: &SyncRoot, entry: &Entry, dest: &RelPath, base: &RelPath) -> anyhow::Result<Fetched> {
    let block = fixed_block_size(entry.size);
    let (root2, base2) = (root.clone(), base.clone());
    let sig = tokio::task::spawn_blocking(move || -> anyhow::Result<BlockSig> { Ok(block_sig(&mut root2.open_read(&base2)?, block)?) }).await??;
    let mut body = BLOCKS_MAGIC.to_vec();
    body.extend(postcard::to_allocvec(&sig)?);
    let sent = body.len() as u64;
    let url = format!("https://{addr}/v1/delta?{}", query(&entry.path, &entry.hash));
    let resp = client.post(url).body(body).send().await?;
    if !resp.status().is_success() {
        bail!("{addr} answered {} to a block request", resp.status());
    }
    // The changed blocks are at most the whole new content, plus a few bytes per block.
    let answer = read_limited(resp, entry.size + (entry.size / u64::from(block) + 1) * 16 + 4096, "block answer").await?;
    let wire = sent + answer.len() as u64;
    let diff: BlockDiff = postcard::from_bytes(&answer).context("bad block answer")?;
    if diff.len != entry.size {
        bail!("block answer rebuilds {} bytes where the entry announced {}", diff.len, entry.size);
    }
    let tmp = root.create_temp(dest)?;
    let (root2, base2, expected, path) = (root.clone(), base.clone(), entry.hash, dest.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Fetched> {
        let mut src = root2.open_read(&base2)?;
        let mut buf = vec![0u8; block as usize];
        let mut changed = diff.blocks.into_iter().peekable();
        let mut out = Writer::new(&tmp, diff.len).map_err(|e| disk_error(&path, e))?;
        let mut written = 0u64;
        let mut i = 0u32;
        while written < diff.len {
            let n = read_block(&mut src, &mut buf)?;
            let piece: &[u8] = match changed.peek() {
                Some((k, _)) if *k == i => &changed.next().expect("BUG: peeked").1,
                _ => &buf[..n],
            };
            if piece.is_empty() {
                bail!("block answer ends before the announced length");
            }
            out.push(piece).map_err(|e| disk_error(&path, e))?;
            written += piece.len() as u64;
            i += 1;
        }
        let done = out.finish().map_err(|e| disk_error(&path, e))?;
        if written != diff.len || done.hash != expected {
            bail!("rebuilt file does not match the announced hash");
        }
        Ok(Fetched { tmp, wire_bytes: wire, delta: true })
    })
    .await?
}

fn disk_error(path: &RelPath, e: std::io::Error) -> anyhow::Error {
    RootError::io(path, e).into()
}

#[cfg(test)]
mod tests {
    use crate::protocol::wire::ChangesResponse;

    fn page(n: usize) -> Vec<u8> {
        let e = crate::protocol::Entry {
            path: crate::protocol::RelPath::parse("a").unwrap(),
            kind: crate::protocol::EntryKind::File,
            deleted: false,
            size: 0,
            mtime_ns: 0,
            mode: 0o644,
            hash: [0; 32],
            target: String::new(),
            version: Default::default(),
            modified_by: 1,
            modified_by_name: "n".into(),
            origin: Default::default(),
        };
        let p = ChangesResponse {
            node_id: 7,
            node_name: "node1".into(),
            index_id: 9,
            entries: (0..n as u64).map(|i| (i, e.clone())).collect(),
            blobs: vec![],
            last_seq: n as u64,
            more: false,
            folder: String::new(),
        };
        postcard::to_allocvec(&p).unwrap()
    }

    #[test]
    fn pages_with_too_many_entries_are_refused_before_decoding() {
        assert_eq!(super::decode_page(&page(3)).unwrap().entries.len(), 3);
        assert_eq!(super::decode_page(&page(super::PAGE_ENTRIES)).unwrap().entries.len(), super::PAGE_ENTRIES);
        let e = super::decode_page(&page(super::PAGE_ENTRIES + 1)).unwrap_err();
        assert!(format!("{e:#}").contains("more than the 2000"), "{e:#}");
    }

    #[test]
    fn a_delta_never_rebuilds_more_than_announced() {
        let base = vec![1u8; 10_000];
        let new = vec![2u8; 50_000];
        let sig = fast_rsync::Signature::calculate(&base, fast_rsync::SignatureOptions { block_size: 1024, crypto_hash_size: 8 });
        let mut delta = Vec::new();
        fast_rsync::diff(&sig.index(), &new, &mut delta).unwrap();
        let mut out = Vec::new();
        assert!(fast_rsync::apply_limited(&base, &delta, &mut out, 49_999).is_err());
        out.clear();
        fast_rsync::apply_limited(&base, &delta, &mut out, 50_000).unwrap();
        assert_eq!(out, new);
    }
    #[test]
    fn changed_blocks_rebuild_the_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        new[150_000..150_100].fill(7);
        new.extend_from_slice(b"appended");
        std::fs::write(dir.path().join("old"), &old).unwrap();
        std::fs::write(dir.path().join("new"), &new).unwrap();
        let block = super::fixed_block_size(new.len() as u64);
        assert_eq!(block, 4096);
        let sig = super::block_sig(&mut std::fs::File::open(dir.path().join("old")).unwrap(), block).unwrap();
        let diff = super::block_diff(&mut std::fs::File::open(dir.path().join("new")).unwrap(), &sig).unwrap().unwrap();
        assert_eq!(diff.len, new.len() as u64);
        // the edited block, the old last (partial) block that grew
        assert_eq!(diff.blocks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![36, 73]);
        // A shifted file is left to the rsync delta.
        let mut shifted = b"x".to_vec();
        shifted.extend_from_slice(&old);
        std::fs::write(dir.path().join("shifted"), &shifted).unwrap();
        assert!(super::block_diff(&mut std::fs::File::open(dir.path().join("shifted")).unwrap(), &sig).unwrap().is_none());
    }

    #[test]
    fn fixed_blocks_grow_with_the_file() {
        assert_eq!(super::fixed_block_size(1 << 20), 4096);
        assert_eq!(super::fixed_block_size(256 << 20), 32 * 1024);
        assert_eq!(super::fixed_block_size(1 << 40), 1 << 20);
    }

    #[test]
    fn block_size_follows_rsync() {
        assert_eq!(super::block_size(1000), 700);
        assert_eq!(super::block_size(256 << 20), 16384);
        assert_eq!(super::block_size(1 << 40), 128 * 1024);
    }
}
