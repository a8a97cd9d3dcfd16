//! Boot entries and `kernel_main`.
//!
//! Three ways in, one way on:
//! - **direct** (Torito monitor): the vCPU starts at CPL3 at [`kernel_main`]
//!   with `rdi` = the monitor's `BootInfo`. No CPL0 instruction runs first.
//! - **multiboot1** and **PVH**: 32-bit entries in `arch/boot.s` switch to
//!   long mode on link-time tables and `iretq` to CPL3 at
//!   `_torito_generic_entry`, which turns the loader's information into a
//!   `BootInfo` and calls [`kernel_main`].
//!
//! `kernel_main` records its arrival in the `BootInfo` trace (one `rdtsc`
//! and a store: no exit), keeps a copy of the boot information and hands
//! over to [`crate::init`].

mod multiboot;
mod pvh;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use torito_abi::boot_info::{BootInfo, BootProtocol, MAX_TRACE, TraceEntry, TraceId};

use crate::arch;

/// Copy of the boot information, made once in [`kernel_main`].
static BOOT: spin::Once<BootInfo> = spin::Once::new();
/// The live `BootInfo` (in guest memory), where trace marks are written.
static LIVE: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());
/// The TSC at the first line of `kernel_main`.
static KERNEL_MAIN_TSC: AtomicU64 = AtomicU64::new(0);

/// Storage the multiboot and PVH paths build their `BootInfo` and command
/// line in (two statics, so the zeroed buffer stays out of the file).
/// Written once, before `kernel_main`, by the boot core only.
struct GenericBoot<T>(UnsafeCell<T>);

// SAFETY: written only by `_torito_generic_entry` on the boot core before
// anything else runs; afterwards only `LIVE` (trace marks) touches it.
unsafe impl<T> Sync for GenericBoot<T> {}

static GENERIC_INFO: GenericBoot<BootInfo> =
    GenericBoot(UnsafeCell::new(BootInfo::new(BootProtocol::Multiboot)));
static GENERIC_CMDLINE: GenericBoot<[u8; torito_abi::layout::CMDLINE_MAX]> =
    GenericBoot(UnsafeCell::new([0; torito_abi::layout::CMDLINE_MAX]));

/// The first code of the multiboot and PVH paths at CPL3.
#[unsafe(no_mangle)]
extern "sysv64" fn _torito_generic_entry(kind: u64, loader_info: u64) -> ! {
    let info = GENERIC_INFO.0.get();
    // SAFETY: see `GenericBoot`: nothing else references these yet.
    let (bi, cmd) = unsafe { (&mut *info, &mut *GENERIC_CMDLINE.0.get()) };
    // SAFETY: this is the multiboot/PVH path and no allocator exists yet.
    let mem = unsafe { LoaderMem::new() };
    let ok = match kind {
        2 => {
            *bi = BootInfo::new(BootProtocol::Multiboot);
            multiboot::parse(&mem, loader_info, bi, cmd)
        }
        _ => {
            *bi = BootInfo::new(BootProtocol::Pvh);
            pvh::parse(&mem, loader_info, bi, cmd)
        }
    };
    bi.page_table_root = arch::boot_page_table();
    // Where ACPI's tables are (to find the other CPUs), while the loader's
    // low memory is still mapped.
    #[cfg(feature = "process")]
    if ok {
        arch::acpi::find_rsdp(if kind == 2 { 0 } else { pvh::rsdp(&mem, loader_info) });
    }
    arch::unmap_null_page();
    if !ok {
        crate::exit::exit_generic(torito_abi::exit::BOOT_FAILURE);
    }
    // SAFETY: `info` is the static `GENERIC_INFO`, mapped for ever.
    unsafe { kernel_main(info) }
}

/// KernelMain: where every boot path converges, at CPL3.
///
/// The Torito monitor starts the vCPU here directly; nothing calls it from
/// Rust but `_torito_generic_entry`.
///
/// # Safety
/// `info` must be null or point to a writable `BootInfo`-sized area that
/// stays mapped for the life of the guest (its contents are validated).
#[unsafe(no_mangle)]
pub unsafe extern "sysv64" fn kernel_main(info: *mut BootInfo) -> ! {
    let tsc = arch::rdtsc();
    if cfg!(feature = "profile-boot") {
        // Boot-time profiling: stop at the first line, before any work.
        profile_exit(info, tsc);
    }
    if info.is_null() || !info.is_aligned() {
        crate::exit::exit_generic(torito_abi::exit::BOOT_FAILURE);
    }
    // SAFETY: non-null and aligned; the loader contract says it is mapped.
    let copy = unsafe { core::ptr::read_volatile(info) };
    if !copy.is_valid() {
        crate::exit::exit_generic(torito_abi::exit::BOOT_FAILURE);
    }
    LIVE.store(info, Ordering::Release);
    KERNEL_MAIN_TSC.store(tsc, Ordering::Relaxed);
    record(TraceId::KernelMain, tsc);
    BOOT.call_once(|| copy);
    crate::init::run()
}

