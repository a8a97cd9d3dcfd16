//! The local APIC timer: one-shot wake-ups for sleeping threads.
//!
//! One-shot mode, counting at the LAPIC timer's rate. KVM's in-kernel LAPIC
//! and QEMU's LAPIC both count at 1 GHz (their APIC "bus" is 1 ns per
//! cycle); this module assumes that rate under any hypervisor, which covers
//! every host Torito runs on (the Torito monitor, QEMU, Firecracker). When
//! no one gives the TSC frequency, it is calibrated against that counter
//! over 1 ms.
//!
//! Why not TSC-deadline mode: arming it is a `wrmsr`, a CPL0 instruction
//! (~20 µs through the gate where CPL0 is emulated) where one-shot mode is
//! one MMIO store from CPL3 (~3 µs); and under QEMU microvm with KVM its
//! interrupt never arrived (one-shot mode works there).
//!
//! Registers are reached through MMIO at 0xFEE0_0000 (identity-mapped;
//! handled in KVM with an in-kernel LAPIC). The interrupt stub (vector
//! 0x40) sets the core's wake flag (see `smp`) and sends EOI; `gate::idle`
//! checks that flag before halting. Each core programs its own LAPIC (the
//! MMIO page is per CPU); [`send_ipi`] interrupts another core.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::rdtsc;

const LAPIC_BASE: usize = 0xfee0_0000;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const INITIAL_COUNT: usize = 0x380;
const CURRENT_COUNT: usize = 0x390;
const DIVIDE_CONFIG: usize = 0x3e0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
/// ICR: level "assert" (required for fixed IPIs on older APICs).
const ICR_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ID: usize = 0x20;
const DIVIDE_BY_1: u32 = 0b1011;
const TIMER_VECTOR: u32 = torito_abi::boot_info::LAPIC_TIMER_VECTOR as u32;
const MASKED: u32 = 1 << 16;
/// LAPIC timer counts per second under KVM and QEMU.
const LAPIC_HZ: u64 = 1_000_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// Whether the CPU has a local APIC: 0 not looked yet, 1 yes, 2 no. A
/// `cpuid` is emulated on a paravirtual host (~30 µs): asked once.
static PRESENT: AtomicU8 = AtomicU8::new(0);
/// The boot core's LAPIC is software-enabled (by [`init`] or
/// [`enable_boot_core`]): each write of its register is an emulated MMIO
/// store on a paravirtual host (~30 µs), done once.
static BOOT_ENABLED: AtomicBool = AtomicBool::new(false);
/// The monitor set every core's LAPIC up ([`init`]'s `preset`).
static PRESET: AtomicBool = AtomicBool::new(false);
/// Cores whose timer is set up ([`init_timer`]), by core index.
static TIMER_READY: AtomicU32 = AtomicU32::new(0);
const _: () = assert!(super::smp::MAX_CORES <= 32);

fn write(reg: usize, value: u32) {
    // SAFETY: a LAPIC register in the identity-mapped MMIO window; only
    // reached after `init` found a LAPIC (CPUID.1:EDX bit 9).
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

fn read(reg: usize) -> u32 {
    // SAFETY: as in `write`.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

/// Set the timer up; `tsc_khz` is the TSC frequency if known (0 if not).
/// Returns the TSC frequency the timer works with, or `None` when there is
/// no usable LAPIC timer.
///
/// Where the monitor has set every core's LAPIC up already (the Torito
/// monitor's `torito_abi::boot_info::PRESET_LAPIC`), there is a LAPIC,
/// under a hypervisor, and neither the `cpuid` nor any register write here
/// or at a core's first [`arm`] is needed.
pub fn init(tsc_khz: u64) -> Option<u64> {
    let preset = crate::boot::try_info().is_some_and(|b| b.preset & torito_abi::boot_info::PRESET_LAPIC != 0);
    if preset {
        PRESENT.store(1, Ordering::Relaxed);
        PRESET.store(true, Ordering::Relaxed);
        BOOT_ENABLED.store(true, Ordering::Relaxed);
        TIMER_READY.store(u32::MAX, Ordering::Relaxed);
    } else {
        let l1 = core::arch::x86_64::__cpuid(1);
        let has_lapic = l1.edx & (1 << 9) != 0;
        PRESENT.store(if has_lapic { 1 } else { 2 }, Ordering::Relaxed);
        let under_hypervisor = l1.ecx & (1 << 31) != 0;
        // The counting rate is known only under a hypervisor (see above).
        if !has_lapic || !under_hypervisor {
            return None;
        }
        enable_boot_core();
    }
    let khz = match tsc_khz {
        0 => calibrate()?,
        k => k,
    };
    TSC_KHZ.store(khz, Ordering::Relaxed);
    Some(khz)
}

/// Software-enable this core's local APIC (spurious vector 0xff), so it
/// accepts interrupts.
pub fn enable() {
    write(SVR, 0x100 | u32::from(torito_abi::boot_info::LAPIC_SPURIOUS_VECTOR));
}

/// [`enable`] on the boot core, unless done already (by [`init`], or by
/// the first device routed to it). Call it on the boot core only.
pub fn enable_boot_core() {
    if !BOOT_ENABLED.swap(true, Ordering::Relaxed) {
        enable();
    }
}

/// Set this core's timer up (one-shot, divide by 1), once per core: at
/// its first [`arm`], not at boot, since each register write is an
/// emulated MMIO store on a paravirtual host (~30–40 µs) and an appliance
/// may never sleep with a deadline before it answers its first request.
fn init_timer() {
    let bit = 1u32 << super::smp::current_core();
    if TIMER_READY.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
        write(DIVIDE_CONFIG, DIVIDE_BY_1);
        write(LVT_TIMER, TIMER_VECTOR); // one-shot
    }
}

/// Set a secondary core's local APIC up like the boot core's (after
/// [`init`] succeeded there; nothing if the monitor did it); its timer at
/// its first [`arm`].
pub fn init_secondary() {
    if !PRESET.load(Ordering::Relaxed) {
        enable();
    }
}

/// Whether this CPU has a local APIC (interrupts can be delivered).
pub fn available() -> bool {
    match PRESENT.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let has = core::arch::x86_64::__cpuid(1).edx & (1 << 9) != 0;
            PRESENT.store(if has { 1 } else { 2 }, Ordering::Relaxed);
            has
        }
    }
}

