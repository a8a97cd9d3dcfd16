//! gdb through the monitor (`torito --gdb ADDR`): the GDB remote protocol
//! (served by the `gdbstub` crate) over TCP or a Unix socket, each vCPU a
//! gdb thread, all-stop.
//!
//! How a stop reaches the monitor. On a paravirtual KVM host the guest's
//! code runs at CPL3 natively, and KVM's own debug traps (single step,
//! `int3`, hardware breakpoints under `KVM_SET_GUEST_DEBUG`) are delivered
//! to the guest's IDT instead of the monitor (docs/debugging.md). So the
//! guest cooperates, on every host alike: the monitor sets the kernel's
//! `_torito_debugger` byte, and the kernel's #BP and #DB stubs then save
//! the registers on the CPL0 stack and hand the frame's address to the
//! monitor (`torito_abi::mmio::DEBUG_TRAP`), which stops that vCPU until
//! gdb resumes it. Breakpoints are `int3` bytes the monitor writes; a
//! single step is the trap flag set in the registers the vCPU resumes
//! with. Ctrl-C and "stop the others" need no guest help: a signal makes
//! `KVM_RUN` return and the vCPU waits before its next run.
//!
//! - [`Debugger`]: what the vCPU threads and the gdb thread share: who is
//!   stopped, with which registers, and the resume orders.
//! - [`arch`]: the registers gdb sees. [`paging`]: guest-virtual addresses.
//!   [`hw`]: hardware breakpoints and watchpoints (debug registers).
//! - `target`: gdbstub's side (the `Target` and the event loop).

pub mod arch;
pub mod hw;
pub mod paging;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use crate::vstate::sys::Want;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use torito_abi::mmio::DebugFrame;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::error::{Error, Outcome};
use crate::vstate::Vcpu;
use arch::Regs;
pub use target::serve;

/// The trap flag: a single step.
const TF: u64 = 1 << 8;
/// The resume flag: no instruction breakpoint for the next instruction.
const RF: u64 = 1 << 16;

/// Where gdb connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GdbAddr {
    /// `HOST:PORT` (`:PORT` is `127.0.0.1:PORT`).
    Tcp(SocketAddr),
    /// A Unix socket path (anything with a `/`).
    Unix(PathBuf),
}

impl std::fmt::Display for GdbAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GdbAddr::Tcp(a) => write!(f, "{a}"),
            GdbAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parse `--gdb`'s address: `HOST:PORT`, `:PORT`, or a socket path.
pub fn parse_addr(s: &str) -> Result<GdbAddr, String> {
    if s.contains('/') {
        return Ok(GdbAddr::Unix(PathBuf::from(s)));
    }
    let full = if s.starts_with(':') { format!("127.0.0.1{s}") } else { s.to_string() };
    full.parse::<SocketAddr>().map(GdbAddr::Tcp).map_err(|_| {
        format!("'{s}' is not an address for gdb (use 127.0.0.1:PORT, :PORT or a Unix socket path)")
    })
}

