//! PC devices at I/O ports, for guests that boot elsewhere too: COM1 (a
//! 16550 from vm-superio), QEMU's `isa-debug-exit` port (the exit code) and
//! the i8042's reset command.

use std::io::Write;

use vm_superio::Trigger;
use vm_superio::serial::{NoEvents, Serial};

use super::Action;

/// COM1's first port.
pub const COM1: u16 = 0x3f8;
/// COM1's ports.
pub const COM1_PORTS: u16 = 8;
/// The i8042's command port.
pub const I8042_COMMAND: u16 = 0x64;
/// The i8042 command that resets the machine.
const I8042_RESET: u8 = 0xfe;

/// The serial port raises no interrupt: the kernel polls it.
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// COM1, writing what the guest sends to a writer.
pub struct Com1 {
    serial: Serial<NoInterrupt, NoEvents, Box<dyn Write + Send>>,
}

impl Com1 {
    /// A port whose output goes to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { serial: Serial::new(NoInterrupt, out) }
    }

    /// A guest `out` to port `COM1 + offset`.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&b) = data.first() {
            // The serial model's only error is a failed write to stdout,
            // which must not stop the guest.
            let _ = self.serial.write(offset as u8, b);
        }
    }

    /// A guest `in` from port `COM1 + offset`.
    pub fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = self.serial.read(offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
}

/// A write to QEMU's `isa-debug-exit` port: the guest exits with the value.
pub fn debug_exit(data: &[u8]) -> Action {
    Action::Exit(super::value_of(data) as u32 as i32)
}

/// A write to the i8042's command port: `None` for commands other than
/// the reset (which this machine does not have).
pub fn i8042_command(data: &[u8]) -> Option<Action> {
    (data.first() == Some(&I8042_RESET)).then_some(Action::Reset)
}
