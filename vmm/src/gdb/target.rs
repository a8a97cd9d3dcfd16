//! gdbstub's side: the [`Target`] the protocol drives (registers, memory,
//! breakpoints, resume) and the blocking event loop that waits for a stop
//! or for gdb's Ctrl-C.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use std::os::fd::AsRawFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::arch::{Regs, ToritoX86_64};
use super::hw::Slot;
use super::{Conn, Debugger, Ended, Listener, Stop, for_each_page, wait_readable};

/// A gdb session over the running machine.
struct Session<'a> {
    dbg: &'a Debugger,
    mem: &'a GuestMemoryMmap,
    /// Make every vCPU leave `KVM_RUN`.
    kick: &'a (dyn Fn() + Sync),
    /// The resume orders being collected (`vCont`): vCPUs to step.
    step: BTreeSet<u32>,
    /// vCPUs told to continue.
    cont: BTreeSet<u32>,
    /// Scheduler locking: vCPUs without an order stay stopped.
    locked: bool,
}

fn tid(cpu: u32) -> Tid {
    NonZeroUsize::new(cpu as usize + 1).unwrap_or(NonZeroUsize::MIN)
}

fn cpu(tid: Tid) -> u32 {
    (tid.get() - 1) as u32
}

/// Serve gdb on `listener` until it leaves or the guest ends. `stopped`
/// is the machine's "guest stopped" flag; `kick` stops every vCPU;
/// `kill` ends the guest (gdb's `kill`).
pub fn serve(
    listener: &Listener,
    dbg: &Debugger,
    mem: &GuestMemoryMmap,
    stopped: &AtomicBool,
    kick: &(dyn Fn() + Sync),
    kill: &dyn Fn(),
) {
    // A connection closed before its first byte (a probe: another monitor
    // checking the socket is in use, a port scan) is not a session.
    let conn = loop {
        let Some(mut conn) = listener.accept(stopped) else { return };
        match conn.read_byte() {
            Ok(b) => {
                conn.peeked = Some(b);
                break conn;
            }
            Err(_) if stopped.load(Ordering::SeqCst) => return,
            Err(_) => continue,
        }
    };
    if !dbg.wait_stopped(stopped) {
        return;
    }
    eprintln!("torito: gdb connected");
    let mut session = Session { dbg, mem, kick, step: BTreeSet::new(), cont: BTreeSet::new(), locked: false };
    let result = GdbStub::new(conn).run_blocking::<Loop<'_>>(&mut session);
    match result {
        Ok(DisconnectReason::Disconnect) => eprintln!("torito: gdb detached; the guest runs on"),
        Ok(DisconnectReason::Kill) => {
            eprintln!("torito: gdb killed the guest");
            kill();
        }
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {}
        Err(e) if stopped.load(Ordering::SeqCst) => {
            let _ = e;
        }
        Err(e) => eprintln!("torito: gdb: {e}; the guest runs on"),
    }
    dbg.detach(mem);
}

