//! Stopping the guest with an exit code, on every host.
//!
//! - Torito monitor: one MMIO write to its exit register.
//! - QEMU: `isa-debug-exit` at port 0xf4 (QEMU then exits with
//!   `(code << 1) | 1`); the Torito monitor honours this port too.
//! - Firecracker: the i8042 reset command (0xfe to port 0x64); Firecracker
//!   stops, but does not pass a code on. It acts on it from another thread,
//!   so the kernel waits ~0.1 s before the last resort.
//! - Anything else: a triple fault.

use torito_abi::exit::qemu::DEBUG_EXIT_PORT;

use crate::arch::gate;

/// Stop the guest with `code`, after making every file written durable
/// (with the filesystem unit) and sending the frames the network unit
/// still holds.
pub fn exit(code: i32) -> ! {
    #[cfg(feature = "net")]
    unit_net::flush();
    #[cfg(feature = "fs")]
    if let Err(e) = unit_fs::sync_all() {
        crate::println!("[torito] fs: writing files back at exit: {e}");
    }
    stop(code)
}

/// Stop the guest with `code` at once: for panics and faults, which must
/// not wait for a lock the failed code may hold.
pub(crate) fn stop(code: i32) -> ! {
    #[cfg(not(target_os = "none"))]
    crate::host::exit(code);
    #[cfg(target_os = "none")]
    {
        crate::boot::mark(torito_abi::boot_info::TraceId::AppExit);
        if crate::boot::protocol() == torito_abi::boot_info::BootProtocol::Direct {
            crate::arch::torito::exit(code);
        }
        exit_generic(code)
    }
}

/// The exit sequence for hosts other than the Torito monitor (also the
/// fallback when the boot information cannot be trusted).
pub(crate) fn exit_generic(code: i32) -> ! {
    gate::outl(DEBUG_EXIT_PORT, code as u32);
    gate::outb(0x64, 0xfe);
    // Firecracker acts on the reset from another thread: give it time
    // (~0.1 s; any TSC runs at 1 GHz or more) before the last resort, or
    // it sees the triple fault first and reports an error.
    let t0 = crate::arch::rdtsc();
    while crate::arch::rdtsc().wrapping_sub(t0) < 200_000_000 {
        crate::arch::spin_hint();
    }
    gate::reset()
}
