//! Allocator settings that keep the process inside `[runtime] memory`.
//!
//! The budget bounds what Tributary *holds* (records in flight, encoders, the key
//! index's cache), but with glibc's defaults the resident size is much larger than
//! that: measured on a 5M-row deletion-vector mirror under a 256MiB budget, heaptrack
//! saw a peak of 128MiB live heap while the process peaked at 332MiB resident and sat
//! at 309MiB afterwards. Two defaults cause it:
//! - up to 8 arenas per core, each keeping the freed memory of the threads that used
//!   it (tokio moves tasks between workers, so every arena ends up holding some);
//! - a *dynamic* mmap threshold: once a large block is freed, the threshold rises to
//!   its size (up to 32MiB), so later Arrow buffers and Parquet pages come from the
//!   heap, where a freed one is kept rather than returned.
//!
//! So the process pins the arena count to the cores it has and the mmap threshold to
//! 256KiB: batch-sized buffers are mapped and unmapped, and small objects share a few
//! arenas. Same run: peak 206MiB, 137MiB afterwards, CPU unchanged (BENCHMARKS.md).
//! A user who sets `GLIBC_TUNABLES` or the `MALLOC_*` variables keeps their own.
//!
//! This is the crate's only `unsafe`: two calls into the C library, before any other
//! thread exists.
#![allow(unsafe_code)]

/// Large allocations at least this big are mapped on their own and returned to the
/// system when freed.
const MMAP_THRESHOLD: usize = 256 * 1024;

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Arenas capped at this many; mmap threshold fixed.
    Applied { arenas: usize },
    /// The user's environment sets the allocator: left alone.
    UserSet,
    /// Not glibc: nothing to do.
    Unsupported,
}

/// Sets the allocator up. Call first thing in `main`, before any thread is started.
pub fn tune() -> Tuning {
    let user_set = std::env::var_os("GLIBC_TUNABLES").is_some_and(|v| v.to_string_lossy().contains("malloc"))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
    if user_set {
        return Tuning::UserSet;
    }
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    apply(arenas)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply(arenas: usize) -> Tuning {
    let arenas_c = i32::try_from(arenas).unwrap_or(i32::MAX);
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe and takes
    // plain integers. A value it refuses is reported by a 0 return, not UB.
    let ok = unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas_c) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as i32) == 1
    };
    if ok {
        Tuning::Applied { arenas }
    } else {
        Tuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply(_arenas: usize) -> Tuning {
    Tuning::Unsupported
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_mapped_and_returned_when_freed() {
        if tune() == Tuning::UserSet {
            return;
        }
        // With the dynamic threshold, freeing one 4MiB block would make the next
        // 1MiB one come from the heap; with a fixed 256KiB threshold it is mapped.
        // The counter is process-wide and other tests run beside this one, so a
        // disturbed attempt is tried again; the heap path fails every attempt.
        let mapped_then_unmapped = (0..5).any(|_| {
            drop(std::hint::black_box(vec![1u8; 4 << 20]));
            let before = mapped_bytes();
            let held = std::hint::black_box(vec![1u8; 1 << 20]);
            let during = mapped_bytes();
            drop(held);
            let after = mapped_bytes();
            during >= before + (1 << 20) && after + (1 << 20) <= during
        });
        assert!(mapped_then_unmapped, "a 1MiB buffer came from the heap");
    }

    /// Bytes in mmapped chunks, from glibc's own accounting.
    fn mapped_bytes() -> usize {
        // SAFETY: mallinfo2 reads allocator statistics and has no preconditions.
        unsafe { libc::mallinfo2() }.hblkhd
    }
}
