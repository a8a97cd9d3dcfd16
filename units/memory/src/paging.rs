//! The kernel's page tables, through the `x86_64` crate.
//!
//! The boot tables (built by the monitor, or laid out at link time for
//! multiboot/PVH) identity-map RAM with user-accessible pages. [`Paging`]
//! wraps them in an `OffsetPageTable` so the kernel can add mappings (guard
//! pages, device windows, stacks) with page-table frames from the
//! [`crate::frame::FrameAllocator`].
//!
//! The kernel runs at CPL3 and edits these tables directly (they are mapped
//! user-writable). A new mapping of a page that was not present needs no TLB
//! flush; removing or changing a mapping does, and `invlpg` is a CPL0
//! instruction, so [`Paging::unmap`] returns the page and leaves the flush to
//! the caller, which owns the CPL0 gate.
#![allow(unsafe_code)]

use x86_64::structures::paging::mapper::{MapToError, Translate, UnmapError};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::frame::FrameAllocator;

/// Flags of ordinary data pages: present, writable, user, and marked
/// accessed and dirty from the start. Nothing in the kernel reads those two
/// bits; preset, they are not written at a first touch (by the CPU, or by
/// KVM on a shadow-paging host, which also maps a faulting page's
/// neighbours only from entries marked accessed).
pub const DATA: PageTableFlags = TABLE.union(PageTableFlags::DIRTY);

/// Flags of an entry that points to a table (present, writable, user, so
/// that CPL3 code can use what it maps; accessed, as [`DATA`]).
const TABLE: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::ACCESSED);

/// Errors of [`Paging`] operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// No frame left for a page table.
    OutOfFrames,
    /// The page is already mapped.
    AlreadyMapped,
    /// The page lies inside a large (2 MiB or 1 GiB) mapping.
    InsideLargePage,
    /// The page is not mapped.
    NotMapped,
}

/// The active page tables.
pub struct Paging {
    table: OffsetPageTable<'static>,
    /// Where physical memory is mapped (0: identity).
    offset: u64,
}

impl Paging {
    /// Wrap the page tables rooted at physical `root`.
    ///
    /// # Safety
    /// `root` must be the active PML4 (or one about to be loaded), all of
    /// physical memory must be mapped at `phys_offset`, and no other
    /// `Paging` may exist for the same tables.
    pub unsafe fn new(root: u64, phys_offset: u64) -> Self {
        let offset = VirtAddr::new(phys_offset);
        let pml4 = (root + phys_offset) as *mut PageTable;
        // SAFETY: the caller guarantees `root` is a page table mapped at
        // `phys_offset` and that this is its only user.
        let table = unsafe { OffsetPageTable::new(&mut *pml4, offset) };
        Self { table, offset: phys_offset }
    }

    /// Physical address `virt` maps to, if any.
    pub fn translate(&self, virt: u64) -> Option<u64> {
        self.table.translate_addr(VirtAddr::new(virt)).map(|p| p.as_u64())
    }

    /// Map the 4 KiB page at `virt` to the frame at `phys`.
    pub fn map(
        &mut self,
        virt: u64,
        phys: u64,
        flags: PageTableFlags,
        frames: &mut FrameAllocator,
    ) -> Result<(), PagingError> {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(phys));
        // Intermediate tables inherit USER so CPL3 can use the mapping.
        let parent = TABLE;
        // SAFETY: mapping a fresh frame to a page changes no existing
        // mapping (an already mapped page is an error below), so no
        // reference elsewhere is invalidated.
        let flush = unsafe { self.table.map_to_with_table_flags(page, frame, flags, parent, frames) };
        match flush {
            // A page that was not present has no TLB entry to flush.
            Ok(f) => {
                f.ignore();
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err(PagingError::OutOfFrames),
            Err(MapToError::PageAlreadyMapped(_)) => Err(PagingError::AlreadyMapped),
            Err(MapToError::ParentEntryHugePage) => Err(PagingError::InsideLargePage),
        }
    }

