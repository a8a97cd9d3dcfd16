//! The Torito monitor's register page (see `torito_abi::mmio`). Each call is
//! one 64-bit store, one VM exit; no CPL0 code runs.

use torito_abi::layout::TORITO_MMIO_BASE;
use torito_abi::mmio;

fn write(reg: u64, value: u64) {
    // SAFETY: the monitor maps nothing at its register page, so the store
    // exits to the monitor and touches no memory; the page is inside the
    // identity-mapped MMIO window on the direct boot path, the only one that
    // calls this.
    unsafe { core::ptr::write_volatile((TORITO_MMIO_BASE + reg) as *mut u64, value) }
}

/// Hand `bytes` (at most [`mmio::CONSOLE_MAX_LEN`]) to the monitor's console.
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(mmio::CONSOLE_MAX_LEN) {
        write(mmio::CONSOLE_WRITE, mmio::console_value(chunk.as_ptr() as u64, chunk.len()));
    }
}

/// Hand the monitor the register batch at guest-physical `gpa` (see
/// `torito_abi::mmio::MMIO_BATCH`): one exit for many device accesses.
pub fn mmio_batch(gpa: u64) {
    write(mmio::MMIO_BATCH, gpa);
}

/// Hand the monitor a backtrace (at most `mmio::BACKTRACE_MAX` addresses;
/// the first a faulting instruction's when `exact_first`), which it
/// prints symbolized (see `torito_abi::mmio::BACKTRACE`).
pub fn backtrace(addrs: &[u64], exact_first: bool) {
    let n = addrs.len().min(mmio::BACKTRACE_MAX);
    write(mmio::BACKTRACE, mmio::backtrace_value(addrs.as_ptr() as u64, n, exact_first));
}

/// Ask the monitor to stop the guest with `code`.
pub fn exit(code: i32) {
    write(mmio::EXIT, u64::from(code as u32));
}

/// Ask the monitor to run `count` cores in all (see
/// `torito_abi::mmio::START_CORES`).
pub fn start_cores(count: usize) {
    write(mmio::START_CORES, count as u64);
}

/// Ask the monitor for a test MSI: `vector` to the core with local APIC ID
/// `apic_id`, `delay_us` from now (see `torito_abi::mmio::TEST_INTERRUPT`).
pub fn test_interrupt(vector: u8, apic_id: u8, delay_us: u32) {
    write(mmio::TEST_INTERRUPT, mmio::test_interrupt_value(vector, apic_id, delay_us));
}
