//! Each vCPU's local APIC as the guest finds it at entry
//! (`torito_abi::boot_info::PRESET_LAPIC`): software-enabled, its timer
//! one-shot on the kernel's vector, counting undivided.
//!
//! The kernel would write these three registers itself, and on a
//! paravirtual host each write is an emulated store, an exit (15–20 µs
//! here): the `SVR` as the process unit starts, the divider and the timer's
//! vector at a core's first wake-up deadline. Set with the vCPU's
//! `KVM_SET_LAPIC` instead, they cost the launch two system calls.

use torito_abi::boot_info::{LAPIC_SPURIOUS_VECTOR, LAPIC_TIMER_VECTOR};

/// Spurious-interrupt vector register (bit 8: software enable).
const SVR: usize = 0xf0;
/// The timer's local vector table entry (one-shot, unmasked: mode and mask
/// bits clear).
const LVT_TIMER: usize = 0x320;
/// The timer's divide configuration.
const DIVIDE_CONFIG: usize = 0x3e0;
/// `DIVIDE_CONFIG`: divide by 1 (the kernel counts at the APIC's 1 GHz).
const DIVIDE_BY_1: u32 = 0b1011;
const SOFTWARE_ENABLE: u32 = 1 << 8;

/// Set `regs`, a `KVM_GET_LAPIC` register page, up as the kernel expects
/// it; every other register is left as KVM made it (the APIC ID above
/// all).
pub fn preset(regs: &mut [u8; 1024]) {
    let mut put = |at: usize, v: u32| regs[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(SVR, SOFTWARE_ENABLE | u32::from(LAPIC_SPURIOUS_VECTOR));
    put(LVT_TIMER, u32::from(LAPIC_TIMER_VECTOR));
    put(DIVIDE_CONFIG, DIVIDE_BY_1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(regs: &[u8; 1024], at: usize) -> u32 {
        u32::from_le_bytes(regs[at..at + 4].try_into().unwrap())
    }

    /// The three registers hold what the kernel would write; the rest of
    /// the page (the ID at 0x20, a masked LINT0 at 0x350) is untouched.
    #[test]
    fn the_preset_writes_three_registers_and_nothing_else() {
        let mut regs = [0u8; 1024];
        regs[0x20..0x24].copy_from_slice(&(3u32 << 24).to_le_bytes());
        regs[0x350..0x354].copy_from_slice(&(1u32 << 16).to_le_bytes());
        let before = regs;
        preset(&mut regs);
        assert_eq!(reg(&regs, SVR), 0x1ff, "enabled, spurious vector 0xff");
        assert_eq!(reg(&regs, LVT_TIMER), 0x40, "one-shot, unmasked, vector 0x40");
        assert_eq!(reg(&regs, DIVIDE_CONFIG), 0b1011, "divide by 1");
        for (i, (a, b)) in before.iter().zip(regs.iter()).enumerate() {
            if !(SVR..SVR + 4).contains(&i)
                && !(LVT_TIMER..LVT_TIMER + 4).contains(&i)
                && !(DIVIDE_CONFIG..DIVIDE_CONFIG + 4).contains(&i)
            {
                assert_eq!(a, b, "byte {i:#x} changed");
            }
        }
    }
}
