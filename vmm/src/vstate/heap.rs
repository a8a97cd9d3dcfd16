//! The monitor's heap: the system allocator, except that blocks freed
//! while the VM is being set up are kept until the guest's first exit.
//!
//! musl's allocator (the static monitor's) unmaps a group of blocks as
//! soon as its last block is freed, and maps one again for the next
//! allocation: during a launch, each of those `munmap`/`mmap` pairs (and
//! the first touches of the new pages) cost this kind of host
//! ~20–30 µs. Until [`stop_holding`], [`Heap`] puts freed blocks on a
//! fixed list instead (no allocation of its own; when the list is full, or
//! holds 1 MiB, it frees at once), and leaves them there: the process's
//! end frees them.
//!
//! The same goes for the end of a run: from [`stop_freeing`] (the guest
//! has stopped) the monitor only winds down, and the blocks it frees
//! (devices, buffers, the timeline's strings; up to 4 MiB) are left to the
//! process's exit, which unmaps the address space at once, instead of a
//! `munmap` and its TLB-flush IPIs each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Blocks held at most (a launch frees ~170, with a NIC ~250).
const HELD: usize = 256;
/// Bytes held at most (a launch with a NIC frees ~100 KiB); beyond, frees
/// go through at once.
const HELD_BYTES: usize = 1 << 20;

/// Bytes left to the process's exit at most once the guest stopped.
const CLOSING_BYTES: usize = 4 << 20;

static HOLDING: AtomicBool = AtomicBool::new(true);
/// The guest has stopped: frees are dropped (up to [`CLOSING_BYTES`]).
static CLOSING: AtomicBool = AtomicBool::new(false);
/// Bytes dropped since [`CLOSING`].
static DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Slots claimed so far (may exceed [`HELD`]: those frees went through).
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// Bytes held so far (a block that would pass [`HELD_BYTES`] went
/// through).
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// The blocks held (for a debugger's and the tests' eyes: nothing frees
/// them).
static PTRS: [AtomicUsize; HELD] = [const { AtomicUsize::new(0) }; HELD];

/// The global allocator of the `torito` binary.
pub struct Heap;

// SAFETY: every block comes from `System` and goes back to it at most
// once, with the layout it was allocated with: at once, or never (a held
// block stays allocated until the process exits; nothing uses it again,
// its owner having freed it).
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
        if dropped(layout.size()) {
            return;
        }
        if HOLDING.load(Ordering::Acquire) && within(&BYTES, layout.size(), HELD_BYTES) {
            let i = CLAIMED.fetch_add(1, Ordering::AcqRel);
            if i < HELD {
                PTRS[i].store(ptr as usize, Ordering::Relaxed);
                return;
            }
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !HOLDING.load(Ordering::Acquire) && !CLOSING.load(Ordering::Acquire) {
            // SAFETY: as for `dealloc`; `new_size` is the caller's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // While holding or closing: a new block, the old one held or
        // dropped (the system's realloc could free, and unmap, the old one
        // itself).
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

/// Whether a freed block of `size` bytes is left to the process's exit
/// (closing, within the budget).
fn dropped(size: usize) -> bool {
    CLOSING.load(Ordering::Acquire) && within(&DROPPED, size, CLOSING_BYTES)
}

/// Count `size` more bytes in `counter` if the total stays within `max`.
fn within(counter: &AtomicUsize, size: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_add(size).filter(|&n| n <= max))
        .is_ok()
}

/// The guest has stopped and the monitor winds down: blocks freed from now
/// on stay allocated until the process exits (at most 4 MiB; beyond, frees
/// go through). Tearing a NIC appliance's run down freed ~15 blocks, ~10
/// of them a `munmap` of their own (each 15–90 µs here, TLB-flush IPIs
/// included, since other threads ran on the other CPU). Only the `torito`
/// binary, which runs one VM and exits, has [`Heap`] as its allocator.
pub fn stop_freeing() {
    CLOSING.store(true, Ordering::Release);
}

/// Stop holding freed blocks (the guest's first exit: the launch is
/// over); later frees go to the system. Those held stay allocated until
/// the process exits: ~100 KiB in ~250 blocks for a NIC appliance, and
/// freeing them here cost that first exit 120–520 µs on the development
/// host (musl unmapping groups, each `munmap` a round of TLB-flush IPIs
/// now that other threads have run). Later calls do nothing.
pub fn stop_holding() {
    HOLDING.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks freed while holding wait on the list (never given back:
    /// the process's end frees them), a reallocation keeps its contents,
    /// and after `stop_holding` frees go through; after `stop_freeing`
    /// they are dropped again (the test binary's own allocator is not
    /// `Heap`: only these calls use it).
    #[test]
    fn freed_blocks_are_held_until_the_launch_is_over() {
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
            let held = |p: *mut u8| PTRS.iter().any(|s| s.load(Ordering::SeqCst) == p as usize);
            assert!(blocks.iter().all(|&p| held(p)), "each on the list");
            let big = Layout::from_size_align(HELD_BYTES, 8).unwrap();
            let p = Heap.alloc(big);
            assert!(!p.is_null());
            Heap.dealloc(p, big);
            assert!(!held(p), "beyond the byte budget: freed at once");
            let small = Heap.alloc(layout);
            Heap.dealloc(small, layout);
            assert!(held(small), "smaller blocks are still held");
            stop_holding();
            Heap.dealloc(grown, Layout::from_size_align(8192, 8).unwrap());
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 9, "no longer held");
            assert!(!held(grown));
            // The guest stopped: frees are dropped, within their budget.
            stop_freeing();
            let last = Heap.alloc(layout);
            Heap.dealloc(last, layout);
            assert_eq!(DROPPED.load(Ordering::SeqCst), 4096, "left to the process's exit");
            let huge = Layout::from_size_align(CLOSING_BYTES, 8).unwrap();
            let p = Heap.alloc(huge);
            assert!(!p.is_null());
            Heap.dealloc(p, huge);
            assert_eq!(DROPPED.load(Ordering::SeqCst), 4096, "beyond the budget: freed at once");
            let moved = Heap.realloc(Heap.alloc(layout), layout, 8192);
            assert!(!moved.is_null());
            assert_eq!(DROPPED.load(Ordering::SeqCst), 8192, "a reallocation drops the old block");
        }
    }
}
