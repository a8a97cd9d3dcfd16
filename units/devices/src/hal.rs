//! The `virtio-drivers` HAL for Torito guests: DMA memory from the heap,
//! and guest-physical = virtual (the kernel identity-maps all RAM and the
//! MMIO window, and runs without an IOMMU).
#![allow(unsafe_code)]

use core::alloc::Layout;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// The HAL.
pub struct ToritoHal;

fn layout(pages: usize) -> Layout {
    // A page-aligned multiple of the page size: always a valid layout for
    // the sizes virtqueues ask for.
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("a DMA layout")
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory that no one
// else references until `dma_dealloc`; addresses are identity-mapped, so the
// physical address a device uses is the pointer itself.
unsafe impl Hal for ToritoHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout(pages)) };
        let p = NonNull::new(p).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout(pages)));
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("an MMIO region at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
