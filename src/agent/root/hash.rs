//! Hashing content in the sync folder with BLAKE3, on as many threads as the work and the
//! machine allow.
//!
//! A start-up scan of a new folder hashes every file before the node can serve anything, and a
//! large upload is hashed before it is announced: both used one core while the others waited.
//! A list of files is shared out to up to [`THREADS`] threads (each takes the next file when it
//! is done), and a file of [`SPLIT_MIN`] or more is hashed as the two halves of BLAKE3's tree
//! (the left subtree is the largest power-of-two number of chunks below the length, see
//! `blake3::hazmat`), each on its own thread, joined by one parent node. Small work stays on the
//! caller's thread: a thread costs more than hashing a few kilobytes. A node's catch-up pages
//! read and verify the content they carry inline the same way (`read_verified`).

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::beneath::err;
use super::{DiskMeta, RootError, SyncRoot};
use crate::protocol::RelPath;

/// At most this many hashing threads, whatever the machine has.
const THREADS: usize = 4;
/// A list is hashed in parallel only when it holds at least this many bytes.
const PARALLEL_MIN: u64 = 4 << 20;
/// A file of this size or more is hashed in two halves at once.
pub const SPLIT_MIN: u64 = 16 << 20;
const BUF: usize = 1 << 20;

/// Threads worth using: the machine's (cgroup-aware) parallelism, read once, at most `THREADS`.
fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(THREADS))
}

/// BLAKE3 of a file's content, read through `open_read`; also returns the metadata seen
/// after hashing so callers can tell whether the file changed while it was being read.
pub fn hash_file(root: &SyncRoot, p: &RelPath) -> Result<([u8; 32], DiskMeta), RootError> {
    let f = root.open_read(p)?;
    let len = rustix::fs::fstat(&f).map_err(|e| RootError::io(p, err(e)))?.st_size as u64;
    let hash = if len >= SPLIT_MIN && threads() > 1 { split(&f, len) } else { whole(&f) }.map_err(|e| RootError::io(p, e))?;
    let st = rustix::fs::fstat(&f).map_err(|e| RootError::io(p, err(e)))?;
    let meta = DiskMeta::from_stat(&st).ok_or_else(|| RootError::Io { path: p.clone(), source: std::io::Error::other("not a regular file") })?;
    Ok((hash, meta))
}

/// `hash_file` of every `(path, size)`, in the same order, using several threads when the
/// sizes add up to enough work. A size is only the hint the caller saw; each result carries
/// the metadata read after hashing.
pub fn hash_files(root: &SyncRoot, files: &[(&RelPath, u64)]) -> Vec<Result<([u8; 32], DiskMeta), RootError>> {
    let total: u64 = files.iter().map(|f| f.1).sum();
    share_out(files, total, |(p, _)| hash_file(root, p))
}

/// The content of each `(path, size, hash)` if it is a regular file whose content has that
/// hash now (`None` otherwise: changed since it was indexed, gone, unreadable), in the same
/// order, read on several threads when the sizes add up to enough work. What a peer is sent
/// inline is exactly the content its entry names.
pub fn read_verified(root: &SyncRoot, files: &[(&RelPath, u64, [u8; 32])]) -> Vec<Option<Vec<u8>>> {
    let total: u64 = files.iter().map(|f| f.1).sum();
    share_out(files, total, |(p, size, hash)| {
        let f = root.open_read(p).ok()?;
        let mut data = Vec::with_capacity(*size as usize);
        // A byte more than announced is enough to know it changed: a file that grew to
        // gigabytes since it was indexed is not read into memory.
        std::io::Read::read_to_end(&mut std::io::Read::take(f, size + 1), &mut data).ok()?;
        (data.len() as u64 == *size && *blake3::hash(&data).as_bytes() == *hash).then_some(data)
    })
}

/// `work` on every item, results in the items' order: on the caller's thread for less than
/// [`PARALLEL_MIN`] bytes of work, else on up to [`THREADS`] threads that each take the next
/// item when done with one (sizes vary).
fn share_out<T: Sync, R: Send>(items: &[T], bytes: u64, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = threads().min(items.len());
    if n < 2 || bytes < PARALLEL_MIN {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let run = || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return mine };
                mine.push((i, work(item)));
            }
        };
        // A thread the system refuses (a pids limit) leaves the work to the others.
        let handles: Vec<_> = (1..n).filter_map(|_| std::thread::Builder::new().spawn_scoped(s, run).ok()).collect();
        let mut all = vec![run()];
        all.extend(handles.into_iter().map(|h| h.join().expect("BUG: the work does not panic")));
        all
    });
    let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.expect("BUG: every item is taken by one thread")).collect()
}

fn whole(f: &std::fs::File) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(f)?;
    Ok(*h.finalize().as_bytes())
}

