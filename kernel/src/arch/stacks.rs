//! Guard pages below the kernel's own stacks: the boot stack (where the
//! app's `main` runs), the fault report's, each core's CPL0 and
//! double-fault stacks (`boot.s` lays each out as a guard page and the
//! stack, and lists the guards for the note), and the boot stacks of
//! secondary cores (from the heap).
//!
//! On the Torito monitor the guards in the first 2 MiB are already
//! unmapped in the page tables it built (the note's `stack_guards`): the
//! guest does nothing. The others, and all of them on other hosts, are
//! unmapped here at boot. Only this core's TLB can hold a translation of
//! them then (no other core has started), and only of those it could have
//! touched; the first four (boot, fault report, core 0's CPL0 and
//! double-fault stacks) are flushed from it.

use core::sync::atomic::{AtomicU64, Ordering};

use torito_abi::boot_info::BootProtocol;

use super::smp::MAX_CORES;

/// Entries of `_torito_stack_guards` (boot.s): boot, fault report, then
/// (CPL0, double fault) per core.
const COUNT: usize = 2 + 2 * MAX_CORES;
const PAGE: u64 = 4096;
/// Where the monitor's page tables map 4 KiB pages.
const FIRST_2MIB: u64 = 2 << 20;

/// Size of the boot stack below `boot_stack_top` (boot.s).
pub const BOOT_STACK_SIZE: usize = 128 * 1024;

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
pub(crate) fn guard_static_stacks(protocol: BootProtocol) {
    // The usual case costs nothing: every guard is in the first 2 MiB, and
    // the monitor has them (the table is not even read: a page touched).
    if protocol == BootProtocol::Direct && super::image_range().1 <= FIRST_2MIB {
        return;
    }
    for (i, page) in table().into_iter().enumerate() {
        if protocol == BootProtocol::Direct && page < FIRST_2MIB {
            continue;
        }
        if crate::memory::guard_page_unflushed(page).is_some() && i < 4 {
            super::gate::invlpg(page);
        }
    }
}

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
    AP_GUARDS.iter().position(|g| g.load(Ordering::Relaxed) == page).map(|c| ("boot stack", c))
}
