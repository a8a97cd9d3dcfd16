//! Guest-physical memory map used by the Torito monitor's direct 64-bit entry.
//!
//! ```text
//! 0x0000_0000  page 0: never mapped (null-pointer guard)
//! 0x0000_1000  BootInfo (one page)
//! 0x0000_2000  command line (one page, NUL-terminated)
//! 0x0000_3000  PML4
//! 0x0000_4000  PDPT (covers 512 GiB)
//! 0x0000_5000  PT for the first 2 MiB (4 KiB pages, page 0 absent)
//! 0x0000_6000  page directories, one per GiB of mapped address space, then
//!              4 KiB-page tables of the 2 MiB regions holding the kernel's
//!              stack guard pages beyond the first 2 MiB (see the note)
//! 0x0010_0000  kernel image (linked here, see linker/torito.ld)
//!   ...        usable RAM
//! 0xC000_0000  MMIO window (3 GiB .. 4 GiB): monitor devices, never RAM
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```
//!
//! Everything is identity-mapped (virtual = physical) with user-accessible
//! pages, since the kernel and app run at CPL3.

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large (2 MiB) page.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// Where the monitor writes [`crate::boot_info::BootInfo`].
pub const BOOT_INFO_ADDR: u64 = 0x1000;
/// Where the monitor writes the kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x2000;
/// Maximum command line length in bytes, without the terminating NUL.
pub const CMDLINE_MAX: usize = 4095;
/// Root page table (PML4).
pub const PML4_ADDR: u64 = 0x3000;
/// The single page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x4000;
/// Page table for the first 2 MiB, so that page 0 can stay unmapped.
pub const PT0_ADDR: u64 = 0x5000;
/// First page directory; directory `i` maps `[i GiB, (i+1) GiB)`.
pub const PD_BASE_ADDR: u64 = 0x6000;
/// Number of page directories the area below the kernel can hold.
pub const MAX_PDS: u64 = (KERNEL_BASE - PD_BASE_ADDR) / PAGE_SIZE;

/// Physical (and virtual) address the kernel image is linked at.
pub const KERNEL_BASE: u64 = 0x10_0000;

/// Start of the MMIO window: no RAM is placed in `[MMIO_BASE, 4 GiB)`.
pub const MMIO_BASE: u64 = 0xC000_0000;
/// End of the MMIO window, where RAM above [`MMIO_BASE`] resumes.
pub const MMIO_END: u64 = 0x1_0000_0000;
/// Base of the Torito monitor's own register page (see [`crate::mmio`]).
pub const TORITO_MMIO_BASE: u64 = MMIO_BASE;

/// First virtio-mmio device window of the Torito monitor; device `i` is at
/// `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE`, with interrupt line `i`
/// (delivered as an MSI to vector `0x50 + i` on core 0).
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_0000;
/// Distance between virtio-mmio device windows.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// Most virtio-mmio devices the monitor offers.
pub const VIRTIO_MMIO_MAX: u64 = 16;

/// Smallest guest RAM the monitor accepts.
pub const MIN_RAM: u64 = 2 * 1024 * 1024;
/// Largest guest RAM the monitor accepts (bounded by [`MAX_PDS`] less the
/// 1 GiB MMIO window).
pub const MAX_RAM: u64 = (MAX_PDS - 1) << 30;

/// The guest RAM ranges `(start, length)` for `ram` bytes of RAM: RAM below
/// [`MMIO_BASE`] first, the rest from 4 GiB up. The second range is empty
/// when everything fits below the window.
pub const fn ram_ranges(ram: u64) -> [(u64, u64); 2] {
    if ram <= MMIO_BASE { [(0, ram), (MMIO_END, 0)] } else { [(0, MMIO_BASE), (MMIO_END, ram - MMIO_BASE)] }
}

/// Highest guest-physical address (exclusive) that the boot page tables must
/// map for `ram` bytes of RAM: at least the MMIO window, and all RAM.
pub const fn mapped_end(ram: u64) -> u64 {
    let [_, (high, high_len)] = ram_ranges(ram);
    if high_len == 0 { MMIO_END } else { high + high_len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), [(0, 128 << 20), (MMIO_END, 0)]);
        assert_eq!(mapped_end(128 << 20), 4 << 30);
    }

    #[test]
    fn large_ram_skips_the_mmio_window() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, 3 << 30));
        assert_eq!(r[1], (4 << 30, 1 << 30));
        assert_eq!(mapped_end(4 << 30), 5 << 30);
    }

    #[test]
    fn tables_fit_below_the_kernel() {
        let pds = mapped_end(MAX_RAM).div_ceil(1 << 30);
        assert!(PD_BASE_ADDR + pds * PAGE_SIZE <= KERNEL_BASE);
        const { assert!(BOOT_INFO_ADDR + PAGE_SIZE <= CMDLINE_ADDR) };
    }
}