/// The socket gdb connects to, bound before the guest starts.
pub struct Listener {
    inner: ListenerKind,
    addr: GdbAddr,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Bind `addr` (a stale Unix socket file there, left by a killed
    /// monitor, is replaced; one in use is refused).
    pub fn bind(addr: &GdbAddr) -> Result<Self, Error> {
        let err = |e: std::io::Error| Error::Config(format!("--gdb {addr}: {e}"));
        if let GdbAddr::Unix(p) = addr {
            crate::devices::claim_socket_path(p).map_err(|e| Error::Config(format!("--gdb: {e}")))?;
        }
        let inner = match addr {
            GdbAddr::Tcp(a) => ListenerKind::Tcp(TcpListener::bind(a).map_err(err)?),
            GdbAddr::Unix(p) => ListenerKind::Unix(UnixListener::bind(p).map_err(err)?),
        };
        match &inner {
            ListenerKind::Tcp(l) => l.set_nonblocking(true).map_err(err)?,
            ListenerKind::Unix(l) => l.set_nonblocking(true).map_err(err)?,
        }
        // The port actually bound (`:0` picks one).
        let addr = match &inner {
            ListenerKind::Tcp(l) => GdbAddr::Tcp(l.local_addr().map_err(err)?),
            ListenerKind::Unix(_) => addr.clone(),
        };
        Ok(Self { inner, addr })
    }

    /// The address gdb should use.
    pub fn addr(&self) -> &GdbAddr {
        &self.addr
    }

    /// Wait for gdb until it connects or `stopped` becomes true.
    fn accept<'a>(&self, stopped: &'a AtomicBool) -> Option<Conn<'a>> {
        loop {
            if stopped.load(Ordering::SeqCst) {
                return None;
            }
            let got = match &self.inner {
                ListenerKind::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                ListenerKind::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            match got {
                Ok(s) => {
                    let ok = match &s {
                        Stream::Tcp(t) => t.set_nonblocking(false).and_then(|()| t.set_nodelay(true)),
                        Stream::Unix(u) => u.set_nonblocking(false),
                    };
                    if ok.is_ok() {
                        return Some(Conn { stream: s, stopped, peeked: None });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let fd = match &self.inner {
                        ListenerKind::Tcp(l) => l.as_raw_fd(),
                        ListenerKind::Unix(l) => l.as_raw_fd(),
                    };
                    wait_readable(&[fd], Duration::from_millis(100));
                }
                Err(e) => {
                    eprintln!("torito: gdb: accept: {e}");
                    return None;
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let GdbAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// gdb's connection. Reads give up once the guest has stopped, so that a
/// gdb sitting at its prompt does not keep the monitor alive.
pub struct Conn<'a> {
    stream: Stream,
    stopped: &'a AtomicBool,
    peeked: Option<u8>,
}

impl Conn<'_> {
    fn fd(&self) -> RawFd {
        match &self.stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read_byte(&mut self) -> std::io::Result<u8> {
        if let Some(b) = self.peeked.take() {
            return Ok(b);
        }
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("the guest stopped"));
            }
            if !wait_readable(&[self.fd()], Duration::from_millis(100)).contains(&0) {
                continue;
            }
            let mut b = [0u8];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut b)?,
                Stream::Unix(s) => s.read(&mut b)?,
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(b[0]);
        }
    }
}

impl gdbstub::conn::Connection for Conn<'_> {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        match &mut self.stream {
            Stream::Tcp(s) => Write::write_all(s, buf),
            Stream::Unix(s) => Write::write_all(s, buf),
        }
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        match &mut self.stream {
            Stream::Tcp(s) => Write::flush(s),
            Stream::Unix(s) => Write::flush(s),
        }
    }
}

impl gdbstub::conn::ConnectionExt for Conn<'_> {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.read_byte()
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if self.peeked.is_none() && wait_readable(&[self.fd()], Duration::ZERO).contains(&0) {
            self.peeked = Some(self.read_byte()?);
        }
        Ok(self.peeked)
    }
}

/// Wait up to `timeout` for any of `fds` to be readable (or closed);
/// the indices of those that are.
fn wait_readable(fds: &[RawFd], timeout: Duration) -> Vec<usize> {
    let fds: Vec<(RawFd, Want)> = fds.iter().map(|&fd| (fd, Want::Read)).collect();
    crate::vstate::sys::ready_fds(&fds, timeout)
}

/// The address of the kernel's `_torito_debugger` byte (the kernel is
/// linked at its physical address), from the ELF's symbol table.
pub fn debugger_flag(elf: &Path) -> Result<u64, Error> {
    use object::{Object, ObjectSymbol};
    let err = |m: String| Error::Config(format!("--gdb: {}: {m}", elf.display()));
    let data = std::fs::read(elf).map_err(|e| err(e.to_string()))?;
    let file = object::File::parse(&*data).map_err(|e| err(e.to_string()))?;
    file.symbols()
        .find(|s| s.name() == Ok(torito_abi::mmio::DEBUGGER_SYMBOL))
        .map(|s| s.address())
        .ok_or_else(|| {
            err(format!(
                "no symbol {} (a stripped ELF, or a kernel older than the debug trap)",
                torito_abi::mmio::DEBUGGER_SYMBOL
            ))
        })
}

