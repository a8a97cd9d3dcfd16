//! Deciding what each VM exit means. [`handle_exit`] is a pure function of
//! the exit and the devices, so tests feed it made-up exits.

use vm_memory::GuestMemoryMmap;

use crate::devices::{Action, Devices};

/// A VM exit, reduced to what the monitor distinguishes.
#[derive(Debug)]
pub enum Exit<'a> {
    /// `out` to a port.
    IoOut(u16, &'a [u8]),
    /// `in` from a port.
    IoIn(u16, &'a mut [u8]),
    /// Load from an address with no memory.
    MmioRead(u64, &'a mut [u8]),
    /// Store to an address with no memory.
    MmioWrite(u64, &'a [u8]),
    /// `hlt` with no in-kernel interrupt controller.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// The CPU refused to enter the guest.
    FailEntry(u64),
    /// KVM could not handle an instruction.
    InternalError,
    /// A system event (`KVM_SYSTEM_EVENT_*`).
    SystemEvent(u32),
    /// A signal made `KVM_RUN` return (a kick from another vCPU, the
    /// timeout): the run loop looks at why.
    Interrupted,
    /// Anything else, by name.
    Other(&'static str),
}

/// What the run loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run the vCPU again.
    Continue,
    /// The guest exited with a code.
    Exit(i32),
    /// The guest asked for a reset.
    Reset,
    /// The guest asked for this many cores to run in all.
    StartCores(u32),
    /// The guest asked for a test MSI: `(vector, APIC ID, delay in µs)`.
    TestInterrupt(u8, u8, u32),
    /// Raise device interrupt line `n`.
    Interrupt(u32),
    /// Stop for the debugger: the kernel's debug frame is at this
    /// guest-virtual address (ignored without `--gdb`).
    DebugTrap(u64),
    /// The guest triple-faulted.
    TripleFault,
    /// The guest halted and nothing can wake it.
    Halted,
    /// The guest cannot go on.
    Crash(String),
}

impl Step {
    /// Whether the guest runs on after this step.
    pub fn goes_on(&self) -> bool {
        matches!(
            self,
            Step::Continue
                | Step::StartCores(_)
                | Step::Interrupt(_)
                | Step::TestInterrupt(..)
                | Step::DebugTrap(_)
        )
    }
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

fn step(a: Action) -> Step {
    match a {
        Action::Continue => Step::Continue,
        Action::Exit(code) => Step::Exit(code),
        Action::Reset => Step::Reset,
        Action::StartCores(n) => Step::StartCores(n),
        Action::TestInterrupt(v, a, d) => Step::TestInterrupt(v, a, d),
        Action::Interrupt(n) => Step::Interrupt(n),
        Action::DebugTrap(frame) => Step::DebugTrap(frame),
    }
}

/// Serve one exit.
pub fn handle_exit(exit: Exit<'_>, devices: &mut Devices, mem: &GuestMemoryMmap) -> Step {
    match exit {
        Exit::IoOut(port, data) => step(devices.pio_write(port, data)),
        Exit::IoIn(port, data) => {
            devices.pio_read(port, data);
            Step::Continue
        }
        Exit::MmioWrite(addr, data) => step(devices.mmio_write(mem, addr, data)),
        Exit::MmioRead(addr, data) => {
            devices.mmio_read(addr, data);
            Step::Continue
        }
        // `hlt` reaches user space only without an in-kernel LAPIC; then
        // nothing can wake the vCPU.
        Exit::Hlt => Step::Halted,
        Exit::Interrupted => Step::Continue,
        Exit::Shutdown => Step::TripleFault,
        Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN) => Step::TripleFault,
        Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => Step::Reset,
        Exit::SystemEvent(t) => Step::Crash(format!("system event {t}")),
        Exit::FailEntry(reason) => Step::Crash(format!("VM entry failed (hardware reason {reason:#x})")),
        Exit::InternalError => Step::Crash("KVM internal error (instruction emulation failed)".into()),
        Exit::Other(what) => Step::Crash(format!("unexpected VM exit: {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;
    use torito_abi::layout::TORITO_MMIO_BASE;
    use vm_memory::GuestAddress;

    fn setup() -> (Devices, GuestMemoryMmap) {
        let d = Devices::with_serial(Box::new(SharedBuffer::default()), Box::new(SharedBuffer::default()));
        (d, GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
    }

    #[test]
    fn made_up_exits() {
        let (mut d, m) = setup();
        assert_eq!(handle_exit(Exit::IoOut(0xf4, &[3]), &mut d, &m), Step::Exit(3));
        assert_eq!(
            handle_exit(Exit::MmioWrite(TORITO_MMIO_BASE + 8, &[9, 0, 0, 0, 0, 0, 0, 0]), &mut d, &m),
            Step::Exit(9)
        );
        assert_eq!(handle_exit(Exit::Shutdown, &mut d, &m), Step::TripleFault);
        assert_eq!(
            handle_exit(Exit::MmioWrite(TORITO_MMIO_BASE + 0x18, &2u64.to_le_bytes()), &mut d, &m),
            Step::StartCores(2)
        );
        let v = torito_abi::mmio::test_interrupt_value(0x50, 1, 5_000_000);
        assert_eq!(
            handle_exit(Exit::MmioWrite(TORITO_MMIO_BASE + 0x20, &v.to_le_bytes()), &mut d, &m),
            Step::TestInterrupt(0x50, 1, 1_000_000),
            "the delay is capped at a second"
        );
        assert_eq!(handle_exit(Exit::Hlt, &mut d, &m), Step::Halted);
        assert_eq!(handle_exit(Exit::Interrupted, &mut d, &m), Step::Continue);
        assert_eq!(handle_exit(Exit::SystemEvent(2), &mut d, &m), Step::Reset);
        assert!(
            matches!(handle_exit(Exit::FailEntry(0x21), &mut d, &m), Step::Crash(s) if s.contains("0x21"))
        );
        assert!(matches!(handle_exit(Exit::InternalError, &mut d, &m), Step::Crash(_)));
        assert!(
            matches!(handle_exit(Exit::Other("Debug"), &mut d, &m), Step::Crash(s) if s.contains("Debug"))
        );
        let mut buf = [0u8; 2];
        assert_eq!(handle_exit(Exit::IoIn(0x70, &mut buf), &mut d, &m), Step::Continue);
        assert_eq!(buf, [0xff, 0xff]);
        let mut buf = [0u8; 8];
        assert_eq!(handle_exit(Exit::MmioRead(0xfee0_0000, &mut buf), &mut d, &m), Step::Continue);
        assert_eq!(handle_exit(Exit::MmioWrite(0xfee0_0000, &[]), &mut d, &m), Step::Continue);
    }
}
