//! How a run ends: the guest's own exit, or an error, each with a distinct
//! process exit status.

use std::path::PathBuf;

/// Exit status for a command-line error (clap uses it too).
pub const EXIT_USAGE: i32 = 2;
/// The kernel image is not a bootable Torito ELF.
pub const EXIT_BAD_IMAGE: i32 = 65;
/// The kernel image cannot be read.
pub const EXIT_NO_INPUT: i32 = 66;
/// KVM cannot be used.
pub const EXIT_KVM_UNAVAILABLE: i32 = 69;
/// A KVM or OS call failed.
pub const EXIT_OS: i32 = 71;
/// A file or directory the configuration names is not accessible.
pub const EXIT_NO_PERMISSION: i32 = 77;
/// The configuration cannot work (memory size, command line).
pub const EXIT_CONFIG: i32 = 78;
/// `--timeout` expired.
pub const EXIT_TIMEOUT: i32 = 124;
/// The guest crashed (triple fault, entry failure, internal error, halted
/// for ever).
pub const EXIT_GUEST_CRASH: i32 = 125;

/// Errors of a run. Each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the kernel file failed.
    #[error("cannot read kernel image {path}: {err}", path = .0.display(), err = .1)]
    ReadKernel(PathBuf, #[source] std::io::Error),
    /// The kernel file is not something we can boot.
    #[error("{path}: {msg}", path = .0.display(), msg = .1)]
    BadImage(PathBuf, String),
    /// Opening the KVM device failed.
    #[error("cannot open {path}: {err}. {hint}", path = .0.display(), err = .1, hint = kvm_hint(.1))]
    KvmOpen(PathBuf, #[source] std::io::Error),
    /// KVM is too old or lacks something we need.
    #[error("KVM lacks a required capability: {0}")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] vmm_sys_util::errno::Error),
    /// Guest memory could not be set up.
    #[error("cannot set up {0} bytes of guest memory: {1}")]
    Memory(u64, String),
    /// Something about the configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A disk cannot be used.
    #[error("{0}")]
    Disk(String),
    /// A NIC cannot be used.
    #[error("{0}")]
    Net(String),
    /// A shared directory cannot be used: why, and whether for lack of
    /// permission.
    #[error("{0}")]
    Share(String, bool),
    /// Writing into guest memory failed (a bug: the layout was checked).
    #[error("writing the guest's boot data failed: {0}")]
    GuestWrite(String),
    /// The sandbox (seccomp filters) could not be set up.
    #[error("{0}")]
    Sandbox(String),
    /// The host refused a thread.
    #[error("{0}")]
    Thread(String),
}

fn kvm_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "KVM is not available on this machine: enable virtualization (VT-x/AMD-V) and load the kvm module"
        }
        std::io::ErrorKind::PermissionDenied => {
            "Run as a user with read/write access to it (e.g. in the 'kvm' group)"
        }
        _ => "Check that KVM works on this machine",
    }
}

impl Error {
    /// Process exit status for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::ReadKernel(..) | Error::Disk(_) => EXIT_NO_INPUT,
            Error::BadImage(..) => EXIT_BAD_IMAGE,
            Error::KvmOpen(..) | Error::KvmCapability(_) => EXIT_KVM_UNAVAILABLE,
            Error::Kvm(..)
            | Error::Memory(..)
            | Error::GuestWrite(_)
            | Error::Sandbox(_)
            | Error::Thread(_) => EXIT_OS,
            Error::Config(_) | Error::Net(_) => EXIT_CONFIG,
            Error::Share(_, true) => EXIT_NO_PERMISSION,
            Error::Share(_, false) => EXIT_NO_INPUT,
        }
    }
}

/// Registers worth printing when a guest dies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashRegs {
    /// The vCPU.
    pub cpu: u32,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// Code segment selector.
    pub cs: u16,
    /// CR0.
    pub cr0: u64,
    /// CR2 (last page-fault address).
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
}

