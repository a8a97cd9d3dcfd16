//! The Torito monitor: a KVM microVM monitor that boots Torito appliances by
//! direct 64-bit entry at CPL3.
//!
//! [`run`] is the whole life of a guest: open KVM, create the VM and its
//! memory, load and check the ELF, build page tables and the boot
//! information, create the vCPU in long mode at CPL3, then run it and serve
//! its exits until it stops. `unsafe` code lives only in [`vstate`].

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod boot;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod exit;
pub mod loader;
#[allow(unsafe_code)]
pub mod tap;
pub mod timeline;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtio_vsock;
#[allow(unsafe_code)]
pub mod vstate;

pub use config::VmConfig;
pub use error::{Error, Outcome};

use std::fs;

use timeline::{Phase, Timeline};

/// Boot the guest described by `cfg` and run it to the end.
pub fn run(cfg: &VmConfig, tl: &mut Timeline) -> Result<Outcome, Error> {
    let mut image = fs::File::open(&cfg.kernel).map_err(|e| Error::ReadKernel(cfg.kernel.clone(), e))?;
    if image.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::ReadKernel(cfg.kernel.clone(), std::io::Error::other("it is a directory")));
    }
    if cfg.mem < torito_abi::layout::MIN_RAM || cfg.mem > torito_abi::layout::MAX_RAM {
        return Err(Error::Config(format!(
            "--mem {} MiB is out of range ({} MiB to {} GiB)",
            cfg.mem >> 20,
            torito_abi::layout::MIN_RAM >> 20,
            torito_abi::layout::MAX_RAM >> 30
        )));
    }
    let elf = loader::check(&image, cfg.mem).map_err(|m| Error::BadImage(cfg.kernel.clone(), m))?;

    // Disks: opened and checked before anything else is made; the guest
    // finds them on its command line.
    let virtio_count = (cfg.disks.len() + cfg.nets.len() + usize::from(cfg.vsock.is_some())) as u64;
    if virtio_count > torito_abi::layout::VIRTIO_MMIO_MAX {
        return Err(Error::Config(format!(
            "{virtio_count} disks and NICs: the monitor offers at most {}",
            torito_abi::layout::VIRTIO_MMIO_MAX
        )));
    }
    let mut disks = cfg
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| virtio_blk::open(d, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Disk)?;
    let nets = cfg
        .nets
        .iter()
        .enumerate()
        .map(|(i, n)| virtio_net::open(n, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Net)?;
    let vsock = cfg.vsock.as_ref().map(virtio_vsock::open).transpose().map_err(Error::Net)?;
    let mut full_cmdline = cfg.cmdline.clone();
    for i in 0..virtio_count {
        let base = torito_abi::layout::VIRTIO_MMIO_BASE + i * torito_abi::layout::VIRTIO_MMIO_STRIDE;
        full_cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{i}"));
    }
    let cmdline = boot::check_cmdline(full_cmdline.trim_start())?;

    let kvm = vstate::Kvm::open(&cfg.kvm_device)?;
    tl.mark(Phase::KvmReady);
    let vm = kvm.create_vm()?;
    check_cpus(cfg.cpus, &elf.note, &vm)?;
    // (Creating the vCPU on a second thread, in parallel with memory
    // registration, was measured: no gain, KVM serialises the two.)
    let (mem, deferred) = vm.add_memory(cfg.mem)?;
    tl.mark(Phase::MemoryReady);
    loader::load(&mem, &mut image, &elf).map_err(|m| Error::BadImage(cfg.kernel.clone(), m))?;
    boot::write_page_tables(&mem, cfg.mem)?;
    tl.mark(Phase::ElfLoaded);
    let lapic = vm.enable_lapic()?;
    if std::env::var_os("TORITO_DEBUG_IOEVENTFD").is_some() {
        vm.debug_ioeventfd()?;
    }
    // `,iothread` disks: QueueNotify through an ioeventfd (docs/design.md).
    for (i, (d, c)) in disks.iter_mut().zip(&cfg.disks).enumerate() {
        if c.iothread {
            let base =
                torito_abi::layout::VIRTIO_MMIO_BASE + i as u64 * torito_abi::layout::VIRTIO_MMIO_STRIDE;
            d.backend.notify_fd = Some(vm.notify_eventfd(base + virtio_mmio::QUEUE_NOTIFY)?);
        }
    }
    let mut vcpu = vm.create_vcpu(0, lapic)?;
    let tsc_khz = vcpu.tsc_khz();
    // Without a LAPIC the kernel cannot wake or time other cores.
    let cpus = if lapic { cfg.cpus } else { 1 };
    boot::write_boot_info(&mem, cfg.mem, cmdline, tsc_khz, tl.launch_ns(), cpus)?;
    vcpu.set_boot_registers(&boot::registers(&elf.note, 0))?;
    if cfg.timeline.is_some() {
        tl.set_clock_reference(vcpu.clock_reference(tsc_khz));
    }
    tl.mark(Phase::VcpuReady);

    // The rest of RAM is registered from the guest's first exit on.
    let pending = vstate::PendingRam::new(deferred);
    let mut devices = devices::Devices::new(cfg.console_out());
    devices.disks = disks;
    devices.nets = nets;
    devices.vsock = vsock;
    let machine = vstate::Machine::new(&vm, &mem, elf.note, cpus, lapic, devices, pending, cfg.timeout)?;
    // A scope joins its threads (secondary vCPUs, RAM registration) on
    // every return.
    std::thread::scope(|s| {
        machine.run(s, &mut vcpu, tl);
        tl.mark(Phase::GuestStopped);
    });
    machine.pending().wait()?;
    tl.pending_ram_accesses = machine.pending().accesses();
    tl.vcpus_started = machine.started();
    let outcome = machine.into_outcome()?;
    tl.set_guest_trace(boot::read_trace(&mem));
    if cfg.timeline.is_some() {
        tl.set_stats(vcpu.stats());
        tl.guest_touched_kib = vstate::resident_kib(&mem);
        tl.peak_rss_kib = vstate::peak_rss_kib();
    }
    Ok(outcome)
}

/// Check `--cpus` against the kernel's per-core tables, KVM and the host.
fn check_cpus(cpus: u32, note: &torito_abi::note::KernelNote, vm: &vstate::Vm) -> Result<(), Error> {
    let n = cpus as usize;
    if n == 0 {
        return Err(Error::Config("--cpus 0: a guest needs at least 1 vCPU".into()));
    }
    if n == 1 {
        return Ok(());
    }
    let kernel = if note.ap_entry == 0 { 1 } else { usize::from(note.max_cores.max(1)) };
    let kvm = vm.max_vcpus();
    let host = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (limit, who) = [(kernel, "the kernel supports"), (kvm, "KVM allows"), (host, "this host has")]
        .into_iter()
        .min_by_key(|(l, _)| *l)
        .unwrap_or((1, "the kernel supports"));
    if n > limit {
        return Err(Error::Config(format!("--cpus {n}: {who} at most {limit} CPU(s)")));
    }
    Ok(())
}
