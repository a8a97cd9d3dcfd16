//! KVM state: the device, the VM with its memory, the vCPU and its run
//! loop. All of the monitor's `unsafe` code is here.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Duration;

use kvm_bindings::{Msrs, kvm_msr_entry, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm as KvmFd, VcpuExit, VcpuFd, VmFd};
use torito_abi::layout::ram_ranges;
use torito_abi::note::KernelNote;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno;

use crate::boot::{BootRegisters, Segment};
use crate::devices::Devices;
use crate::error::{CrashRegs, Error, Outcome};
use crate::exit::{Exit, Step, handle_exit};
use crate::timeline::{ClockRef, Phase, Timeline};

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Guest RAM resident in this process, in KiB (`mincore` over each region).
pub fn resident_kib(mem: &GuestMemoryMmap) -> Option<u64> {
    let mut pages = 0u64;
    for region in mem.iter() {
        let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `host..host + len` is one live mapping owned by `mem`;
        // `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        pages += vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
    }
    Some(pages * 4)
}

/// This process's peak resident memory in KiB (`VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RAM registered with KVM before the vCPU starts; the rest follows once the
/// guest runs. The kernel's image, boot data and heap start lie in it.
pub const BOOT_SLOT: u64 = 128 << 20;

/// Guest RAM not yet registered with KVM.
#[derive(Debug, Default)]
pub struct DeferredRam {
    slots: Vec<kvm_userspace_memory_region>,
}

impl DeferredRam {
    /// Whether there is nothing to register.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The guest-physical ranges `(start, size)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.slots.iter().map(|s| (s.guest_phys_addr, s.memory_size)).collect()
    }
}

/// RAM whose registration with KVM was deferred, registered on another
/// thread started at the guest's first exit: that is after `kernel_main`
/// (hello's first console write, say), so launch-to-KernelMain does not pay
/// for starting the thread, and a guest that stops at once never needs the
/// rest of its RAM registered. A guest access to unregistered RAM reaches
/// the monitor as MMIO; the vCPU thread then waits for the registration and
/// performs that one access itself.
pub struct PendingRam {
    ranges: Vec<(u64, u64)>,
    state: Mutex<RamState>,
    done: Condvar,
    accesses: AtomicU64,
}

enum RamState {
    Deferred(DeferredRam),
    Registering,
    Done(Result<(), Error>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PendingRam {
    /// `deferred` RAM, to be registered on a thread later.
    pub fn new(deferred: DeferredRam) -> Self {
        let ranges = deferred.ranges();
        let state = if deferred.is_empty() { RamState::Done(Ok(())) } else { RamState::Deferred(deferred) };
        Self { ranges, state: Mutex::new(state), done: Condvar::new(), accesses: AtomicU64::new(0) }
    }

    /// Start registering on a thread of `scope`, if that has not started.
    pub fn start<'scope, 'env>(&'scope self, scope: &'scope Scope<'scope, 'env>, vm: &'scope Vm) {
        let mut g = lock(&self.state);
        if !matches!(*g, RamState::Deferred(_)) {
            return;
        }
        let RamState::Deferred(d) = std::mem::replace(&mut *g, RamState::Registering) else { return };
        drop(g);
        scope.spawn(move || {
            let r = vm.register(&d);
            *lock(&self.state) = RamState::Done(r);
            self.done.notify_all();
        });
    }

    fn contains(&self, addr: u64) -> bool {
        self.ranges.iter().any(|&(start, size)| addr >= start && addr - start < size)
    }

    /// Wait until the registration, if started, is done; its error, once.
    pub fn wait(&self) -> Result<(), Error> {
        let mut g = lock(&self.state);
        while matches!(*g, RamState::Registering) {
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match &mut *g {
            RamState::Done(r) => std::mem::replace(r, Ok(())),
            _ => Ok(()),
        }
    }

    /// Guest accesses the vCPU threads performed themselves.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }
}

/// The KVM device.
pub struct Kvm {
    fd: KvmFd,
}

impl Kvm {
    /// Open the KVM device at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open_err = |e: std::io::Error| Error::KvmOpen(path.to_owned(), e);
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| open_err(std::io::ErrorKind::InvalidInput.into()))?;
        let fd = KvmFd::new_with_path(&cpath)
            .map_err(|e| open_err(std::io::Error::from_raw_os_error(e.errno())))?;
        if fd.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(open_err(std::io::Error::other("not a KVM device (KVM_GET_API_VERSION failed)")));
        }
        Ok(Self { fd })
    }