impl Target for Session<'_> {
    type Arch = ToritoX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    // Ours are `int3` bytes in guest memory, served by `SwBreakpoint`.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl MultiThreadBase for Session<'_> {
    fn read_registers(&mut self, regs: &mut Regs, tid: Tid) -> TargetResult<(), Self> {
        let r = self.dbg.with_parked(cpu(tid), |p| p.regs.clone()).ok_or(TargetError::NonFatal)?;
        *regs = r;
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs, tid: Tid) -> TargetResult<(), Self> {
        self.dbg.with_parked(cpu(tid), |p| p.regs = regs.clone()).ok_or(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let cr3 = self.dbg.cr3(cpu(tid)).ok_or(TargetError::NonFatal)?;
        let mem = self.mem;
        let n = for_each_page(mem, cr3, start, data.len(), |gpa, r| {
            mem.read_slice(&mut data[r], GuestAddress(gpa)).is_ok()
        });
        if n == 0 && !data.is_empty() {
            return Err(TargetError::NonFatal);
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let cr3 = self.dbg.cr3(cpu(tid)).ok_or(TargetError::NonFatal)?;
        let mem = self.mem;
        let n = for_each_page(mem, cr3, start, data.len(), |gpa, r| {
            mem.write_slice(&data[r], GuestAddress(gpa)).is_ok()
        });
        if n < data.len() {
            return Err(TargetError::NonFatal);
        }
        Ok(())
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for c in self.dbg.stopped_cpus() {
            thread_is_active(tid(c));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for Session<'_> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        let step = std::mem::take(&mut self.step);
        let only = std::mem::take(&mut self.locked).then(|| step.union(&self.cont).copied().collect());
        self.cont.clear();
        self.dbg.resume(step, only);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.step.clear();
        self.cont.clear();
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        // A signal gdb would deliver has no meaning for a guest: dropped.
        let _ = signal;
        self.cont.insert(cpu(tid));
        Ok(())
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for Session<'_> {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.step.insert(cpu(tid));
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for Session<'_> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl Breakpoints for Session<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl HwBreakpoint for Session<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.hardware(Slot { addr, len: 1, watch: None }, true))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.hardware(Slot { addr, len: 1, watch: None }, false))
    }
}

impl HwWatchpoint for Session<'_> {
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.dbg.hardware(Slot { addr, len, watch: Some(kind) }, true))
    }

    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.dbg.hardware(Slot { addr, len, watch: Some(kind) }, false))
    }
}

impl SwBreakpoint for Session<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(cr3) = self.dbg.cr3(0) else { return Ok(false) };
        let mem = self.mem;
        let mut gpa = None;
        for_each_page(mem, cr3, addr, 1, |g, _| {
            gpa = Some(g);
            true
        });
        Ok(gpa.is_some_and(|g| self.dbg.add_breakpoint(mem, addr, g)))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.remove_breakpoint(self.mem, addr))
    }
}

/// The blocking event loop: waits for every vCPU to stop (or the guest
/// to end) while watching the connection for gdb's Ctrl-C.
struct Loop<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> BlockingEventLoop for Loop<'a> {
    type Target = Session<'a>;
    type Connection = Conn<'a>;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Session<'a>,
        conn: &mut Conn<'a>,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<String, std::io::Error>> {
        loop {
            if let Some(r) = target.dbg.ready() {
                return Ok(Event::TargetStopped(stop_reason(target, r)));
            }
            if conn.peeked.is_some() {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
            let ready = wait_readable(&[conn.fd(), target.dbg.wake.as_raw_fd()], Duration::from_millis(100));
            if ready.contains(&1) {
                target.dbg.drain_wake();
            }
            if ready.contains(&0) {
                // A closed connection reads as an error: gdb is gone.
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
        }
    }

    fn on_interrupt(target: &mut Session<'a>) -> Result<Option<Self::StopReason>, String> {
        target.dbg.interrupt();
        (target.kick)();
        // Reported once every vCPU has stopped (`wait_for_stop_reason`).
        Ok(None)
    }
}

fn stop_reason(s: &Session<'_>, r: Result<Stop, Ended>) -> MultiThreadStopReason<u64> {
    match r {
        Ok(Stop::Breakpoint(c)) => MultiThreadStopReason::SwBreak(tid(c)),
        Ok(Stop::Step(c) | Stop::Trap(c)) => {
            MultiThreadStopReason::SignalWithThread { tid: tid(c), signal: Signal::SIGTRAP }
        }
        Ok(Stop::Hardware(c, Slot { watch: None, .. })) => MultiThreadStopReason::HwBreak(tid(c)),
        Ok(Stop::Hardware(c, Slot { watch: Some(kind), addr, .. })) => {
            MultiThreadStopReason::Watch { tid: tid(c), kind, addr }
        }
        Ok(Stop::Interrupt) => {
            let first = s.dbg.stopped_cpus().first().copied().unwrap_or(0);
            MultiThreadStopReason::SignalWithThread { tid: tid(first), signal: Signal::SIGINT }
        }
        Err(Ended::Exited(code)) => MultiThreadStopReason::Exited(code),
        Err(Ended::Signal(sig)) => MultiThreadStopReason::Terminated(Signal(sig)),
    }
}
