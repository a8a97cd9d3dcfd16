//! Registers of the Torito monitor's own device page at
//! [`crate::layout::TORITO_MMIO_BASE`].
//!
//! Every register is written with one 64-bit store, so each operation costs
//! exactly one VM exit. Reads return zero.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Console write: the value is `addr | (len << 48)` where `addr` is the
/// guest-physical address of `len` bytes of UTF-8 text (`len` < 65536).
/// One exit per write, not per byte.
pub const CONSOLE_WRITE: u64 = 0x00;
/// Exit: the low 32 bits of the value are the guest's exit code (an `i32`).
pub const EXIT: u64 = 0x08;
/// Trace marker: the value is a [`crate::boot_info::TraceId`]; the monitor
/// stamps it with its own clock. Guests normally record marks in
/// [`crate::boot_info::BootInfo::trace`] instead, which costs no exit.
pub const TRACE: u64 = 0x10;
/// Start secondary cores: the value is the number of cores that should be
/// running in all (core 0 included); the monitor starts vCPUs
/// `1..value` that are not running yet, at the note's `ap_entry`, each on
/// its own thread. Values beyond `BootInfo::cpu_count` are clipped.
pub const START_CORES: u64 = 0x18;
/// Test interrupt, the counterpart of QEMU's `pc-testdev` for tests of the
/// interrupt path: the monitor sends an MSI (through KVM, as its devices
/// will) with vector = bits 0–7 to the local APIC ID in bits 8–15, after
/// the delay in µs in bits 32–63 (at most one second).
pub const TEST_INTERRUPT: u64 = 0x20;
/// Device register batch: the value is the guest-physical address of a
/// [`Batch`] header followed by its [`BatchOp`]s. The monitor performs the
/// operations on its virtio-mmio devices in order, exactly as if the guest
/// had made each access itself, writes each read's value into its op and
/// the outcome into [`Batch::status`]: one exit for a device's whole setup
/// (a virtio-net driver makes ~120 register accesses, each an exit).
pub const MMIO_BATCH: u64 = 0x28;
/// Backtrace: the value is `addr | exact << 47 | count << 48` where `addr`
/// is the guest-physical address of `count` (at most
/// [`BACKTRACE_MAX`]) little-endian `u64` return addresses, innermost
/// first; `exact` says the first is an instruction's own address (a
/// faulting RIP), not a return address. The monitor prints each as
/// `#N 0xADDR function at file:line` (with inlined frames) from the ELF
/// it loaded, on the console. One exit.
pub const BACKTRACE: u64 = 0x30;
/// Debug trap: the value is the guest-virtual address of a
/// [`DebugFrame`] on the CPL0 stack. Written by the kernel's #BP and #DB
/// stubs only while a debugger is attached (the monitor, serving
/// `--gdb`, sets the byte at the ELF symbol [`DEBUGGER_SYMBOL`]): the
/// vCPU stops until the debugger resumes it; the stub then reloads the
/// registers from the frame (which the debugger may have changed) and
/// returns from the exception. One exit per stop.
pub const DEBUG_TRAP: u64 = 0x38;
/// Size of the register page.
pub const SIZE: u64 = 0x1000;

/// The kernel's byte that routes #BP and #DB to [`DEBUG_TRAP`] when
/// non-zero (to the fault report otherwise).
pub const DEBUGGER_SYMBOL: &str = "_torito_debugger";

/// What the #BP and #DB stubs leave on the stack for [`DEBUG_TRAP`]: the
/// registers they saved, the vector, then the CPU's interrupt frame
/// (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DebugFrame {
    /// r15 down to r8, as pushed (`r[0]` is r15).
    pub r15_to_r8: [u64; 8],
    /// rbp.
    pub rbp: u64,
    /// rdi.
    pub rdi: u64,
    /// rsi.
    pub rsi: u64,
    /// rdx.
    pub rdx: u64,
    /// rcx.
    pub rcx: u64,
    /// rbx.
    pub rbx: u64,
    /// rax.
    pub rax: u64,
    /// 1 (#DB) or 3 (#BP).
    pub vector: u64,
    /// Where the trapped code resumes (after the `int3` for #BP).
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// Most addresses in one [`BACKTRACE`].
pub const BACKTRACE_MAX: usize = 64;

/// Encode a [`BACKTRACE`] write.
pub const fn backtrace_value(addr: u64, count: usize, exact_first: bool) -> u64 {
    (addr & 0x7fff_ffff_ffff) | (exact_first as u64) << 47 | ((count as u64 & 0xffff) << 48)
}

/// Decode a [`BACKTRACE`] write: `(addr, count, exact_first)`.
pub const fn backtrace_decode(value: u64) -> (u64, usize, bool) {
    (value & 0x7fff_ffff_ffff, (value >> 48) as usize, value & (1 << 47) != 0)
}

/// Most operations in one [`MMIO_BATCH`].
pub const BATCH_MAX_OPS: u32 = 256;

/// [`Batch::status`]: every operation was done.
pub const BATCH_OK: u32 = 0;
/// [`Batch::status`] bit set when the batch stopped: the low bits hold the
/// index of the operation that could not be done (an address outside the
/// virtio devices, a bad size), or [`BATCH_MAX_OPS`] for a bad count.
pub const BATCH_FAILED: u32 = 1 << 31;

