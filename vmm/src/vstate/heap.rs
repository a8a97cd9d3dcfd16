//! The monitor's heap: the system allocator, except that blocks freed
//! while the VM is being set up are kept until the guest's first exit.
//!
//! musl's allocator (the static monitor's) unmaps a group of blocks as
//! soon as its last block is freed, and maps one again for the next
//! allocation: during a launch, each of those `munmap`/`mmap` pairs (and
//! the first touches of the new pages) cost this kind of host
//! ~20–30 µs. Until [`stop_holding`], [`Heap`] puts freed blocks on a
//! fixed list instead (no allocation of its own; when the list is full it
//! frees at once) and frees them all then.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Blocks held at most (a launch frees a few dozen).
const HELD: usize = 256;

static HOLDING: AtomicBool = AtomicBool::new(true);
/// Slots claimed so far (may exceed [`HELD`]: those frees went through).
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
static PTRS: [AtomicUsize; HELD] = [const { AtomicUsize::new(0) }; HELD];
static SIZES: [AtomicUsize; HELD] = [const { AtomicUsize::new(0) }; HELD];
static ALIGNS: [AtomicUsize; HELD] = [const { AtomicUsize::new(0) }; HELD];

/// The global allocator of the `torito` binary.
pub struct Heap;

// SAFETY: every block comes from `System` and goes back to it exactly
// once, with the layout it was allocated with: either at once, or later
// from the list, where a slot is written by the one thread that claimed
// it and read back once, by `stop_holding`, after a store with `Release`.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if HOLDING.load(Ordering::Acquire) {
            let i = CLAIMED.fetch_add(1, Ordering::AcqRel);
            if i < HELD {
                SIZES[i].store(layout.size(), Ordering::Relaxed);
                ALIGNS[i].store(layout.align(), Ordering::Relaxed);
                PTRS[i].store(ptr as usize, Ordering::Release);
                return;
            }
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !HOLDING.load(Ordering::Acquire) {
            // SAFETY: as for `dealloc`; `new_size` is the caller's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // While holding: a new block, the old one held (the system's
        // realloc could free, and unmap, the old one itself).
        // SAFETY: the caller guarantees a valid layout of `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and at least this long; they
            // do not overlap (distinct allocations).
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// Stop holding freed blocks and free those held (the guest's first exit:
/// the launch is over). Later calls do nothing.
pub fn stop_holding() {
    if !HOLDING.load(Ordering::Relaxed) || !HOLDING.swap(false, Ordering::AcqRel) {
        return;
    }
    let n = CLAIMED.load(Ordering::Acquire).min(HELD);
    for i in 0..n {
        // A slot claimed by a `dealloc` still writing it reads 0 here; its
        // block is then not freed (a leak of one block, never a double
        // free). With one thread freeing during the launch, it does not
        // happen.
        let p = PTRS[i].swap(0, Ordering::AcqRel);
        if p == 0 {
            continue;
        }
        let (size, align) = (SIZES[i].load(Ordering::Relaxed), ALIGNS[i].load(Ordering::Relaxed));
        // SAFETY: the slot holds a block from `System` with this layout
        // (stored by `dealloc` before the pointer), taken out once (swap).
        unsafe { System.dealloc(p as *mut u8, Layout::from_size_align_unchecked(size, align)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks freed while holding wait on the list, a reallocation keeps
    /// its contents, and `stop_holding` gives them all back (the test
    /// binary's own allocator is not `Heap`: only these calls use it).
    #[test]
    fn freed_blocks_wait_until_the_launch_is_over() {
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let before = CLAIMED.load(Ordering::SeqCst);
        // SAFETY: each block is allocated by `Heap` with `layout` and freed
        // once; the reallocated one with its new size.
        unsafe {
            let blocks: Vec<*mut u8> = (0..8).map(|_| Heap.alloc(layout)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            blocks[0].write_bytes(0xab, 4096);
            let grown = Heap.realloc(blocks[0], layout, 8192);
            assert!(!grown.is_null());
            assert_eq!(std::slice::from_raw_parts(grown, 4096), &[0xab; 4096][..]);
            for &p in &blocks[1..] {
                Heap.dealloc(p, layout);
            }
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 8, "seven frees and the old block, held");
            stop_holding();
            assert!(PTRS.iter().all(|p| p.load(Ordering::SeqCst) == 0), "all given back");
            Heap.dealloc(grown, Layout::from_size_align(8192, 8).unwrap());
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 8, "no longer held");
        }
    }
}
