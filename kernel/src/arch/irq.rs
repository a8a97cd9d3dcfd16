//! Device interrupts: 32 vectors (0x50–0x6F) for MSIs, the way virtio
//! devices on KVM signal (an MSI names a core's local APIC and a vector).
//!
//! The stub in `boot.s` sets the vector's bit in the receiving core's
//! pending word (per-core block), sets the core's wake flag (so a halted
//! core leaves its idle gate), marks the process unit's "notified" flag of
//! that core (so threads waiting on the core look again), and sends EOI.
//! A driver thread on that core waits with [`wait`] and consumes the event
//! with [`take`]. Interrupts are delivered to the core the MSI names, so a
//! driver runs its waiting thread on the core its device interrupts.

/// First device vector.
pub const FIRST_VECTOR: u8 = 0x50;
/// Number of device vectors.
pub const VECTORS: u8 = 32;
const PC_IRQ: usize = 48;
#[cfg(feature = "process")]
const PC_NOTIFY: usize = 56;

/// Take (clear) the pending mark of `vector` on the calling core; whether
/// it was set.
pub fn take(vector: u8) -> bool {
    let Some(bit) = vector.checked_sub(FIRST_VECTOR).filter(|&b| b < VECTORS) else { return false };
    let was: u8;
    // SAFETY: offset 48 of the core's block (GS base) is its pending word
    // (boot.s: PC_IRQ), changed only by locked bit operations.
    unsafe {
        core::arch::asm!(
            "lock btr dword ptr gs:[{off}], {bit:e}",
            "setc {was}",
            off = const PC_IRQ,
            bit = in(reg) u32::from(bit),
            was = out(reg_byte) was,
            options(nostack),
        );
    }
    was != 0
}

/// The MSI address and data that deliver `vector` to the core whose local
/// APIC ID is `apic_id` (fixed delivery, physical destination, edge).
pub fn msi(apic_id: u32, vector: u8) -> (u64, u32) {
    (0xfee0_0000 | (u64::from(apic_id & 0xff) << 12), u32::from(vector))
}

/// Point core `core`'s interrupt stubs at the process unit's notification
/// flag of that core.
#[cfg(feature = "process")]
pub(crate) fn connect(core: usize, flag: *const core::sync::atomic::AtomicBool) {
    let slot = super::smp::percpu_field(core, PC_NOTIFY);
    // SAFETY: `percpu_field` returns a field of an existing block; the
    // stubs only read it, and it is written here once at start-up.
    unsafe { core::ptr::write_volatile(slot, flag as u64) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Wait (letting the core's other threads run, the core halting when none
/// can) until `vector` has fired on this core, and consume it.
pub fn wait(vector: u8) {
    #[cfg(feature = "process")]
    if unit_process::current_thread().is_some() {
        unit_process::wait_for_event(|| take(vector).then_some(()));
        return;
    }
    // No scheduler: halt until the next interrupt, as long as it is not
    // this one (the idle gate returns at once if any interrupt came since
    // the wake flag was cleared).
    loop {
        super::smp::clear_wake();
        if take(vector) {
            return;
        }
        super::gate::idle();
    }
}