    /// Remove the mapping of the 4 KiB page at `virt`; returns the frame it
    /// mapped. The caller must flush the TLB entry for `virt`.
    pub fn unmap(&mut self, virt: u64) -> Result<u64, PagingError> {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
        match self.table.unmap(page) {
            Ok((frame, flush)) => {
                flush.ignore();
                Ok(frame.start_address().as_u64())
            }
            Err(UnmapError::ParentEntryHugePage) => Err(PagingError::InsideLargePage),
            Err(_) => Err(PagingError::NotMapped),
        }
    }
}

impl Paging {
    /// Make the 4 KiB page at `virt` a guard page: unmapped, so that any
    /// access faults. A 2 MiB page around it is first split into 4 KiB
    /// pages that map the same frames (one page-table frame from
    /// `frames`). Returns the frame it mapped, for [`Paging::map`] to put
    /// back. The caller must flush the TLB entry for `virt` (which also
    /// drops a 2 MiB entry that covered it).
    pub fn guard(&mut self, virt: u64, frames: &mut FrameAllocator) -> Result<u64, PagingError> {
        match self.unmap(virt) {
            Err(PagingError::InsideLargePage) => {
                self.split_2mib(virt, frames)?;
                self.unmap(virt)
            }
            r => r,
        }
    }

