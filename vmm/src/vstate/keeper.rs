//! The keeper: a process that frees the VM and the monitor's address
//! space after the monitor has exited, so that whoever waits for the
//! monitor does not wait for that too (`--teardown`).
//!
//! A process's exit tears its address space down before its parent learns
//! of the exit: guest RAM (hundreds of pages a run touched, ~0.5–0.9 µs
//! each on this kind of host) and KVM's shadow pages over it. The keeper
//! is made as soon as the guest has stopped: `clone` with
//! `CLONE_VM` (it shares the address space: nothing is copied) and a copy
//! of the descriptor table, so it also holds the last references to the
//! VM, its vCPUs and the TAP devices, whose last closes are slow too
//! (0.3–0.7 ms for a VM, an RCU grace period for a TAP device). The
//! monitor's exit then only drops its references. The keeper closes
//! standard input, output and error (a reader of the monitor's output sees
//! its end with the monitor's), waits on a pidfd of the monitor until its
//! whole thread group is gone, and exits: its exit does the freeing. It
//! sends `SIGCHLD` as any child does and is an orphan by then: the system's
//! init, or the nearest subreaper, reaps it.
//!
//! The keeper runs on a stack of its own, with every signal blocked from
//! its first instruction on (the monitor blocks them around the `clone`),
//! and makes raw system calls only; the monitor's seccomp filter, which it
//! inherits, allows them (and, in a run that ends with a keeper, the
//! `clone`, with these flags only; the pidfd is opened as the run starts,
//! before the filter: [`prepare`]). Once the monitor is gone it waits
//! [`PAUSE_NS`] before its exit, so that the monitor's parent, woken by the
//! same end, runs first. At the idle scheduling class instead, as at first,
//! it waited 50–70 ms to exit when the host's CPUs were busy.
//!
//! It is not the default (`--teardown=in-process` is): an orphan stays a
//! zombie where nothing reaps it (a container whose PID 1 never waits), and
//! no file tells whether something will (a PID 1 may catch `SIGCHLD` and
//! never wait, as a Go program does; a subreaper is not shown anywhere).
//! And the filter cannot count: in a keeper run, a monitor taken over by
//! its guest could make more such processes. They would stay in its
//! process group and cgroup (what a supervisor kills), not outside them.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// How the keeper is made: a process (no `CLONE_THREAD`) sharing the
/// monitor's memory, that tells its parent of its end with `SIGCHLD` (so
/// that a `waitpid` without `__WALL` sees it).
pub const CLONE_FLAGS: u32 = (libc::CLONE_VM | libc::SIGCHLD) as u32;

/// The keeper's stack: it makes a few system calls. In `.bss`: of it only
/// the page the keeper uses is ever touched (a fresh heap allocation was
/// zeroed, page by page, as the run ended).
const STACK: usize = 16 * 1024;
/// (`u128`s: 16-byte aligned, as a stack's top must be.)
static mut KEEPER_STACK: [u128; STACK / 16] = [0; STACK / 16];

/// Why no keeper was made.
#[derive(Debug)]
pub enum KeeperError {
    /// `pidfd_open` failed (Linux before 5.3), or [`prepare`] was not
    /// called.
    Pidfd(std::io::Error),
    /// `clone` failed.
    Clone(std::io::Error),
    /// This process has made its keeper already.
    Again,
}

impl std::fmt::Display for KeeperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeeperError::Pidfd(e) => write!(f, "cannot open a pidfd of the monitor: {e}"),
            KeeperError::Clone(e) => write!(f, "cannot start the keeper process: {e}"),
            KeeperError::Again => write!(f, "the keeper was made already (its stack is in use)"),
        }
    }
}

/// How long the keeper waits, once the monitor is gone, before it exits
/// (its exit is the freeing, ~0.5 ms of kernel work that would take the
/// CPU the monitor's parent is woken on: it did, ~80 µs, traced).
const PAUSE_NS: libc::c_long = 300_000;

/// Whether the keeper's stack is taken.
static MADE: AtomicBool = AtomicBool::new(false);

/// The pidfd of the monitor the keeper waits on, opened by [`prepare`];
/// a negative `errno` if that failed, [`UNPREPARED`] before.
static PIDFD: AtomicI32 = AtomicI32::new(UNPREPARED);
const UNPREPARED: i32 = i32::MIN;

