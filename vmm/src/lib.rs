//! The Torito monitor: a KVM microVM monitor that boots Torito appliances by
//! direct 64-bit entry at CPL3.
//!
//! [`run`] is the whole life of a guest, written as its boot script. The
//! rooms it visits:
//!
//! - [`cli`]: the `torito` command line; [`config`]: what it asked for; [`error`]: how a run ends.
//! - [`loader`]: the ELF's checks and loading.
//! - [`devices`]: the guest's devices and the table of who answers where
//!   (the register page, COM1, virtio-mmio disks, NICs, vsock and shared
//!   directories).
//! - [`arch`]: page tables, boot information, boot registers, CPUID.
//! - [`vstate`]: every KVM ioctl and all of the monitor's `unsafe` code.
//! - [`machine`]: the vCPU threads and their exit loop, stopping, the
//!   timeout, deferred RAM, the device I/O thread.
//! - [`sandbox`]: a seccomp filter per thread (`--seccomp`).
//! - [`timeline`]: where the time went (`--timeline`).
//! - [`gdb`]: the GDB remote protocol (`--gdb`); [`core_dump`]: `--core`;
//!   [`symbolize`]: backtraces named from the ELF.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod arch;
pub mod cli;
pub mod config;
pub mod core_dump;
pub mod devices;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gdb;
pub mod loader;
pub mod machine;
pub mod sandbox;
pub mod symbolize;
pub mod timeline;
#[allow(unsafe_code)]
pub mod vstate;

pub use config::VmConfig;
pub use error::{Error, Outcome};

use std::fs::File;
use std::os::fd::AsRawFd;

use arch::{boot_info, paging, regs};
use machine::{Machine, Parts, PendingRam};
use timeline::{Phase, Timeline};
use torito_abi::layout::{MAX_RAM, MIN_RAM};
use torito_abi::note::KernelNote;
use vstate::{Kvm, Vm};

