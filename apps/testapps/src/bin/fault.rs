//! Raises the CPU exception named on the command line, to check that each
//! is reported with vector, error code, RIP (and CR2 for a page fault) and
//! exits with 128 + vector:
//! `pf` (write through a null pointer), `gp` (non-canonical address),
//! `ud` (invalid opcode), `de` (divide by zero), `df` (double fault: the
//! CPL0 stack pointer in the TSS is broken, so delivering any exception
//! faults again), `stack` (main runs past the bottom of the boot stack,
//! 4 KiB frame after 4 KiB frame, into its guard page).
#![no_std]
#![no_main]
#![allow(unsafe_code)]

use core::arch::asm;

kernel::entry!(main);

fn main() -> i32 {
    let which = kernel::args().next().unwrap_or("pf");
    kernel::println!("fault: raising {which}");
    match which {
        // SAFETY: none; page 0 is never mapped and the write faults on purpose.
        "pf" => unsafe { (core::hint::black_box(0x8usize) as *mut u64).write_volatile(1) },
        // SAFETY: none; a non-canonical address faults on purpose.
        "gp" => unsafe {
            let v = (core::hint::black_box(0x8000_0000_0000_0000usize) as *const u64).read_volatile();
            core::hint::black_box(v);
        },
        // SAFETY: none; a `ud2` without the gate magic faults on purpose.
        // SAFETY: none; a `ud2` without the gate magic faults on purpose.
        "ud" => unsafe { asm!("xor r10d, r10d", "ud2", out("r10") _) },
        // SAFETY: none; dividing by zero faults on purpose.
        "de" => unsafe {
            asm!("xor edx, edx", "mov eax, 1", "xor ecx, ecx", "div ecx", out("eax") _, out("ecx") _, out("edx") _)
        },
        // SAFETY: none; breaking the TSS's stack pointer is the point.
        "df" => unsafe {
            // RSP0 (at offset 4 of the TSS) into page 0, which is never mapped.
            ((kernel::arch::tss_base() + 4) as *mut u64).write_unaligned(0x800);
            asm!("xor r10d, r10d", "ud2", out("r10") _);
        },
        "stack" => {
            core::hint::black_box(deep(1000));
        }
        other => {
            kernel::println!("fault: unknown fault '{other}' (pf, gp, ud, de, df, stack)");
            return 2;
        }
    }
    kernel::println!("fault: {which} did not fault");
    1
}

/// `depth` frames of 4 KiB each.
#[inline(never)]
fn deep(depth: u32) -> u64 {
    let mut frame = [0u8; 4096];
    frame[depth as usize % 4096] = depth as u8;
    core::hint::black_box(&mut frame);
    let below = if depth > 1 { deep(depth - 1) } else { 0 };
    below + u64::from(frame[depth as usize % 4096])
}
