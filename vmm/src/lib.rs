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
pub mod timeline;
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

    let cmdline = boot::check_cmdline(&cfg.cmdline)?;

    let kvm = vstate::Kvm::open(&cfg.kvm_device)?;
    tl.mark(Phase::KvmReady);
    let vm = kvm.create_vm()?;
    std::thread::scope(|s| {
        // (Creating the vCPU on a second thread, in parallel with memory
        // registration, was measured: no gain, KVM serialises the two.)
        let (mem, deferred) = vm.add_memory(cfg.mem)?;
        tl.mark(Phase::MemoryReady);
        loader::load(&mem, &mut image, &elf).map_err(|m| Error::BadImage(cfg.kernel.clone(), m))?;
        boot::write_page_tables(&mem, cfg.mem)?;
        tl.mark(Phase::ElfLoaded);
        let mut vcpu = vm.create_vcpu()?;
        let tsc_khz = vcpu.tsc_khz();
        boot::write_boot_info(&mem, cfg.mem, cmdline, tsc_khz, tl.launch_ns())?;
        vcpu.set_boot_registers(&boot::registers(&elf.note))?;
        if cfg.timeline.is_some() {
            tl.set_clock_reference(vcpu.clock_reference(tsc_khz));
        }
        tl.mark(Phase::VcpuReady);

        // The rest of RAM is registered from the guest's first exit on.
        // (A scope joins its threads on every return, early ones too.)
        let mut pending = vstate::PendingRam::new(s, &vm, deferred);
        let mut devices = devices::Devices::new(cfg.console_out());
        let outcome = vcpu.run_until_stop(&mem, &mut devices, cfg.timeout, tl, &mut pending);
        tl.mark(Phase::GuestStopped);
        pending.wait()?;
        tl.pending_ram_accesses = pending.accesses;
        let outcome = outcome?;
        tl.set_guest_trace(boot::read_trace(&mem));
        if cfg.timeline.is_some() {
            tl.set_stats(vcpu.stats());
            tl.guest_touched_kib = vstate::resident_kib(&mem);
            tl.peak_rss_kib = vstate::peak_rss_kib();
        }
        Ok(outcome)
    })
}