/// Why gdb is told the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// vCPU hit one of gdb's breakpoints.
    Breakpoint(u32),
    /// vCPU finished the single step gdb asked for.
    Step(u32),
    /// vCPU trapped on an `int3` or #DB gdb did not ask for.
    Trap(u32),
    /// gdb's Ctrl-C.
    Interrupt,
    /// vCPU hit a hardware breakpoint or watchpoint.
    Hardware(u32, hw::Slot),
}

/// How the guest ended, for gdb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Exited(u8),
    Signal(u8),
}

/// A stopped vCPU.
struct Parked {
    /// The registers gdb sees and may change.
    regs: Regs,
    /// As they were when the vCPU stopped.
    orig: Regs,
    /// A stop in the kernel's debug stub: the frame's guest-physical
    /// address and contents (the trapped code's registers live there).
    frame: Option<(u64, DebugFrame)>,
    /// Resume with RF set: past the instruction breakpoint that fired.
    resume_rf: bool,
}

#[derive(Default)]
struct State {
    /// gdb has the guest stopped: every vCPU waits before its next run.
    halt: bool,
    /// Bumped by each resume; a stopped vCPU runs on when it changes.
    epoch: u64,
    /// vCPUs whose threads are running the guest or stopped.
    alive: BTreeSet<u32>,
    parked: BTreeMap<u32, Parked>,
    /// vCPUs to resume with a single step.
    step: BTreeSet<u32>,
    /// Scheduler locking: only these vCPUs run at the next resume.
    only: Option<BTreeSet<u32>>,
    /// The first stop since the last resume.
    event: Option<Stop>,
    ended: Option<Ended>,
    /// gdb left: traps are ignored, no vCPU stops any more.
    detached: bool,
    /// gdb's breakpoints: address → (guest-physical address, original byte).
    breakpoints: BTreeMap<u64, (u64, u8)>,
    /// gdb's hardware breakpoints and watchpoints.
    hw: hw::Slots,
    /// Bumped when `hw` changes.
    hw_gen: u64,
    /// The `hw_gen` each vCPU's debug registers hold.
    hw_applied: BTreeMap<u32, u64>,
}

/// What the vCPU threads and the gdb thread share.
pub struct Debugger {
    state: Mutex<State>,
    changed: Condvar,
    /// Written when a vCPU stops or the guest ends: the gdb thread waits
    /// on it together with its connection.
    wake: EventFd,
    /// The kernel's `_torito_debugger` byte.
    flag: u64,
    /// Whether debug registers fire on this host (not on PVM).
    hw_ok: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Debugger {
    /// A debugger that holds the guest before its first instruction; the
    /// kernel's flag byte at guest-physical `flag`.
    pub fn new(flag: u64) -> Result<Self, Error> {
        let wake =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Config(format!("--gdb: eventfd: {e}")))?;
        Ok(Self {
            state: Mutex::new(State { halt: true, ..State::default() }),
            changed: Condvar::new(),
            wake,
            flag,
            hw_ok: !hw::host_is_pvm(),
        })
    }

    /// Route the kernel's #BP and #DB to the monitor (before the guest
    /// runs).
    pub fn attach(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        mem.write_obj(1u8, GuestAddress(self.flag))
            .map_err(|e| Error::Config(format!("--gdb: cannot set the kernel's debugger flag: {e}")))
    }

    fn notify(&self) {
        let _ = self.wake.write(1);
        self.changed.notify_all();
    }

    fn drain_wake(&self) {
        let _ = self.wake.read();
    }

    /// vCPU `id`'s thread starts running the guest.
    pub fn enter(&self, id: u32) {
        lock(&self.state).alive.insert(id);
    }

