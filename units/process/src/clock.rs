//! A monotonic clock from the TSC.
//!
//! The TSC frequency comes from the host (the Torito monitor passes KVM's
//! figure in its boot information) or, elsewhere, from CPUID leaves
//! 0x4000_0010 (hypervisor), 0x15 or 0x16, or a calibration against the
//! LAPIC timer, all done by the kernel.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static WALL_NS: AtomicU64 = AtomicU64::new(0);
static WALL_TSC: AtomicU64 = AtomicU64::new(0);

/// The host's wall clock at one TSC reading: `realtime_ns` (ns since the
/// Unix epoch) when the TSC read `tsc`.
pub(crate) fn set_wall_clock(realtime_ns: u64, tsc: u64) {
    WALL_TSC.store(tsc, Ordering::Relaxed);
    WALL_NS.store(realtime_ns, Ordering::Relaxed);
}

/// Wall-clock time in ns since the Unix epoch, `None` when the host gave
/// none (or the TSC frequency is unknown).
pub fn wall_clock_ns() -> Option<u64> {
    let base = WALL_NS.load(Ordering::Relaxed);
    let khz = tsc_khz()?;
    (base != 0).then(|| base + ticks_to_ns(ticks().saturating_sub(WALL_TSC.load(Ordering::Relaxed)), khz))
}

pub(crate) fn set_tsc_khz(khz: u64) {
    TSC_KHZ.store(khz, Ordering::Relaxed);
}

/// TSC frequency in kHz, `None` when unknown.
pub fn tsc_khz() -> Option<u64> {
    Some(TSC_KHZ.load(Ordering::Relaxed)).filter(|&k| k != 0)
}

/// Raw TSC.
pub fn ticks() -> u64 {
    arch::rdtsc()
}

/// Nanoseconds since an arbitrary start (the TSC's), `None` when the TSC
/// frequency is unknown.
pub fn now_ns() -> Option<u64> {
    tsc_khz().map(|k| ticks_to_ns(ticks(), k))
}

/// Convert TSC ticks at `khz` to nanoseconds.
pub fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    (ticks as u128 * 1_000_000 / khz.max(1) as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion() {
        assert_eq!(ticks_to_ns(2_600_000, 2_600_000), 1_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 1_000_000), u64::MAX);
        assert_eq!(ticks_to_ns(1, 0), 1_000_000);
    }

    #[test]
    fn tsc_moves_forward() {
        let a = ticks();
        let b = ticks();
        assert!(b >= a);
    }
}