/// Boot the guest described by `cfg` and run it to the end. Call it once
/// per process: the end of the process tears the VM down (see the end).
pub fn run(cfg: &VmConfig, tl: &mut Timeline) -> Result<Outcome, Error> {
    // Everything that can be refused is checked before KVM is touched.
    let mut image = open_kernel(cfg)?;
    let elf = loader::check(&image, cfg.mem).map_err(|m| Error::BadImage(cfg.kernel.clone(), m))?;
    // The seccomp filters of every thread (a share's copying thread too).
    let sandbox = sandbox::Sandbox::new(cfg);
    let mut devices = devices::attach(cfg, &sandbox)?;
    let gdb = match &cfg.gdb {
        Some(addr) => Some((gdb::Listener::bind(addr)?, gdb::debugger_flag(&cfg.kernel)?)),
        None => None,
    };
    let cmdline = format!("{}{}", cfg.cmdline, devices.cmdline());
    let cmdline = boot_info::check_cmdline(cmdline.trim_start())?;
    // The vCPU filter: compiled on a thread of its own meanwhile.
    let installer = sandbox.installer()?;

    let kvm = Kvm::open(&cfg.kvm_device)?;
    tl.mark(Phase::KvmReady);
    let vm = kvm.create_vm()?;
    check_cpus(cfg.cpus, &elf.note, &vm)?;
    // (Creating the vCPU on a second thread, in parallel with memory
    // registration, was measured: no gain, KVM serialises the two.)
    let (mem, deferred) = vm.add_memory(cfg.mem)?;
    tl.mark(Phase::MemoryReady);
    // The vCPU's creation maps its run structure, which would wait for the
    // image's warm-up below (each step of it holds the address space's lock
    // for reading): done first.
    let lapic = vm.enable_lapic()?;
    let vcpu = vm.open_vcpu(0)?;

    // Large segments (baked-in files) are mapped from the file, not copied.
    let file = image.try_clone().ok();
    let mut map =
        |gpa, offset, len| file.as_ref().is_some_and(|f| vstate::map_file(&mem, gpa, f, offset, len));
    loader::load(&mem, &mut image, &elf, &mut map).map_err(|m| Error::BadImage(cfg.kernel.clone(), m))?;
    let guards = loader::stack_guards(&elf, &mut |buf, at| {
        use std::os::unix::fs::FileExt;
        image.read_exact_at(buf, at).is_ok()
    });
    paging::write_page_tables(&mem, cfg.mem, &guards, loader::heap_start(&elf))?;
    // Made present in the host from now on, beside the rest of the set-up
    // and then the guest: KVM maps up to eight of these pages per guest
    // fault (sandbox::install).
    let warm =
        loader::warm_ranges(&elf).into_iter().filter_map(|(gpa, len)| vstate::host_range(&mem, gpa, len));
    installer.warm_up(warm.collect());
    tl.mark(Phase::ElfLoaded);

    if std::env::var_os("TORITO_DEBUG_IOEVENTFD").is_some() {
        vm.debug_ioeventfd()?;
    }
    // `,iothread` disks: QueueNotify through an ioeventfd (docs/design.md).
    devices.connect_notifiers(|addr| vm.notify_eventfd(addr))?;
    let mut vcpu = vcpu.configure(lapic)?;
    let tsc_khz = vcpu.tsc_khz();
    // Without a LAPIC the kernel cannot wake or time other cores.
    let cpus = if lapic { cfg.cpus } else { 1 };
    // The devices' first register batches, run now: an exit fewer each.
    let snapshots = devices.write_snapshots(&mem, torito_abi::layout::BOOT_INFO_ADDR);
    // With a LAPIC, `configure` set it up (`arch::lapic`), and will on
    // every other vCPU.
    let told = boot_info::Cpus { count: cpus, lapic_preset: lapic };
    boot_info::write_boot_info(&mem, cfg.mem, cmdline, tsc_khz, tl.launch_ns(), told, snapshots)?;
    vcpu.set_boot_registers(&regs::registers(&elf.note, 0))?;
    if cfg.timeline.is_some() {
        tl.set_clock_reference(vcpu.clock_reference(tsc_khz));
    }
    tl.mark(Phase::VcpuReady);

    // The rest of RAM is registered from the guest's first exit on.
    let pending = PendingRam::new(deferred, sandbox.clone());
    let keep_registers = cfg.core.is_some();
    let gdb = match gdb {
        Some((listener, flag)) => {
            let dbg = gdb::Debugger::new(flag)?;
            dbg.attach(&mem)?;
            eprintln!(
                "torito: waiting for gdb on {0}: gdb {1} -ex 'target remote {0}'",
                listener.addr(),
                cfg.kernel.display()
            );
            Some((listener, dbg))
        }
        None => None,
    };
    let parts = Parts {
        note: elf.note,
        cpus,
        lapic,
        devices,
        pending,
        timeout: cfg.timeout,
        keep_registers,
        gdb,
        sandbox,
        installer,
    };
    let machine = Machine::new(&vm, &mem, parts)?;
    // A scope joins its threads (secondary vCPUs, RAM registration, device
    // I/O) on every return.
    let mut kept = false;
    std::thread::scope(|s| {
        machine.run(s, &mut vcpu, tl);
        tl.mark(Phase::GuestStopped);
        // What is freed from here on is left to the process's exit.
        vstate::heap::stop_freeing();
        // The VM's and the TAP devices' last closes (0.3–0.7 ms and an RCU
        // grace period here) and the freeing of guest memory come after the
        // monitor's exit: in a keeper process that holds them (`--teardown`),
        // made now, while the other threads end (its `clone` was the run's
        // end's longest step, ~30 µs); or, without one, through the VM's way
        // out (`vstate::Farewell`, below).
        kept = machine.keeper() && keep(cfg.seccomp == sandbox::SeccompMode::Off);
        // While the other vCPUs take their kick (tens to hundreds of µs
        // here) and the threads end.
        tl.set_guest_trace(boot_info::read_trace(&mem));
        if cfg.timeline.is_some_and(|f| f.figures()) {
            tl.set_stats(vcpu.stats());
            tl.guest_touched_kib = vstate::sys::resident_kib(&mem);
            tl.peak_rss_kib = vstate::sys::peak_rss_kib();
        }
    });

    machine.flush_devices();
    machine.pending().wait()?;
    tl.pending_ram_accesses = machine.pending().accesses();
    if let Some(t) = machine.sandboxed_at() {
        tl.mark_at(Phase::Sandboxed, t);
    }
    tl.vcpus_started = machine.started();
    let registers = machine.registers();
    // Without a keeper: the VM leaves by its way out (`vstate::Farewell`;
    // the devices close theirs now, the memory goes with the process).
    let farewell = if kept { None } else { machine.take_farewell() };
    if let Some(f) = &farewell {
        f.send(&machine.slow_to_close());
    }
    let outcome = machine.into_outcome()?;
    if let (Some(path), Some(signal)) = (&cfg.core, outcome.core_signal()) {
        let name = cfg.kernel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match core_dump::write(path, &mem, &registers, signal, &name, &cfg.cmdline) {
            Ok(()) => eprintln!(
                "torito: core written to {} (gdb {} {})",
                path.display(),
                cfg.kernel.display(),
                path.display()
            ),
            Err(e) => eprintln!("torito: warning: cannot write the core file {}: {e}", path.display()),
        }
    }
    // The VM (and vCPU 0, which refers to it) is destroyed by the keeper,
    // or by the kernel after the monitor has exited. vCPU 0's
    // shared page and guest RAM are left to the process's exit too, which
    // unmaps the whole address space at once: each `munmap` here, after
    // other threads ran on other CPUs, cost a round of TLB-flush IPIs
    // (up to ~0.9 ms on the development host). `run` is called once per
    // process.
    vm.destroy_in_background(farewell, &[vcpu.as_raw_fd()]);
    std::mem::forget(vcpu);
    std::mem::forget(mem);
    Ok(outcome)
}

/// Hand the VM and the process's memory to a keeper (`vstate::keeper`):
/// whether it took them; if not, why, on stderr. Without filters the
/// sandbox thread may not have opened the keeper's pidfd yet (a guest that
/// stopped within its first milliseconds): it is opened here then.
fn keep(unfiltered: bool) -> bool {
    if unfiltered {
        vstate::keeper::prepare();
    }
    match vstate::keeper::hand_over() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("torito: warning: --teardown=keeper: {e}; the monitor frees the VM itself");
            false
        }
    }
}

/// Open the kernel ELF and check what needs no KVM: a file, RAM in range.
fn open_kernel(cfg: &VmConfig) -> Result<File, Error> {
    let image = File::open(&cfg.kernel).map_err(|e| Error::ReadKernel(cfg.kernel.clone(), e))?;
    if image.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::ReadKernel(cfg.kernel.clone(), std::io::Error::other("it is a directory")));
    }
    if cfg.mem < MIN_RAM || cfg.mem > MAX_RAM {
        return Err(Error::Config(format!(
            "--mem {} MiB is out of range ({} MiB to {} GiB)",
            cfg.mem >> 20,
            MIN_RAM >> 20,
            MAX_RAM >> 30
        )));
    }
    Ok(image)
}

/// Check `--cpus` against the kernel's per-core tables, KVM and the host.
fn check_cpus(cpus: u32, note: &KernelNote, vm: &Vm) -> Result<(), Error> {
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