/// The head of a register batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Batch {
    /// Operations that follow (at most [`BATCH_MAX_OPS`]).
    pub count: u32,
    /// Written by the monitor: [`BATCH_OK`] or [`BATCH_FAILED`] | index.
    pub status: u32,
}

/// One register access of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BatchOp {
    /// Guest-physical address of the register.
    pub addr: u64,
    /// The value written, or (written by the monitor) the value read.
    pub value: u32,
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// 1: write, 0: read.
    pub write: u8,
    /// Zero.
    pub reserved: u16,
}

/// Operations of a device's snapshot batch ([`snapshot_ops`]).
pub const SNAPSHOT_OPS: usize = 32;

/// The batch that reads the fixed registers of the virtio-mmio (version 2)
/// device at `base`, in this order: magic, version and device ID; device
/// features, low then high half (each after a write of its selector); each
/// of the first four queues' maximum size (each after a write of the queue
/// selector); the configuration generation; the first 64 bytes of
/// configuration space. The kernel's first batch for a device on the
/// Torito monitor; the monitor runs it itself at launch for the first
/// devices ([`crate::boot_info::DeviceSnapshot`]), which spares the guest
/// that exit.
pub fn snapshot_ops(base: u64) -> [BatchOp; SNAPSHOT_OPS] {
    let r = |off: u64| BatchOp { addr: base + off, size: 4, ..BatchOp::default() };
    let w = |off: u64, value: u32| BatchOp { addr: base + off, value, size: 4, write: 1, reserved: 0 };
    let mut ops = [BatchOp::default(); SNAPSHOT_OPS];
    let mut n = 0;
    let mut push = |op: BatchOp| {
        ops[n] = op;
        n += 1;
    };
    // Magic, version, device ID.
    push(r(0x000));
    push(r(0x004));
    push(r(0x008));
    // Device features, both halves.
    for half in 0..2 {
        push(w(0x014, half));
        push(r(0x010));
    }
    // Queue maximum sizes.
    for q in 0..4 {
        push(w(0x030, q));
        push(r(0x034));
    }
    // Configuration generation, then configuration space.
    push(r(0x0fc));
    for i in 0..16 {
        push(r(0x100 + 4 * i));
    }
    ops
}

/// Largest length a single [`CONSOLE_WRITE`] can carry.
pub const CONSOLE_MAX_LEN: usize = 0xffff;

/// Encode a console write.
pub const fn console_value(addr: u64, len: usize) -> u64 {
    (addr & 0xffff_ffff_ffff) | ((len as u64 & 0xffff) << 48)
}

/// Decode a console write into `(addr, len)`.
pub const fn console_decode(value: u64) -> (u64, usize) {
    (value & 0xffff_ffff_ffff, (value >> 48) as usize)
}

/// Encode a [`TEST_INTERRUPT`] request.
pub const fn test_interrupt_value(vector: u8, apic_id: u8, delay_us: u32) -> u64 {
    vector as u64 | (apic_id as u64) << 8 | (delay_us as u64) << 32
}

/// Decode a [`TEST_INTERRUPT`] request: `(vector, apic_id, delay_us)`.
pub const fn test_interrupt_decode(value: u64) -> (u8, u8, u32) {
    (value as u8, (value >> 8) as u8, (value >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_round_trip() {
        let v = console_value(0x12_3456, 300);
        assert_eq!(console_decode(v), (0x12_3456, 300));
        assert_eq!(console_decode(console_value(0x1000, CONSOLE_MAX_LEN)).1, 0xffff);
    }

    #[test]
    fn backtrace_round_trip() {
        assert_eq!(backtrace_decode(backtrace_value(0x20_0000, 12, true)), (0x20_0000, 12, true));
        assert_eq!(backtrace_decode(backtrace_value(0x20_0000, 3, false)), (0x20_0000, 3, false));
    }

    /// The snapshot batch: its registers in the documented order, each
    /// selector written just before the register it selects.
    #[test]
    fn the_snapshot_batch_reads_the_fixed_registers() {
        let base = 0xd000_1000;
        let ops = snapshot_ops(base);
        let offsets: [(u64, u8, u32); SNAPSHOT_OPS] = ops.map(|o| (o.addr - base, o.write, o.value));
        assert_eq!(offsets[..3], [(0, 0, 0), (4, 0, 0), (8, 0, 0)]);
        assert_eq!(offsets[3..7], [(0x14, 1, 0), (0x10, 0, 0), (0x14, 1, 1), (0x10, 0, 0)]);
        for q in 0..4u32 {
            assert_eq!(offsets[7 + 2 * q as usize..9 + 2 * q as usize], [(0x30, 1, q), (0x34, 0, 0)]);
        }
        assert_eq!(offsets[15], (0xfc, 0, 0));
        for i in 0..16 {
            assert_eq!(offsets[16 + i], (0x100 + 4 * i as u64, 0, 0));
        }
        assert!(ops.iter().all(|o| o.size == 4 && o.reserved == 0));
    }

    #[test]
    fn test_interrupt_round_trip() {
        assert_eq!(test_interrupt_decode(test_interrupt_value(0x51, 1, 50_000)), (0x51, 1, 50_000));
    }
}
