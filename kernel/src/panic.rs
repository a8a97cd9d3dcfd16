//! Panics and CPU faults: print what happened and where, with a backtrace,
//! then exit non-zero (`torito_abi::exit::PANIC`, or `EXCEPTION_BASE +
//! vector`).
//!
//! The backtrace follows the frame pointers guest builds keep. On the
//! Torito monitor the return addresses go to it in one exit
//! (`torito_abi::mmio::BACKTRACE`), and it prints each as `function at
//! file:line` from the app's ELF; elsewhere they are printed raw, as
//! `#N 0xADDR` lines that `cargo xtask symbolize APP` turns into the same.

use torito_abi::exit::EXCEPTION_BASE;

use crate::arch::fault::{self, FaultInfo};
use crate::{exit, println};

/// The guest's panic handler (on the host, where an app's logic is
/// unit-tested, std's handler is the one).
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};
    use torito_abi::exit::PANIC;
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: stop without printing again.
        exit::stop(PANIC);
    }
    #[cfg(feature = "process")]
    if let Some(t) = unit_process::current_thread() {
        println!("[torito] thread {} on core {} panicked", t.0, unit_process::current_core().0);
    }
    match info.location() {
        Some(l) => {
            println!("[torito] panicked at {}:{}:{}: {}", l.file(), l.line(), l.column(), info.message())
        }
        None => println!("[torito] panicked: {}", info.message()),
    }
    let heap = unit_memory::heap::stats();
    if heap.last_failed != 0 {
        println!(
            "[torito] out of memory: a request for {} bytes failed; heap {} of {} bytes in use",
            heap.last_failed, heap.used, heap.size
        );
    }
    backtrace(None, crate::arch::frame_pointer());
    exit::stop(PANIC)
}

/// Print the backtrace from the frame at `rbp`, after `rip` (a faulting
/// instruction) when given.
fn backtrace(rip: Option<u64>, rbp: u64) {
    use torito_abi::boot_info::BootProtocol;
    const MAX: usize = torito_abi::mmio::BACKTRACE_MAX;
    let mut frames = [0u64; MAX];
    let mut n = 0;
    if let Some(rip) = rip {
        frames[0] = rip;
        n = 1;
    }
    n += crate::arch::walk_frames(rbp, &mut frames[n..], readable);
    if n == 0 {
        return;
    }
    println!("[torito] backtrace (innermost first):");
    if crate::boot::protocol() == BootProtocol::Direct {
        crate::arch::torito::backtrace(&frames[..n], rip.is_some());
    } else {
        for (i, a) in frames[..n].iter().enumerate() {
            println!("[torito]   #{i:<2} {a:#018x}");
        }
        println!("[torito]   (cargo xtask symbolize APP < LOG names these functions and lines)");
    }
}

/// Whether 16 bytes at `addr` are RAM the boot information lists (and so
/// mapped): what a frame pointer must point to.
fn readable(addr: u64) -> bool {
    crate::boot::try_info().is_some_and(|b| {
        b.regions()
            .iter()
            .any(|r| r.is_usable() && r.base <= addr && addr.saturating_add(16) <= r.base + r.len)
    })
}

/// Report a CPU fault (the faulting code's frame pointer: `rbp`) and exit
/// with `EXCEPTION_BASE + vector`.
/// (Inlined into its one caller, the fault upcall, which lives with the
/// other code that runs only when things go wrong: `linker/torito.ld`.)
#[inline(always)]
pub(crate) fn report_fault(f: &FaultInfo, rbp: u64) -> ! {
    #[cfg(feature = "process")]
    if f.vector == 14
        && let Some(o) = unit_process::stack_overflow_at(unit_process::current_core(), f.cr2)
    {
        let name = o.name.map(|n| alloc::format!(" ('{n}')")).unwrap_or_default();
        println!(
            "[torito] stack overflow in thread {}{name} on core {}: it ran past the bottom of its {}-byte \
             stack into its guard page (at {:#x}, rip={:#x}); give it more with \
             process::Builder::new().stack_size(BYTES)",
            o.thread.0, o.core.0, o.size, f.cr2, f.rip
        );
        backtrace(Some(f.rip), rbp);
        exit::stop(EXCEPTION_BASE + f.vector as i32)
    }
    // A stack of the kernel's own: the boot stack (where the app's `main`
    // runs) faults as a page fault; a CPL0 stack as a double fault, which
    // then runs on its own stack. The usual report follows.
    if matches!(f.vector, 8 | 14)
        && let Some((what, core)) = crate::arch::stacks::guard_hit(f.cr2)
    {
        println!("[torito] stack overflow: the {what} of core {core} ran into its guard page");
        if what == "boot stack" && core == 0 {
            println!(
                "[torito]   the app's main runs on it: move large locals to the heap (Box, Vec), or into a \
                 thread with a bigger stack (process::Builder::new().stack_size(BYTES))"
            );
        }
    }
    println!(
        "[torito] CPU exception: {} (vector {}), error code {:#x}",
        fault::name(f.vector),
        f.vector,
        f.error
    );
    println!(
        "[torito]   rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    );
    if f.vector == 14 {
        let what = if f.error & 2 != 0 { "write" } else { "read" };
        let why = if f.cr2 < 4096 {
            // Absent, or (on the Torito monitor) mapped for CPL0 only.
            "null pointer: page 0 is the null guard"
        } else if f.error & 1 != 0 {
            "protection violation"
        } else {
            "page not present"
        };
        println!("[torito]   cr2={:#018x} ({what}, {why})", f.cr2);
    }
    backtrace(Some(f.rip), rbp);
    exit::stop(EXCEPTION_BASE + f.vector as i32)
}