    /// Replace the 2 MiB page mapping `virt` by a table of 512 4 KiB pages
    /// with the same frames and flags. (The `x86_64` crate maps and unmaps
    /// but does not split large pages.) A 1 GiB page is refused.
    fn split_2mib(&mut self, virt: u64, frames: &mut FrameAllocator) -> Result<(), PagingError> {
        let v = VirtAddr::new(virt);
        let offset = self.offset;
        let table_at = |e: &x86_64::structures::paging::page_table::PageTableEntry| {
            (e.addr().as_u64() + offset) as *mut PageTable
        };
        let p4 = self.table.level_4_table_mut();
        let e4 = &p4[v.p4_index()];
        if !e4.flags().contains(PageTableFlags::PRESENT) {
            return Err(PagingError::NotMapped);
        }
        // SAFETY: a present PML4 entry points at a page table, mapped at
        // `offset` (the `new` contract); `&mut self` makes this the only
        // reference made through this `Paging`.
        let p3 = unsafe { &mut *table_at(e4) };
        let e3 = &p3[v.p3_index()];
        let flags3 = e3.flags();
        if !flags3.contains(PageTableFlags::PRESENT) {
            return Err(PagingError::NotMapped);
        }
        if flags3.contains(PageTableFlags::HUGE_PAGE) {
            return Err(PagingError::InsideLargePage);
        }
        // SAFETY: as above, one level down.
        let p2 = unsafe { &mut *table_at(e3) };
        let e2 = &mut p2[v.p2_index()];
        let flags = e2.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return Err(PagingError::NotMapped);
        }
        if !flags.contains(PageTableFlags::HUGE_PAGE) {
            return Ok(());
        }
        let base = e2.addr().as_u64() & !0x1f_ffff;
        let frame = frames.allocate().ok_or(PagingError::OutOfFrames)?;
        // SAFETY: a frame the allocator just handed over, mapped at
        // `offset`, not yet referenced by any table.
        let pt = unsafe { &mut *((frame.start_address().as_u64() + offset) as *mut PageTable) };
        let leaf = flags - PageTableFlags::HUGE_PAGE;
        for (i, e) in pt.iter_mut().enumerate() {
            e.set_addr(PhysAddr::new(base + i as u64 * 4096), leaf);
        }
        let parent = (flags & TABLE) | PageTableFlags::ACCESSED;
        e2.set_frame(frame, parent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PhysRange;

    /// A host buffer that plays physical memory `[0x10_0000, +len)`.
    struct Ram {
        buf: Vec<PageTable>,
    }

    const BASE: u64 = 0x10_0000;

    impl Ram {
        fn new(frames: usize) -> Self {
            Self { buf: (0..frames).map(|_| PageTable::new()).collect() }
        }
        fn offset(&self) -> u64 {
            self.buf.as_ptr() as u64 - BASE
        }
    }

    #[test]
    fn map_translate_unmap() {
        let ram = Ram::new(16);
        let off = ram.offset();
        let mut frames = FrameAllocator::new(off);
        frames.add_range(PhysRange::new(BASE, BASE + 16 * 4096)).unwrap();
        let root = frames.allocate().unwrap().start_address().as_u64();
        // SAFETY: `root` is a zeroed table inside `ram`, which maps all of
        // the fake physical memory at `off`; nothing else uses it.
        let mut p = unsafe { Paging::new(root, off) };

        let data = frames.allocate().unwrap().start_address().as_u64();
        let virt = 0x4000_0000_0123;
        assert_eq!(p.translate(virt), None);
        p.map(virt, data, DATA, &mut frames).unwrap();
        assert_eq!(p.translate(virt), Some(data + 0x123));
        assert_eq!(p.map(virt, data, DATA, &mut frames), Err(PagingError::AlreadyMapped));
        assert_eq!(p.unmap(virt), Ok(data));
        assert_eq!(p.translate(virt), None);
        assert_eq!(p.unmap(virt), Err(PagingError::NotMapped));
    }

    #[test]
    fn a_guard_page_inside_a_2mib_page_splits_it() {
        let ram = Ram::new(8);
        let off = ram.offset();
        let mut frames = FrameAllocator::new(off);
        frames.add_range(PhysRange::new(BASE, BASE + 8 * 4096)).unwrap();
        let root = frames.allocate().unwrap().start_address().as_u64();
        // SAFETY: as above.
        let mut p = unsafe { Paging::new(root, off) };
        // PML4[0] -> PDPT -> PD whose entry 1 is a 2 MiB page at 0x20_0000.
        let pdpt = frames.allocate().unwrap();
        let pd = frames.allocate().unwrap();
        let table = |f: PhysFrame| (f.start_address().as_u64() + off) as *mut PageTable;
        // SAFETY: frames of `ram`, tables nothing else references.
        unsafe {
            (&mut *table(PhysFrame::containing_address(PhysAddr::new(root))))[0].set_frame(pdpt, DATA);
            (&mut *table(pdpt))[0].set_frame(pd, DATA);
            (&mut *table(pd))[1].set_addr(PhysAddr::new(0x20_0000), DATA | PageTableFlags::HUGE_PAGE);
        }
        assert_eq!(p.translate(0x20_5123), Some(0x20_5123));
        assert_eq!(p.unmap(0x20_5000), Err(PagingError::InsideLargePage));
        assert_eq!(p.guard(0x20_5000, &mut frames), Ok(0x20_5000));
        assert_eq!(p.translate(0x20_5123), None, "the guard page");
        assert_eq!(p.translate(0x20_4fff), Some(0x20_4fff), "its neighbours keep their frames");
        assert_eq!(p.translate(0x20_6000), Some(0x20_6000));
        assert_eq!(p.translate(0x3f_ffff), Some(0x3f_ffff));
        // A second guard in the same 2 MiB needs no new table; putting one
        // back maps the frame again.
        let free = frames.free_bytes();
        assert_eq!(p.guard(0x20_9000, &mut frames), Ok(0x20_9000));
        assert_eq!(frames.free_bytes(), free);
        p.map(0x20_5000, 0x20_5000, DATA, &mut frames).unwrap();
        assert_eq!(p.translate(0x20_5123), Some(0x20_5123));
    }

    #[test]
    fn running_out_of_table_frames_is_an_error() {
        let ram = Ram::new(2);
        let off = ram.offset();
        let mut frames = FrameAllocator::new(off);
        frames.add_range(PhysRange::new(BASE, BASE + 2 * 4096)).unwrap();
        let root = frames.allocate().unwrap().start_address().as_u64();
        // SAFETY: as above.
        let mut p = unsafe { Paging::new(root, off) };
        // One frame left, but a fresh mapping needs three tables.
        assert_eq!(p.map(0x1000_0000, BASE, DATA, &mut frames), Err(PagingError::OutOfFrames));
    }
}
