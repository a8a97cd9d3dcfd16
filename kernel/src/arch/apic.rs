//! The local APIC timer in TSC-deadline mode: one-shot wake-ups for
//! sleeping threads.
//!
//! Registers are reached through MMIO at 0xFEE0_0000 (identity-mapped,
//! ~3 µs per access from CPL3 where CPL0 is emulated; handled by KVM's
//! in-kernel LAPIC on the Torito monitor's split irqchip). The deadline is
//! written with `wrmsr` through the gate. The interrupt stub (vector 0x40)
//! sets `_torito_timer_fired` and sends EOI; `gate::idle` checks that flag
//! before halting.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::gate;

const LAPIC_BASE: usize = 0xfee0_0000;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const TIMER_VECTOR: u32 = 0x40;
const TSC_DEADLINE_MODE: u32 = 0b10 << 17;
const IA32_TSC_DEADLINE: u32 = 0x6e0;

static READY: AtomicBool = AtomicBool::new(false);

fn fired_flag() -> &'static AtomicU32 {
    unsafe extern "C" {
        static _torito_timer_fired: AtomicU32;
    }
    // SAFETY: a 4-byte-aligned, zero-initialised `.bss` word that only the
    // timer stub (a plain store) and this module touch.
    unsafe { &*core::ptr::addr_of!(_torito_timer_fired) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: a LAPIC register in the identity-mapped MMIO window; only
    // reached after `init` found a LAPIC with TSC-deadline mode.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

/// Set the timer up if the CPU has a LAPIC with TSC-deadline mode
/// (CPUID.1: EDX bit 9, ECX bit 24); returns whether it did.
pub fn init() -> bool {
    let l1 = core::arch::x86_64::__cpuid(1);
    if l1.edx & (1 << 9) == 0 || l1.ecx & (1 << 24) == 0 {
        return false;
    }
    write(SVR, 0x1ff); // software enable, spurious vector 0xff
    write(LVT_TIMER, TIMER_VECTOR | TSC_DEADLINE_MODE);
    READY.store(true, Ordering::Release);
    true
}

/// Whether [`init`] set the timer up.
pub fn timer_ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Fire the timer interrupt when the TSC reaches `deadline`.
pub fn arm(deadline: u64) {
    fired_flag().store(0, Ordering::SeqCst);
    gate::wrmsr(IA32_TSC_DEADLINE, deadline.max(1));
}

/// Whether the timer fired since it was last armed.
pub fn fired() -> bool {
    fired_flag().load(Ordering::SeqCst) != 0
}
