//! Giving memory freed by a burst back to the system.
//!
//! A connection storm allocates and frees a lot of short-lived memory (each
//! handshake's HTTP buffers, the auth lookups, presence snapshots) between
//! the long-lived allocations of the connections it opens. glibc keeps the
//! freed pages: only free space at the very top of a heap is returned by
//! itself. Once the storm is over, `malloc_trim` hands the free pages in
//! the middle back too, so the resident size is what the open connections
//! hold, not what the storm once needed.

/// Returns free heap pages to the system, off the async workers (the trim
/// walks every arena, holding each one's lock while it does).
pub fn release_after_burst() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    drop(tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only takes glibc's own arena locks; it is
        // safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) };
    }));
}
