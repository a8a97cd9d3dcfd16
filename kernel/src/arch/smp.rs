//! Several cores: the per-core blocks laid out in `boot.s`, wake-ups
//! between cores, and starting the secondary cores.
//!
//! Each core's GS base points at its block (the Torito monitor sets it per
//! vCPU; the 32-bit paths write the MSR), so [`current_core`] is one
//! `gs:`-relative load at CPL3. A wake-up is an IPI through the local APIC
//! (MMIO from CPL3): its stub in `boot.s` sets the core's wake flag, which
//! the idle gate checks before halting.
//!
//! Secondary cores start with one register write on the Torito monitor
//! (it starts each vCPU at the note's `ap_entry`, in long mode at CPL3);
//! elsewhere with INIT-SIPI (see [`start_secondary`]).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, Ordering};

use super::apic;

/// Cores the per-core tables in `boot.s` have room for.
pub const MAX_CORES: usize = 16;
const PERCPU_STRIDE: usize = 64;
const PC_STACK: usize = 24;
/// Interrupt vector of a wake-up (`boot.s` routes it to the wake stub).
const WAKE_VECTOR: u8 = 0x41;
/// CPL3 stack of a secondary core's boot (idle) thread.
const AP_STACK_SIZE: usize = 64 * 1024;

/// Local APIC ID of each core.
static APIC_IDS: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];

/// The calling core's index.
#[inline]
pub fn current_core() -> usize {
    let id: u64;
    // SAFETY: every entry path sets GS base to the core's block before any
    // Rust code runs; offset 0 holds the core index (boot.s: PC_ID).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) id, options(nostack, readonly, preserves_flags));
    }
    id as usize
}

/// Forget the calling core's pending wake-ups.
#[inline]
pub fn clear_wake() {
    // SAFETY: offset 16 of the core's block is its wake flag (boot.s:
    // PC_WAKE), written only by this core (here and in its stubs).
    unsafe {
        core::arch::asm!("mov dword ptr gs:[16], 0", options(nostack, preserves_flags));
    }
}

/// Interrupt core `core` so that it leaves its idle halt.
pub fn kick(core: usize) {
    if core < MAX_CORES {
        apic::send_ipi(APIC_IDS[core].load(Ordering::Relaxed), WAKE_VECTOR);
    }
}

fn percpu_block(core: usize) -> *mut u64 {
    unsafe extern "C" {
        static _torito_percpu: u8;
    }
    (core::ptr::addr_of!(_torito_percpu) as usize + core * PERCPU_STRIDE) as *mut u64
}

/// Give secondary core `core` (with local APIC ID `apic_id`) a stack for
/// its boot thread.
fn prepare(core: usize, apic_id: u32) {
    let stack: &'static mut [core::mem::MaybeUninit<u8>] = Box::leak(Box::new_uninit_slice(AP_STACK_SIZE));
    let top = (stack.as_mut_ptr() as usize + AP_STACK_SIZE) & !15;
    APIC_IDS[core].store(apic_id, Ordering::Relaxed);
    // SAFETY: `core < MAX_CORES`, so the block exists in boot.s; the core
    // has not started, so nothing else reads or writes its stack slot.
    unsafe { core::ptr::write_volatile(percpu_block(core).byte_add(PC_STACK), top as u64) };
}

/// Start cores `1..count` on the Torito monitor (vCPU `i` has local APIC
/// ID `i`). Returns the number of cores.
pub fn start_secondary_torito(count: usize) -> usize {
    let count = count.clamp(1, MAX_CORES);
    for core in 1..count {
        prepare(core, core as u32);
    }
    if count > 1 {
        super::torito::start_cores(count);
    }
    count
}