    /// vCPU `id`'s thread is done.
    pub fn leave(&self, id: u32) {
        lock(&self.state).alive.remove(&id);
        self.notify();
    }

    /// The guest stopped for good.
    pub fn end(&self, outcome: &Outcome) {
        let ended = match outcome {
            Outcome::Exited(code) => Ended::Exited(*code as u8),
            Outcome::Signalled(sig) => Ended::Signal(*sig as u8),
            o => Ended::Signal(o.core_signal().unwrap_or(9) as u8),
        };
        lock(&self.state).ended.get_or_insert(ended);
        self.notify();
    }

    /// Before each run of a vCPU: wait here while gdb has the guest
    /// stopped. `stopping` says the machine is being torn down.
    pub fn checkpoint(
        &self,
        vcpu: &mut Vcpu,
        mem: &GuestMemoryMmap,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        {
            let st = lock(&self.state);
            if !st.halt || st.detached || st.ended.is_some() {
                drop(st);
                // A vCPU started after gdb set its hardware breakpoints.
                return self.apply_hw(vcpu);
            }
        }
        self.park(vcpu, mem, None, stopping)
    }

    /// The kernel's debug stub stopped vCPU `vcpu` with its frame at
    /// guest-virtual `frame_va`: tell gdb, stop the others (`kick`), wait.
    pub fn trap(
        &self,
        vcpu: &mut Vcpu,
        mem: &GuestMemoryMmap,
        frame_va: u64,
        kick: &dyn Fn(),
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        let cr3 = vcpu.sregs()?.cr3;
        let gpa = paging::translate(|a| mem.read_obj::<u64>(GuestAddress(a)).ok(), cr3, frame_va)
            .filter(|g| g.is_multiple_of(8) && (g & 0xfff) + size_of::<DebugFrame>() as u64 <= 0x1000);
        let Some(gpa) = gpa else {
            // Not a frame the stub made (a guest writing the register on
            // its own): nothing to stop for.
            return Ok(());
        };
        let mut frame = DebugFrame::default();
        if mem.read_slice(frame.as_mut_bytes(), GuestAddress(gpa)).is_err() {
            return Ok(());
        }
        let id = vcpu.id();
        let dr6 = if self.hw_ok && frame.vector == 1 { vcpu.debug_status()? } else { 0 };
        let mut resume_rf = false;
        {
            let mut st = lock(&self.state);
            if st.detached || st.ended.is_some() {
                drop(st);
                // A step gdb asked for before it left: run on without TF.
                frame.rflags &= !TF;
                let _ = mem.write_slice(frame.as_bytes(), GuestAddress(gpa));
                return Ok(());
            }
            let stop = match frame.vector {
                3 if st.breakpoints.contains_key(&frame.rip.wrapping_sub(1)) => {
                    // Back onto the breakpoint, so the original
                    // instruction runs when gdb has taken it out.
                    frame.rip -= 1;
                    Stop::Breakpoint(id)
                }
                1 if st.hw.hit(dr6).is_some() => {
                    let slot = st.hw.hit(dr6).unwrap_or(hw::Slot { addr: 0, len: 1, watch: None });
                    // DR6 is sticky: cleared when the registers are set
                    // again at the resume.
                    st.hw_applied.remove(&id);
                    resume_rf = slot.watch.is_none();
                    Stop::Hardware(id, slot)
                }
                1 if st.step.contains(&id) => Stop::Step(id),
                _ => Stop::Trap(id),
            };
            st.event.get_or_insert(stop);
            st.halt = true;
        }
        kick();
        self.park_with(vcpu, mem, Some((gpa, frame)), resume_rf, stopping)
    }

    /// Load gdb's hardware breakpoints into `vcpu` if it does not hold
    /// the latest ones.
    fn apply_hw(&self, vcpu: &Vcpu) -> Result<(), Error> {
        if !self.hw_ok {
            return Ok(());
        }
        let (slots, generation) = {
            let st = lock(&self.state);
            if st.hw_applied.get(&vcpu.id()) == Some(&st.hw_gen) {
                return Ok(());
            }
            (st.hw, st.hw_gen)
        };
        vcpu.set_debug_registers(slots.addrs(), slots.dr7())?;
        lock(&self.state).hw_applied.insert(vcpu.id(), generation);
        Ok(())
    }