/// Open the pidfd of this process that the keeper will wait on: once, as
/// the run starts, before the seccomp filter (which then allows no
/// `pidfd_open`) and off the run's end (it cost ~10 µs there).
pub fn prepare() {
    // SAFETY: getpid and pidfd_open take no pointers; the descriptor is
    // kept for the keeper (or for the process's exit to close).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    let v = if fd < 0 {
        -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOSYS)
    } else {
        fd as i32
    };
    if PIDFD.compare_exchange(UNPREPARED, v, Ordering::AcqRel, Ordering::Acquire).is_err() && fd >= 0 {
        // SAFETY: the descriptor opened above, which nothing else holds.
        unsafe { libc::close(fd as i32) };
    }
}

/// Make the keeper (once per process: it has one stack) with the pidfd
/// [`prepare`] opened. From then on it holds the address space and a copy
/// of every descriptor open now.
pub fn hand_over() -> Result<(), KeeperError> {
    if MADE.swap(true, Ordering::AcqRel) {
        return Err(KeeperError::Again);
    }
    let pidfd = match PIDFD.swap(UNPREPARED, Ordering::AcqRel) {
        UNPREPARED => return Err(KeeperError::Pidfd(std::io::Error::other("no pidfd was opened for it"))),
        e if e < 0 => return Err(KeeperError::Pidfd(std::io::Error::from_raw_os_error(-e))),
        fd => fd,
    };
    // The keeper's stack outlives this function: the keeper uses it after
    // the monitor has exited, in the same (shared) memory. No reference to
    // the static is made; nothing else uses it.
    let top = (&raw mut KEEPER_STACK) as usize + STACK;
    // The keeper inherits the signal mask: all blocked, so that no handler
    // of the monitor's (a Ctrl-C to the process group) ever runs on its
    // stack, whatever arrives before it is set up.
    // SAFETY: sigset_t values on this stack, valid for the calls.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: `keep` runs on its own stack (`top`, the 16-byte aligned end
    // of a static no other code touches) and touches nothing but that
    // stack; with CLONE_VM the memory it runs in stays mapped until it
    // exits itself.
    let pid = unsafe {
        libc::clone(keep, top as *mut c_void, CLONE_FLAGS as libc::c_int, pidfd as usize as *mut c_void)
    };
    let e = std::io::Error::last_os_error();
    // SAFETY: the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    // SAFETY: closing the pidfd `prepare` opened, now this process's alone
    // (taken from PIDFD above); the keeper has its own copy.
    unsafe { libc::close(pidfd) };
    if pid < 0 {
        return Err(KeeperError::Clone(e));
    }
    Ok(())
}

/// The keeper (every signal blocked, as the monitor's were at the
/// `clone`): let go of the standard streams, name itself, wait until the
/// monitor's thread group is gone, pause, exit: 0 once it is, 1 if the
/// wait failed (the freeing then happens beside the monitor's exit).
extern "C" fn keep(arg: *mut c_void) -> libc::c_int {
    let pidfd = arg as usize;
    let name = b"torito-exit\0";
    let mut ready = libc::pollfd { fd: pidfd as libc::c_int, events: libc::POLLIN, revents: 0 };
    // SAFETY: system calls with pointers to this stack's locals, valid for
    // the calls; none of them returns memory.
    unsafe {
        // First: a reader of the monitor's output sees its end with the
        // monitor's, whatever follows.
        for fd in 0..3 {
            raw(libc::SYS_close, [fd, 0, 0, 0]);
        }
        raw(libc::SYS_prctl, [libc::PR_SET_NAME as usize, name.as_ptr() as usize, 0, 0]);
        let status = loop {
            match raw(libc::SYS_ppoll, [&mut ready as *mut libc::pollfd as usize, 1, 0, 0]) {
                n if n == -(libc::EINTR as isize) => continue,
                1 => break 0,
                _ => break 1,
            }
        };
        // The monitor's parent, woken by the same end, goes first.
        let pause = libc::timespec { tv_sec: 0, tv_nsec: PAUSE_NS };
        raw(libc::SYS_nanosleep, [&pause as *const libc::timespec as usize, 0, 0, 0]);
        raw(libc::SYS_exit, [status, 0, 0, 0]);
    }
    0
}

/// A system call, without libc: the keeper must not touch the thread-local
/// storage of the thread that made it (musl's `syscall` writes `errno`
/// there), which is unmapped when that thread ends.
///
/// # Safety
/// As the call `n` with arguments `a` is.
unsafe fn raw(n: libc::c_long, a: [usize; 4]) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 only; the
    // caller answers for what the call does.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
