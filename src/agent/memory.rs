//! Giving memory back after a burst. A full scan of a large tree, or a big page of peer
//! changes, allocates a copy of its part of the tree and frees it again; glibc keeps freed
//! memory inside its heaps (one per thread that allocated), so an idle agent stayed at the
//! high-water mark of its last burst (about 1 KB per file of the tree). `malloc_trim(0)`
//! returns the free pages of every heap to the system.
//!
//! The agent also keeps one heap for all its threads (`one_heap`): glibc gives each thread
//! that allocates concurrently its own heap, up to 8 per core, and each holds on to what its
//! thread's last burst left (measured idle at 20,000 files: 10.3-12.3 MiB of anonymous memory
//! with the default, 6.1-8.7 MiB with one heap). Per-thread caches (tcache) still serve small
//! allocations without the heap's lock.

/// Bursts of at least this many entries are followed by a trim.
pub const BURST: usize = 1000;
/// The trim comes this long after the last burst, not after each: during a catch-up the
/// next page arrives while one is applied, and trimming between pages handed back memory
/// the next page took again at once, page fault by page fault (5,133 `madvise` calls and
/// 12% of the event loop's time in page faults for a 10,000-file initial sync).
pub const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the free pages of every malloc heap to the system (glibc; a no-op elsewhere).
#[allow(unsafe_code)]
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a size and only releases memory that is free; it has no
    // precondition and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc keep a single malloc heap for every thread. Called at the top of `main` for
/// the agent, before any other thread exists (glibc; a no-op elsewhere).
#[allow(unsafe_code)]
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists, so no allocation races with the change.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
