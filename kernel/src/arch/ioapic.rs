//! The I/O APIC, where QEMU and Firecracker connect virtio-mmio interrupt
//! lines: route a pin to a device vector on a core (MMIO at 0xFEC0_0000,
//! reached from CPL3 like the local APIC).
//!
//! Pins are programmed edge-triggered: a virtio-mmio line stays high until
//! the driver acknowledges the device's interrupt status, and drivers
//! acknowledge before looking at the used ring, so every completion after
//! the acknowledgement makes a new edge (level-triggered, the line would
//! re-interrupt from EOI until the driver thread acknowledges).

const BASE: usize = 0xfec0_0000;
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const VERSION: u32 = 0x01;
const REDIRECTION: u32 = 0x10;

fn select(reg: u32) {
    // SAFETY: the IOAPIC's register-select window, identity-mapped in the
    // MMIO range; only called where the platform has an IOAPIC.
    unsafe { core::ptr::write_volatile((BASE + IOREGSEL) as *mut u32, reg) }
}

fn read(reg: u32) -> u32 {
    select(reg);
    // SAFETY: as in `select`.
    unsafe { core::ptr::read_volatile((BASE + IOWIN) as *const u32) }
}

fn write(reg: u32, value: u32) {
    select(reg);
    // SAFETY: as in `select`.
    unsafe { core::ptr::write_volatile((BASE + IOWIN) as *mut u32, value) }
}

/// Deliver pin `pin` as `vector` to the core whose local APIC ID is
/// `apic_id` (fixed, physical destination, edge, active high). Returns
/// `false` when there is no IOAPIC or no such pin.
pub fn route(pin: u32, vector: u8, apic_id: u32) -> bool {
    let version = read(VERSION);
    let pins = ((version >> 16) & 0xff) + 1;
    if version == u32::MAX || pin >= pins {
        return false;
    }
    write(REDIRECTION + 2 * pin + 1, apic_id << 24);
    write(REDIRECTION + 2 * pin, u32::from(vector));
    true
}