    /// Create an empty VM.
    pub fn create_vm(&self) -> Result<Vm, Error> {
        let fd = self.fd.create_vm().map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
        Ok(Vm { fd })
    }
}

/// A VM.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Map `ram` bytes of guest RAM (lazily: pages cost nothing until the
    /// guest touches them) and register the first [`BOOT_SLOT`] bytes with
    /// KVM. The rest is returned as [`DeferredRam`], to be registered with
    /// [`Vm::register`] once the guest runs: registering a slot costs time
    /// in proportion to its size on shadow-paging hosts (~1.4 ms for 4 GiB).
    pub fn add_memory(&self, ram: u64) -> Result<(GuestMemoryMmap, DeferredRam), Error> {
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(ram)
            .iter()
            .filter(|(_, len)| *len > 0)
            .map(|&(base, len)| (GuestAddress(base), len as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(ram, e.to_string()))?;
        let mut slots = Vec::new();
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Memory(ram, e.to_string()))? as u64;
            let (start, len) = (region.start_addr().0, region.len());
            let mut piece = |gpa: u64, size: u64, hva: u64| {
                let slot = slots.len() as u32;
                slots.push(kvm_userspace_memory_region {
                    slot,
                    flags: 0,
                    guest_phys_addr: gpa,
                    memory_size: size,
                    userspace_addr: hva,
                });
            };
            if start == 0 && len > BOOT_SLOT {
                piece(0, BOOT_SLOT, host);
                piece(BOOT_SLOT, len - BOOT_SLOT, host + BOOT_SLOT);
            } else {
                piece(start, len, host);
            }
        }
        let deferred = DeferredRam { slots: slots.split_off(1) };
        self.register_slots(&slots)?;
        Ok((mem, deferred))
    }

    /// Register RAM whose registration was deferred. For tests and
    /// debugging, `TORITO_DEBUG_DEFER_RAM_MS` delays it by that many
    /// milliseconds, so that the guest surely touches unregistered RAM.
    pub fn register(&self, d: &DeferredRam) -> Result<(), Error> {
        if let Some(ms) = std::env::var("TORITO_DEBUG_DEFER_RAM_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.register_slots(&d.slots)
    }

    fn register_slots(&self, slots: &[kvm_userspace_memory_region]) -> Result<(), Error> {
        for r in slots {
            // SAFETY: each slot is a part of one live mapping owned by the
            // `GuestMemoryMmap` made in `add_memory`, which `run` keeps until
            // the vCPU has stopped and this registration has finished; slots
            // do not overlap.
            unsafe { self.fd.set_user_memory_region(*r) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }

    /// Give the VM a split irqchip (LAPIC in KVM, no PIC/IOAPIC), before
    /// any vCPU exists. Returns `false` when KVM lacks it (vCPUs then have
    /// no LAPIC).
    ///
    /// Measured here, it makes `KVM_CREATE_VCPU` ~170 µs cheaper and adds
    /// nothing to teardown (unlike a full in-kernel irqchip: 13–23 ms), and
    /// the LAPIC is what timers, wake-ups between cores and MSIs need.
    pub fn enable_lapic(&self) -> Result<bool, Error> {
        if !self.fd.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
            return Ok(false);
        }
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
            args: [IOAPIC_PINS, 0, 0, 0],
            ..Default::default()
        };
        self.fd.enable_cap(&cap).map_err(|e| Error::Kvm("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", e))?;
        Ok(true)
    }

    /// Register an ioeventfd on an MMIO address that nothing uses, for the
    /// measurement `TORITO_DEBUG_IOEVENTFD` asks for (what one ioeventfd
    /// costs the launch and the teardown; see docs/design.md). The eventfd
    /// lives as long as the process.
    pub fn debug_ioeventfd(&self) -> Result<(), Error> {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| Error::Kvm("eventfd", errno::Error::new(e.raw_os_error().unwrap_or(0))))?;
        self.fd
            .register_ioevent(&fd, &kvm_ioctls::IoEventAddress::Mmio(0xdfff_f000), kvm_ioctls::NoDatamatch)
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
        std::mem::forget(fd);
        Ok(())
    }

    /// An eventfd that KVM signals, without an exit to the monitor, when
    /// the guest writes the 32-bit MMIO register at `addr` (any value).
    pub fn notify_eventfd(&self, addr: u64) -> Result<vmm_sys_util::eventfd::EventFd, Error> {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| Error::Kvm("eventfd", errno::Error::new(e.raw_os_error().unwrap_or(0))))?;
        self.fd
            .register_ioevent(&fd, &kvm_ioctls::IoEventAddress::Mmio(addr), kvm_ioctls::NoDatamatch)
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
        Ok(fd)
    }

    /// Most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.fd.check_extension_int(kvm_ioctls::Cap::MaxVcpus).max(1) as usize
    }

    /// Create vCPU `id` (local APIC ID `id`) with the minimal CPUID table.
    pub fn create_vcpu(&self, id: u32, lapic: bool) -> Result<Vcpu, Error> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        let cpuid = crate::cpuid::table(host_cpuid, lapic, id as u8);
        fd.set_cpuid2(&cpuid).map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
        Ok(Vcpu { fd, id })
    }
}

