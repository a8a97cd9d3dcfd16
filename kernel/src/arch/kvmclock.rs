//! The wall clock from KVM's paravirtual clock (kvmclock), where the
//! hypervisor offers it (QEMU with KVM, Firecracker): the time of day at
//! the clock's zero plus its system time, read once and paired with the
//! TSC. The Torito monitor hands its clock over in `BootInfo` instead, and
//! QEMU without KVM has the CMOS RTC.
//!
//! Three MSR writes through the gate: register the two structures KVM
//! fills, then stop the updates once read.

use core::cell::UnsafeCell;

use super::{gate, rdtsc};

const MSR_WALL_CLOCK: u32 = 0x4b56_4d00;
const MSR_SYSTEM_TIME: u32 = 0x4b56_4d01;
/// CPUID 0x4000_0001 EAX: KVM_FEATURE_CLOCKSOURCE2 (the MSRs above).
const CLOCKSOURCE2: u32 = 1 << 3;

/// `pvclock_wall_clock`.
#[repr(C, align(16))]
struct WallClock {
    version: u32,
    sec: u32,
    nsec: u32,
}

/// `pvclock_vcpu_time_info` (32 bytes; must not cross a page).
#[repr(C, align(32))]
struct TimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

struct Shared<T>(UnsafeCell<T>);

// SAFETY: written by the hypervisor and read by `wall_clock` on core 0
// during start-up only.
unsafe impl<T> Sync for Shared<T> {}

static WALL: Shared<WallClock> = Shared(UnsafeCell::new(WallClock { version: 0, sec: 0, nsec: 0 }));
static TIME: Shared<TimeInfo> = Shared(UnsafeCell::new(TimeInfo {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
}));

fn available() -> bool {
    use core::arch::x86_64::__cpuid;
    if __cpuid(1).ecx & (1 << 31) == 0 {
        return false;
    }
    let sig = __cpuid(0x4000_0000);
    let kvm = sig.ebx == u32::from_le_bytes(*b"KVMK") && sig.ecx == u32::from_le_bytes(*b"VMKV");
    kvm && sig.eax >= 0x4000_0001 && __cpuid(0x4000_0001).eax & CLOCKSOURCE2 != 0
}

/// `(ns since the Unix epoch, TSC at that moment)`, when kvmclock is
/// offered.
pub fn wall_clock() -> Option<(u64, u64)> {
    if !available() {
        return None;
    }
    let (wall, time) = (WALL.0.get(), TIME.0.get());
    // Statics are identity-mapped: their addresses are guest-physical.
    gate::wrmsr(MSR_WALL_CLOCK, wall as u64);
    gate::wrmsr(MSR_SYSTEM_TIME, time as u64 | 1);
    let v = |p: *const u32| {
        // SAFETY: a field of a static the hypervisor writes; read volatile.
        unsafe { core::ptr::read_volatile(p) }
    };
    let result = (0..100).find_map(|_| {
        // SAFETY: the statics live for ever; fields are read volatile as
        // the pvclock protocol asks (version even and unchanged around the
        // reads).
        unsafe {
            let (wv, tv) = (v(&raw const (*wall).version), v(&raw const (*time).version));
            let (sec, nsec) = (v(&raw const (*wall).sec), v(&raw const (*wall).nsec));
            let stamp = core::ptr::read_volatile(&raw const (*time).tsc_timestamp);
            let system = core::ptr::read_volatile(&raw const (*time).system_time);
            let mul = v(&raw const (*time).tsc_to_system_mul);
            let shift = core::ptr::read_volatile(&raw const (*time).tsc_shift);
            let tsc = rdtsc();
            let stable = wv & 1 == 0
                && tv & 1 == 0
                && tv != 0
                && wv == v(&raw const (*wall).version)
                && tv == v(&raw const (*time).version);
            stable.then(|| {
                let delta = tsc.saturating_sub(stamp);
                let delta = if shift >= 0 { delta << shift } else { delta >> -shift };
                let since_zero = system + ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
                (u64::from(sec) * 1_000_000_000 + u64::from(nsec) + since_zero, tsc)
            })
        }
    });
    gate::wrmsr(MSR_SYSTEM_TIME, 0);
    result.filter(|&(ns, _)| ns != 0)
}
