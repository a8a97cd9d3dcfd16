//! Several cores: the per-core blocks laid out in `boot.s`, wake-ups
//! between cores, and starting the secondary cores.
//!
//! Each core's GS base points at its block (the Torito monitor sets it per
//! vCPU; the 32-bit paths write the MSR), so [`current_core`] is one
//! `gs:`-relative load at CPL3. A wake-up is an IPI through the local APIC
//! (MMIO from CPL3): its stub in `boot.s` sets the core's wake flag, which
//! the idle gate checks before halting.
//!
//! Secondary cores start with one register write on the Torito monitor
//! (it starts each vCPU at the note's `ap_entry`, in long mode at CPL3);
//! elsewhere with INIT-SIPI (see `crate::boot::start_secondary`).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::{apic, rdtsc};

/// Cores the per-core tables in `boot.s` have room for.
pub const MAX_CORES: usize = 16;
const PERCPU_STRIDE: usize = 64;
const PC_STACK: usize = 24;
/// Interrupt vector of a wake-up (`boot.s` routes it to the wake stub).
const WAKE_VECTOR: u8 = 0x41;
/// CPL3 stack of a secondary core's boot (idle) thread.
const AP_STACK_SIZE: usize = 64 * 1024;

/// Local APIC ID of each core.
static APIC_IDS: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];
/// Secondary cores that reached `kernel_ap_main`.
static ARRIVED: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];
/// Set once core 0 has set the process unit up: secondary cores wait for it.
static RELEASED: AtomicBool = AtomicBool::new(false);
/// Where the INIT-SIPI trampoline is copied: page 8, below 1 MiB, which
/// the memory unit never hands out (it keeps the first MiB).
const TRAMPOLINE: usize = 0x8000;

/// The calling core's index.
#[inline]
pub fn current_core() -> usize {
    let id: u64;
    // SAFETY: every entry path sets GS base to the core's block before any
    // Rust code runs; offset 0 holds the core index (boot.s: PC_ID).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) id, options(nostack, readonly, preserves_flags));
    }
    id as usize
}

/// Forget the calling core's pending wake-ups.
#[inline]
pub fn clear_wake() {
    // SAFETY: offset 16 of the core's block is its wake flag (boot.s:
    // PC_WAKE), written only by this core (here and in its stubs).
    unsafe {
        core::arch::asm!("mov dword ptr gs:[16], 0", options(nostack, preserves_flags));
    }
}

/// The local APIC ID of core `core`.
pub fn apic_id(core: usize) -> u32 {
    APIC_IDS.get(core).map_or(0, |a| a.load(Ordering::Relaxed))
}

/// Interrupt core `core` so that it leaves its idle halt.
pub fn kick(core: usize) {
    if core < MAX_CORES {
        apic::send_ipi(APIC_IDS[core].load(Ordering::Relaxed), WAKE_VECTOR);
    }
}

/// A field of core `core`'s block, `offset` bytes in.
#[cfg(feature = "process")]
pub(crate) fn percpu_field(core: usize, offset: usize) -> *mut u64 {
    assert!(core < MAX_CORES && offset < PERCPU_STRIDE);
    percpu_block(core).wrapping_byte_add(offset)
}

fn percpu_block(core: usize) -> *mut u64 {
    unsafe extern "C" {
        static _torito_percpu: u8;
    }
    (core::ptr::addr_of!(_torito_percpu) as usize + core * PERCPU_STRIDE) as *mut u64
}

/// Give secondary core `core` (with local APIC ID `apic_id`) a stack for
/// its boot thread.
fn prepare(core: usize, apic_id: u32) {
    // A page more below the stack, page-aligned: its guard.
    let stack: &'static mut [core::mem::MaybeUninit<u8>] =
        Box::leak(Box::new_uninit_slice(AP_STACK_SIZE + 8192));
    let base = (stack.as_mut_ptr() as usize + 4096).next_multiple_of(4096);
    super::stacks::guard_ap_stack(core, base as u64);
    let top = base + AP_STACK_SIZE;
    APIC_IDS[core].store(apic_id, Ordering::Relaxed);
    // SAFETY: `core < MAX_CORES`, so the block exists in boot.s; the core
    // has not started, so nothing else reads or writes its stack slot.
    unsafe { core::ptr::write_volatile(percpu_block(core).byte_add(PC_STACK), top as u64) };
}

