//! Torito memory unit: frames, page tables and the heap.
//!
//! - [`frame::FrameAllocator`]: 4 KiB physical frames from the boot memory
//!   map, handed out by a bump pointer and recycled through a free list kept
//!   inside the free frames themselves.
//! - [`paging::Paging`]: the kernel's page tables through the `x86_64`
//!   crate's `OffsetPageTable` (the boot tables identity-map all RAM).
//! - [`heap`]: the global allocator (`linked_list_allocator`), so apps can
//!   use `alloc` (`Vec`, `String`, `Box`). Running out of heap ends in a
//!   panic that says how much was asked and how much was free.
//!
//! [`plan`] splits usable RAM between the heap and the frame allocator.
//! Everything is built so it can be tested on the host: physical memory is
//! reached through a `phys_offset` (0 in the guest, the address of a host
//! buffer in tests).

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod frame;
pub mod heap;
pub mod paging;
mod raw;

use frame::{FrameAllocator, PhysRange};

/// How RAM was divided by [`plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Heap range (guest-physical, identity-mapped).
    pub heap: PhysRange,
    /// Bytes left to the frame allocator.
    pub frames_bytes: u64,
}

/// Fraction of the largest usable range kept for frames (page tables, DMA
/// buffers, thread stacks later): 1/`FRAME_SHARE`, at least [`MIN_FRAMES`].
pub const FRAME_SHARE: u64 = 8;
/// Lower bound on the bytes kept for the frame allocator.
pub const MIN_FRAMES: u64 = 1 << 20;

/// Decide the heap range and build the frame allocator from the usable
/// ranges (already clipped to exclude the kernel image and boot data).
///
/// The heap takes the bottom of the largest range, less a share kept for
/// frames at its top; the frame allocator gets every other byte. Keeping
/// the heap low keeps the memory touched at boot low, where the monitor
/// registers RAM first.
pub fn plan(usable: &[PhysRange], phys_offset: u64) -> Option<(MemoryLayout, FrameAllocator)> {
    let largest = usable.iter().copied().filter(|r| !r.is_empty()).max_by_key(|r| r.len())?;
    let keep = (largest.len() / FRAME_SHARE).max(MIN_FRAMES).min(largest.len() / 2);
    let heap_end = frame::align_down(largest.end - keep, frame::FRAME_SIZE);
    let heap = PhysRange::new(largest.start, heap_end);
    if heap.is_empty() {
        return None;
    }
    let mut frames = FrameAllocator::new(phys_offset);
    for r in usable {
        let r = if *r == largest { PhysRange::new(heap_end, r.end) } else { *r };
        // Ranges beyond the allocator's capacity are left unused.
        if frames.add_range(r).is_err() {
            break;
        }
    }
    let layout = MemoryLayout { heap, frames_bytes: frames.free_bytes() };
    Some((layout, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_the_largest_range_for_the_heap() {
        let usable = [PhysRange::new(0x20_0000, 0x40_0000), PhysRange::new(0x100_0000, 0x900_0000)];
        let (layout, frames) = plan(&usable, 0).unwrap();
        assert_eq!(layout.heap.start, 0x100_0000);
        assert_eq!(layout.heap.len(), 0x800_0000 - 0x100_0000);
        // 2 MiB from the small range plus 1/8 of the large one.
        assert_eq!(frames.free_bytes(), 0x20_0000 + 0x100_0000);
        assert_eq!(layout.frames_bytes, frames.free_bytes());
    }

    #[test]
    fn plan_on_nothing_is_none() {
        assert!(plan(&[], 0).is_none());
        assert!(plan(&[PhysRange::new(0x1000, 0x1000)], 0).is_none());
    }
}
