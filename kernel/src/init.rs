//! The one wiring function: bring the selected units up in a fixed order,
//! run the app, exit with its code. The only file (besides `lib.rs`) that
//! looks at unit features.

use torito_abi::boot_info::TraceId;

pub(crate) fn run() -> ! {
    // Each unit's end is a milestone of the timeline (no exit: a store).
    crate::memory::init();
    crate::boot::mark(TraceId::MemoryUnit);
    #[cfg(feature = "process")]
    {
        let known = tsc_khz();
        use crate::arch::{apic, gate, smp};
        // Thread stacks get an unmapped guard page below them.
        let guards = unit_process::Platform {
            guard: Some(|a| crate::memory::guard_page(a as u64)),
            unguard: Some(|a, frame| crate::memory::unguard_page(a as u64, frame)),
            flush: Some(|a| gate::invlpg(a as u64)),
            ..unit_process::Platform::SPIN
        };
        let (khz, platform) = match apic::init(known) {
            Some(khz) => (
                khz,
                unit_process::Platform {
                    arm: Some(apic::arm),
                    idle: gate::idle,
                    core: smp::current_core,
                    clear_wake: smp::clear_wake,
                    kick: smp::kick,
                    // On the Torito monitor the other cores start when
                    // first given work (`smp::start_secondary_torito`).
                    start_cores: Some(smp::start_deferred),
                    ..guards
                },
            ),
            None => (known, guards),
        };
        // Several cores need the local APIC (wake-ups, timers). They are
        // started now and wait until the process unit is ready (on the
        // Torito monitor: made ready now, started when first given
        // work).
        let cores = if platform.arm.is_some() { crate::boot::start_secondary() } else { 1 };
        let info = crate::boot::info();
        let wall = match crate::boot::kernel_main_tsc() {
            // The Torito monitor hands its clock over.
            Some(tsc) if info.boot_realtime_ns != 0 => Some((info.boot_realtime_ns, tsc)),
            // Elsewhere KVM's paravirtual clock, else a CMOS RTC if there
            // is one (to the second).
            _ if info.protocol != torito_abi::boot_info::BootProtocol::Direct as u32 => {
                crate::arch::kvmclock::wall_clock().or_else(|| {
                    let tsc = crate::arch::rdtsc();
                    crate::arch::rtc::unix_seconds().map(|s| (s * 1_000_000_000, tsc))
                })
            }
            _ => None,
        };
        // Each core allocates small blocks from a cache of its own.
        #[cfg(target_os = "none")]
        unit_memory::heap::HEAP.enable_core_caches(smp::current_core);
        unit_process::init(khz, platform, wall, cores);
        // Device interrupts notify the process unit of the core they reach.
        for core in 0..cores {
            if let Some(flag) = unit_process::notification_flag(unit_process::CoreId(core as u32)) {
                crate::arch::irq::connect(core, flag);
            }
        }
        crate::arch::smp::release();
        crate::boot::mark(TraceId::ProcessUnit);
    }
    // The devices the loader named (virtio-mmio on the command line).
    #[cfg(feature = "devices")]
    {
        // `devices.poll` on the command line: complete requests by polling
        // (lower latency where interrupts are dear, a busy core).
        let poll = crate::args().any(|a| a == "devices.poll");
        let irq = (!poll).then_some(unit_devices::Irq {
            route: route_device_irq,
            wait: wait_device_irq,
            msi: device_msi,
            take: take_device_irq,
            // The Torito monitor's device interrupts are messages (MSI).
            mmio_ack: crate::boot::protocol() != torito_abi::boot_info::BootProtocol::Direct,
        });
        // PCI through the configuration ports, except on the Torito monitor,
        // which has no PCI.
        let pci = (crate::boot::protocol() != torito_abi::boot_info::BootProtocol::Direct).then_some(
            unit_devices::pci::PortIo { outl: crate::arch::gate::outl, inl: crate::arch::gate::inl },
        );
        // On the Torito monitor a device's setup goes in a few batches
        // (two exits instead of ~120).
        let batch = (crate::boot::protocol() == torito_abi::boot_info::BootProtocol::Direct).then_some(
            unit_devices::batched::Monitor {
                submit: crate::arch::torito::mmio_batch,
                // The first batch of each of the first devices: run by the
                // monitor at launch.
                snapshot: crate::boot::device_snapshot,
            },
        );
        let report = unit_devices::init(crate::boot::cmdline(), irq, pci, batch);
        for p in &report.problems {
            crate::println!("[torito] devices: {p}");
        }
        crate::boot::mark(TraceId::DevicesUnit);
    }
    // The filesystem: the app's baked-in files at `/`, each virtio-fs share
    // at `/<tag>`, each disk's filesystem at `/disk<N>`.
    #[cfg(feature = "fs")]
    {
        // A thread waiting for a filesystem lock lets the holder run.
        #[cfg(feature = "process")]
        let relax: Option<fn()> = Some(unit_process::yield_now);
        #[cfg(not(feature = "process"))]
        let relax: Option<fn()> = None;
        // The time FAT stamps on files: the wall clock, where there is one.
        #[cfg(feature = "process")]
        let clock: Option<fn() -> Option<u64>> =
            Some(|| unit_process::clock::wall_clock_ns().map(|ns| ns / 1_000_000_000));
        #[cfg(not(feature = "process"))]
        let clock: Option<fn() -> Option<u64>> = None;
        // How long a share's answers hold: the TSC, in nanoseconds.
        #[cfg(feature = "process")]
        let monotonic: Option<fn() -> Option<u64>> = Some(unit_process::clock::now_ns);
        #[cfg(not(feature = "process"))]
        let monotonic: Option<fn() -> Option<u64>> = None;
        let report = unit_fs::init(unit_fs::Sources {
            files: crate::app::files(),
            disks: unit_devices::take_block_devices(),
            relax,
            clock,
            monotonic,
            shares: unit_devices::take_fs_devices()
                .into_iter()
                .map(|d| alloc::boxed::Box::new(d) as alloc::boxed::Box<dyn unit_fs::virtiofs::Channel>)
                .collect(),
        });
        // Disks with no filesystem stay raw block devices.
        unit_devices::give_back_block_devices(report.raw);
        for p in &report.problems {
            crate::println!("[torito] fs: {p}");
        }
        crate::boot::mark(TraceId::FsUnit);
    }
    // The network stack on the first NIC, with the address from the
    // command line.
    #[cfg(feature = "net")]
    match unit_net::init(crate::boot::cmdline(), unit_devices::take_net_devices()) {
        Ok(Some(nic)) if nic.config.is_none() => crate::println!(
            "[torito] net: no torito.ip= given: asking DHCP for an address \
             (sockets wait until it answers)"
        ),
        Ok(_) => {}
        Err(e) => crate::println!("[torito] net: {e}"),
    }
    #[cfg(feature = "net")]
    {
        unit_net::vsock::init(unit_devices::take_vsock_devices());
        crate::boot::mark(TraceId::NetUnit);
    }
    // The app's first listener and first connection go into the boot
    // trace (the timeline's `listening` and `first_accept`; no exit).
    #[cfg(feature = "net")]
    unit_net::milestone::set_hook(|m| {
        crate::boot::mark(match m {
            unit_net::milestone::Milestone::Listening => TraceId::Listening,
            unit_net::milestone::Milestone::FirstAccept => TraceId::FirstAccept,
        })
    });
    crate::boot::mark(TraceId::AppMain);
    let code = crate::app::main();
    // What closed connections still hold goes out before the machine
    // stops (at most 2 s).
    #[cfg(feature = "net")]
    unit_net::drain_closed(core::time::Duration::from_secs(2));
    crate::exit::exit(code)
}

