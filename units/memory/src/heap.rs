//! The kernel heap: `linked_list_allocator` behind a spin lock, with usage
//! counters and a record of the last failed request, so running out of
//! memory ends in a message that says why.
//!
//! **Per-core caches** (Toro gives each core its own pool): once
//! [`KernelHeap::enable_core_caches`] names the function that says which
//! core runs, blocks of up to [`MAX_CACHED`] bytes are served from a free
//! list of the calling core, refilled [`REFILL`] blocks at a time under the
//! lock and drained back when it grows past [`CACHE_LIMIT`]. Measured on
//! two cores: alloc + free of 64 bytes took 6 ns on one core and ~140 ns
//! per core with both cores at once (the lock's cache line bounces); the
//! caches remove that contention. A block freed on another core joins that
//! core's cache: blocks of a class are interchangeable. Cached blocks count
//! as used in [`HeapStats`]; a failing request first gives the calling
//! core's cache back and tries again.
//!
//! In the guest, [`HEAP`] is the `#[global_allocator]`. Allocation failure
//! returns null as `GlobalAlloc` requires; `alloc` then calls
//! `handle_alloc_error`, which panics ("memory allocation of N bytes
//! failed"), and the kernel's panic handler adds [`HeapStats`] to the report.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
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

/// Cores with a cache of their own (the kernel's per-core tables hold as
/// many).
pub const MAX_CORES: usize = 16;
/// Size classes of the per-core caches, in bytes.
const CLASSES: [usize; 6] = [16, 32, 64, 128, 256, 512];
/// Largest request served from a per-core cache.
pub const MAX_CACHED: usize = 512;
/// Blocks taken from the shared heap per refill (one lock for all).
pub const REFILL: usize = 16;
/// Blocks of one class a core keeps before it gives half back.
pub const CACHE_LIMIT: usize = 64;

/// The alignment of a block of class `size`.
const fn class_align(size: usize) -> usize {
    if size < 64 { size } else { 64 }
}

/// The class a request falls in, if any.
fn class_of(layout: Layout) -> Option<usize> {
    CLASSES.iter().position(|&c| layout.size() <= c && layout.align() <= class_align(c))
}

fn class_layout(class: usize) -> Layout {
    let size = CLASSES[class];
    // Powers of two, at least 16: always a valid layout.
    Layout::from_size_align(size, class_align(size)).unwrap_or(Layout::new::<u128>())
}

/// A list of free blocks of one class, linked through their first word.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: usize,
}

/// One core's lists.
#[repr(align(128))]
struct CoreCache(UnsafeCell<[FreeList; CLASSES.len()]>);

// SAFETY: a core's cache is touched only by code running on that core
// (`KernelHeap::cache` indexes by the calling core), and nothing runs in
// between on the same core while a list is updated: threads are cooperative
// and interrupt handlers do not allocate.
unsafe impl Sync for CoreCache {}

/// A lockable heap. See the module documentation.
pub struct KernelHeap {
    heap: Mutex<Heap>,
    /// The lowest address no block has ever reached (see `alloc_zeroed`);
    /// changed under the `heap` lock only.
    fresh: AtomicUsize,
    last_failed: AtomicUsize,
    core: spin::Once<fn() -> usize>,
    caches: [CoreCache; MAX_CORES],
}

impl KernelHeap {
    /// A heap with no memory yet.
    pub const fn empty() -> Self {
        Self {
            heap: Mutex::new(Heap::empty()),
            fresh: AtomicUsize::new(usize::MAX),
            last_failed: AtomicUsize::new(0),
            core: spin::Once::new(),
            caches: [const {
                CoreCache(UnsafeCell::new([FreeList { head: ptr::null_mut(), len: 0 }; CLASSES.len()]))
            }; MAX_CORES],
        }
    }

    /// Serve small blocks from per-core caches; `core` returns the calling
    /// core's index (below [`MAX_CORES`]).
    pub fn enable_core_caches(&self, core: fn() -> usize) {
        self.core.call_once(|| core);
    }

    /// The calling core's list for `class`, when caches are on.
    #[allow(clippy::mut_from_ref)] // one core, one user at a time: see `CoreCache`
    fn cache(&self, class: usize) -> Option<&mut FreeList> {
        let core = (self.core.get()?)();
        let cache = self.caches.get(core)?;
        // SAFETY: see `CoreCache`: only this core reaches its lists, and no
        // other reference to them is alive (callers use it and drop it).
        Some(unsafe { &mut (*cache.0.get())[class] })
    }

