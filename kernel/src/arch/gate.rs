//! The CPL3 → CPL0 gate.
//!
//! At CPL3 on a paravirtual KVM host, `int n` raises #UD, `syscall` #GP, and
//! `in`/`out`/`cli`/`sti` trap; exceptions, however, are delivered normally.
//! So a gate call is a `ud2` with a magic value in `r10d` and an operation in
//! `eax`: the #UD stub in `boot.s` checks the magic, performs the one
//! privileged instruction, skips the `ud2` and returns with `iretq`. A `ud2`
//! without the magic is reported as an invalid-opcode fault.
//!
//! Each call costs one exception round trip (~20 µs where CPL0 is emulated,
//! well under 1 µs on hardware virtualization), so callers batch: the serial
//! console sends a whole buffer with one `rep outsb`.

use core::arch::asm;

const GATE_MAGIC: u32 = 0x5447_5445;

const OP_OUTB: u32 = 0;
const OP_OUTL: u32 = 1;
const OP_OUTSB: u32 = 2;
const OP_INB: u32 = 3;
const OP_INVLPG: u32 = 4;
const OP_RESET: u32 = 5;
const OP_IDLE: u32 = 6;
const OP_WRMSR: u32 = 7;
const OP_INL: u32 = 8;

/// Write a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the gate performs `out dx, al` at CPL0 and returns; it reads
    // only the registers named here and clobbers only eax.
    unsafe {
        asm!("ud2", inout("eax") OP_OUTB => _, in("r10d") GATE_MAGIC,
             in("edx") u32::from(port), in("edi") u32::from(value));
    }
}

/// Write a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as `outb`, with `out dx, eax`.
    unsafe {
        asm!("ud2", inout("eax") OP_OUTL => _, in("r10d") GATE_MAGIC,
             in("edx") u32::from(port), in("edi") value);
    }
}

/// Write every byte of `bytes` to one I/O port (`rep outsb`).
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: the gate runs `rep outsb`, which reads `len` bytes from `ptr`
    // (a valid slice, mapped and user-accessible; SMAP is off) and advances
    // rsi and rcx, which are declared clobbered.
    unsafe {
        asm!("ud2", inout("eax") OP_OUTSB => _, in("r10d") GATE_MAGIC,
             in("edx") u32::from(port), inout("rsi") bytes.as_ptr() => _,
             inout("rcx") bytes.len() => _);
    }
}

/// Read a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u32;
    // SAFETY: the gate runs `in al, dx` and returns the byte in eax.
    unsafe {
        asm!("ud2", inout("eax") OP_INB => value, in("r10d") GATE_MAGIC,
             in("edx") u32::from(port));
    }
    value as u8
}

/// Read a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the gate runs `in eax, dx` and returns the value in eax.
    unsafe {
        asm!("ud2", inout("eax") OP_INL => value, in("r10d") GATE_MAGIC,
             in("edx") u32::from(port));
    }
    value
}

/// Invalidate the TLB entry of `addr` after a mapping changed.
pub fn invlpg(addr: u64) {
    // SAFETY: `invlpg` only drops a cached translation.
    unsafe {
        asm!("ud2", inout("eax") OP_INVLPG => _, in("r10d") GATE_MAGIC, in("rdi") addr);
    }
}

/// Halt until the next interrupt, unless a wake-up (timer or another
/// core's IPI) has arrived since the core's wake flag was cleared (checked
/// at CPL0, with interrupts off, right before `hlt`, so a wake-up that
/// arrives in between is not lost).
pub fn idle() {
    // SAFETY: the gate checks a flag, then runs `sti; hlt`; the interrupt
    // that wakes it is handled by the stubs and the gate returns normally.
    unsafe {
        asm!("ud2", inout("eax") OP_IDLE => _, in("r10d") GATE_MAGIC);
    }
}

/// Write `value` to model-specific register `msr`. The caller checks
/// (CPUID) that the MSR exists: writing one that does not is a #GP, which
/// is reported as a CPU exception.
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the gate runs `wrmsr` with ecx and edx:eax from these
    // registers; it clobbers eax and edx.
    unsafe {
        asm!("ud2", inout("eax") OP_WRMSR => _, in("r10d") GATE_MAGIC, in("ecx") msr,
             in("rdi") value, out("edx") _);
    }
}

/// Triple-fault the machine: the last way to stop when nothing else did.
pub fn reset() -> ! {
    // SAFETY: the gate loads an empty IDT and faults; it does not return.
    unsafe {
        asm!("ud2", in("eax") OP_RESET, in("r10d") GATE_MAGIC, options(noreturn));
    }
}
