//! Panics and CPU faults: print what happened and where, then exit non-zero
//! (`torito_abi::exit::PANIC`, or `EXCEPTION_BASE + vector`).

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
    exit::stop(PANIC)
}

/// Report a CPU fault and exit with `EXCEPTION_BASE + vector`.
pub(crate) fn report_fault(f: &FaultInfo) -> ! {
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
        let why = if f.error & 1 != 0 { "protection violation" } else { "page not present" };
        println!("[torito]   cr2={:#018x} ({what}, {why})", f.cr2);
    }
    exit::stop(EXCEPTION_BASE + f.vector as i32)
}
