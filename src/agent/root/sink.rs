//! Writing fetched content into its temp file, in order, hashing it on the way.
//!
//! A large file (at least [`DIRECT_MIN`] bytes) is written with `O_DIRECT`: straight from
//! an aligned buffer to the disk instead of copied into new page-cache pages and written
//! back later. For a 256 MiB file the copy into the page cache was half of a receiver's
//! CPU on the benchmark machine (the kernel's `copy_folio_from_iter_atomic`), and the
//! fsync before the file is installed then had the whole file to write. The last partial
//! block, and everything on a file system that refuses `O_DIRECT` (or a write it refuses),
//! goes through the page cache as before; the bytes are the same either way.
//!
//! [`AsyncWriter`] hands each full buffer to a blocking thread, which hashes and writes it
//! while the network fills the next one; [`Writer`] does the same on the calling thread.
//! Both refuse nothing: the caller checks sizes and compares the returned hash.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

use super::TempFile;

/// Files at least this large are written past the page cache.
pub const DIRECT_MIN: u64 = 8 << 20;
/// `O_DIRECT` wants the buffer, the offset and the length aligned to the device's logical
/// block size; 4 KiB covers 512-byte and 4 KiB devices. A write refused anyway is retried
/// through the page cache.
const ALIGN: usize = 4096;
/// Bytes handed to the disk at a time.
const CHUNK: usize = 1 << 20;
/// Through the page cache, write-back of a large file is started every this many bytes, so
/// the fsync before it is installed has little left to write.
const WRITEBACK_STEP: u64 = 16 * 1024 * 1024;

/// A buffer whose start is aligned for `O_DIRECT`: over-allocated, used from the first
/// aligned byte (no unsafe code). If no aligned start is found it is still a buffer, and
/// its writes go through the page cache.
struct Chunk {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    cap: usize,
}

impl Chunk {
    fn new(cap: usize) -> Chunk {
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        let start = if start < ALIGN { start } else { usize::MAX };
        Chunk { raw, start, len: 0, cap }
    }

    fn aligned(&self) -> bool {
        self.start != usize::MAX
    }

    fn base(&self) -> usize {
        if self.aligned() { self.start } else { 0 }
    }

    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap - self.len);
        let at = self.base() + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == self.cap
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.base()..self.base() + self.len]
    }
}

/// The chunk size for a file of `size` bytes: small files get a small buffer.
fn chunk_for(size: u64) -> usize {
    (size.min(CHUNK as u64) as usize).div_ceil(ALIGN).max(1) * ALIGN
}

/// The temp file's descriptor, the write offset and the hash so far.
struct Sink {
    file: File,
    off: u64,
    direct: bool,
    direct_bytes: u64,
    flushed: u64,
    hasher: blake3::Hasher,
}

fn set_direct(f: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(f)?;
    let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    Ok(rustix::fs::fcntl_setfl(f, flags)?)
}

impl Sink {
    fn new(tmp: &TempFile, size: u64) -> io::Result<Sink> {
        let file = tmp.file().try_clone()?;
        // The flag belongs to the open file, which the temp file shares: `Drop` clears it.
        let direct = size >= DIRECT_MIN && set_direct(&file, true).is_ok();
        Ok(Sink { file, off: 0, direct, direct_bytes: 0, flushed: 0, hasher: blake3::Hasher::new() })
    }

    fn leave_direct(&mut self) {
        if self.direct {
            self.direct = false;
            let _ = set_direct(&self.file, false);
        }
    }

    /// Writes one chunk at the current offset, then hashes it: a chunk that failed is in
    /// neither the file's length nor the hash, so writing it again continues correctly.
    fn put(&mut self, c: &Chunk) -> io::Result<()> {
        let all = c.data();
        let mut data = all;
        if self.direct {
            let whole = data.len() / ALIGN * ALIGN;
            if whole > 0 && c.aligned() && self.off.is_multiple_of(ALIGN as u64) {
                match self.file.write_all_at(&data[..whole], self.off) {
                    Ok(()) => {
                        self.off += whole as u64;
                        self.direct_bytes += whole as u64;
                        data = &data[whole..];
                    }
                    // Refused by this file system or device (alignment, no O_DIRECT): the
                    // same bytes at the same offset through the page cache.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) => {
                        tracing::debug!(error = %e, "direct write refused; writing through the page cache");
                    }
                    Err(e) => return Err(e),
                }
            }
            if !data.is_empty() {
                self.leave_direct();
            }
        }
        if !data.is_empty() {
            self.file.write_all_at(data, self.off)?;
            self.off += data.len() as u64;
        }
        self.hasher.update(all);
        if self.direct {
            // Nothing of it is in the page cache to write back.
            self.flushed = self.off;
        } else if self.off - self.flushed >= WRITEBACK_STEP {
            // Starts write-back of the range without waiting for it.
            let _ = rustix::fs::fadvise(&self.file, self.flushed, std::num::NonZeroU64::new(self.off - self.flushed), rustix::fs::Advice::DontNeed);
            self.flushed = self.off;
        }
        Ok(())
    }

    fn finish(mut self, last: &Chunk) -> io::Result<Written> {
        self.put(last)?;
        // (`Drop` takes the temp file out of direct mode.)
        Ok(Written { hash: *self.hasher.finalize().as_bytes(), direct_bytes: self.direct_bytes })
    }
}