    /// Stop vCPU `vcpu` until gdb resumes it (or detaches, or the machine
    /// stops), then resume it with gdb's registers.
    fn park(
        &self,
        vcpu: &mut Vcpu,
        mem: &GuestMemoryMmap,
        frame: Option<(u64, DebugFrame)>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        self.park_with(vcpu, mem, frame, false, stopping)
    }

    fn park_with(
        &self,
        vcpu: &mut Vcpu,
        mem: &GuestMemoryMmap,
        frame: Option<(u64, DebugFrame)>,
        resume_rf: bool,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        // KVM's state is consistent only once an I/O exit is completed:
        // a run with `immediate_exit` completes it and returns at once.
        vcpu.complete_pending_exit()?;
        let regs = capture(vcpu, frame.as_ref().map(|f| &f.1))?;
        let id = vcpu.id();
        let mut st = lock(&self.state);
        let mut epoch = st.epoch;
        st.parked.insert(id, Parked { regs: regs.clone(), orig: regs, frame, resume_rf });
        self.notify();
        loop {
            if st.detached || st.ended.is_some() {
                break;
            }
            if st.epoch != epoch {
                if st.only.as_ref().is_none_or(|o| o.contains(&id)) {
                    break;
                }
                // Scheduler locking: this one stays stopped.
                epoch = st.epoch;
            }
            if stopping() {
                st.parked.remove(&id);
                return Ok(());
            }
            st =
                self.changed.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
        let parked = st.parked.remove(&id);
        let step = !st.detached && st.step.contains(&id);
        drop(st);
        self.apply_hw(vcpu)?;
        match parked {
            Some(p) => restore(vcpu, mem, p, step),
            None => Ok(()),
        }
    }

    // ---- The gdb thread's side ----

    /// Wait until every vCPU is stopped or the guest ended.
    fn wait_stopped(&self, stopped: &AtomicBool) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.ended.is_some() || stopped.load(Ordering::SeqCst) {
                return false;
            }
            if !st.alive.is_empty() && st.parked.len() >= st.alive.len() {
                return true;
            }
            st =
                self.changed.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The stop to report, once every vCPU has stopped; or the end.
    fn ready(&self) -> Option<Result<Stop, Ended>> {
        let st = lock(&self.state);
        if let Some(e) = st.ended {
            return Some(Err(e));
        }
        let all = !st.alive.is_empty() && st.alive.iter().all(|c| st.parked.contains_key(c));
        match st.event {
            Some(ev) if all => Some(Ok(ev)),
            _ => None,
        }
    }

    /// Run the stopped vCPUs on (all, or those in `only`), stepping those
    /// in `step`.
    fn resume(&self, step: BTreeSet<u32>, only: Option<BTreeSet<u32>>) {
        let mut st = lock(&self.state);
        st.step = step;
        st.only = only;
        st.event = None;
        st.halt = false;
        st.epoch += 1;
        drop(st);
        self.notify();
    }

    /// gdb's Ctrl-C: stop every vCPU (the caller kicks them).
    fn interrupt(&self) {
        let mut st = lock(&self.state);
        st.halt = true;
        st.event.get_or_insert(Stop::Interrupt);
    }

    /// gdb left: take its breakpoints out, give #BP/#DB back to the
    /// kernel's fault path, let every vCPU run on.
    fn detach(&self, mem: &GuestMemoryMmap) {
        let mut st = lock(&self.state);
        for (_, (gpa, orig)) in std::mem::take(&mut st.breakpoints) {
            let _ = mem.write_obj(orig, GuestAddress(gpa));
        }
        let _ = mem.write_obj(0u8, GuestAddress(self.flag));
        st.hw = hw::Slots::default();
        st.hw_gen += 1;
        st.detached = true;
        st.halt = false;
        st.step.clear();
        st.only = None;
        drop(st);
        self.notify();
    }

    fn stopped_cpus(&self) -> Vec<u32> {
        lock(&self.state).parked.keys().copied().collect()
    }

    fn with_parked<R>(&self, id: u32, f: impl FnOnce(&mut Parked) -> R) -> Option<R> {
        lock(&self.state).parked.get_mut(&id).map(f)
    }

    /// CR3 of vCPU `id` (or of any stopped vCPU).
    fn cr3(&self, id: u32) -> Option<u64> {
        let st = lock(&self.state);
        st.parked.get(&id).or_else(|| st.parked.values().next()).map(|p| p.regs.cr3)
    }

    fn add_breakpoint(&self, mem: &GuestMemoryMmap, va: u64, gpa: u64) -> bool {
        let mut st = lock(&self.state);
        if st.breakpoints.contains_key(&va) {
            return true;
        }
        let Ok(orig) = mem.read_obj::<u8>(GuestAddress(gpa)) else { return false };
        if mem.write_obj(0xccu8, GuestAddress(gpa)).is_err() {
            return false;
        }
        st.breakpoints.insert(va, (gpa, orig));
        true
    }

    /// Set or clear a hardware breakpoint or watchpoint; `false` when the
    /// host cannot or the four registers are taken.
    fn hardware(&self, slot: hw::Slot, add: bool) -> bool {
        if !self.hw_ok {
            return false;
        }
        let mut st = lock(&self.state);
        let done = if add { st.hw.add(slot) } else { st.hw.remove(slot) };
        st.hw_gen += 1;
        done
    }

    fn remove_breakpoint(&self, mem: &GuestMemoryMmap, va: u64) -> bool {
        match lock(&self.state).breakpoints.remove(&va) {
            Some((gpa, orig)) => mem.write_obj(orig, GuestAddress(gpa)).is_ok(),
            None => false,
        }
    }
}

/// A stopped vCPU's registers: KVM's, or for a stop in the debug stub the
/// trapped code's, from the frame.
fn capture(vcpu: &Vcpu, frame: Option<&DebugFrame>) -> Result<Regs, Error> {
    let r = vcpu.regs()?;
    let s = vcpu.sregs()?;
    let f = vcpu.fpu()?;
    let mut g = Regs::default();
    let c = &mut g.core;
    c.regs = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
        r.r14, r.r15,
    ];
    c.rip = r.rip;
    c.eflags = (r.rflags & !TF) as u32;
    c.segments.cs = u32::from(s.cs.selector);
    c.segments.ss = u32::from(s.ss.selector);
    c.segments.ds = u32::from(s.ds.selector);
    c.segments.es = u32::from(s.es.selector);
    c.segments.fs = u32::from(s.fs.selector);
    c.segments.gs = u32::from(s.gs.selector);
    if let Some(fr) = frame {
        let [r15, r14, r13, r12, r11, r10, r9, r8] = fr.r15_to_r8;
        c.regs = [
            fr.rax, fr.rbx, fr.rcx, fr.rdx, fr.rsi, fr.rdi, fr.rbp, fr.rsp, r8, r9, r10, r11, r12, r13, r14,
            r15,
        ];
        c.rip = fr.rip;
        c.eflags = (fr.rflags & !TF) as u32;
        c.segments.cs = fr.cs as u32;
        c.segments.ss = fr.ss as u32;
    }
    for (st, fpr) in c.st.iter_mut().zip(f.fpr.iter()) {
        st.copy_from_slice(&fpr[..10]);
    }
    c.fpu.fctrl = u32::from(f.fcw);
    c.fpu.fstat = u32::from(f.fsw);
    c.fpu.ftag = u32::from(f.ftwx);
    c.fpu.fop = u32::from(f.last_opcode);
    c.fpu.fioff = f.last_ip as u32;
    c.fpu.fooff = f.last_dp as u32;
    for (x, v) in c.xmm.iter_mut().zip(f.xmm.iter()) {
        *x = u128::from_le_bytes(*v);
    }
    c.mxcsr = f.mxcsr;
    g.fs_base = s.fs.base;
    g.gs_base = s.gs.base;
    g.cr0 = s.cr0;
    g.cr2 = s.cr2;
    g.cr3 = s.cr3;
    g.cr4 = s.cr4;
    g.efer = s.efer;
    Ok(g)
}

