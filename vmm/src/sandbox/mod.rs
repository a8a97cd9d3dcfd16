//! The monitor's sandbox: a seccomp filter on every thread, allowing only
//! the system calls that thread needs. [`tree`] lays each filter out as
//! BPF (why not seccompiler's compiler: see there); seccompiler installs
//! it, and its own compiler is what the tests check ours against.
//!
//! The guest is not trusted; should it ever take over the monitor (a bug
//! in a device model), the filters keep it from the rest of the host: no
//! `execve`, no `fork`, no network sockets, no files opened for writing
//! unless the run writes files (a `--core`, a writable `--share`; a
//! read-only share's server opens with `openat`, whose flags the filter
//! checks, never `openat2`, whose flags it could not), KVM ioctls by
//! number only, and `sendmsg` only on the socket pair the VM leaves the
//! process by (`vstate::Farewell`), which leads nowhere else.
//!
//! Filters follow the threads' roles ([`Role`]) and what the command line
//! attached: a run without disks allows no disk I/O, one without vsock no
//! sockets. Filters stack: a thread keeps the filter of the thread that
//! made it, so the vCPU filter also allows what the threads vCPUs start
//! need (`clone` of a thread, and each of their own calls), and each of
//! those threads installs its own, narrower, first thing. Secondary vCPU
//! threads keep the vCPU filter as it is.
//!
//! The vCPU filter reaches the main thread (vCPU 0) from a thread of its
//! own ([`Installer`]): installing a filter costs the kernel ~100 µs on
//! this host, so the sandbox thread compiles it while the monitor sets
//! the VM up and installs it on every thread at once (`TSYNC`) while the
//! guest runs its first instructions; the main thread waits for it, if
//! need be, before it acts on the guest's first exit. The guest runs
//! nothing on the monitor's behalf before then (its first instructions
//! are its own, and KVM's), so no guest-driven code of the monitor ever
//! runs unfiltered, and launch does not wait for the kernel.
//!
//! A forbidden call kills the monitor with `SIGSYS` after one line on
//! stderr naming the thread and the call (`vstate::sigsys`);
//! `--seccomp=log` lets such calls through and has the kernel log them
//! (audit records, `dmesg`), `--no-seccomp` installs no filter.

mod install;
mod tree;

pub use install::{Hold, Installer};

use seccompiler::BpfProgram;
use syscalls::Sysno;
use tree::Leaf;

use crate::config::VmConfig;
use crate::error::Error;
use crate::vstate::sigsys;

/// What the filters do with a call they do not allow (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the monitor (`SIGSYS`), after a line on stderr.
    #[default]
    On,
    /// Allow the call; the kernel logs it (audit, `dmesg`).
    Log,
    /// Install no filter.
    Off,
}

/// The monitor's threads, by what they do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A vCPU: `KVM_RUN`, the device models, starting the other threads;
    /// for the main thread (vCPU 0) also what follows the run (disks
    /// flushed, a core file, the timeline).
    Vcpu = 1,
    /// The device I/O thread: host descriptors of NICs, vsock, disks.
    Io = 2,
    /// RAM registered after the guest started.
    Ram = 3,
    /// The gdb connection.
    Gdb = 4,
    /// A test interrupt sent after a delay.
    Timer = 5,
    /// The second half of a large virtio-fs READ (`pread` into guest
    /// memory).
    Copy = 6,
}

impl Role {
    /// The role's name, as the SIGSYS line prints it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vcpu => "vCPU",
            Role::Io => "device I/O",
            Role::Ram => "RAM registration",
            Role::Gdb => "gdb",
            Role::Timer => "test interrupt",
            Role::Copy => "virtio-fs copy",
        }
    }

    /// Every role.
    pub const ALL: [Role; 6] = [Role::Vcpu, Role::Io, Role::Ram, Role::Gdb, Role::Timer, Role::Copy];

    /// The role stored by [`sigsys::set_thread_role`], back.
    pub fn from_u8(v: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// What the run attached, as far as system calls go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Needs {
    disks: bool,
    /// Disks served by the I/O thread (`,iothread`).
    io_disks: bool,
    vsock: bool,
    /// NICs: the I/O thread tells their TAP devices the guest's offloads.
    nics: bool,
    shares: bool,
    /// A share the guest may change.
    writable_share: bool,
    gdb: bool,
    /// `--gdb` on a Unix socket: its file is removed at the end.
    gdb_unix: bool,
    core: bool,
}

