//! x86_64 architecture support: the boot section, the CPL3 → CPL0 gate and
//! CPU fault reporting.
//!
//! This module and `crate::boot` hold all of the kernel's `unsafe` code.
//! The kernel and the app run at CPL3; CPL0 runs only the stubs in
//! `boot.s`, entered through exceptions (see [`gate`]).

#[cfg(feature = "process")]
pub mod acpi;
pub mod apic;
pub mod fault;
pub mod gate;
pub mod ioapic;
pub mod irq;
#[cfg(feature = "process")]
pub mod kvmclock;
pub mod mem;
pub mod rtc;
pub mod smp;
pub mod stacks;
pub mod torito;

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

// `boot.s` writes the ABI version into the Torito note by hand.
const _: () = assert!(torito_abi::ABI_VERSION == 6, "update abi_version in boot.s");
// `boot.s` places the timer's stub at the vector the monitor programs
// (`BootInfo::preset`) by hand.
const _: () = assert!(torito_abi::boot_info::LAPIC_TIMER_VECTOR == 0x40, "update TIMER_VECTOR in boot.s");
// `boot.s` writes the debug trap register's address by hand.
const _: () = assert!(
    torito_abi::layout::TORITO_MMIO_BASE + torito_abi::mmio::DEBUG_TRAP == 0xc000_0038,
    "update DEBUG_TRAP in boot.s"
);

// The multiboot1 header with the a.out-kludge address fields, so that
// QEMU and GRUB load this 64-bit ELF. Left out with `no-multiboot`, which
// makes QEMU use the PVH note instead.
#[cfg(all(target_os = "none", not(feature = "no-multiboot")))]
core::arch::global_asm!(
    r#"
    .pushsection .multiboot, "a"
    .balign 4
mb_header:
    .long 0x1BADB002                    /* magic */
    .long 0x00010003                    /* page-align, memory info, address fields */
    .long -(0x1BADB002 + 0x00010003)    /* checksum */
    .long mb_header                     /* header_addr */
    .long __image_start                 /* load_addr */
    .long __load_end                    /* load_end_addr */
    .long __bss_end                     /* bss_end_addr */
    .long _torito_multiboot_entry       /* entry_addr */
    .popsection
    "#,
    options(att_syntax)
);

/// Read the time-stamp counter (native at CPL3).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is allowed at CPL3 (CR4.TSD
    // is clear on every path that enters the kernel).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC frequency in kHz as CPUID tells it, if it does: the hypervisor
/// leaf 0x4000_0010 (KVM, QEMU with invtsc, VMware), then leaf 0x15 (TSC to
/// crystal ratio) and leaf 0x16 (base frequency). `cpuid` is allowed at
/// CPL3 (a few µs where it traps).
pub fn tsc_khz_from_cpuid() -> Option<u64> {
    use core::arch::x86_64::__cpuid;
    let hv = __cpuid(1).ecx & (1 << 31) != 0;
    if hv && __cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = u64::from(__cpuid(0x4000_0010).eax);
        if khz != 0 {
            return Some(khz);
        }
    }
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    if max >= 0x16 {
        let mhz = u64::from(__cpuid(0x16).eax & 0xffff);
        if mhz != 0 {
            return Some(mhz * 1000);
        }
    }
    None
}

/// 64 random bits from the CPU: RDSEED (meant for seeding) when the CPU
/// has it, else RDRAND; `None` when it has neither or both keep failing.
/// The first call asks CPUID (an exit on some hosts); both instructions
/// run at CPL3.
pub fn hardware_random() -> Option<u64> {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _rdrand64_step, _rdseed64_step};
    use core::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const RDRAND: u8 = 1;
    const RDSEED: u8 = 2;
    const NONE: u8 = 3;
    static KIND: AtomicU8 = AtomicU8::new(UNKNOWN);
    let kind = match KIND.load(Ordering::Relaxed) {
        UNKNOWN => {
            let rdseed = __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 18) != 0;
            let rdrand = __cpuid(1).ecx & (1 << 30) != 0;
            let k = if rdseed {
                RDSEED
            } else if rdrand {
                RDRAND
            } else {
                NONE
            };
            KIND.store(k, Ordering::Relaxed);
            k
        }
        k => k,
    };
    #[target_feature(enable = "rdrand")]
    fn rdrand() -> Option<u64> {
        let mut v = 0;
        // Retried a few times on a transient failure (the usual advice).
        (0..10).find(|_| _rdrand64_step(&mut v) == 1).map(|_| v)
    }
    #[target_feature(enable = "rdseed")]
    fn rdseed() -> Option<u64> {
        let mut v = 0;
        (0..100).find(|_| _rdseed64_step(&mut v) == 1).map(|_| v)
    }
    match kind {
        // SAFETY: CPUID says the CPU has the instructions these functions
        // are compiled for.
        RDSEED => unsafe {
            rdseed().or_else(|| if __cpuid(1).ecx & (1 << 30) != 0 { rdrand() } else { None })
        },
        // SAFETY: as above.
        RDRAND => unsafe { rdrand() },
        _ => None,
    }
}

