//! A vCPU: its registers, `KVM_RUN`, its statistics, and the signals that
//! make `KVM_RUN` return early (another vCPU stopped the guest; the
//! timeout expired).
//!
//! A signal handler cannot know which vCPU its thread runs, so each thread
//! keeps a pointer to its vCPU's `kvm_run` area; the handler sets its
//! `immediate_exit` byte, which also covers a signal that arrives between
//! two `KVM_RUN`s.

use std::cell::Cell;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kvm_bindings::{Msrs, kvm_msr_entry, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::errno;

use super::sys::now_ns;
use crate::arch::regs::{BootRegisters, Segment};
use crate::error::{CrashRegs, Error};
use crate::machine::exit::Exit;
use crate::timeline::ClockRef;

/// A vCPU. It stays on the thread that made it (`!Send`): that thread's
/// signal handlers point at it.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    _on_its_thread: PhantomData<*const ()>,
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

mod stats_ioctl {
    #![allow(missing_docs)]
    use vmm_sys_util::ioctl_io_nr;
    ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use stats_ioctl::KVM_GET_STATS_FD;

impl Vcpu {
    pub(super) fn new(fd: VcpuFd, id: u32) -> Self {
        Self { fd, id, _on_its_thread: PhantomData }
    }

    /// This vCPU's index (0 is the boot vCPU).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// General registers, flags and RIP (for the debugger).
    pub fn regs(&self) -> Result<kvm_bindings::kvm_regs, Error> {
        self.fd.get_regs().map_err(|e| Error::Kvm("KVM_GET_REGS", e))
    }

    /// Set the general registers, flags and RIP.
    pub fn set_regs(&self, r: &kvm_bindings::kvm_regs) -> Result<(), Error> {
        self.fd.set_regs(r).map_err(|e| Error::Kvm("KVM_SET_REGS", e))
    }

    /// Segment and control registers.
    pub fn sregs(&self) -> Result<kvm_bindings::kvm_sregs, Error> {
        self.fd.get_sregs().map_err(|e| Error::Kvm("KVM_GET_SREGS", e))
    }

    /// Set the segment and control registers.
    pub fn set_sregs(&self, r: &kvm_bindings::kvm_sregs) -> Result<(), Error> {
        self.fd.set_sregs(r).map_err(|e| Error::Kvm("KVM_SET_SREGS", e))
    }

    /// x87 and SSE state.
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, Error> {
        self.fd.get_fpu().map_err(|e| Error::Kvm("KVM_GET_FPU", e))
    }

    /// Set the x87 and SSE state.
    pub fn set_fpu(&self, f: &kvm_bindings::kvm_fpu) -> Result<(), Error> {
        self.fd.set_fpu(f).map_err(|e| Error::Kvm("KVM_SET_FPU", e))
    }

    /// The guest's own debug registers: DR0–DR3 and DR7 (for gdb's
    /// hardware breakpoints and watchpoints; their #DB reaches the
    /// guest's IDT).
    pub fn set_debug_registers(&self, db: [u64; 4], dr7: u64) -> Result<(), Error> {
        let mut d = self.fd.get_debug_regs().map_err(|e| Error::Kvm("KVM_GET_DEBUGREGS", e))?;
        d.db = db;
        d.dr7 = dr7;
        d.dr6 = 0xffff_0ff0;
        self.fd.set_debug_regs(&d).map_err(|e| Error::Kvm("KVM_SET_DEBUGREGS", e))
    }

    /// DR6: which debug register fired.
    pub fn debug_status(&self) -> Result<u64, Error> {
        self.fd.get_debug_regs().map(|d| d.dr6).map_err(|e| Error::Kvm("KVM_GET_DEBUGREGS", e))
    }

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

    /// Make a secondary vCPU runnable at once: with an in-kernel LAPIC, KVM
    /// makes every vCPU but the first wait for INIT-SIPI, and ours start in
    /// long mode.
    pub fn make_runnable(&self) -> Result<(), Error> {
        self.fd
            .set_mp_state(kvm_bindings::kvm_mp_state { mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE })
            .map_err(|e| Error::Kvm("KVM_SET_MP_STATE", e))
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

    /// The registers a core file holds (zeros where KVM refuses to say).
    pub fn core_regs(&self) -> crate::core_dump::CoreRegs {
        let r = self.fd.get_regs().unwrap_or_default();
        let s = self.fd.get_sregs().unwrap_or_default();
        crate::core_dump::CoreRegs {
            cpu: self.id,
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            rsp: r.rsp,
            r: [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15],
            rip: r.rip,
            rflags: r.rflags,
            seg: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|g| u64::from(g.selector)),
            fs_base: s.fs.base,
            gs_base: s.gs.base,
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

    /// Let this thread's kick and timeout signals stop this vCPU (call on
    /// its thread before its first run; undone when it is dropped).
    pub fn receive_kicks(&mut self) {
        let run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run));
    }

    /// Complete the exit the monitor just served (an I/O exit is finished
    /// only by the next `KVM_RUN`), without running guest code: a run with
    /// `immediate_exit` set does exactly that (KVM's API documentation
    /// recommends it before reading the state). For the debugger.
    pub fn complete_pending_exit(&mut self) -> Result<(), Error> {
        self.fd.set_kvm_immediate_exit(1);
        self.run().map(|_| ())
    }

    /// Run the guest until its next exit. A signal (kick, timeout) reads as
    /// [`Exit::Interrupted`].
    pub fn run(&mut self) -> Result<Exit<'_>, Error> {
        let kvm_run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
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
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // What `set_kvm_immediate_exit(0)` does, through a pointer
                // taken before the run: the borrow checker cannot see that
                // this branch holds no exit data.
                // SAFETY: `kvm_run` is this vCPU's `kvm_run` mapping, alive
                // as long as `self`; no exit data borrows it on this path.
                unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*kvm_run).immediate_exit), 0) };
                Ok(Exit::Interrupted)
            }
            Err(e) => Err(Error::Kvm("KVM_RUN", e)),
        }
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        let run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| {
            if p.get() == run {
                p.set(std::ptr::null_mut());
            }
        });
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
    // The values in one read (a read per value cost ~200 µs of the
    // monitor's exit): the block ends with the farthest descriptor's data.
    let size = |d: &[u8]| usize::from(u16::from_le_bytes([d[6], d[7]])).max(1) * 8;
    let end = descs.chunks_exact(desc_size).map(|d| word(d, 8) as usize + size(d)).max().unwrap_or(0);
    let mut data = vec![0u8; end.min(1 << 20)];
    f.read_exact_at(&mut data, data_offset)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(desc_size) {
        let flags = word(d, 0);
        let offset = word(d, 8) as usize;
        if flags & 0xf > 2 {
            continue;
        }
        let Some(v) = data.get(offset..offset + 8) else { continue };
        let name = String::from_utf8_lossy(&d[16..]).trim_end_matches('\0').to_string();
        out.push((name, u64::from_le_bytes(v.try_into().unwrap_or_default())));
    }
    Ok(out)
}

