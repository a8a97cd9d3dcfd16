//! The page tables of the direct 64-bit entry: an identity map of the
//! guest's RAM (and the 4 GiB below it), all pages user-accessible, since
//! the kernel runs at CPL3. The kernel keeps them; it maps more itself.

use std::ops::Range;

use torito_abi::layout::{
    KERNEL_BASE, LARGE_PAGE_SIZE, PAGE_SIZE, PD_BASE_ADDR, PDPT_ADDR, PML4_ADDR, PT0_ADDR, mapped_end,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::IntoBytes;

use crate::error::Error;

/// Present, writable, user-accessible.
const PTE_PWU: u64 = 0x7;
/// Accessed: preset in every entry, dirty too in those that map a page
/// ([`PTE_PAGE`]). Neither the CPU nor, on a shadow-paging host, KVM then
/// writes them at a first touch, and KVM's shadow MMU maps a faulting
/// page's neighbours (its PTE prefetch) only from entries marked accessed.
const PTE_A: u64 = 0x20;
const PTE_D: u64 = 0x40;
/// A table entry (points to the next level).
const PTE_TABLE: u64 = PTE_PWU | PTE_A;
/// An entry that maps a page.
const PTE_PAGE: u64 = PTE_PWU | PTE_A | PTE_D;
/// Large page (in a page directory).
const PTE_PS: u64 = 0x80;
/// Page 0, the null guard: present for CPL0 only and read-only, so that
/// any access from the kernel's CPL3 code faults as if it were absent.
/// Present, because KVM's shadow MMU maps a faulting page's neighbours by
/// walking its aligned group of eight entries from the first and stops at
/// the first it cannot map: an absent page 0 kept it from mapping the
/// boot information and page tables beside it (the guest faulted on each
/// of them, ~5 faults at ~30 µs on the Intel host). Its host page is made
/// present too ([`write_page_tables`]).
const PTE_NULL_GUARD: u64 = 0x1 | PTE_A | PTE_D;

/// The page tables for `ram` bytes: an identity map of
/// `[0, mapped_end(ram))`, 2 MiB pages except the first 2 MiB (4 KiB pages,
/// page 0 for CPL0 only: [`PTE_NULL_GUARD`]), the 2 MiB regions that hold
/// the kernel's stack guard pages `guards` (4 KiB pages, the guards absent)
/// and those that overlap `small` (4 KiB pages): their tables placed after
/// the page directories, while there is room below the kernel. Returns
/// `(guest address, table)` pairs.
///
/// `small` is where the kernel's heap starts, and with it its first thread
/// stacks, each with a guard page the kernel unmaps. In a 2 MiB page that
/// means splitting it: rewriting a page-directory entry, after which a
/// shadow-paging host (KVM's shadow MMU under PVM) drops the guest's
/// mappings well beyond that region and the guest faults them back in
/// one by one (7 more faults, ~40 µs each, in httpd's start on an Intel
/// host). A guard page in a 4 KiB table costs one entry's write.
pub fn page_tables(ram: u64, guards: &[u64], small: Range<u64>) -> Vec<(u64, Vec<u64>)> {
    let gib = mapped_end(ram).div_ceil(1 << 30);
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PTE_TABLE;
    let mut pdpt = vec![0u64; 512];
    let mut tables = Vec::with_capacity(3 + gib as usize);
    for g in 0..gib {
        let pd_addr = PD_BASE_ADDR + g * PAGE_SIZE;
        pdpt[g as usize] = pd_addr | PTE_TABLE;
        let pd: Vec<u64> =
            (0..512u64).map(|i| ((g << 30) + i * LARGE_PAGE_SIZE) | PTE_PAGE | PTE_PS).collect();
        tables.push((pd_addr, pd));
    }
    tables[0].1[0] = PT0_ADDR | PTE_TABLE;
    let absent = |page: u64| page == 0 || guards.contains(&page);
    let mut pt0: Vec<u64> =
        (0..512u64).map(|i| if absent(i * PAGE_SIZE) { 0 } else { (i * PAGE_SIZE) | PTE_PAGE }).collect();
    pt0[0] = PTE_NULL_GUARD;
    // Regions beyond the first 2 MiB with guards get a table of their own.
    let end = mapped_end(ram);
    let first_small = small.start & !(LARGE_PAGE_SIZE - 1);
    // (Not beyond RAM: no heap there.)
    let small_regions = (first_small..small.end.min(ram)).step_by(LARGE_PAGE_SIZE as usize);
    let mut regions: Vec<u64> = guards
        .iter()
        .map(|g| g & !(LARGE_PAGE_SIZE - 1))
        .chain(small_regions)
        .filter(|&r| r >= LARGE_PAGE_SIZE && r < end)
        .collect();
    regions.sort_unstable();
    regions.dedup();
    let mut next_table = PD_BASE_ADDR + gib * PAGE_SIZE;
    for region in regions {
        if next_table + PAGE_SIZE > KERNEL_BASE {
            break;
        }
        let pt: Vec<u64> = (0..512u64)
            .map(|i| region + i * PAGE_SIZE)
            .map(|page| if absent(page) { 0 } else { page | PTE_PAGE })
            .collect();
        let (g, i) = ((region >> 30) as usize, ((region >> 21) & 511) as usize);
        tables[g].1[i] = next_table | PTE_TABLE;
        tables.push((next_table, pt));
        next_table += PAGE_SIZE;
    }
    tables.push((PML4_ADDR, pml4));
    tables.push((PDPT_ADDR, pdpt));
    tables.push((PT0_ADDR, pt0));
    tables
}

/// Write [`page_tables`] into guest memory, and page 0's first bytes
/// (zeros, as they were), so that its host page is present: KVM maps a
/// guest page beside a faulting one only then.
pub fn write_page_tables(
    mem: &GuestMemoryMmap,
    ram: u64,
    guards: &[u64],
    small: Range<u64>,
) -> Result<(), Error> {
    mem.write_obj(0u64, GuestAddress(0)).map_err(|e| Error::GuestWrite(e.to_string()))?;
    for (addr, table) in page_tables(ram, guards, small) {
        mem.write_slice(table.as_bytes(), GuestAddress(addr))
            .map_err(|e| Error::GuestWrite(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[(u64, Vec<u64>)], addr: u64, i: usize) -> u64 {
        tables.iter().find(|(a, _)| *a == addr).unwrap().1[i]
    }

    /// Walk the tables like the MMU does.
    fn translate(tables: &[(u64, Vec<u64>)], va: u64) -> Option<u64> {
        let pml4e = entry(tables, PML4_ADDR, ((va >> 39) & 511) as usize);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = entry(tables, pml4e & !0xfff, ((va >> 30) & 511) as usize);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = entry(tables, pdpte & !0xfff, ((va >> 21) & 511) as usize);
        if pde & 1 == 0 {
            return None;
        }
        assert_eq!(pde & 4, 4, "user bit");
        if pde & PTE_PS != 0 {
            return Some((pde & !0x1f_ffff & !PTE_PS & !0xfff) + (va & 0x1f_ffff));
        }
        let pte = entry(tables, pde & !0xfff, ((va >> 12) & 511) as usize);
        // What CPL3 code can reach: user pages.
        if pte & 5 != 5 { None } else { Some((pte & !0xfff) + (va & 0xfff)) }
    }

    #[test]
    fn identity_map_with_a_null_guard() {
        let t = page_tables(128 << 20, &[], 0..0);
        assert_eq!(translate(&t, 0), None);
        assert_eq!(translate(&t, 0xfff), None);
        // Present for CPL0 only, read-only (KVM's prefetch of its group).
        assert_eq!(entry(&t, PT0_ADDR, 0), 0x1 | PTE_A | PTE_D);
        for va in [0x1000, 0x10_0123, 0x20_0000, 0x7ff_ffff, 0xc000_0008, 0xffff_f000] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 1 << 32), None);
    }

    #[test]
    fn stack_guards_in_the_first_2mib_stay_unmapped() {
        let t = page_tables(128 << 20, &[0x15_0000, 0x16_3000, 0x40_0000], 0..0);
        assert_eq!(translate(&t, 0x15_0008), None);
        assert_eq!(translate(&t, 0x16_3ff8), None);
        assert_eq!(translate(&t, 0x14_fff8), Some(0x14_fff8));
        assert_eq!(translate(&t, 0x15_1000), Some(0x15_1000));
        // Beyond the first 2 MiB, a table of its own for the region.
        assert_eq!(translate(&t, 0x40_0008), None);
        assert_eq!(translate(&t, 0x40_1008), Some(0x40_1008));
        assert_eq!(translate(&t, 0x5f_f008), Some(0x5f_f008));
        assert_eq!(translate(&t, 0x60_0008), Some(0x60_0008), "the next region keeps its 2 MiB page");
        assert!(t.iter().all(|(a, v)| a + v.len() as u64 * 8 <= KERNEL_BASE));
    }

    /// Every present entry is marked accessed, every entry that maps a
    /// page dirty too (KVM's shadow MMU prefetches only from accessed
    /// entries); absent ones stay zero.
    #[test]
    fn entries_come_accessed_and_pages_dirty() {
        let t = page_tables(128 << 20, &[0x15_0000, 0x40_0000], 0x21_d000..0x61_d000);
        for (at, table) in &t {
            for &e in table.iter().filter(|&&e| e != 0) {
                assert_eq!(e & PTE_A, PTE_A, "{e:#x} in the table at {at:#x}");
                // PML4 and PDPT entries point to tables; a page directory's
                // to a table or (PS) a 2 MiB page; the 4 KiB tables' to pages.
                let maps_a_page = match *at {
                    PML4_ADDR | PDPT_ADDR => false,
                    a if (PD_BASE_ADDR..PD_BASE_ADDR + 4 * PAGE_SIZE).contains(&a) => e & PTE_PS != 0,
                    _ => true,
                };
                assert_eq!(e & PTE_D != 0, maps_a_page, "{e:#x} in the table at {at:#x}");
            }
        }
    }

    /// Where the heap starts, 4 KiB pages from the start: a guard page
    /// there needs no 2 MiB page split.
    #[test]
    fn the_heap_start_is_mapped_with_4kib_pages() {
        let t = page_tables(128 << 20, &[], 0x21_d000..0x61_d000);
        let pd = |va: u64| entry(&t, PD_BASE_ADDR, ((va >> 21) & 511) as usize);
        for region in [0x20_0000, 0x40_0000, 0x60_0000] {
            assert_eq!(pd(region) & PTE_PS, 0, "{region:#x}: a table, not a 2 MiB page");
            for va in [region, region + 0x1_2345, region + LARGE_PAGE_SIZE - 8] {
                assert_eq!(translate(&t, va), Some(va), "{va:#x}");
            }
        }
        assert_eq!(pd(0x80_0000) & PTE_PS, PTE_PS, "beyond: a 2 MiB page");
        // Beyond RAM, nothing to split.
        let small = page_tables(4 << 20, &[], 0x21_d000..0x61_d000);
        assert_eq!(small.len(), page_tables(4 << 20, &[], 0x21_d000..0x40_0000).len());
        assert!(t.iter().all(|(a, v)| a + v.len() as u64 * 8 <= KERNEL_BASE));
    }

    #[test]
    fn large_guests_map_ram_above_4g() {
        let t = page_tables(4 << 30, &[], 0..0);
        assert_eq!(translate(&t, (5 << 30) - 8), Some((5 << 30) - 8));
        assert_eq!(translate(&t, 5 << 30), None);
        // Every table fits below the kernel.
        assert!(t.iter().all(|(a, v)| a + v.len() as u64 * 8 <= torito_abi::layout::KERNEL_BASE));
    }
}
