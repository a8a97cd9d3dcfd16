//! The kernel's memory service: brings the memory unit up from the boot
//! memory map and offers frames and page mappings to the rest of the kernel
//! and to apps.
//!
//! Usable RAM is the boot map minus the first MiB (firmware, boot data,
//! page tables) and the kernel image. The heap gets most of the largest
//! range (see `unit_memory::plan`); the frame allocator the rest.

use spin::Mutex;
use unit_memory::frame::{FrameAllocator, PhysRange};
use unit_memory::heap::HeapStats;
use unit_memory::paging::{self, Paging, PagingError};

use crate::arch;

struct Memory {
    frames: FrameAllocator,
    paging: Paging,
}

static MEMORY: Mutex<Option<Memory>> = Mutex::new(None);

const LOW_RESERVED: u64 = 0x10_0000;

pub(crate) fn init() {
    let info = crate::boot::info();
    let (image_start, image_end) = arch::image_range();
    let image = PhysRange::new(image_start, image_end);
    let mut usable = [PhysRange::default(); 2 * torito_abi::boot_info::MAX_MEM_REGIONS];
    let mut n = 0;
    for r in info.regions().iter().filter(|r| r.is_usable()) {
        let range = PhysRange::new(r.base.max(LOW_RESERVED), r.base.saturating_add(r.len));
        for piece in range.subtract(image) {
            if !piece.is_empty() && n < usable.len() {
                usable[n] = piece;
                n += 1;
            }
        }
    }
    let Some((layout, frames)) = unit_memory::plan(&usable[..n], 0) else {
        panic!("no usable memory in the boot memory map ({} regions)", info.regions().len());
    };
    // SAFETY: the heap range is usable RAM from the boot map, outside the
    // kernel image and the first MiB, identity-mapped and writable, and
    // given to nothing else (the frame allocator gets the other ranges).
    #[cfg(target_os = "none")]
    unsafe {
        unit_memory::heap::HEAP.init(layout.heap.start as usize, layout.heap.len() as usize)
    };
    // On the host (a `cargo check` or an app's unit tests) the heap is the
    // system allocator and nothing boots.
    #[cfg(not(target_os = "none"))]
    let _ = layout;
    // SAFETY: `page_table_root` is the PML4 the loader activated; RAM is
    // identity-mapped (offset 0) and this is the only `Paging`.
    let paging = unsafe { Paging::new(info.page_table_root, 0) };
    *MEMORY.lock() = Some(Memory { frames, paging });
    // On the host (unit tests) nothing booted: no stacks of the kernel's.
    if cfg!(target_os = "none") {
        arch::stacks::guard_static_stacks(crate::boot::protocol());
    }
}

fn with<R>(f: impl FnOnce(&mut Memory) -> R) -> R {
    let mut guard = MEMORY.lock();
    f(guard.as_mut().expect("memory used before initialisation"))
}

/// Take a free 4 KiB frame; returns its physical address.
pub fn allocate_frame() -> Option<u64> {
    with(|m| m.frames.allocate().map(|f| f.start_address().as_u64()))
}

/// Bytes the frame allocator can still hand out.
pub fn free_frame_bytes() -> u64 {
    with(|m| m.frames.free_bytes())
}

/// Map the 4 KiB page at `virt` to the frame at `phys` (user, writable).
pub fn map_page(virt: u64, phys: u64) -> Result<(), PagingError> {
    with(|m| m.paging.map(virt, phys, paging::DATA, &mut m.frames))
}

/// Remove the mapping of the page at `virt` (and flush it from the TLB);
/// returns the frame it mapped.
pub fn unmap_page(virt: u64) -> Result<u64, PagingError> {
    let frame = with(|m| m.paging.unmap(virt))?;
    arch::gate::invlpg(virt);
    Ok(frame)
}

/// Make the page at `virt` a guard page (unmapped; a 2 MiB page around it
/// is split) and flush it from this core's TLB; returns the frame it
/// mapped, for [`unguard_page`]. Other cores flush it themselves before
/// they rely on it (`arch::gate::invlpg`).
pub fn guard_page(virt: u64) -> Option<u64> {
    let frame = with(|m| m.paging.guard(virt, &mut m.frames)).ok()?;
    arch::gate::invlpg(virt);
    Some(frame)
}

/// [`guard_page`] without the TLB flush: for a page no core can have a
/// translation of (the caller says why).
pub(crate) fn guard_page_unflushed(virt: u64) -> Option<u64> {
    with(|m| m.paging.guard(virt, &mut m.frames)).ok()
}

/// Map a guard page back to its frame (a page that was not present needs
/// no flush).
pub fn unguard_page(virt: u64, frame: u64) {
    let _ = with(|m| m.paging.map(virt, frame, paging::DATA, &mut m.frames));
}

/// The physical address `virt` maps to.
pub fn translate(virt: u64) -> Option<u64> {
    with(|m| m.paging.translate(virt))
}

/// Heap usage.
pub fn heap_stats() -> HeapStats {
    unit_memory::heap::stats()
}