static TIMED_OUT: AtomicBool = AtomicBool::new(false);

/// The SIGINT or SIGTERM that asked the monitor to stop (0: none).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

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
            // set while the vCPU lives and cleared when it is dropped (a
            // `Vcpu` never leaves its thread); a byte store is what KVM's
            // `immediate_exit` protocol expects.
            unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
        }
    });
}

extern "C" fn on_alarm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // After a stop signal the alarm only carries that signal to the vCPUs.
    if STOP_SIGNAL.load(Ordering::SeqCst) == 0 {
        TIMED_OUT.store(true, Ordering::SeqCst);
    }
    interrupt_this_vcpu();
}

extern "C" fn on_stop(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    interrupt_this_vcpu();
    // The signal may have reached a thread that runs no vCPU: SIGALRM
    // every 10 ms from now on reaches them (`on_alarm` interrupts the vCPU
    // of the thread it lands on). `setitimer` is async-signal-safe.
    let tv = |us: i64| libc::timeval { tv_sec: 0, tv_usec: us as _ };
    let it = libc::itimerval { it_interval: tv(10_000), it_value: tv(1) };
    // SAFETY: `it` is a valid itimerval; the old value is not requested.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

/// Stop the guest as an exit would (outcome, timeline, teardown) when the
/// monitor gets SIGINT (Ctrl-C) or SIGTERM, instead of dying with its
/// timeline unsaid: see [`stop_signal`].
pub fn catch_stop_signals() -> Result<(), Error> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop)
            .map_err(|e| Error::Kvm("sigaction(SIGINT/SIGTERM)", e))?;
    }
    vmm_sys_util::signal::register_signal_handler(libc::SIGALRM, on_alarm)
        .map_err(|e| Error::Kvm("sigaction(SIGALRM)", e))
}

