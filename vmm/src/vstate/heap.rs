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
//!
//! And the first blocks of up to 64 KiB are cut from one region mapped
//! once (`Arena`, 256 KiB reserved, its pages touched as used), not from
//! the system, until it is full: a launch then maps and unmaps nothing
//! for its own blocks, nor do the guest's first exits (musl would make a
//! group for each new size of block: a `mmap` and its first touches).
//! The sandbox thread warms the guest's pages up meanwhile, each step a
//! reader of the address space's lock; a `mmap` or `munmap` (musl's, for a
//! new group or an emptied one) waits for that lock as a writer, and the
//! kernel lets new readers in before it for up to 4 ms: one such `munmap`
//! held the launch up to ~800 µs (traced), depending on how the binary's
//! blocks fell into musl's groups. Arena blocks are never given back (at
//! most 256 KiB, whatever the run).

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

/// Bytes of the arena (address space only until touched): ~110 KiB go to
/// a launch, the rest to the guest's first exits; what a long run
/// allocates after that comes from the system. (With 1 MiB, httpd under
/// wrk filled it: peak RSS +1 MiB.)
const ARENA_BYTES: usize = 256 << 10;
/// The largest block the arena gives: larger ones are rare (an image
/// read whole, a device's big buffer) and come from the system.
const ARENA_BLOCK_MAX: usize = 64 << 10;

/// The first small blocks ([`ARENA_BYTES`] mapped at the first allocation).
static ARENA: Arena = Arena::new(ARENA_BYTES);

/// A region that blocks are cut from, front to back, and never given
/// back. Mapped at its first use; its memory is zero until used.
struct Arena {
    /// 0: not mapped yet; 1: being mapped; `usize::MAX`: could not be;
    /// else its address.
    start: AtomicUsize,
    /// Bytes used.
    used: AtomicUsize,
    bytes: usize,
}

const UNMAPPED: usize = 0;
const MAPPING: usize = 1;
const FAILED: usize = usize::MAX;

impl Arena {
    /// An arena of `bytes`, not mapped yet.
    const fn new(bytes: usize) -> Self {
        Arena { start: AtomicUsize::new(UNMAPPED), used: AtomicUsize::new(0), bytes }
    }

    /// Where it starts, mapping it first if no thread has (`None`: it
    /// could not be mapped).
    fn base(&self) -> Option<usize> {
        loop {
            match self.start.compare_exchange(UNMAPPED, MAPPING, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: a new private anonymous mapping, at an
                    // address the kernel picks: nothing else is touched.
                    let p = unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            self.bytes,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                            -1,
                            0,
                        )
                    };
                    let at = if p == libc::MAP_FAILED { FAILED } else { p as usize };
                    self.start.store(at, Ordering::Release);
                }
                Err(MAPPING) => std::hint::spin_loop(),
                Err(FAILED) => return None,
                Err(at) => return Some(at),
            }
        }
    }

    /// A block for `layout` (zeroed: the memory was never used), or null
    /// when it is too large or the arena is full or unmapped.
    fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ARENA_BLOCK_MAX {
            return std::ptr::null_mut();
        }
        let Some(base) = self.base() else { return std::ptr::null_mut() };
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            // The next address aligned as asked (`align` is a power of two).
            let at = (base + used).next_multiple_of(layout.align()) - base;
            let end = at.saturating_add(layout.size().max(1));
            if end > self.bytes {
                return std::ptr::null_mut();
            }
            match self.used.compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + at) as *mut u8,
                Err(now) => used = now,
            }
        }
    }

    /// Whether `p` is one of its blocks.
    fn contains(&self, p: *mut u8) -> bool {
        let start = self.start.load(Ordering::Acquire);
        start != UNMAPPED
            && start != MAPPING
            && start != FAILED
            && (start..start + self.bytes).contains(&(p as usize))
    }
}

/// The global allocator of the `torito` binary.
pub struct Heap;

