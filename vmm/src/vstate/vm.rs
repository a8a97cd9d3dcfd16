//! A VM: its interrupt controller, ioeventfds, MSIs, and the creation of
//! its vCPUs (memory slots are in `memory.rs`).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use kvm_ioctls::VmFd;
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::Vcpu;
use crate::error::Error;

/// Interrupt routes reserved for a user-space IOAPIC with the split irqchip.
const IOAPIC_PINS: u64 = 24;

/// A VM.
pub struct Vm {
    pub(super) fd: VmFd,
}

/// A way out for the VM: a Unix socket pair whose receiving end is in
/// its own queue (`SCM_RIGHTS`).
///
/// Destroying a VM costs its last `close` 0.3–0.7 ms on the development
/// host (13–23 ms with an ioeventfd: `srcu_barrier`), paid before the
/// parent learns that the monitor exited. [`Vm::destroy_in_background`]
/// sends the VM's descriptor into that queue too and closes both ends:
/// nothing in user space then refers to the pair, and the kernel's
/// collector of such cycles, which runs on a workqueue (Linux 6.8 and
/// later), drops the VM there, after the monitor is gone. No process is
/// left behind; on a kernel whose collector runs in the caller, the VM is
/// destroyed in the monitor as before.
///
/// Made before the seccomp filter goes on, so that the filter allows
/// `sendmsg` on this socket alone ([`Farewell::fd`]).
pub struct Farewell {
    a: UnixDatagram,
    b: UnixDatagram,
}

impl Farewell {
    /// The pair, its receiving end already in its own queue (`None` if the
    /// system refuses a socket).
    pub fn new() -> Option<Self> {
        let (a, b) = UnixDatagram::pair().ok()?;
        a.send_with_fds(&[&[0u8][..]], &[b.as_raw_fd()]).ok()?;
        Some(Self { a, b })
    }

    /// The descriptor the VM will be sent on.
    pub fn fd(&self) -> RawFd {
        self.a.as_raw_fd()
    }

    /// Put references to `fds` into the queue, so that closing them here
    /// is not their last close: that comes once the monitor has gone.
    /// Whether they went.
    pub fn send(&self, fds: &[RawFd]) -> bool {
        fds.is_empty() || self.a.send_with_fds(&[&[0u8][..]], fds).is_ok()
    }
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| Error::Kvm("eventfd", errno::Error::new(e.raw_os_error().unwrap_or(0))))
}

impl Vm {
    pub(super) fn new(fd: VmFd) -> Self {
        Self { fd }
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
        std::mem::forget(self.notify_eventfd(0xdfff_f000)?);
        Ok(())
    }

    /// An eventfd that KVM signals, without an exit to the monitor, when
    /// the guest writes the 32-bit MMIO register at `addr` (any value).
    pub fn notify_eventfd(&self, addr: u64) -> Result<EventFd, Error> {
        let fd = eventfd()?;
        self.fd
            .register_ioevent(&fd, &kvm_ioctls::IoEventAddress::Mmio(addr), kvm_ioctls::NoDatamatch)
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
        Ok(fd)
    }

    /// Send an MSI with `data` (the vector) to the local APIC `apic`.
    pub fn signal_msi(&self, apic: u8, data: u32) -> Result<(), Error> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xfee0_0000 | (u32::from(apic) << 12),
            data,
            ..Default::default()
        };
        self.fd.signal_msi(msi).map(|_| ()).map_err(|e| Error::Kvm("KVM_SIGNAL_MSI", e))
    }

    /// Close the VM so that the kernel destroys it after this process has
    /// gone, not in it ([`Farewell`]); without one, destroy it here.
    /// `vcpus`: descriptors of vCPUs still open (each refers to the VM),
    /// sent along so that their last reference is not this process's
    /// either. Call it last.
    pub fn destroy_in_background(self, farewell: Option<Farewell>, vcpus: &[RawFd]) {
        let Some(farewell) = farewell else { return };
        let fds: Vec<RawFd> = std::iter::once(self.fd.as_raw_fd()).chain(vcpus.iter().copied()).collect();
        if !farewell.send(&fds) {
            return;
        }
        let Farewell { a, b } = farewell;
        // Our references first, the sending end last: closing it is what
        // starts the collector, which must then find no reference left
        // outside the queue.
        drop(self);
        drop(b);
        drop(a);
    }

    /// Most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.fd.check_extension_int(kvm_ioctls::Cap::MaxVcpus).max(1) as usize
    }

    /// Create vCPU `id` (local APIC ID `id`) with the minimal CPUID table.
    pub fn create_vcpu(&self, id: u32, lapic: bool) -> Result<Vcpu, Error> {
        self.open_vcpu(id)?.configure(lapic)
    }

    /// The first half of [`Vm::create_vcpu`]: the vCPU and its shared run
    /// structure (a mapping: the one step that takes the address space's
    /// lock for writing), its CPUID still to give ([`NewVcpu::configure`]).
    pub fn open_vcpu(&self, id: u32) -> Result<NewVcpu, Error> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        Ok(NewVcpu { fd, id })
    }
}

/// A vCPU without its CPUID yet ([`Vm::open_vcpu`]).
pub struct NewVcpu {
    fd: kvm_ioctls::VcpuFd,
    id: u32,
}

impl NewVcpu {
    /// Give the vCPU its CPUID (with a local APIC or not) and set its local
    /// APIC up (`arch::lapic`): ready to run.
    pub fn configure(self, lapic: bool) -> Result<Vcpu, Error> {
        let cpuid = crate::arch::cpuid::table(host_cpuid, lapic, self.id as u8);
        self.fd.set_cpuid2(&cpuid).map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
        if lapic {
            let mut state = self.fd.get_lapic().map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
            let mut regs = state.regs.map(|b| b as u8);
            crate::arch::lapic::preset(&mut regs);
            state.regs = regs.map(|b| b as std::ffi::c_char);
            self.fd.set_lapic(&state).map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))?;
        }
        Ok(Vcpu::new(self.fd, self.id))
    }
}

fn host_cpuid(leaf: u32) -> crate::arch::cpuid::Regs {
    let r = std::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}