impl Drop for Sink {
    /// The flag belongs to the open file the temp file shares: a writer that stopped on an
    /// error (or whose fetch was dropped) leaves the temp file as it found it.
    fn drop(&mut self) {
        self.leave_direct();
    }
}

/// What a writer wrote: the BLAKE3 of everything pushed, and how much of it went past the
/// page cache.
pub struct Written {
    pub hash: [u8; 32],
    pub direct_bytes: u64,
}

/// Writes a temp file's content on the calling thread (for code already on a blocking one).
pub struct Writer {
    sink: Sink,
    fill: Chunk,
}

impl Writer {
    /// `size` is what the file will hold (it only chooses the buffer and the write mode).
    pub fn new(tmp: &TempFile, size: u64) -> io::Result<Writer> {
        Ok(Writer { sink: Sink::new(tmp, size)?, fill: Chunk::new(chunk_for(size)) })
    }

    pub fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            data = &data[self.fill.fill(data)..];
            if self.fill.is_full() {
                self.sink.put(&self.fill)?;
                self.fill.len = 0;
            }
        }
        Ok(())
    }

    /// Writes what is left.
    pub fn finish(self) -> io::Result<Written> {
        self.sink.finish(&self.fill)
    }
}

type Job = tokio::task::JoinHandle<(Sink, Chunk, io::Result<()>)>;

/// Writes a temp file's content from async code: each full buffer is hashed and written on
/// a blocking thread while the next one fills.
pub struct AsyncWriter {
    sink: Option<Sink>,
    job: Option<Job>,
    fill: Chunk,
    spare: Option<Chunk>,
}

impl AsyncWriter {
    pub fn new(tmp: &TempFile, size: u64) -> io::Result<AsyncWriter> {
        Ok(AsyncWriter { sink: Some(Sink::new(tmp, size)?), job: None, fill: Chunk::new(chunk_for(size)), spare: None })
    }

    pub async fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            data = &data[self.fill.fill(data)..];
            if self.fill.is_full() {
                let mut sink = self.settle().await?;
                let next = self.spare.take().unwrap_or_else(|| Chunk::new(self.fill.cap));
                let full = std::mem::replace(&mut self.fill, next);
                self.job = Some(tokio::task::spawn_blocking(move || {
                    let r = sink.put(&full);
                    (sink, full, r)
                }));
            }
        }
        Ok(())
    }

    /// Waits for the write in flight; its buffer becomes the spare.
    async fn settle(&mut self) -> io::Result<Sink> {
        if let Some(job) = self.job.take() {
            let (sink, mut chunk, r) = job.await.map_err(|e| io::Error::other(format!("the writer thread failed: {e}")))?;
            chunk.len = 0;
            self.spare = Some(chunk);
            // After a failed write the writer stays failed: nothing more is written or hashed.
            r?;
            self.sink = Some(sink);
        }
        self.sink.take().ok_or_else(|| io::Error::other("an earlier write failed"))
    }

    /// Writes what is left.
    pub async fn finish(mut self) -> io::Result<Written> {
        let sink = self.settle().await?;
        let last = self.fill;
        tokio::task::spawn_blocking(move || sink.finish(&last)).await.map_err(|e| io::Error::other(format!("the writer thread failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::root::SyncRoot;
    use crate::protocol::RelPath;

    fn content(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(u32::from(seed)) as u8).collect()
    }

    /// Sizes around the direct threshold, the chunk and the alignment, pushed in pieces
    /// that do not line up with either; the file and the hash must be the bytes pushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_pushed_is_what_is_written_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let root = SyncRoot::new(dir.path().to_owned());
        // Whether this file system takes O_DIRECT at all (tmpfs before 6.6 did not).
        let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
        let direct_works = set_direct(&probe, true).is_ok();
        std::fs::remove_file(dir.path().join("probe")).unwrap();
        let sizes = [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK + 1, DIRECT_MIN as usize - 1, DIRECT_MIN as usize, DIRECT_MIN as usize + 3 * CHUNK + 17];
        for (i, &n) in sizes.iter().enumerate() {
            let data = content(n, i as u8);
            for asynchronous in [false, true] {
                let p = RelPath::parse(&format!("f{i}-{asynchronous}")).unwrap();
                let tmp = root.create_temp(&p).unwrap();
                let done = if asynchronous {
                    let mut w = AsyncWriter::new(&tmp, n as u64).unwrap();
                    for piece in data.chunks(16_381) {
                        w.push(piece).await.unwrap();
                    }
                    w.finish().await.unwrap()
                } else {
                    let mut w = Writer::new(&tmp, n as u64).unwrap();
                    for piece in data.chunks(70_001) {
                        w.push(piece).unwrap();
                    }
                    w.finish().unwrap()
                };
                assert_eq!(done.hash, *blake3::hash(&data).as_bytes(), "size {n}");
                if direct_works && n as u64 >= DIRECT_MIN {
                    assert_eq!(done.direct_bytes, (n / ALIGN * ALIGN) as u64, "size {n}: every whole block goes past the page cache");
                } else if (n as u64) < DIRECT_MIN {
                    assert_eq!(done.direct_bytes, 0, "size {n}");
                }
                let flags = rustix::fs::fcntl_getfl(tmp.file()).unwrap();
                assert!(!flags.contains(OFlags::DIRECT), "size {n}: the temp file was left in direct mode");
                root.install(tmp, &crate::agent::root::Expect::Absent).unwrap();
                assert!(std::fs::read(dir.path().join(p.as_str())).unwrap() == data, "size {n}: the file differs from what was pushed");
            }
        }
    }
}