    fn pop(list: &mut FreeList) -> Option<*mut u8> {
        let p = list.head;
        if p.is_null() {
            return None;
        }
        // SAFETY: a block on a free list is ours, at least 16 bytes, and
        // holds the next block's address in its first word.
        list.head = unsafe { p.cast::<*mut u8>().read() };
        list.len -= 1;
        Some(p)
    }

    fn push(list: &mut FreeList, p: *mut u8) {
        // SAFETY: `p` is a free block of at least 16 bytes, aligned to 16,
        // that nothing else uses.
        unsafe { p.cast::<*mut u8>().write(list.head) };
        list.head = p;
        list.len += 1;
    }

    /// Give every block of the calling core's caches back.
    fn drain_own_cache(&self, heap: &mut Heap) {
        for class in 0..CLASSES.len() {
            if let Some(list) = self.cache(class) {
                while let Some(p) = Self::pop(list) {
                    // SAFETY: the block came from `heap` with this class's layout.
                    unsafe { heap.deallocate(NonNull::new_unchecked(p), class_layout(class)) };
                }
            }
        }
    }

    /// A block from `heap` (locked by the caller), moving the fresh mark
    /// past it.
    fn take(&self, heap: &mut Heap, layout: Layout) -> Result<NonNull<u8>, ()> {
        let p = heap.allocate_first_fit(layout)?;
        // linked_list_allocator rounds sizes up to 16-byte units.
        let end = (p.as_ptr() as usize).saturating_add(layout.size().max(16).next_multiple_of(16));
        if end > self.fresh.load(Ordering::Relaxed) {
            self.fresh.store(end, Ordering::Relaxed);
        }
        Ok(p)
    }

    /// A block from the shared heap, and whether it lies wholly above the
    /// fresh mark as it was (memory no block has used).
    fn alloc_shared(&self, layout: Layout) -> (*mut u8, bool) {
        let mut heap = self.heap.lock();
        let fresh = self.fresh.load(Ordering::Relaxed);
        if let Ok(p) = self.take(&mut heap, layout) {
            return (p.as_ptr(), p.as_ptr() as usize >= fresh);
        }
        // Blocks cached on this core may be enough to meet the request.
        self.drain_own_cache(&mut heap);
        match self.take(&mut heap, layout) {
            Ok(p) => (p.as_ptr(), p.as_ptr() as usize >= fresh),
            Err(()) => {
                self.last_failed.store(layout.size(), Ordering::Relaxed);
                (ptr::null_mut(), false)
            }
        }
    }

