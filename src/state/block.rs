//! A byte block from the C library's `malloc` rather than the process's global allocator.
//!
//! The cache keeps one block per order, for weeks. The global allocator (mimalloc) is chosen for the
//! processor's many short-lived allocations, but it rounds a block up to size classes a quarter of a
//! power of two apart; glibc's `malloc` rounds to 16 bytes. For the cache's 70–200-byte blocks that
//! is ~13% less memory per cached order (docs/benchmarks.md), and blocks are written once per
//! committed change, so the slower allocation does not show.

use std::alloc::Layout;
use std::ops::Deref;
use std::ptr::NonNull;

/// Bytes in one `malloc`ed block, freed when dropped.
pub struct CBlock {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a CBlock owns its bytes exclusively (like a `Box<[u8]>`), and malloc'ed memory may be
// freed from any thread.
unsafe impl Send for CBlock {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for CBlock {}

impl CBlock {
    /// A block holding a copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> CBlock {
        let size = bytes.len().max(1);
        // SAFETY: malloc with a non-zero size; the result is checked for null before use.
        let raw = unsafe { libc::malloc(size) }.cast::<u8>();
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(
                Layout::from_size_align(size, 1).unwrap_or(Layout::new::<u8>()),
            )
        };
        // SAFETY: `ptr` is valid for `size >= bytes.len()` bytes of writes, freshly allocated, so it
        // does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        CBlock {
            ptr,
            len: bytes.len(),
        }
    }
}

impl Deref for CBlock {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes owned by this block until it is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for CBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `libc::malloc` and is freed exactly once, here.
        unsafe { libc::free(self.ptr.as_ptr().cast()) }
    }
}

impl Clone for CBlock {
    fn clone(&self) -> CBlock {
        CBlock::copy_of(self)
    }
}

impl PartialEq for CBlock {
    fn eq(&self, other: &CBlock) -> bool {
        **self == **other
    }
}

impl Eq for CBlock {}

impl std::fmt::Debug for CBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_a_copy_of_its_bytes_and_clones_compare_equal() {
        let source = vec![7u8, 0, 255, 42];
        let block = CBlock::copy_of(&source);
        assert_eq!(&*block, source.as_slice());
        let copy = block.clone();
        drop(block);
        assert_eq!(&*copy, source.as_slice(), "a clone outlives its original");
        assert_eq!(copy, CBlock::copy_of(&source));
        assert_ne!(copy, CBlock::copy_of(&[7u8, 0, 255]));
        assert!(CBlock::copy_of(&[]).is_empty());
    }
}
