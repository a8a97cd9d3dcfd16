//! Raw access to physical memory through the `phys_offset` mapping.
//!
//! The only place the memory unit dereferences an address it computed.
#![allow(unsafe_code)]

/// Read a `u64` at virtual address `addr`.
///
/// Callers pass addresses of frames they own (the frame allocator's free
/// list): mapped, 8-byte aligned, not shared.
pub(crate) fn read_u64(addr: u64) -> u64 {
    // SAFETY: see the function contract; the address is frame-aligned and the
    // frame is owned by the caller, so no other reference aliases it.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Write a `u64` at virtual address `addr`; same contract as [`read_u64`].
pub(crate) fn write_u64(addr: u64, value: u64) {
    // SAFETY: as in `read_u64`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}