/// The frame pointer (`rbp`) of the caller: guest builds keep frame
/// pointers (`-C force-frame-pointers`), so it heads the chain of frames.
#[inline(always)]
pub fn frame_pointer() -> u64 {
    let rbp: u64;
    // SAFETY: reads a register; no memory is touched.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags)) };
    rbp
}

/// Follow the chain of frame pointers from `rbp`: each frame holds the
/// caller's `rbp` and, above it, the return address. Fills `out` with the
/// return addresses, innermost first; returns how many. The walk stops at
/// a null return address, at a frame that is not 8-aligned, not above the
/// last one (or more than 1 MiB above it), or not `readable` (16 bytes at
/// the frame), so a corrupt stack ends the walk instead of faulting.
pub fn walk_frames(mut rbp: u64, out: &mut [u64], readable: impl Fn(u64) -> bool) -> usize {
    let mut n = 0;
    while n < out.len() && rbp != 0 && rbp.is_multiple_of(8) && readable(rbp) {
        // SAFETY: `readable` vouched for the 16 bytes at `rbp`, which the
        // identity map covers; a stale value there only ends the walk.
        let (next, ret) = unsafe {
            (core::ptr::read_volatile(rbp as *const u64), core::ptr::read_volatile((rbp + 8) as *const u64))
        };
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= rbp || next - rbp > (1 << 20) {
            break;
        }
        rbp = next;
    }
    n
}

/// Busy-wait hint.
#[inline(always)]
pub fn spin_hint() {
    core::hint::spin_loop();
}

/// Signal Firecracker's boot timer (a byte 123 written to 0xC000_0000;
/// Firecracker then logs "Guest-boot-time"). Only for profile-boot builds
/// on hosts other than the Torito monitor, where that address is our own
/// console register; QEMU ignores the store.
pub fn firecracker_boot_timer() {
    // SAFETY: the store goes to the MMIO window (identity-mapped by the
    // link-time tables); no RAM lives there, so it only reaches the host.
    unsafe { core::ptr::write_volatile(0xC000_0000usize as *mut u8, 123) }
}

/// Base address of the interrupt descriptor table (for tests that break it
/// on purpose).
pub fn idt_base() -> usize {
    unsafe extern "C" {
        static _torito_idt: u8;
    }
    core::ptr::addr_of!(_torito_idt) as usize
}

/// Base address of the task-state segment (for tests that break it on
/// purpose).
pub fn tss_base() -> usize {
    unsafe extern "C" {
        static _torito_tss: u8;
    }
    core::ptr::addr_of!(_torito_tss) as usize
}

/// Root page table of the link-time boot tables (multiboot and PVH paths).
pub fn boot_page_table() -> u64 {
    unsafe extern "C" {
        static _torito_boot_pml4: u8;
    }
    core::ptr::addr_of!(_torito_boot_pml4) as u64
}

/// Unmap page 0 in the link-time tables (multiboot and PVH paths), so that
/// null-pointer accesses fault. Loaders may leave their structures in page
/// 0 (QEMU's PVH option ROM does), so it stays mapped until they are read.
pub fn unmap_null_page() {
    unsafe extern "C" {
        static mut _torito_boot_pt0: u64;
    }
    // SAFETY: the first entry of the static page table maps page 0; the
    // table is identity-mapped and user-writable, and nothing but this
    // function changes that entry. The stale translation is flushed next.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(_torito_boot_pt0), 0) };
    gate::invlpg(0);
}

/// Start and end of the kernel image in memory (from the linker script).
pub fn image_range() -> (u64, u64) {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__image_end) as u64)
}