/// The TSC frequency: from the Torito monitor's boot information, else from
/// CPUID (hypervisor leaf 0x4000_0010, then leaves 0x15 and 0x16); 0 when
/// unknown.
#[cfg(feature = "process")]
fn tsc_khz() -> u64 {
    let from_boot = crate::boot::info().tsc_khz;
    if from_boot != 0 {
        return from_boot;
    }
    crate::arch::tsc_khz_from_cpuid().unwrap_or(0)
}

/// A secondary core's way in (from `kernel_ap_main`): its local APIC, then
/// its scheduler for ever.
pub(crate) fn run_secondary(_core: usize) -> ! {
    #[cfg(feature = "process")]
    {
        crate::arch::apic::init_secondary();
        unit_process::run_secondary()
    }
    #[cfg(not(feature = "process"))]
    loop {
        // Without the process unit no core is ever started; halt if one is.
        crate::arch::gate::idle();
    }
}

#[cfg(feature = "process")]
const _: () = assert!(unit_process::MAX_CORES == crate::arch::smp::MAX_CORES);
const _: () = assert!(unit_memory::heap::MAX_CORES == crate::arch::smp::MAX_CORES);

/// Route a device's interrupt line to vector `0x50 + line` on core 0: the
/// Torito monitor sends MSIs there itself; elsewhere the IOAPIC pin is
/// programmed.
#[cfg(feature = "devices")]
fn route_device_irq(line: u32) -> bool {
    use crate::arch::{irq, smp};
    if line >= u32::from(irq::VECTORS) || !crate::arch::apic::available() {
        return false;
    }
    // (Devices are set up on the boot core.)
    crate::arch::apic::enable_boot_core();
    match crate::boot::protocol() {
        torito_abi::boot_info::BootProtocol::Direct => true,
        _ => crate::arch::ioapic::route(line, irq::FIRST_VECTOR + line as u8, smp::apic_id(0)),
    }
}

/// Wait for a device's interrupt line (see [`route_device_irq`]).
#[cfg(feature = "devices")]
fn wait_device_irq(line: u32) {
    crate::arch::irq::wait(crate::arch::irq::FIRST_VECTOR + line as u8);
}

/// The MSI for device line `line`: vector `0x50 + line` on core 0.
#[cfg(feature = "devices")]
fn device_msi(line: u32) -> Option<(u64, u32)> {
    use crate::arch::{irq, smp};
    if line >= u32::from(irq::VECTORS) || !crate::arch::apic::available() {
        return None;
    }
    // (Devices are set up on the boot core.)
    crate::arch::apic::enable_boot_core();
    Some(irq::msi(smp::apic_id(0), irq::FIRST_VECTOR + line as u8))
}

/// Whether device line `line` interrupted since the last look (consumes it).
#[cfg(feature = "devices")]
fn take_device_irq(line: u32) -> bool {
    crate::arch::irq::take(crate::arch::irq::FIRST_VECTOR + line as u8)
}