fn host_cpuid(leaf: u32) -> crate::cpuid::Regs {
    let r = std::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Interrupt routes reserved for a user-space IOAPIC with the split irqchip.
const IOAPIC_PINS: u64 = 24;

/// A vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
}

fn kvm_seg(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: 1,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

static TIMED_OUT: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs, for the signal
    /// handlers (null when none).
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Make this thread's next (or current) `KVM_RUN` return at once.
fn interrupt_this_vcpu() {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's vCPU's `kvm_run` mapping,
            // set while the vCPU lives and cleared before it is dropped; a
            // byte store is what KVM's `immediate_exit` protocol expects.
            unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
        }
    });
}

extern "C" fn on_alarm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TIMED_OUT.store(true, Ordering::SeqCst);
    interrupt_this_vcpu();
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    interrupt_this_vcpu();
}

/// The signal that stops another vCPU thread.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Deliver SIGALRM after `d`, then every 10 ms (so a signal that arrives
/// on a thread that runs no vCPU is followed by another).
fn arm_timeout(d: Duration) -> Result<(), Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGALRM, on_alarm)
        .map_err(|e| Error::Kvm("sigaction(SIGALRM)", e))?;
    let tv = |d: Duration| libc::timeval { tv_sec: d.as_secs() as _, tv_usec: d.subsec_micros() as _ };
    let it = libc::itimerval {
        it_interval: tv(Duration::from_millis(10)),
        it_value: tv(d.max(Duration::from_micros(1))),
    };
    // SAFETY: `it` is a valid itimerval; the old value is not requested.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::Kvm("setitimer", errno::Error::last()));
    }
    Ok(())
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
    threads: Mutex<Vec<ThreadHandle>>,
    has_host_io: bool,
    io_started: AtomicBool,
    /// Written when the guest stops, so the I/O thread's wait ends.
    stopped: vmm_sys_util::eventfd::EventFd,
}