/// The first Rust code of a secondary core, at CPL3 on the stack core 0
/// gave it (see `arch::smp`), from `_torito_ap_entry` in `boot.s`.
#[unsafe(no_mangle)]
extern "sysv64" fn kernel_ap_main(core: u64) -> ! {
    arch::smp::arrived(core as usize);
    crate::init::run_secondary(core as usize)
}

/// Number of CPUs the loader offers (1 when it does not say).
#[cfg(feature = "process")]
pub fn cpu_count() -> usize {
    BOOT.get().map_or(1, |b| b.cpu_count.max(1) as usize)
}

/// Start the secondary cores: as many as the Torito monitor offers, or as
/// the ACPI MADT lists elsewhere (at most `arch::smp::MAX_CORES`). They
/// wait in `kernel_ap_main` until [`arch::smp::release`]. Returns how many
/// cores run, core 0 included.
#[cfg(feature = "process")]
pub fn start_secondary() -> usize {
    match protocol() {
        BootProtocol::Direct => arch::smp::start_secondary_torito(cpu_count()),
        BootProtocol::Multiboot | BootProtocol::Pvh => {
            let mut ids = [0u32; arch::smp::MAX_CORES];
            let n = arch::acpi::cpu_apic_ids(&mut ids);
            arch::smp::start_secondary_sipi(&ids[..n])
        }
    }
}

/// Exit 0 from the first line of `kernel_main` (the `profile-boot`
/// feature), after recording the arrival: the boot protocol is read straight
/// from the loader's `BootInfo`, so nothing else runs first.
fn profile_exit(info: *mut BootInfo, tsc: u64) -> ! {
    if !info.is_null() && info.is_aligned() {
        // SAFETY: the `kernel_main` contract: a non-null `info` points to a
        // readable BootInfo-sized area.
        let (magic, protocol) = unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*info).magic)),
                core::ptr::read_volatile(core::ptr::addr_of!((*info).protocol)),
            )
        };
        if magic == torito_abi::boot_info::BOOT_INFO_MAGIC && protocol == BootProtocol::Direct as u32 {
            record_in(info, TraceId::KernelMain, tsc);
            arch::torito::exit(0);
        }
    }
    arch::firecracker_boot_timer();
    crate::exit::exit_generic(0)
}

/// The boot information (after `kernel_main` started).
pub fn info() -> &'static BootInfo {
    BOOT.get().expect("boot information read before kernel_main")
}

/// The values of the register batch the Torito monitor ran at launch for
/// the virtio-mmio device at `base`, if it did
/// (`torito_abi::boot_info::DeviceSnapshot`, after the `BootInfo` in its
/// page; each checked to be the very batch the devices unit would send).
#[cfg(feature = "devices")]
pub(crate) fn device_snapshot(base: u64) -> Option<[u32; torito_abi::mmio::SNAPSHOT_OPS]> {
    use torito_abi::boot_info::{DEVICE_SNAPSHOTS_OFFSET, DeviceSnapshot, MAX_DEVICE_SNAPSHOTS};
    let info = BOOT.get()?;
    if info.protocol != BootProtocol::Direct as u32 {
        return None;
    }
    let live = LIVE.load(Ordering::Acquire);
    if live.is_null() {
        return None;
    }
    let first = (live as u64 + DEVICE_SNAPSHOTS_OFFSET) as *const DeviceSnapshot;
    (0..(info.device_snapshots as usize).min(MAX_DEVICE_SNAPSHOTS)).find_map(|i| {
        // SAFETY: on the direct entry the `BootInfo` starts the page the
        // monitor reserved for it (`layout::BOOT_INFO_ADDR`, identity
        // mapped); the snapshots it says it wrote lie after it in that
        // page (at most MAX_DEVICE_SNAPSHOTS fit); any bit pattern is a
        // valid `DeviceSnapshot`, and each is checked before use.
        let snap = unsafe { core::ptr::read_volatile(first.add(i)) };
        snap.values_for(base)
    })
}