// SAFETY: every block comes either from the arena, whose blocks are
// disjoint, at least `layout`'s size and alignment, and never handed out
// again, or from `System`, to which it goes back at most once, with the
// layout it was allocated with: at once, or never (a held block stays
// allocated until the process exits; nothing uses it again, its owner
// having freed it). An arena block is never given to `System`.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = from_arena(layout) {
            return p;
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = from_arena(layout) {
            return p;
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARENA.contains(ptr) {
            return;
        }
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
        if !HOLDING.load(Ordering::Acquire) && !CLOSING.load(Ordering::Acquire) && !ARENA.contains(ptr) {
            // SAFETY: as for `dealloc`; `new_size` is the caller's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // While holding or closing, or from the arena: a new block, the
        // old one held, dropped or left in the arena (the system's realloc
        // could free, and unmap, the old one itself).
        // SAFETY: the caller guarantees a valid layout of `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
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

/// A block from the arena, while it has room.
fn from_arena(layout: Layout) -> Option<*mut u8> {
    Some(ARENA.alloc(layout)).filter(|p| !p.is_null())
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

    /// Blocks of up to 64 KiB come from the arena and their frees do
    /// nothing; larger blocks come from the system and, while the launch
    /// lasts, wait on the list when freed (never given back: the process's
    /// end frees them); a reallocation keeps its contents; after
    /// `stop_holding` frees go through; after `stop_freeing` they are
    /// dropped again (the test binary's own allocator is not `Heap`: only
    /// these calls use it).
    #[test]
    fn freed_blocks_are_held_until_the_launch_is_over() {
        let small = Layout::from_size_align(4096, 8).unwrap();
        let layout = Layout::from_size_align(ARENA_BLOCK_MAX + (16 << 10), 8).unwrap();
        let before = CLAIMED.load(Ordering::SeqCst);
        let held = |p: *mut u8| PTRS.iter().any(|s| s.load(Ordering::SeqCst) == p as usize);
        // SAFETY: each block is allocated by `Heap` with its layout and
        // freed once; the reallocated ones with their new size.
        unsafe {
            let a = Heap.alloc(small);
            assert!(ARENA.contains(a), "a small block from the arena");
            a.write_bytes(0xcd, 4096);
            let b = Heap.realloc(a, small, 8192);
            assert!(ARENA.contains(b) && b != a);
            assert_eq!(std::slice::from_raw_parts(b, 4096), &[0xcd; 4096][..]);
            Heap.dealloc(b, Layout::from_size_align(8192, 8).unwrap());
            assert_eq!(CLAIMED.load(Ordering::SeqCst), before, "arena blocks are not held: never freed");

            let blocks: Vec<*mut u8> = (0..3).map(|_| Heap.alloc(layout)).collect();
            assert!(blocks.iter().all(|&p| !p.is_null() && !ARENA.contains(p)), "large: from the system");
            blocks[0].write_bytes(0xab, layout.size());
            let grown_layout = Layout::from_size_align(layout.size() * 2, 8).unwrap();
            let grown = Heap.realloc(blocks[0], layout, grown_layout.size());
            assert!(!grown.is_null());
            assert_eq!(std::slice::from_raw_parts(grown, layout.size()), &vec![0xab; layout.size()][..]);
            for &p in &blocks[1..] {
                Heap.dealloc(p, layout);
            }
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 3, "two frees and the old block, held");
            assert!(blocks.iter().all(|&p| held(p)), "each on the list");
            let big = Layout::from_size_align(HELD_BYTES, 8).unwrap();
            let p = Heap.alloc(big);
            assert!(!p.is_null());
            Heap.dealloc(p, big);
            assert!(!held(p), "beyond the byte budget: freed at once");
            let last = Heap.alloc(layout);
            Heap.dealloc(last, layout);
            assert!(held(last), "smaller blocks are still held");
            let kept = Heap.alloc(small);
            kept.write_bytes(0xef, 4096);
            stop_holding();
            let later = Heap.alloc(small);
            assert!(ARENA.contains(later), "after the launch too, while the arena has room");
            Heap.dealloc(later, small);
            Heap.dealloc(grown, grown_layout);
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 4, "no longer held");
            assert!(!held(grown));
            // An arena block reallocated larger than the arena gives moves
            // to the system.
            let moved = Heap.realloc(kept, small, layout.size());
            assert!(!moved.is_null() && !ARENA.contains(moved));
            assert_eq!(std::slice::from_raw_parts(moved, 4096), &[0xef; 4096][..]);
            Heap.dealloc(moved, layout);
            assert_eq!(CLAIMED.load(Ordering::SeqCst) - before, 4, "freed at once, the arena block left");
            // The guest stopped: frees are dropped, within their budget.
            stop_freeing();
            let n = layout.size();
            let last = Heap.alloc(layout);
            Heap.dealloc(last, layout);
            assert_eq!(DROPPED.load(Ordering::SeqCst), n, "left to the process's exit");
            let huge = Layout::from_size_align(CLOSING_BYTES, 8).unwrap();
            let p = Heap.alloc(huge);
            assert!(!p.is_null());
            Heap.dealloc(p, huge);
            assert_eq!(DROPPED.load(Ordering::SeqCst), n, "beyond the budget: freed at once");
            let moved = Heap.realloc(Heap.alloc(layout), layout, 2 * n);
            assert!(!moved.is_null());
            assert_eq!(DROPPED.load(Ordering::SeqCst), 2 * n, "a reallocation drops the old block");
        }
    }

    /// Blocks come out aligned, zeroed and apart, until the arena is full;
    /// a block too large for it is refused; the arena knows its own.
    #[test]
    fn the_arena_cuts_aligned_blocks_until_it_is_full() {
        let arena = Arena::new(64 << 10);
        let mut last_end = 0;
        for align in [1, 8, 64, 4096] {
            let l = Layout::from_size_align(100, align).unwrap();
            let p = arena.alloc(l);
            assert!(!p.is_null() && (p as usize).is_multiple_of(align), "aligned to {align}");
            assert!(p as usize >= last_end, "apart");
            last_end = p as usize + 100;
            // SAFETY: a fresh block of 100 bytes.
            assert!(unsafe { std::slice::from_raw_parts(p, 100) }.iter().all(|&b| b == 0));
            assert!(arena.contains(p));
        }
        assert!(!arena.contains(std::ptr::null_mut::<u8>().wrapping_add(4096)));
        let too_big = Layout::from_size_align(ARENA_BLOCK_MAX + 1, 8).unwrap();
        assert!(arena.alloc(too_big).is_null(), "too large");
        let chunk = Layout::from_size_align(16 << 10, 8).unwrap();
        let fits = (0..8).filter(|_| !arena.alloc(chunk).is_null()).count();
        assert_eq!(fits, 3, "what is left of 64 KiB after the first blocks");
    }
}
