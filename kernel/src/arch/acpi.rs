//! Which CPUs the firmware describes: the local APIC IDs in ACPI's MADT,
//! read with the `acpi` crate (QEMU and Firecracker; the Torito monitor
//! says the vCPU count in `BootInfo` instead).
//!
//! The RSDP is found while the loader's low memory is still mapped (see
//! `boot::_torito_generic_entry`): PVH hands its address over, otherwise
//! the BIOS areas are scanned. Tables below 4 GiB are identity-mapped by
//! the link-time page tables, so "mapping" one is taking its address.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

static RSDP: AtomicU64 = AtomicU64::new(0);

/// Identity-mapped physical memory, for the `acpi` crate.
#[derive(Clone, Copy, Debug)]
struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = NonNull::new(phys as *mut T).expect("the ACPI tables are not at address 0");
        // SAFETY: physical memory below 4 GiB is identity-mapped and
        // readable at CPL3 on the paths that call this (multiboot, PVH);
        // the crate asks only for regions the firmware's tables name.
        unsafe { PhysicalMapping::new(phys, virt, size, size, Identity) }
    }

    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
}

/// Record where the RSDP is: `given` (PVH's `rsdp_paddr`), else the result
/// of a scan of the BIOS areas. Only while page 0 is still mapped (the
/// scan reads the EBDA pointer there).
pub fn find_rsdp(given: u64) {
    let addr = if given != 0 {
        given
    } else {
        // SAFETY: the BIOS areas (EBDA, 0xE0000–0xFFFFF) are identity-mapped
        // and readable; see `Identity`.
        match unsafe { acpi::rsdp::Rsdp::search_for_on_bios(Identity) } {
            Ok(m) => m.physical_start() as u64,
            Err(_) => 0,
        }
    };
    RSDP.store(addr, Ordering::Relaxed);
}

/// The local APIC IDs of the usable CPUs in the MADT, boot CPU included,
/// into `out`; returns how many (0 when there is no RSDP or MADT).
pub fn cpu_apic_ids(out: &mut [u32]) -> usize {
    let rsdp = RSDP.load(Ordering::Relaxed);
    if rsdp == 0 {
        return 0;
    }
    // SAFETY: `rsdp` is an RSDP the firmware placed (validated by the scan,
    // checksummed again by the crate), in identity-mapped memory.
    let Ok(tables) = (unsafe { AcpiTables::from_rsdp(Identity, rsdp as usize) }) else {
        return 0;
    };
    let Ok(madt) = tables.find_table::<Madt>() else {
        return 0;
    };
    let mut n = 0;
    for entry in madt.get().entries() {
        let (id, flags) = match entry {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        // Bit 0: enabled; bit 1: can be brought online.
        if flags & 0b11 != 0 && n < out.len() {
            out[n] = id;
            n += 1;
        }
    }
    n
}