/// The TSC frequency the timer works with (after [`init`]).
pub fn tsc_khz() -> Option<u64> {
    Some(TSC_KHZ.load(Ordering::Relaxed)).filter(|&k| k != 0)
}

/// This core's local APIC ID.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Send INIT to the core whose local APIC ID is `apic_id`.
pub fn send_init(apic_id: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, ICR_ASSERT | ICR_INIT);
}

/// Send a start-up IPI: the core starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, ICR_ASSERT | ICR_STARTUP | u32::from(page));
}

/// Send interrupt `vector` to the core whose local APIC ID is `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, ICR_ASSERT | u32::from(vector));
}

/// Measure the TSC against the LAPIC counter over 1 ms (its rate: see the
/// module documentation).
fn calibrate() -> Option<u64> {
    const SPAN: u32 = (LAPIC_HZ / 1000) as u32;
    write(DIVIDE_CONFIG, DIVIDE_BY_1);
    write(LVT_TIMER, TIMER_VECTOR | MASKED);
    write(INITIAL_COUNT, u32::MAX);
    let (t0, c0) = (rdtsc(), read(CURRENT_COUNT));
    let give_up = t0.saturating_add(1 << 34);
    let (mut t1, mut c1) = (t0, c0);
    while c0.wrapping_sub(c1) < SPAN {
        t1 = rdtsc();
        c1 = read(CURRENT_COUNT);
        if t1 > give_up {
            write(INITIAL_COUNT, 0);
            return None;
        }
    }
    write(INITIAL_COUNT, 0);
    // The timer's vector is masked now: set up again at this core's first
    // `arm`, even where the monitor had set it up (`init`'s preset).
    TIMER_READY.fetch_and(!(1u32 << super::smp::current_core()), Ordering::Relaxed);
    let ns = u64::from(c0.wrapping_sub(c1)) * 1_000_000_000 / LAPIC_HZ;
    Some((t1 - t0) * 1_000_000 / ns.max(1))
}

/// The deadline (TSC) each core's timer was last armed for.
static ARMED: [AtomicU64; super::smp::MAX_CORES] = [const { AtomicU64::new(0) }; super::smp::MAX_CORES];

/// Fire this core's timer interrupt when the TSC reaches `deadline` (only
/// after [`init`] returned `Some`). The interrupt sets the core's wake
/// flag; the caller clears that flag before arming.
///
/// A timer already armed for an earlier time that has not come yet is
/// left as it is: it wakes the core first, and the scheduler, which looks
/// at the time after every wake-up, arms again. Each arming is a write to
/// the local APIC, an exit (10–30 µs on a paravirtual host); a core that
/// halts and wakes often (a network appliance under load: once per burst
/// of frames) would otherwise pay one per halt for its 20 ms deadlock
/// check alone.
pub fn arm(deadline: u64) {
    init_timer();
    let armed = ARMED.get(super::smp::current_core());
    let now = rdtsc();
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    if let Some(a) = armed {
        // Only a timer still 50 µs or more away is relied on: one about to
        // fire (or fired since the wake flag was cleared) is armed again.
        let at = a.load(Ordering::Relaxed);
        if at != 0 && at <= deadline && at > now.saturating_add(khz / 20) {
            return;
        }
    }
    let ticks = deadline.saturating_sub(now);
    let ns = (u128::from(ticks) * 1_000_000 / u128::from(khz)).min(u128::from(u64::MAX)) as u64;
    let wanted = ns.saturating_mul(LAPIC_HZ / 1_000_000_000);
    let count = wanted.clamp(1, u64::from(u32::MAX));
    // Remember the deadline only when the counter reaches it exactly (not
    // clamped): a skipped arming must rely on a timer that fires by then.
    if let Some(a) = armed {
        a.store(if count == wanted { deadline } else { 0 }, Ordering::Relaxed);
    }
    // A deadline beyond the counter's range (4.3 s) wakes early; the
    // scheduler checks the time and arms again.
    write(INITIAL_COUNT, count as u32);
}