/// The boot information, if `kernel_main` has run (not on the host).
pub(crate) fn try_info() -> Option<&'static BootInfo> {
    BOOT.get()
}

/// The TSC at the first line of `kernel_main`.
#[cfg(feature = "process")]
pub fn kernel_main_tsc() -> Option<u64> {
    BOOT.get().map(|_| KERNEL_MAIN_TSC.load(Ordering::Relaxed)).filter(|&t| t != 0)
}

/// How this kernel was booted.
pub fn protocol() -> BootProtocol {
    BOOT.get().and_then(|b| BootProtocol::from_raw(b.protocol)).unwrap_or(BootProtocol::Multiboot)
}

/// Record milestone `id` now.
pub fn mark(id: TraceId) {
    record(id, arch::rdtsc());
}

fn record(id: TraceId, tsc: u64) {
    let p = LIVE.load(Ordering::Acquire);
    if !p.is_null() {
        record_in(p, id, tsc);
    }
}

/// Append a trace record to the BootInfo at `p` (non-null, validated).
/// Any core may record (the network unit's milestones come from app
/// threads): the slot is claimed with an atomic increment of the count.
fn record_in(p: *mut BootInfo, id: TraceId, tsc: u64) {
    // SAFETY: `p` is the loader's BootInfo, checked by the callers; only
    // the trace fields are written, through raw pointers, and no reference
    // to them is held anywhere (readers use the copy in `BOOT`). The count
    // is a naturally aligned u32 that is only ever accessed atomically
    // here (the monitor reads it after the guest stopped); each slot below
    // the count is written by the one caller that claimed it.
    unsafe {
        let log = core::ptr::addr_of_mut!((*p).trace);
        let count = core::sync::atomic::AtomicU32::from_ptr(core::ptr::addr_of_mut!((*log).count));
        let claimed = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            ((n as usize) < MAX_TRACE).then_some(n + 1)
        });
        if let Ok(n) = claimed {
            let e = core::ptr::addr_of_mut!((*log).entries[n as usize]);
            core::ptr::write_volatile(e, TraceEntry { id: id as u32, reserved: 0, tsc });
        }
    }
}

/// The kernel command line ("" when there is none or it is not UTF-8).
pub fn cmdline() -> &'static str {
    let Some(b) = BOOT.get() else { return "" };
    let len = (b.cmdline_len as usize).min(torito_abi::layout::CMDLINE_MAX);
    if b.cmdline_addr == 0 || len == 0 {
        return "";
    }
    // SAFETY: the loader placed `len` bytes at `cmdline_addr` in memory that
    // stays mapped and is not written after boot (below the kernel image for
    // the monitor, a static buffer otherwise).
    let bytes = unsafe { core::slice::from_raw_parts(b.cmdline_addr as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("").trim_end_matches(['\0', ' ', '\n'])
}

/// Reads of the structures a multiboot or PVH loader left in memory.
///
/// The loaders' structures lie in RAM below 4 GiB, which the link-time page
/// tables identity-map; reads are unaligned-safe and bounded by the callers.
pub(crate) struct LoaderMem(());

impl LoaderMem {
    /// # Safety
    /// Only for the multiboot and PVH paths, before the frame allocator can
    /// hand out the memory the loader's structures occupy.
    unsafe fn new() -> Self {
        LoaderMem(())
    }

    /// Read a `T` at physical address `addr`.
    pub(crate) fn read<T: Copy>(&self, addr: u64) -> T {
        // SAFETY: by construction (see `new`), loader addresses below 4 GiB
        // are mapped and readable; `read_unaligned` has no alignment need.
        unsafe { core::ptr::read_unaligned(addr as *const T) }
    }

    /// Copy a NUL-terminated string of at most `dst.len()` bytes from
    /// `src`; returns its length.
    pub(crate) fn cstr(&self, src: u64, dst: &mut [u8]) -> usize {
        let mut n = 0;
        while n < dst.len() {
            let c: u8 = self.read(src + n as u64);
            if c == 0 {
                break;
            }
            dst[n] = c;
            n += 1;
        }
        n
    }
}

/// Add the usable range `[base, base + len)` to `bi`, clipped to the 4 GiB
/// the link-time page tables map.
fn add_usable(bi: &mut BootInfo, base: u64, len: u64) -> bool {
    const MAPPED: u64 = 1 << 32;
    let end = base.saturating_add(len).min(MAPPED);
    if base >= end {
        return true;
    }
    bi.push_region(torito_abi::boot_info::MemRegion::usable(base, end - base))
}
