//! Guard pages below the kernel's own stacks: the boot stack (where the
//! app's `main` runs), the fault report's, each core's CPL0 and
//! double-fault stacks (`boot.s` lays each out as a guard page and the
//! stack, and lists the guards for the note), and the boot stacks of
//! secondary cores (from the heap).
//!
//! On the Torito monitor they are already unmapped in the page tables it
//! built (the note's `stack_guards`): the guest does nothing. On other
//! hosts the kernel boots on its link-time tables, whose first 2 MiB are
//! 4 KiB pages: the guards there are cleared from that table at boot (the
//! static stacks lie there unless baked-in files push them beyond; those
//! go without). Only this core's TLB can hold a translation of them then
//! (no other core has started), and only of those it could have touched:
//! the first four (boot, fault report, core 0's CPL0 and double-fault
//! stacks) are flushed from it. This path stays out of the page-table
//! code of the memory unit, so that a small appliance's image, and the
//! pages it touches, do not grow.

use core::sync::atomic::{AtomicU64, Ordering};

use torito_abi::boot_info::BootProtocol;

use super::smp::MAX_CORES;

/// Entries of `_torito_stack_guards` (boot.s): boot, fault report, then
/// (CPL0, double fault) per core.
const COUNT: usize = 2 + 2 * MAX_CORES;
const PAGE: u64 = 4096;
/// Where the monitor's page tables map 4 KiB pages.
const FIRST_2MIB: u64 = 2 << 20;

/// The guard page below each secondary core's boot stack (0: none).
static AP_GUARDS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

/// On the host (an app's unit tests) there are no such stacks.
#[cfg(not(target_os = "none"))]
fn table() -> [u64; COUNT] {
    [0; COUNT]
}

#[cfg(target_os = "none")]
fn table() -> [u64; COUNT] {
    unsafe extern "C" {
        static _torito_stack_guards: [u64; COUNT];
    }
    // SAFETY: boot.s defines the table with exactly COUNT entries in
    // read-only data; reading it copies plain integers.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(_torito_stack_guards)) }
}

/// Unmap the static stacks' guard pages the boot path left mapped.
#[inline]
pub(crate) fn guard_static_stacks(protocol: BootProtocol) {
    if protocol != BootProtocol::Direct {
        guard_in_boot_tables();
    }
}

/// Kept out of the direct entry's path (its code would spread the pages
/// a small appliance touches at boot).
#[cold]
#[inline(never)]
#[cfg_attr(target_os = "none", unsafe(link_section = ".torito_cold"))]
fn guard_in_boot_tables() {
    for (i, page) in table().into_iter().enumerate() {
        if page != 0 && page < FIRST_2MIB {
            clear_boot_pt0_entry((page / PAGE) as usize);
            if i < 4 {
                super::gate::invlpg(page);
            }
        }
    }
}

/// Clear entry `i` of the link-time table of the first 2 MiB.
#[cfg(target_os = "none")]
fn clear_boot_pt0_entry(i: usize) {
    unsafe extern "C" {
        static mut _torito_boot_pt0: [u64; 512];
    }
    if i < 512 {
        // SAFETY: the link-time table is identity-mapped and user-writable
        // and is the active one on this boot path; clearing an entry of a
        // page nothing uses (a guard) changes no other mapping. The caller
        // flushes what may be cached.
        unsafe {
            core::ptr::write_volatile((core::ptr::addr_of_mut!(_torito_boot_pt0) as *mut u64).add(i), 0)
        };
    }
}

#[cfg(not(target_os = "none"))]
fn clear_boot_pt0_entry(_: usize) {}

/// Leave the page below a secondary core's boot stack (which starts at
/// `base`) unmapped; the core has not started, so no TLB holds it.
pub(crate) fn guard_ap_stack(core: usize, base: u64) {
    let page = base - PAGE;
    if core < MAX_CORES && crate::memory::guard_page_unflushed(page).is_some() {
        AP_GUARDS[core].store(page, Ordering::Relaxed);
    }
}

/// Which of the kernel's own stacks has its guard page at `addr`, if any:
/// `(what, core)`.
#[cfg_attr(target_os = "none", unsafe(link_section = ".torito_cold"))]
pub fn guard_hit(addr: u64) -> Option<(&'static str, usize)> {
    let page = addr & !(PAGE - 1);
    if page == 0 {
        return None;
    }
    let t = table();
    if page == t[0] && page != 0 {
        return Some(("boot stack", 0));
    }
    if page == t[1] {
        return Some(("fault report stack", 0));
    }
    if let Some(i) = t[2..].iter().position(|&g| g == page) {
        return Some((if i % 2 == 0 { "CPL0 stack" } else { "double-fault stack" }, i / 2));
    }
    AP_GUARDS.iter().position(|g| g.load(Ordering::Relaxed) == page).map(|c| ("scheduler's boot stack", c))
}
