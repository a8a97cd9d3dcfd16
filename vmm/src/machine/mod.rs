//! A running guest: its vCPU threads and their exit loop, stopping and
//! kicking vCPUs, the timeout, deferred RAM and the device I/O thread.
//! Safe code over `vstate`.
//!
//! - [`exit`]: what each VM exit means (a pure function of the exit and
//!   the devices).
//! - [`ram`]: RAM registered after the guest started.
//! - `io`: the device I/O thread and device interrupts.

pub mod exit;
mod io;
pub mod ram;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Duration;

use torito_abi::note::KernelNote;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::errno;

use crate::devices::Devices;
use crate::error::{Error, Outcome};
use crate::sandbox::{Installer, Role, Sandbox};
use crate::timeline::{Phase, Timeline};
use crate::vstate::{self, Vcpu, VcpuThreads, Vm};
use exit::{Exit, Step, handle_exit};
pub use ram::PendingRam;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f` on a thread of `scope` named `name` (as `ps -L`, gdb and
/// `/proc/PID/task/*/comm` show it).
pub(crate) fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() + Send + 'scope,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .map(|_| ())
        .map_err(|e| Error::Thread(format!("cannot start the {name} thread: {e}")))
}

/// A guest being run: what its vCPU threads share.
///
/// vCPU 0 runs on the caller's thread; the kernel starts the others with
/// the `START_CORES` register, each on a thread of its own (created then,
/// so a one-core launch pays nothing for them). Devices sit behind one
/// lock. The first vCPU to stop the guest (exit, crash, timeout) records
/// the outcome and stops the others: a signal makes their `KVM_RUN` return
/// (`immediate_exit` covers a signal that arrives outside it).
pub struct Machine<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    note: KernelNote,
    cpus: u32,
    lapic: bool,
    devices: Mutex<Devices>,
    pending: PendingRam,
    timeout: Option<Duration>,
    started: AtomicU32,
    stop: AtomicBool,
    result: Mutex<Option<Result<Outcome, Error>>>,
    threads: VcpuThreads,
    has_host_io: bool,
    io_started: AtomicBool,
    /// Written when the guest stops, so the I/O thread's wait ends.
    stopped: vmm_sys_util::eventfd::EventFd,
    /// With `--core`: each vCPU's registers as it stopped.
    registers: Option<Mutex<Vec<crate::core_dump::CoreRegs>>>,
    /// With `--gdb`: the socket and what the vCPUs share with gdb's thread.
    gdb: Option<(crate::gdb::Listener, crate::gdb::Debugger)>,
    /// Each thread's seccomp filter.
    sandbox: Sandbox,
    /// The vCPU filter on its way to every thread.
    installer: Installer,
    /// When the vCPU filter was on every thread (0: not yet known here).
    sandboxed_ns: AtomicU64,
    /// Whether the vCPU filter is known to be in place.
    sandboxed: AtomicBool,
}

/// What the machine is made of, besides the VM and its memory.
pub struct Parts {
    /// The kernel's note (entry points, per-core tables).
    pub note: KernelNote,
    /// vCPUs the guest may start.
    pub cpus: u32,
    /// Whether the VM has an in-kernel LAPIC.
    pub lapic: bool,
    /// The guest's devices.
    pub devices: Devices,
    /// RAM still to be registered.
    pub pending: PendingRam,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// Keep each vCPU's registers as it stops (`--core`).
    pub keep_registers: bool,
    /// `--gdb`: the bound socket and the debugger (which holds the guest
    /// before its first instruction until gdb continues).
    pub gdb: Option<(crate::gdb::Listener, crate::gdb::Debugger)>,
    /// The threads' seccomp filters.
    pub sandbox: Sandbox,
    /// The sandbox thread, holding the vCPU filter.
    pub installer: Installer,
}

impl<'a> Machine<'a> {
    /// A machine of `parts.cpus` vCPUs (vCPU 0 made by the caller).
    pub fn new(vm: &'a Vm, mem: &'a GuestMemoryMmap, parts: Parts) -> Result<Self, Error> {
        let Parts { note, cpus, lapic, devices, pending, timeout, keep_registers, gdb, sandbox, installer } =
            parts;
        if cpus > 1 || gdb.is_some() {
            vstate::vcpu::install_kick_handler()?;
        }
        vstate::vcpu::catch_stop_signals()?;
        if let Some(d) = timeout {
            vstate::vcpu::arm_timeout(d)?;
        }
        let has_host_io = devices.has_host_io();
        Ok(Self {
            vm,
            mem,
            note,
            cpus,
            lapic,
            devices: Mutex::new(devices),
            pending,
            timeout,
            started: AtomicU32::new(1),
            stop: AtomicBool::new(false),
            result: Mutex::new(None),
            threads: VcpuThreads::default(),
            has_host_io,
            io_started: AtomicBool::new(false),
            stopped: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| Error::Kvm("eventfd", errno::Error::new(e.raw_os_error().unwrap_or(0))))?,
            registers: keep_registers.then(|| Mutex::new(Vec::new())),
            gdb,
            sandbox,
            installer,
            sandboxed_ns: AtomicU64::new(0),
            sandboxed: AtomicBool::new(false),
        })
    }

    /// The deferred RAM.
    pub fn pending(&self) -> &PendingRam {
        &self.pending
    }

    /// vCPUs that were started (vCPU 0 included).
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    /// Run vCPU 0 on this thread until the guest stops; secondary vCPUs
    /// run on threads of `scope`, which the caller joins.
    ///
    /// The vCPU seccomp filter goes on every thread as the guest starts
    /// (`sandbox::Installer`); no exit is handled before it is there.
    pub fn run<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>, vcpu: &mut Vcpu, tl: &mut Timeline) {
        if let Some((listener, dbg)) = &self.gdb {
            let started = self.spawn(scope, "gdb", move || {
                if self.sandboxed() && self.confine(Role::Gdb) {
                    let kick = || self.threads.kick_others();
                    let kill = || self.finish(Some(Ok(Outcome::Signalled(libc::SIGKILL))));
                    crate::gdb::serve(listener, dbg, self.mem, &self.stop, &kick, &kill);
                }
            });
            if let Err(e) = started {
                return self.finish(Some(Err(e)));
            }
        }
        self.installer.go();
        tl.mark(Phase::FirstRun);
        let out = self.run_vcpu(scope, vcpu, Some(tl));
        // A guest stopped before its first exit (a signal, the timeout):
        // the filter is on its way all the same; let it land now, not at
        // some point of the teardown.
        if !self.sandboxed.load(Ordering::Acquire)
            && let Ok(at) = self.installer.wait()
        {
            self.sandboxed_ns.store(at.unwrap_or(0), Ordering::Relaxed);
        }
        self.finish(out);
    }

    /// With `--core`: the vCPUs' registers as they stopped, by vCPU.
    pub fn registers(&self) -> Vec<crate::core_dump::CoreRegs> {
        let mut v = self.registers.as_ref().map(|r| lock(r).clone()).unwrap_or_default();
        v.sort_by_key(|r| r.cpu);
        v
    }

    /// Make what the guest wrote to its devices durable (`fdatasync` of
    /// its disks), however it stopped: a SIGTERM loses nothing a crash of
    /// the host would then lose.
    pub fn flush_devices(&self) {
        for line in lock(&self.devices).flush() {
            eprintln!("torito: warning: {line}");
        }
    }

    /// The VM's way out of the process, once the guest has stopped
    /// (`vstate::Farewell`).
    pub fn take_farewell(&self) -> Option<vstate::Farewell> {
        self.installer.take_farewell()
    }

    /// Whether the run ends with a keeper (`vstate::keeper`).
    pub fn keeper(&self) -> bool {
        self.installer.keeper()
    }

    /// Descriptors of the devices whose last close is slow, for the VM's
    /// way out (`vstate::Farewell::send`).
    pub fn slow_to_close(&self) -> Vec<std::os::fd::RawFd> {
        lock(&self.devices).slow_to_close()
    }

    /// How the guest stopped (after every vCPU thread has been joined).
    pub fn into_outcome(self) -> Result<Outcome, Error> {
        let r = self.result.into_inner().unwrap_or_else(|e| e.into_inner());
        r.unwrap_or_else(|| Err(Error::Config("the guest stopped without an outcome".into())))
    }

    /// Record why the guest stopped (the first reason wins) and stop every
    /// vCPU and the I/O thread.
    fn finish(&self, out: Option<Result<Outcome, Error>>) {
        if let Some(r) = out {
            let mut g = lock(&self.result);
            if g.is_none() {
                if let (Some((_, dbg)), Ok(outcome)) = (&self.gdb, &r) {
                    dbg.end(outcome);
                }
                *g = Some(r);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        self.installer.stop_warming();
        let _ = self.stopped.write(1);
        self.threads.kick_others();
    }

    /// Wait until the vCPU filter is on every thread (at once, after the
    /// first time); false (and the guest stopped) if it could not be.
    fn sandboxed(&self) -> bool {
        if self.sandboxed.load(Ordering::Acquire) {
            return true;
        }
        match self.installer.wait() {
            Ok(at) => {
                self.sandboxed_ns.store(at.unwrap_or(0), Ordering::Relaxed);
                self.sandboxed.store(true, Ordering::Release);
                if std::env::var_os("TORITO_TEST_FORBIDDEN_SYSCALL").is_some() {
                    vstate::sigsys::attempt_forbidden_call();
                }
                true
            }
            Err(e) => {
                self.finish(Some(Err(e)));
                false
            }
        }
    }

    /// When the vCPU filter was on every thread (`CLOCK_MONOTONIC` ns).
    pub fn sandboxed_at(&self) -> Option<u64> {
        Some(self.sandboxed_ns.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Install `role`'s seccomp filter on this thread; false (and the
    /// guest stopped with the error) if it could not be.
    fn confine(&self, role: Role) -> bool {
        match self.sandbox.enter(role) {
            Ok(()) => true,
            Err(e) => {
                self.finish(Some(Err(e)));
                false
            }
        }
    }

    /// Whether the guest is being stopped (by a vCPU, a signal or the
    /// timeout).
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || vstate::vcpu::stop_signal().is_some() || vstate::vcpu::timed_out()
    }

    /// [`spawn`] a thread with the guest's warm-up held back until the
    /// thread runs `f` (`sandbox::Installer::hold`): its stack is a mapping,
    /// and so is the signal stack `std` gives each thread as it starts (and
    /// its guard page); each waits for the address space's lock behind the
    /// warm-up's steps, and a vCPU's page fault waits behind that. Held
    /// for the spawn only, the I/O thread's start then waited ~0.9 ms, the
    /// guest with it (traced).
    fn spawn<'scope>(
        &'scope self,
        scope: &'scope Scope<'scope, 'a>,
        name: &str,
        f: impl FnOnce() + Send + 'scope,
    ) -> Result<(), Error> {
        let hold = self.installer.hold();
        spawn(scope, name, move || {
            drop(hold);
            f()
        })
    }

    fn start_cores<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>, want: u32) {
        let want = want.min(self.cpus);
        let mut cur = self.started.load(Ordering::SeqCst);
        while cur < want {
            match self.started.compare_exchange(cur, want, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    for id in cur..want {
                        let started = self.spawn(scope, &format!("vcpu{id}"), move || {
                            let out = self.run_secondary(scope, id);
                            self.finish(out);
                        });
                        if let Err(e) = started {
                            self.finish(Some(Err(e)));
                        }
                    }
                    return;
                }
                Err(now) => cur = now,
            }
        }
    }

    fn run_secondary<'scope>(
        &'scope self,
        scope: &'scope Scope<'scope, 'a>,
        id: u32,
    ) -> Option<Result<Outcome, Error>> {
        // Its filter, inherited, is on already: a forbidden call while it
        // makes its vCPU is to be reported as the vCPU thread's.
        self.sandbox.inherit(Role::Vcpu);
        let made = self.vm.create_vcpu(id, self.lapic).and_then(|v| {
            v.set_boot_registers(&crate::arch::regs::registers(&self.note, id))?;
            v.make_runnable()?;
            Ok(v)
        });
        match made {
            Ok(mut vcpu) => self.run_vcpu(scope, &mut vcpu, None),
            Err(e) => Some(Err(e)),
        }
    }

    /// Run `vcpu` until the guest stops (`Some`: this vCPU saw why) or
    /// another vCPU stopped it (`None`).
    fn run_vcpu<'scope>(
        &'scope self,
        scope: &'scope Scope<'scope, 'a>,
        vcpu: &mut Vcpu,
        mut tl: Option<&mut Timeline>,
    ) -> Option<Result<Outcome, Error>> {
        vcpu.receive_kicks();
        // The vCPU filter: from the sandbox thread, or inherited.
        self.sandbox.inherit(Role::Vcpu);
        let dbg = self.gdb.as_ref().map(|(_, d)| d);
        if let Some(d) = dbg {
            d.enter(vcpu.id());
        }
        let out = self.threads.registered(|| self.vcpu_loop(scope, vcpu, &mut tl));
        if let Some(d) = dbg {
            d.leave(vcpu.id());
        }
        if let Some(regs) = &self.registers {
            lock(regs).push(vcpu.core_regs());
        }
        if std::env::var_os("TORITO_DEBUG_VCPUS").is_some() {
            eprintln!("torito: debug: {}", vcpu.crash_regs());
        }
        out
    }

    fn vcpu_loop<'scope>(
        &'scope self,
        scope: &'scope Scope<'scope, 'a>,
        vcpu: &mut Vcpu,
        tl: &mut Option<&mut Timeline>,
    ) -> Option<Result<Outcome, Error>> {
        let (mem, pending) = (self.mem, &self.pending);
        loop {
            if let Some(sig) = vstate::vcpu::stop_signal() {
                return Some(Ok(Outcome::Signalled(sig)));
            }
            if vstate::vcpu::timed_out() {
                return Some(Ok(Outcome::Timeout(self.timeout.unwrap_or_default())));
            }
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if let Some((_, dbg)) = &self.gdb {
                if let Err(e) = dbg.checkpoint(vcpu, mem, &|| self.stopping()) {
                    return Some(Err(e));
                }
                if self.stopping() {
                    continue;
                }
            }
            let mut exit = match vcpu.run() {
                Ok(exit) => exit,
                Err(e) => return Some(Err(e)),
            };
            if let Some(tl) = tl.as_deref_mut() {
                tl.runs += 1;
            }
            // The launch is over: the blocks it freed are freed now.
            vstate::heap::stop_holding();
            // The guest's first exit is the first the monitor acts on.
            if !self.sandboxed() {
                return None;
            }
            // RAM not registered yet: the monitor does the access.
            let done = match exit {
                Exit::MmioRead(a, ref mut d) if pending.contains(a) => {
                    Some(pending.read(scope, self.vm, mem, a, d))
                }
                Exit::MmioWrite(a, d) if pending.contains(a) => {
                    Some(pending.write(scope, self.vm, mem, a, d))
                }
                _ => None,
            };
            if let Some(r) = done {
                if let Err(e) = r {
                    return Some(Err(e));
                }
                continue;
            }
            let step = handle_exit(exit, &mut lock(&self.devices), mem);
            // The guest goes on: time to register the rest of its RAM (a
            // guest that stops at its first exit never needs it) and to
            // watch the devices' host side.
            if step.goes_on() {
                // (It may spawn the registration's thread: see `Machine::spawn`.)
                pending.start(scope, self.vm, Some(self.installer.hold()));
            }
            match step {
                Step::Continue => self.start_io(scope),
                Step::StartCores(n) => self.start_cores(scope, n),
                Step::Interrupt(line) => self.device_interrupt(line),
                Step::TestInterrupt(vector, apic, delay_us) => {
                    let started = self.spawn(scope, "irq-test", move || {
                        if self.confine(Role::Timer) {
                            self.test_interrupt(vector, apic, delay_us);
                        }
                    });
                    if let Err(e) = started {
                        return Some(Err(e));
                    }
                }
                Step::DebugTrap(frame) => {
                    if let Some((_, dbg)) = &self.gdb {
                        let kick = || self.threads.kick_others();
                        if let Err(e) = dbg.trap(vcpu, mem, frame, &kick, &|| self.stopping()) {
                            return Some(Err(e));
                        }
                    }
                }
                Step::Exit(code) => return Some(Ok(Outcome::Exited(code))),
                Step::Reset => return Some(Ok(Outcome::Reset)),
                Step::TripleFault => return Some(Ok(Outcome::TripleFault(vcpu.crash_regs()))),
                Step::Halted => return Some(Ok(Outcome::Halted(vcpu.crash_regs()))),
                Step::Crash(why) => return Some(Ok(Outcome::Crashed(why, vcpu.crash_regs()))),
            }
        }
    }
}
