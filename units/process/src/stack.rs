//! Thread stacks: heap memory with an unmapped guard page below each, so
//! that a thread running past the bottom of its stack faults on the first
//! byte it touches there (reported as a stack overflow, by thread and
//! core) instead of overwriting whatever the heap put below it.
//!
//! One allocation, 4 KiB aligned: `[ spare page | guard page | stack ]`.
//! The platform's `guard` hook unmaps the guard page (the kernel's page
//! tables); where there is none (host tests) the canary at the stack's
//! bottom still catches an overflow at the next switch, and the spare
//! page below takes what an overflow of less than two pages writes first.
//! Rust's stack probes touch every page of a large frame in order, so a
//! frame bigger than the guard still meets it.
//!
//! Unmapping and mapping back write page tables (exits under shadow
//! paging) and split a 2 MiB page the first time, so freed stacks of the
//! default size are kept, guard and all, for the next spawns. Another
//! core may still hold a translation of the guard page in its TLB: the
//! core that first runs a stack flushes it there ([`Stack::ready_on`]).
#![allow(unsafe_code)] // the stack's own allocation, by layout

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use spin::Mutex;

use crate::{CoreId, MAX_CORES};

const PAGE: usize = 4096;
/// Below the stack: the spare page and the guard page.
pub(crate) const BELOW: usize = 2 * PAGE;
/// Freed default-size stacks kept for reuse: enough for the threads a
/// server starts and ends all the time, few enough that a burst of
/// connections gives its memory back (8 × 72 KiB of heap).
const CACHE_MAX: usize = 8;

/// One thread's stack.
pub(crate) struct Stack {
    /// Start of the allocation.
    start: NonNull<u8>,
    /// Usable bytes above the guard.
    size: usize,
    /// The frame the guard page mapped, while it is unmapped.
    guard_frame: Option<u64>,
    /// Cores that have flushed the guard page from their TLB.
    flushed: AtomicU32,
    /// The thread's name (`Builder::name`).
    pub(crate) name: Option<Box<str>>,
}

// SAFETY: a `Stack` owns its allocation outright; the pointer is never
// shared except as the thread's stack, which the scheduler hands to one
// core at a time.
unsafe impl Send for Stack {}
// SAFETY: shared references only read the fields (`flushed` is atomic).
unsafe impl Sync for Stack {}

static CACHE: Mutex<Vec<Stack>> = Mutex::new(Vec::new());

impl Stack {
    /// A stack of `size` bytes (rounded up to whole pages), from the cache
    /// when it has one of that size; `None` when the heap has no room.
    pub(crate) fn new(size: usize) -> Option<Stack> {
        let size = size.div_ceil(PAGE) * PAGE;
        if size == crate::STACK_SIZE
            && let Some(s) = CACHE.lock().pop()
        {
            return Some(s);
        }
        let layout = Layout::from_size_align(BELOW + size, PAGE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let start = NonNull::new(unsafe { alloc(layout) })?;
        let guard = start.as_ptr() as usize + PAGE;
        let guard_frame = crate::platform().guard.and_then(|g| g(guard));
        // The core that unmapped it has flushed it.
        let flushed = AtomicU32::new(if guard_frame.is_some() { 1 << (crate::platform().core)() } else { 0 });
        Some(Stack { start, size, guard_frame, flushed, name: None })
    }

    /// The lowest usable byte (the canary goes there).
    pub(crate) fn base(&self) -> *mut u8 {
        self.start.as_ptr().wrapping_add(BELOW)
    }

    /// Usable bytes.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The guard page's range, when it is unmapped.
    pub(crate) fn guard(&self) -> Option<(usize, usize)> {
        let g = self.start.as_ptr() as usize + PAGE;
        self.guard_frame.map(|_| (g, g + PAGE))
    }

    /// Before the stack's thread first runs on `core`: drop a translation
    /// of the guard page this core may still hold.
    pub(crate) fn ready_on(&self, core: usize) {
        let bit = 1u32 << core;
        if self.guard_frame.is_some()
            && self.flushed.fetch_or(bit, Ordering::Relaxed) & bit == 0
            && let (Some(flush), Some((g, _))) = (crate::platform().flush, self.guard())
        {
            flush(g);
        }
    }

    /// Give the stack back: kept for the next spawn when it has the
    /// default size and the cache has room, freed otherwise.
    pub(crate) fn release(mut self) {
        self.name = None;
        if self.size == crate::STACK_SIZE {
            let mut cache = CACHE.lock();
            if cache.len() < CACHE_MAX {
                cache.push(self);
                return;
            }
        }
        drop(self);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let (Some(frame), Some(unguard)) = (self.guard_frame, crate::platform().unguard) {
            unguard(self.start.as_ptr() as usize + PAGE, frame);
        }
        // SAFETY: `start` came from `alloc` with this very layout.
        unsafe { dealloc(self.start.as_ptr(), Layout::from_size_align_unchecked(BELOW + self.size, PAGE)) };
    }
}

/// What each core runs, for the fault handler: the stack's address and the
/// thread's id (null for a core's boot thread).
struct Running {
    stack: AtomicPtr<Stack>,
    id: AtomicU64,
}

static RUNNING: [Running; MAX_CORES] =
    [const { Running { stack: AtomicPtr::new(core::ptr::null_mut()), id: AtomicU64::new(0) } }; MAX_CORES];

/// Core `core` now runs thread `id` on `stack` (`None`: its boot stack).
pub(crate) fn set_running(core: usize, id: u64, stack: Option<&Stack>) {
    if let Some(r) = RUNNING.get(core) {
        r.id.store(id, Ordering::Relaxed);
        let p = stack.map_or(core::ptr::null_mut(), |s| s as *const Stack as *mut Stack);
        r.stack.store(p, Ordering::Relaxed);
    }
}

/// A stack overflow the guard page caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow<'a> {
    /// The thread.
    pub thread: crate::ThreadId,
    /// Its core.
    pub core: CoreId,
    /// Its name, if it was given one.
    pub name: Option<&'a str>,
    /// Its stack size in bytes.
    pub size: usize,
}

/// Whether a page fault at `addr` on `core` hit the guard page of the
/// thread running there: for the fault handler, which runs on that core
/// while the faulting thread is stopped, so its stack is alive.
pub fn stack_overflow_at(core: CoreId, addr: u64) -> Option<Overflow<'static>> {
    let r = RUNNING.get(core.0 as usize)?;
    let p = r.stack.load(Ordering::Relaxed);
    // SAFETY: `set_running` stored a pointer to the stack of the thread
    // this core runs; that thread is the one that faulted and never runs
    // (or ends) again, so its stack outlives the report.
    let stack: &'static Stack = unsafe { p.as_ref()? };
    let (lo, hi) = stack.guard()?;
    ((lo as u64..hi as u64).contains(&addr)).then(|| Overflow {
        thread: crate::ThreadId(r.id.load(Ordering::Relaxed)),
        core,
        name: stack.name.as_deref(),
        size: stack.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_page_aligned_with_room_below_and_default_ones_are_reused() {
        let s = Stack::new(crate::STACK_SIZE).unwrap();
        assert_eq!(s.base() as usize % PAGE, 0);
        assert_eq!(s.size(), crate::STACK_SIZE);
        assert_eq!(s.guard(), None, "no guard hook on the host");
        s.release();
        assert!(CACHE.lock().len() <= CACHE_MAX);
        let odd = Stack::new(5000).unwrap();
        assert_eq!(odd.size(), 8192);
        odd.release();
    }
}