impl std::fmt::Display for CrashRegs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vcpu={} rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cpl={} cr0={:#x} cr2={:#x} cr3={:#x}",
            self.cpu,
            self.rip,
            self.rsp,
            self.rflags,
            self.cs,
            self.cs & 3,
            self.cr0,
            self.cr2,
            self.cr3
        )
    }
}

/// How a guest that ran stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest asked to exit with this code.
    Exited(i32),
    /// The guest reset itself (i8042 reset command).
    Reset,
    /// The guest triple-faulted (or shut down).
    TripleFault(CrashRegs),
    /// The guest halted with nothing that could wake it.
    Halted(CrashRegs),
    /// KVM could not enter or emulate the guest.
    Crashed(String, CrashRegs),
    /// `--timeout` expired.
    Timeout(std::time::Duration),
    /// The monitor got SIGINT or SIGTERM (this signal) and stopped the
    /// guest.
    Signalled(i32),
}

impl Outcome {
    /// The signal a core file of this outcome reports, if it deserves one:
    /// SIGABRT for a panic, SIGSEGV for a CPU fault, a triple fault, a
    /// crash or a halt for ever (`None` for a clean exit, a timeout or a
    /// stop signal).
    pub fn core_signal(&self) -> Option<u32> {
        match self {
            Outcome::Exited(code) if *code == torito_abi::exit::PANIC => Some(6),
            Outcome::Exited(code) if *code >= torito_abi::exit::EXCEPTION_BASE && *code < 256 => Some(11),
            Outcome::TripleFault(_) | Outcome::Crashed(..) | Outcome::Halted(_) => Some(11),
            _ => None,
        }
    }

    /// Process exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(code) => code & 0xff,
            Outcome::Reset => 0,
            Outcome::TripleFault(_) | Outcome::Halted(_) | Outcome::Crashed(..) => EXIT_GUEST_CRASH,
            Outcome::Timeout(_) => EXIT_TIMEOUT,
            // As a shell reports a process a signal ended.
            Outcome::Signalled(sig) => 128 + sig,
        }
    }

    /// A line for stderr, if the outcome deserves one.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited(_) => None,
            Outcome::Reset => Some("guest requested a reset; stopped".into()),
            Outcome::TripleFault(r) => Some(format!("guest triple-faulted (shutdown): {r}")),
            Outcome::Halted(r) => Some(format!("guest halted with no interrupt source to wake it: {r}")),
            Outcome::Crashed(why, r) => Some(format!("guest crashed: {why}: {r}")),
            Outcome::Timeout(d) => Some(format!("guest stopped after the {:.3} s timeout", d.as_secs_f64())),
            Outcome::Signalled(sig) => Some(format!(
                "guest stopped by {}",
                match *sig {
                    libc::SIGINT => "SIGINT (Ctrl-C)",
                    libc::SIGTERM => "SIGTERM",
                    _ => "a signal",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct() {
        let mut all = vec![
            EXIT_USAGE,
            EXIT_BAD_IMAGE,
            EXIT_NO_INPUT,
            EXIT_KVM_UNAVAILABLE,
            EXIT_OS,
            EXIT_NO_PERMISSION,
            EXIT_CONFIG,
        ];
        all.extend([EXIT_TIMEOUT, EXIT_GUEST_CRASH]);
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn guest_codes_are_truncated_like_exit() {
        assert_eq!(Outcome::Exited(42).exit_status(), 42);
        assert_eq!(Outcome::Exited(-1).exit_status(), 255);
        assert_eq!(Outcome::Exited(256 + 7).exit_status(), 7);
    }

    #[test]
    fn kvm_errors_carry_a_hint() {
        let e = Error::KvmOpen("/dev/kvm".into(), std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.to_string().contains("kvm' group"), "{e}");
        assert_eq!(e.exit_status(), EXIT_KVM_UNAVAILABLE);
    }
}
