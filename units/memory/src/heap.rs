//! The kernel heap: `linked_list_allocator` behind a spin lock, with usage
//! counters and a record of the last failed request, so running out of
//! memory ends in a message that says why.
//!
//! In the guest, [`HEAP`] is the `#[global_allocator]`. Allocation failure
//! returns null as `GlobalAlloc` requires; `alloc` then calls
//! `handle_alloc_error`, which panics ("memory allocation of N bytes
//! failed"), and the kernel's panic handler adds [`HeapStats`] to the report.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use linked_list_allocator::Heap;
use spin::Mutex;

/// Usage figures of a [`KernelHeap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes managed.
    pub size: usize,
    /// Bytes in use.
    pub used: usize,
    /// Size of the last request that could not be met (0: none failed).
    pub last_failed: usize,
}

/// A lockable heap. See the module documentation.
pub struct KernelHeap {
    heap: Mutex<Heap>,
    last_failed: AtomicUsize,
}

impl KernelHeap {
    /// A heap with no memory yet.
    pub const fn empty() -> Self {
        Self { heap: Mutex::new(Heap::empty()), last_failed: AtomicUsize::new(0) }
    }

    /// Give the heap `[start, start + len)`.
    ///
    /// # Safety
    /// The range must be mapped, writable, unused by anything else for the
    /// rest of the program, and this must be called at most once.
    pub unsafe fn init(&self, start: usize, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.heap.lock().init(start as *mut u8, len) }
    }

    /// Current usage.
    pub fn stats(&self) -> HeapStats {
        let h = self.heap.lock();
        HeapStats { size: h.size(), used: h.used(), last_failed: self.last_failed.load(Ordering::Relaxed) }
    }
}

impl Default for KernelHeap {
    fn default() -> Self {
        Self::empty()
    }
}

// SAFETY: allocation and release go through `linked_list_allocator::Heap`
// under a lock, which returns blocks that fit `layout` and do not overlap any
// block in use.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.heap.lock().allocate_first_fit(layout) {
            Ok(p) => p.as_ptr(),
            Err(()) => {
                self.last_failed.store(layout.size(), Ordering::Relaxed);
                ptr::null_mut()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc` guarantees `ptr` came from `alloc` with
            // this `layout`.
            unsafe { self.heap.lock().deallocate(p, layout) }
        }
    }
}

/// The guest's global allocator.
#[cfg(target_os = "none")]
#[global_allocator]
pub static HEAP: KernelHeap = KernelHeap::empty();

/// The guest's heap statistics (zeros on the host).
pub fn stats() -> HeapStats {
    #[cfg(target_os = "none")]
    {
        HEAP.stats()
    }
    #[cfg(not(target_os = "none"))]
    {
        HeapStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_with(bytes: usize) -> (KernelHeap, Vec<u64>) {
        let mut backing = vec![0u64; bytes / 8];
        let h = KernelHeap::empty();
        // SAFETY: `backing` outlives the heap in each test and is used by
        // nothing else.
        unsafe { h.init(backing.as_mut_ptr() as usize, bytes) };
        (h, backing)
    }

    #[test]
    fn allocates_and_frees() {
        let (h, _b) = heap_with(64 * 1024);
        let l = Layout::from_size_align(1000, 16).unwrap();
        // SAFETY: a non-zero layout; the pointer is freed with the same one.
        let p = unsafe { h.alloc(l) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        assert!(h.stats().used >= 1000);
        // SAFETY: `p` came from `alloc(l)`.
        unsafe { h.dealloc(p, l) };
        assert_eq!(h.stats().used, 0);
        assert_eq!(h.stats().last_failed, 0);
    }

    #[test]
    fn failure_is_null_and_recorded() {
        let (h, _b) = heap_with(4096);
        let l = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { h.alloc(l) };
        assert!(p.is_null());
        assert_eq!(h.stats().last_failed, 1 << 20);
    }
}