/// The two top subtrees of a `len`-byte file hashed at once. A file shorter than `len` by the
/// time it is read (cut by a writer after it was looked at) is hashed whole as it is then, and
/// so is any file when no second thread can be had: the caller's metadata check after hashing
/// sees such a change (BLAKE3 refuses an empty subtree, so a half that read nothing must never
/// be finished as one).
fn split(f: &std::fs::File, len: u64) -> std::io::Result<[u8; 32]> {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_root};
    let left = left_subtree_len(len);
    let halves = std::thread::scope(|s| {
        let right = std::thread::Builder::new()
            .spawn_scoped(s, || {
                let mut h = blake3::Hasher::new();
                h.set_input_offset(left);
                read_range(f, left, len, &mut h).map(|n| (n, h))
            })
            .ok()?;
        let mut h = blake3::Hasher::new();
        let l = read_range(f, 0, left, &mut h).map(|n| (n, h));
        Some((l, right.join().ok()?))
    });
    match halves {
        Some((Ok((nl, l)), Ok((nr, r)))) if nl == left && nr == len - left => Ok(*merge_subtrees_root(&l.finalize_non_root(), &r.finalize_non_root(), Mode::Hash).as_bytes()),
        Some((Err(e), _) | (_, Err(e))) => Err(e),
        _ => whole(f),
    }
}

/// Feeds bytes `from..to` of `f` to `h` (fewer if the file ends first); returns how many.
fn read_range(f: &std::fs::File, from: u64, to: u64, h: &mut blake3::Hasher) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(BUF);
        let n = match f.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(at - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_parallel_hashes_equal_the_plain_hash() {
        let dir = tempfile::tempdir().unwrap();
        let root = SyncRoot::new(dir.path().to_path_buf());
        // Around the split threshold and BLAKE3's chunk and power-of-two boundaries.
        let sizes = [0u64, 1, 1024, 1025, SPLIT_MIN - 1, SPLIT_MIN, SPLIT_MIN + 1, SPLIT_MIN + 1025, 24 << 20, 32 << 20, (32 << 20) + 3];
        let mut files = Vec::new();
        let mut seed = 7u64;
        for (i, len) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            let name = format!("f{i}");
            std::fs::write(dir.path().join(&name), &data).unwrap();
            files.push((RelPath::parse(&name).unwrap(), *len, *blake3::hash(&data).as_bytes()));
        }
        for (p, len, want) in &files {
            let (got, meta) = hash_file(&root, p).unwrap();
            assert_eq!(&got, want, "hash_file of {len} bytes");
            assert_eq!(meta.size, *len);
            let f = root.open_read(p).unwrap();
            if *len > blake3::CHUNK_LEN as u64 {
                assert_eq!(&split(&f, *len).unwrap(), want, "split of {len} bytes");
            }
        }
        let list: Vec<(&RelPath, u64)> = files.iter().map(|(p, len, _)| (p, *len)).collect();
        let all = hash_files(&root, &list);
        assert_eq!(all.len(), files.len());
        for ((_, len, want), got) in files.iter().zip(all) {
            assert_eq!(&got.unwrap().0, want, "hash_files, {len} bytes");
        }
        // A missing file is an error in its place, not a panic or a shifted list.
        let gone = RelPath::parse("gone").unwrap();
        let mut list = list.clone();
        list.insert(3, (&gone, 1 << 30));
        let all = hash_files(&root, &list);
        assert!(all[3].is_err());
        assert_eq!(&all[4].as_ref().unwrap().0, &files[3].2);
        // Content is returned only where it has the hash it is asked for.
        let mut asks: Vec<(&RelPath, u64, [u8; 32])> = files.iter().map(|(p, len, h)| (p, *len, *h)).collect();
        asks[2].2[0] ^= 1;
        asks.insert(5, (&gone, 1 << 30, [0; 32]));
        let got = read_verified(&root, &asks);
        for (i, ((p, len, _), got)) in asks.iter().zip(&got).enumerate() {
            match (i, got) {
                (2 | 5, None) => {}
                (_, Some(d)) => assert_eq!(d, &std::fs::read(dir.path().join(p.as_str())).unwrap(), "{len} bytes"),
                (_, None) => panic!("{p}: {len} bytes not read"),
            }
        }
    }

    #[test]
    fn a_large_file_cut_while_it_is_hashed_is_hashed_as_it_is_then() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("cut"), &data).unwrap();
        let f = std::fs::File::open(dir.path().join("cut")).unwrap();
        // Looked at when it had 40 MiB, read once it had 20: the right half reads nothing.
        assert_eq!(split(&f, 40 << 20).unwrap(), *blake3::hash(&data).as_bytes());
        // Cut to nothing: neither half reads anything.
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let f = std::fs::File::open(dir.path().join("empty")).unwrap();
        assert_eq!(split(&f, 20 << 20).unwrap(), *blake3::hash(b"").as_bytes());
    }

    /// Peak resident memory of this process so far (`VmHWM`), in KiB.
    fn peak_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    }

    #[test]
    fn a_file_that_grew_since_it_was_indexed_is_not_read_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let root = SyncRoot::new(dir.path().to_path_buf());
        // Indexed at 10 bytes; the web application then made it 2 GiB (sparse: no disk used).
        let p = RelPath::parse("grown").unwrap();
        std::fs::write(dir.path().join("grown"), b"0123456789").unwrap();
        let hash = *blake3::hash(b"0123456789").as_bytes();
        std::fs::OpenOptions::new().write(true).open(dir.path().join("grown")).unwrap().set_len(2 << 30).unwrap();
        let before = peak_kib();
        assert_eq!(read_verified(&root, &[(&p, 10, hash)]), vec![None]);
        let grew = peak_kib().saturating_sub(before);
        assert!(grew < 256 * 1024, "reading a page's content took {grew} KiB more memory");
    }
}