    /// Give the heap `[start, start + len)`.
    ///
    /// # Safety
    /// The range must be mapped, writable, unused by anything else for the
    /// rest of the program, and this must be called at most once.
    pub unsafe fn init(&self, start: usize, len: usize) {
        let mut heap = self.heap.lock();
        self.fresh.store(start, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { heap.init(start as *mut u8, len) }
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

// SAFETY: blocks come from `linked_list_allocator::Heap` under a lock,
// which returns blocks that fit their layout and do not overlap any block in
// use; a cached block was allocated with its class's layout, which fits
// every request mapped to that class (size and alignment), and is handed to
// one caller at a time.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = class_of(layout)
            && let Some(list) = self.cache(class)
        {
            if let Some(p) = Self::pop(list) {
                return p;
            }
            // Refill under one lock.
            let cl = class_layout(class);
            let mut heap = self.heap.lock();
            for _ in 1..REFILL {
                match self.take(&mut heap, cl) {
                    Ok(p) => Self::push(list, p.as_ptr()),
                    Err(()) => break,
                }
            }
            if let Ok(p) = self.take(&mut heap, cl) {
                return p.as_ptr();
            }
            drop(heap);
            if let Some(p) = Self::pop(list) {
                return p;
            }
            return self.alloc_shared(cl).0;
        }
        self.alloc_shared(layout).0
    }

    /// Zeroed memory without touching what is already zero: a block above
    /// the fresh mark lies in memory no block has used since the machine
    /// gave it, which every monitor gives zeroed (fresh anonymous memory),
    /// so only its first 64 bytes (where the allocator's own free-list
    /// header may have been) are cleared. On a host where a guest's first
    /// touch of a page costs an exit (4–8 µs on a PVM host), large buffers
    /// that are made but not yet used (a listener's backlog of socket
    /// buffers) then cost nothing until used.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_some() {
            // SAFETY: forwarded from the caller.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: `p` is a block of at least `layout.size()` bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        let (p, fresh) = self.alloc_shared(layout);
        if !p.is_null() {
            let dirty = if fresh { layout.size().min(64) } else { layout.size() };
            // SAFETY: `p` is a block of at least `layout.size()` bytes.
            unsafe { ptr::write_bytes(p, 0, dirty) };
            #[cfg(debug_assertions)]
            {
                // SAFETY: as above; the block is ours and initialised now
                // (or zero, as the machine gave it).
                let block = unsafe { core::slice::from_raw_parts(p, layout.size()) };
                debug_assert!(block.iter().all(|&b| b == 0), "fresh heap memory was not zero");
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        if let Some(class) = class_of(layout)
            && let Some(list) = self.cache(class)
        {
            Self::push(list, ptr);
            if list.len > CACHE_LIMIT {
                let mut heap = self.heap.lock();
                while list.len > CACHE_LIMIT / 2 {
                    if let Some(q) = Self::pop(list) {
                        // SAFETY: cached blocks have their class's layout.
                        unsafe { heap.deallocate(NonNull::new_unchecked(q), class_layout(class)) };
                    }
                }
            }
            return;
        }
        // SAFETY: `GlobalAlloc` guarantees `ptr` came from `alloc` with
        // this `layout`, which (not being a cached class) took it from the
        // shared heap.
        unsafe { self.heap.lock().deallocate(p, layout) }
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
    fn per_core_caches_reuse_blocks_and_give_them_back() {
        let (h, _b) = heap_with(256 * 1024);
        h.enable_core_caches(|| 0);
        let l = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: non-zero layouts; every pointer is freed once with its own.
        unsafe {
            let a = h.alloc(l);
            assert!(!a.is_null() && (a as usize).is_multiple_of(8));
            // One refill took REFILL blocks of the 64-byte class.
            assert_eq!(h.stats().used, REFILL * 64);
            h.dealloc(a, l);
            assert_eq!(h.alloc(l), a, "the block just freed comes back first");
            let many: Vec<_> = (0..200).map(|_| h.alloc(l)).collect();
            assert!(many.iter().all(|p| !p.is_null()));
            let mut sorted = many.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 200, "no block handed out twice");
            for p in many {
                h.dealloc(p, l);
            }
            h.dealloc(a, l);
            // The cache keeps at most CACHE_LIMIT blocks.
            assert!(h.stats().used <= CACHE_LIMIT * 64, "{:?}", h.stats());
            // Large or over-aligned requests bypass the caches.
            let big = Layout::from_size_align(4096, 4096).unwrap();
            let b = h.alloc(big);
            assert!((b as usize).is_multiple_of(4096));
            h.dealloc(b, big);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_whether_fresh_or_reused() {
        let (h, _b) = heap_with(256 * 1024);
        h.enable_core_caches(|| 0);
        let l = Layout::from_size_align(5000, 16).unwrap();
        let odd = Layout::from_size_align(3000, 64).unwrap();
        // SAFETY: non-zero layouts; every block is freed once with its own.
        unsafe {
            for round in 0..4 {
                let a = h.alloc_zeroed(l);
                let b = h.alloc_zeroed(odd);
                let c = h.alloc_zeroed(Layout::from_size_align(100, 8).unwrap());
                for (p, n) in [(a, 5000), (b, 3000), (c, 100)] {
                    assert!(!p.is_null());
                    assert!(core::slice::from_raw_parts(p, n).iter().all(|&x| x == 0), "round {round}");
                    ptr::write_bytes(p, 0xa5, n);
                }
                // Free in an order that merges blocks into the tail.
                h.dealloc(b, odd);
                h.dealloc(c, Layout::from_size_align(100, 8).unwrap());
                if round % 2 == 0 {
                    h.dealloc(a, l);
                }
            }
        }
    }

    #[test]
    fn a_failing_request_uses_what_the_cache_holds() {
        let (h, _b) = heap_with(16 * 1024);
        h.enable_core_caches(|| 0);
        let small = Layout::from_size_align(512, 8).unwrap();
        // SAFETY: non-zero layouts, freed once.
        unsafe {
            let p = h.alloc(small);
            h.dealloc(p, small);
            // Nearly all of the heap: only possible with the cache drained.
            let big = Layout::from_size_align(15 * 1024, 8).unwrap();
            let q = h.alloc(big);
            assert!(!q.is_null(), "{:?}", h.stats());
            h.dealloc(q, big);
        }
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