/// A vCPU thread's handle, to signal it.
#[derive(Clone, Copy)]
struct ThreadHandle(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque id (a pointer on musl) that any thread
// may pass to `pthread_kill`/`pthread_equal`; it is never dereferenced here.
unsafe impl Send for ThreadHandle {}

impl<'a> Machine<'a> {
    /// A machine of `cpus` vCPUs (vCPU 0 made by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &'a Vm,
        mem: &'a GuestMemoryMmap,
        note: KernelNote,
        cpus: u32,
        lapic: bool,
        devices: Devices,
        pending: PendingRam,
        timeout: Option<Duration>,
    ) -> Result<Self, Error> {
        if cpus > 1 {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
                .map_err(|e| Error::Kvm("sigaction(vCPU kick)", e))?;
        }
        if let Some(d) = timeout {
            arm_timeout(d)?;
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
            threads: Mutex::new(Vec::new()),
            has_host_io,
            io_started: AtomicBool::new(false),
            stopped: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| Error::Kvm("eventfd", errno::Error::new(e.raw_os_error().unwrap_or(0))))?,
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
    pub fn run<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>, vcpu: &mut Vcpu, tl: &mut Timeline) {
        tl.mark(Phase::FirstRun);
        let out = self.run_vcpu(scope, vcpu, Some(tl));
        self.finish(out);
    }

    /// How the guest stopped (after every vCPU thread has been joined).
    pub fn into_outcome(self) -> Result<Outcome, Error> {
        let r = self.result.into_inner().unwrap_or_else(|e| e.into_inner());
        r.unwrap_or_else(|| Err(Error::Config("the guest stopped without an outcome".into())))
    }

    fn finish(&self, out: Option<Result<Outcome, Error>>) {
        if let Some(r) = out {
            let mut g = lock(&self.result);
            if g.is_none() {
                *g = Some(r);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stopped.write(1);
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() };
        for &ThreadHandle(t) in lock(&self.threads).iter() {
            // SAFETY: each entry is a live vCPU thread of this machine: a
            // thread removes itself (under this lock) before it ends.
            if unsafe { libc::pthread_equal(t, me) } == 0 {
                // SAFETY: as above; the handler only sets immediate_exit.
                unsafe { libc::pthread_kill(t, kick_signal()) };
            }
        }
    }

    /// Raise device line `line`: an MSI to vector `0x50 + line` on core 0
    /// (the contract in `torito_abi::layout::VIRTIO_MMIO_BASE`).
    fn device_interrupt(&self, line: u32) {
        let msi = kvm_bindings::kvm_msi { address_lo: 0xfee0_0000, data: 0x50 + line, ..Default::default() };
        if let Err(e) = self.vm.fd.signal_msi(msi) {
            eprintln!("torito: warning: device interrupt not delivered: KVM_SIGNAL_MSI: {e}");
        }
    }

    /// Start the device I/O thread, once, if a device has host-side I/O
    /// (NICs, vsock, disks in I/O-thread mode): it waits on their host
    /// descriptors and serves them (frames into the guest's receive
    /// buffers, queue notifications passed by ioeventfds) under the
    /// devices' lock, then interrupts. Started at the guest's first exit,
    /// like the RAM registration, so a launch does not pay for it before
    /// `kernel_main`.
    fn start_io<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>) {
        if self.has_host_io && !self.io_started.swap(true, Ordering::SeqCst) {
            scope.spawn(move || self.io_loop());
        }
    }

    fn io_loop(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = lock(&self.devices).host_fds_to_watch();
            fds.push((self.stopped.as_raw_fd(), false));
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|&(fd, out)| libc::pollfd {
                    fd,
                    events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
                    revents: 0,
                })
                .collect();
            // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd
            // structures for the call's duration; the TAP descriptors stay
            // open while the machine (which owns the devices) lives, and so
            // does the eventfd. (The timeout bounds the wait for a NIC that
            // holds a frame back until the guest gives a buffer.)
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10) };
            if n > 0 && !self.stop.load(Ordering::SeqCst) {
                let lines = lock(&self.devices).service_host(self.mem);
                for line in lines {
                    self.device_interrupt(line);
                }
            }
        }
    }

    /// Send the MSI the guest asked for through `TEST_INTERRUPT`, after
    /// `delay_us` (cut short if the guest stops).
    fn test_interrupt(&self, vector: u8, apic: u8, delay_us: u32) {
        let until = std::time::Instant::now() + Duration::from_micros(u64::from(delay_us));
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let msi = kvm_bindings::kvm_msi {
                    address_lo: 0xfee0_0000 | (u32::from(apic) << 12),
                    data: u32::from(vector),
                    ..Default::default()
                };
                if let Err(e) = self.vm.fd.signal_msi(msi) {
                    eprintln!("torito: warning: test interrupt not delivered: KVM_SIGNAL_MSI: {e}");
                }
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    fn start_cores<'scope>(&'scope self, scope: &'scope Scope<'scope, 'a>, want: u32) {
        let want = want.min(self.cpus);
        let mut cur = self.started.load(Ordering::SeqCst);
        while cur < want {
            match self.started.compare_exchange(cur, want, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    for id in cur..want {
                        scope.spawn(move || {
                            let out = self.run_secondary(scope, id);
                            self.finish(out);
                        });
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
        let made = self.vm.create_vcpu(id, self.lapic).and_then(|v| {
            v.set_boot_registers(&crate::boot::registers(&self.note, id))?;
            // With an in-kernel LAPIC, KVM makes every vCPU but the first
            // wait for INIT-SIPI; this one starts in long mode right away.
            v.fd.set_mp_state(kvm_bindings::kvm_mp_state { mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE })
                .map_err(|e| Error::Kvm("KVM_SET_MP_STATE", e))?;
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
        KVM_RUN.with(|p| p.set(vcpu.fd.get_kvm_run()));
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() };
        lock(&self.threads).push(ThreadHandle(me));
        let out = self.vcpu_loop(scope, vcpu, &mut tl);
        if std::env::var_os("TORITO_DEBUG_VCPUS").is_some() {
            eprintln!("torito: debug: {}", vcpu.crash_regs());
        }
        lock(&self.threads).retain(|&ThreadHandle(t)| {
            // SAFETY: comparing thread handles has no preconditions.
            unsafe { libc::pthread_equal(t, me) == 0 }
        });
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
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
            if TIMED_OUT.load(Ordering::SeqCst) {
                return Some(Ok(Outcome::Timeout(self.timeout.unwrap_or_default())));
            }
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            let exit = vcpu.fd.run();
            if let Some(tl) = tl.as_deref_mut() {
                tl.runs += 1;
            }
            let step = match exit {
                Ok(exit) => {
                    let e = match exit {
                        VcpuExit::MmioRead(a, d) if pending.contains(a) => {
                            pending.start(scope, self.vm);
                            if let Err(e) = pending.wait() {
                                return Some(Err(e));
                            }
                            pending.accesses.fetch_add(1, Ordering::Relaxed);
                            if mem.read_slice(d, GuestAddress(a)).is_err() {
                                d.fill(0xff);
                            }
                            continue;
                        }
                        VcpuExit::MmioWrite(a, d) if pending.contains(a) => {
                            pending.start(scope, self.vm);
                            if let Err(e) = pending.wait() {
                                return Some(Err(e));
                            }
                            pending.accesses.fetch_add(1, Ordering::Relaxed);
                            let _ = mem.write_slice(d, GuestAddress(a));
                            continue;
                        }
                        VcpuExit::IoOut(p, d) => Exit::IoOut(p, d),
                        VcpuExit::IoIn(p, d) => Exit::IoIn(p, d),
                        VcpuExit::MmioRead(a, d) => Exit::MmioRead(a, d),
                        VcpuExit::MmioWrite(a, d) => Exit::MmioWrite(a, d),
                        VcpuExit::Hlt => Exit::Hlt,
                        VcpuExit::Shutdown => Exit::Shutdown,
                        VcpuExit::FailEntry(r, _) => Exit::FailEntry(r),
                        VcpuExit::InternalError => Exit::InternalError,
                        VcpuExit::SystemEvent(t, _) => Exit::SystemEvent(t),
                        VcpuExit::Intr => Exit::Other("Intr"),
                        VcpuExit::Debug(_) => Exit::Other("Debug"),
                        VcpuExit::Exception => Exit::Other("Exception"),
                        _ => Exit::Other("unknown exit reason"),
                    };
                    handle_exit(e, &mut lock(&self.devices), mem)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A signal: the checks at the top of the loop say why.
                    vcpu.fd.set_kvm_immediate_exit(0);
                    Step::Continue
                }
                Err(e) => return Some(Err(Error::Kvm("KVM_RUN", e))),
            };
            match step {
                // The guest goes on: time to register the rest of its RAM
                // and to watch the NICs.
                Step::Continue => {
                    pending.start(scope, self.vm);
                    self.start_io(scope);
                }
                Step::StartCores(n) => {
                    pending.start(scope, self.vm);
                    self.start_cores(scope, n);
                }
                Step::Interrupt(line) => {
                    pending.start(scope, self.vm);
                    self.device_interrupt(line);
                }
                Step::TestInterrupt(vector, apic, delay_us) => {
                    pending.start(scope, self.vm);
                    scope.spawn(move || self.test_interrupt(vector, apic, delay_us));
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

mod stats_ioctl {
    #![allow(missing_docs)]
    use vmm_sys_util::ioctl_io_nr;
    ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use stats_ioctl::KVM_GET_STATS_FD;

impl Vcpu {
    /// TSC frequency KVM gives the guest (0 if unknown).
    pub fn tsc_khz(&self) -> u64 {
        self.fd.get_tsc_khz().map(u64::from).unwrap_or(0)
    }

    /// Long mode at CPL3 at the kernel's entry.
    pub fn set_boot_registers(&self, r: &BootRegisters) -> Result<(), Error> {
        let mut sregs = self.fd.get_sregs().map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
        sregs.cs = kvm_seg(&r.cs);
        let data = kvm_seg(&r.data);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = kvm_segment { base: r.gs_base, ..data };
        sregs.ss = data;
        sregs.tr = kvm_seg(&r.tr);
        sregs.gdt.base = r.gdt.0;
        sregs.gdt.limit = r.gdt.1;
        sregs.idt.base = r.idt.0;
        sregs.idt.limit = r.idt.1;
        sregs.cr0 = r.cr0;
        sregs.cr3 = r.cr3;
        sregs.cr4 = r.cr4;
        sregs.efer = r.efer;
        self.fd.set_sregs(&sregs).map_err(|e| Error::Kvm("KVM_SET_SREGS", e))?;
        let regs = kvm_bindings::kvm_regs {
            rip: r.rip,
            rsp: r.rsp,
            rdi: r.rdi,
            rsi: r.rsi,
            rflags: r.rflags,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(|e| Error::Kvm("KVM_SET_REGS", e))
    }

    /// Read the guest TSC and the host clock together.
    pub fn clock_reference(&self, tsc_khz: u64) -> Option<ClockRef> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: 0x10, ..Default::default() }]).ok()?;
        let t0 = now_ns();
        let n = self.fd.get_msrs(&mut msrs).ok()?;
        let t1 = now_ns();
        (n == 1).then(|| ClockRef {
            host_ns: t0 + (t1 - t0) / 2,
            guest_tsc: msrs.as_slice()[0].data,
            tsc_khz,
        })
    }

    /// Registers to show when the guest dies.
    pub fn crash_regs(&self) -> CrashRegs {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        CrashRegs {
            cpu: self.id,
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cs: sregs.cs.selector,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
        }
    }

    /// The vCPU's KVM statistics (binary stats interface, Linux 5.14+);
    /// empty where the kernel lacks it.
    pub fn stats(&self) -> Vec<(String, u64)> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor or -1.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(&self.fd, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Vec::new();
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        read_stats(&file).unwrap_or_default()
    }
}

impl AsRawFd for Vcpu {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Parse a KVM binary statistics file (Documentation/virt/kvm/api.rst,
/// "KVM_GET_STATS_FD"): a header, descriptors, then values. Histograms are
/// skipped.
fn read_stats(f: &File) -> std::io::Result<Vec<(String, u64)>> {
    let mut hdr = [0u8; 24];
    f.read_exact_at(&mut hdr, 0)?;
    let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (name_size, num_desc, desc_offset, data_offset) =
        (word(&hdr, 4) as usize, word(&hdr, 8) as usize, word(&hdr, 16) as u64, word(&hdr, 20) as u64);
    if num_desc > 4096 || name_size > 256 {
        return Ok(Vec::new());
    }
    let desc_size = 16 + name_size;
    let mut descs = vec![0u8; desc_size * num_desc];
    f.read_exact_at(&mut descs, desc_offset)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(desc_size) {
        let flags = word(d, 0);
        let offset = u64::from(word(d, 8));
        if flags & 0xf > 2 {
            continue;
        }
        let name = String::from_utf8_lossy(&d[16..]).trim_end_matches('\0').to_string();
        let mut v = [0u8; 8];
        f.read_exact_at(&mut v, data_offset + offset)?;
        out.push((name, u64::from_le_bytes(v)));
    }
    Ok(out)
}
