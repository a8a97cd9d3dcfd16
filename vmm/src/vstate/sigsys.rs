//! What happens when a thread makes a system call its seccomp filter
//! forbids (`crate::sandbox`): the kernel sends `SIGSYS`; the handler
//! writes one line naming the thread and the call, then makes a call no
//! filter allows while `SIGSYS` is blocked, which has the kernel kill the
//! process with `SIGSYS` (exit status 159 in a shell).
//!
//! The handler only formats into a buffer on its stack, `write`s it and
//! makes that last call: nothing that allocates or takes a lock.

use std::cell::Cell;
use std::sync::Once;

use crate::error::Error;
use crate::sandbox::{NEVER, Role};

thread_local! {
    /// This thread's [`Role`] (0 before its filter), for the handler.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

/// `si_code` of a `SIGSYS` sent by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

/// Remember the calling thread's role for the `SIGSYS` line.
pub fn set_thread_role(role: u8) {
    ROLE.with(|r| r.set(role));
}

/// Install the `SIGSYS` handler (once per process).
pub fn catch_forbidden() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| Error::Kvm("sigaction(SIGSYS)", e));
    });
    result
}

/// A stack buffer `core::fmt` can write to (no allocation).
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    use std::fmt::Write;
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // The SIGSYS fields of the siginfo union, after signo, errno, code
    // and padding: `void *call_addr; int syscall; unsigned arch;`.
    // SAFETY: siginfo_t is 128 bytes; offset 24 holds an aligned i32.
    let nr = unsafe { *info.cast::<u8>().add(24).cast::<i32>() };
    let role = ROLE.with(Cell::get);
    let mut line = Line { buf: [0; 320], len: 0 };
    let thread = Role::from_u8(role).map_or("unnamed", Role::name);
    let call = syscalls::Sysno::new(nr as usize).map_or("?", |s| s.name());
    // The call's first two arguments, as the thread left them.
    // SAFETY: an SA_SIGINFO handler's third argument is its ucontext.
    let gregs = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let (a0, a1) = (gregs[libc::REG_RDI as usize], gregs[libc::REG_RSI as usize]);
    let _ = if code == SYS_SECCOMP {
        writeln!(
            line,
            "torito: seccomp: the {thread} thread made system call {call} ({nr}; {a0:#x}, {a1:#x}, ...), which its \
             filter forbids; stopping (SIGSYS). A bug of torito's, or a guest that took it over: docs/security.md"
        )
    } else {
        writeln!(line, "torito: SIGSYS (not from seccomp); stopping")
    };
    // SAFETY: writes `len` initialised bytes of `line.buf` to stderr.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    // SIGSYS is blocked in its handler: a forbidden call now makes the
    // kernel reset it to its default action and kill the process.
    // SAFETY: `reboot` with no valid magic number does nothing when
    // allowed (EINVAL/EPERM); no filter allows it.
    unsafe { libc::syscall(NEVER.id() as libc::c_long, 0, 0, 0, 0) };
    // Not reached under a filter.
    // SAFETY: ends the process at once, as SIGSYS would.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

/// The test aid `TORITO_TEST_FORBIDDEN_SYSCALL`: attempt `execve` (with no
/// program: without a filter it fails with EFAULT and nothing happens).
pub fn attempt_forbidden_call() {
    // SAFETY: execve of a null path fails with EFAULT; nothing is read.
    unsafe { libc::syscall(libc::SYS_execve, 0usize, 0usize, 0usize) };
}