/// A secondary core reached `kernel_ap_main`: note it, then wait until
/// core 0 releases it.
pub fn arrived(core: usize) {
    if core < MAX_CORES {
        ARRIVED[core].store(true, Ordering::SeqCst);
    }
    while !RELEASED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
}

/// Let the secondary cores run their schedulers.
pub fn release() {
    RELEASED.store(true, Ordering::Release);
}

/// Cores the Torito monitor is still to start (0: none, or started).
static DEFERRED: AtomicU32 = AtomicU32::new(0);

/// Get cores `1..count` ready on the Torito monitor (vCPU `i` has local
/// APIC ID `i`) and leave their start to [`start_deferred`], which the
/// process unit calls when it first hands one of them work (a thread
/// spawned there). Returns the number of cores.
///
/// Why on demand: the start is one exit in which the monitor spawns the
/// vCPUs' threads, and their creation then shares the host's CPUs with
/// the boot core; on the development host a NIC appliance on 2 vCPUs
/// reached its `main` ~250 µs later, and answered its first request ~700
/// µs later, with the start in `init`. The appliances that keep their
/// threads on core 0 (httpd, kvstore, echo) never pay it.
pub fn start_secondary_torito(count: usize) -> usize {
    let count = count.clamp(1, MAX_CORES);
    for core in 1..count {
        prepare(core, core as u32);
    }
    if count > 1 {
        DEFERRED.store(count as u32, Ordering::SeqCst);
    }
    count
}

/// Start the cores [`start_secondary_torito`] left for later, once.
pub fn start_deferred() {
    if DEFERRED.load(Ordering::Relaxed) != 0 {
        let count = DEFERRED.swap(0, Ordering::SeqCst);
        if count > 1 {
            super::torito::start_cores(count as usize);
        }
    }
}

/// Start the secondary cores whose local APIC IDs are listed (the boot
/// core's among them) with INIT-SIPI-SIPI, one after the other, through
/// the real-mode trampoline in `boot.s`. A core that has not arrived 100 ms
/// after its start-up IPIs ends the start-up with a warning. Returns the
/// number of cores that run.
pub fn start_secondary_sipi(apic_ids: &[u32]) -> usize {
    if apic_ids.len() < 2 {
        return 1;
    }
    let Some(khz) = apic::tsc_khz() else { return 1 };
    copy_trampoline();
    let me = apic::id();
    APIC_IDS[0].store(me, Ordering::Relaxed);
    let mut core = 1;
    for &id in apic_ids.iter().filter(|&&id| id != me) {
        if core == MAX_CORES {
            break;
        }
        prepare(core, id);
        set_booting(core);
        let wait = |us: u64, core: usize| {
            let until = rdtsc() + khz * us / 1000;
            while rdtsc() < until && !ARRIVED[core].load(Ordering::SeqCst) {
                core::hint::spin_loop();
            }
            ARRIVED[core].load(Ordering::SeqCst)
        };
        apic::send_init(id);
        wait(10, core);
        apic::send_startup(id, (TRAMPOLINE >> 12) as u8);
        if !wait(10_000, core) {
            apic::send_startup(id, (TRAMPOLINE >> 12) as u8);
            if !wait(100_000, core) {
                crate::println!(
                    "[torito] warning: CPU with APIC ID {id} did not start; running on {core} core(s)"
                );
                break;
            }
        }
        core += 1;
    }
    core
}

fn set_booting(core: usize) {
    unsafe extern "C" {
        static _torito_ap_booting: AtomicU32;
    }
    // SAFETY: a 4-byte word in boot.s that only core 0 writes (here) and a
    // starting core reads.
    unsafe { &*core::ptr::addr_of!(_torito_ap_booting) }.store(core as u32, Ordering::SeqCst);
}

/// Copy the real-mode trampoline to [`TRAMPOLINE`].
fn copy_trampoline() {
    unsafe extern "C" {
        static _torito_ap_trampoline: u8;
        static _torito_ap_trampoline_end: u8;
    }
    let start = core::ptr::addr_of!(_torito_ap_trampoline);
    let len = core::ptr::addr_of!(_torito_ap_trampoline_end) as usize - start as usize;
    assert!(len <= 4096, "the AP trampoline fits a page");
    // SAFETY: the trampoline is `len` bytes of the kernel image; the
    // destination page is RAM below 1 MiB, identity-mapped and writable,
    // which nothing else uses once the loader's data has been read.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
}