/// The stop signal received, if any.
pub fn stop_signal() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    interrupt_this_vcpu();
}

/// The signal that stops another vCPU thread.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Install the handler of the signal [`VcpuThreads::kick_others`] sends.
pub fn install_kick_handler() -> Result<(), Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| Error::Kvm("sigaction(vCPU kick)", e))
}

/// Deliver SIGALRM after `d`, then every 10 ms (so a signal that arrives
/// on a thread that runs no vCPU is followed by another); from then on
/// [`timed_out`] is true.
pub fn arm_timeout(d: Duration) -> Result<(), Error> {
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

/// Whether the timeout [`arm_timeout`] set has expired.
pub fn timed_out() -> bool {
    TIMED_OUT.load(Ordering::SeqCst)
}

/// The threads running a machine's vCPUs, to kick them out of `KVM_RUN`.
#[derive(Default)]
pub struct VcpuThreads {
    list: Mutex<Vec<ThreadId>>,
}

/// A thread's handle for `pthread_kill`.
#[derive(Clone, Copy)]
struct ThreadId(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque id (a pointer on musl) that any thread
// may pass to `pthread_kill`/`pthread_equal`; it is never dereferenced here.
unsafe impl Send for ThreadId {}

fn lock(m: &Mutex<Vec<ThreadId>>) -> MutexGuard<'_, Vec<ThreadId>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VcpuThreads {
    /// Run `f` on this thread with the thread registered: a
    /// [`kick_others`](Self::kick_others) meanwhile reaches it.
    pub fn registered<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `pthread_self` has no preconditions.
        let me = ThreadId(unsafe { libc::pthread_self() });
        lock(&self.list).push(me);
        // Unregistered on every way out of `f`, unwinding included, so the
        // list only ever holds live threads.
        struct Leave<'a>(&'a VcpuThreads, ThreadId);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                // SAFETY: comparing thread handles has no preconditions.
                lock(&self.0.list).retain(|t| unsafe { libc::pthread_equal(t.0, (self.1).0) } == 0);
            }
        }
        let _leave = Leave(self, me);
        f()
    }

    /// Make every registered thread but the caller leave `KVM_RUN` (its
    /// signal handler sets `immediate_exit`).
    pub fn kick_others(&self) {
        let list = lock(&self.list);
        for t in list.iter() {
            // SAFETY: comparing thread handles has no preconditions.
            if unsafe { libc::pthread_equal(t.0, libc::pthread_self()) } == 0 {
                // SAFETY: each entry is a live thread: a thread removes
                // itself (under this lock, held here) before `registered`
                // returns; the handler `install_kick_handler` installed
                // only sets immediate_exit.
                unsafe { libc::pthread_kill(t.0, kick_signal()) };
            }
        }
    }
}