/// The filters of one run.
#[derive(Clone, Debug)]
pub struct Sandbox {
    mode: SeccompMode,
    needs: Needs,
    /// The socket the VM leaves by (`vstate::Farewell`): the vCPU filter
    /// allows `sendmsg` on it alone.
    farewell: Option<u32>,
    /// Whether the run ends with a keeper (`--teardown=keeper`,
    /// `vstate::keeper`): the vCPU filter allows the keeper's `clone`.
    keeper: bool,
}

/// `ioctl` requests, by number: the kernel's `_IO`/`_IOR`/`_IOW`/`_IOWR`
/// encodings of KVM's requests (checked against vmm-sys-util's macros in
/// the tests), as constants so that the filters build without allocating.
mod ioctls {
    use kvm_bindings::*;
    use std::mem::size_of;

    const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
    }
    const fn io(nr: u32) -> u32 {
        ioc(0, nr, 0)
    }
    const fn iow(nr: u32, size: usize) -> u32 {
        ioc(1, nr, size)
    }
    const fn ior(nr: u32, size: usize) -> u32 {
        ioc(2, nr, size)
    }
    const fn iowr(nr: u32, size: usize) -> u32 {
        ioc(3, nr, size)
    }

    pub const KVM_CREATE_VCPU: u32 = io(0x41);
    pub const KVM_SET_USER_MEMORY_REGION: u32 = iow(0x46, size_of::<kvm_userspace_memory_region>());
    pub const KVM_RUN: u32 = io(0x80);
    pub const KVM_GET_REGS: u32 = ior(0x81, size_of::<kvm_regs>());
    pub const KVM_SET_REGS: u32 = iow(0x82, size_of::<kvm_regs>());
    pub const KVM_GET_SREGS: u32 = ior(0x83, size_of::<kvm_sregs>());
    pub const KVM_SET_SREGS: u32 = iow(0x84, size_of::<kvm_sregs>());
    pub const KVM_GET_MSRS: u32 = iowr(0x88, size_of::<kvm_msrs>());
    pub const KVM_GET_FPU: u32 = ior(0x8c, size_of::<kvm_fpu>());
    pub const KVM_SET_FPU: u32 = iow(0x8d, size_of::<kvm_fpu>());
    pub const KVM_GET_LAPIC: u32 = ior(0x8e, size_of::<kvm_lapic_state>());
    pub const KVM_SET_LAPIC: u32 = iow(0x8f, size_of::<kvm_lapic_state>());
    pub const KVM_SET_CPUID2: u32 = iow(0x90, size_of::<kvm_cpuid2>());
    pub const KVM_SET_MP_STATE: u32 = iow(0x99, size_of::<kvm_mp_state>());
    pub const KVM_GET_DEBUGREGS: u32 = ior(0xa1, size_of::<kvm_debugregs>());
    pub const KVM_SET_DEBUGREGS: u32 = iow(0xa2, size_of::<kvm_debugregs>());
    pub const KVM_GET_TSC_KHZ: u32 = io(0xa3);
    pub const KVM_SIGNAL_MSI: u32 = iow(0xa5, size_of::<kvm_msi>());
    pub const KVM_GET_STATS_FD: u32 = io(0xce);
    /// `set_nonblocking` on a socket.
    pub const FIONBIO: u32 = libc::FIONBIO as u32;
    /// The offloads of a TAP device, as its guest negotiated them (at
    /// DRIVER_OK, on the vCPU's thread).
    pub const TUNSETOFFLOAD: u32 = crate::vstate::sys::TUNSETOFFLOAD as u32;

    /// A vCPU thread's: running, registers (crash reports, gdb, cores),
    /// MSIs, statistics; secondary vCPUs made on their threads (with their
    /// CPUID and local APIC); and the
    /// RAM registration of the thread it starts (which narrows it).
    pub const VCPU: &[u32] = &[
        KVM_RUN,
        KVM_GET_REGS,
        KVM_SET_REGS,
        KVM_GET_SREGS,
        KVM_SET_SREGS,
        KVM_GET_FPU,
        KVM_SET_FPU,
        KVM_GET_MSRS,
        KVM_GET_DEBUGREGS,
        KVM_SET_DEBUGREGS,
        KVM_GET_TSC_KHZ,
        KVM_SIGNAL_MSI,
        KVM_GET_STATS_FD,
        KVM_CREATE_VCPU,
        KVM_SET_CPUID2,
        KVM_GET_LAPIC,
        KVM_SET_LAPIC,
        KVM_SET_MP_STATE,
        KVM_SET_USER_MEMORY_REGION,
        FIONBIO,
        TUNSETOFFLOAD,
    ];
    /// The I/O thread's: interrupts, non-blocking sockets.
    pub const IO: &[u32] = &[KVM_SIGNAL_MSI, FIONBIO];
    /// With NICs, also the TAP devices' offloads (`net::Net::service_host`).
    pub const IO_NICS: &[u32] = &[KVM_SIGNAL_MSI, FIONBIO, TUNSETOFFLOAD];
    pub const RAM: &[u32] = &[KVM_SET_USER_MEMORY_REGION];
    pub const GDB: &[u32] = &[FIONBIO];
    pub const TIMER: &[u32] = &[KVM_SIGNAL_MSI];

    #[cfg(test)]
    mod tests {
        use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

        use super::*;

        ioctl_io_nr!(CREATE_VCPU, KVMIO, 0x41);
        ioctl_iow_nr!(SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
        ioctl_io_nr!(RUN, KVMIO, 0x80);
        ioctl_ior_nr!(GET_REGS, KVMIO, 0x81, kvm_regs);
        ioctl_iow_nr!(SET_REGS, KVMIO, 0x82, kvm_regs);
        ioctl_ior_nr!(GET_SREGS, KVMIO, 0x83, kvm_sregs);
        ioctl_iow_nr!(SET_SREGS, KVMIO, 0x84, kvm_sregs);
        ioctl_iowr_nr!(GET_MSRS, KVMIO, 0x88, kvm_msrs);
        ioctl_ior_nr!(GET_FPU, KVMIO, 0x8c, kvm_fpu);
        ioctl_iow_nr!(SET_FPU, KVMIO, 0x8d, kvm_fpu);
        ioctl_ior_nr!(GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
        ioctl_iow_nr!(SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
        ioctl_iow_nr!(SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
        ioctl_iow_nr!(SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
        ioctl_ior_nr!(GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
        ioctl_iow_nr!(SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
        ioctl_io_nr!(GET_TSC_KHZ, KVMIO, 0xa3);
        ioctl_iow_nr!(SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
        ioctl_io_nr!(GET_STATS_FD, KVMIO, 0xce);
        ioctl_iow_nr!(SET_OFFLOAD, 0x54, 208, std::os::raw::c_uint);

        #[test]
        fn the_encodings_are_the_kernels() {
            let pairs = [
                (KVM_CREATE_VCPU, CREATE_VCPU()),
                (KVM_SET_USER_MEMORY_REGION, SET_USER_MEMORY_REGION()),
                (KVM_RUN, RUN()),
                (KVM_GET_REGS, GET_REGS()),
                (KVM_SET_REGS, SET_REGS()),
                (KVM_GET_SREGS, GET_SREGS()),
                (KVM_SET_SREGS, SET_SREGS()),
                (KVM_GET_MSRS, GET_MSRS()),
                (KVM_GET_FPU, GET_FPU()),
                (KVM_SET_FPU, SET_FPU()),
                (KVM_GET_LAPIC, GET_LAPIC()),
                (KVM_SET_LAPIC, SET_LAPIC()),
                (KVM_SET_CPUID2, SET_CPUID2()),
                (KVM_SET_MP_STATE, SET_MP_STATE()),
                (KVM_GET_DEBUGREGS, GET_DEBUGREGS()),
                (KVM_SET_DEBUGREGS, SET_DEBUGREGS()),
                (KVM_GET_TSC_KHZ, GET_TSC_KHZ()),
                (KVM_SIGNAL_MSI, SIGNAL_MSI()),
                (KVM_GET_STATS_FD, GET_STATS_FD()),
                (TUNSETOFFLOAD, SET_OFFLOAD()),
            ];
            for (ours, theirs) in pairs {
                assert_eq!(u64::from(ours), theirs);
            }
            assert_eq!(pairs.len() + 1, VCPU.len(), "every vCPU request but FIONBIO is checked");
        }
    }
}

/// Every thread: memory, locks, signals, clocks, its descriptors.
const BASE: &[Sysno] = &[
    Sysno::read,
    Sysno::write,
    Sysno::readv,
    Sysno::writev,
    Sysno::close,
    Sysno::lseek,
    Sysno::fstat,
    Sysno::newfstatat,
    Sysno::statx,
    Sysno::fcntl,
    Sysno::poll,
    Sysno::ppoll,
    Sysno::eventfd2,
    Sysno::futex,
    Sysno::sched_yield,
    Sysno::mmap,
    Sysno::munmap,
    Sysno::mremap,
    Sysno::mprotect,
    Sysno::madvise,
    Sysno::brk,
    Sysno::rt_sigprocmask,
    Sysno::rt_sigreturn,
    Sysno::sigaltstack,
    Sysno::restart_syscall,
    Sysno::gettid,
    Sysno::getpid,
    Sysno::tkill,
    Sysno::tgkill,
    Sysno::clock_gettime,
    Sysno::clock_nanosleep,
    Sysno::nanosleep,
    Sysno::getrandom,
    // glibc's `pthread_getattr_np`, which std calls as a thread starts.
    Sysno::sched_getaffinity,
    // The SIGINT/SIGTERM handler, on whichever thread the signal lands.
    Sysno::setitimer,
    Sysno::exit,
    Sysno::exit_group,
];

/// Disk I/O.
const DISK: &[Sysno] =
    &[Sysno::pread64, Sysno::pwrite64, Sysno::preadv, Sysno::pwritev, Sysno::fdatasync, Sysno::fsync];

/// Unix-socket connections (vsock's host side, gdb), without `socket`.
const STREAMS: &[Sysno] = &[
    Sysno::connect,
    Sysno::accept4,
    Sysno::recvfrom,
    Sysno::sendto,
    Sysno::shutdown,
    Sysno::setsockopt,
    Sysno::getsockopt,
];

/// The virtio-fs server (a passthrough of host directories).
const SHARE: &[Sysno] =
    &[Sysno::getdents64, Sysno::fstatfs, Sysno::pread64, Sysno::readlinkat, Sysno::fdatasync, Sysno::fsync];

/// The virtio-fs server, when the guest may change a share.
const SHARE_WRITES: &[Sysno] =
    &[Sysno::pwrite64, Sysno::mkdirat, Sysno::unlinkat, Sysno::renameat, Sysno::renameat2, Sysno::ftruncate];

/// `AUDIT_ARCH_X86_64`: the only system call convention the filters let
/// through (a 32-bit `int 0x80` call is killed).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// The one call the SIGSYS handler makes to die: no filter allows it.
pub const NEVER: Sysno = Sysno::reboot;

/// A filter under construction: per allowed call, what it is allowed
/// with (a call named twice: the first time counts, unless the second
/// allows it whatever the arguments).
#[derive(Default)]
struct Rules(Vec<(Sysno, Leaf)>);

impl Rules {
    fn allow(&mut self, calls: &[Sysno]) {
        self.0.extend(calls.iter().map(|&c| (c, Leaf::Allow)));
    }

    /// Allow `call` when argument `arg` (its low 32 bits: a kernel reads
    /// no more of an `int` argument) is one of `values`.
    fn one_of(&mut self, call: Sysno, arg: u8, values: &'static [u32]) {
        self.0.push((call, Leaf::OneOf { arg, values }));
    }

    /// Allow `call` when the bits `mask` of argument `arg` are `value`.
    fn masked(&mut self, call: Sysno, arg: u8, mask: u32, value: u32) {
        self.0.push((call, Leaf::Masked { arg, mask, value }));
    }

    /// By call number, each once.
    fn leaves(mut self) -> Vec<(u32, Leaf)> {
        // Stable: of a call's entries, `Allow` first, then the first one.
        self.0.sort_by_key(|(c, l)| (c.id(), *l != Leaf::Allow));
        self.0.dedup_by_key(|(c, _)| *c);
        self.0.into_iter().map(|(c, l)| (c.id() as u32, l)).collect()
    }
}

impl Sandbox {
    /// The filters for the run `cfg` describes.
    pub fn new(cfg: &VmConfig) -> Self {
        let needs = Needs {
            disks: !cfg.disks.is_empty(),
            io_disks: cfg.disks.iter().any(|d| d.iothread),
            vsock: cfg.vsock.is_some(),
            nics: !cfg.nets.is_empty(),
            shares: !cfg.shares.is_empty(),
            writable_share: cfg.shares.iter().any(|s| !s.readonly),
            gdb: cfg.gdb.is_some(),
            gdb_unix: matches!(cfg.gdb, Some(crate::gdb::GdbAddr::Unix(_))),
            core: cfg.core.is_some(),
        };
        let keeper = cfg.teardown == crate::config::Teardown::Keeper;
        Self { mode: cfg.seccomp, needs, farewell: None, keeper }
    }

    /// The same filters, the vCPU's allowing what makes the keeper.
    pub fn with_keeper(mut self) -> Self {
        self.keeper = true;
        self
    }

    /// Whether the run ends with a keeper (`vstate::keeper`).
    pub fn keeper(&self) -> bool {
        self.keeper
    }

    /// The same filters, the vCPU's allowing `sendmsg` on `fd`.
    pub fn with_farewell(mut self, fd: std::os::fd::RawFd) -> Self {
        self.farewell = u32::try_from(fd).ok();
        self
    }

    /// Whether filters are installed at all.
    pub fn enabled(&self) -> bool {
        self.mode != SeccompMode::Off
    }

    /// Install `role`'s filter on the calling thread (nothing with
    /// `--no-seccomp`). The first call also catches `SIGSYS`.
    pub fn enter(&self, role: Role) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        sigsys::catch_forbidden()?;
        let bpf = self.compile(role)?;
        seccompiler::apply_filter(&bpf).map_err(|e| {
            Error::Sandbox(format!("cannot install the {} thread's seccomp filter: {e}", role.name()))
        })?;
        sigsys::set_thread_role(role as u8);
        Ok(())
    }

    /// Start installing the vCPU filter on every thread, and warming the
    /// guest's first pages up ([`Installer`]; with `--no-seccomp` only the
    /// warm-up).
    pub fn installer(&self) -> Result<Installer, Error> {
        // Before any thread of the monitor's allocates: see there.
        crate::vstate::sys::one_malloc_arena();
        Installer::start(self)
    }

    /// A thread that kept its parent's filter, which is `role`'s: named
    /// so for the `SIGSYS` line.
    pub fn inherit(&self, role: Role) {
        if self.enabled() {
            sigsys::set_thread_role(role as u8);
        }
    }

    /// `role`'s filter as a BPF program.
    pub fn compile(&self, role: Role) -> Result<BpfProgram, Error> {
        let miss = match self.mode {
            SeccompMode::Log => libc::SECCOMP_RET_LOG,
            _ => libc::SECCOMP_RET_TRAP,
        };
        Ok(tree::program(AUDIT_ARCH_X86_64, &self.rules(role).leaves(), libc::SECCOMP_RET_ALLOW, miss))
    }

    fn rules(&self, role: Role) -> Rules {
        let n = self.needs;
        let mut r = Rules(Vec::with_capacity(128));
        r.allow(BASE);
        match role {
            Role::Vcpu => {
                r.one_of(Sysno::ioctl, 1, ioctls::VCPU);
                // Threads, never processes (but the keeper, as the run
                // ends); each thread narrows its filter.
                let thread = libc::CLONE_THREAD as u32;
                if self.keeper {
                    let or = crate::vstate::keeper::CLONE_FLAGS;
                    r.0.push((Sysno::clone, Leaf::MaskedOr { arg: 0, mask: thread, value: thread, or }));
                } else {
                    r.masked(Sysno::clone, 0, thread, thread);
                }
                r.0.push((Sysno::clone3, Leaf::Fail(libc::ENOSYS as u32)));
                // What glibc's threads do as they start (musl's need none).
                r.allow(&[Sysno::rseq, Sysno::set_robust_list]);
                const PRCTL: &[u32] = &[libc::PR_SET_NO_NEW_PRIVS as u32, libc::PR_SET_NAME as u32];
                r.one_of(Sysno::prctl, 0, PRCTL);
                r.one_of(Sysno::seccomp, 0, &[libc::SECCOMP_SET_MODE_FILTER]);
                // Backtraces read the ELF; the timeline reads
                // /proc/self/status, the vCPU's statistics and which guest
                // pages are resident.
                allow_open(&mut r, n.core || n.writable_share);
                r.allow(&[Sysno::pread64, Sysno::mincore]);
                // The VM's way out, on its own socket pair.
                if let Some(fd) = self.farewell {
                    r.masked(Sysno::sendmsg, 0, u32::MAX, fd);
                }
                if n.disks {
                    r.allow(DISK);
                }
                if n.vsock {
                    r.allow(STREAMS);
                    r.one_of(Sysno::socket, 0, &[libc::AF_UNIX as u32]);
                }
                if n.gdb {
                    r.allow(STREAMS);
                }
                if n.gdb_unix {
                    r.allow(&[Sysno::unlink]);
                }
                if n.shares {
                    r.allow(SHARE);
                }
                if n.writable_share {
                    r.allow(SHARE_WRITES);
                }
                if n.core {
                    r.allow(&[Sysno::ftruncate, Sysno::pwrite64]);
                }
            }
            Role::Io => {
                r.one_of(Sysno::ioctl, 1, if n.nics { ioctls::IO_NICS } else { ioctls::IO });
                if n.io_disks {
                    r.allow(DISK);
                }
                if n.vsock {
                    r.allow(STREAMS);
                    r.one_of(Sysno::socket, 0, &[libc::AF_UNIX as u32]);
                }
            }
            Role::Ram => r.one_of(Sysno::ioctl, 1, ioctls::RAM),
            Role::Gdb => {
                r.one_of(Sysno::ioctl, 1, ioctls::GDB);
                r.allow(STREAMS);
            }
            Role::Timer => r.one_of(Sysno::ioctl, 1, ioctls::TIMER),
            Role::Copy => r.allow(&[Sysno::pread64]),
        }
        r
    }
}

/// `open`/`openat`: read-only, unless the run writes files.
fn allow_open(r: &mut Rules, writes: bool) {
    if writes {
        r.allow(&[Sysno::open, Sysno::openat]);
        return;
    }
    // The access mode is the low two bits. Not `libc::O_ACCMODE`: musl's
    // includes `O_PATH` (as `O_SEARCH`), which refused the file server's
    // `O_PATH` lookups in the static monitor while the glibc build let
    // them through.
    let mask = (3 | libc::O_CREAT | libc::O_TRUNC) as u32;
    r.masked(Sysno::open, 1, mask, libc::O_RDONLY as u32);
    r.masked(Sysno::openat, 2, mask, libc::O_RDONLY as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sandbox(args: &[&str]) -> Sandbox {
        let mut cfg = VmConfig::new("x.elf");
        for a in args {
            match *a {
                "disk" => cfg.disks.push(crate::config::DiskConfig::parse("d.img").unwrap()),
                "vsock" => cfg.vsock = Some(crate::config::VsockConfig::parse("cid=3,uds=/tmp/v").unwrap()),
                "core" => cfg.core = Some("core".into()),
                "nic" => cfg.nets.push(crate::devices::virtio::net::NetConfig::parse("tap=tap0").unwrap()),
                "share" => cfg.shares.push(crate::devices::virtio::fs::ShareConfig::parse("/tmp").unwrap()),
                "share-ro" => {
                    cfg.shares.push(crate::devices::virtio::fs::ShareConfig::parse("/tmp,ro").unwrap())
                }
                _ => unreachable!(),
            }
        }
        Sandbox::new(&cfg)
    }

    fn allowed(s: &Sandbox, role: Role) -> Vec<Sysno> {
        s.rules(role).leaves().iter().map(|(c, _)| Sysno::new(*c as usize).unwrap()).collect()
    }

    #[test]
    fn every_role_compiles() {
        for s in [sandbox(&[]), sandbox(&["disk", "vsock", "core"])] {
            for role in Role::ALL {
                let bpf = s.compile(role).unwrap();
                assert!(bpf.len() < 4096, "{role:?}: {} instructions", bpf.len());
            }
        }
    }

    #[test]
    fn no_role_may_exec_fork_or_die_the_handlers_way() {
        let s = sandbox(&["disk", "vsock", "core"]);
        for role in Role::ALL {
            let a = allowed(&s, role);
            for c in [Sysno::execve, Sysno::execveat, Sysno::fork, Sysno::vfork, Sysno::ptrace, NEVER] {
                assert!(!a.contains(&c), "{role:?} allows {c}");
            }
        }
        // A process (clone without CLONE_THREAD) traps; clone3 says ENOSYS.
        let p = s.compile(Role::Vcpu).unwrap();
        let call = |c: Sysno, a0: u64| {
            tree::tests::eval(&p, AUDIT_ARCH_X86_64, c.id() as u32, [a0, 0, 0, 0, 0, 0]).0
        };
        assert_eq!(call(Sysno::clone, libc::SIGCHLD as u64), libc::SECCOMP_RET_TRAP);
        assert_eq!(call(Sysno::clone, (libc::CLONE_VM | libc::CLONE_THREAD) as u64), libc::SECCOMP_RET_ALLOW);
        assert_eq!(call(Sysno::clone3, 0), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(call(Sysno::socket, libc::AF_INET as u64), libc::SECCOMP_RET_TRAP);
        assert_eq!(call(Sysno::socket, libc::AF_UNIX as u64), libc::SECCOMP_RET_ALLOW);
    }

    /// The keeper (`vstate::keeper`) is the one process the vCPU filter
    /// lets be made, and only in a run that ends with one; no filter allows
    /// `pidfd_open` (the keeper's pidfd is opened before the filters).
    #[test]
    fn the_keeper_is_the_one_process_a_filter_lets_be_made() {
        let verdict = |s: &Sandbox, role: Role, call: Sysno, a0: u64| {
            let p = s.compile(role).unwrap();
            tree::tests::eval(&p, AUDIT_ARCH_X86_64, call.id() as u32, [a0, 0, 0, 0, 0, 0]).0
        };
        let keeper = u64::from(crate::vstate::keeper::CLONE_FLAGS);
        let (trap, allow) = (libc::SECCOMP_RET_TRAP, libc::SECCOMP_RET_ALLOW);
        let plain = sandbox(&[]);
        assert_eq!(verdict(&plain, Role::Vcpu, Sysno::clone, keeper), trap);
        assert_eq!(verdict(&plain, Role::Vcpu, Sysno::pidfd_open, 4321), trap);
        let s = plain.clone().with_keeper();
        assert_eq!(verdict(&s, Role::Vcpu, Sysno::clone, keeper), allow);
        assert_eq!(
            verdict(&s, Role::Vcpu, Sysno::clone, (libc::CLONE_VM | libc::CLONE_THREAD) as u64),
            allow
        );
        for other in [libc::SIGCHLD, libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD, libc::CLONE_VM] {
            assert_eq!(verdict(&s, Role::Vcpu, Sysno::clone, other as u64), trap, "{other:#x}");
        }
        // Its pidfd is opened before the filter (`keeper::prepare`).
        assert_eq!(verdict(&s, Role::Vcpu, Sysno::pidfd_open, u64::from(std::process::id())), trap);
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Vcpu) {
            assert_eq!(verdict(&s, role, Sysno::clone, keeper), trap, "{role:?}");
            assert_eq!(verdict(&s, role, Sysno::pidfd_open, 4321), trap, "{role:?}");
        }
    }

    /// The VM leaves the process on its own socket pair (`vstate::Farewell`):
    /// `sendmsg` on that socket, from the vCPU filter, and on no other.
    #[test]
    fn sendmsg_goes_through_on_the_farewell_socket_alone() {
        let verdict = |s: &Sandbox, role: Role, fd: u64| {
            let p = s.compile(role).unwrap();
            tree::tests::eval(&p, AUDIT_ARCH_X86_64, Sysno::sendmsg.id() as u32, [fd, 0, 0, 0, 0, 0]).0
        };
        let s = sandbox(&["vsock"]);
        assert_eq!(verdict(&s, Role::Vcpu, 7), libc::SECCOMP_RET_TRAP);
        let s = s.with_farewell(7);
        assert_eq!(verdict(&s, Role::Vcpu, 7), libc::SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&s, Role::Vcpu, 8), libc::SECCOMP_RET_TRAP);
        assert_eq!(verdict(&s, Role::Vcpu, 7 | 1 << 32), libc::SECCOMP_RET_ALLOW, "the kernel reads an int");
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Vcpu) {
            assert_eq!(verdict(&s, role, 7), libc::SECCOMP_RET_TRAP, "{role:?}");
        }
    }

    /// The I/O thread tells a TAP device the guest's offloads (after
    /// DRIVER_OK): `TUNSETOFFLOAD` passes its filter with a NIC only.
    #[test]
    fn the_io_thread_sets_offloads_only_with_a_nic() {
        let verdict = |s: &Sandbox| {
            let p = s.compile(Role::Io).unwrap();
            let req = u64::from(ioctls::TUNSETOFFLOAD);
            tree::tests::eval(&p, AUDIT_ARCH_X86_64, Sysno::ioctl.id() as u32, [4, req, 0, 0, 0, 0]).0
        };
        assert_eq!(verdict(&sandbox(&[])), libc::SECCOMP_RET_TRAP);
        assert_eq!(verdict(&sandbox(&["nic"])), libc::SECCOMP_RET_ALLOW);
    }

    /// A read-only share's server opens nothing for writing, and nothing
    /// with `openat2`, whose flags a filter cannot see (it once allowed
    /// `openat2` with any share).
    #[test]
    fn a_read_only_share_allows_no_write_and_no_openat2() {
        let rules = sandbox(&["share-ro"]).rules(Role::Vcpu);
        let calls: Vec<Sysno> = rules.0.iter().map(|(c, _)| *c).collect();
        for c in [Sysno::openat2, Sysno::pwrite64, Sysno::mkdirat, Sysno::unlinkat, Sysno::renameat2] {
            assert!(!calls.contains(&c), "{c}");
        }
        let openat: Vec<&Leaf> =
            rules.0.iter().filter(|(c, _)| *c == Sysno::openat).map(|(_, l)| l).collect();
        assert!(!openat.is_empty() && !openat.iter().any(|l| matches!(l, Leaf::Allow)), "{openat:?}");
        // `O_PATH` lookups pass, whichever libc built the monitor.
        let o_path = (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC | 0o100000) as u32;
        for l in openat {
            if let Leaf::Masked { mask, value, .. } = l {
                assert_eq!(o_path & mask, *value, "an O_PATH lookup is refused");
                assert_ne!((libc::O_WRONLY as u32) & mask, *value, "a write is allowed");
            }
        }
        let writable: Vec<Sysno> = allowed(&sandbox(&["share"]), Role::Vcpu);
        assert!(writable.contains(&Sysno::mkdirat) && !writable.contains(&Sysno::openat2));
    }

    #[test]
    fn devices_not_attached_bring_no_calls() {
        let plain = allowed(&sandbox(&[]), Role::Vcpu);
        for c in [
            Sysno::pwrite64,
            Sysno::fdatasync,
            Sysno::socket,
            Sysno::connect,
            Sysno::unlink,
            Sysno::ftruncate,
        ] {
            assert!(!plain.contains(&c), "{c}");
        }
        let full = allowed(&sandbox(&["disk", "vsock"]), Role::Vcpu);
        assert!(full.contains(&Sysno::pwrite64) && full.contains(&Sysno::socket));
        // Only the I/O thread and vCPUs move data; RAM and timer threads do not.
        assert!(!allowed(&sandbox(&["disk", "vsock"]), Role::Ram).contains(&Sysno::pwrite64));
    }

    /// The binary search decides every call as seccompiler's own linear
    /// layout of the same rules does, in far fewer instructions.
    #[test]
    fn the_search_agrees_with_seccompilers_chain() {
        use seccompiler::{
            SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
        };
        use seccompiler::{SeccompFilter, SeccompRule};
        let rule = |arg, op, v| {
            SeccompRule::new(vec![Cond::new(arg, Len::Dword, op, u64::from(v)).unwrap()]).unwrap()
        };
        let s = sandbox(&["disk", "vsock"]).with_keeper();
        for role in Role::ALL {
            let ours = s.compile(role).unwrap();
            let map: BTreeMap<i64, Vec<SeccompRule>> = s
                .rules(role)
                .leaves()
                .into_iter()
                .filter_map(|(c, l)| {
                    let rules = match l {
                        Leaf::Allow => Vec::new(),
                        Leaf::OneOf { arg, values } => values.iter().map(|v| rule(arg, Op::Eq, *v)).collect(),
                        Leaf::Masked { arg, mask, value } => {
                            vec![rule(arg, Op::MaskedEq(mask.into()), value)]
                        }
                        Leaf::MaskedOr { arg, mask, value, or } => {
                            vec![rule(arg, Op::MaskedEq(mask.into()), value), rule(arg, Op::Eq, or)]
                        }
                        Leaf::Fail(_) => return None,
                    };
                    Some((i64::from(c), rules))
                })
                .collect();
            let theirs: BpfProgram = SeccompFilter::new(
                map,
                SeccompAction::Trap,
                SeccompAction::Allow,
                "x86_64".try_into().unwrap(),
            )
            .unwrap()
            .try_into()
            .unwrap();
            let (mut ours_steps, mut theirs_steps) = (0, 0);
            let keeper = u64::from(crate::vstate::keeper::CLONE_FLAGS);
            let argsets: [[u64; 6]; 9] = [
                [0; 6],
                [keeper, 0, 0, 0, 0, 0],
                // A near miss: the keeper's flags and one more.
                [keeper | libc::CLONE_FILES as u64, 0, 0, 0, 0, 0],
                [1, libc::SCHED_IDLE as u64, 0, 0, 0, 0],
                [0, ioctls::KVM_RUN.into(), 0, 0, 0, 0],
                [0, 0x1234_5678, 0, 0, 0, 0],
                [libc::AF_UNIX as u64, 0, libc::O_RDONLY as u64, 0, 0, 0],
                [libc::CLONE_THREAD as u64 | libc::CLONE_VM as u64, libc::O_WRONLY as u64, 0, 0, 0, 0],
                [1 << 40, libc::PR_SET_NAME as u64, (libc::O_CREAT | libc::O_RDWR) as u64, 0, 0, 0],
            ];
            for nr in 0..480 {
                if nr == Sysno::clone3.id() as u32 {
                    continue;
                }
                for args in argsets {
                    let (a, n) = tree::tests::eval(&ours, AUDIT_ARCH_X86_64, nr, args);
                    let (b, m) = tree::tests::eval(&theirs, AUDIT_ARCH_X86_64, nr, args);
                    assert_eq!(a, b, "{role:?}: call {nr} {args:x?}");
                    ours_steps += n;
                    theirs_steps += m;
                }
            }
            assert!(ours_steps * 3 < theirs_steps, "{role:?}: {ours_steps} vs {theirs_steps} steps");
            eprintln!(
                "{role:?}: {} vs {} instructions, {ours_steps} vs {theirs_steps} steps",
                ours.len(),
                theirs.len()
            );
            assert!(
                ours.len() * 3 < theirs.len() * 2,
                "{role:?}: {} vs {} instructions",
                ours.len(),
                theirs.len()
            );
        }
    }

    #[test]
    fn roles_have_names() {
        for role in Role::ALL {
            assert_eq!(Role::from_u8(role as u8), Some(role));
        }
        assert_eq!(Role::from_u8(0), None);
    }
}
