//! Giving memory back after a burst. A full scan of a large tree, or a big page of peer
//! changes, allocates a copy of its part of the tree and frees it again; glibc keeps freed
//! memory inside its heaps (one per thread that allocated), so an idle agent stayed at the
//! high-water mark of its last burst (about 1 KB per file of the tree). `malloc_trim(0)`
//! returns the free pages of every heap to the system.

/// Bursts of at least this many entries are followed by a trim.
pub const BURST: usize = 1000;

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