/// Resume a stopped vCPU with the registers gdb left (and TF for a step).
fn restore(vcpu: &mut Vcpu, mem: &GuestMemoryMmap, p: Parked, step: bool) -> Result<(), Error> {
    let Parked { regs: g, orig, frame, resume_rf } = p;
    let c = &g.core;
    let flags = (u64::from(c.eflags) & !TF) | if step { TF } else { 0 } | if resume_rf { RF } else { 0 };
    let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15] = c.regs;
    match frame {
        Some((gpa, mut fr)) => {
            fr.r15_to_r8 = [r15, r14, r13, r12, r11, r10, r9, r8];
            (fr.rax, fr.rbx, fr.rcx, fr.rdx, fr.rsi, fr.rdi, fr.rbp, fr.rsp) =
                (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp);
            fr.rip = c.rip;
            fr.rflags = flags;
            mem.write_slice(fr.as_bytes(), GuestAddress(gpa))
                .map_err(|e| Error::Config(format!("gdb: cannot write the debug frame back: {e}")))?;
        }
        None if c.regs != orig.core.regs
            || c.rip != orig.core.rip
            || c.eflags != orig.core.eflags
            || step =>
        {
            let mut r = vcpu.regs()?;
            (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp) =
                (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp);
            (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (r8, r9, r10, r11, r12, r13, r14, r15);
            r.rip = c.rip;
            r.rflags = flags;
            vcpu.set_regs(&r)?;
        }
        None => {}
    }
    if (g.fs_base, g.gs_base, g.cr0, g.cr2, g.cr3, g.cr4, g.efer)
        != (orig.fs_base, orig.gs_base, orig.cr0, orig.cr2, orig.cr3, orig.cr4, orig.efer)
    {
        let mut s = vcpu.sregs()?;
        (s.fs.base, s.gs.base, s.cr0, s.cr2, s.cr3, s.cr4, s.efer) =
            (g.fs_base, g.gs_base, g.cr0, g.cr2, g.cr3, g.cr4, g.efer);
        vcpu.set_sregs(&s)?;
    }
    if (&c.st, &c.fpu, &c.xmm, c.mxcsr) != (&orig.core.st, &orig.core.fpu, &orig.core.xmm, orig.core.mxcsr) {
        let mut f = vcpu.fpu()?;
        for (fpr, st) in f.fpr.iter_mut().zip(c.st.iter()) {
            fpr[..10].copy_from_slice(st);
        }
        f.fcw = c.fpu.fctrl as u16;
        f.fsw = c.fpu.fstat as u16;
        f.ftwx = c.fpu.ftag as u8;
        f.last_opcode = c.fpu.fop as u16;
        for (v, x) in f.xmm.iter_mut().zip(c.xmm.iter()) {
            *v = x.to_le_bytes();
        }
        f.mxcsr = c.mxcsr;
        vcpu.set_fpu(&f)?;
    }
    Ok(())
}

/// Read or write guest-virtual memory page by page: `f(gpa, range of
/// buf)` for each piece; the bytes done before the first unmapped page.
fn for_each_page(
    mem: &GuestMemoryMmap,
    cr3: u64,
    va: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>) -> bool,
) -> usize {
    let mut done = 0;
    while done < len {
        let at = va.wrapping_add(done as u64);
        let Some(gpa) = paging::translate(|a| mem.read_obj::<u64>(GuestAddress(a)).ok(), cr3, at) else {
            break;
        };
        let n = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
        if !f(gpa, done..done + n) {
            break;
        }
        done += n;
    }
    done
}
